"""Chapter 06's exercise checkers accept the right answer computed here without the library (the calibration
size from a logarithm, Learn-then-Test's fixed sequence and Bonferroni with a loop and scipy's binomial) and the
reference solutions (``notebooks/solutions/ch06.py``) on synthetic tables, and reject the ``...`` placeholder
and the plausible wrong answers they name (one prompt too few, the wrong risk, one candidate too far)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

import adainfer_lib as ai
from adainfer_lib import exercises
from conftest import synthetic_table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "notebooks"))

from solutions import ch06  # noqa: E402

DELTA, EPSILON = 0.1, 0.05


@pytest.fixture(scope="module")
def crf_and_cal():
    train, cal = synthetic_table(120, 12, seed=21), synthetic_table(500, 12, seed=22)
    crf = ai.ExitPolicy("crf", features=("label_gap", "label_top_prob", "layer_frac")).fit(train)
    return crf, cal


def rejected(feedback, *words: str) -> bool:
    return not feedback and str(feedback).startswith("❌") and all(w in feedback.message for w in words)


def certify_by_hand(policy, table, delta: float, epsilon: float, *, risk: str = "disagreement",
                    procedure: str = "fixed_sequence"):
    """Learn-then-Test written out: the candidates 1.00, 0.99, ..., 0.00 (conservative first); at each, every
    example exits at the first layer >= min_layer whose stop probability reaches it (else L); a loss is a changed
    answer (or, for the accuracy drop, a wrong answer where the full model is right); the exact binomial p-value
    P[Bin(n, δ) <= losses]. The fixed sequence deploys the last candidate before the first p > ε; Bonferroni the
    most aggressive with p <= ε / k. None when nothing is certified."""
    L = int(table["layer"].max())
    stop = policy.stop_matrix(table)
    preds = table.pivot(index="example", columns="layer", values="pred").to_numpy()
    gold = table.groupby("example")["gold"].first().to_numpy()
    n, candidates = len(preds), [round(t / 100, 2) for t in range(100, -1, -1)]
    p_values = []
    for t in candidates:
        exits = [next((layer for layer in range(policy.min_layer, L + 1) if row[layer] >= t), L) for row in stop]
        at_exit = preds[np.arange(n), exits]
        lost = at_exit != preds[:, -1] if risk == "disagreement" else (at_exit != gold) & (preds[:, -1] == gold)
        p_values.append(binom.cdf(int(lost.sum()), n, delta))
    if procedure == "bonferroni":
        passed = [t for t, p in zip(candidates, p_values) if p <= epsilon / len(candidates)]
        return passed[-1] if passed else None
    deployed = None
    for t, p in zip(candidates, p_values):
        if p > epsilon:
            return deployed, t  # (certified, the first candidate that failed)
        deployed = t
    return deployed, None


def test_min_calibration_by_hand():
    """(1 − δ)^n <= ε from n = ⌈log ε / log(1 − δ)⌉ on (the levels are chosen so that the ratio is not whole)."""
    for delta, epsilon in ((0.02, 0.05), (0.05, 0.1), (0.1, 0.05), (0.01, 0.01)):
        n = math.ceil(math.log(epsilon) / math.log(1 - delta))
        assert (1 - delta) ** n <= epsilon < (1 - delta) ** (n - 1)
        assert exercises.check_06_min_calibration(n, delta=delta, epsilon=epsilon), (delta, epsilon)
        assert rejected(exercises.check_06_min_calibration(n - 1, delta=delta, epsilon=epsilon), "one too few")
        assert rejected(exercises.check_06_min_calibration(n + 1, delta=delta, epsilon=epsilon), "too high")
    assert exercises.check_06_min_calibration(149)  # δ = 2%, ε = 5%: log 0.05 / log 0.98 = 148.3
    assert rejected(exercises.check_06_min_calibration(50), "1/δ")  # the n at which one loss is expected


def test_min_calibration():
    assert exercises.check_06_min_calibration(ch06.exercise_1())
    assert exercises.check_06_min_calibration(ch06.exercise_1(0.05, 0.1), delta=0.05, epsilon=0.1)
    assert rejected(exercises.check_06_min_calibration(...), "replace the `...`")
    assert rejected(exercises.check_06_min_calibration(148), "one too few")
    assert rejected(exercises.check_06_min_calibration(198), "Bentkus term")
    assert rejected(exercises.check_06_min_calibration(149.5), "whole number")
    assert rejected(exercises.check_06_min_calibration("149"), "one number")
    assert rejected(exercises.check_06_min_calibration(500), "too high")


def test_accuracy_drop_and_bonferroni_by_hand(crf_and_cal):
    crf, cal = crf_and_cal
    drop, drop_failed = certify_by_hand(crf, cal, DELTA, EPSILON, risk="accuracy_drop")
    disagreement, _ = certify_by_hand(crf, cal, DELTA, EPSILON)
    assert drop is not None and drop_failed is not None  # something certified, and a candidate that fails
    check = exercises.check_06_accuracy_drop
    assert check(crf, cal, drop, delta=DELTA, epsilon=EPSILON)
    assert rejected(check(crf, cal, drop_failed, delta=DELTA, epsilon=EPSILON), "is not")  # one candidate too far
    if disagreement != drop:
        assert rejected(check(crf, cal, disagreement, delta=DELTA, epsilon=EPSILON), "disagreement")
    assert drop <= (disagreement if disagreement is not None else 1.01)  # a drop is also a disagreement
    bonferroni = certify_by_hand(crf, cal, DELTA, EPSILON, procedure="bonferroni")
    assert exercises.check_06_bonferroni(crf, cal, bonferroni, delta=DELTA, epsilon=EPSILON)
    if disagreement != bonferroni:
        assert rejected(exercises.check_06_bonferroni(crf, cal, disagreement, delta=DELTA, epsilon=EPSILON),
                        "fixed-sequence")


def test_accuracy_drop(crf_and_cal):
    crf, cal = crf_and_cal
    answer = ch06.exercise_2(crf, cal, DELTA, EPSILON)
    feedback = exercises.check_06_accuracy_drop(crf, cal, answer, delta=DELTA, epsilon=EPSILON)
    assert feedback and "Every accuracy drop is also a disagreement" in feedback.message
    assert rejected(exercises.check_06_accuracy_drop(crf, cal, ..., delta=DELTA, epsilon=EPSILON), "`...`")
    _, dis = ai.certify_threshold(crf, cal, delta=DELTA, epsilon=EPSILON)
    if dis.threshold != answer:
        assert rejected(exercises.check_06_accuracy_drop(crf, cal, dis.threshold, delta=DELTA, epsilon=EPSILON),
                        "disagreement")
    assert rejected(exercises.check_06_accuracy_drop(crf, cal, None, delta=DELTA, epsilon=EPSILON), "is certified")
    assert rejected(exercises.check_06_accuracy_drop(crf, cal, 0.123456, delta=DELTA, epsilon=EPSILON), "not")


def test_bonferroni(crf_and_cal):
    crf, cal = crf_and_cal
    answer = ch06.exercise_3(crf, cal, DELTA, EPSILON)
    assert exercises.check_06_bonferroni(crf, cal, answer, delta=DELTA, epsilon=EPSILON)
    _, fst = ai.certify_threshold(crf, cal, delta=DELTA, epsilon=EPSILON)
    if fst.threshold != answer:
        assert rejected(exercises.check_06_bonferroni(crf, cal, fst.threshold, delta=DELTA, epsilon=EPSILON),
                        "fixed-sequence")
    assert rejected(exercises.check_06_bonferroni(crf, cal, ..., delta=DELTA, epsilon=EPSILON), "`...`")


def test_nothing_certified_answer_is_none():
    train, cal = synthetic_table(60, 12, seed=23), synthetic_table(40, 12, seed=24)
    rule = ai.ExitPolicy("threshold", features=("label_gap",)).fit(train)
    assert ch06.exercise_2(rule, cal, 0.02, 0.05) is None
    assert certify_by_hand(rule, cal, 0.02, 0.05) == (None, 1.0)  # 40 < 149 prompts: the first candidate fails
    assert exercises.check_06_accuracy_drop(rule, cal, None, delta=0.02, epsilon=0.05)
    assert rejected(exercises.check_06_accuracy_drop(rule, cal, 0.5, delta=0.02, epsilon=0.05), "answer None")
    assert exercises.check_06_bonferroni(rule, cal, None, delta=0.02, epsilon=0.05)
    assert np.isfinite(ch06.exercise_1())
