"""Logit-lens invariants on tiny models of every registered architecture, and on the real default model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adainfer_lib import LayerTrace, trace
from adainfer_lib.model.layer_trace import CorruptCacheError
from adainfer_lib.model.lens import last_states
from adainfer_lib.model.trace_cache import trace_cache_path

PROMPTS = [
    "The capital of France is",
    "Review: a moving, beautifully acted film.\nSentiment:",
    "1, 2, 3, 4,",
    "Hi",
]


def test_lens_at_last_layer_equals_model_logits(tiny_model):
    states, logits = last_states(tiny_model, PROMPTS)
    assert states.shape == (tiny_model.n_layers + 1, len(PROMPTS), states.shape[-1])
    torch.testing.assert_close(tiny_model.lens(states[-1]), logits, rtol=1e-4, atol=1e-4)


def test_label_lens_equals_full_lens_rows(tiny_model):
    states, _ = last_states(tiny_model, PROMPTS[:2])
    ids = torch.tensor(tiny_model.label_token_ids([" positive", " negative", " the"], "Sentiment:"))
    torch.testing.assert_close(tiny_model.label_lens(states[3], ids), tiny_model.lens(states[3])[:, ids])


def test_label_head_equals_label_lens_exactly(tiny_model):
    """The runner's label head (rows of the unembedding read once per run) gives label_lens's numbers exactly."""
    states, _ = last_states(tiny_model, PROMPTS[:2])
    ids = torch.tensor(tiny_model.label_token_ids([" positive", " negative"], "Sentiment:"))
    head = tiny_model.label_head(ids)
    for layer in (0, 2, tiny_model.n_layers):
        torch.testing.assert_close(head(states[layer]), tiny_model.label_lens(states[layer], ids), rtol=0, atol=0)
        torch.testing.assert_close(head(states[layer]), tiny_model.lens(states[layer])[:, ids])


def test_padded_batch_equals_one_by_one(tiny_model):
    words = [" positive", " negative"]
    batched = trace(tiny_model, PROMPTS, label_words=words, batch_size=4, progress=False)
    single = trace(tiny_model, PROMPTS, label_words=words, batch_size=1, progress=False)
    for name in ("top_prob", "gap", "entropy", "kl_to_final", "label_logits"):
        np.testing.assert_allclose(getattr(batched, name), getattr(single, name), rtol=1e-3, atol=1e-4, err_msg=name)
    np.testing.assert_array_equal(batched.top_ids[..., 0], single.top_ids[..., 0])


def test_trace_statistics_are_consistent(tiny_model):
    t = trace(tiny_model, PROMPTS, label_words=[" positive", " negative"], top_k=3, progress=False)
    L = tiny_model.n_layers
    assert t.top_prob.shape == (len(PROMPTS), L + 1)
    assert np.all(t.gap <= t.top_prob + 1e-6) and np.all(t.gap >= -1e-6)
    np.testing.assert_allclose(t.top_probs[..., 0], t.top_prob)
    assert np.all(np.diff(t.top_probs, axis=-1) <= 1e-6)  # sorted
    np.testing.assert_allclose(t.kl_to_final[:, -1], 0, atol=1e-5)
    assert np.all(t.entropy >= -1e-5) and np.all(t.entropy <= np.log(tiny_model.vocab_size) + 1e-3)
    np.testing.assert_allclose(t.label_probs().sum(-1), 1, rtol=1e-5)
    assert np.isnan(t.cos_prev[:, 0]).all() and np.all(np.abs(t.cos_prev[:, 1:]) <= 1 + 1e-5)
    # full-vocabulary probabilities sum to one at every layer
    states, _ = last_states(tiny_model, PROMPTS[:1])
    probs = torch.softmax(tiny_model.lens(states[:, 0]), -1)
    torch.testing.assert_close(probs.sum(-1), torch.ones(L + 1))


def test_to_frame_is_tidy(tiny_model):
    t = trace(tiny_model, PROMPTS, label_words=[" positive", " negative"], progress=False)
    frame = t.to_frame()
    assert len(frame) == len(PROMPTS) * (tiny_model.n_layers + 1)
    for column in ("example", "layer", "top_prob", "gap", "entropy", "kl_to_final", "top_token", "p_positive",
                   "p_negative"):
        assert column in frame.columns
    assert frame.groupby("example").layer.max().eq(tiny_model.n_layers).all()
    np.testing.assert_allclose(frame.p_positive + frame.p_negative, 1, rtol=1e-5)


def test_label_only_trace_matches_full(tiny_model):
    words = [" positive", " negative"]
    full = trace(tiny_model, PROMPTS, label_words=words, progress=False)
    cheap = trace(tiny_model, PROMPTS, label_words=words, full_vocab=False, progress=False)
    np.testing.assert_allclose(cheap.label_logits, full.label_logits, rtol=1e-4, atol=1e-4)
    assert np.isnan(cheap.top_prob).all()
    with pytest.raises(ValueError, match="label_words are required"):
        trace(tiny_model, PROMPTS, full_vocab=False, progress=False)


@pytest.mark.parametrize("bad", [[], [""], ["ok", "   "]])
def test_bad_prompts_are_refused(tiny_model, bad):
    with pytest.raises(ValueError, match="prompt"):
        trace(tiny_model, bad, progress=False)


def test_bad_label_word_is_refused(tiny_model):
    with pytest.raises(ValueError, match="' supercalifragilistic' is .* tokens .* not exactly one"):
        trace(tiny_model, PROMPTS, label_words=[" positive", " supercalifragilistic"], progress=False)


def test_save_load_roundtrip_and_corrupt_cache_rebuilt(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAINFER_DATA", str(tmp_path))
    words = [" positive", " negative"]
    first = trace(tiny_model, PROMPTS, label_words=words, cache=True, progress=False)
    path = trace_cache_path(tiny_model, PROMPTS, words, 5, True)
    assert path.exists() and not list(path.parent.glob("*.tmp*"))
    again = LayerTrace.load(path)
    np.testing.assert_array_equal(again.gap, first.gap)
    assert again.token_strings == first.token_strings
    # A truncated file is detected, and trace() rebuilds it instead of failing or returning garbage.
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptCacheError):
        LayerTrace.load(path)
    rebuilt = trace(tiny_model, PROMPTS, label_words=words, cache=True, progress=False)
    np.testing.assert_allclose(rebuilt.gap, first.gap)
    LayerTrace.load(path)  # valid again
    # Other prompts or options get another key.
    assert trace_cache_path(tiny_model, PROMPTS[:2], words, 5, True) != path
    assert trace_cache_path(tiny_model, PROMPTS, words, 3, True) != path


def test_trace_cache_after_an_edit_in_place(default_tokenizer, tmp_path, monkeypatch):
    """Issue 22: after one decoder layer's MLP weight was scaled in place, the trace cache on disk answered for
    the old weights (same cache id, same file)."""
    from conftest import make_tiny_model

    monkeypatch.setenv("ADAINFER_DATA", str(tmp_path))
    model = make_tiny_model("llama", default_tokenizer)
    words = [" positive", " negative"]
    before = trace(model, PROMPTS, label_words=words, cache=True, progress=False)
    with torch.no_grad():
        model.layers[0].mlp.down_proj.weight.mul_(4.0)
    after = trace(model, PROMPTS, label_words=words, cache=True, progress=False)
    fresh = trace(model, PROMPTS, label_words=words, cache=False, progress=False)
    np.testing.assert_allclose(after.label_logits, fresh.label_logits, atol=1e-5, rtol=1e-5)
    assert np.abs(after.label_logits - before.label_logits).max() > 1e-3
    assert len(list((tmp_path / "traces").glob("*.npz"))) == 2


def test_non_finite_states_are_an_error_naming_the_layer(default_tokenizer):
    """Issue 22: gemma3-270m in float16 overflows from layer 9 on and the trace returned NaN statistics without a
    word. Here a tiny model whose layer-2 MLP overflows float16 (and not float32)."""
    from adainfer_lib import NonFiniteError
    from conftest import make_overflowing_model

    words = [" positive", " negative"]
    half = make_overflowing_model(default_tokenizer, layer=2, dtype=torch.float16)
    for full_vocab in (True, False):
        with pytest.raises(NonFiniteError, match=r"residual stream at layer 2 of tiny-llama \(float16\).*dtype=torch"
                                                 r"\.float32"):
            trace(half, PROMPTS, label_words=words, full_vocab=full_vocab, progress=False)
    fine = trace(make_overflowing_model(default_tokenizer, layer=2), PROMPTS, label_words=words, progress=False)
    assert np.isfinite(fine.label_logits).all() and np.isfinite(fine.top_prob).all()
    inf = make_overflowing_model(default_tokenizer, layer=3, value=float("inf"))
    with pytest.raises(NonFiniteError, match=r"at layer 3 of tiny-llama \(float32\): the weights"):
        trace(inf, PROMPTS, label_words=words, progress=False)


IMPOSTORS = {  # a valid trace of something else, placed at the cache path of PROMPTS' trace: (what differs, trace)
    "2 other prompts": ("n_examples 2, not 4", lambda m, other, w: trace(m, ["Hello there", "Bye"], label_words=w,
                                                                        progress=False)),
    "4 other prompts": ("prompts_key", lambda m, other, w: trace(m, [p + " x" for p in PROMPTS], label_words=w,
                                                                 progress=False)),
    "label words swapped": ("label_words", lambda m, other, w: trace(m, PROMPTS, label_words=w[::-1],
                                                                     progress=False)),
    "another model": ("model_cache_id", lambda m, other, w: trace(other, PROMPTS, label_words=w, progress=False)),
    "other top_k": ("top_k 3, not 5", lambda m, other, w: trace(m, PROMPTS, label_words=w, top_k=3,
                                                                progress=False)),
}


@pytest.mark.parametrize("impostor", IMPOSTORS)
def test_a_cache_file_holding_another_trace_is_rebuilt(default_tokenizer, tmp_path, monkeypatch, caplog, impostor):
    """Issue 22: a valid trace of 2 other prompts placed at a 4-prompt cache path was returned as the answer."""
    import logging

    from conftest import make_tiny_model

    monkeypatch.setenv("ADAINFER_DATA", str(tmp_path))
    model, other = make_tiny_model("llama", default_tokenizer), make_tiny_model("llama", default_tokenizer, seed=1)
    words = [" positive", " negative"]
    path = trace_cache_path(model, PROMPTS, words, 5, True)
    reason, make = IMPOSTORS[impostor]
    make(model, other, words).save(path)
    with caplog.at_level(logging.WARNING, logger="adainfer_lib"):
        got = trace(model, PROMPTS, label_words=words, cache=True, progress=False)
    fresh = trace(model, PROMPTS, label_words=words, progress=False)
    assert got.n_examples == 4 and got.label_words == words
    np.testing.assert_allclose(got.label_logits, fresh.label_logits, atol=1e-6)
    np.testing.assert_array_equal(got.top_ids, fresh.top_ids)
    assert "holds another trace" in caplog.text and reason in caplog.text
    np.testing.assert_allclose(LayerTrace.load(path).label_logits, fresh.label_logits, atol=1e-6)  # rewritten
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="adainfer_lib"):
        trace(model, PROMPTS, label_words=words, cache=True, progress=False)
    assert "holds another trace" not in caplog.text  # the rebuilt file is the answer now


def test_layer_trace_validates_shapes():
    n, layers = 2, 4
    ok = dict(model_name="m", n_layers=3, top_ids=np.zeros((n, layers, 1), np.int32), top_probs=np.zeros((n, layers,
                                                                                                          1)),
              top_prob=np.zeros((n, layers)), gap=np.zeros((n, layers)), entropy=np.zeros((n, layers)),
              kl_to_final=np.zeros((n, layers)), cos_prev=np.zeros((n, layers)), label_logits=np.zeros((n, layers, 0)),
              n_tokens=np.zeros(n, np.int32))
    LayerTrace(**ok)
    with pytest.raises(ValueError, match="layers"):
        LayerTrace(**{**ok, "n_layers": 5})
    with pytest.raises(ValueError, match="gap"):
        LayerTrace(**{**ok, "gap": np.zeros((n, layers + 1))})


@pytest.mark.slow
def test_default_model_separates_obvious_reviews(default_model):
    demos = ("Review: a dull, lifeless mess.\nSentiment: negative\n\n"
             "Review: a warm and wonderful film.\nSentiment: positive\n\n")
    prompts = [demos + "Review: an absolute delight, funny and moving from start to finish.\nSentiment:",
               demos + "Review: boring, ugly and painfully stupid; the worst film of the year.\nSentiment:"]
    t = trace(default_model, prompts, label_words=[" negative", " positive"], progress=False)
    assert t.n_layers == default_model.n_layers and t.top_prob.shape == (2, default_model.n_layers + 1)
    margin = t.label_logits[:, -1, 1] - t.label_logits[:, -1, 0]  # positive minus negative
    assert margin[0] > margin[1] + 1.0
    states, logits = last_states(default_model, prompts)
    torch.testing.assert_close(default_model.lens(states[-1]), logits, rtol=1e-4, atol=1e-3)
