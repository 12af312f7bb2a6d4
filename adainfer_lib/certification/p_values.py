"""The statistics of Learn-then-Test (Angelopoulos et al. 2021, "Learn then Test: Calibrating Predictive
Algorithms to Achieve Risk Control"): p-values of H₀ "risk > δ" from an empirical risk on n calibration
examples, and the family-wise procedures that turn them into certified candidates.

- ``"binomial"`` (default): the exact binomial tail P[Bin(n, δ) <= nR̂] — valid for 0/1 losses, the most
  powerful of the two (LTT §3.2; MAPIE's ``binary=True`` Bentkus term);
- ``"hoeffding_bentkus"``: min(exp(−n·h(min(R̂, δ), δ)), e·P[Bin(n, δ) <= ⌈nR̂⌉]) with
  h(a, b) = a log(a/b) + (1−a) log((1−a)/(1−b)) — LTT's default, valid for any loss in [0, 1].

**Fixed-sequence testing** (Bauer 1991; LTT §4) tests hypotheses in an order fixed before seeing the data and
stops at the first failure (family-wise error <= ε, no multiplicity correction); **Bonferroni** certifies
every candidate with p <= ε/k. ``max_certifiable_risk`` and ``min_calibration_size`` size a calibration set.

Why not MAPIE. MAPIE 1.6's ``mapie.risk_control`` has the same p-values (``compute_hoeffding_bentkus_p_value``),
but its ``"fixed_sequence"`` option reorders the candidates by the direction of the *calibration* risk curve
(a data-dependent order) and warns whenever that curve is not monotone — which the risk of an exit rule over a
fine threshold grid rarely is. The p-values are twenty lines of ``scipy.stats.binom``; we implement them here
and test them against hand-computed cases (``tests/test_risk_control.py``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..common.checks import check_choice

P_VALUE_METHODS = ("binomial", "hoeffding_bentkus")


def check_level(value: float, name: str) -> float:
    """``value`` as a float strictly between 0 and 1 (a risk level δ or an error level ε); ValueError otherwise."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number strictly between 0 and 1, not {value!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")
    return value


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
    check_choice(method, "method", P_VALUE_METHODS)
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
