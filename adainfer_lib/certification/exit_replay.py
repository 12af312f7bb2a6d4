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

    - ``decisions``: the prompts' ``common.replay.Decisions`` (label id per layer (n, L+1), the full model's
      ``final`` (n,), ``gold`` (n,), example ids); ``stop_proba`` (n, L+1) the rule's stop probabilities;
    - ``thresholds`` (k,); ``exits`` (k, n) exit layer per candidate and prompt; ``disagreement`` and
      ``accuracy_drop`` (k, n) the 0/1 losses; ``min_layer``.
    """

    thresholds: np.ndarray
    stop_proba: np.ndarray
    decisions: Decisions
    exits: np.ndarray
    disagreement: np.ndarray
    accuracy_drop: np.ndarray
    min_layer: int
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.decisions.n

    @property
    def n_layers(self) -> int:
        return self.decisions.n_layers

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
        """``common.replay.layers_saved`` (k,) per candidate, over all prompts or the subset ``idx`` (see
        ``positions``)."""
        return layers_saved(self.exits[:, self.positions(idx)], self.n_layers, axis=1)

    def at(self, threshold: float) -> dict[str, np.ndarray]:
        """Exit layers and losses (each (n,)) at any ``threshold`` (``NEVER_EXIT`` = inf: every prompt runs to L)."""
        exits = first_exit(self.stop_proba, threshold, self.min_layer)
        disagreement, drop = _losses(self.decisions, exits)
        return {"exits": exits, "disagreement": disagreement, "accuracy_drop": drop}

    def oracle_layers_saved(self) -> float:
        """The oracle's saving on these prompts: earliest layer from which the decision is final and stays."""
        return layers_saved(oracle_exits(self.decisions.predictions), self.n_layers)

    def take(self, idx) -> ExitReplay:
        """The replay restricted to the subset ``idx`` of its prompts (see ``positions``)."""
        idx = self.positions(idx)
        return ExitReplay(self.thresholds, self.stop_proba[idx], self.decisions.take(idx), self.exits[:, idx],
                          self.disagreement[:, idx], self.accuracy_drop[:, idx], self.min_layer, dict(self.meta))


def _losses(decisions: Decisions, exits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 0/1 losses at ``exits`` ((n,) or (k, n)): disagreement with the full model, and accuracy drop (wrong
    at the exit where the full model is right)."""
    at_exit = decisions.at(exits)
    return at_exit != decisions.final, (at_exit != decisions.gold) & (decisions.final == decisions.gold)


def replay_decisions(stop_proba: np.ndarray, decisions: Decisions, *, min_layer: int,
                     thresholds: Sequence[float] | None = None, meta: dict | None = None) -> ExitReplay:
    """``ExitReplay`` of the stop probabilities ``stop_proba`` (n, L+1) on ``decisions`` (every layer of every
    prompt), the stopping rule's ``min_layer`` and the candidates (default ``default_candidates``), conservative
    first. ``ValueError`` for shapes that do not match, decisions missing a layer, or an empty or non-finite
    candidate list."""
    P = np.asarray(stop_proba, dtype=np.float64)
    if P.ndim != 2 or P.shape != decisions.predictions.shape:
        raise ValueError(f"stop_proba {P.shape} must be (n, L+1) like the decisions {decisions.predictions.shape}")
    if np.isnan(np.asarray(decisions.predictions, dtype=np.float64)).any():
        raise ValueError(f"the decisions must hold every layer 0..{decisions.n_layers} of every example")
    cands = default_candidates(P, min_layer) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    if cands.ndim != 1 or cands.size == 0 or not np.isfinite(cands).all():
        raise ValueError("thresholds must be a non-empty sequence of finite numbers")
    exits = np.stack([first_exit(P, t, min_layer) for t in cands])
    disagreement, drop = _losses(decisions, exits)
    return ExitReplay(cands, P, decisions, exits, disagreement, drop, int(min_layer), dict(meta or {}))


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
    return replay_decisions(P, decisions, min_layer=int(rule.min_layer), thresholds=thresholds,
                            meta={k: table.attrs.get(k) for k in ("model", "task", "split")})
