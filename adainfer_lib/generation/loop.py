"""Greedy generation with a per-token early exit, and what happens to the skipped layers' cache.

One new token = one forward pass of the Hugging Face model on that token, with its KV cache (batch size 1).
Hooks on the decoder layers for the duration of the run (``_ExitHooks``, over ``model.hooks.decoder_hooks``):
after a layer ``l >= rule.min_layer`` a hook reads the new position's state ``h_l`` through the logit lens
(``lens.lens_stats``, full vocabulary: generation has no label words), asks ``rule.stop_proba_online`` and, if
the stop probability reaches ``rule.threshold``, the token is the lens's argmax at ``l``. What the layers above
the exit do for that position is the **cache strategy**:

- ``"skip"``: nothing — AdaInfer re-run per token. Layers ``l+1..L`` get no key/value for the position, and
  every later token attends, in those layers, to a sequence with a hole (single-token steps attend to what the
  layer's cache holds, so the hole is a masked position, exactly);
- ``"propagate"``: CALM's state propagation — the exit state ``h_l`` is copied upward and each skipped
  layer computes only its key/value projections of it (its input norm, ``k_proj``/``v_proj``, the key norm
  where the family has one, rotary positions). Llama-style families only (``PROPAGATE_MODEL_TYPES``);
  ``UnsupportedStrategyError`` for the others;
- ``"recompute"``: the skipped layers run for real on the position (from the true state ``h_l``) before the
  next token needs them, so the cache is exactly the full model's. Here they run right after the decision, in
  the same pass: the token is decided at ``l``, but no layer is saved (a deferred version would run them
  batched with the next token, which saves latency on hardware where a second position is nearly free).

The prompt itself runs through every layer (its keys and values are needed everywhere), so the first new
token is always the full model's; exits apply from the second new token on. Generation stops at
``max_new_tokens`` or after the model's end-of-sequence token (kept in the output, as ``generate`` does).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import time
from collections import ChainMap
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..common.checks import check_choice, check_finite, check_int
from ..common.replay import layers_saved
from ..features.online import GENERATION_FEATURES, online_features
from ..model.hooks import StopForward, decoder_hooks, layer_input, layer_output
from ..model.inputs import check_prompts, head_kwargs, tokenize_prompts
from ..model.lens import lens_stats
from ..model.loading import LensModel
from ..rules.interface import OnlineState
from .rules import check_rule

CACHE_STRATEGIES = ("skip", "propagate", "recompute")
#: Families whose decoder layers have ``input_layernorm`` and ``self_attn.{k_proj, v_proj}`` with rotary
#: positions: CALM's propagation is implemented for these.
PROPAGATE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
_EMPTY = torch.zeros(0, dtype=torch.long)


class UnsupportedStrategyError(ValueError):
    """A cache strategy that this model's family does not support (``"propagate"`` outside Llama-style)."""


# ---------------------------------------------------------------------------------------------------
# Results


@dataclass
class GenerationResult:
    """One prompt's generation.

    Per new token (T tokens): ``tokens`` (T,), ``exit_layers`` (T,) (``L`` = ran every layer; the first token
    is always the full model's), ``features``: name -> (T,) lens features at the exit layer,
    ``layers_computed`` (T,) decoder layers that ran for the token (the recompute strategy runs all ``L``).
    Per sequence: ``seconds`` wall-clock of the new tokens after the prompt, ``prefill_seconds`` the prompt's
    forward pass; speculative decoding adds ``drafted``/``accepted`` draft tokens and ``verify_passes``.
    """

    model_name: str
    n_layers: int
    prompt: str
    prompt_tokens: list[int]
    tokens: np.ndarray
    exit_layers: np.ndarray
    features: dict[str, np.ndarray]
    layers_computed: np.ndarray
    seconds: float
    prefill_seconds: float
    method: str
    rule: str = ""
    drafted: int = 0
    accepted: int = 0
    verify_passes: int = 0
    cache: object = field(default=None, repr=False)
    text: str = ""

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def layers_saved(self) -> float:
        """1 - mean(exit layer) / L over the new tokens: where the tokens were decided."""
        return layers_saved(self.exit_layers, self.n_layers) if self.n_tokens else 0.0

    @property
    def compute_saved(self) -> float:
        """1 - mean(decoder layers computed per token) / L: the layers that really did not run."""
        return layers_saved(self.layers_computed, self.n_layers) if self.n_tokens else 0.0

    @property
    def ideal_speedup(self) -> float:
        """L / mean(layers computed): the speedup if time were proportional to the layers that ran."""
        return self.n_layers / float(np.mean(self.layers_computed)) if self.n_tokens else 1.0

    @property
    def acceptance_rate(self) -> float:
        """Speculative decoding: accepted / drafted tokens (NaN for the other methods)."""
        return self.accepted / self.drafted if self.drafted else float("nan")

    def to_frame(self, tokenizer=None) -> pd.DataFrame:
        """One row per new token: position, token id (and text, given the tokenizer), exit layer, layers
        computed and the exit features."""
        frame = pd.DataFrame({"position": np.arange(self.n_tokens), "token_id": self.tokens,
                              "exit_layer": self.exit_layers, "layers_computed": self.layers_computed,
                              **{k: v for k, v in self.features.items()}})
        if tokenizer is not None:
            frame.insert(2, "token", [tokenizer.decode([int(t)]) for t in self.tokens])
        return frame


# ---------------------------------------------------------------------------------------------------
# Checks


def check_generation_args(model: LensModel, prompt: str, max_new_tokens: int, *, caller: str) -> list[int]:
    """The prompt's token ids; ``TypeError``/``ValueError`` for a prompt that is not one non-empty string,
    a ``max_new_tokens`` that is not an integer >= 1, or a prompt plus new tokens longer than the context."""
    if isinstance(prompt, (list, tuple)):
        raise TypeError(f"{caller}() generates from one prompt (a string), not a {type(prompt).__name__}: "
                        "loop over the prompts.")
    (prompt,) = check_prompts([prompt], caller=caller)
    check_int(max_new_tokens, "max_new_tokens", low=1)
    ids = tokenize_prompts(model, [prompt])[0]
    limit = getattr(model.hf_model.config, "max_position_embeddings", None) or \
        getattr(model.hf_model.config, "n_positions", None)
    if limit and len(ids) + max_new_tokens > limit:
        raise ValueError(f"{caller}(): the prompt's {len(ids)} tokens plus max_new_tokens={max_new_tokens} exceed "
                         f"{model.name}'s context of {limit} tokens.")
    return ids


def check_strategy(model: LensModel, strategy: str) -> str:
    """``strategy`` if it is one of ``CACHE_STRATEGIES`` and this model's family supports it."""
    check_choice(strategy, "cache strategy", CACHE_STRATEGIES)
    model_type = model.hf_model.config.model_type
    if strategy == "propagate" and model_type not in PROPAGATE_MODEL_TYPES:
        raise UnsupportedStrategyError(
            f"cache strategy 'propagate' (CALM's state propagation) computes the skipped layers' key/value "
            f"projections the Llama way (input_layernorm, self_attn.k_proj/v_proj, rotary positions); it is "
            f"implemented for {', '.join(PROPAGATE_MODEL_TYPES)}, not {model_type!r} ({model.spec.family}). "
            "Use 'skip' or 'recompute' for this model.")
    return strategy


def eos_ids(model: LensModel) -> set[int]:
    """The end-of-sequence token ids that stop ``generate`` (from the model's generation config)."""
    eos = getattr(getattr(model.hf_model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = model.tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


# ---------------------------------------------------------------------------------------------------
# The hooks on the decoder layers


def _set_arg(signature: inspect.Signature, args: tuple, kwargs: dict, name: str, value):
    """``(args, kwargs)`` with the argument ``name`` set to ``value`` (positional or keyword)."""
    try:
        bound = signature.bind_partial(*args, **kwargs)
    except TypeError:
        return args, {**kwargs, name: value}
    if name in bound.arguments or name in signature.parameters:
        bound.arguments[name] = value
        return bound.args, bound.kwargs
    return args, kwargs


def _apply_rope(attn, keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary positions of ``keys`` (rows, heads, q, head_dim) with the family's own ``apply_rotary_pos_emb``."""
    module = importlib.import_module(type(attn).__module__)
    return module.apply_rotary_pos_emb(keys, keys, cos, sin)[1]


def propagated_kv(layer, hidden: torch.Tensor, position_embeddings) -> tuple[torch.Tensor, torch.Tensor]:
    """CALM's propagation for one skipped layer: the key/value projections (rows, heads, q, head_dim) of
    ``hidden`` (rows, q, H) — the state copied up from the exit — with the layer's input norm, key (and value)
    norms where the family has them and rotary positions ``position_embeddings`` (cos, sin) (Llama-style)."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    shape = (*x.shape[:-1], -1, attn.head_dim)
    keys = attn.k_proj(x).view(shape).transpose(1, 2)
    values = attn.v_proj(x).view(shape).transpose(1, 2)
    if getattr(attn, "k_norm", None) is not None:
        keys = attn.k_norm(keys)
    if getattr(attn, "v_norm", None) is not None:
        values = attn.v_norm(values)
    cos, sin = position_embeddings
    return _apply_rope(attn, keys, cos, sin), values


def project_kv(layer, hidden: torch.Tensor, position_embeddings, cache, layer_idx: int) -> None:
    """``propagated_kv`` of ``hidden`` (1, q, H) written into ``cache`` at ``layer_idx``."""
    cache.update(*propagated_kv(layer, hidden, position_embeddings), layer_idx)


@dataclass
class _StepState:
    """The exit-mode state of one forward pass (one new token)."""

    rule: object
    threshold: float
    min_layer: int
    strategy: str
    cache: object
    check_every: int = 1
    exit_layer: int | None = None
    token: int | None = None
    features: dict = field(default_factory=dict)
    state: OnlineState = field(default_factory=lambda: OnlineState(rows=np.zeros(1, dtype=int)))  # one token
    layers_computed: int = 0
    check_seconds: float = 0.0


class _ExitHooks:
    """Context manager: the decoder-layer hooks of generation with an early exit under the cache ``strategy``
    (``model.hooks.decoder_hooks``) while it is active. With ``self.step`` None every layer runs as usual (the
    prompt, verification passes, the full model).

    In exit mode (one new token): ``after`` counts the layer, checks the state it returns and ends the forward
    pass (``StopForward``) at ``L`` or, under "skip", at the exit (nothing above it runs); under "skip",
    ``before`` lifts the attention mask of a single new position; under "propagate", ``bypass`` stands in for
    the layers above the exit. A forward pre-hook cannot skip a layer, and each of those layers must be called
    with the arguments the model gives it (Gemma-3 gives each layer its own rotary tables, built inside the
    model's forward) to write its keys and values (``project_kv``) without running: hence the bypass."""

    def __init__(self, model: LensModel, strategy: str):
        self.model, self.strategy = model, strategy
        self.L = model.n_layers
        self.step: _StepState | None = None
        self.signatures = [inspect.signature(layer.forward) for layer in model.layers]
        self.returns_tuple = False  # whether the computed layers return tuples (a bypassed layer does the same)
        self._hooks = None

    def __enter__(self) -> _ExitHooks:
        self._hooks = decoder_hooks(self.model, after=self.after,
                                    before=self.before if self.strategy == "skip" else None,
                                    bypass=self.bypass if self.strategy == "propagate" else None)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._hooks = None

    def _computes(self, step: _StepState | None) -> bool:
        """Whether the layers run for real now: before the exit, or always under "recompute"."""
        return step is not None and (step.exit_layer is None or step.strategy == "recompute")

    def before(self, index: int, args: tuple, kwargs: dict):
        step = self.step
        if self._computes(step) and step.strategy == "skip" and layer_input(args, kwargs).shape[1] == 1:
            # Upper layers may hold fewer positions than layer 1 (holes): a single new token attends to every
            # position its layer holds, which is the causal mask without the holes.
            return _set_arg(self.signatures[index], args, kwargs, "attention_mask", None)
        return None

    def bypass(self, index: int, args: tuple, kwargs: dict):
        step = self.step
        if step is None or self._computes(step):
            return None
        hidden = layer_input(args, kwargs)  # a layer above the exit: the state is h_exit, copied upward
        if step.strategy == "propagate":
            project_kv(self.model.layers[index], hidden, kwargs.get("position_embeddings"), step.cache, index)
        if index + 1 == self.L:
            raise StopForward
        return (hidden,) if self.returns_tuple else hidden

    def after(self, index: int, args: tuple, kwargs: dict, output) -> None:
        step, number = self.step, index + 1
        if not self._computes(step):  # the prompt, a full pass, or a bypassed layer
            return
        self.returns_tuple = isinstance(output, tuple)
        step.layers_computed += 1
        if step.exit_layer is None:
            self._check(step, number, layer_output(output)[:, -1], layer_input(args, kwargs)[:, -1])
            if step.exit_layer is not None and step.strategy == "skip":
                raise StopForward  # "skip": the layers above the exit do nothing for this position
        if number == self.L:
            raise StopForward

    def _check(self, step: _StepState, layer: int, h: torch.Tensor, h_prev: torch.Tensor) -> None:
        due = layer == self.L or (layer >= step.min_layer and (layer - step.min_layer) % step.check_every == 0)
        if not due:
            return
        start = time.perf_counter()
        stop, tokens, features = check_exit(self.model, step.rule, step.threshold, layer, h, h_prev, step.state)
        if stop[0]:
            step.exit_layer = layer
            step.token = int(tokens[0])
            step.features = {k: float(features[k][0]) for k in GENERATION_FEATURES}
        step.check_seconds += time.perf_counter() - start


def check_exit(model: LensModel, rule, threshold: float, layer: int, h: torch.Tensor, h_prev: torch.Tensor,
               state: OnlineState) -> tuple[np.ndarray, np.ndarray, dict]:
    """The exit check of n new positions at ``layer``: their states ``h`` and ``h_prev`` (at ``layer - 1``),
    (n, H) each, through the full-vocabulary lens in float32; ``rule.stop_proba_online`` against ``threshold``
    (every position stops at L). Appends the check to ``state.history`` (``state.rows``: the positions' rows).
    Returns (stop (n,) bool, the lens's top-1 token (n,), the online features name -> (n,)); ``NonFiniteError``
    naming the layer when the state or its lens is not finite."""
    h = h.float()  # the token comes from the full-vocabulary lens of the state in float32
    stats = lens_stats(model, h, _EMPTY, full_vocab=True, top_k=1)
    check_finite((h, stats["top_prob"]), "the residual stream or its lens", model=model, layer=layer)
    features = online_features(layer, model.n_layers, h, h_prev.float(), vocab_stats=lambda: stats)
    if layer == model.n_layers:
        stop = np.ones(len(h), dtype=bool)
    else:
        stop = np.asarray(rule.stop_proba_online(features, layer, state), dtype=float).reshape(-1) >= threshold
    state.history.append(ChainMap({"layer": layer, "rows": state.rows}, features))
    return stop, stats["top_ids"][:, 0].cpu().numpy(), features


def prefill(model: LensModel, ids: Sequence[int]):
    """The prompt through the full model: (its cache, the full model's next token)."""
    input_ids = torch.tensor([list(ids)], dtype=torch.long, device=model.device)
    out = model.hf_model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=True,
                         **head_kwargs(model))
    check_finite(out.logits[0, -1], "the model's logits", model=model, layer=model.n_layers)
    return out.cache, int(out.logits[0, -1].argmax())


def full_step(model: LensModel, tokens: Sequence[int], cache) -> torch.Tensor:
    """``tokens`` (a few new positions) through the full model with ``cache`` (appended to): logits (q, vocab)."""
    input_ids = torch.tensor([list(tokens)], dtype=torch.long, device=model.device)
    head = head_kwargs(model, 0 if len(tokens) > 1 else 1)
    out = model.hf_model(input_ids=input_ids, cache=cache, use_cache=True, **head)
    check_finite(out.logits[0], "the model's logits", model=model, layer=model.n_layers)
    return out.logits[0]


def exit_step(model: LensModel, patched: _ExitHooks, token: int, cache, rule, threshold: float, min_layer: int,
              strategy: str, check_every: int) -> _StepState:
    """One new position (``token``) with the early exit; the cache is appended to as ``strategy`` says."""
    if strategy != patched.strategy:
        raise ValueError(f"exit_step(): strategy {strategy!r} under hooks for {patched.strategy!r}")
    step = _StepState(rule=rule, threshold=threshold, min_layer=min_layer, strategy=strategy, cache=cache,
                      check_every=check_every)
    patched.step = step
    input_ids = torch.tensor([[token]], dtype=torch.long, device=model.device)
    try:
        model.hf_model(input_ids=input_ids, cache=cache, use_cache=True, **head_kwargs(model))
    except StopForward:
        pass
    finally:
        patched.step = None
    if step.exit_layer is None:  # cannot happen: the last layer always decides
        raise RuntimeError("early-exit step ended without a decision (was the model's layer list changed?)")
    return step


def shallow_copy_cache(cache):
    """A cache that shares ``cache``'s tensors but not its layer objects: appending to it (a draft) leaves
    ``cache`` untouched (transformers' dynamic layers append by concatenation, never in place)."""
    fresh = copy.copy(cache)
    fresh.layers = [copy.copy(layer) for layer in cache.layers]
    return fresh


# ---------------------------------------------------------------------------------------------------
# Entry points


def _full_features(n: int, L: int) -> dict[str, np.ndarray]:
    at_layer_l = {"layer": float(L), "layer_frac": 1.0}
    return {k: np.full(n, at_layer_l.get(k, np.nan)) for k in GENERATION_FEATURES}


def start_run(model: LensModel, prompt: str, rule, *, max_new_tokens: int, check_every: int,
              caller: str) -> tuple[list[int], float, int, set[int]]:
    """The checks every generation with an exit rule starts with: the prompt's token ids, the rule's threshold
    and first checked layer, the model's end-of-sequence ids (errors: see ``generate_early_exit``)."""
    ids = check_generation_args(model, prompt, max_new_tokens, caller=caller)
    check_int(check_every, "check_every", low=1)
    threshold, min_layer = check_rule(rule, model.n_layers)
    return ids, threshold, min_layer, eos_ids(model)


def timed_prefill(model: LensModel, ids) -> tuple[object, int, float]:
    """``prefill`` of the prompt ``ids``: (cache, first token, seconds)."""
    start = time.perf_counter()
    cache, token = prefill(model, ids)
    return cache, token, time.perf_counter() - start


@torch.no_grad()
def greedy_generate(model: LensModel, prompt: str, *, max_new_tokens: int = 32,
                    keep_cache: bool = False) -> GenerationResult:
    """The full model's greedy continuation of ``prompt`` (the reference; equals
    ``model.hf_model.generate(do_sample=False)``), timed like ``generate_early_exit``."""
    ids = check_generation_args(model, prompt, max_new_tokens, caller="greedy_generate")
    stop = eos_ids(model)
    start = time.perf_counter()
    cache, token = prefill(model, ids)
    prefill_seconds = time.perf_counter() - start
    start = time.perf_counter()
    tokens = [token]
    while len(tokens) < max_new_tokens and tokens[-1] not in stop:
        tokens.append(int(full_step(model, [tokens[-1]], cache)[-1].argmax()))
    seconds = time.perf_counter() - start
    n, L = len(tokens), model.n_layers
    return GenerationResult(model.name, L, prompt, ids, np.asarray(tokens), np.full(n, L), _full_features(n, L),
                            np.full(n, L), seconds, prefill_seconds, method="full", cache=cache if keep_cache else None,
                            text=model.tokenizer.decode(tokens))


@torch.no_grad()
def generate_early_exit(model: LensModel, prompt: str, rule, *, strategy: str = "skip", max_new_tokens: int = 32,
                        check_every: int = 1, keep_cache: bool = False) -> GenerationResult:
    """Greedy generation from ``prompt`` where each new token exits at the first checked layer whose
    ``rule.stop_proba_online`` reaches ``rule.threshold`` (checks at ``rule.min_layer``, then every
    ``check_every`` layers, and at L), with the cache ``strategy`` ``"skip"`` | ``"propagate"`` |
    ``"recompute"`` for the layers above each exit (see the module's docstring). Batch size 1.

    Errors: ``TypeError`` for a prompt that is not a string or a rule without ``threshold`` / ``min_layer``
    / ``stop_proba_online``; ``ValueError`` for an empty prompt, ``max_new_tokens`` < 1, a prompt too long for
    the context, an unknown strategy, a rule on label-word features or with ``min_layer`` outside 1..L;
    ``UnsupportedStrategyError`` for ``"propagate"`` outside the Llama-style families."""
    strategy = check_strategy(model, strategy)
    ids, threshold, min_layer, stop = start_run(model, prompt, rule, max_new_tokens=max_new_tokens,
                                                check_every=check_every, caller="generate_early_exit")
    L = model.n_layers
    with _ExitHooks(model, strategy) as patched:
        cache, token, prefill_seconds = timed_prefill(model, ids)
        start = time.perf_counter()
        tokens, exits, computed = [token], [L], [L]
        features = {k: list(v) for k, v in _full_features(1, L).items()}  # the first token: the full model's
        while len(tokens) < max_new_tokens and tokens[-1] not in stop:
            step = exit_step(model, patched, tokens[-1], cache, rule, threshold, min_layer, strategy, check_every)
            tokens.append(step.token)
            exits.append(step.exit_layer)
            computed.append(step.layers_computed)
            for k in GENERATION_FEATURES:
                features[k].append(step.features[k])
        seconds = time.perf_counter() - start
    return GenerationResult(model.name, L, prompt, ids, np.asarray(tokens), np.asarray(exits),
                            {k: np.asarray(v, dtype=float) for k, v in features.items()}, np.asarray(computed),
                            seconds, prefill_seconds, method=strategy, rule=str(rule),
                            cache=cache if keep_cache else None, text=model.tokenizer.decode(tokens))


def sequence_nll(model: LensModel, prompt_tokens: Sequence[int], new_tokens: Sequence[int]) -> float:
    """The full model's mean negative log-likelihood (nats per token) of ``new_tokens`` after
    ``prompt_tokens``: one forward pass over both (a quality proxy for generated text)."""
    return float(sequence_nlls(model, [(prompt_tokens, new_tokens)])[0])


def sequence_nlls(model: LensModel, sequences: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                  batch_size: int = 8) -> np.ndarray:
    """``sequence_nll`` of many ``(prompt tokens, new tokens)`` pairs: (n,) nats per token. Equal pairs run once;
    the others ``batch_size`` at a time, of similar lengths, right padded under an attention mask (a row of a
    batch equals batch size 1's to float precision; a batch of one is ``sequence_nll`` exactly). ``ValueError``
    for a pair without new tokens."""
    pairs = [(tuple(int(t) for t in p), tuple(int(t) for t in new)) for p, new in sequences]
    if any(not new for _, new in pairs):
        raise ValueError("sequence_nll() needs at least one new token")
    unique = list(dict.fromkeys(pairs))
    by_length = sorted(range(len(unique)), key=lambda k: len(unique[k][0]) + len(unique[k][1]))
    values = np.empty(len(unique))
    for start in range(0, len(by_length), batch_size):
        chunk = by_length[start:start + batch_size]
        values[chunk] = _nll_batch(model, [unique[k] for k in chunk])
    index = {pair: k for k, pair in enumerate(unique)}
    return np.array([values[index[pair]] for pair in pairs])


@torch.no_grad()
def _nll_batch(model: LensModel, pairs: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> np.ndarray:
    """One right-padded forward pass of ``pairs``; only the positions from the shortest prompt's last token on
    go through the LM head."""
    lengths = [len(p) + len(new) for p, new in pairs]
    width = max(lengths)
    ids = torch.full((len(pairs), width), model.tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, (p, new) in enumerate(pairs):
        ids[b, :lengths[b]] = torch.tensor(p + new)
        mask[b, :lengths[b]] = 1
    keep = width - min(len(p) for p, _ in pairs) + 1
    logits = model.hf_model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), use_cache=False,
                            **head_kwargs(model, keep)).logits
    offset = width - logits.shape[1]   # the position logits[:, 0] stands for
    out = []
    for b, (p, new) in enumerate(pairs):
        rows = logits[b, len(p) - 1 - offset:len(p) - 1 - offset + len(new)].float()
        logp = torch.log_softmax(rows, dim=-1)
        target = torch.tensor(new, device=rows.device)
        out.append(float(-logp[torch.arange(len(new)), target].mean()))
    return np.array(out)
