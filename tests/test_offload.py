"""Models split and offloaded by accelerate (``device_map``): the same numbers as the plain model.

Each registered family (tiny random models, saved to a temporary folder) is loaded again with a device map
that puts every other decoder layer and the LM head on the disk and the rest on the CPU: accelerate leaves
those weights on the meta device and its hooks bring them in at forward time. The trace (full vocabulary and
label rows only), the real early exits (batched and one by one) and the dense run equal the plain model's,
and the cache id (trace caches are keyed by it) is the same.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_inputs import PREFIX, PROMPTS, STATS, WORDS

from adainfer_lib import FixedExitPolicy, run_early_exit, run_full
from adainfer_lib.model.lens import trace
from adainfer_lib.model.loading import load_model
from conftest import TINY_TYPES, make_tiny_model


def offload_map(hf_model, spec) -> dict[str, str]:
    """Every other decoder layer and the unembedding on the disk; every other module with weights on the CPU."""
    n_layers = len(hf_model.get_submodule(spec.layers))
    device_map = {f"{spec.layers}.{i}": "disk" if i % 2 else "cpu" for i in range(n_layers)}
    device_map[spec.unembed] = "disk"
    for name in hf_model.state_dict():
        if not any(name == k or name.startswith(k + ".") for k in device_map):
            device_map[name.rsplit(".", 1)[0]] = "cpu"
    return device_map


def assert_traces_equal(a, b, atol=1e-5):
    for name in STATS:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=atol, rtol=1e-5, equal_nan=True,
                                   err_msg=name)
    np.testing.assert_array_equal(a.top_ids, b.top_ids)


@pytest.fixture(scope="module", params=TINY_TYPES)
def plain_and_offloaded(request, default_tokenizer, tmp_path_factory):
    """(plain LensModel, the same weights loaded with an offloading device map) for one family."""
    plain = make_tiny_model(request.param, default_tokenizer)
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    plain.hf_model.save_pretrained(folder)
    default_tokenizer.save_pretrained(folder)
    offloaded = load_model(str(folder), device_map=offload_map(plain.hf_model, plain.spec),
                           offload_folder=folder / "offload")
    if request.param.startswith("gemma"):  # the tiny fixture runs Gemma eagerly; the reload must too
        offloaded.hf_model.config._attn_implementation = "eager"
    plain = load_model(str(folder))  # same name as the offloaded one: the cache ids must agree
    if request.param.startswith("gemma"):
        plain.hf_model.config._attn_implementation = "eager"
    return plain, offloaded


def test_offloaded_weights_are_on_the_meta_device(plain_and_offloaded):
    plain, offloaded = plain_and_offloaded
    assert offloaded.unembed.weight.device.type == "meta" and offloaded.offloaded and not plain.offloaded
    assert offloaded.device == torch.device("cpu") and offloaded.lens_device == torch.device("cpu")
    assert offloaded.cache_id == plain.cache_id  # the fingerprint reads the weight through accelerate's hook
    assert offloaded.vocab_size == plain.vocab_size


@pytest.mark.parametrize("full_vocab", [True, False])
def test_offloaded_trace_equals_plain(plain_and_offloaded, full_vocab):
    plain, offloaded = plain_and_offloaded
    a = trace(plain, PROMPTS, label_words=WORDS, batch_size=3, full_vocab=full_vocab, progress=False)
    b = trace(offloaded, PROMPTS, label_words=WORDS, batch_size=3, full_vocab=full_vocab, progress=False)
    assert_traces_equal(a, b, atol=1e-5)
    assert a.meta["model_cache_id"] == b.meta["model_cache_id"]
    assert offloaded.unembed.weight.device.type == "meta"  # brought in for the forward pass only


def test_offloaded_early_exit_equals_plain(plain_and_offloaded):
    plain, offloaded = plain_and_offloaded
    lens = trace(plain, PROMPTS, label_words=WORDS, prefix_cache=False, progress=False)
    for k in (1, plain.n_layers):
        for batch_size in (1, 3):
            policy = FixedExitPolicy(k, calibration="raw")
            a = run_early_exit(plain, PROMPTS, policy, label_words=WORDS, batch_size=batch_size, prefix=PREFIX)
            b = run_early_exit(offloaded, PROMPTS, policy, label_words=WORDS, batch_size=batch_size, prefix=PREFIX)
            np.testing.assert_array_equal(b.exit_layers, k)
            np.testing.assert_allclose(b.label_logits, a.label_logits, atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(b.label_logits, lens.label_logits[:, k], atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(b.exit_features["cos_prev"], a.exit_features["cos_prev"], atol=1e-5,
                                       equal_nan=True)
    full_a = run_full(plain, PROMPTS, label_words=WORDS, batch_size=2)
    full_b = run_full(offloaded, PROMPTS, label_words=WORDS, batch_size=2)
    np.testing.assert_allclose(full_b.label_logits, full_a.label_logits, atol=1e-5, rtol=1e-5)


def test_the_issue_device_map(default_tokenizer, tmp_path):
    """The map from issue 16 (all on the CPU, the LM head on the disk) raised 'Cannot copy out of meta tensor'."""
    plain = make_tiny_model("llama", default_tokenizer)
    plain.hf_model.save_pretrained(tmp_path)
    default_tokenizer.save_pretrained(tmp_path)
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
                  "model.layers.2": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}
    model = load_model(str(tmp_path), device_map=device_map, offload_folder=tmp_path / "offload")
    a = trace(plain, PROMPTS, label_words=WORDS, progress=False)
    b = trace(model, PROMPTS, label_words=WORDS, progress=False)
    np.testing.assert_allclose(b.label_logits, a.label_logits, atol=1e-5, rtol=1e-5)
    res = run_early_exit(model, PROMPTS, FixedExitPolicy(2, calibration="raw"), label_words=WORDS)
    np.testing.assert_allclose(res.label_logits, a.label_logits[:, 2], atol=1e-5, rtol=1e-5)


def test_load_model_refuses_device_and_device_map_together():
    with pytest.raises(ValueError, match="either device"):
        load_model("smollm2-135m", device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="offload_folder"):
        load_model("smollm2-135m", offload_folder="/tmp/x")
