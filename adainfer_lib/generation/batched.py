"""Many prompts generated together, with the decisions of batch size 1: for a study, not for a clock.

On a CPU, one new token at batch size 1 reads every weight from memory for a handful of multiply-adds, so a
batch of 100 prompts costs little more per step than one prompt. ``generate_batch`` runs the prompts of a study
together and returns, per prompt, the ``GenerationResult`` that ``greedy_generate`` (no rule) or
``generate_early_exit`` (a rule and a cache strategy) gives at batch size 1: the same tokens, exit layers,
exit features and layers computed, up to float rounding (batched matrix products round differently, which can
flip a decision that sits on a tie; ``tests/test_generation.py`` checks equality on real and tiny models).
Its ``seconds`` are NaN: an early exit's speed is what batch size 1 measures (``study.run_generation_study``
times a subset of the prompts there).

How one batch reproduces what batch size 1 does above each row's exit (see ``loop``'s docstring for the three
strategies): every row runs every layer — a row cannot leave the middle of a forward pass and keep the cache's
rows aligned — and what the layers above a row's exit would have done for its new position is imposed on the
cache right after:

- ``"skip"``: the row's keys and values at those layers are masked out of every later token's attention (each
  layer gets its own attention mask, from a pre-hook): the hole, exactly;
- ``"propagate"``: they are overwritten with the key/value projections of the exit state (``loop.propagated_kv``,
  what CALM's bypass writes at batch size 1);
- ``"recompute"``: nothing: the layers ran on the true state, which is what recompute does.

Each prompt's prefill runs alone (the prompt's cache and first token are exactly batch size 1's), and the
caches are joined, left padded; padded positions are masked at every layer. Llama-style families, GPT-2 and
OPT (the masks are the layers' own: boolean for SDPA, additive for eager attention); sliding-window layers
only while prompt plus new tokens fit in the window.
"""

from __future__ import annotations

import copy
import inspect
from typing import Sequence

import numpy as np
import torch

from ..common.checks import check_finite, check_int
from ..features.online import GENERATION_FEATURES
from ..model.hooks import decoder_hooks, layer_input, layer_output
from ..model.inputs import head_kwargs
from ..model.loading import LensModel
from ..rules.interface import OnlineState
from .loop import (
    GenerationResult,
    _full_features,
    _set_arg,
    check_exit,
    check_generation_args,
    check_strategy,
    eos_ids,
    prefill,
    propagated_kv,
    start_run,
)


def _joined_prefill(model: LensModel, prompt_ids: list[list[int]]):
    """Each prompt through the full model alone, the caches joined left padded: (cache, first tokens (B,),
    valid (B, S) bool — False at the padding)."""
    caches, first = zip(*(prefill(model, ids) for ids in prompt_ids))
    lengths = [len(ids) for ids in prompt_ids]
    S = max(lengths)
    joined = copy.copy(caches[0])
    joined.layers = []
    for j, layer in enumerate(caches[0].layers):
        fresh = copy.copy(layer)
        for name in ("keys", "values"):
            parts = [getattr(c.layers[j], name) for c in caches]
            padded = [torch.nn.functional.pad(p, (0, 0, S - p.shape[-2], 0)) for p in parts]
            setattr(fresh, name, torch.cat(padded, dim=0))
        if hasattr(fresh, "cumulative_length"):
            fresh.cumulative_length = S
        joined.layers.append(fresh)
    valid = torch.zeros(len(prompt_ids), S, dtype=torch.bool, device=model.device)
    for b, n in enumerate(lengths):
        valid[b, S - n:] = True
    return joined, torch.tensor(first), valid


def _check_window(model: LensModel, longest: int) -> None:
    config = model.hf_model.config
    window = getattr(config, "sliding_window", None) or getattr(getattr(config, "text_config", None),
                                                                "sliding_window", None)
    if window and longest >= window:
        raise ValueError(f"generate_batch(): a prompt plus its new tokens ({longest}) reaches {model.name}'s "
                         f"sliding window ({window}); the joined cache would be trimmed. Use generate_early_exit.")


class _BatchStep:
    """The hooks of one batched decoding step: per-layer attention masks, the exit checks of the rows still
    deciding, and (propagate) the cache overwrite of the rows that exited below."""

    def __init__(self, model: LensModel, rule, threshold: float, min_layer: int, check_every: int, strategy: str,
                 cache, masks: list[torch.Tensor], deciding: np.ndarray, signatures: list[inspect.Signature]):
        self.model, self.rule, self.threshold, self.min_layer = model, rule, threshold, min_layer
        self.check_every, self.strategy, self.cache, self.masks = check_every, strategy, cache, masks
        self.L = model.n_layers
        B = len(deciding)
        self.deciding = deciding.copy()          # rows whose token is not decided yet (finished rows: False)
        self.exit_layer = np.full(B, self.L)
        self.token = np.zeros(B, dtype=np.int64)
        self.features = [dict() for _ in range(B)]
        self.exit_state: dict[int, torch.Tensor] = {}
        self.state = OnlineState(rows=np.flatnonzero(self.deciding))
        self.signatures = signatures             # of each layer's forward: where attention_mask / rotary sit

    def before(self, index: int, args: tuple, kwargs: dict):
        mask = self.masks[index][:, None, None, :]          # (B, 1, 1, S+1): this layer's keys a row may see
        if self.model.hf_model.config._attn_implementation == "eager":
            dtype = layer_input(args, kwargs).dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        if "attention_mask" in kwargs:
            return args, {**kwargs, "attention_mask": mask}
        return _set_arg(self.signatures[index], args, kwargs, "attention_mask", mask)

    def after(self, index: int, args: tuple, kwargs: dict, output) -> None:
        number = index + 1
        if self.strategy == "propagate":
            self._propagate(index, args, kwargs)
        due = number == self.L or (number >= self.min_layer and (number - self.min_layer) % self.check_every == 0)
        if due and self.deciding.any():
            self._check(number, layer_output(output)[:, -1], layer_input(args, kwargs)[:, -1])

    def _check(self, layer: int, h_all: torch.Tensor, h_prev_all: torch.Tensor) -> None:
        rows = np.flatnonzero(self.deciding)
        idx = torch.from_numpy(rows).to(h_all.device)
        self.state.rows = rows
        stop, tokens, features = check_exit(self.model, self.rule, self.threshold, layer, h_all.index_select(0, idx),
                                            h_prev_all.index_select(0, idx), self.state)
        for i in np.flatnonzero(stop):
            b = int(rows[i])
            self.exit_layer[b], self.token[b] = layer, tokens[i]
            self.features[b] = {k: float(features[k][i]) for k in GENERATION_FEATURES}
            self.exit_state[b] = h_all[b:b + 1, None]     # (1, 1, H): the state copied upward (propagate)
        self.deciding[rows[stop]] = False

    def _propagate(self, index: int, args: tuple, kwargs: dict) -> None:
        """Rows that exited below layer ``index + 1``: their key/value at this layer become the projections of
        the exit state (the layer wrote the projections of a state batch size 1 never computes)."""
        below = [b for b in self.exit_state if self.exit_layer[b] <= index]   # exited at layer <= index < index + 1
        if not below:
            return
        idx = torch.tensor(below, device=self.cache.layers[index].keys.device)
        hidden = torch.cat([self.exit_state[b] for b in below]).to(self.cache.layers[index].keys.device)
        rotary = self.signatures[index].bind_partial(*args, **kwargs).arguments["position_embeddings"]
        cos, sin = (t.index_select(0, idx) if t.shape[0] > 1 else t for t in rotary)
        keys, values = propagated_kv(self.model.layers[index], hidden, (cos, sin))
        cached = self.cache.layers[index]
        cached.keys[idx, :, -1:] = keys.to(cached.keys.dtype)
        cached.values[idx, :, -1:] = values.to(cached.values.dtype)


@torch.no_grad()
def generate_batch(model: LensModel, prompts: Sequence[str], rule=None, *, strategy: str = "skip",
                   max_new_tokens: int = 32, check_every: int = 1, batch_size: int = 64) -> list[GenerationResult]:
    """Greedy generation of many ``prompts`` together: per prompt, what ``greedy_generate`` (``rule=None``) or
    ``generate_early_exit(model, prompt, rule, strategy=..., check_every=...)`` returns at batch size 1, up to
    float rounding; ``seconds`` and ``prefill_seconds`` are NaN (untimed). ``batch_size`` prompts at a time.

    Errors: those of ``generate_early_exit`` (and of ``greedy_generate`` without a rule), per prompt; ``ValueError``
    when a prompt plus its new tokens reaches a sliding window."""
    prompts = list(prompts)
    check_int(batch_size, "batch_size", low=1)
    if rule is not None:
        strategy = check_strategy(model, strategy)
    results: list[GenerationResult] = []
    for start in range(0, len(prompts), batch_size):
        results += _generate_chunk(model, prompts[start:start + batch_size], rule, strategy, max_new_tokens,
                                   check_every)
    return results


def _generate_chunk(model: LensModel, prompts: list[str], rule, strategy: str, max_new_tokens: int,
                    check_every: int) -> list[GenerationResult]:
    L = model.n_layers
    if rule is None:
        prompt_ids = [check_generation_args(model, p, max_new_tokens, caller="generate_batch") for p in prompts]
        threshold = min_layer = None
    else:
        runs = [start_run(model, p, rule, max_new_tokens=max_new_tokens, check_every=check_every,
                          caller="generate_batch") for p in prompts]
        prompt_ids = [r[0] for r in runs]
        threshold, min_layer = runs[0][1], runs[0][2]
    stop = eos_ids(model)
    _check_window(model, max(map(len, prompt_ids)) + max_new_tokens)
    cache, token, valid = _joined_prefill(model, prompt_ids)
    B = len(prompts)
    masks = [valid.clone() for _ in range(L)]
    lengths = valid.sum(1)
    tokens = [[int(t)] for t in token]
    exits = [[L] for _ in range(B)]
    computed = [[L] for _ in range(B)]
    feats = [{k: list(v) for k, v in _full_features(1, L).items()} for _ in range(B)]
    signatures = [inspect.signature(layer.forward) for layer in model.layers]
    while True:
        running = np.array([len(t) < max_new_tokens and t[-1] not in stop for t in tokens])
        if not running.any():
            break
        input_ids = torch.tensor([[t[-1]] for t in tokens], device=model.device)
        position_ids = lengths[:, None].clone()
        masks = [torch.cat([m, torch.ones(B, 1, dtype=torch.bool, device=m.device)], dim=1) for m in masks]
        kwargs = dict(input_ids=input_ids, position_ids=position_ids, cache=cache, use_cache=True,
                      attention_mask=masks[0].long(), **head_kwargs(model))
        if rule is None:
            logits = model.hf_model(**kwargs).logits[:, -1]
            check_finite(logits, "the model's logits", model=model, layer=L)
            decided = logits.argmax(-1).cpu().numpy()
            for b in np.flatnonzero(running):
                tokens[b].append(int(decided[b]))
                exits[b].append(L)
                computed[b].append(L)
        else:
            step = _BatchStep(model, rule, threshold, min_layer, check_every, strategy, cache, masks, running,
                              signatures)
            with decoder_hooks(model, before=step.before, after=step.after):
                model.hf_model(**kwargs)
            for b in np.flatnonzero(running):
                k = int(step.exit_layer[b])
                tokens[b].append(int(step.token[b]))
                exits[b].append(k)
                computed[b].append(L if strategy == "recompute" else k)
                for name in GENERATION_FEATURES:
                    feats[b][name].append(step.features[b][name])
                if strategy == "skip":
                    for j in range(k, L):
                        masks[j][b, -1] = False
        lengths = lengths + 1
    method = "full" if rule is None else strategy
    if rule is None:  # every token is the full model's
        feats = [_full_features(len(t), L) for t in tokens]
    return [GenerationResult(model.name, L, p, ids, np.asarray(t), np.asarray(e),
                             {k: np.asarray(v, dtype=float) for k, v in f.items()}, np.asarray(c),
                             float("nan"), float("nan"), method=method, rule="" if rule is None else str(rule),
                             text=model.tokenizer.decode(t))
            for p, ids, t, e, c, f in zip(prompts, prompt_ids, tokens, exits, computed, feats)]
