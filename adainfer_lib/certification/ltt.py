"""Guaranteed exits: Learn-then-Test calibration of an exit rule's threshold (Angelopoulos et al. 2021, "Learn
then Test: Calibrating Predictive Algorithms to Achieve Risk Control"; applied to early exit by Schuster et al.
2022, "Confident Adaptive Language Modeling" (CALM), NeurIPS).

The guarantee. For an exit rule with threshold λ and a **calibration** set of n prompts that were not used to
fit the rule, exchangeable with the prompts it will serve, ``certify_threshold`` returns a λ such that, with
probability at least 1 − ε over the calibration draw, the expected loss on a new prompt is at most δ:
``P( E[loss(λ)] <= δ ) >= 1 - ε``. It is a guarantee *on average over inputs*, not per input. Losses:

- ``"disagreement"``: 1[the exit's prediction ≠ the full model's] (needs no labels: CALM's "consistency");
- ``"accuracy_drop"``: 1[the exit is wrong and the full model is right] (needs gold labels).

The test. Candidate thresholds are ordered from conservative (high: few exits) to aggressive (low). For each,
the null hypothesis H₀(λ): risk(λ) > δ gets a p-value from the empirical risk R̂ on the n calibration prompts:

- ``"binomial"`` (default): the exact binomial tail P[Bin(n, δ) <= nR̂] — valid for 0/1 losses, the most
  powerful of the two (LTT §3.2; MAPIE's ``binary=True`` Bentkus term);
- ``"hoeffding_bentkus"``: min(exp(−n·h(min(R̂, δ), δ)), e·P[Bin(n, δ) <= ⌈nR̂⌉]) with
  h(a, b) = a log(a/b) + (1−a) log((1−a)/(1−b)) — LTT's default, valid for any loss in [0, 1].

**Fixed-sequence testing** (the default ``procedure``): test the candidates in order, reject H₀ while p <= ε,
stop at the first failure; every rejected candidate is certified (family-wise error <= ε, no multiplicity
correction needed because the order was fixed before seeing the data) and the last one — the most aggressive
certified threshold — is deployed. ``procedure="bonferroni"`` instead certifies every candidate with
p <= ε/k (k candidates; order-free, weaker with many candidates). When nothing is certified the rule never
exits early: its threshold becomes ``never_exit_threshold(rule)``, above every stop probability (1.01 for
stop probabilities, the project's "never stop early"; the largest float for a threshold on an unbounded
feature).

Why not MAPIE. MAPIE 1.6's ``mapie.risk_control`` has Learn-then-Test (``ltt_procedure``,
``compute_hoeffding_bentkus_p_value``) with the same p-values, but its default family-wise procedure is
Bonferroni–Holm, and its ``"fixed_sequence"`` option reorders the candidates by the direction of the
*calibration* risk curve (a data-dependent order) and warns whenever that curve is not monotone — which the
risk of an exit rule over a fine threshold grid rarely is. The p-values are twenty lines of
``scipy.stats.binom``; we implement them here, with the order fixed in advance, and test them against
hand-computed cases (``tests/test_risk_control.py``).

Replay on a trace: the losses of every candidate threshold on every prompt come from the logit lens (a real
exit at layer k equals the lens at k, ``tests/test_early_exit.py``), so ``guarantee_check`` can redraw
hundreds of calibration/test splits of one traced pool without running the model again.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..common.replay import Decisions, first_exit, layers_saved, oracle_exits
from ..rules.interface import ExitRule
from ..rules.policy import ExitPolicy

RISKS = ("disagreement", "accuracy_drop")
P_VALUE_METHODS = ("binomial", "hoeffding_bentkus")
PROCEDURES = ("fixed_sequence", "bonferroni")
#: Marks "never exits early" in tables of thresholds (a rule itself gets ``never_exit_threshold``).
NEVER_EXIT = math.inf
#: Default candidates for stop probabilities in [0, 1]: 1.00, 0.99, ..., 0.00 (conservative → aggressive).
DEFAULT_CANDIDATES = tuple(np.round(np.arange(100, -1, -1) / 100, 2))


def check_level(value: float, name: str) -> float:
    """``value`` as a float strictly between 0 and 1 (a risk level δ or an error level ε); ValueError otherwise."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number strictly between 0 and 1, not {value!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")
    return value


def _check_choice(value: str, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, not {value!r}")
    return value


# ---------------------------------------------------------------------------------------------------
# p-values and the multiple-testing procedure


def _risk_and_n(risk_hat, n: int) -> tuple[np.ndarray, int]:
    r = np.asarray(risk_hat, dtype=np.float64)
    if int(n) < 1:
        raise ValueError(f"the calibration set needs at least one example, got n={n}")
    if np.any(~np.isfinite(r)) or np.any(r < 0) or np.any(r > 1):
        raise ValueError("empirical risks must lie in [0, 1]")
    return r, int(n)


def binomial_p_value(risk_hat, n: int, delta: float) -> np.ndarray:
    """Exact binomial p-value of H₀: risk > ``delta``, from the empirical risk ``risk_hat`` (scalar or (k,)) of
    a 0/1 loss on ``n`` calibration examples: P[Bin(n, delta) <= n·risk_hat]. Same shape as ``risk_hat``.
    Valid for binary losses only (LTT, Angelopoulos et al. 2021, §3.2). Raises ValueError for delta outside
    (0, 1), n < 1 or a risk outside [0, 1]."""
    from scipy.stats import binom

    r, n = _risk_and_n(risk_hat, n)
    delta = check_level(delta, "delta")
    losses = np.floor(n * r + 1e-9)  # a count of 0/1 losses (guard against floating error in mean * n)
    return np.minimum(binom.cdf(losses, n, delta), 1.0)


def hoeffding_bentkus_p_value(risk_hat, n: int, delta: float) -> np.ndarray:
    """Hoeffding–Bentkus p-value of H₀: risk > ``delta`` for a loss in [0, 1] (LTT, Angelopoulos et al. 2021,
    Prop. 3.5; Bates et al. 2021): min(exp(−n·h(min(R̂, δ), δ)), e·P[Bin(n, δ) <= ⌈n R̂⌉]), with
    h(a, b) = a log(a/b) + (1−a) log((1−a)/(1−b)). ``risk_hat`` scalar or (k,); same shape back."""
    from scipy.stats import binom

    r, n = _risk_and_n(risk_hat, n)
    delta = check_level(delta, "delta")
    a = np.minimum(r, delta)
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(a > 0, a * np.log(a / delta), 0.0)
    h = first + (1 - a) * np.log((1 - a) / (1 - delta))
    hoeffding = np.exp(-n * h)
    bentkus = math.e * binom.cdf(np.ceil(n * r - 1e-9), n, delta)
    return np.minimum(np.minimum(hoeffding, bentkus), 1.0)


def p_values(risk_hat, n: int, delta: float, method: str = "binomial") -> np.ndarray:
    """``binomial_p_value`` or ``hoeffding_bentkus_p_value`` by name (``P_VALUE_METHODS``)."""
    _check_choice(method, "method", P_VALUE_METHODS)
    return (binomial_p_value if method == "binomial" else hoeffding_bentkus_p_value)(risk_hat, n, delta)


def fixed_sequence_test(p: Sequence[float], epsilon: float) -> np.ndarray:
    """Fixed-sequence testing (Bauer 1991; LTT §4): hypotheses in the given order, each rejected at level
    ``epsilon`` while every earlier one was; the first p > epsilon stops the sequence. Returns the rejected
    mask (k,) — always a prefix. Controls the family-wise error rate at ``epsilon`` for an order fixed before
    seeing the data."""
    epsilon = check_level(epsilon, "epsilon")
    p = np.asarray(p, dtype=np.float64)
    return np.logical_and.accumulate(p <= epsilon) if p.size else np.zeros(0, bool)


def bonferroni_test(p: Sequence[float], epsilon: float) -> np.ndarray:
    """Bonferroni: reject every hypothesis with p <= epsilon / k (k = number of hypotheses). Mask (k,)."""
    epsilon = check_level(epsilon, "epsilon")
    p = np.asarray(p, dtype=np.float64)
    return p <= epsilon / max(p.size, 1)


def max_certifiable_risk(n: int, delta: float, epsilon: float, method: str = "binomial") -> float:
    """The largest empirical risk on ``n`` calibration examples whose p-value is <= ``epsilon`` (NaN when not
    even R̂ = 0 certifies): how much calibration disagreement a threshold may show and still be certified
    at ``delta``. Sizing aid; e.g. n=1000, δ=2%, ε=5%: 1.2% (binomial) / 1.0% (Hoeffding–Bentkus)."""
    counts = np.arange(int(n) + 1)
    ok = p_values(counts / n, n, delta, method) <= check_level(epsilon, "epsilon")
    return float(counts[ok].max() / n) if ok.any() else float("nan")


def min_calibration_size(delta: float, epsilon: float) -> int:
    """The smallest n at which a threshold with zero calibration losses is certified, for either p-value:
    the least n with (1 − δ)^n <= ε (e.g. δ=2%, ε=5%: 149)."""
    delta, epsilon = check_level(delta, "delta"), check_level(epsilon, "epsilon")
    n = max(1, math.ceil(math.log(epsilon) / math.log1p(-delta)))
    while (1 - delta) ** n > epsilon:  # guard the ceil against rounding
        n += 1
    while n > 1 and (1 - delta) ** (n - 1) <= epsilon:
        n -= 1
    return n


# ---------------------------------------------------------------------------------------------------
# Replaying an exit rule's thresholds on a trace


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
        return getattr(self, _check_choice(risk, "risk", RISKS))

    def risk(self, risk: str = "disagreement", idx=None) -> np.ndarray:
        """Empirical risk (k,) per candidate, over all prompts or the positions ``idx``."""
        losses = self.losses(risk)
        return (losses if idx is None else losses[:, idx]).mean(1)

    def layers_saved(self, idx=None) -> np.ndarray:
        """1 − mean(exit layer)/L (k,) per candidate, over all prompts or the positions ``idx``."""
        exits = self.exits if idx is None else self.exits[:, idx]
        return 1.0 - exits.mean(1) / self.n_layers

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
        """The replay restricted to prompt positions ``idx``."""
        idx = np.asarray(idx)
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


# ---------------------------------------------------------------------------------------------------
# Learn-then-Test


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
    """Learn-then-Test on a replay (all prompts, or the calibration positions ``idx``): p-values of H₀: risk > δ
    for every candidate, then ``procedure`` ("fixed_sequence" in the replay's order, or "bonferroni").
    Returns a ``Certification``; ValueError on bad levels or names."""
    delta, epsilon = check_level(delta, "delta"), check_level(epsilon, "epsilon")
    _check_choice(risk, "risk", RISKS)
    _check_choice(procedure, "procedure", PROCEDURES)
    n = replay.n if idx is None else len(np.asarray(idx))
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


# ---------------------------------------------------------------------------------------------------
# Checking the guarantee by redrawing calibration/test splits of one traced pool


def _empirical_choice(risks: np.ndarray, saved: np.ndarray, max_risk: float) -> int | None:
    """Chapter 03's rule on one calibration draw: the candidate saving the most layers with empirical risk
    <= ``max_risk`` (ties: the more conservative, i.e. earlier, candidate); None if there is none."""
    ok = np.flatnonzero(risks <= max_risk + 1e-12)
    if not ok.size:
        return None
    return int(ok[np.argmax(saved[ok])])  # argmax takes the first (most conservative) of equal savings


def guarantee_check(replay: ExitReplay, *, n_cal: int, n_draws: int = 200, delta: float = 0.02,
                    epsilon: float = 0.05, risk: str = "disagreement", method: str = "binomial",
                    procedure: str = "fixed_sequence", fixed: Mapping[str, float] | None = None,
                    empirical: Mapping[str, float] | None = None, seed: int = 0) -> pd.DataFrame:
    """Redraw ``n_draws`` random calibration/test splits of the replayed pool (``n_cal`` prompts calibrate, the
    other ``n - n_cal`` test); in each, certify with Learn-then-Test on calibration and measure the risk on test.
    Beside it, rules without a guarantee: ``fixed`` (name → a threshold chosen elsewhere, e.g. on the train
    split) and ``empirical`` (name → max risk: the candidate saving the most layers whose *calibration* risk is
    at most that — chapter 03's "≥ 99% consistency" is ``0.01``).

    One row per draw × rule: draw, rule, threshold (``NEVER_EXIT`` = inf: never exits early), certified
    (Learn-then-Test found one), cal_risk, test_risk, pool_risk (over all n prompts), violated (test_risk >
    delta), pool_violated, test_layers_saved, layers_saved (over the pool), n_cal, n_test, delta, epsilon, risk.
    With ``n_cal == n`` there is one draw and no test part (test columns NaN). ValueError for ``n_cal`` outside
    1..n and as in ``learn_then_test``."""
    n = replay.n
    if not 1 <= int(n_cal) <= n:
        raise ValueError(f"n_cal must lie between 1 and the pool size {n}, got {n_cal}")
    n_cal = int(n_cal)
    losses = replay.losses(risk)
    pool_risk, pool_saved = losses.mean(1), replay.layers_saved()
    rng = np.random.default_rng(seed)
    fixed_at = {name: replay.at(t) for name, t in (fixed or {}).items()}
    draws = 1 if n_cal == n else int(n_draws)
    rows = []
    for draw in range(draws):
        perm = rng.permutation(n)
        cal, test = perm[:n_cal], perm[n_cal:]
        cal_risks, cal_saved = losses[:, cal].mean(1), replay.layers_saved(cal)
        cert = learn_then_test(replay, cal, delta=delta, epsilon=epsilon, risk=risk, method=method,
                               procedure=procedure)
        chosen = {"Learn-then-Test": cert.index}
        for name, max_risk in (empirical or {}).items():
            chosen[name] = _empirical_choice(cal_risks, cal_saved, max_risk)
        for name, j in chosen.items():
            if j is None:  # never exits early
                row = dict(threshold=NEVER_EXIT, cal_risk=0.0, test_risk=0.0 if len(test) else np.nan, pool_risk=0.0,
                           test_layers_saved=0.0 if len(test) else np.nan, layers_saved=0.0)
            else:
                row = dict(threshold=float(replay.thresholds[j]), cal_risk=float(cal_risks[j]),
                           test_risk=float(losses[j, test].mean()) if len(test) else np.nan,
                           pool_risk=float(pool_risk[j]),
                           test_layers_saved=layers_saved(replay.exits[j, test], replay.n_layers)
                           if len(test) else np.nan, layers_saved=float(pool_saved[j]))
            rows.append({"draw": draw, "rule": name, "certified": name == "Learn-then-Test" and j is not None, **row})
        for name, at in fixed_at.items():
            loss, saved = at[risk], 1 - at["exits"] / replay.n_layers
            rows.append({"draw": draw, "rule": name, "certified": False, "threshold": float(fixed[name]),
                         "cal_risk": float(loss[cal].mean()),
                         "test_risk": float(loss[test].mean()) if len(test) else np.nan,
                         "pool_risk": float(loss.mean()),
                         "test_layers_saved": float(saved[test].mean()) if len(test) else np.nan,
                         "layers_saved": float(saved.mean())})
    out = pd.DataFrame(rows)
    out["violated"] = np.where(out["test_risk"].notna(), out["test_risk"] > delta + 1e-12, np.nan)
    out["pool_violated"] = out["pool_risk"] > delta + 1e-12
    out = out.assign(n_cal=n_cal, n_test=n - n_cal, delta=delta, epsilon=epsilon, risk=risk)
    out.attrs.update(replay.meta | {"n_pool": n})
    return out


def violation_summary(draws: pd.DataFrame) -> pd.DataFrame:
    """Per rule (and n_cal, delta) of ``guarantee_check`` draws: n_draws, violation_rate (share of draws whose
    test risk exceeds δ), its standard error at ε, ``sqrt(ε(1−ε)/n_draws)``, ``within_guarantee``
    (violation_rate <= ε + se), pool_violation_rate, mean test and pool risk, mean layers saved (test and pool),
    share of draws with a certified threshold, and the median threshold."""
    keys = ["rule", "n_cal", "delta", "epsilon"]
    g = draws.groupby(keys, sort=False)
    out = g.agg(n_draws=("draw", "size"), violation_rate=("violated", "mean"),
                pool_violation_rate=("pool_violated", "mean"), mean_test_risk=("test_risk", "mean"),
                mean_pool_risk=("pool_risk", "mean"),
                test_layers_saved=("test_layers_saved", "mean"), layers_saved=("layers_saved", "mean"),
                share_certified=("certified", "mean"), median_threshold=("threshold", "median")).reset_index()
    out["se"] = np.sqrt(out["epsilon"] * (1 - out["epsilon"]) / out["n_draws"])
    out["within_guarantee"] = out["violation_rate"] <= out["epsilon"] + out["se"] + 1e-12
    return out


def price_of_guarantee(replay: ExitReplay, *, n_cals: Sequence[int], deltas: Sequence[float], epsilon: float = 0.05,
                       n_draws: int = 200, risk: str = "disagreement", method: str = "binomial", seed: int = 0
                       ) -> pd.DataFrame:
    """Layers saved under the guarantee for each calibration size × δ (``guarantee_check`` per cell, the same
    ``seed``): one ``violation_summary`` row per cell for Learn-then-Test, plus ``oracle_layers_saved`` (the
    ceiling on the pool). ``layers_saved`` is measured on the whole pool, so every n_cal (up to the pool size)
    is comparable."""
    parts = []
    for n_cal in n_cals:
        for delta in deltas:
            draws = guarantee_check(replay, n_cal=n_cal, n_draws=n_draws, delta=delta, epsilon=epsilon, risk=risk,
                                    method=method, seed=seed)
            parts.append(violation_summary(draws))
    out = pd.concat(parts, ignore_index=True)
    out["oracle_layers_saved"] = replay.oracle_layers_saved()
    return out
