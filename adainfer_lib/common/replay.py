"""The replay kernel: exits and their metrics computed from per-layer decisions, no model needed.

Every replay in the suite — an exit rule's simulated exits, threshold sweeps, the oracle, the fixed and
random baselines, Pareto curves, Learn-then-Test, the explorer — goes through these few functions:

- ``layers_saved(exits, L)``: 1 − mean(exit)/L;
- ``first_exit(stop_scores (n, L+1), threshold, min_layer) -> (n,)``: the stopping rule on whole
  trajectories (the first layer ``>= min_layer`` whose score is ``>= threshold``, else L; NaN never stops);
- ``settled_mask(predictions (n, L+1)) -> (n, L+1)`` and ``oracle_exits(predictions) -> (n,)``: where the
  decision equals the final one and stays so, and the earliest such layer (the oracle exit);
- ``best_layer(accuracy_by_layer)``: the most accurate layer (ties: the later one);
- ``Decisions``: ``predictions`` (n, L+1), the full model's ``final`` (n,), ``gold`` (n,), built from a
  feature table or a ``TaskTrace``; ``metrics_at(decisions, exits)`` gives layers saved, accuracy,
  consistency, the accuracy change and the ideal speedup at given exits (replayed, or a real run's decisions),
  and ``sweep`` one row of them per threshold;
- ``most_saved_within(layers_saved, loss, max_loss)``: "the most layers saved within a budget", the one rule
  (and ``BUDGET_TOLERANCE`` the one tolerance) behind every threshold choice and "best within 1 point".

Layers are numbered 0 (embeddings) to L; arrays have L + 1 columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

#: The one tolerance of every budget comparison ("loses at most ``max_loss``"), on fractions: room for the
#: floating error of means of 0/1 outcomes, far below the 1/n that one example moves them.
BUDGET_TOLERANCE = 1e-9


def most_saved_within(layers_saved, loss, max_loss: float, *, threshold=None) -> int | None:
    """The candidate that saves the most layers within a budget: the one rule behind ``choose_threshold``,
    ``best_within`` ("best within 1 point"), chapter 03's empirical rule in ``guarantee_check`` and
    ``GapThresholdPolicy.fit``.

    ``layers_saved`` and ``loss`` (k,) per candidate — ``loss`` is what the budget limits, as a fraction (the
    accuracy drop vs the full model, 1 − consistency, an empirical risk) — and ``threshold`` (k,) the knob,
    where higher is more conservative (a stop threshold, a fixed exit layer). Returns the position of the
    candidate with the most layers saved among those with ``loss <= max_loss + BUDGET_TOLERANCE``, or None when
    none meets the budget (a NaN loss never does). **Ties** go to the lower loss (the better quality at the same
    saving), then to the higher ``threshold`` (the more conservative knob: the same replayed exits with more
    margin on new inputs), then to the earlier candidate. With one monotone knob, equal savings mean equal exits,
    so the tie only decides which of several equivalent thresholds is reported."""
    saved = np.asarray(layers_saved, dtype=np.float64).reshape(-1)
    loss = np.asarray(loss, dtype=np.float64).reshape(-1)
    knob = np.zeros_like(saved) if threshold is None else np.asarray(threshold, dtype=np.float64).reshape(-1)
    if not saved.shape == loss.shape == knob.shape:
        raise ValueError(f"layers_saved {saved.shape}, loss {loss.shape} and threshold {knob.shape} must be one "
                         "value per candidate")
    with np.errstate(invalid="ignore"):
        ok = np.flatnonzero(loss <= float(max_loss) + BUDGET_TOLERANCE)
    if not ok.size:
        return None
    order = np.lexsort((ok, -knob[ok], loss[ok], -saved[ok]))  # the last key sorts first
    return int(ok[order[0]])


def first_exit(stop_scores: np.ndarray, threshold: float, min_layer: int = 1) -> np.ndarray:
    """The stopping rule on whole trajectories: ``stop_scores`` (n, L+1) → exit layer (n,), the first layer
    ``>= min_layer`` whose score is ``>= threshold``, else L. NaN (a layer never checked) never stops."""
    scores = np.asarray(stop_scores, dtype=np.float64)
    L = scores.shape[1] - 1
    with np.errstate(invalid="ignore"):
        ok = scores >= threshold
    ok[:, : max(int(min_layer), 0)] = False
    ok[:, L] = True
    return ok.argmax(1)


def layers_saved(exits: np.ndarray, n_layers: int, *, axis: int | None = None):
    """1 − mean(exit layer) / L: the share of layers a set of exits (n,) skips (the hardware-independent saving).
    A float; with ``axis``, an array of savings along the other axes (e.g. (k,) for exits (k, n) and axis=1)."""
    saved = 1 - np.mean(exits, axis=axis) / n_layers
    return float(saved) if axis is None else saved


def settled_mask(predictions: np.ndarray) -> np.ndarray:
    """``(n, L+1)`` bool: the decision at this layer equals the final one (layer L) and stays so at every later
    layer (a reverse cumulative AND)."""
    agrees = np.asarray(predictions) == np.asarray(predictions)[:, -1:]
    return np.flip(np.logical_and.accumulate(np.flip(agrees, axis=1), axis=1), axis=1)


def oracle_exits(predictions: np.ndarray) -> np.ndarray:
    """The oracle exit (n,): the earliest layer from which the decision equals the final one and stays (it
    needs the full run to know; the upper bound every exit rule is measured against)."""
    return settled_mask(predictions).argmax(1)


def best_layer(accuracy_by_layer) -> int:
    """The most accurate layer of a per-layer accuracy curve (L+1,) — the one rule for "the best layer". Ties
    go to the **later** layer: an earlier layer is the best only when it is strictly more accurate than every
    layer after it, so "an intermediate layer beats layer L" is never said of a tie. NaN layers never win."""
    accuracy = np.asarray(accuracy_by_layer, dtype=np.float64).reshape(-1)
    if not np.isfinite(accuracy).any():
        raise ValueError("best_layer needs at least one finite accuracy")
    flipped = np.where(np.isfinite(accuracy), accuracy, -np.inf)[::-1]
    return int(len(accuracy) - 1 - np.argmax(flipped))


def n_layers_of(table: pd.DataFrame) -> int:
    """L of a feature table: ``attrs["n_layers"]`` where present, else its largest layer."""
    return int(table.attrs.get("n_layers", table["layer"].max()))


def pivot_layers(table: pd.DataFrame, values: np.ndarray) -> np.ndarray:
    """Per-row ``values`` of a feature table (rows example × layer) as a matrix (n, L+1), examples in ascending
    id order; NaN where the table has no row."""
    L = n_layers_of(table)
    _, inverse = np.unique(table["example"].to_numpy(), return_inverse=True)
    matrix = np.full((inverse.max() + 1 if len(inverse) else 0, L + 1), np.nan)
    matrix[inverse, table["layer"].to_numpy()] = values
    return matrix


@dataclass(frozen=True)
class Decisions:
    """What a replay needs per example: ``predictions`` (n, L+1) label id at every layer, ``final`` (n,) the
    full model's decision (layer L), ``gold`` (n,), and ``examples`` (n,) the example ids (ascending)."""

    predictions: np.ndarray
    final: np.ndarray
    gold: np.ndarray
    examples: np.ndarray

    @property
    def n(self) -> int:
        return len(self.gold)

    @property
    def n_layers(self) -> int:
        return self.predictions.shape[1] - 1

    def at(self, exits: np.ndarray) -> np.ndarray:
        """The decision at each example's exit layer: (n,) for exits (n,), (k, n) for k sets of exits (k, n)."""
        return self.predictions[np.arange(self.n), np.asarray(exits)]

    def take(self, idx) -> Decisions:
        """The decisions of the examples at positions ``idx`` (an index array, mask or slice)."""
        return Decisions(self.predictions[idx], self.final[idx], self.gold[idx], self.examples[idx])

    @classmethod
    def from_table(cls, table: pd.DataFrame) -> Decisions:
        """From a feature table (rows example × layer; columns ``example``, ``layer``, ``pred``, ``final_pred``,
        ``gold``). Layers missing from the table are NaN in ``predictions`` (``metrics_at`` refuses exits there);
        with every layer present the predictions are label ids (integers)."""
        predictions = pivot_layers(table, table["pred"].to_numpy(dtype=np.float64))
        if not np.isnan(predictions).any():
            predictions = predictions.astype(int)
        first = table.drop_duplicates("example").sort_values("example")
        return cls(predictions, first["final_pred"].to_numpy(), first["gold"].to_numpy(), first["example"].to_numpy())

    @classmethod
    def from_task_trace(cls, task_trace) -> Decisions:
        """From a ``TaskTrace``: its calibrated predictions and gold labels."""
        preds = np.asarray(task_trace.predictions())
        return cls(preds, preds[:, -1], np.asarray(task_trace.gold), np.arange(len(preds)))


def metrics_at(decisions: Decisions, exits: np.ndarray, *, predictions: np.ndarray | None = None) -> dict:
    """The one metrics function: exit layers (n,) replayed on ``decisions`` — ``layers_saved`` = 1 − mean(exit)/L,
    ``accuracy`` (decision at the exit vs gold), ``consistency`` (vs the full model's ``final``),
    ``full_accuracy``, ``accuracy_change_pts`` (100 × difference), ``mean_exit_layer``, ``ideal_speedup``
    (L / mean exit layer: the speedup if time were proportional to the layers run; inf for exits at layer 0),
    ``n``, ``L``. ``predictions`` (n,): the decisions a real run made at its exits (default: the replay,
    ``decisions.at(exits)``). ``ValueError`` when an exit falls on a layer the decisions lack."""
    exits = np.asarray(exits)
    at_exit = decisions.at(exits) if predictions is None else np.asarray(predictions)
    if np.isnan(np.asarray(at_exit, dtype=np.float64)).any():
        raise ValueError("some exit layers have no row in the table")
    L = decisions.n_layers
    accuracy = float((at_exit == decisions.gold).mean())
    full = float((decisions.final == decisions.gold).mean())
    depth = float(exits.mean())
    return {"layers_saved": layers_saved(exits, L), "accuracy": accuracy,
            "consistency": float((at_exit == decisions.final).mean()), "full_accuracy": full,
            "accuracy_change_pts": 100 * (accuracy - full), "mean_exit_layer": depth,
            "ideal_speedup": L / depth if depth > 0 else np.inf, "n": int(len(exits)), "L": int(L)}


def sweep(decisions: Decisions, stop_scores: np.ndarray, thresholds: Sequence[float], min_layer: int) -> pd.DataFrame:
    """One row per threshold: ``threshold`` then the ``metrics_at`` of ``first_exit(stop_scores, threshold,
    min_layer)``."""
    return pd.DataFrame([{"threshold": float(t), **metrics_at(decisions, first_exit(stop_scores, t, min_layer))}
                         for t in thresholds])
