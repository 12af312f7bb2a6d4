"""Shared fixtures: tiny random models of every registered architecture, and the real default model."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_grad_enabled(False)


def _share_the_cores_between_xdist_workers() -> None:
    """Under pytest-xdist (``make test`` starts one worker per core) each worker — and every notebook kernel or
    subprocess it starts, through the environment — computes on its share of the cores: two workers of two
    threads each on two cores run slower than two of one."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        threads = max(1, (os.cpu_count() or 1) // workers)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
        torch.set_num_threads(threads)


_share_the_cores_between_xdist_workers()

TINY = dict(hidden=32, layers=3, heads=4, ffn=64)


def tiny_config(model_type: str, vocab_size: int):
    """A small random config of ``model_type`` (3 layers, hidden 32) with the given vocabulary."""
    from transformers import (
        Gemma3TextConfig,
        GemmaConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        OPTConfig,
        Qwen2Config,
    )

    h, n, a, f = TINY["hidden"], TINY["layers"], TINY["heads"], TINY["ffn"]
    rotary = dict(vocab_size=vocab_size, hidden_size=h, num_hidden_layers=n, num_attention_heads=a,
                  intermediate_size=f, max_position_embeddings=512, tie_word_embeddings=False)
    builders = {
        "llama": lambda: LlamaConfig(num_key_value_heads=2, **rotary),
        "mistral": lambda: MistralConfig(num_key_value_heads=2, sliding_window=None, **rotary),
        "qwen2": lambda: Qwen2Config(num_key_value_heads=2, **rotary),
        "gemma": lambda: GemmaConfig(num_key_value_heads=2, head_dim=8, **rotary),
        "gemma3_text": lambda: Gemma3TextConfig(num_key_value_heads=2, head_dim=8, sliding_window=4,
                                                final_logit_softcapping=30.0, **rotary),
        "opt": lambda: OPTConfig(vocab_size=vocab_size, hidden_size=h, num_hidden_layers=n, num_attention_heads=a,
                                 ffn_dim=f, max_position_embeddings=512, word_embed_proj_dim=16,
                                 tie_word_embeddings=False),
        "gpt2": lambda: GPT2Config(vocab_size=vocab_size, n_embd=h, n_layer=n, n_head=a, n_positions=512,
                                   tie_word_embeddings=False),
        "gpt_neox": lambda: GPTNeoXConfig(vocab_size=vocab_size, hidden_size=h, num_hidden_layers=n,
                                          num_attention_heads=a, intermediate_size=f, max_position_embeddings=512,
                                          tie_word_embeddings=False),
    }
    return builders[model_type]()


TINY_TYPES = ["llama", "mistral", "qwen2", "gemma", "gemma3_text", "opt", "gpt2", "gpt_neox"]


def make_trace(label_logits):
    """A ``LayerTrace`` holding only label logits (n, L+1, C); full-vocabulary statistics are zero."""
    import numpy as np

    from adainfer_lib.model.layer_trace import LayerTrace

    n, layers, n_labels = label_logits.shape
    zeros = np.zeros((n, layers), np.float32)
    return LayerTrace(model_name="m", n_layers=layers - 1, top_ids=np.zeros((n, layers, 0), np.int32),
                      top_probs=np.zeros((n, layers, 0), np.float32), top_prob=zeros, gap=zeros, entropy=zeros,
                      kl_to_final=zeros, cos_prev=zeros, label_logits=label_logits.astype(np.float32),
                      n_tokens=np.ones(n, np.int32), label_words=[f" w{i}" for i in range(n_labels)],
                      label_ids=list(range(n_labels)))


def task_trace_from_predictions(preds, gold):
    """A raw-calibrated ``TaskTrace`` whose decisions per layer are exactly ``preds`` (n, L+1), 2 labels."""
    import numpy as np

    from adainfer_lib.data.calibration import fit_calibration
    from adainfer_lib.data.task_trace import TaskTrace

    preds = np.asarray(preds)
    logits = np.stack([np.zeros(preds.shape), np.where(preds == 1, 1.0, -1.0)], axis=-1)
    return TaskTrace(make_trace(logits), gold=np.asarray(gold), calibrations={"raw": fit_calibration("raw",
                                                                                                     unlabelled=logits)},
                     task_name="synthetic", label_names=["a", "b"], method="raw")


@pytest.fixture(scope="session")
def default_tokenizer():
    """The default model's tokenizer (loaded from the prepared offline model; no weights)."""
    from transformers import AutoTokenizer

    from adainfer_lib.model.loading import DEFAULT_MODEL, prepare_offline_model

    return AutoTokenizer.from_pretrained(prepare_offline_model(DEFAULT_MODEL))


def make_tiny_model(model_type: str, tokenizer, seed: int = 0):
    """A ``LensModel`` around a random tiny model of ``model_type`` (float32, eval mode)."""
    from transformers import AutoModelForCausalLM

    from adainfer_lib.model.loading import LensModel

    torch.manual_seed(seed)
    config = tiny_config(model_type, vocab_size=len(tokenizer))
    config._attn_implementation = "eager" if model_type.startswith("gemma") else "sdpa"
    hf = AutoModelForCausalLM.from_config(config).float().eval()
    return LensModel.wrap(hf, tokenizer, name=f"tiny-{model_type}")


def make_overflowing_model(tokenizer, layer: int = 2, *, dtype: torch.dtype = torch.float32, value: float = 6e4):
    """A tiny Llama whose decoder layer ``layer - 1`` adds ``value * hidden`` to every residual component: its MLP
    computes ``sum_i x_i**2`` (= hidden, x being the RMS-normalised state: gate and up rows ``[I; -I]``, so that
    ``silu(x_i) x_i + silu(-x_i) (-x_i) = x_i**2``) and writes it times ``value`` everywhere (down_proj filled with
    ``value``). In float16 the default (just below float16's largest number, 65504) overflows at ``layer`` (0..L
    numbering: the residual stream is inf there and NaN after it) and stays finite in float32; ``value=inf``
    overflows in any dtype."""
    model = make_tiny_model("llama", tokenizer)
    mlp = model.layers[layer - 1].mlp
    hidden = model.hf_model.config.hidden_size
    assert mlp.gate_proj.weight.shape == (2 * hidden, hidden), "the tiny config's ffn must be twice the hidden size"
    with torch.no_grad():
        eye = torch.eye(hidden)
        mlp.gate_proj.weight.copy_(torch.cat([eye, -eye]))
        mlp.up_proj.weight.copy_(torch.cat([eye, -eye]))
        mlp.down_proj.weight.fill_(value)
    model.hf_model.to(dtype)
    return model


@pytest.fixture(scope="session", params=TINY_TYPES)
def tiny_model(request, default_tokenizer):
    """One tiny random model per registered architecture."""
    return make_tiny_model(request.param, default_tokenizer)


@pytest.fixture(scope="session")
def default_model():
    """The real default model (SmolLM2-135M-Instruct, offline)."""
    from adainfer_lib import load_model

    return load_model()


def encode_batch(model, prompts):
    """One right-padded batch of ``prompts`` (no prefix cache) as forward-pass keyword arguments."""
    from adainfer_lib.model.inputs import prepare_prompts

    prepared = prepare_prompts(model, prompts, caller="test", batch_size=len(prompts), prefix_cache=False,
                               sort_by_length=False)
    batch = prepared.batch(prepared.batches[0])
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "position_ids": batch.position_ids}


def synthetic_table(n_examples: int = 60, n_layers: int = 12, *, n_labels: int = 2, seed: int = 0,
                    noise: float = 0.15) -> pd.DataFrame:
    """A fake ``feature_table`` with the same columns and attrs, fast to build (test data: not in the library).

    Each example "settles" on its final answer at a random layer; before it the layer decisions are random,
    after it they equal the final one. ``label_gap``/``label_top_prob``/``gap``/``top_prob`` rise after the
    settling layer (plus ``noise``), so the features are informative about ``consistent`` and ``settled``.
    """
    import numpy as np

    from adainfer_lib.features.table import _decision_columns, _table

    rng = np.random.default_rng(seed)
    n, L = n_examples, n_layers
    layers = np.arange(L + 1)
    settle = rng.integers(1, L + 1, size=n)  # layer at which the answer settles (<= L)
    final = rng.integers(0, n_labels, size=n)
    gold = np.where(rng.random(n) < 0.8, final, rng.integers(0, n_labels, size=n))
    early = rng.integers(0, n_labels, size=(n, L + 1))
    preds = np.where(layers[None, :] >= settle[:, None], final[:, None], early)
    after = (layers[None, :] >= settle[:, None]).astype(float)
    depth = layers[None, :] / L
    signal = 0.55 * after + 0.25 * depth
    label_gap = np.clip(signal + noise * rng.standard_normal((n, L + 1)), 0, 1)
    gap = np.clip(0.8 * signal + noise * rng.standard_normal((n, L + 1)), 0, 1)
    cos = np.clip(0.7 + 0.25 * depth + 0.05 * rng.standard_normal((n, L + 1)), -1, 1)
    cos[:, 0] = np.nan
    columns = {
        "layer_frac": np.tile(layers / L, n),
        "top_prob": np.clip(gap + 0.1 + 0.05 * rng.random((n, L + 1)), 0, 1),
        "gap": gap,
        "entropy": np.clip(6 * (1 - signal) + noise * rng.standard_normal((n, L + 1)), 0, None),
        "kl_to_final": np.clip(3 * (1 - after) * (1 - depth), 0, None),
        "cos_prev": cos,
        "label_top_prob": np.clip((1 + label_gap) / 2, 0, 1),
        "label_gap": label_gap,
        **_decision_columns(preds, gold),
    }
    table = _table(columns, n, L + 1)
    table.attrs.update({"model": "synthetic", "model_cache_id": "synthetic-0", "task": "synthetic",
                        "split": "synthetic", "n_layers": L, "n_examples": n, "full_vocab": True,
                        "label_words": [f" l{c}" for c in range(n_labels)],
                        "label_names": [f"l{c}" for c in range(n_labels)],
                        "calibration": {"method": "raw", "offsets": np.zeros((L + 1, n_labels)).tolist()}})
    return table
