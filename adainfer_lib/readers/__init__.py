"""Learned readers: maps from a layer's last-position residual state to label scores, beside the logit lens.

``states`` (the residual states at every layer, cached: ``task_states``), ``trace`` (``ReaderTrace``: a task
trace read by a reader, which every feature table, rule, replay and certification reads as it reads the lens),
``base`` (the ``Reader`` interface: fit, read offline, bind online for ``run_early_exit(..., reader=...)``, save
and load), the readers ``lens`` (the calibrated logit lens), ``probe`` (a linear probe per layer) and
``tuned_lens`` (a translator per layer before the model's own head), ``fitting`` (out-of-fold reading of the
train split, for fitting and tuning exit rules) and ``persistence`` (no pickle)."""

from .base import Reader, ReaderModelMismatchError
from .fitting import out_of_fold_trace
from .lens import LogitLensReader
from .persistence import ReaderState
from .probe import ABSENT_LOGIT, ProbeReader
from .states import ResidualStates, residual_states, task_states
from .trace import ReaderData, ReaderTrace, reader_data
from .tuned_lens import TRANSLATORS, TunedLensReader, choose_translator

__all__ = ["Reader", "ReaderModelMismatchError", "LogitLensReader", "ProbeReader", "TunedLensReader",
           "choose_translator", "TRANSLATORS", "ABSENT_LOGIT", "ReaderTrace", "ReaderData", "reader_data",
           "ReaderState", "ResidualStates", "residual_states", "task_states", "out_of_fold_trace"]
