"""Real early exit: the forward pass stops at each prompt's exit layer (``early_exit``), and the dense model it
is timed against."""

from .early_exit import ExitResult, FullResult, count_layer_rows, run_early_exit, run_full

__all__ = ["ExitResult", "FullResult", "run_early_exit", "run_full", "count_layer_rows"]
