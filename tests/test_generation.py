"""Early exit during generation (``adainfer_lib.generation``): self-speculative decoding equals the full
model's greedy output, a rule that never exits equals it for every cache strategy, "recompute" leaves the
full model's cache, "propagate" writes the full model's keys/values when given the true states, and bad
inputs give clear errors. Tiny random models of several families; the default model in the slow tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import adainfer_lib as ai
from adainfer_lib.generation import loop
from conftest import make_tiny_model

PROMPT = "The movie was a long and winding story about"
FAMILIES = ["llama", "qwen2", "gemma3_text", "gpt2", "opt"]
NEVER = ai.TopProbRule(1.01, min_layer=1)


def hf_greedy(model, prompt, n):
    ids = torch.tensor([model.tokenizer(prompt)["input_ids"]])
    out = model.hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n)
    return out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, default_tokenizer):
    return make_tiny_model(request.param, default_tokenizer)


@pytest.fixture(scope="module")
def tiny_llama(default_tokenizer):
    return make_tiny_model("llama", default_tokenizer)


def test_speculative_equals_generate(tiny):
    reference = hf_greedy(tiny, PROMPT, 12)
    assert ai.greedy_generate(tiny, PROMPT, max_new_tokens=12).tokens.tolist() == reference
    for rule, k in [(ai.TopProbRule(0.0, min_layer=1), 3), (ai.TopProbRule(0.0, min_layer=2), 1), (NEVER, 2)]:
        result = ai.speculative_generate(tiny, PROMPT, rule, draft_tokens=k, max_new_tokens=12)
        assert result.tokens.tolist() == reference, (rule, k)
        assert result.verify_passes >= 1 and 0 <= result.accepted <= result.drafted
    assert ai.speculative_generate(tiny, PROMPT, NEVER, draft_tokens=3, max_new_tokens=12).acceptance_rate == 1.0


def test_never_exit_equals_full_model_for_every_strategy(tiny):
    reference = hf_greedy(tiny, PROMPT, 10)
    for strategy in ai.CACHE_STRATEGIES:
        if strategy == "propagate" and tiny.hf_model.config.model_type not in loop.PROPAGATE_MODEL_TYPES:
            with pytest.raises(ai.UnsupportedStrategyError, match="Llama"):
                ai.generate_early_exit(tiny, PROMPT, NEVER, strategy=strategy, max_new_tokens=10)
            continue
        result = ai.generate_early_exit(tiny, PROMPT, NEVER, strategy=strategy, max_new_tokens=10)
        assert result.tokens.tolist() == reference, strategy
        assert (result.exit_layers == tiny.n_layers).all() and result.layers_saved == 0.0


def test_recompute_leaves_the_full_models_cache(tiny):
    result = ai.generate_early_exit(tiny, PROMPT, ai.TopProbRule(0.0, min_layer=1), strategy="recompute",
                                    max_new_tokens=8, keep_cache=True)
    assert (result.exit_layers[1:] == 1).all() and result.compute_saved == 0.0
    ids = torch.tensor([result.prompt_tokens + result.tokens[:-1].tolist()])
    full = tiny.hf_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True).cache
    for mine, theirs in zip(result.cache.layers, full.layers):
        n = min(mine.keys.shape[-2], theirs.keys.shape[-2])  # sliding-window layers keep the last window only
        torch.testing.assert_close(mine.keys[..., -n:, :], theirs.keys[..., -n:, :], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(mine.values[..., -n:, :], theirs.values[..., -n:, :], atol=1e-5, rtol=1e-4)


def test_recompute_decides_by_the_lens_of_the_full_run(tiny_llama):
    """With the exact cache, a token that exits at layer k is the lens argmax at k of the full run."""
    result = ai.generate_early_exit(tiny_llama, PROMPT, ai.TopProbRule(0.0, min_layer=2), strategy="recompute",
                                    max_new_tokens=6)
    settling = ai.token_settling(tiny_llama, result)
    assert (settling["top1"][1:, 2] == result.tokens[1:]).all()


def test_skip_leaves_holes_and_propagate_fills_them(tiny_llama):
    rule = ai.TopProbRule(0.0, min_layer=1)
    skip = ai.generate_early_exit(tiny_llama, PROMPT, rule, strategy="skip", max_new_tokens=6, keep_cache=True)
    lengths = [layer.keys.shape[-2] for layer in skip.cache.layers]
    assert lengths[0] == lengths[1] + 5 == lengths[2] + 5  # the 5 positions fed with an exit: missing above layer 1
    prop = ai.generate_early_exit(tiny_llama, PROMPT, rule, strategy="propagate", max_new_tokens=6, keep_cache=True)
    assert len({layer.keys.shape[-2] for layer in prop.cache.layers}) == 1
    assert skip.compute_saved > 0 and prop.compute_saved > 0


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma", "gemma3_text"])
def test_propagate_projects_the_full_models_keys(family, default_tokenizer):
    """Fed the true input state of each layer, the propagation's K/V equal the full model's cache."""
    model = make_tiny_model(family, default_tokenizer)
    ids = torch.tensor([model.tokenizer(PROMPT)["input_ids"]])
    captured = {}

    def grab(index):
        def hook(_m, args, kwargs):
            captured[index] = ((args[0] if args else kwargs["hidden_states"])[:, -1:], kwargs["position_embeddings"])
        return hook

    handles = [layer.register_forward_pre_hook(grab(i), with_kwargs=True) for i, layer in enumerate(model.layers)]
    try:
        cache = model.hf_model(input_ids=ids, use_cache=True).cache
    finally:
        for h in handles:
            h.remove()

    class Recorder:
        def update(self, keys, values, layer_idx):
            self.kv = (keys, values)

    for index, layer in enumerate(model.layers):
        hidden, (cos, sin) = captured[index]
        recorder = Recorder()
        loop.project_kv(layer, hidden, (cos[:, -1:], sin[:, -1:]), recorder, index)
        torch.testing.assert_close(recorder.kv[0], cache.layers[index].keys[..., -1:, :], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(recorder.kv[1], cache.layers[index].values[..., -1:, :], atol=1e-5, rtol=1e-4)


def test_bad_inputs(tiny_llama, default_tokenizer):
    gpt2 = make_tiny_model("gpt2", default_tokenizer)
    with pytest.raises(TypeError, match="one prompt"):
        ai.generate_early_exit(tiny_llama, [PROMPT], NEVER)
    with pytest.raises(ValueError, match="non-empty"):
        ai.generate_early_exit(tiny_llama, "  ", NEVER)
    with pytest.raises(ValueError, match="max_new_tokens"):
        ai.greedy_generate(tiny_llama, PROMPT, max_new_tokens=0)
    with pytest.raises(ValueError, match="cache strategy"):
        ai.generate_early_exit(tiny_llama, PROMPT, NEVER, strategy="copy")
    with pytest.raises(ai.UnsupportedStrategyError, match="'gpt2'"):
        ai.generate_early_exit(gpt2, PROMPT, NEVER, strategy="propagate")
    with pytest.raises(TypeError, match="not an exit rule"):
        ai.generate_early_exit(tiny_llama, PROMPT, object())
    label_rule = ai.GapThresholdPolicy(threshold=0.5, min_layer=1)  # an exit rule on label-word features
    with pytest.raises(ValueError, match="no label words"):
        ai.generate_early_exit(tiny_llama, PROMPT, label_rule)
    with pytest.raises(ValueError, match="min_layer"):
        ai.generate_early_exit(tiny_llama, PROMPT, ai.TopProbRule(0.5, min_layer=tiny_llama.n_layers + 1))
    with pytest.raises(ValueError, match="min_layer"):
        ai.TopProbRule(0.5, min_layer=0)
    with pytest.raises(ValueError, match="threshold"):
        ai.TopProbRule(2.0)
    with pytest.raises(ValueError, match="draft_tokens"):
        ai.speculative_generate(tiny_llama, PROMPT, NEVER, draft_tokens=0)
    with pytest.raises(ValueError, match="context"):
        ai.greedy_generate(tiny_llama, PROMPT, max_new_tokens=10_000)


def test_non_finite_states_are_an_error_in_generation(default_tokenizer):
    """Issue 22: NaN logits gave a token (the argmax of NaN) without a word. A tiny model whose layer-2 MLP
    overflows float16: the full model and every early-exit generation raise ``NonFiniteError``."""
    from conftest import make_overflowing_model

    model = make_overflowing_model(default_tokenizer, layer=2, dtype=torch.float16)
    with pytest.raises(ai.NonFiniteError, match=r"logits at layer 3 of tiny-llama \(float16\).*float32"):
        ai.greedy_generate(model, PROMPT, max_new_tokens=3)
    for strategy in ai.CACHE_STRATEGIES:
        with pytest.raises(ai.NonFiniteError, match=r"tiny-llama \(float16\)"):
            ai.generate_early_exit(model, PROMPT, ai.TopProbRule(0.0, min_layer=1), strategy=strategy,
                                   max_new_tokens=3)
    with pytest.raises(ai.NonFiniteError, match=r"tiny-llama \(float16\)"):
        ai.speculative_generate(model, PROMPT, ai.TopProbRule(0.0, min_layer=1), draft_tokens=2, max_new_tokens=4)


def test_an_exit_step_checks_its_own_state(default_tokenizer):
    """The exit check reads the state it decides from: a state made NaN after the prompt ran (its cache is
    finite) is an error naming the checked layer, not a token."""
    model = make_tiny_model("llama", default_tokenizer)
    hooks = loop._ExitHooks(model, "skip")
    step = loop._StepState(rule=NEVER, threshold=1.01, min_layer=1, strategy="skip", cache=None)
    h = torch.full((1, model.hf_model.config.hidden_size), float("nan"))
    with pytest.raises(ai.NonFiniteError, match=r"at layer 2 of tiny-llama \(float32\)"):
        hooks._check(step, 2, h, torch.zeros_like(h))


def test_study_rows_and_summary(tiny_llama):
    configs = {"skip": ai.GenerationConfig("skip", ai.TopProbRule(0.0, min_layer=2)),
               "spec": ai.GenerationConfig("speculative", ai.TopProbRule(0.0, min_layer=2), draft_tokens=2)}
    table = ai.run_generation_study(tiny_llama, [PROMPT, "Another prompt here"], configs, max_new_tokens=5,
                                    progress=False)
    assert len(table) == 6 and table[table.config == "full"].full_match.all()
    summary = ai.summarize_study(table, tiny_llama.n_layers).set_index("config")
    assert summary.loc["spec", "full_match_rate"] == 1.0 and summary.loc["full", "layers_saved"] == 0.0
    assert 0 < summary.loc["skip", "layers_saved"] < 1 and summary.loc["skip", "ideal_speedup"] > 1
    assert ai.generation.agreement_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert ai.generation.repetition([5, 5, 5, 5]) == pytest.approx(2 / 3)


@pytest.mark.slow
def test_speculative_equals_generate_on_the_default_model(default_model):
    for prompt in ["Pretty much sucks, but has a funny moment", "The plot of this film"]:
        reference = hf_greedy(default_model, prompt, 16)
        for rule in (ai.TopProbRule(0.5, min_layer=20), ai.TopProbRule(0.0, min_layer=15)):
            result = ai.speculative_generate(default_model, prompt, rule, draft_tokens=4, max_new_tokens=16)
            assert result.tokens.tolist() == reference


@pytest.mark.slow
def test_never_exit_on_the_default_model(default_model):
    prompt = "Pretty much sucks, but has a funny moment"
    reference = hf_greedy(default_model, prompt, 8)
    never = ai.TopProbRule(1.01, min_layer=default_model.n_layers)
    for strategy in ai.CACHE_STRATEGIES:
        assert ai.generate_early_exit(default_model, prompt, never, strategy=strategy,
                                      max_new_tokens=8).tokens.tolist() == reference


BATCH_PROMPTS = [PROMPT, "Bad.", "An utterly charming film, with a cast of"]  # three lengths: left padding


def _mixed_rule(model):
    """A top-prob rule from layer 1 whose threshold is the median top prob at layer 1 of a batch-size-1 run: some
    tokens exit at layer 1, the others later — so rows of one batch exit at different layers."""
    probe = ai.generate_early_exit(model, PROMPT, ai.TopProbRule(0.0, min_layer=1), max_new_tokens=10)
    return ai.TopProbRule(float(np.median(probe.features["top_prob"][1:])), min_layer=1)


@pytest.fixture(scope="module")
def tiny_gemma(default_tokenizer):
    return make_tiny_model("gemma", default_tokenizer)  # eager attention: the batch's masks are additive floats


def test_batched_generation_with_eager_attention(tiny_gemma):
    assert tiny_gemma.hf_model.config._attn_implementation == "eager"
    test_batched_generation_decides_what_batch_size_one_decides(tiny_gemma)


def test_batched_generation_decides_what_batch_size_one_decides(tiny):
    rule = _mixed_rule(tiny)
    if getattr(tiny.hf_model.config, "sliding_window", None):  # the tiny Gemma-3's window is 4 positions
        with pytest.raises(ValueError, match="sliding window"):
            ai.generate_batch(tiny, BATCH_PROMPTS, rule, max_new_tokens=10)
        return
    supported = [s for s in ai.CACHE_STRATEGIES
                 if s != "propagate" or tiny.hf_model.config.model_type in loop.PROPAGATE_MODEL_TYPES]
    runs = {None: ([ai.greedy_generate(tiny, p, max_new_tokens=10) for p in BATCH_PROMPTS],
                   ai.generate_batch(tiny, BATCH_PROMPTS, max_new_tokens=10))}
    for strategy in supported:
        runs[strategy] = ([ai.generate_early_exit(tiny, p, rule, strategy=strategy, max_new_tokens=10)
                           for p in BATCH_PROMPTS],
                          ai.generate_batch(tiny, BATCH_PROMPTS, rule, strategy=strategy, max_new_tokens=10,
                                            batch_size=2))  # two chunks
    for strategy, (single, batched) in runs.items():
        for one, many in zip(single, batched):
            assert many.tokens.tolist() == one.tokens.tolist(), (strategy, one.prompt)
            assert many.exit_layers.tolist() == one.exit_layers.tolist(), (strategy, one.prompt)
            assert many.layers_computed.tolist() == one.layers_computed.tolist(), (strategy, one.prompt)
            np.testing.assert_allclose(many.features["top_prob"], one.features["top_prob"], rtol=1e-4, atol=1e-6)
            assert np.isnan(many.seconds) and many.method == (strategy or "full")
    exits = np.concatenate([r.exit_layers[1:] for r in runs["skip"][0]])
    assert (exits == 1).any() and (exits > 1).any(), "the rule must make rows of one batch exit at different layers"


def test_batched_skip_needs_its_holes(tiny_llama):
    """Without the per-layer masks, the batch would attend to keys batch size 1 never wrote: it must differ."""
    from adainfer_lib.generation import batched

    rule = _mixed_rule(tiny_llama)
    single = [ai.generate_early_exit(tiny_llama, p, rule, strategy="skip", max_new_tokens=10) for p in BATCH_PROMPTS]
    assert [r.tokens.tolist() for r in ai.generate_batch(tiny_llama, BATCH_PROMPTS, rule, max_new_tokens=10)] == \
        [r.tokens.tolist() for r in single]
    original = batched._BatchStep.before
    try:
        batched._BatchStep.before = lambda self, index, args, kwargs: original(self, 0, args, kwargs)  # layer 1's mask
        leaky = ai.generate_batch(tiny_llama, BATCH_PROMPTS, rule, max_new_tokens=10)
    finally:
        batched._BatchStep.before = original
    assert [r.tokens.tolist() for r in leaky] != [r.tokens.tolist() for r in single]


def test_timed_study_runs_a_subset_at_batch_size_one(tiny_llama):
    configs = {"skip": ai.GenerationConfig("skip", _mixed_rule(tiny_llama))}
    reference = ai.generation.full_model_runs(tiny_llama, BATCH_PROMPTS, max_new_tokens=6, timed=1)
    assert np.isfinite(reference[0].seconds) and np.isnan(reference[1].seconds) and np.isnan(reference[2].seconds)
    table = ai.run_generation_study(tiny_llama, BATCH_PROMPTS, configs, max_new_tokens=6, timed=1,
                                    reference=reference, progress=False)
    skip = table[table.config == "skip"].set_index("prompt")
    assert skip.batch_match.tolist()[0] == 1.0 and skip.batch_match.iloc[1:].isna().all()
    assert np.isfinite(skip.seconds[0]) and skip.seconds.iloc[1:].isna().all()
    summary = ai.summarize_study(table, tiny_llama.n_layers).set_index("config")
    assert summary.loc["skip", "n_timed"] == 1 and summary.loc["skip", "batch_match_rate"] == 1.0
    assert np.isfinite(summary.loc["skip", "measured_speedup"])
    untimed = ai.run_generation_study(tiny_llama, BATCH_PROMPTS, configs, max_new_tokens=6, progress=False)
    assert untimed.drop(columns=["seconds", "full_seconds", "batch_match"]).equals(
        table.drop(columns=["seconds", "full_seconds", "batch_match"]))
    with pytest.raises(ValueError, match="reference must be the full model's runs"):
        ai.run_generation_study(tiny_llama, BATCH_PROMPTS[:2], configs, max_new_tokens=6, reference=reference)
    with pytest.raises(ValueError, match="more than the 3 prompts"):
        ai.run_generation_study(tiny_llama, BATCH_PROMPTS, configs, max_new_tokens=6, timed=4)


@pytest.mark.slow
def test_batched_generation_on_the_default_model(default_model):
    prompts = ["Pretty much sucks, but has a funny moment", "The plot of this film", "A quiet film about grief"]
    rule = ai.TopProbRule(0.9, min_layer=24)
    for strategy in ai.CACHE_STRATEGIES:
        batched = ai.generate_batch(default_model, prompts, rule, strategy=strategy, max_new_tokens=16, check_every=2)
        for prompt, many in zip(prompts, batched):
            one = ai.generate_early_exit(default_model, prompt, rule, strategy=strategy, max_new_tokens=16,
                                         check_every=2)
            assert ai.generation.study.same_decisions(many, one), (strategy, prompt)


def test_sequence_nlls_in_batches_equal_one_forward_pass_each(tiny):
    """The study's NLLs run in right-padded batches (issue 22 §5: one pass per row was ~60 s of chapter 07): each
    row equals the mean NLL written from scratch on its own unpadded pass; a batch of one equals it exactly."""
    tok = tiny.tokenizer
    texts = [(PROMPT, [5, 9, 11]), ("Hi", [7]), (PROMPT + " a dog", [3, 3]), ("Hi", [7]),
             ("A much longer opening line of a review", [2, 4, 6, 8])]
    pairs = [(tok(p)["input_ids"], new) for p, new in texts]

    def by_hand(prompt, new):
        ids = torch.tensor([list(prompt) + list(new)])
        with torch.no_grad():
            logits = tiny.hf_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
        logp = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
        return float(-logp[torch.arange(len(new)), torch.tensor(new)].mean())

    expected = np.array([by_hand(p, new) for p, new in pairs])
    np.testing.assert_allclose(loop.sequence_nlls(tiny, pairs, batch_size=3), expected, rtol=1e-5, atol=1e-5)
    assert loop.sequence_nll(tiny, *pairs[4]) == pytest.approx(expected[4], rel=1e-6, abs=1e-6)
    with pytest.raises(ValueError, match="at least one new token"):
        loop.sequence_nlls(tiny, [pairs[0], (pairs[1][0], [])])
