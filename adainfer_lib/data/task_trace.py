"""A task's prompts traced through the lens, with gold labels and calibrated decisions at every layer."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ..common.replay import best_layer, layers_saved, oracle_exits
from ..model.layer_trace import LayerTrace
from ..model.lens import trace
from ..model.loading import LensModel
from .calibration import CALIBRATION_METHODS, DEFAULT_CALIBRATION, Calibration, fit_calibration


@dataclass(frozen=True)
class TaskTrace:
    """``trace`` of one split of a task, its ``gold`` labels (n,), and the fitted calibrations.

    All decisions use the ``method`` calibration (``batch`` by default); ``with_calibration`` switches.
    ``ValueError`` at construction when the gold labels, label names or calibration offsets do not fit the
    trace (n gold labels in -1..C-1, -1 = unknown; C label names; offsets (L+1, C)).
    """

    trace: LayerTrace
    gold: np.ndarray
    calibrations: dict[str, Calibration]
    task_name: str
    label_names: list[str]
    split: str = "test"
    method: str = DEFAULT_CALIBRATION

    def __post_init__(self) -> None:
        if len(self.gold) != self.trace.n_examples:
            raise ValueError(f"{len(self.gold)} gold labels for {self.trace.n_examples} traced examples")
        if self.method not in self.calibrations:
            raise ValueError(f"calibration {self.method!r} not fitted; have {sorted(self.calibrations)}")
        n_labels = len(self.trace.label_words)
        gold = np.asarray(self.gold)
        if gold.size and (gold.dtype.kind not in "iu" or gold.min() < -1 or gold.max() >= n_labels):
            raise ValueError(f"gold labels must be label ids in 0..{n_labels - 1} (or -1 = unknown) for the "
                             f"{n_labels} label words {list(self.trace.label_words)}, got values "
                             f"{np.unique(gold)[:8].tolist()}")
        if len(self.label_names) != n_labels:
            raise ValueError(f"{len(self.label_names)} label names {list(self.label_names)} for {n_labels} label "
                             f"words {list(self.trace.label_words)}")
        expected = (self.trace.n_layers + 1, n_labels)
        for name, cal in self.calibrations.items():
            if np.shape(cal.offsets) != expected:
                raise ValueError(f"calibration {name!r} has offsets of shape {np.shape(cal.offsets)}, expected "
                                 f"{expected} (L+1 layers x label words): fitted on another model or task?")

    @property
    def n_layers(self) -> int:
        return self.trace.n_layers

    @property
    def n_examples(self) -> int:
        return self.trace.n_examples

    @property
    def calibration(self) -> Calibration:
        return self.calibrations[self.method]

    @property
    def reader(self) -> str:
        """What reads the residual states as label scores here: ``"logit_lens"`` (the model's own final norm and
        label rows, calibrated). ``readers.ReaderTrace`` overrides it with a learned reader's ``reader_id``; a
        table and the rules fitted on it record it (``identity.ModelIdentity.reader``)."""
        return "logit_lens"

    def with_calibration(self, method: str) -> TaskTrace:
        """The same trace, deciding with another calibration method."""
        return replace(self, method=method)

    def scores(self) -> np.ndarray:
        """Calibrated label scores (n, L+1, C)."""
        return self.calibration.apply(self.trace.label_logits)

    def predictions(self) -> np.ndarray:
        """Predicted label id at every layer (n, L+1)."""
        return self.scores().argmax(-1)

    def final_predictions(self) -> np.ndarray:
        """The full model's prediction (n,): layer L."""
        return self.predictions()[:, -1]

    def accuracy_by_layer(self) -> np.ndarray:
        """Share of examples whose layer-l prediction is the gold label (L+1,)."""
        return (self.predictions() == self.gold[:, None]).mean(0)

    def best_layer(self) -> int:
        """The most accurate layer (``common.replay.best_layer``: ties go to the later layer)."""
        return best_layer(self.accuracy_by_layer())

    def consistency_by_layer(self) -> np.ndarray:
        """Share of examples whose layer-l prediction equals the full model's (L+1,)."""
        preds = self.predictions()
        return (preds == preds[:, -1:]).mean(0)

    def earliest_consistent_layer(self) -> np.ndarray:
        """Oracle exit (n,): the earliest layer from which the prediction equals the final one and stays."""
        return oracle_exits(self.predictions())


def fit_task_calibrations(model: LensModel, task, *, full_vocab: bool = True, cache: bool = True,
                          batch_size: int = 8, progress: bool = True) -> dict[str, Calibration]:
    """All calibration methods, fitted on the task's train split only (its labels unused).

    Traces the whole train split with the same options as ``trace_task(split="train")``, so the two share
    one cached trace (exit classifiers are fitted on that split too)."""
    unlabelled = trace(model, task.prompts("train"), label_words=task.label_words, full_vocab=full_vocab,
                       cache=cache, batch_size=batch_size, prefix=task.prefix, progress=progress)
    content_free = trace(model, [task.content_free_prompt()], label_words=task.label_words, full_vocab=False,
                         cache=cache, prefix=task.prefix, progress=False)
    return {
        "raw": fit_calibration("raw", unlabelled=unlabelled.label_logits),
        "contextual": fit_calibration("contextual", content_free=content_free.label_logits),
        "batch": fit_calibration("batch", unlabelled=unlabelled.label_logits),
    }


def trace_task(model: LensModel, task, *, split: str = "test", calibration: str = DEFAULT_CALIBRATION,
               full_vocab: bool = True, cache: bool = True, batch_size: int = 8, progress: bool = True) -> TaskTrace:
    """Trace ``task``'s ``split`` prompts through the lens and fit its calibrations on the train split."""
    if calibration not in CALIBRATION_METHODS:
        raise ValueError(f"Unknown calibration {calibration!r}; choose one of {CALIBRATION_METHODS}.")
    dataset = getattr(task, split)
    layer_trace = trace(model, task.prompts(split), label_words=task.label_words, full_vocab=full_vocab,
                        cache=cache, batch_size=batch_size, prefix=task.prefix, progress=progress)
    calibrations = fit_task_calibrations(model, task, full_vocab=full_vocab, cache=cache, batch_size=batch_size,
                                         progress=progress)
    return TaskTrace(trace=layer_trace, gold=np.asarray(dataset["label"]), calibrations=calibrations,
                     task_name=task.name, label_names=list(task.label_names), split=split, method=calibration)


def calibration_report(tt: TaskTrace) -> "pd.DataFrame":
    """One row per calibration method: accuracy of the full model, share of its most frequent predicted
    label (1.0 = a constant prediction), and what the oracle exit would save with that decision rule."""
    import pandas as pd

    rows = []
    for method in tt.calibrations:
        view = tt.with_calibration(method)
        final = view.final_predictions()
        rows.append({
            "task": tt.task_name,
            "calibration": method,
            "n": tt.n_examples,
            "accuracy_full": float((final == tt.gold).mean()),
            "most_frequent_label_share": float(np.bincount(final).max() / len(final)),
            "oracle_layers_saved": layers_saved(view.earliest_consistent_layer(), tt.n_layers),
        })
    return pd.DataFrame(rows)
