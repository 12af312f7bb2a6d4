"""Self-speculative decoding (LayerSkip, Draft-and-Verify): the early exit drafts, the full model verifies.

Each round: from the last committed token, draft up to ``draft_tokens`` tokens with the early exit (the
``"skip"`` strategy, on a copy of the cache that is thrown away); then run the full model once over the last
committed token and the drafts (one forward pass, ``k + 1`` positions); keep the drafts up to the first one the
full model disagrees with, and the full model's own token there (its correction, or one bonus token when every
draft agreed). Every kept token is the full model's greedy token, so the output equals
``generate(do_sample=False)``; the early exit only decides how many tokens one full pass yields.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..common.checks import check_int
from ..model.loading import LensModel
from .loop import (
    GENERATION_FEATURES,
    GenerationResult,
    _ExitHooks,
    exit_step,
    full_step,
    shallow_copy_cache,
    start_run,
    timed_prefill,
)


def _crop(cache, remove: int) -> None:
    """Drop the last ``remove`` positions of every layer (sliding-window layers record their past for this)."""
    for layer in cache.layers:
        if getattr(layer, "is_initialized", False):
            layer.crop(-remove)


@torch.no_grad()
def speculative_generate(model: LensModel, prompt: str, rule, *, draft_tokens: int = 4, max_new_tokens: int = 32,
                         check_every: int = 1, keep_cache: bool = False) -> GenerationResult:
    """Greedy generation from ``prompt`` by self-speculative decoding: drafts of up to ``draft_tokens``
    tokens by the early exit of ``rule`` (see ``generate_early_exit``), each round verified by one full
    forward pass. The tokens equal the full model's greedy ones. Per token, ``exit_layers`` is the draft's exit
    layer for accepted drafts and L for the full model's own tokens; ``layers_computed`` spreads each round's
    layers (draft layers + L for the verification) over the tokens it produced. ``acceptance_rate`` = accepted
    / drafted. Errors as ``generate_early_exit``, and ``ValueError`` for ``draft_tokens`` < 1."""
    ids, threshold, min_layer, stop = start_run(model, prompt, rule, max_new_tokens=max_new_tokens,
                                                check_every=check_every, caller="speculative_generate")
    check_int(draft_tokens, "draft_tokens", low=1)
    L = model.n_layers
    with _ExitHooks(model, "skip") as patched:
        cache, token, prefill_seconds = timed_prefill(model, ids)
        start = time.perf_counter()
        if hasattr(cache, "activate_past_recording"):  # sliding-window layers keep what a crop needs
            for layer in cache.layers:
                if getattr(layer, "is_sliding", False) and hasattr(layer, "activate_past_recording"):
                    layer.activate_past_recording()
        tokens, exits, computed = [token], [L], [float(L)]
        features = {k: [np.nan] for k in GENERATION_FEATURES}
        drafted = accepted = passes = 0
        while len(tokens) < max_new_tokens and tokens[-1] not in stop:
            budget = max_new_tokens - len(tokens)
            draft_cache = shallow_copy_cache(cache)
            drafts, steps, x = [], [], tokens[-1]
            while len(drafts) < min(draft_tokens, budget):
                step = exit_step(model, patched, x, draft_cache, rule, threshold, min_layer, "skip", check_every)
                drafts.append(step.token)
                steps.append(step)
                x = step.token
                if x in stop:
                    break
            del draft_cache
            verified = full_step(model, [tokens[-1], *drafts], cache).argmax(-1).tolist()
            passes += 1
            drafted += len(drafts)
            m = 0
            while m < len(drafts) and drafts[m] == verified[m]:
                m += 1
            accepted += m
            new = drafts[:m] + [int(verified[m])]
            _crop(cache, len(drafts) - m)
            round_layers = sum(s.layers_computed for s in steps) + L
            kept = []
            for i, t in enumerate(new):
                if len(tokens) + len(kept) >= max_new_tokens:
                    break
                kept.append(t)
                exits.append(steps[i].exit_layer if i < m else L)
                for k in GENERATION_FEATURES:
                    features[k].append(steps[i].features[k] if i < m else np.nan)
                if t in stop:
                    break
            computed.extend([round_layers / len(kept)] * len(kept))
            tokens.extend(kept)
        seconds = time.perf_counter() - start
    return GenerationResult(model.name, L, prompt, ids, np.asarray(tokens), np.asarray(exits),
                            {k: np.asarray(v, dtype=float) for k, v in features.items()}, np.asarray(computed),
                            seconds, prefill_seconds, method="speculative", rule=str(rule), drafted=drafted,
                            accepted=accepted, verify_passes=passes, cache=cache if keep_cache else None,
                            text=model.tokenizer.decode(tokens))
