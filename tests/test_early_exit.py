"""Real early exit == the logit lens of a full run, cut at the exit layer; layers after it never run.

Checked on a tiny random model of every registered architecture (fixture ``tiny_model``) and on the real
default model: a policy that never stops reproduces the model's logits; a forced exit at layer k gives the
lens statistics of a full run at k; later layers (and the LM head) do not execute; a batch whose rows exit
at different layers equals the same prompts run one by one (the pre-hooks slice the finished rows out).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adainfer_lib.data.calibration import Calibration, fit_calibration
from adainfer_lib.features.online import ONLINE_FEATURES
from adainfer_lib.model.identity import ModelIdentity
from adainfer_lib.model.lens import last_states, trace
from adainfer_lib.rules.plain import FixedExitPolicy, ScheduledExitPolicy
from adainfer_lib.runner.early_exit import (
    ExitResult,
    measure_check_cost,
    run_early_exit,
    run_full,
)

PROMPTS = [
    "The capital of France is",
    "Review: a moving, beautifully acted film.\nSentiment:",
    "1, 2, 3, 4,",
    "Hi",
    "Review: dull and far too long; I left early.\nSentiment:",
]
WORDS = [" positive", " negative"]


class StubPolicy:
    """Any object that implements the ``ExitRule`` interface runs: stop probability = the calibrated label gap,
    and a record of every call so tests can see what the rule was shown."""

    calibration, label_words, fitted_for, threshold_range = None, None, ModelIdentity(), (None, None)

    def __init__(self, threshold=0.5, min_layer=1, needs_full_vocab=False):
        self.threshold, self.min_layer, self.needs_full_vocab = threshold, min_layer, needs_full_vocab
        self.calls: list[tuple[int, dict, list, np.ndarray]] = []

    def stop_proba_online(self, features, layer, state):
        self.calls.append((layer, {k: np.array(v) for k, v in features.items()}, list(state.history),
                           np.array(state.rows)))
        return np.asarray(features["label_gap"], dtype=float)

    def stop_matrix(self, table):
        return table.pivot(index="example", columns="layer", values="label_gap").to_numpy()

    def check_layers(self, n_layers, n_examples=None):
        pass

    def with_threshold(self, threshold):
        return type(self)(threshold, self.min_layer, self.needs_full_vocab)


def _raw(model) -> Calibration:
    return fit_calibration("raw", n_layers=model.n_layers, n_labels=len(WORDS))


def _batch_cal(model) -> Calibration:
    t = trace(model, PROMPTS, label_words=WORDS, full_vocab=False, progress=False)
    return fit_calibration("batch", unlabelled=t.label_logits)


def _rows_per_layer(model):
    """Forward hooks counting, per decoder layer, how many rows it has computed."""
    counts = np.zeros(model.n_layers, dtype=int)
    handles = []
    for i, layer in enumerate(model.layers):
        def hook(_m, _a, out, i=i):
            counts[i] += (out[0] if isinstance(out, tuple) else out).shape[0]
        handles.append(layer.register_forward_hook(hook))
    return counts, handles


# ---------------------------------------------------------------------------------------------------
# Equivalence on every registered architecture


@pytest.mark.parametrize("batch_size", [1, 5])
def test_never_stopping_policy_gives_model_logits(tiny_model, batch_size):
    never = StubPolicy(threshold=2.0)  # a gap is <= 1: never reaches it
    res = run_early_exit(tiny_model, PROMPTS, never, label_words=WORDS, calibration="raw", batch_size=batch_size)
    L = tiny_model.n_layers
    assert (res.exit_layers == L).all()
    states, logits = last_states(tiny_model, PROMPTS)
    torch.testing.assert_close(torch.from_numpy(res.exit_states), states[-1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tiny_model.lens(torch.from_numpy(res.exit_states)), logits, rtol=1e-4, atol=1e-4)
    ids = tiny_model.label_token_ids(WORDS, PROMPTS[0])
    np.testing.assert_allclose(res.label_logits, logits[:, ids].numpy(), rtol=1e-4, atol=1e-4)
    dense = run_full(tiny_model, PROMPTS, label_words=WORDS, calibration="raw", batch_size=batch_size)
    np.testing.assert_array_equal(res.predictions, dense.predictions)
    assert res.layers_saved == 0 and res.ideal_speedup == 1


def test_forced_exit_equals_lens_of_full_run(tiny_model):
    L = tiny_model.n_layers
    full = trace(tiny_model, PROMPTS, label_words=WORDS, progress=False)
    cal = _batch_cal(tiny_model)
    preds = cal.apply(full.label_logits).argmax(-1)  # (n, L+1), the TaskTrace rule
    for k in range(0, L + 1):
        res = run_early_exit(tiny_model, PROMPTS, FixedExitPolicy(k), label_words=WORDS, calibration=cal,
                             batch_size=2, full_vocab=True)
        assert (res.exit_layers == k).all()
        np.testing.assert_allclose(res.label_logits, full.label_logits[:, k], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(res.scores, cal.apply(full.label_logits[:, k], layer=k), rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(res.predictions, preds[:, k])
        for name in ("top_prob", "gap", "entropy"):
            np.testing.assert_allclose(res.exit_features[name], getattr(full, name)[:, k], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name} at layer {k}")
        if k > 0:
            np.testing.assert_allclose(res.exit_features["cos_prev"], full.cos_prev[:, k], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(res.exit_features["layer_frac"], k / L)


def test_layers_after_the_exit_never_execute(tiny_model):
    L = tiny_model.n_layers
    lm_head_calls = []
    head = tiny_model.unembed.register_forward_hook(lambda *a: lm_head_calls.append(1))
    counts, handles = _rows_per_layer(tiny_model)
    try:
        for k in range(1, L + 1):
            counts[:] = 0
            run_early_exit(tiny_model, PROMPTS[:2], FixedExitPolicy(k), label_words=WORDS, calibration="raw",
                           batch_size=2)
            np.testing.assert_array_equal(counts, [2] * k + [0] * (L - k))
        # batch of rows exiting at different layers: each layer computes only the rows still running
        exits = np.array([1, 3, 2, 1, 3])
        counts[:] = 0
        res = run_early_exit(tiny_model, PROMPTS, ScheduledExitPolicy(exits), label_words=WORDS, calibration="raw",
                             batch_size=5)
        np.testing.assert_array_equal(res.exit_layers, exits)
        np.testing.assert_array_equal(counts, [(exits > i).sum() for i in range(L)])
    finally:
        head.remove()
        for h in handles:
            h.remove()
    assert not lm_head_calls  # label-row checks never run the full LM head


def test_batch_with_different_exits_equals_one_by_one(tiny_model):
    cal = _batch_cal(tiny_model)
    L = tiny_model.n_layers
    exits = np.array([2, 1, 3, 1, 2])[: len(PROMPTS)]
    batched = run_early_exit(tiny_model, PROMPTS, ScheduledExitPolicy(exits), label_words=WORDS, calibration=cal,
                             batch_size=5)
    singles = [run_early_exit(tiny_model, [p], FixedExitPolicy(int(k)), label_words=WORDS, calibration=cal)
               for p, k in zip(PROMPTS, exits)]
    np.testing.assert_array_equal(batched.exit_layers, exits)
    np.testing.assert_allclose(batched.label_logits, np.concatenate([s.label_logits for s in singles]),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(batched.predictions, np.concatenate([s.predictions for s in singles]))
    np.testing.assert_allclose(batched.exit_states, np.concatenate([s.exit_states for s in singles]),
                               rtol=1e-4, atol=1e-4)

    # A data-dependent rule: pick a threshold far from every observed stop score, so float noise between
    # batched and single runs cannot flip a decision; then batched exits == single exits.
    probe = StubPolicy(threshold=2.0)
    res = run_early_exit(tiny_model, PROMPTS, probe, label_words=WORDS, calibration=cal)
    seen = np.unique(np.round(res.stop_proba[:, 1:L].ravel(), 6))
    widest = np.argmax(np.diff(seen)) if len(seen) > 1 else 0
    threshold = float((seen[widest] + seen[widest + 1]) / 2) if len(seen) > 1 else 0.5
    rule = StubPolicy(threshold=threshold)
    batched = run_early_exit(tiny_model, PROMPTS, rule, label_words=WORDS, calibration=cal, batch_size=3)
    single = run_early_exit(tiny_model, PROMPTS, rule, label_words=WORDS, calibration=cal, batch_size=1)
    np.testing.assert_array_equal(batched.exit_layers, single.exit_layers)
    np.testing.assert_allclose(batched.stop_proba, single.stop_proba, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batched.label_logits, single.label_logits, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# The policy interface and bookkeeping (one architecture is enough)


@pytest.fixture(scope="module")
def llama(default_tokenizer):
    from conftest import make_tiny_model

    return make_tiny_model("llama", default_tokenizer)


def test_policy_sees_online_features_only_from_min_layer(llama):
    policy = StubPolicy(threshold=2.0, min_layer=2)
    res = run_early_exit(llama, PROMPTS, policy, label_words=WORDS, calibration="raw", batch_size=5)
    layers = [c[0] for c in policy.calls]
    assert layers == [2, 3]  # no check (no lens at all) below min_layer
    assert np.isnan(res.stop_proba[:, :2]).all() and np.isfinite(res.stop_proba[:, 2:]).all()
    layer, feats, history, rows = policy.calls[1]
    assert set(ONLINE_FEATURES) <= set(feats) and "pred" in feats
    assert all(v.shape == (len(PROMPTS),) for v in feats.values())
    assert np.isnan(feats["top_prob"]).all()  # label rows only: the policy does not need the full vocabulary
    assert np.isfinite(feats["cos_prev"]).all() and np.allclose(feats["layer_frac"], 1.0)
    assert [h["layer"] for h in history] == [2]
    # the batch runs grouped by length; ``rows`` maps the policy's rows back to prompt indices
    assert sorted(rows) == list(range(len(PROMPTS)))
    np.testing.assert_allclose(res.stop_proba[rows, 2], policy.calls[0][1]["label_gap"])
    assert res.check_seconds.sum() > 0 and (res.seconds > 0).all() and len(res.batch_seconds) == 1


def test_a_rule_computes_only_the_features_it_reads(llama):
    """A check computes a feature when the rule reads it: a rule on the label gap never pays for cos_prev; the
    exit features are complete anyway, and the history holds the values each check saw."""

    class LabelGapRule(StubPolicy):
        def stop_proba_online(self, features, layer, state):
            gap = np.asarray(features["label_gap"], dtype=float)
            self.calls.append(features.computed())
            return gap

    rule = LabelGapRule(threshold=2.0)
    res = run_early_exit(llama, PROMPTS, rule, label_words=WORDS, calibration="raw", batch_size=5)
    assert rule.calls and all(sorted(c) == ["label_gap", "label_top_prob", "pred"] for c in rule.calls)
    reference = run_early_exit(llama, PROMPTS, StubPolicy(threshold=2.0), label_words=WORDS, calibration="raw",
                               batch_size=5)
    for name in ONLINE_FEATURES:
        np.testing.assert_array_equal(res.exit_features[name], reference.exit_features[name])
    assert np.isfinite(res.exit_features["cos_prev"]).all()


def test_full_vocab_checks_when_the_policy_needs_them(llama):
    res = run_early_exit(llama, PROMPTS, StubPolicy(threshold=2.0, needs_full_vocab=True), label_words=WORDS,
                         calibration="raw")
    assert np.isfinite(res.exit_features["entropy"]).all() and res.meta["full_vocab_checks"]


def test_threshold_rule_and_min_layer_zero(llama):
    always = StubPolicy(threshold=0.0, min_layer=0)
    res = run_early_exit(llama, PROMPTS, always, label_words=WORDS, calibration="raw", batch_size=2)
    assert (res.exit_layers == 0).all()
    states, _ = last_states(llama, PROMPTS)
    np.testing.assert_allclose(res.exit_states, states[0].numpy(), rtol=1e-5, atol=1e-5)
    later = StubPolicy(threshold=0.0, min_layer=2)
    assert (run_early_exit(llama, PROMPTS, later, label_words=WORDS, calibration="raw").exit_layers == 2).all()


def test_prediction_uses_the_calibration(llama):
    L = llama.n_layers
    push = np.zeros((L + 1, 2))
    push[:, 0] = 50.0  # a huge offset against label 0: every prediction becomes label 1
    res = run_early_exit(llama, PROMPTS, FixedExitPolicy(2), label_words=WORDS, calibration=Calibration("batch", push))
    assert (res.predictions == 1).all()
    carried = FixedExitPolicy(2, label_words=WORDS, calibration=Calibration("batch", push))
    np.testing.assert_array_equal(run_early_exit(llama, PROMPTS, carried).predictions, res.predictions)


def test_scores_are_the_calibrations_own(llama):
    """The runner's scores are ``Calibration.apply`` of its label logits at each row's exit layer, and the dense
    model's at layer L: one calibration rule, bit for bit."""
    cal = _batch_cal(llama)
    res = run_early_exit(llama, PROMPTS, ScheduledExitPolicy(np.array([1, 3, 2, 0, 3])), label_words=WORDS,
                         calibration=cal, batch_size=2)
    expected = np.stack([cal.apply(logits, layer) for logits, layer in zip(res.label_logits, res.exit_layers)])
    np.testing.assert_array_equal(res.scores, expected)
    full = run_full(llama, PROMPTS, label_words=WORDS, calibration=cal)
    np.testing.assert_array_equal(full.scores, cal.apply(full.label_logits, llama.n_layers))


def test_clear_errors(llama):
    with pytest.raises(ValueError, match="calibration"):
        run_early_exit(llama, PROMPTS, FixedExitPolicy(1), label_words=WORDS)
    with pytest.raises(ValueError, match="shape"):
        run_early_exit(llama, PROMPTS, FixedExitPolicy(1), label_words=WORDS,
                       calibration=Calibration("batch", np.zeros((2, 2))))
    with pytest.raises(TypeError, match="Calibration or 'raw'"):  # one typed form: no bare arrays
        run_early_exit(llama, PROMPTS, FixedExitPolicy(1), label_words=WORDS, calibration=np.zeros((2, 2)))
    with pytest.raises(TypeError, match="not an exit rule|exit rule"):
        run_early_exit(llama, PROMPTS, object(), label_words=WORDS, calibration="raw")
    with pytest.raises(ValueError, match="label words"):
        run_early_exit(llama, PROMPTS, FixedExitPolicy(1), calibration="raw")
    with pytest.raises(ValueError, match="prompt"):
        run_early_exit(llama, [], FixedExitPolicy(1), label_words=WORDS, calibration="raw")


def test_hooks_are_removed_and_model_is_reusable(llama):
    before = [(len(l._forward_hooks), len(l._forward_pre_hooks)) for l in llama.layers]
    run_early_exit(llama, PROMPTS, StubPolicy(0.3), label_words=WORDS, calibration="raw", batch_size=2)

    class Boom(StubPolicy):
        def stop_proba_online(self, features, layer, state):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_early_exit(llama, PROMPTS, Boom(), label_words=WORDS, calibration="raw", batch_size=2)
    assert [(len(l._forward_hooks), len(l._forward_pre_hooks)) for l in llama.layers] == before
    states, logits = last_states(llama, PROMPTS)
    torch.testing.assert_close(llama.lens(states[-1]), logits, rtol=1e-4, atol=1e-4)


def test_result_summaries_and_check_cost(llama):
    res = run_early_exit(llama, PROMPTS, ScheduledExitPolicy(np.array([1, 2, 3, 3, 1])), label_words=WORDS,
                         calibration="raw")
    assert isinstance(res, ExitResult) and res.n_examples == 5
    assert res.mean_exit_layer == 2.0 and res.layers_saved == pytest.approx(1 / 3)
    assert res.ideal_speedup == pytest.approx(1.5)
    frame = res.to_frame()
    assert list(frame.exit_layer) == [1, 2, 3, 3, 1]
    dense = run_full(llama, PROMPTS, label_words=WORDS, calibration="raw")
    assert measure_check_cost(res, dense.seconds) > 0
    assert measure_check_cost([res, res], dense.seconds.mean()) == pytest.approx(measure_check_cost(res, dense.seconds))


# ---------------------------------------------------------------------------------------------------
# The real default model


@pytest.mark.slow
def test_default_model_early_exit_equivalence(default_model):
    demos = ("Review: a dull, lifeless mess.\nSentiment: negative\n\n"
             "Review: a warm and wonderful film.\nSentiment: positive\n\n")
    prompts = [demos + "Review: an absolute delight, funny and moving.\nSentiment:",
               demos + "Review: boring, ugly and painfully stupid.\nSentiment:",
               demos + "Review: fine.\nSentiment:"]
    m = default_model
    L = m.n_layers
    # never stopping == the model's own logits
    res = run_early_exit(m, prompts, StubPolicy(threshold=2.0), label_words=WORDS, calibration="raw", batch_size=3)
    states, logits = last_states(m, prompts)
    assert (res.exit_layers == L).all()
    torch.testing.assert_close(m.lens(torch.from_numpy(res.exit_states)), logits, rtol=1e-4, atol=1e-3)
    # forced exits == the lens of a full run
    full = trace(m, prompts, label_words=WORDS, progress=False)
    for k in (8, 17, 24):
        forced = run_early_exit(m, prompts, FixedExitPolicy(k), label_words=WORDS, calibration="raw", batch_size=3,
                                full_vocab=True)
        np.testing.assert_allclose(forced.label_logits, full.label_logits[:, k], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(forced.exit_features["gap"], full.gap[:, k], atol=1e-4)
    # a batch exiting at different layers == one by one, and later layers do not run
    exits = np.array([9, 21, 14])
    counts, handles = _rows_per_layer(m)
    try:
        batched = run_early_exit(m, prompts, ScheduledExitPolicy(exits), label_words=WORDS, calibration="raw",
                                 batch_size=3)
    finally:
        for h in handles:
            h.remove()
    np.testing.assert_array_equal(counts, [(exits > i).sum() for i in range(L)])
    singles = np.concatenate([run_early_exit(m, [p], FixedExitPolicy(int(k)), label_words=WORDS,
                                             calibration="raw").label_logits for p, k in zip(prompts, exits)])
    np.testing.assert_allclose(batched.label_logits, singles, rtol=1e-4, atol=1e-3)


def test_count_layer_rows(llama):
    from adainfer_lib.runner.early_exit import count_layer_rows

    with count_layer_rows(llama) as rows:
        run_early_exit(llama, PROMPTS, ScheduledExitPolicy(np.array([1, 1, 2, 3, 3])), label_words=WORDS,
                       calibration="raw", batch_size=5)
    np.testing.assert_array_equal(rows, [5, 3, 2])
    assert all(len(layer._forward_hooks) == 0 for layer in llama.layers)


def test_non_finite_states_are_an_error_in_a_real_exit(default_tokenizer):
    """Issue 22: a real exit returned NaN logits without a word when the model overflowed (gemma3-270m in
    float16). A tiny model whose layer-2 MLP overflows float16: an exit before layer 2 is finite and fine; a check
    at or after it, and the full model, raise ``NonFiniteError`` naming the layer, the model and the dtype."""
    from adainfer_lib import NonFiniteError
    from conftest import make_overflowing_model

    model = make_overflowing_model(default_tokenizer, layer=2, dtype=torch.float16)
    for batch_size in (1, 3):
        early = run_early_exit(model, PROMPTS, FixedExitPolicy(1, calibration="raw"), label_words=WORDS,
                               batch_size=batch_size)
        assert np.isfinite(early.label_logits).all() and (early.exit_layers == 1).all()
        for k in (2, model.n_layers):
            with pytest.raises(NonFiniteError, match=rf"at layer {k} of tiny-llama \(float16\).*float32"):
                run_early_exit(model, PROMPTS, FixedExitPolicy(k, calibration="raw"), label_words=WORDS,
                               batch_size=batch_size)
    with pytest.raises(NonFiniteError, match=rf"label logits at layer {model.n_layers} of tiny-llama \(float16\)"):
        run_full(model, PROMPTS, label_words=WORDS, batch_size=2)


def test_a_non_finite_full_vocabulary_lens_is_an_error_for_a_rule_that_reads_it(default_tokenizer):
    """The runner computes features lazily: a rule on the full-vocabulary ``top_prob`` reads the lens statistics,
    not the label logits, so a finite state with a NaN row of the unembedding (not a label word's) must still be
    an error at the checked layer, not a NaN feature that never stops."""
    from adainfer_lib import NonFiniteError, TopProbRule
    from adainfer_lib.model.inputs import label_token_ids
    from conftest import make_tiny_model

    model = make_tiny_model("llama", default_tokenizer)
    labels = set(label_token_ids(model.tokenizer, WORDS, PROMPTS[0]))
    other = next(i for i in range(model.hf_model.config.vocab_size) if i not in labels)
    with torch.no_grad():
        model.hf_model.get_output_embeddings().weight[other] = float("nan")
    rule = TopProbRule(0.99, min_layer=1)
    assert rule.needs_full_vocab
    with pytest.raises(NonFiniteError, match=r"full-vocabulary lens at layer 1 of tiny-llama"):
        run_early_exit(model, PROMPTS, rule, label_words=WORDS, calibration="raw")
