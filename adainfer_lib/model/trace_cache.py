"""The trace cache under ``<data>/traces/``: one file per request, and rows shared across requests.

A trace asked for with ``cache=True`` (``lens.trace``) is looked up in three steps:

1. **The file of this request** (``trace_cache_path``: a key of the model's weights, the prompts, the label
   words and the options). It is the answer only if what it holds is what was asked (``cache_mismatch``).
2. **Rows of other requests** (``rows_from_cache``): every cached trace records a content key per prompt
   (``meta["row_keys"]``), so a prompt that another chapter already traced — the first 100 of the 500 test
   prompts, a calibration pool that contains them — is copied, not run again, when that trace was made by the
   same weights with the same label words, top-k, vocabulary and prefix-cache option. A full-vocabulary trace
   also serves a label-rows request (its vocabulary statistics then read NaN, as a label-rows trace's do).
3. **The forward passes** for the prompts no file holds; the rows are assembled in prompt order
   (``combine_rows``) and written as this request's file.

Rows copied from another trace were computed in other batches: they equal a fresh trace of these prompts to
float precision (as the prefix cache does), not bit for bit.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ..common.cache import content_key
from ..common.paths import data_dir
from . import parallel
from .layer_trace import TRACE_ARRAYS, TRACE_FORMAT_VERSION, CorruptCacheError, LayerTrace
from .loading import LensModel

log = logging.getLogger("adainfer_lib")

_VOCAB_STATS = ("top_prob", "gap", "entropy", "kl_to_final")   # NaN in a label-rows trace


def trace_cache_path(model: LensModel, prompts: Sequence[str], label_words: Sequence[str], top_k: int,
                     full_vocab: bool, prefix_cache: bool = True) -> Path:
    """Cache file for these exact inputs (model weights, prompts, label words, options, prefix cache, format)."""
    model_id = model.cache_id
    key = content_key(model_id, list(prompts), list(label_words), top_k, full_vocab, bool(prefix_cache),
                      TRACE_FORMAT_VERSION)
    return data_dir() / "traces" / f"{model_id}-{key}.npz"


def row_keys(prompts: Sequence[str]) -> list[str]:
    """A content key per prompt (``common.cache.content_key``): what ``meta["row_keys"]`` records."""
    return [content_key(p) for p in prompts]


def trace_request(model: LensModel, prompts: Sequence[str], label_words: Sequence[str], label_ids: Sequence[int],
                  top_k: int, full_vocab: bool) -> dict:
    """What a trace of ``prompts`` was asked for, as its ``meta`` and fields record it: what a cached trace must
    match to be the answer (``cache_mismatch``)."""
    return {"n_examples": len(prompts), "prompts_key": content_key(list(prompts)), "label_words": list(label_words),
            "label_ids": [int(i) for i in label_ids], "model_cache_id": model.cache_id, "n_layers": model.n_layers,
            "top_k": int(top_k), "full_vocab": bool(full_vocab)}


def trace_meta(model: LensModel, request: dict, keys: Sequence[str], *, prefix_cache: bool, prefix_tokens: int,
               seconds: float) -> dict:
    """The ``meta`` of a trace made for ``request`` (``trace_request``) whose prompts' ``row_keys`` are ``keys``:
    what ``cache_mismatch`` and ``rows_from_cache`` read back (weights, prompts, options, rows), and the shared
    prefix's length in tokens, the seconds it took and the weights' note."""
    return {"model_cache_id": model.cache_id, "prompts_key": request["prompts_key"], "top_k": request["top_k"],
            "full_vocab": request["full_vocab"], "prefix_cache": bool(prefix_cache), "row_keys": list(keys),
            "prefix_tokens": prefix_tokens, "seconds": round(seconds, 3), "weights": model.weights_note}


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


def cached_trace(path: Path | None, state, request: dict) -> LayerTrace | None:
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


def _header(path: Path) -> dict | None:
    """The JSON header of a saved trace (None if it cannot be read: such a file is never a donor)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return json.loads(str(archive["header"]))
    except Exception as err:  # noqa: BLE001 - a damaged file is skipped here and rebuilt when asked for itself
        log.debug("trace cache %s not read for rows: %s", path, err)
        return None


def _serves(header: dict, request: dict, prefix_cache: bool) -> bool:
    """Whether the trace behind ``header`` may lend rows to ``request``: the same format, weights, layers, label
    words and ids, top-k and prefix-cache option, and a vocabulary at least as wide; it must record its rows."""
    meta = header.get("meta", {})
    return (header.get("format_version") == TRACE_FORMAT_VERSION
            and meta.get("model_cache_id") == request["model_cache_id"]
            and header.get("n_layers") == request["n_layers"]
            and list(header.get("label_words", [])) == request["label_words"]
            and [int(i) for i in header.get("label_ids", [])] == request["label_ids"]
            and meta.get("top_k") == request["top_k"]
            and meta.get("prefix_cache") == bool(prefix_cache)
            and meta.get("full_vocab") in ((True, False) if not request["full_vocab"] else (True,))
            and isinstance(meta.get("row_keys"), list))


def rows_from_cache(keys: Sequence[str], request: dict, *, prefix_cache: bool,
                    skip: Path | None = None) -> list[tuple[LayerTrace, np.ndarray, np.ndarray]]:
    """Rows of the prompts whose ``row_keys`` are ``keys`` that cached traces already hold (see the module
    docstring): a list of
    ``(donor trace, its rows, the prompts' indices)``, each prompt from one donor, donors with the requested
    vocabulary first. ``skip``: this request's own file (never a donor). Unreadable files are skipped."""
    folder = data_dir() / "traces"
    if not folder.is_dir():
        return []
    wanted: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        wanted.setdefault(key, []).append(i)
    headers = [(path, h) for path in sorted(folder.glob(f"{request['model_cache_id']}-*.npz")) if path != skip
               for h in [_header(path)] if h is not None and _serves(h, request, prefix_cache)]
    headers.sort(key=lambda ph: ph[1]["meta"]["full_vocab"] != request["full_vocab"])   # same vocabulary first
    parts = []
    for path, header in headers:
        donor_keys = header["meta"]["row_keys"]
        first_rows = {}
        for row, key in enumerate(donor_keys):
            if key in wanted:
                first_rows.setdefault(key, row)
        if not first_rows:
            continue
        try:
            donor = LayerTrace.load(path)
        except CorruptCacheError as err:
            log.debug("%s: not used for rows", err)
            continue
        if donor.n_examples != len(donor_keys):
            continue
        hits = [(row, wanted.pop(key)) for key, row in first_rows.items()]
        rows = np.array([row for row, indices in hits for _ in indices])
        targets = np.array([i for _, indices in hits for i in indices])
        parts.append((donor, rows, targets))
        if not wanted:
            break
    if parts:
        log.info("trace of %d prompts: %d rows from cached traces, %d to compute", len(keys),
                 sum(len(t) for _, _, t in parts), sum(len(i) for i in wanted.values()))
    return parts


def _rows(trace: LayerTrace, rows: np.ndarray, full_vocab: bool) -> dict[str, np.ndarray]:
    """The per-example arrays of ``trace`` at ``rows``; a full-vocabulary trace read as label rows
    (``full_vocab=False``) gets a label-rows trace's empty top tokens and NaN vocabulary statistics."""
    arrays = {k: getattr(trace, k)[rows] for k in TRACE_ARRAYS}
    if trace.meta.get("full_vocab") and not full_vocab:
        n, layers = arrays["top_prob"].shape
        arrays["top_ids"] = np.zeros((n, layers, 0), dtype=np.int32)
        arrays["top_probs"] = np.zeros((n, layers, 0), dtype=np.float32)
        for k in _VOCAB_STATS:
            arrays[k] = np.full((n, layers), np.nan, dtype=np.float32)
    return arrays


def combine_rows(parts: list[tuple[LayerTrace, np.ndarray, np.ndarray]], n: int, *, full_vocab: bool,
                 meta: dict) -> LayerTrace:
    """One trace of ``n`` prompts from ``parts`` (``(trace, its rows, the prompts' indices)``, together covering
    every prompt once): arrays in prompt order, the union of the top tokens' strings, ``meta`` as given."""
    first = parts[0][0]
    pieces = [(_rows(t, rows, full_vocab), targets) for t, rows, targets in parts]
    arrays = {}
    for k in TRACE_ARRAYS:
        sample = pieces[0][0][k]
        out = np.empty((n, *sample.shape[1:]), dtype=sample.dtype)
        for values, targets in pieces:
            out[targets] = values[k]
        arrays[k] = out
    strings = {t: s for trace, _, _ in parts for t, s in trace.token_strings.items()}
    token_strings = {int(t): strings.get(int(t), "?") for t in np.unique(arrays["top_ids"])}
    return LayerTrace(model_name=first.model_name, n_layers=first.n_layers, label_words=list(first.label_words),
                      label_ids=list(first.label_ids), token_strings=token_strings, meta=meta, **arrays)
