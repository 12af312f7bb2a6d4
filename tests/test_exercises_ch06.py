"""Chapter 06's exercise checkers accept the reference solutions (``notebooks/solutions/ch06.py``) on synthetic
tables and reject the ``...`` placeholder and the plausible wrong answers they name."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

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


def test_min_calibration():
    assert exercises.check_06_min_calibration(ch06.exercise_1())
    assert exercises.check_06_min_calibration(ch06.exercise_1(0.05, 0.1), delta=0.05, epsilon=0.1)
    assert rejected(exercises.check_06_min_calibration(...), "replace the `...`")
    assert rejected(exercises.check_06_min_calibration(148), "one too few")
    assert rejected(exercises.check_06_min_calibration(198), "Bentkus term")
    assert rejected(exercises.check_06_min_calibration(149.5), "whole number")
    assert rejected(exercises.check_06_min_calibration("149"), "one number")
    assert rejected(exercises.check_06_min_calibration(500), "too high")


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
    assert exercises.check_06_accuracy_drop(rule, cal, None, delta=0.02, epsilon=0.05)
    assert rejected(exercises.check_06_accuracy_drop(rule, cal, 0.5, delta=0.02, epsilon=0.05), "answer None")
    assert exercises.check_06_bonferroni(rule, cal, None, delta=0.02, epsilon=0.05)
    assert np.isfinite(ch06.exercise_1())
