"""Where prompts enter: the prompt-prefix KV cache, label words in context, padding, prompt checks.

Every registered family (tiny random models) and the real default model: a prefix cache, a padding side or a
batch never changes a number; bad input gets an error that names the problem.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from adainfer_lib.model.inputs import (
    MIN_PREFIX_TOKENS,
    check_prompts,
    label_token_ids,
    prepare_prompts,
    shared_prefix_length,
)
from adainfer_lib.model.lens import last_states, trace
from adainfer_lib.rules.plain import FixedExitPolicy
from adainfer_lib.runner.early_exit import run_early_exit, run_full

PREFIX = ("Review: a fine film\nSentiment: positive\n\nReview: dull and far too long\nSentiment: negative\n\n"
          "Review: moving\nSentiment: positive\n\n")
QUERIES = ["great", "terrible acting and a plot that goes nowhere at all", "ok I guess",
           "a masterpiece of modern cinema, moving and funny"]
PROMPTS = [PREFIX + f"Review: {q}\nSentiment:" for q in QUERIES]
WORDS = [" negative", " positive"]
STATS = ("top_prob", "gap", "entropy", "kl_to_final", "cos_prev", "label_logits")


def assert_traces_equal(a, b, atol=1e-4):
    for name in STATS:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=atol, rtol=1e-4, equal_nan=True,
                                   err_msg=name)
    np.testing.assert_array_equal(a.top_ids[..., 0], b.top_ids[..., 0])


# --------------------------------------------------------------------------- prompt-prefix KV cache


def test_shared_prefix_length():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # every prompt keeps one token to run
    assert shared_prefix_length([[7, 1], [8, 1]]) == 0


def test_prefix_cache_equals_uncached_trace(tiny_model):
    plain = trace(tiny_model, PROMPTS, label_words=WORDS, prefix_cache=False, batch_size=3, progress=False)
    cached = trace(tiny_model, PROMPTS, label_words=WORDS, prefix_cache=True, batch_size=3, progress=False)
    assert plain.meta["prefix_tokens"] == 0 and cached.meta["prefix_tokens"] >= MIN_PREFIX_TOKENS
    assert_traces_equal(plain, cached)
    np.testing.assert_array_equal(plain.n_tokens, cached.n_tokens)
    # a single prompt reuses the cache through an explicit prefix, and equals its row in the batch
    one = trace(tiny_model, PROMPTS[1:2], label_words=WORDS, prefix=PREFIX, progress=False)
    assert one.meta["prefix_tokens"] >= MIN_PREFIX_TOKENS
    np.testing.assert_allclose(one.label_logits[0], plain.label_logits[1], atol=1e-4, rtol=1e-4)


def test_prefix_cached_exit_equals_the_lens(tiny_model):
    """A real exit at layer k on the cached prefix equals the (uncached) lens at k, batched or one by one."""
    lens = trace(tiny_model, PROMPTS, label_words=WORDS, prefix_cache=False, progress=False)
    for k in (1, tiny_model.n_layers - 1):
        for batch_size in (1, 3):
            res = run_early_exit(tiny_model, PROMPTS, FixedExitPolicy(k, calibration="raw"), label_words=WORDS,
                                 batch_size=batch_size, prefix=PREFIX)
            assert res.meta["prefix_tokens"] >= MIN_PREFIX_TOKENS
            np.testing.assert_array_equal(res.exit_layers, k)
            np.testing.assert_allclose(res.label_logits, lens.label_logits[:, k], atol=1e-4, rtol=1e-4)
    full = run_full(tiny_model, PROMPTS, label_words=WORDS, batch_size=3)
    np.testing.assert_allclose(full.label_logits, lens.label_logits[:, -1], atol=1e-4, rtol=1e-4)


def test_prefix_cache_is_reused_and_keyed_by_the_layers(tiny_model):
    from adainfer_lib.evaluation.baselines import dropped_layers

    trace(tiny_model, PROMPTS, label_words=WORDS, progress=False)
    store = tiny_model.__dict__["_prefix_kv"]
    before = len(store)
    trace(tiny_model, PROMPTS[::-1], label_words=WORDS, progress=False)
    assert len(store) == before  # same prefix: reused
    with dropped_layers(tiny_model, [1]):  # a pruned model gets its own prefix keys and values
        cached = run_full(tiny_model, PROMPTS, label_words=WORDS, batch_size=2)
        plain = run_full(tiny_model, PROMPTS, label_words=WORDS, batch_size=2, prefix_cache=False)
    np.testing.assert_allclose(cached.label_logits, plain.label_logits, atol=1e-4, rtol=1e-4)


# Edits in place of one decoder layer's MLP weight, each a way users edit weights (issue 22: the model's cache id
# ignored them, so the cached prompt prefix answered for the old weights).
def _scale(w):
    w.mul_(3.0)


def _scale_data(w):
    w.data.mul_(3.0)  # through .data: autograd's version counter does not move


def _one_element(w):
    w[0, 0] += 1.0


def _reassign(w):
    w.data = w.data * 3.0  # a new tensor under the same parameter


def _load_state_dict(w):
    w.copy_(torch.randn_like(w))


EDITS = {"scale": _scale, "scale .data": _scale_data, "one element": _one_element, "reassign": _reassign,
         "copy_": _load_state_dict}


@pytest.mark.parametrize("edit", EDITS)
@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_an_edit_in_place_is_a_new_cache_id_and_a_new_prefix(default_tokenizer, model_type, edit):
    from conftest import make_tiny_model

    model = make_tiny_model(model_type, default_tokenizer)
    trace(model, PROMPTS, label_words=WORDS, progress=False)  # fills the prefix cache
    old_id = model.cache_id
    mlp = model.layers[1].mlp
    weight = (mlp.down_proj if hasattr(mlp, "down_proj") else mlp.c_proj).weight
    with torch.no_grad():
        EDITS[edit](weight)
    assert model.cache_id != old_id
    cached = trace(model, PROMPTS, label_words=WORDS, progress=False)
    plain = trace(model, PROMPTS, label_words=WORDS, prefix_cache=False, progress=False)
    assert cached.meta["prefix_tokens"] >= MIN_PREFIX_TOKENS
    assert_traces_equal(plain, cached, atol=1e-5)
    assert cached.meta["model_cache_id"] == model.cache_id != old_id


def test_the_cache_id_is_the_weights(default_tokenizer):
    """The same weights wrapped twice have one cache id (caches are shared across processes); other weights of
    the same config, another one."""
    from conftest import make_tiny_model

    a, b, c = (make_tiny_model("llama", default_tokenizer, seed=s) for s in (0, 0, 1))
    assert a.cache_id == b.cache_id != c.cache_id
    with torch.no_grad():
        b.layers[2].self_attn.q_proj.weight.mul_(2.0)
        b.layers[2].self_attn.q_proj.weight.div_(2.0)  # the same values again: an id never reused for others
    assert b.cache_id != a.cache_id and b.cache_id == b.cache_id


def test_prompt_must_start_with_the_given_prefix(tiny_model):
    with pytest.raises(ValueError, match=r"prompt\(s\) \[0\] do not start with the given prefix"):
        trace(tiny_model, ["Review: x\nSentiment:"], label_words=WORDS, prefix=PREFIX, progress=False)


# --------------------------------------------------------------------------- padding side


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_side_does_not_matter(tiny_model, side):
    """The last real token is read from the attention mask: batched == one by one, whatever the side."""
    prompts = ["Review: ok\nSentiment:", "Review: a long and winding review of a film\nSentiment:", "Hi"]
    tiny_model.tokenizer.padding_side = side
    try:
        batched = trace(tiny_model, prompts, label_words=WORDS, batch_size=3, progress=False)
        single = [trace(tiny_model, [p], label_words=WORDS, progress=False) for p in prompts]
        res = run_early_exit(tiny_model, prompts, FixedExitPolicy(2, calibration="raw"), label_words=WORDS,
                             batch_size=3)
    finally:
        tiny_model.tokenizer.padding_side = "left"
    for i, one in enumerate(single):
        np.testing.assert_allclose(batched.label_logits[i], one.label_logits[0], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(res.label_logits[i], one.label_logits[0, 2], atol=1e-4, rtol=1e-4)
    states, logits = last_states(tiny_model, prompts)
    np.testing.assert_allclose(tiny_model.lens(states[-1]).numpy(), logits.numpy(), atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- label words in context


def sentencepiece_llama():
    """A tiny Llama with a SentencePiece-style Unigram tokenizer (normalizer prepends '▁' and maps spaces to
    '▁', like Llama-2's): ' positive' alone is ['▁', '▁positive'], after 'Sentiment:' it is ['▁positive']."""
    from tokenizers import Tokenizer, models, normalizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from adainfer_lib.model.loading import LensModel

    chars = sorted(set("".join(PROMPTS) + "Review: x\nSentiment:abcdefghijklmnopqrstuvwxyz,.") - {" "})
    pieces = ["<unk>", "<s>", "</s>", "▁", "▁positive", "▁negative"] + [c for c in chars if c != "▁"]
    vocab = [(p, -1.0 if p.startswith("▁") and len(p) > 1 else -5.0) for p in pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(pieces), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512)
    return LensModel.wrap(LlamaForCausalLM(config).eval(), fast, name="tiny-sentencepiece-llama")


def test_label_words_resolve_after_the_prompt_with_sentencepiece():
    model = sentencepiece_llama()
    alone = model.tokenizer.encode(" negative", add_special_tokens=False)
    assert model.tokenizer.convert_ids_to_tokens(alone) == ["▁", "▁negative"]  # the trap
    ids = model.label_token_ids(WORDS, "Review: x\nSentiment:")
    assert model.tokenizer.convert_ids_to_tokens(ids) == ["▁negative", "▁positive"]
    result = trace(model, ["Review: x\nSentiment:"], label_words=WORDS, progress=False)
    assert result.label_ids == ids
    full = model.lens(last_states(model, ["Review: x\nSentiment:"])[0][-1])
    np.testing.assert_allclose(result.label_logits[0, -1], full[0, ids].numpy(), atol=1e-4, rtol=1e-4)
    res = run_early_exit(model, ["Review: x\nSentiment:"], FixedExitPolicy(1, calibration="raw"), label_words=WORDS)
    np.testing.assert_allclose(res.label_logits[0], result.label_logits[0, 1], atol=1e-4, rtol=1e-4)


def test_one_label_word_is_refused_wherever_label_words_are_resolved(default_tokenizer):
    """Issue 22: a task with one label was accepted and every input exited at the minimum layer without a word
    (its label_gap is 1 at every layer). Every trace, real exit and dense run with label words refuses it."""
    from conftest import make_tiny_model

    model = make_tiny_model("llama", default_tokenizer)
    message = r"has 1 distinct label word\(s\) \[' positive'\]: a classification task needs 2 or more labels"
    with pytest.raises(ValueError, match=message):
        trace(model, PROMPTS, label_words=[" positive"], progress=False)
    with pytest.raises(ValueError, match=message):
        trace(model, PROMPTS, label_words=[" positive"], full_vocab=False, progress=False)
    with pytest.raises(ValueError, match=message):
        run_early_exit(model, PROMPTS, FixedExitPolicy(2, calibration="raw"), label_words=[" positive"])
    with pytest.raises(ValueError, match=message):
        run_full(model, PROMPTS, label_words=[" positive"])
    with pytest.raises(ValueError, match=message):
        label_token_ids(model.tokenizer, [" positive"], "Sentiment:")
    assert trace(model, PROMPTS, progress=False).label_words == []  # a trace without label words still is one


def test_label_word_errors_name_the_word(tiny_model):
    tok = tiny_model.tokenizer
    with pytest.raises(ValueError, match=r"' supercalifragilistic' is \d+ tokens .* not exactly one"):
        label_token_ids(tok, [" positive", " supercalifragilistic"], "Sentiment:")
    with pytest.raises(ValueError, match="' positive' and ' positive' are the same token"):
        label_token_ids(tok, [" positive", " positive"], "Sentiment:")
    with pytest.raises(TypeError, match="not the single string"):
        label_token_ids(tok, " positive", "Sentiment:")
    with pytest.raises(TypeError, match="non-empty strings"):
        label_token_ids(tok, ["", " positive"], "Sentiment:")
    for run in (lambda w: trace(tiny_model, ["Sentiment:"], label_words=w, progress=False),
                lambda w: run_full(tiny_model, ["Sentiment:"], label_words=w),
                lambda w: run_early_exit(tiny_model, ["Sentiment:"], FixedExitPolicy(1, calibration="raw"),
                                         label_words=w)):
        with pytest.raises(ValueError, match="same token"):
            run([" positive", " positive"])


# --------------------------------------------------------------------------- prompts checked where they enter


def test_prompt_errors(tiny_model):
    policy = FixedExitPolicy(1, calibration="raw")
    entries = {"trace": lambda p: trace(tiny_model, p, label_words=WORDS, progress=False),
               "run_early_exit": lambda p: run_early_exit(tiny_model, p, policy, label_words=WORDS),
               "run_full": lambda p: run_full(tiny_model, p, label_words=WORDS)}
    for name, run in entries.items():
        with pytest.raises(TypeError, match=rf"{name}\(\) takes a list of prompts, not a single string"):
            run("Hello")
        with pytest.raises(ValueError, match=rf"{name}\(\): prompts must be non-empty strings; prompt\(s\) \[1\]"):
            run(["Hello", ""])
        with pytest.raises(ValueError, match=rf"{name}\(\) needs at least one prompt"):
            run([])
        with pytest.raises(TypeError, match=r"prompt\(s\) \[0\] are \['int'\]"):
            run([3])
        with pytest.raises(ValueError, match=r"prompt 1 is \d+ tokens, longer than .*context of 512 tokens"):
            run(["Hi", "word " * 600])
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        run_early_exit(tiny_model, ["Hi"], policy, label_words=WORDS, batch_size=0)
    assert check_prompts(("a", "b"), caller="x") == ["a", "b"]


def test_prepare_prompts_batches_and_prefix(tiny_model):
    prepared = prepare_prompts(tiny_model, PROMPTS, caller="test", batch_size=3)
    assert sorted(np.concatenate(prepared.batches).tolist()) == [0, 1, 2, 3]
    assert prepared.prefix is not None and all(tuple(t[: prepared.prefix.length]) == prepared.prefix.tokens
                                               for t in prepared.tokens)
    batch = prepared.batch(prepared.batches[0])
    assert batch.attention_mask.shape[1] == prepared.prefix.length + batch.input_ids.shape[1]
    lengths = np.array([len(prepared.tokens[i]) - prepared.prefix.length for i in prepared.batches[0]])
    np.testing.assert_array_equal(batch.last.numpy(), lengths - 1)


# --------------------------------------------------------------------------- the real default model


@pytest.mark.slow
def test_default_model_prefix_cache_on_a_fixed_demonstration_set(default_model):
    from adainfer_lib import load_task

    task = load_task("sentiment", n=8, n_train=8, seed=0)
    prompts = task.prompts()
    plain = trace(default_model, prompts, label_words=task.label_words, prefix_cache=False, progress=False)
    cached = trace(default_model, prompts, label_words=task.label_words, prefix=task.prefix, progress=False)
    assert cached.meta["prefix_tokens"] >= 64  # four demonstrations
    assert_traces_equal(plain, cached, atol=1e-3)
    np.testing.assert_allclose(plain.label_logits, cached.label_logits, atol=1e-4, rtol=0)
    res = run_early_exit(default_model, prompts, FixedExitPolicy(15, calibration="raw"),
                         label_words=task.label_words, batch_size=4, prefix=task.prefix)
    np.testing.assert_allclose(res.label_logits, plain.label_logits[:, 15], atol=1e-4, rtol=0)
