"""An exit rule replayed on a traced calibration pool at every candidate threshold: ``ExitReplay``.

The losses of every candidate threshold on every prompt come from the logit lens (a real exit at layer k
equals the lens at k, ``tests/test_early_exit.py``), so Learn-then-Test and ``guarantee_check`` can redraw
hundreds of calibration/test splits of one traced pool without running the model again. Losses (0/1, per
candidate and prompt):

- ``"disagreement"``: 1[the exit's prediction ≠ the full model's] (needs no labels: CALM's "consistency");
- ``"accuracy_drop"``: 1[the exit is wrong and the full model is right] (needs gold labels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from ..common.checks import check_choice, check_subset
from ..common.replay import Decisions, first_exit, layers_saved, oracle_exits
from ..rules.interface import ExitRule

RISKS = ("disagreement", "accuracy_drop")
#: Default candidates for stop probabilities in [0, 1]: 1.00, 0.99, ..., 0.00 (conservative → aggressive).
DEFAULT_CANDIDATES = tuple(np.round(np.arange(100, -1, -1) / 100, 2))


def rule_stop_matrix(rule, table: pd.DataFrame) -> np.ndarray:
    """P(stop) (n, L+1) of an exit rule (``rules.ExitRule``) on a feature table, examples in ascending id
    order. TypeError for anything that is not an exit rule."""
    if not isinstance(rule, ExitRule):
        raise TypeError(f"{type(rule).__name__} is not an exit rule (ai.ExitPolicy, ai.GapThresholdPolicy, ...)")
    return np.asarray(rule.stop_matrix(table), dtype=np.float64)


def default_candidates(stop_proba: np.ndarray, min_layer: int = 1) -> np.ndarray:
    """Candidate thresholds, conservative → aggressive: ``DEFAULT_CANDIDATES`` (1.00 … 0.00) when the stop
    probabilities at the decision layers lie in [0, 1], else 101 quantiles of them, descending."""
    P = np.asarray(stop_proba, dtype=np.float64)[:, max(int(min_layer), 0):-1]
    values = P[np.isfinite(P)]
    if values.size == 0 or (values.min() >= 0 and values.max() <= 1):
        return np.asarray(DEFAULT_CANDIDATES, dtype=np.float64)
    return np.unique(np.quantile(values, np.linspace(0, 1, 101)))[::-1].copy()


@dataclass(frozen=True)
class ExitReplay:
    """An exit rule replayed on n traced prompts at k candidate thresholds (conservative → aggressive).

    - ``thresholds`` (k,); ``stop_proba`` (n, L+1) and ``predictions`` (n, L+1) (label id per layer);
      ``final`` (n,) the full model's prediction; ``gold`` (n,); ``examples`` (n,) their ids;
    - ``exits`` (k, n) exit layer per candidate and prompt; ``disagreement`` and ``accuracy_drop`` (k, n)
      the 0/1 losses; ``min_layer``, ``n_layers`` (L).
    """

    thresholds: np.ndarray
    stop_proba: np.ndarray
    predictions: np.ndarray
    final: np.ndarray
    gold: np.ndarray
    examples: np.ndarray
    exits: np.ndarray
    disagreement: np.ndarray
    accuracy_drop: np.ndarray
    min_layer: int
    n_layers: int
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.final)

    def losses(self, risk: str = "disagreement") -> np.ndarray:
        """The (k, n) 0/1 losses of ``risk`` (``RISKS``)."""
        return getattr(self, check_choice(risk, "risk", RISKS))

    def positions(self, subset=None) -> np.ndarray:
        """The prompt positions (m,) a subset names — None (all n), a boolean mask of length n, a slice, or
        positions in 0..n-1 — so that every way of naming it counts the m prompts selected
        (``common.checks.check_subset``: ``ValueError`` for a mask of another length, positions out of range or
        repeated, an empty subset)."""
        return check_subset(subset, self.n, "the calibration subset")

    def risk(self, risk: str = "disagreement", idx=None) -> np.ndarray:
        """Empirical risk (k,) per candidate, over all prompts or the subset ``idx`` (see ``positions``)."""
        return self.losses(risk)[:, self.positions(idx)].mean(1)

    def layers_saved(self, idx=None) -> np.ndarray:
        """1 − mean(exit layer)/L (k,) per candidate, over all prompts or the subset ``idx`` (see ``positions``)."""
        return 1.0 - self.exits[:, self.positions(idx)].mean(1) / self.n_layers

    def at(self, threshold: float) -> dict[str, np.ndarray]:
        """Exit layers and losses (each (n,)) at any ``threshold`` (``NEVER_EXIT`` = inf: every prompt runs to L)."""
        exits = first_exit(self.stop_proba, threshold, self.min_layer)
        pred = self.predictions[np.arange(self.n), exits]
        return {"exits": exits, "disagreement": pred != self.final,
                "accuracy_drop": (pred != self.gold) & (self.final == self.gold)}

    def oracle_layers_saved(self) -> float:
        """The oracle's saving on these prompts: earliest layer from which the decision is final and stays."""
        return layers_saved(oracle_exits(np.column_stack([self.predictions[:, :-1], self.final])), self.n_layers)

    def take(self, idx) -> ExitReplay:
        """The replay restricted to the subset ``idx`` of its prompts (see ``positions``)."""
        idx = self.positions(idx)
        return ExitReplay(self.thresholds, self.stop_proba[idx], self.predictions[idx], self.final[idx],
                          self.gold[idx], self.examples[idx], self.exits[:, idx], self.disagreement[:, idx],
                          self.accuracy_drop[:, idx], self.min_layer, self.n_layers, dict(self.meta))


def replay_matrices(stop_proba: np.ndarray, predictions: np.ndarray, final: np.ndarray, gold: np.ndarray, *,
                    min_layer: int, thresholds: Sequence[float] | None = None, examples: np.ndarray | None = None,
                    meta: dict | None = None) -> ExitReplay:
    """``ExitReplay`` from matrices: ``stop_proba`` and ``predictions`` (n, L+1), ``final`` and ``gold`` (n,),
    the stopping rule's ``min_layer`` and the candidates (default ``default_candidates``), conservative first."""
    P, preds = np.asarray(stop_proba, dtype=np.float64), np.asarray(predictions)
    final, gold = np.asarray(final), np.asarray(gold)
    if P.ndim != 2 or P.shape != preds.shape or final.shape != (len(P),) or gold.shape != (len(P),):
        raise ValueError(f"stop_proba {P.shape} and predictions {preds.shape} must be (n, L+1), final {final.shape} "
                         f"and gold {gold.shape} (n,)")
    cands = default_candidates(P, min_layer) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    if cands.ndim != 1 or cands.size == 0 or not np.isfinite(cands).all():
        raise ValueError("thresholds must be a non-empty sequence of finite numbers")
    exits = np.stack([first_exit(P, t, min_layer) for t in cands])
    at_exit = preds[np.arange(len(P))[None, :], exits]
    disagreement = at_exit != final[None]
    drop = (at_exit != gold[None]) & (final == gold)[None]
    examples = np.arange(len(P)) if examples is None else np.asarray(examples)
    return ExitReplay(cands, P, preds, final, gold, examples, exits, disagreement, drop, int(min_layer),
                      P.shape[1] - 1, dict(meta or {}))


def replay_exits(rule, table: pd.DataFrame, thresholds: Sequence[float] | None = None) -> ExitReplay:
    """Replay ``rule`` (an ``ExitPolicy`` of any classifier, or a threshold rule) on a feature table at each
    candidate threshold (default ``default_candidates``; give them conservative → aggressive, i.e. a
    descending sequence for stop probabilities). No model runs: exits and decisions come from the trace.
    ValueError when the table lacks some example's layers."""
    P = rule_stop_matrix(rule, table)
    decisions = Decisions.from_table(table)
    if P.shape != decisions.predictions.shape or np.isnan(decisions.predictions).any():
        raise ValueError(f"the table must hold every layer 0..{decisions.n_layers} of every example (stop matrix "
                         f"{P.shape}, decisions {decisions.predictions.shape})")
    return replay_matrices(P, decisions.predictions.astype(int), decisions.final, decisions.gold,
                           min_layer=int(rule.min_layer), thresholds=thresholds, examples=decisions.examples,
                           meta={k: table.attrs.get(k) for k in ("model", "task", "split")})

