"""What a reader is fitted on (``ReaderData``) and what it gives offline (``ReaderTrace``).

``ReaderTrace`` is a ``TaskTrace`` whose ``scores()`` — the label scores (n, L+1, C) behind every decision — are a
reader's instead of the calibrated logit lens's. Everything else (the lens trace with its full-vocabulary
statistics and ``cos_prev``, the gold labels, the lens calibrations) is the task trace's, so
``features.feature_table``, every exit rule and its replay, ``common.replay``, Learn-then-Test and the explorer
read it as they read the lens. Layer L is always the model's own calibrated decision (the lens at L is the
model's output), so ``final_predictions`` and "consistency" mean the full model's, for every reader.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ..data.calibration import Calibration
from ..data.task_trace import TaskTrace
from ..model.identity import ModelIdentity, identity_of
from .states import ResidualStates


@dataclass(frozen=True)
class ReaderTrace(TaskTrace):
    """A ``TaskTrace`` read by a learned reader: ``reader_scores`` (n, L+1, C) are its ``scores()``, and
    ``reader`` (= ``reader_key``, the reader's ``reader_id``) says whose they are — the feature table records it
    and the rules fitted on that table refuse another reader. ``ValueError`` at construction for scores of
    another shape or with NaN / infinite values."""

    reader_scores: np.ndarray | None = None
    reader_key: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        expected = (self.trace.n_examples, self.trace.n_layers + 1, len(self.trace.label_words))
        scores = None if self.reader_scores is None else np.array(self.reader_scores, dtype=np.float64)
        if scores is None or scores.shape != expected:
            raise ValueError(f"reader_scores must be (n, L+1, C) = {expected}, got "
                             f"{None if scores is None else scores.shape}")
        if not np.isfinite(scores).all():
            raise ValueError(f"reader_scores hold {int((~np.isfinite(scores)).sum())} NaN or infinite value(s)")
        if not isinstance(self.reader_key, str) or not self.reader_key:
            raise ValueError("reader_key must name the reader (its reader_id)")
        scores.flags.writeable = False
        object.__setattr__(self, "reader_scores", scores)

    @property
    def reader(self) -> str:
        return self.reader_key

    def scores(self) -> np.ndarray:
        """The reader's label scores (n, L+1, C) (read-only)."""
        return self.reader_scores

    def with_calibration(self, method: str) -> TaskTrace:
        raise ValueError("a reader's scores do not change with the lens calibration method: read the task trace "
                         "of that calibration (task_trace.with_calibration(method)) with the reader instead")

    @classmethod
    def of(cls, task_trace: TaskTrace, scores: np.ndarray, reader_id: str) -> ReaderTrace:
        """``task_trace`` with ``scores`` (n, L+1, C) read by the reader ``reader_id``."""
        base = {f.name: getattr(task_trace, f.name) for f in fields(TaskTrace)}
        return cls(**base, reader_scores=scores, reader_key=reader_id)


@dataclass(frozen=True)
class ReaderData:
    """What a reader is fitted on, for n prompts of one task: ``states`` (n, L+1, d) float32 (None for a reader
    that reads no states, the logit lens), the full model's calibrated label scores ``final_scores`` (n, C) at
    layer L (their argmax is its decision: ``targets``), the task's lens ``calibration`` (L+1, C), the label
    words' token ``label_ids`` and the ``identity`` of model and task."""

    states: np.ndarray | None
    final_scores: np.ndarray
    calibration: Calibration
    label_ids: tuple[int, ...]
    identity: ModelIdentity

    @property
    def n(self) -> int:
        return len(self.final_scores)

    @property
    def n_layers(self) -> int:
        return int(self.identity.n_layers)

    @property
    def targets(self) -> np.ndarray:
        """The full model's decision (n,): what a probe learns to predict (no gold label needed)."""
        return self.final_scores.argmax(-1)

    def take(self, idx) -> ReaderData:
        """The data of the prompts at positions ``idx``."""
        states = None if self.states is None else self.states[idx]
        return ReaderData(states, self.final_scores[idx], self.calibration, self.label_ids, self.identity)


def check_states_match(task_trace: TaskTrace, states: ResidualStates) -> None:
    """``ValueError`` naming what differs when ``states`` are not those of ``task_trace``'s prompts on its model:
    a layer set other than 0..L, another number of prompts, other prompts (content keys), model or L."""
    tr = task_trace.trace
    if not isinstance(states, ResidualStates):
        raise TypeError(f"states must be ResidualStates (readers.task_states), not {type(states).__name__}")
    wrong = []
    if not states.complete:
        wrong.append(f"layers {list(states.layers)[:6]}... (a reader needs every layer 0..{tr.n_layers})")
    if states.n_layers != tr.n_layers:
        wrong.append(f"L={states.n_layers}, not {tr.n_layers}")
    if states.n_examples != tr.n_examples:
        wrong.append(f"{states.n_examples} prompts, not {tr.n_examples}")
    for key in ("prompts_key", "model_cache_id"):
        a, b = states.meta.get(key), tr.meta.get(key)
        if a is not None and b is not None and a != b:
            wrong.append(f"{key} {a!r}, not the trace's {b!r}")
    if wrong:
        raise ValueError("the states are not those of the task trace's prompts and model: " + "; ".join(wrong))


def reader_data(task_trace: TaskTrace, states: ResidualStates | None, *, needs_states: bool = True) -> ReaderData:
    """The ``ReaderData`` of a traced task split and its residual states (``check_states_match``). ``TypeError``
    for a ``task_trace`` that is not a ``TaskTrace``; ``ValueError`` for missing or mismatched states."""
    if not isinstance(task_trace, TaskTrace):
        raise TypeError(f"a reader is fitted on a TaskTrace (trace_task(model, task, split='train')), not "
                        f"{type(task_trace).__name__}")
    if states is None and needs_states:
        raise ValueError("this reader reads residual states: pass states=readers.task_states(model, task, split)")
    if states is not None:
        check_states_match(task_trace, states)
    L = task_trace.n_layers
    final = np.asarray(task_trace.calibration.apply(task_trace.trace.label_logits)[:, L], dtype=np.float64)
    identity = identity_of(task_trace.trace)
    identity = ModelIdentity(identity.model_id, identity.model, identity.n_layers, identity.label_words,
                             task_trace.task_name)
    return ReaderData(None if states is None else states.states, final, task_trace.calibration,
                      tuple(int(i) for i in task_trace.trace.label_ids), identity)
