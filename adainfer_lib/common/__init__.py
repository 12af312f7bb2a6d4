"""Shared infrastructure: where data lives (``paths``), content keys and atomic writes (``cache``), the
argument checks of the public entry points (``checks``), and the hub offline by default (``hub``)."""

from .cache import atomic_write_bytes, atomic_write_text, content_key
from .checks import check_choice, check_exit_layers, check_int, check_min_layer, check_number, check_threshold
from .paths import data_dir

__all__ = ["data_dir", "content_key", "atomic_write_bytes", "atomic_write_text", "check_int", "check_number",
           "check_threshold", "check_choice", "check_exit_layers", "check_min_layer"]
