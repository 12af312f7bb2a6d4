"""Solutions to chapter 06's exercises. Each takes the objects the notebook has and returns the answer."""

from __future__ import annotations

import adainfer_lib as ai


def exercise_1(delta: float = 0.02, epsilon: float = 0.05) -> int:
    """The smallest n with (1 − δ)^n <= ε: the binomial p-value of zero losses, scanned over n."""
    n = 1
    while ai.risk_control.binomial_p_value(0.0, n, delta) > epsilon:
        n += 1
    return n


def exercise_2(crf, cal, delta: float, epsilon: float):
    """The threshold certified for the accuracy drop (None if nothing is)."""
    _, cert = ai.certify_threshold(crf, cal, delta=delta, epsilon=epsilon, risk="accuracy_drop")
    return cert.threshold


def exercise_3(crf, cal, delta: float, epsilon: float):
    """The threshold Bonferroni deploys (None if nothing is certified)."""
    _, cert = ai.certify_threshold(crf, cal, delta=delta, epsilon=epsilon, procedure="bonferroni")
    return cert.threshold
