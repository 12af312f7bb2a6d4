"""Where prompts and label words enter a forward pass: checks, tokens, batches and the prompt-prefix KV cache.

Every path that runs the model on prompts (``lens.trace``, ``runner.run_early_exit`` / ``run_full``, the
explorer, the check-cost measurement) goes through this module, so that each of these holds once:

- **prompts are checked where they enter** (``check_prompts``): a list of non-empty strings — a bare string
  is refused, not split into characters — each no longer than the model's context (``tokenize_prompts``);
- **a label word is the token that follows the prompt's end** (``label_token_ids``): resolved in the
  prompt's context, exactly one token, all distinct (a SentencePiece tokenizer such as Llama-2's encodes
  ``" positive"`` alone as ``['▁', '▁positive']`` but after ``"Sentiment:"`` as ``['▁positive']``);
- **the last real token is read from the attention mask** (``Batch.last``): batches are right-padded here,
  from token ids, whatever ``tokenizer.padding_side`` says;
- **a prefix shared by every prompt runs once** (``PrefixKV``): with one demonstration set per seed every
  prompt is ``instruction + demonstrations + query``; the keys and values of the shared tokens are computed
  once per (model, prefix) and reused, batched, for every query, so only the query's tokens run per prompt.
  The shared prefix is found on token ids (the longest common prefix of the prompts' tokenizations), so a
  word that the tokenizer merges across the prefix/query boundary is never split: the token sequence each
  prompt runs is exactly the one it has without the cache. In transformers 5.x the cache is passed as
  ``cache=`` (``past_key_values`` is deprecated).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from ..common.checks import check_label_count

#: A shared prefix shorter than this many tokens is not worth a cache (its set-up costs more than it saves).
MIN_PREFIX_TOKENS = 8
_PREFIX_CACHE_SIZE = 4  # prefixes kept per model (one per task and seed in use)


# ---------------------------------------------------------------------------------------------------
# Prompts


def check_prompts(prompts: Sequence[str], *, caller: str) -> list[str]:
    """``prompts`` as a list; ``TypeError`` for a bare string or non-string items, ``ValueError`` for an
    empty list or empty prompts, each naming ``caller`` and the offending indices."""
    if isinstance(prompts, (str, bytes)):
        raise TypeError(f"{caller}() takes a list of prompts, not a single string: pass [{str(prompts)[:40]!r}] "
                        "for one prompt.")
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"{caller}() needs at least one prompt; got an empty list.")
    wrong = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if wrong:
        raise TypeError(f"{caller}(): prompts must be strings; prompt(s) {wrong[:5]} are "
                        f"{sorted({type(prompts[i]).__name__ for i in wrong})}.")
    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        raise ValueError(f"{caller}(): prompts must be non-empty strings; prompt(s) {empty[:5]} are empty.")
    return prompts


def context_limit(config) -> int | None:
    """The longest input the model's positions allow (``max_position_embeddings`` or GPT-2's ``n_positions``);
    None when the config names no limit."""
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def tokenize_prompts(model, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt (with the tokenizer's special tokens, e.g. Llama's BOS). ``ValueError``
    naming the first prompt longer than the model's context: its index, token count and the limit."""
    ids = [list(x) for x in model.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]
    limit = context_limit(model.hf_model.config)
    if limit is not None:
        too_long = [i for i, x in enumerate(ids) if len(x) > limit]
        if too_long:
            i = too_long[0]
            raise ValueError(f"prompt {i} is {len(ids[i])} tokens, longer than {model.name}'s context of {limit} "
                             f"tokens ({len(too_long)} prompt(s) too long): use fewer shots or shorter texts.")
    return ids


# ---------------------------------------------------------------------------------------------------
# Label words


def label_token_ids(tokenizer, words: Sequence[str], context: str, *, owner: str = "the model") -> list[int]:
    """Token id of each label word as the token that follows ``context`` (a prompt's end).

    The word is encoded after the context and the tokens it adds are taken; it must add exactly one token,
    the context's own tokens must be unchanged (no merge across the boundary), and no two words may share a
    token; there must be 2 or more words (``check_label_count``: every trace, real exit or dense run with label
    words resolves them here). ``ValueError`` names the word and its tokens otherwise; ``TypeError`` for a
    non-string word.
    """
    if isinstance(words, str):
        raise TypeError(f"label words must be a list of strings, not the single string {words!r}")
    words = list(words)
    bad = [w for w in words if not isinstance(w, str) or not w]
    if bad:
        raise TypeError(f"label words must be non-empty strings; got {bad[:3]!r}")
    base = tokenizer.encode(context, add_special_tokens=False)
    ids = []
    for word in words:
        full = tokenizer.encode(context + word, add_special_tokens=False)
        if full[: len(base)] != base:
            raise ValueError(f"label word {word!r} merges with the end of the prompt for {owner}'s tokenizer "
                             f"({tokenizer.convert_ids_to_tokens(full[-3:])}): it is not the next token; "
                             "start it with a space or pick another word.")
        extra = full[len(base):]
        if len(extra) != 1:
            raise ValueError(f"label word {word!r} is {len(extra)} tokens {tokenizer.convert_ids_to_tokens(extra)} "
                             f"after the prompt for {owner}'s tokenizer, not exactly one: pick a single-token synonym "
                             "(mind the leading space, e.g. ' positive').")
        ids.append(int(extra[0]))
    seen: dict[int, str] = {}
    for word, token in zip(words, ids):
        if token in seen:
            raise ValueError(f"label words {seen[token]!r} and {word!r} are the same token "
                             f"{tokenizer.convert_ids_to_tokens([token])} for {owner}: label words must be distinct "
                             "tokens.")
        seen[token] = word
    check_label_count(words, owner=f"the label words for {owner}")
    return ids


# ---------------------------------------------------------------------------------------------------
# Prompt-prefix KV cache


def shared_prefix_length(token_lists: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of ``token_lists``, leaving every list at least one token."""
    shortest = min(len(t) for t in token_lists)
    first = np.asarray(token_lists[0][:shortest])
    n = shortest - 1
    for tokens in token_lists[1:]:
        same = np.asarray(tokens[:n]) == first[:n]
        n = int(np.argmin(same)) if not same.all() else n
    return max(n, 0)


def _find_cache(args: tuple, kwargs: dict):
    """The transformers ``Cache`` among a layer's arguments, or None."""
    from transformers.cache_utils import Cache

    for value in (*args, *kwargs.values()):
        if isinstance(value, Cache):
            return value
    return None


@dataclass
class PrefixKV:
    """Keys and values of a token prefix shared by a batch of prompts, computed once (batch 1).

    ``tokens``: the prefix's token ids (P,); ``cache``: the transformers ``DynamicCache`` after running them.
    ``for_batch(B)`` gives a fresh cache whose layers hold the prefix expanded to B rows (views, no copy):
    the forward pass appends the queries' keys and values to it without touching this one.
    """

    tokens: tuple[int, ...]
    cache: object

    @property
    def length(self) -> int:
        return len(self.tokens)

    def for_batch(self, batch: int):
        fresh = copy.copy(self.cache)
        fresh.layers = []
        for layer in self.cache.layers:
            new = copy.copy(layer)
            if getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel():
                new.keys = layer.keys.expand(batch, *layer.keys.shape[1:])
                new.values = layer.values.expand(batch, *layer.values.shape[1:])
            fresh.layers.append(new)
        return fresh


def _layers_key(model) -> tuple:
    """Which decoder modules run (a pruned model runs others): part of a prefix cache's key."""
    return tuple(id(layer) for layer in model.layers)


def prefix_kv(model, tokens: Sequence[int]) -> PrefixKV:
    """The ``PrefixKV`` of ``tokens`` on ``model``: computed on first use, then reused (a few per model,
    least recently used dropped). Keyed by the model's weights (``cache_id``, and ``weights_version``: an edit
    in place that no sampled element shows), its decoder modules and the tokens."""
    store: OrderedDict = model.__dict__.setdefault("_prefix_kv", OrderedDict())
    key = (model.cache_id, model.weights_version, _layers_key(model), tuple(int(t) for t in tokens))
    hit = store.get(key)
    if hit is not None:
        store.move_to_end(key)
        return hit
    ids = torch.tensor([list(key[3])], dtype=torch.long, device=model.device)
    with torch.no_grad():
        out = model.hf_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **head_kwargs(model))
    entry = PrefixKV(tokens=key[3], cache=out.cache)
    store[key] = entry
    while len(store) > _PREFIX_CACHE_SIZE:
        store.popitem(last=False)
    return entry


def head_kwargs(model, keep: int = 1) -> dict:
    """``logits_to_keep=keep`` where the model supports it (0 = every position): only the last ``keep``
    positions go through the LM head. Default 1: the runner and the prefix cache never read them."""
    return {"logits_to_keep": keep} if _accepts_logits_to_keep(type(model.hf_model)) else {}


@lru_cache(maxsize=None)
def _accepts_logits_to_keep(model_class: type) -> bool:
    """Whether ``model_class.forward`` takes ``logits_to_keep`` (read once per class, not once per batch)."""
    import inspect

    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


# ---------------------------------------------------------------------------------------------------
# Batches


@dataclass
class Batch:
    """One right-padded batch, ready for ``model.hf_model(**batch.forward_kwargs())``.

    ``input_ids`` (B, T): the tokens that run (the query part when ``prefix`` is set); ``attention_mask``
    (B, P + T) covers the prefix and the tokens; ``position_ids`` (B, T) count from P; ``last`` (B,): index in
    0..T-1 of each row's last real token (read from the mask, so padding never moves it); ``prefix``: the
    shared ``PrefixKV`` or None.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    last: torch.Tensor
    prefix: PrefixKV | None = None

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def forward_kwargs(self, model) -> dict:
        """Arguments of the model's forward pass (no cache written back: a fresh prefix copy per batch)."""
        kwargs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                  "position_ids": self.position_ids, **head_kwargs(model)}
        if self.prefix is None:
            kwargs["use_cache"] = False
        else:
            kwargs.update(cache=self.prefix.for_batch(self.size), use_cache=True)
        return kwargs

    def gather_last(self, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Each row's state at its last real token: ``hidden`` (B', T, H) -> (B', H); ``rows`` (B',) are the
        batch rows that ``hidden`` holds (all when None)."""
        last = self.last if rows is None else self.last[rows]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last.to(hidden.device)]


def make_batch(model, token_lists: Sequence[Sequence[int]], prefix: PrefixKV | None = None) -> Batch:
    """Right-pad ``token_lists`` (each the FULL prompt's tokens) into a ``Batch``; with ``prefix``, every
    list must start with its tokens, and only the rest runs."""
    p = 0 if prefix is None else prefix.length
    if prefix is not None and any(tuple(t[:p]) != prefix.tokens for t in token_lists):
        raise ValueError("a prompt does not start with the cached prefix tokens")
    rest = [list(t[p:]) for t in token_lists]
    if any(not r for r in rest):
        raise ValueError("every prompt needs at least one token after the cached prefix")
    lengths = torch.tensor([len(r) for r in rest])
    width = int(lengths.max())
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rest), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rest), p + width), dtype=torch.long)
    mask[:, :p] = 1
    for i, r in enumerate(rest):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, p : p + len(r)] = 1
    positions = (torch.arange(width) + p).unsqueeze(0).expand(len(rest), -1)
    device = model.device
    return Batch(ids.to(device), mask.to(device), positions.to(device), (lengths - 1).to(device), prefix)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Prompt indices per batch, prompts grouped by token length (stable) so that a batch pads little."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass
class PreparedPrompts:
    """Prompts checked and tokenized once for a run: the ``texts``, their ``tokens``, the shared ``prefix``
    (or None) and ``batches`` of prompt indices; ``batch(idx)`` builds one ``Batch``."""

    model: object
    texts: list[str]
    tokens: list[list[int]]
    prefix: PrefixKV | None
    batches: list[np.ndarray]

    def batch(self, idx: Sequence[int]) -> Batch:
        return make_batch(self.model, [self.tokens[i] for i in idx], self.prefix)

    @property
    def n_tokens(self) -> np.ndarray:
        """Tokens of each prompt, prefix included (n,)."""
        return np.asarray([len(t) for t in self.tokens], dtype=np.int32)


def prepare_prompts(model, prompts: Sequence[str], *, caller: str, batch_size: int = 1, prefix_cache: bool = True,
                    prefix: str | None = None, sort_by_length: bool = True) -> PreparedPrompts:
    """Check and tokenize ``prompts``, find their shared token prefix and group them into batches.

    With ``prefix_cache``, the leading tokens shared by all prompts — and by ``prefix`` when given (a string
    every prompt starts with, e.g. ``Task.prefix``: it lets a single prompt reuse the cache) — run once
    (``prefix_kv``) and every batch reuses their keys and values, if there are ``MIN_PREFIX_TOKENS`` or more.
    ``batch_size > 1`` with ``sort_by_length`` groups prompts of similar length (``length_sorted_batches``);
    otherwise batches follow the prompts' order. ``ValueError`` for ``batch_size < 1`` or a prompt that does
    not start with ``prefix``.
    """
    prompts = check_prompts(prompts, caller=caller)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"{caller}(): batch_size must be an integer >= 1, not {batch_size!r}")
    tokens = tokenize_prompts(model, prompts)
    shared = list(tokens)
    if prefix is not None:
        wrong = [i for i, text in enumerate(prompts) if not text.startswith(prefix)]
        if wrong:
            raise ValueError(f"{caller}(): prompt(s) {wrong[:5]} do not start with the given prefix "
                             f"{prefix[:40]!r}...")
        shared.append(list(model.tokenizer(prefix, add_special_tokens=True)["input_ids"]) + [-1])  # -1 never matches
    cached = None
    if prefix_cache and len(shared) > 1:
        p = shared_prefix_length(shared)
        if p >= MIN_PREFIX_TOKENS:
            cached = prefix_kv(model, tokens[0][:p])
    if batch_size > 1 and sort_by_length:
        batches = length_sorted_batches([len(t) for t in tokens], batch_size)
    else:
        batches = [np.arange(i, min(i + batch_size, len(tokens))) for i in range(0, len(tokens), batch_size)]
    return PreparedPrompts(model, prompts, tokens, cached, batches)
