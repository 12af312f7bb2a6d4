"""Rows shared across cached traces (issue 22 §5: reuse traces across chapters): a prompt one cached trace holds
is copied into another request's trace, never run again, and only under the same weights and options."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from adainfer_lib.model import lens
from adainfer_lib.model.trace_cache import row_keys, trace_cache_path

PROMPTS = [
    "The capital of France is",
    "Review: a moving, beautifully acted film.\nSentiment:",
    "1, 2, 3, 4,",
    "Hi",
    "Review: dull and far too long.\nSentiment:",
]
WORDS = [" positive", " negative"]
ARRAYS = ("top_ids", "top_probs", "top_prob", "gap", "entropy", "kl_to_final", "cos_prev", "label_logits", "n_tokens")


@pytest.fixture(scope="module")
def model(default_tokenizer):
    from conftest import make_tiny_model

    return make_tiny_model("llama", default_tokenizer)


@pytest.fixture
def forwards(monkeypatch):
    """The number of prompts the trace runs forward passes on (rows of every batch)."""
    counted = {"rows": 0}
    real = lens.batch_states

    def counting(model, batch):
        states = real(model, batch)
        counted["rows"] += states.shape[1]
        return states

    monkeypatch.setattr(lens, "batch_states", counting)
    return counted


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAINFER_DATA", str(tmp_path))
    return tmp_path


def trace(model, prompts, **kw):
    return lens.trace(model, prompts, label_words=kw.pop("label_words", WORDS), progress=False, **kw)


def test_a_subset_of_a_cached_trace_runs_no_forward_pass(model, forwards):
    whole = trace(model, PROMPTS, cache=True)
    assert forwards["rows"] == len(PROMPTS)
    part = trace(model, [PROMPTS[3], PROMPTS[1]], cache=True)
    assert forwards["rows"] == len(PROMPTS)   # nothing ran
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(part, name), getattr(whole, name)[[3, 1]], err_msg=name)
    assert part.meta["reused_rows"] == 2 and part.meta["prompts_key"] != whole.meta["prompts_key"]
    assert trace_cache_path(model, [PROMPTS[3], PROMPTS[1]], WORDS, 5, True).exists()
    assert part.token_strings == {t: whole.token_strings[t] for t in np.unique(part.top_ids)}


def test_only_the_prompts_no_cached_trace_holds_run(model, forwards, caplog):
    trace(model, PROMPTS[:2], cache=True)
    asked = [PROMPTS[4], PROMPTS[1], PROMPTS[2]]
    before = forwards["rows"]
    with caplog.at_level(logging.INFO, logger="adainfer_lib"):
        mixed = trace(model, asked, cache=True)
    assert forwards["rows"] - before == 2 and mixed.meta["reused_rows"] == 1
    assert "trace of 3 prompts: 1 rows from cached traces, 2 to compute" in caplog.text   # the request's count
    assert mixed.meta["row_keys"] == row_keys(asked) and mixed.meta["prefix_cache"] is True
    fresh = trace(model, asked, cache=False)
    for name in ARRAYS:
        np.testing.assert_allclose(getattr(mixed, name), getattr(fresh, name), rtol=1e-5, atol=1e-5, err_msg=name)


def test_full_vocabulary_rows_serve_a_label_rows_request_not_the_reverse(model, forwards):
    full = trace(model, PROMPTS, cache=True)
    before = forwards["rows"]
    labels = trace(model, PROMPTS[:3], cache=True, full_vocab=False)
    assert forwards["rows"] == before
    fresh = trace(model, PROMPTS[:3], cache=False, full_vocab=False)
    assert labels.top_ids.shape == fresh.top_ids.shape == (3, model.n_layers + 1, 0)
    for name in ("top_prob", "gap", "entropy", "kl_to_final"):
        assert np.isnan(getattr(labels, name)).all() and np.isnan(getattr(fresh, name)).all()
    np.testing.assert_allclose(labels.label_logits, fresh.label_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels.label_logits, full.label_logits[:3])
    # a label-rows trace cannot give the vocabulary statistics: a full-vocabulary request of its prompts runs
    trace(model, ["Hello there", "Hi"], cache=True, full_vocab=False)
    before = forwards["rows"]
    trace(model, ["Hello there"], cache=True)
    assert forwards["rows"] == before + 1


@pytest.mark.parametrize("change", ["label words", "top_k", "prefix cache", "weights"])
def test_rows_are_never_shared_across_label_words_options_or_weights(model, forwards, change, default_tokenizer):
    trace(model, PROMPTS, cache=True)
    before = forwards["rows"]
    if change == "label words":
        trace(model, PROMPTS[:2], cache=True, label_words=[" negative", " positive"])
    elif change == "top_k":
        trace(model, PROMPTS[:2], cache=True, top_k=3)
    elif change == "prefix cache":
        trace(model, PROMPTS[:2], cache=True, prefix_cache=False)
    else:
        import torch

        from conftest import make_tiny_model

        edited = make_tiny_model("llama", default_tokenizer)
        with torch.no_grad():
            edited.layers[0].mlp.down_proj.weight.mul_(2.0)
        trace(edited, PROMPTS[:2], cache=True)
    assert forwards["rows"] == before + 2


def test_a_damaged_cached_trace_lends_no_rows(model, forwards, data_dir):
    whole = trace(model, PROMPTS, cache=True)
    path = trace_cache_path(model, PROMPTS, WORDS, 5, True)
    path.write_bytes(path.read_bytes()[:200])
    before = forwards["rows"]
    part = trace(model, PROMPTS[:2], cache=True)
    assert forwards["rows"] == before + 2
    np.testing.assert_allclose(part.gap, whole.gap[:2], rtol=1e-5, atol=1e-5)
