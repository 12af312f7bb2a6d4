"""The logit lens over every layer, at the last prompt position: ``trace`` → ``LayerTrace``.

For each prompt, one batched forward pass (right padding, attention mask; a prompt prefix shared by all
prompts runs once, see ``inputs``) records the residual stream ``h_l`` at the last real token after every
layer (``h_0`` = the input of the first decoder layer, i.e. the embeddings with positions). Each state goes
through the model's own final norm and unembedding, so layer ``L`` reproduces the model's logits, and we keep
per example × layer: the top-k tokens, ``top_prob``,
``gap`` (top-1 minus top-2 probability), entropy, KL to the final layer, the cosine between consecutive
states, and (given label words) the label-word logits.
"""

from __future__ import annotations

import json
import logging
import time
import zipfile
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..common.cache import atomic_write_bytes, content_key
from ..common.checks import check_finite
from ..common.paths import data_dir
from . import parallel
from .hooks import residual_states
from .inputs import Batch, check_prompts, label_token_ids, prepare_prompts
from .loading import LensModel

log = logging.getLogger("adainfer_lib")

TRACE_FORMAT_VERSION = 1
_ARRAYS = ("top_ids", "top_probs", "top_prob", "gap", "entropy", "kl_to_final", "cos_prev", "label_logits", "n_tokens")


class CorruptCacheError(ValueError):
    """A cached trace that cannot be read back or does not match what was asked for."""


@dataclass
class LayerTrace:
    """Logit-lens statistics of ``n`` prompts at layers ``0..L`` (last prompt position).

    Arrays (``n`` examples, ``L + 1`` layers, ``k`` top tokens, ``C`` label words):
    ``top_ids``/``top_probs`` (n, L+1, k); ``top_prob``, ``gap``, ``entropy``, ``kl_to_final``, ``cos_prev``
    (n, L+1) — full-vocabulary statistics are NaN when traced with ``full_vocab=False``, and ``cos_prev`` is
    NaN at layer 0; ``label_logits`` (n, L+1, C) raw logits of the label words; ``n_tokens`` (n,).
    """

    model_name: str
    n_layers: int
    top_ids: np.ndarray
    top_probs: np.ndarray
    top_prob: np.ndarray
    gap: np.ndarray
    entropy: np.ndarray
    kl_to_final: np.ndarray
    cos_prev: np.ndarray
    label_logits: np.ndarray
    n_tokens: np.ndarray
    label_words: list[str] = field(default_factory=list)
    label_ids: list[int] = field(default_factory=list)
    token_strings: dict[int, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, layers = self.top_prob.shape
        if layers != self.n_layers + 1:
            raise ValueError(f"expected {self.n_layers + 1} layers (0..L), got {layers}")
        for name in ("gap", "entropy", "kl_to_final", "cos_prev"):
            if getattr(self, name).shape != (n, layers):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {(n, layers)}")
        if self.top_ids.shape != self.top_probs.shape or self.top_ids.shape[:2] != (n, layers):
            raise ValueError(f"top_ids {self.top_ids.shape} / top_probs {self.top_probs.shape} do not match "
                             f"{(n, layers)}")
        if self.label_logits.shape != (n, layers, len(self.label_words)):
            raise ValueError(
                f"label_logits has shape {self.label_logits.shape}, expected {(n, layers, len(self.label_words))}"
            )
        if self.n_tokens.shape != (n,):
            raise ValueError(f"n_tokens has shape {self.n_tokens.shape}, expected {(n,)}")

    @property
    def n_examples(self) -> int:
        return self.top_prob.shape[0]

    @property
    def layers(self) -> np.ndarray:
        """Layer numbers ``0..L``."""
        return np.arange(self.n_layers + 1)

    def label_probs(self) -> np.ndarray:
        """Label-word probabilities renormalised over the label words: (n, L+1, C). A trace without label
        words (``trace(model, prompts)``) gives an empty (n, L+1, 0) array."""
        if not self.label_words:
            return np.zeros((*self.label_logits.shape[:2], 0), dtype=self.label_logits.dtype)
        from scipy.special import softmax

        return softmax(self.label_logits, axis=-1)

    def top_tokens(self, example: int) -> pd.DataFrame:
        """Top-k tokens of one example: one row per layer, columns ``token_i`` and ``prob_i``."""
        rows = {}
        for i in range(self.top_ids.shape[2]):
            rows[f"token_{i + 1}"] = [self.token_strings.get(int(t), "?") for t in self.top_ids[example, :, i]]
            rows[f"prob_{i + 1}"] = self.top_probs[example, :, i]
        return pd.DataFrame(rows, index=pd.Index(self.layers, name="layer"))

    def label_columns(self) -> list[str]:
        """The ``to_frame`` column of each label word: ``p_<word without surrounding spaces>``. ``ValueError``
        naming the words when two of them give the same column (" positive" and "positive", or a word listed
        twice): columns are never merged or renamed silently."""
        columns = [f"p_{word.strip()}" for word in self.label_words]
        clashes = {c: [w for w, c2 in zip(self.label_words, columns) if c2 == c]
                   for c in columns if columns.count(c) > 1}
        if clashes:
            detail = "; ".join(f"{words} all give {c!r}" for c, words in clashes.items())
            raise ValueError(f"label words collide as table columns: {detail}. Label words must differ after "
                             "stripping spaces to become columns of to_frame().")
        return columns

    def to_frame(self) -> pd.DataFrame:
        """Tidy table, one row per example × layer: example, layer, top_prob, gap, entropy, kl_to_final,
        cos_prev, top_token, and ``p_<word>`` per label word (renormalised over the label words; none for a
        trace without label words). Column names come from ``label_columns``: label words that collide after
        stripping spaces (" positive" and "positive") raise ``ValueError`` instead of sharing a column."""
        columns = self.label_columns()
        n, layers = self.top_prob.shape
        frame = pd.DataFrame(
            {
                "example": np.repeat(np.arange(n), layers),
                "layer": np.tile(np.arange(layers), n),
                "top_prob": self.top_prob.ravel(),
                "gap": self.gap.ravel(),
                "entropy": self.entropy.ravel(),
                "kl_to_final": self.kl_to_final.ravel(),
                "cos_prev": self.cos_prev.ravel(),
                "top_token": [self.token_strings.get(int(t), "?") for t in self.top_ids[..., 0].ravel()]
                if self.top_ids.shape[2]
                else None,
            }
        )
        probs = self.label_probs()
        for c, column in enumerate(columns):
            frame[column] = probs[..., c].ravel()
        return frame

    # ---- persistence -------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """An ``.npz`` archive (no pickles): the arrays plus a JSON header."""
        header = {
            "format_version": TRACE_FORMAT_VERSION,
            "model_name": self.model_name,
            "n_layers": self.n_layers,
            "label_words": self.label_words,
            "label_ids": self.label_ids,
            "token_strings": {str(k): v for k, v in self.token_strings.items()},
            "meta": self.meta,
        }
        buffer = BytesIO()
        np.savez_compressed(buffer, header=np.array(json.dumps(header)), **{k: getattr(self, k) for k in _ARRAYS})
        return buffer.getvalue()

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary file, then rename)."""
        path = Path(path)
        atomic_write_bytes(path, self.to_bytes())
        return path

    @classmethod
    def load(cls, path: str | Path) -> LayerTrace:
        """Read a saved trace; ``CorruptCacheError`` if it is truncated, unreadable or of another format."""
        try:
            with np.load(path, allow_pickle=False) as archive:
                header = json.loads(str(archive["header"]))
                arrays = {k: archive[k] for k in _ARRAYS}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, json.JSONDecodeError) as err:
            raise CorruptCacheError(f"cannot read trace {path}: {err}") from err
        if header.get("format_version") != TRACE_FORMAT_VERSION:
            raise CorruptCacheError(f"trace {path} has format {header.get('format_version')}, expected "
                                    f"{TRACE_FORMAT_VERSION}")
        return cls(
            model_name=header["model_name"],
            n_layers=header["n_layers"],
            label_words=header["label_words"],
            label_ids=header["label_ids"],
            token_strings={int(k): v for k, v in header["token_strings"].items()},
            meta=header["meta"],
            **arrays,
        )


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


def trace_cache_path(model: LensModel, prompts: Sequence[str], label_words: Sequence[str], top_k: int,
                     full_vocab: bool, prefix_cache: bool = True) -> Path:
    """Cache file for these exact inputs (model weights, prompts, label words, options, prefix cache, format)."""
    model_id = model.cache_id
    key = content_key(model_id, list(prompts), list(label_words), top_k, full_vocab, bool(prefix_cache),
                      TRACE_FORMAT_VERSION)
    return data_dir() / "traces" / f"{model_id}-{key}.npz"


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
    holds another trace is rebuilt, with a warning in the log that says why.

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
    request = trace_request(model, prompts, label_words, label_ids, top_k, full_vocab) if cache else {}
    cached = _cached_trace(path, state, request)
    if cached is not None:
        return cached
    start = time.perf_counter()
    prepared = prepare_prompts(model, prompts, caller="trace", batch_size=batch_size, prefix_cache=prefix_cache,
                               prefix=prefix)
    ids_tensor = torch.tensor(label_ids, dtype=torch.long, device=model.lens_device)
    def work(b: int) -> dict:
        states = batch_states(model, prepared.batch(prepared.batches[b]))
        return _batch_stats(model, states, ids_tensor, top_k, full_vocab)

    done = parallel.run_batches(state, len(prepared.batches), work, desc=f"trace {model.name}", progress=progress)
    chunks = [stats for _, stats in done]
    result = _assemble(model, prepared, chunks, label_words, label_ids, top_k=top_k, full_vocab=full_vocab,
                       seconds=time.perf_counter() - start)
    if path is not None and parallel.is_main(state):
        result.save(path)
        log.info("trace cache written: %s", path)
    parallel.wait(state)  # the file exists for every process before any returns
    return result


def trace_request(model: LensModel, prompts: Sequence[str], label_words: Sequence[str], label_ids: Sequence[int],
                  top_k: int, full_vocab: bool) -> dict:
    """What a trace of ``prompts`` was asked for, as its ``meta`` and fields record it: what a cached trace must
    match to be the answer (``cache_mismatch``)."""
    return {"n_examples": len(prompts), "prompts_key": content_key(list(prompts)), "label_words": list(label_words),
            "label_ids": [int(i) for i in label_ids], "model_cache_id": model.cache_id, "n_layers": model.n_layers,
            "top_k": int(top_k), "full_vocab": bool(full_vocab)}


def cache_mismatch(cached: LayerTrace, request: dict) -> str | None:
    """None when the trace ``cached`` is what ``request`` (``trace_request``) asks for, else what differs: the
    number of prompts, the prompts themselves (their content key), the label words or ids, the model (cache id,
    layers) or the options. A file's name says what it should hold; its content says what it holds."""
    found = {"n_examples": cached.n_examples, "prompts_key": cached.meta.get("prompts_key"),
             "label_words": list(cached.label_words), "label_ids": [int(i) for i in cached.label_ids],
             "model_cache_id": cached.meta.get("model_cache_id"), "n_layers": cached.n_layers,
             "top_k": cached.meta.get("top_k"), "full_vocab": cached.meta.get("full_vocab")}
    wrong = [f"{k} {found[k]!r}, not {v!r}" for k, v in request.items() if found[k] != v]
    return "; ".join(wrong) or None


def _cached_trace(path: Path | None, state, request: dict) -> LayerTrace | None:
    """The cached trace at ``path`` when every process can read it and it is what ``request`` asks for, else
    None (a corrupt file, or one that holds another trace, is removed by the main process and rebuilt; the log
    says why)."""
    cached = None
    if path is not None and path.exists():
        try:
            cached = LayerTrace.load(path)
            mismatch = cache_mismatch(cached, request)
            if mismatch is not None:
                raise CorruptCacheError(f"trace cache {path} holds another trace ({mismatch})")
        except CorruptCacheError as err:
            cached = None
            log.warning("%s: rebuilding it", err)
            if parallel.is_main(state):
                path.unlink(missing_ok=True)  # rebuilt by the caller
    if path is not None and parallel.all_true(state, cached is not None):  # every process takes the same road
        return cached
    return None


def _assemble(model: LensModel, prepared, chunks: list[dict], label_words: list[str], label_ids: list[int], *,
              top_k: int, full_vocab: bool, seconds: float) -> LayerTrace:
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
        meta={"model_cache_id": model.cache_id, "prompts_key": content_key(list(prepared.texts)), "top_k": top_k,
              "full_vocab": full_vocab,
              "prefix_tokens": 0 if prepared.prefix is None else prepared.prefix.length,
              "seconds": round(seconds, 3), "weights": model.weights_note},
        **arrays,
    )
