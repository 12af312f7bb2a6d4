"""The explorer's Learn-then-Test certificate (chapter 06): the certified threshold marked under the threshold
slider for the δ, ε the user picks, and whether the slider's position is certified — driven from Python on a
tiny random Llama and a small real sentiment task, and checked against ``ai.certify_threshold``."""

from __future__ import annotations

import numpy as np
import pytest

import adainfer_lib as ai
from adainfer_lib import trace_task
from adainfer_lib.data import sources
from adainfer_lib.data.tasks import load_task
from adainfer_lib.features.table import feature_table
from adainfer_lib.figures import explorer_views as views
from adainfer_lib.figures.widgets import ExitExplorer
from adainfer_lib.rules.policy import ExitPolicy
from conftest import make_tiny_model, synthetic_table


@pytest.fixture(scope="module")
def setup(default_tokenizer):
    sources.prepare_sources()
    model = make_tiny_model("llama", default_tokenizer)
    task = load_task("sentiment", n=24, n_train=16, shots=2, seed=0)
    train = trace_task(model, task, split="train", cache=False, progress=False)
    test = trace_task(model, task, cache=False, progress=False)
    policy = ExitPolicy("threshold", threshold=0.3).fit(feature_table(train))
    return model, task, test, policy


def test_certificate_matches_the_library_and_follows_the_controls(setup):
    model, task, test, policy = setup
    explorer = ExitExplorer(model, policy, task, dataset_trace=test, delta=0.3, epsilon=0.1)
    cert = explorer.certification
    _, reference = ai.certify_threshold(policy, feature_table(test), delta=0.3, epsilon=0.1,
                                        thresholds=np.round(np.linspace(1, 0, 101), 2))
    assert cert.threshold == reference.threshold and cert.n == 24
    np.testing.assert_allclose(cert.p_values, reference.p_values)
    assert cert.threshold is not None, str(cert)
    assert "adainfer-certification" in explorer.certificate.value
    assert f"certified threshold <b>{cert.threshold:.2f}</b>" in explorer.certificate.value
    assert "adainfer-cert-marker" in explorer.certificate.value  # the ▲ under the slider
    explorer.threshold.value = cert.threshold
    assert explorer.threshold_certified is True and "<b>is certified</b>" in explorer.certificate.value
    explorer.threshold.value = 1.0
    assert explorer.threshold_certified is True
    if cert.threshold > 0:
        explorer.threshold.value = round(cert.threshold - 0.01, 2)
        assert explorer.threshold_certified is False and "<b>not certified</b>" in explorer.certificate.value
    # a tighter δ: 24 prompts cannot certify 1% — the rule should never exit early
    explorer.delta.value = 0.01
    assert explorer.certification.threshold is None and explorer.threshold_certified is False
    assert "no threshold is certified" in explorer.certificate.value
    assert "adainfer-cert-marker" not in explorer.certificate.value
    explorer.delta.value = 0.3
    assert explorer.certification is cert  # cached per policy, minimum layer, δ and ε
    assert explorer.error is None


def test_certificate_without_a_dataset_and_bad_levels(setup):
    model, task, _, policy = setup
    explorer = ExitExplorer(model, policy, task)
    assert explorer.certification is None and explorer.threshold_certified is None
    assert "dataset_trace" in explorer.certificate.value
    for bad in (0.0, 1.0, -0.1, "x"):
        with pytest.raises(ValueError, match="delta"):
            ExitExplorer(model, policy, task, delta=bad)
    with pytest.raises(ValueError, match="epsilon"):
        ExitExplorer(model, policy, task, epsilon=1.5)


def test_certification_view_functions():
    train, cal = synthetic_table(120, 12, seed=31), synthetic_table(400, 12, seed=32)
    policy = ExitPolicy("threshold", features=("label_gap",), min_layer=2).fit(train)
    decisions = views.stop_and_decisions(policy, cal)
    cert = views.certify_decisions(decisions, 2, delta=0.1, epsilon=0.05)
    _, reference = ai.certify_threshold(policy, cal, delta=0.1, epsilon=0.05)
    assert cert.threshold == reference.threshold is not None
    html = views.certification_html(cert, cert.threshold, split="calibration split")
    assert "n=400" in html and "δ = 10.0%" in html and "<b>is certified</b>" in html
    assert "exits more eagerly" in views.certification_html(cert, max(cert.threshold - 0.05, 0.0))
    assert "not one of the tested candidates" in views.certification_html(cert, min(cert.threshold + 0.005, 1.0))
    sweep = views.threshold_sweep_frame(decisions, 2)
    fig = views.dataset_figure(decisions, sweep, threshold=0.5, min_layer=2, title="t", certified=cert.threshold)
    (marked,) = [line for line in fig.axes[1].lines if line.get_label().startswith("certified")]
    assert np.allclose(marked.get_xdata(), cert.threshold) and marked.get_label() == f"certified {cert.threshold:.2f}"
