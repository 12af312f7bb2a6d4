"""Calibrated label decisions and the task-level trace."""

from __future__ import annotations

import numpy as np
import pytest

from adainfer_lib.data.calibration import Calibration, fit_calibration, label_log_softmax
from adainfer_lib.data.task_trace import TaskTrace, calibration_report
from conftest import task_trace_from_predictions


def test_batch_calibration_removes_a_constant_bias():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 400)
    signal = np.where(gold[:, None] == 1, 1.0, -1.0) * np.linspace(0, 2, 5)[None, :]  # grows with depth
    logits = np.stack([np.zeros_like(signal), signal + 3.0], axis=-1)  # the model leans hard towards label 1
    raw = fit_calibration("raw", unlabelled=logits)
    batch = fit_calibration("batch", unlabelled=logits)
    assert raw.offsets.shape == batch.offsets.shape == (5, 2) and not raw.offsets.any()
    raw_pred = raw.apply(logits).argmax(-1)[:, -1]
    batch_pred = batch.apply(logits).argmax(-1)[:, -1]
    assert raw_pred.mean() == 1.0  # constant
    assert (batch_pred == gold).mean() == 1.0
    np.testing.assert_allclose(batch.apply(logits[:, 2], layer=2), batch.apply(logits)[:, 2])


def test_softmaxes_are_scipys_bit_for_bit():
    """Written out for speed (an exit check calls them three times), they must stay scipy's: same values on
    every scale, on float32 and float64, on 3-D arrays, and on rows with infinite or NaN logits."""
    from scipy.special import log_softmax, softmax

    from adainfer_lib.common import numerics

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 4, 3)) * rng.choice([1e-4, 1.0, 50.0, 1e4], size=(2000, 1, 1))
    x[0, 0] = [-np.inf, 0.0, 1.0]
    x[0, 1] = -np.inf
    x[0, 2] = [np.inf, 0.0, 1.0]
    x[0, 3] = [np.nan, 0.0, 1.0]
    x[1, 0, 1] = x[1, 0, 0]  # a tie
    for values in (x, x.astype(np.float32), x[:, 0, :2]):
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(label_log_softmax(values), log_softmax(values, axis=-1))
            np.testing.assert_array_equal(numerics.softmax(values), softmax(values, axis=-1))


def test_contextual_calibration_uses_the_content_free_input():
    content_free = np.array([[[0.0, 2.0], [0.0, 4.0]]])  # (1 input, 2 layers, 2 labels)
    cal = fit_calibration("contextual", content_free=content_free)
    np.testing.assert_allclose(cal.offsets, label_log_softmax(content_free[0]))
    np.testing.assert_allclose(np.exp(cal.apply(content_free[0])).std(-1), 0, atol=1e-12)  # neutral after calibration


def test_calibration_errors_and_roundtrip():
    with pytest.raises(ValueError, match="Unknown calibration"):
        fit_calibration("platt", unlabelled=np.zeros((2, 3, 2)))
    with pytest.raises(ValueError, match="needs"):
        fit_calibration("batch")
    cal = fit_calibration("batch", unlabelled=np.random.default_rng(0).normal(size=(4, 3, 2)))
    again = Calibration.from_dict(cal.to_dict())
    np.testing.assert_allclose(again.offsets, cal.offsets)


def test_earliest_consistent_layer_requires_staying():
    # decisions by layer: example 0 agrees early, flips away, settles at 3; example 1 settles at 1
    tt = task_trace_from_predictions([[1, 1, 0, 1, 1], [0, 1, 1, 1, 1], [1, 0, 0, 0, 0]], gold=[1, 1, 1])
    np.testing.assert_array_equal(tt.earliest_consistent_layer(), [3, 1, 1])
    np.testing.assert_allclose(tt.accuracy_by_layer(), [2 / 3, 2 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(tt.consistency_by_layer()[-1], 1.0)
    report = calibration_report(tt)
    assert list(report.calibration) == ["raw"] and report.accuracy_full.iloc[0] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="gold labels"):
        TaskTrace(tt.trace, gold=np.array([1]), calibrations=tt.calibrations, task_name="t", label_names=["a", "b"],
                  method="raw")


@pytest.mark.slow
def test_default_decision_on_sentiment_is_well_above_chance(default_model):
    from adainfer_lib import load_task, trace_task

    task = load_task("sentiment", n=60, n_train=60, seed=1)
    tt = trace_task(default_model, task, progress=False)  # batch calibration by default
    final = tt.final_predictions()
    assert set(final) == {0, 1}, "the calibrated decision must predict both labels"
    accuracy = (final == tt.gold).mean()
    # 38/60 = 0.63 is the one-sided binomial 5% bar against chance; measured 0.67 (the model is a weak classifier).
    assert accuracy >= 38 / 60, f"calibrated accuracy {accuracy:.2f} on n=60 is not significantly above chance (0.5)"
