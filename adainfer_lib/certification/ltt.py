"""Guaranteed exits: Learn-then-Test calibration of an exit rule's threshold (Angelopoulos et al. 2021, "Learn
then Test: Calibrating Predictive Algorithms to Achieve Risk Control"; applied to early exit by Schuster et al.
2022, "Confident Adaptive Language Modeling" (CALM), NeurIPS).

The guarantee. For an exit rule with threshold λ and a **calibration** set of n prompts that were not used to
fit the rule, exchangeable with the prompts it will serve, ``certify_threshold`` returns a λ such that, with
probability at least 1 − ε over the calibration draw, the expected loss on a new prompt is at most δ:
``P( E[loss(λ)] <= δ ) >= 1 - ε``. It is a guarantee *on average over inputs*, not per input. The losses
(disagreement with the full model, or accuracy drop) come from an ``ExitReplay`` (``exit_replay``).

The test. Candidate thresholds are ordered from conservative (high: few exits) to aggressive (low). For each,
the null hypothesis H₀(λ): risk(λ) > δ gets a p-value from the empirical risk R̂ on the n calibration prompts
(``p_values``). **Fixed-sequence testing** (the default ``procedure``): test the candidates in order, reject H₀
while p <= ε, stop at the first failure; every rejected candidate is certified and the last one — the most
aggressive certified threshold — is deployed. ``procedure="bonferroni"`` instead certifies every candidate
with p <= ε/k. When nothing is certified the rule never exits early: its threshold becomes
``never_exit_threshold(rule)``, above every stop probability (1.01 for stop probabilities, the project's
"never stop early"; the largest float for a threshold on an unbounded feature).
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ..common.checks import check_choice
from ..rules.policy import ExitPolicy
from .exit_replay import RISKS, ExitReplay, replay_exits
from .p_values import bonferroni_test, check_level, fixed_sequence_test, p_values

PROCEDURES = ("fixed_sequence", "bonferroni")
#: Marks "never exits early" in tables of thresholds (a rule itself gets ``never_exit_threshold``).
NEVER_EXIT = math.inf


@dataclass(frozen=True)
class Certification:
    """What Learn-then-Test decided on one calibration set.

    Per candidate (k,), conservative → aggressive: ``thresholds``, ``empirical_risk`` (on calibration),
    ``p_values``, ``certified`` (H₀ "risk > δ" rejected), ``tested`` (reached by the procedure),
    ``layers_saved`` (on calibration). ``threshold``: the deployed, most aggressive certified threshold, or
    None when nothing is certified (then the rule never exits early). ``delta`` (risk level), ``epsilon``
    (error level), ``risk``, ``method`` (p-value), ``procedure``, ``n`` (calibration prompts), ``n_layers``.
    """

    thresholds: np.ndarray
    empirical_risk: np.ndarray
    p_values: np.ndarray
    certified: np.ndarray
    tested: np.ndarray
    layers_saved: np.ndarray
    threshold: float | None
    delta: float
    epsilon: float
    risk: str
    method: str
    procedure: str
    n: int
    n_layers: int

    @property
    def index(self) -> int | None:
        """Position of the deployed threshold among the candidates (None: nothing certified)."""
        hits = np.flatnonzero(self.certified)
        return int(hits[-1]) if hits.size else None

    @property
    def calibration_risk(self) -> float:
        """Empirical risk of the deployed threshold on calibration (0 when nothing is certified)."""
        return 0.0 if self.index is None else float(self.empirical_risk[self.index])

    @property
    def calibration_layers_saved(self) -> float:
        """Layers saved by the deployed threshold on calibration (0 when nothing is certified)."""
        return 0.0 if self.index is None else float(self.layers_saved[self.index])

    @property
    def failed_at(self) -> float | None:
        """Fixed sequence: the first candidate not certified, which stopped the test (None: none failed)."""
        failed = np.flatnonzero(self.tested & ~self.certified)
        return float(self.thresholds[failed[0]]) if failed.size else None

    def is_certified(self, threshold: float, atol: float = 1e-9) -> bool:
        """True when ``threshold`` is one of the certified candidates. A threshold between candidates was never
        tested and is not certified; a never-exit threshold is trivially safe but not a certified exit."""
        t = float(threshold)
        return bool(np.any(self.certified & np.isclose(self.thresholds, t, rtol=0, atol=atol)))

    def status(self) -> np.ndarray:
        """Per candidate: "certified", "failed" (tested, not certified) or "not tested"."""
        return np.where(self.certified, "certified", np.where(self.tested, "failed", "not tested"))

    def to_frame(self) -> pd.DataFrame:
        """One row per candidate: threshold, empirical_risk, p_value, status, layers_saved, deployed."""
        return pd.DataFrame({"threshold": self.thresholds, "empirical_risk": self.empirical_risk,
                             "p_value": self.p_values, "status": self.status(), "layers_saved": self.layers_saved,
                             "deployed": np.arange(len(self.thresholds)) == (-1 if self.index is None else self.index)})

    def summary(self) -> str:
        """One sentence, computed from the numbers."""
        what = {"disagreement": "disagreement with the full model", "accuracy_drop": "accuracy drop"}[self.risk]
        head = (f"Learn-then-Test ({self.procedure.replace('_', '-')}, {self.method.replace('_', '–')} p-values) "
                f"on n = {self.n} calibration prompts, δ = {self.delta:.1%}, ε = {self.epsilon:.0%}: ")
        if self.threshold is None:
            first = self.failed_at
            why = f" (the first candidate, {first:g}, has p = {self.p_values[0]:.3g} > ε)" if first is not None else ""
            return head + f"no threshold is certified{why}; the rule never exits early."
        return head + (f"threshold {self.threshold:g} is certified — {what} at most {self.delta:.1%} on new "
                       f"prompts with probability ≥ {1 - self.epsilon:.0%}; on calibration it shows "
                       f"{self.calibration_risk:.2%} and saves {self.calibration_layers_saved:.1%} of the layers.")

    def __str__(self) -> str:
        return self.summary()


def learn_then_test(replay: ExitReplay, idx=None, *, delta: float = 0.02, epsilon: float = 0.05,
                    risk: str = "disagreement", method: str = "binomial",
                    procedure: str = "fixed_sequence") -> Certification:
    """Learn-then-Test on a replay (all prompts, or the calibration subset ``idx``: a boolean mask, a slice or
    positions, counted by the prompts it selects — ``ExitReplay.positions``): p-values of H₀: risk > δ for every
    candidate, then ``procedure`` ("fixed_sequence" in the replay's order, or "bonferroni"). Returns a
    ``Certification``; ValueError on bad levels or names, or a bad subset (a mask of another length, positions
    out of range or repeated, an empty subset)."""
    delta, epsilon = check_level(delta, "delta"), check_level(epsilon, "epsilon")
    check_choice(risk, "risk", RISKS)
    check_choice(procedure, "procedure", PROCEDURES)
    idx = replay.positions(idx)
    n = len(idx)
    risks = replay.risk(risk, idx)
    p = p_values(risks, n, delta, method)
    if procedure == "fixed_sequence":
        certified = fixed_sequence_test(p, epsilon)
        stop = int(certified.sum())
        tested = np.arange(len(p)) <= stop
    else:
        certified, tested = bonferroni_test(p, epsilon), np.ones(len(p), bool)
    hits = np.flatnonzero(certified)
    threshold = float(replay.thresholds[hits[-1]]) if hits.size else None
    return Certification(np.asarray(replay.thresholds, dtype=np.float64), risks, p, certified, tested,
                         replay.layers_saved(idx), threshold, delta, epsilon, risk, method, procedure, n,
                         replay.n_layers)


def _looks_like_fit_table(rule, table: pd.DataFrame) -> bool:
    meta = rule.metadata if isinstance(rule, ExitPolicy) else {}
    same = all(meta.get(k) == table.attrs.get(k) for k in ("task", "split"))
    return bool(meta) and same \
        and meta.get("n_train_examples") == table["example"].nunique()


def never_exit_threshold(rule) -> float:
    """A threshold above every stop probability ``rule`` can give, so it never exits early: the top of its
    ``threshold_range`` (1.01 for stop probabilities in [0, 1]), else the largest finite float."""
    high = rule.threshold_range[1]
    return float(high) if high is not None and np.isfinite(high) else sys.float_info.max


def certified_copy(rule, certification: Certification):
    """A copy of ``rule`` whose ``threshold`` is the certified one (``never_exit_threshold`` when none is),
    with the ``Certification`` attached as ``certification_``; it runs through ``run_early_exit`` unchanged."""
    out = rule.with_threshold(never_exit_threshold(rule) if certification.threshold is None
                              else float(certification.threshold))
    out.certification_ = certification
    return out


def certify_threshold(rule, calibration: pd.DataFrame, *, delta: float = 0.02, epsilon: float = 0.05,
                      risk: str = "disagreement", method: str = "binomial", procedure: str = "fixed_sequence",
                      thresholds: Sequence[float] | None = None):
    """Learn-then-Test for an exit rule: the most aggressive threshold whose ``risk`` on new prompts is at most
    ``delta`` with probability >= 1 − ``epsilon`` over the calibration draw (CALM, Schuster et al. 2022).

    ``rule``: a fitted ``ExitPolicy`` (SVM, CRF, logistic, threshold) or a threshold rule with a ``feature``;
    ``calibration``: a feature table (``ai.feature_table``) of prompts NOT used to fit the rule (a warning if
    it looks like the fitting table); ``thresholds``: candidates, conservative → aggressive (default
    ``default_candidates``). Returns ``(certified rule, Certification)``: a copy of the rule with the certified
    threshold, or with ``never_exit_threshold`` (it never exits early) when nothing is certified. ValueError
    for δ or ε outside (0, 1), an unknown risk / method / procedure, or a table missing layers."""
    if _looks_like_fit_table(rule, calibration):
        warnings.warn("the calibration table looks like the table the rule was fitted on (same task, split and "
                      "size): Learn-then-Test needs prompts the rule has not seen", stacklevel=2)
    replay = replay_exits(rule, calibration, thresholds)
    cert = learn_then_test(replay, delta=delta, epsilon=epsilon, risk=risk, method=method, procedure=procedure)
    return certified_copy(rule, cert), cert

