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
    """The threshold Bonferroni deploys (None if nothing is certified); the notebook passes the whole pool and
    δ_B = 2δ, where quick mode certifies something."""
    _, cert = ai.certify_threshold(crf, cal, delta=delta, epsilon=epsilon, procedure="bonferroni")
    return cert.threshold


#: Written answers to the exercises' "why" questions (the functions above compute the numbers).
WHY = {
    1: "With zero losses the binomial p-value is P[Bin(n, δ) = 0] = (1 − δ)^n, which falls below ε only from "
       "n = log ε / log(1 − δ) on (149 at δ = 2%, ε = 5%): below that, no threshold can be certified, however "
       "good the exit rule.",
    2: "An accuracy drop (the exit is wrong where the full model is right) is always also a disagreement, so at "
       "every threshold the accuracy-drop risk is at most the disagreement risk, its p-value no larger, and the "
       "fixed sequence gets at least as far: the certified threshold is the same or more aggressive. The price: it "
       "needs gold labels on the calibration prompts, and it allows changed answers where the full model was "
       "wrong anyway.",
    3: "Bonferroni tests every candidate at ε / k (k = 101), a far stricter level than the fixed sequence's ε, so "
       "it certifies less and deploys a more conservative threshold unless the fixed sequence stops early on a "
       "candidate whose p-value fails while later ones pass. The fixed sequence pays nothing for testing many "
       "thresholds because its order (conservative to aggressive) is fixed before seeing the data.",
}
