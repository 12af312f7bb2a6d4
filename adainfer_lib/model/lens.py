"""The logit lens over every layer, at the last prompt position: ``trace`` → ``LayerTrace``.

For each prompt, one batched forward pass (right padding, attention mask; a prompt prefix shared by all
prompts runs once, see ``inputs``) records the residual stream ``h_l`` at the last real token after every
layer (``h_0`` = the input of the first decoder layer, i.e. the embeddings with positions). Each state goes
through the model's own final norm and unembedding, so layer ``L`` reproduces the model's logits, and we keep
per example × layer: the top-k tokens, ``top_prob``,
``gap`` (top-1 minus top-2 probability), entropy, KL to the final layer, the cosine between consecutive
states, and (given label words) the label-word logits.
The container is ``layer_trace.LayerTrace``; the cache files, and the rows they share across requests, are
``trace_cache``.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from typing import Sequence

import numpy as np
import torch

from ..common.checks import check_finite
from . import parallel
from .hooks import residual_states
from .inputs import Batch, check_prompts, label_token_ids, prepare_prompts
from .layer_trace import LayerTrace
from .loading import LensModel
from .trace_cache import (
    cached_trace,
    combine_rows,
    row_keys,
    rows_from_cache,
    trace_cache_path,
    trace_meta,
    trace_request,
)

log = logging.getLogger("adainfer_lib")


# ---- extraction ------------------------------------------------------------------------------------

def record_last_states(model: LensModel, batch: Batch) -> AbstractContextManager[list[torch.Tensor]]:
    """Hooks that record, at each row's last real token (``batch.last``), the residual state entering layer 0
    and leaving every layer (``hooks.residual_states``). Yields a list that fills with L + 1 tensors (batch,
    hidden) during one forward, all on ``model.lens_device`` (with a ``device_map`` the layers may sit on
    several devices)."""
    device = model.lens_device
    return residual_states(model, lambda h: batch.gather_last(h).detach().to(device))


def batch_states(model: LensModel, batch: Batch) -> torch.Tensor:
    """One forward pass of ``batch``: residual states (L+1, B, hidden) at each row's last real token."""
    with torch.no_grad(), record_last_states(model, batch) as states:
        model.hf_model(**batch.forward_kwargs(model))
    return torch.stack(states)


def last_states(model: LensModel, prompts: Sequence[str], *,
                prefix_cache: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``prompts`` in one batch: residual states (L+1, batch, hidden) at the last real token, and the
    model's own logits there (batch, vocab) — the reference the lens at layer L must reproduce."""
    prepared = prepare_prompts(model, prompts, caller="last_states", batch_size=len(list(prompts)),
                               prefix_cache=prefix_cache, sort_by_length=False)
    batch = prepared.batch(prepared.batches[0])
    kwargs = batch.forward_kwargs(model)
    if "logits_to_keep" in kwargs:
        kwargs["logits_to_keep"] = 0  # every position: the rows' last real tokens differ
    with torch.no_grad(), record_last_states(model, batch) as states:
        out = model.hf_model(**kwargs)
    return torch.stack(states), batch.gather_last(out.logits)


@torch.no_grad()
def lens_stats(model: LensModel, states: torch.Tensor, label_ids: torch.Tensor, *, full_vocab: bool,
               top_k: int) -> dict:
    """Lens statistics of N residual states (N, hidden): per-row ``top_prob``, ``gap``, ``entropy`` (N,)
    (NaN without ``full_vocab``), ``top_ids``/``top_probs`` (N, k), ``label_logits`` (N, C) and, with
    ``full_vocab``, ``logp`` and ``probs`` (N, vocab). The one place where a state becomes lens statistics."""
    n = states.shape[0]
    if not full_vocab:
        nan = torch.full((n,), float("nan"))
        return {"top_prob": nan, "gap": nan, "entropy": nan, "top_ids": torch.zeros((n, 0), dtype=torch.long),
                "top_probs": torch.zeros((n, 0)), "label_logits": model.label_lens(states, label_ids).float()}
    logits = model.lens(states).float()
    logp = torch.log_softmax(logits, dim=-1)
    probs = logp.exp()
    top_probs, top_ids = probs.topk(max(top_k, 2), dim=-1)
    return {
        "top_prob": top_probs[:, 0],
        "gap": top_probs[:, 0] - top_probs[:, 1],
        "entropy": -(probs * logp).sum(-1),
        "top_ids": top_ids[:, :top_k],
        "top_probs": top_probs[:, :top_k],
        "label_logits": logits[:, label_ids.to(logits.device)],
        "logp": logp,
        "probs": probs,
    }


@torch.no_grad()
def _batch_stats(model: LensModel, states: torch.Tensor, label_ids: torch.Tensor, top_k: int, full_vocab: bool) -> dict:
    """Statistics of one batch of states (L+1, B, hidden) → arrays (B, L+1, ...), adding KL to the final
    layer and the cosine between consecutive states. ``NonFiniteError`` naming the first layer whose state or
    lens statistics hold NaN or inf (float16 overflows in some models)."""
    check_finite(states, "the residual stream", model=model, layer_axis=0)
    layers, batch = states.shape[:2]
    stats = lens_stats(model, states.reshape(layers * batch, -1), label_ids, full_vocab=full_vocab, top_k=top_k)
    logp, probs = stats.pop("logp", None), stats.pop("probs", None)
    out = {k: v.reshape(layers, batch, *v.shape[1:]).transpose(0, 1).cpu().numpy() for k, v in stats.items()}
    out["top_ids"] = out["top_ids"].astype(np.int32)
    lens_values = (out["label_logits"], out["top_prob"]) if full_vocab else (out["label_logits"],)
    check_finite(lens_values, "the lens logits", model=model, layer_axis=1)
    if logp is None:
        out["kl_to_final"] = np.full((batch, layers), np.nan, dtype=np.float32)
    else:
        logp = logp.reshape(layers, batch, -1)  # KL(p_l || p_L) = <p_l, log p_l - log p_L>, reusing p_l
        kl = torch.einsum("lbv,lbv->lb", probs.reshape(layers, batch, -1), logp - logp[-1:])
        out["kl_to_final"] = kl.clamp_min(0).T.cpu().numpy()
    cos = torch.nn.functional.cosine_similarity(states[1:], states[:-1], dim=-1).float().cpu()
    out["cos_prev"] = torch.cat([torch.full((1, batch), float("nan")), cos]).T.numpy()
    return out


# ---- the trace -----------------------------------------------------------------------------------


def trace(
    model: LensModel,
    prompts: Sequence[str],
    *,
    label_words: Sequence[str] | None = None,
    batch_size: int = 8,
    top_k: int = 5,
    full_vocab: bool = True,
    prefix_cache: bool = True,
    prefix: str | None = None,
    cache: bool = False,
    progress: bool = True,
    distributed: bool | None = None,
) -> LayerTrace:
    """Logit-lens statistics of ``prompts`` at every layer (see ``LayerTrace``).

    ``prompts`` is a list of strings (a bare string is refused: pass ``[prompt]``). Prompts are batched by
    token length (right padded; each row is read at its last real token), and only that position goes through
    the lens. ``label_words`` are resolved as the token that follows the prompts' end
    (``inputs.label_token_ids``). With ``prefix_cache`` (default) the token prefix that all prompts share
    (instruction and demonstrations under one demonstration set) runs once and its keys and values are reused
    for every batch (``inputs.prefix_kv``); the statistics equal those without it to float precision.
    ``full_vocab=False`` computes only the label-word rows of the unembedding (cheap for 262k vocabularies).
    ``cache=True`` reads/writes ``data/traces/`` keyed by model, prompts, label words and options; a cached
    file is the answer only if what it holds matches what was asked (``cache_mismatch``: the number of prompts,
    their content key, the label words and ids, the model's cache id, the options); a corrupt file or one that
    holds another trace is rebuilt, with a warning in the log that says why. Without that file, prompts that
    another cached trace already holds (same weights, label words, top-k, prefix-cache option, a vocabulary at
    least as wide) are copied from it and only the others run (``trace_cache.rows_from_cache``; ``meta
    ["reused_rows"]`` counts them): such rows equal a fresh trace's to float precision.

    Under ``accelerate launch`` with several processes (``distributed=None`` decides from the environment,
    ``False`` turns it off), every process calls ``trace`` with the same prompts: the length-sorted batches are
    dealt round robin across the processes (``parallel.my_share``), each runs its own on its own device, and
    the statistics are gathered back in prompt order on every process — the same batches as one process runs,
    so the same numbers. Only the main process writes the cache file (once, atomically), the same file one
    process writes; a cache file is used only when every process can read it.

    Errors: ``TypeError``/``ValueError`` from ``inputs.check_prompts`` and ``inputs.tokenize_prompts`` (empty
    or too-long prompts), ``ValueError`` for unusable label words.
    """

    prompts = check_prompts(prompts, caller="trace")
    label_words = list(label_words or [])
    if not full_vocab and not label_words:
        raise ValueError("full_vocab=False keeps only label-word rows, so label_words are required.")
    label_ids = label_token_ids(model.tokenizer, label_words, prompts[0], owner=model.name) if label_words else []
    path = trace_cache_path(model, prompts, label_words, top_k, full_vocab, prefix_cache) if cache else None
    state = parallel.process_state(distributed)
    request = trace_request(model, prompts, label_words, label_ids, top_k, full_vocab)
    cached = cached_trace(path, state, request)
    if cached is not None:
        return cached
    start = time.perf_counter()
    keys = row_keys(prompts)
    parts = rows_from_cache(keys, request, prefix_cache=prefix_cache, skip=path) if cache else []
    covered = np.zeros(len(prompts), dtype=bool)
    for _, _, targets in parts:
        covered[targets] = True
    missing = np.flatnonzero(~covered)
    if len(missing):
        computed = _compute(model, [prompts[i] for i in missing], label_words, label_ids, state, batch_size=batch_size,
                            top_k=top_k, full_vocab=full_vocab, prefix_cache=prefix_cache, prefix=prefix,
                            progress=progress)
        parts.append((computed, np.arange(len(missing)), missing))
    meta = trace_meta(model, request, keys, prefix_cache=prefix_cache,
                      prefix_tokens=parts[-1][0].meta.get("prefix_tokens", 0), seconds=time.perf_counter() - start)
    if not covered.any():
        result = parts[0][0]
        result.meta = meta
    else:
        result = combine_rows(parts, len(prompts), full_vocab=full_vocab,
                              meta={**meta, "reused_rows": int(covered.sum())})
    if path is not None and parallel.is_main(state):
        result.save(path)
        log.info("trace cache written: %s", path)
    parallel.wait(state)  # the file exists for every process before any returns
    return result


def _compute(model: LensModel, prompts: list[str], label_words: list[str], label_ids: list[int], state, *,
             batch_size: int, top_k: int, full_vocab: bool, prefix_cache: bool, prefix: str | None,
             progress: bool) -> LayerTrace:
    """The forward passes of ``trace``: ``prompts`` batched by length, their lens statistics in prompt order. Its
    ``meta`` holds only ``prefix_tokens``: ``trace`` writes the request's (``trace_cache.trace_meta``)."""
    prepared = prepare_prompts(model, prompts, caller="trace", batch_size=batch_size, prefix_cache=prefix_cache,
                               prefix=prefix)
    ids_tensor = torch.tensor(label_ids, dtype=torch.long, device=model.lens_device)

    def work(b: int) -> dict:
        states = batch_states(model, prepared.batch(prepared.batches[b]))
        return _batch_stats(model, states, ids_tensor, top_k, full_vocab)

    done = parallel.run_batches(state, len(prepared.batches), work, desc=f"trace {model.name}", progress=progress)
    return _assemble(model, prepared, [stats for _, stats in done], label_words, label_ids)


def _assemble(model: LensModel, prepared, chunks: list[dict], label_words: list[str],
              label_ids: list[int]) -> LayerTrace:
    """The ``LayerTrace`` from the per-batch statistics ``chunks`` (in batch order), rows back in prompt order."""
    inverse = np.argsort(np.concatenate(prepared.batches))
    arrays = {k: np.concatenate([c[k] for c in chunks])[inverse] for k in chunks[0]}
    arrays = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in arrays.items()}
    unique_ids = np.unique(arrays["top_ids"])
    return LayerTrace(
        model_name=model.name,
        n_layers=model.n_layers,
        n_tokens=prepared.n_tokens,
        label_words=label_words,
        label_ids=label_ids,
        token_strings={int(t): model.tokenizer.decode([int(t)]) for t in unique_ids},
        meta={"prefix_tokens": 0 if prepared.prefix is None else prepared.prefix.length},
        **arrays,
    )
