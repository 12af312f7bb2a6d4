"""The exit rules that need no classifier:

- ``FixedExitPolicy(layer)``: every prompt exits at ``layer`` (the fixed-depth baseline);
- ``ScheduledExitPolicy(layers)``: prompt ``i`` exits at ``layers[i]`` (the oracle or random exits, replayed
  with real compute skipping);
- ``FeatureThresholdRule`` / ``GapThresholdPolicy``: the stop score is one online feature (``label_gap`` by
  default) — the bare rule AdaInfer's classifier has to beat.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ..common.checks import check_choice, check_exit_layers, check_min_layer, check_threshold
from ..common.replay import Decisions, first_exit, metrics_at, most_saved_within, pivot_layers
from ..data.calibration import Calibration
from ..features.online import FULL_VOCAB_FEATURES, label_features
from ..model.identity import ModelIdentity
from .interface import OnlineState


@dataclass(kw_only=True)
class _PlainRule:
    """The shared part of the rules that need no fitting: optional ``label_words`` and ``calibration`` (used
    for the online label features and the prediction), label rows only, no model identity.

    Checked where they enter (``ValueError`` naming the bad value and what is allowed): ``threshold`` in
    ``threshold_range``, ``label_words`` None or a list of non-empty strings, ``calibration`` None, ``"raw"`` or
    a ``Calibration`` (``TypeError`` otherwise)."""

    label_words: list[str] | None = None
    calibration: Calibration | str | None = None  # a Calibration, "raw" (no offsets) or None
    threshold: float = 0.5

    threshold_range = (0.0, 1.0)  # a plain rule's stop score is 0 or 1: above 1 it would never stop

    def __post_init__(self) -> None:
        low, high = self.threshold_range
        check_threshold(self.threshold, low=low, high=high)
        if self.label_words is not None:
            if isinstance(self.label_words, str) or not all(isinstance(w, str) and w for w in self.label_words):
                raise ValueError(f"label_words must be None or a list of non-empty strings, not {self.label_words!r}")
            self.label_words = list(self.label_words)
        if not (self.calibration is None or self.calibration == "raw" or isinstance(self.calibration, Calibration)):
            raise TypeError(f"calibration must be a Calibration (e.g. task_trace.calibration), 'raw' or None, not "
                            f"{type(self.calibration).__name__}")

    @property
    def needs_full_vocab(self) -> bool:
        return False

    @property
    def fitted_for(self) -> ModelIdentity:
        return ModelIdentity()

    def with_threshold(self, threshold: float):
        out = copy.copy(self)
        out.threshold = float(threshold)
        return out

    def stop_matrix(self, table: pd.DataFrame) -> np.ndarray:
        """(n, L+1) of 1.0 where the rule's layer for the example is reached, else 0."""
        decisions = Decisions.from_table(table)
        layers = np.arange(decisions.n_layers + 1)[None, :]
        return (self._exit_layer_per_example(decisions.n)[:, None] <= layers).astype(float)

    def _exit_layer_per_example(self, n: int) -> np.ndarray:
        raise NotImplementedError


@dataclass
class FixedExitPolicy(_PlainRule):
    """Exit every example at ``layer`` (no check before it: ``min_layer = layer``). ``layer`` is an integer in
    0..L (0 = the embeddings): ``ValueError`` for a negative one here, and from ``run_early_exit`` for one
    beyond the model's L (a 2-layer model cannot exit at layer 5)."""

    layer: int

    def __post_init__(self) -> None:
        super().__post_init__()
        self.layer = int(check_exit_layers(self.layer, None, "FixedExitPolicy layer")[0])

    def check_layers(self, n_layers: int | None, n_examples: int | None = None) -> None:
        check_exit_layers(self.layer, n_layers, "FixedExitPolicy layer")

    @property
    def min_layer(self) -> int:
        return self.layer

    def stop_proba_online(self, features, layer: int, state: OnlineState) -> np.ndarray:
        return np.full(len(state.rows), 1.0 if layer >= self.layer else 0.0)

    def _exit_layer_per_example(self, n: int) -> np.ndarray:
        return np.full(n, self.layer)


@dataclass
class ScheduledExitPolicy(_PlainRule):
    """Exit example ``i`` (its index in the prompts passed to ``run_early_exit``) at ``layers[i]``: replays
    exits decided elsewhere (the oracle, random exits) with real compute skipping.

    ``layers``: a non-empty 1-D sequence of integers in 0..L, one per prompt. ``ValueError`` here for an empty,
    nested or negative one, and from ``run_early_exit`` for layers beyond the model's L or a length that is not
    the number of prompts."""

    layers: np.ndarray

    def __post_init__(self) -> None:
        super().__post_init__()
        if np.ndim(self.layers) != 1 or len(self.layers) == 0:
            raise ValueError(f"ScheduledExitPolicy layers must be a non-empty 1-D sequence (one exit layer per "
                             f"prompt), got {np.asarray(self.layers).shape} array")
        self.layers = check_exit_layers(self.layers, None, "ScheduledExitPolicy layers")

    def check_layers(self, n_layers: int | None, n_examples: int | None = None) -> None:
        check_exit_layers(self.layers, n_layers, "ScheduledExitPolicy layers", n_examples=n_examples)

    @property
    def min_layer(self) -> int:
        return int(np.min(self.layers))

    def stop_proba_online(self, features, layer: int, state: OnlineState) -> np.ndarray:
        return (np.asarray(self.layers)[np.asarray(state.rows)] <= layer).astype(float)

    def _exit_layer_per_example(self, n: int) -> np.ndarray:
        check_exit_layers(self.layers, None, "ScheduledExitPolicy layers", n_examples=n)
        return np.asarray(self.layers)


def label_feature_array(task_trace, name: str = "label_gap") -> np.ndarray:
    """A calibrated label feature (``label_gap`` / ``label_top_prob``) at every layer of a ``TaskTrace``:
    (n, L+1)."""
    scores = task_trace.scores()
    n, layers, c = scores.shape
    return np.asarray(label_features(scores.reshape(n * layers, c))[name], dtype=np.float64).reshape(n, layers)


@dataclass
class FeatureThresholdRule(_PlainRule):
    """Exit at the first layer ``>= min_layer`` whose online ``feature`` is ``>= threshold``: the stop score is
    the feature itself, no classifier. ``FEATURES`` lists what a subclass allows (``GapThresholdPolicy``: the
    calibrated label features; generation's ``TopProbRule``: the full-vocabulary ones).

    ``ValueError`` at construction for ``threshold`` outside [0, 1.01], ``min_layer`` not an integer >= 0, or a
    ``feature`` outside ``FEATURES``; ``run_early_exit`` refuses a ``min_layer`` beyond the model's L."""

    threshold: float = 0.4
    min_layer: int = 1
    feature: str = "label_gap"

    threshold_range = (0.0, 1.01)
    FEATURES = ("label_gap", "label_top_prob", "top_prob", "gap")  # all in [0, 1]

    def __post_init__(self) -> None:
        super().__post_init__()
        check_min_layer(self.min_layer)
        check_choice(self.feature, "feature", self.FEATURES)

    def check_layers(self, n_layers: int | None, n_examples: int | None = None) -> None:
        """``ValueError`` when ``min_layer`` is beyond the model's L (``n_layers``; None: not checked)."""
        if n_layers is not None:
            check_min_layer(self.min_layer, n_layers)

    @property
    def features(self) -> list[str]:
        return [self.feature]

    @property
    def resolved_features(self) -> tuple[str, ...]:
        """The features the rule reads (as ``ExitPolicy.resolved_features``)."""
        return (self.feature,)

    @property
    def needs_full_vocab(self) -> bool:
        return self.feature in FULL_VOCAB_FEATURES

    def stop_proba_online(self, features, layer: int, state: OnlineState) -> np.ndarray:
        return np.asarray(features[self.feature], dtype=np.float64)

    def stop_matrix(self, table: pd.DataFrame) -> np.ndarray:
        return pivot_layers(table, table[self.feature].to_numpy(dtype=np.float64))


@dataclass
class GapThresholdPolicy(FeatureThresholdRule):
    """Exit at the first layer ``>= min_layer`` whose calibrated label gap (top-1 minus top-2 label
    probability; or ``feature="label_top_prob"``) is ``>= threshold``: the bare rule AdaInfer's classifier has
    to beat. Label rows only: the cheapest check there is. ``fit`` grid-searches threshold and min_layer."""

    FEATURES = ("label_gap", "label_top_prob")

    def exit_layers(self, data) -> np.ndarray:
        """Exit layers (n,) from a ``TaskTrace`` or a feature table (rows example x layer)."""
        scores = label_feature_array(data, self.feature) if hasattr(data, "scores") else self.stop_matrix(data)
        return first_exit(scores, self.threshold, self.min_layer)

    @classmethod
    def fit(cls, task_trace, *, max_drop: float = 0.01, min_layers: Sequence[int] | None = None,
            thresholds: Sequence[float] = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))) -> GapThresholdPolicy:
        """Grid search on ``task_trace`` (a trace of the *train* split) over ``thresholds`` x ``min_layers``
        (default 1..L-1): the pair that saves the most layers while its accuracy stays within ``max_drop``
        of the full model's (``common.replay.most_saved_within``; ties: the more accurate, then the higher
        threshold, then the larger ``min_layer``, which also skips the checks below it). The never-exit rule
        (threshold 1.01) is a candidate too, so a grid where nothing saves a layer within ``max_drop`` gives a
        rule that never exits early."""
        gaps = label_feature_array(task_trace)
        decisions = Decisions.from_task_trace(task_trace)
        layers = sorted(range(1, task_trace.n_layers) if min_layers is None else min_layers, reverse=True)
        grid = [(t, m) for m in layers for t in sorted(thresholds, reverse=True)] + [(1.01, max(layers, default=1))]
        metrics = [metrics_at(decisions, first_exit(gaps, t, m)) for t, m in grid]
        best = most_saved_within([r["layers_saved"] for r in metrics],
                                 [r["full_accuracy"] - r["accuracy"] for r in metrics], max_drop,
                                 threshold=[t for t, _ in grid])
        threshold, min_layer = grid[best]
        return cls(threshold=float(threshold), min_layer=int(min_layer), calibration=task_trace.calibration,
                   label_words=list(task_trace.trace.label_words))


def decision_runs(predictions: np.ndarray, min_layer: int) -> np.ndarray:
    """(n, L+1): at each layer ``l >= min_layer``, how many consecutive layers ending at ``l`` (from
    ``min_layer`` on) have made the same decision as ``l``; 0 below ``min_layer``. ``predictions`` (n, L+1)."""
    predictions = np.asarray(predictions)
    runs = np.zeros(predictions.shape, dtype=np.float64)
    for layer in range(min_layer, predictions.shape[1]):
        same = layer > min_layer and predictions[:, layer] == predictions[:, layer - 1]
        runs[:, layer] = np.where(same, runs[:, layer - 1] + 1, 1)
    return runs


@dataclass
class PatienceRule(_PlainRule):
    """Exit at the first layer ``>= min_layer`` where the decision has stayed the same for ``threshold``
    consecutive checked layers (the patience; PABEE, Zhou et al. 2020, "BERT Loses Patience"): the stop score
    at layer l is the length of the run of equal decisions ending at l, counted from ``min_layer``. It reads
    only the decision (``pred``), so it works with the lens and with every learned reader, and needs no
    fitting: choose the patience with ``rules.tuning.choose_threshold``. ``threshold``: a whole number of layers
    >= 1 (``ValueError`` otherwise, and for ``min_layer`` not an integer >= 0)."""

    threshold: float = 3
    min_layer: int = 1

    threshold_range = (1.0, None)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_min_layer(self.min_layer)
        if float(self.threshold) != round(float(self.threshold)):
            raise ValueError(f"the patience (threshold) is a whole number of layers >= 1, not {self.threshold!r}")

    def check_layers(self, n_layers: int | None, n_examples: int | None = None) -> None:
        """``ValueError`` when ``min_layer`` is beyond the model's L (``n_layers``; None: not checked)."""
        if n_layers is not None:
            check_min_layer(self.min_layer, n_layers)

    @property
    def features(self) -> list[str]:
        return ["pred"]

    @property
    def resolved_features(self) -> tuple[str, ...]:
        return ("pred",)

    def stop_proba_online(self, features, layer: int, state: OnlineState) -> np.ndarray:
        """The run length of each running row's decision at ``layer``; the last decision and run of every row
        are carried in ``state.memory`` (a layer that is not the one after the row's last check starts a new
        run, as ``decision_runs`` offline)."""
        memory = state.memory.setdefault(("patience", id(self)), {})
        pred = np.asarray(features["pred"])
        runs = np.empty(len(pred), dtype=np.float64)
        for i, (row, decision) in enumerate(zip(np.asarray(state.rows).tolist(), pred.tolist())):
            last_layer, last_decision, run = memory.get(row, (None, None, 0.0))
            runs[i] = run + 1 if last_layer == layer - 1 and last_decision == decision else 1.0
            memory[row] = (layer, decision, runs[i])
        return runs

    def stop_matrix(self, table: pd.DataFrame) -> np.ndarray:
        return decision_runs(Decisions.from_table(table).predictions, self.min_layer)

    def exit_layers(self, table: pd.DataFrame, threshold: float | None = None) -> np.ndarray:
        """Exit layers (n,) replayed on a feature table, at ``threshold`` (default the rule's patience)."""
        return first_exit(self.stop_matrix(table), self.threshold if threshold is None else threshold,
                          self.min_layer)
