"""The residual states a reader is trained on and reads: ``residual_states`` → ``ResidualStates``.

For each prompt, the residual stream at its last real token entering layer 0 (the embeddings) and leaving
every decoder layer — exactly what ``lens.trace`` reads through the lens and what ``run_early_exit`` hands a
check at layer l — kept as float32 arrays (n, K, d) for the K requested layers (default all L + 1). The
forward passes are the trace's own (``inputs.prepare_prompts``: length-sorted right-padded batches, the
prompts' shared prefix computed once; ``lens.batch_states``: the recording hooks), so the states equal those
a trace or a real run sees to float precision.

``cache=True`` keeps them under ``<data>/states/`` keyed by everything they depend on: the model's
``cache_id`` (weights, dtype, config), the prompts' content key, the layer set, the prefix-cache option, the
stored dtype and ``STATES_FORMAT_VERSION``. A file is the answer only if what it holds matches the request and
its values are finite; a corrupt or stale file is rebuilt (a warning in the log says why). Writes are atomic.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Sequence

import numpy as np

from ..common.cache import atomic_write_bytes, content_key
from ..common.checks import check_finite
from ..common.paths import data_dir
from ..model import parallel
from ..model.inputs import check_prompts, prepare_prompts
from ..model.layer_trace import CorruptCacheError
from ..model.lens import batch_states
from ..model.loading import LensModel

log = logging.getLogger("adainfer_lib")

STATES_FORMAT_VERSION = 1
STORED_DTYPE = "float32"


@dataclass(frozen=True)
class ResidualStates:
    """Last-position residual states of ``n`` prompts: ``states`` (n, K, d) float32 at the layer numbers
    ``layers`` (K,) of a model with ``n_layers`` = L decoder layers (0 = embeddings, L = the last layer's output,
    before the final norm). ``meta``: ``model_cache_id``, ``model``, ``prompts_key`` (content key of the
    prompts, as ``LayerTrace.meta``), ``model_dtype``, ``prefix_cache``, ``format_version``.

    ``ValueError`` at construction for arrays of the wrong rank or dtype, layers that are not distinct
    ascending numbers in 0..L, or a layer count that does not match the array."""

    states: np.ndarray
    layers: tuple[int, ...]
    n_layers: int
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        states = np.asarray(self.states)
        if states.ndim != 3 or states.dtype != np.float32:
            raise ValueError(f"states must be a float32 array (n, K, d), got {states.dtype} {states.shape}")
        layers = tuple(int(v) for v in self.layers)
        if (len(layers) != states.shape[1] or list(layers) != sorted(set(layers))
                or (layers and (layers[0] < 0 or layers[-1] > self.n_layers))):
            raise ValueError(f"layers {list(layers)[:8]} must be {states.shape[1]} distinct ascending layer numbers "
                             f"in 0..{self.n_layers}")
        object.__setattr__(self, "layers", layers)

    @property
    def n_examples(self) -> int:
        return self.states.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.states.shape[2]

    @property
    def complete(self) -> bool:
        """Whether every layer 0..L is present (what fitting or reading a reader needs)."""
        return self.layers == tuple(range(self.n_layers + 1))

    def at(self, layer: int) -> np.ndarray:
        """The states (n, d) at layer number ``layer``; ``KeyError`` naming the layers held otherwise."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} is not among the stored layers {list(self.layers)}")
        return self.states[:, self.layers.index(layer)]

    # ---- persistence -------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """An ``.npz`` archive (no pickles): ``states`` and a JSON ``header``."""
        header = {"format_version": STATES_FORMAT_VERSION, "layers": list(self.layers), "n_layers": self.n_layers,
                  "meta": self.meta}
        buffer = BytesIO()
        np.savez(buffer, header=np.array(json.dumps(header)), states=self.states)
        return buffer.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> ResidualStates:
        """Read saved states; ``CorruptCacheError`` naming the file for a truncated, unreadable or foreign file,
        another format version, or NaN / infinite values."""
        try:
            with np.load(path, allow_pickle=False) as archive:
                header = json.loads(str(archive["header"]))
                states = archive["states"]
            if header.get("format_version") != STATES_FORMAT_VERSION:
                raise CorruptCacheError(f"states {path} have format {header.get('format_version')}, expected "
                                        f"{STATES_FORMAT_VERSION}")
            out = cls(states=states, layers=tuple(header["layers"]), n_layers=int(header["n_layers"]),
                      meta=dict(header["meta"]))
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as err:
            raise CorruptCacheError(f"cannot read states {path}: {err}") from err
        if not np.isfinite(out.states).all():
            raise CorruptCacheError(f"states {path} hold NaN or infinite values")
        return out


def _layer_set(model: LensModel, layers: Sequence[int] | None) -> tuple[int, ...]:
    L = model.n_layers
    if layers is None:
        return tuple(range(L + 1))
    if isinstance(layers, (str, bytes)):
        raise ValueError(f"layers must be a sequence of layer numbers in 0..{L}, not {layers!r}")
    out = sorted({int(v) for v in layers})
    if not out or out[0] < 0 or out[-1] > L or len(out) != len(list(layers)):
        raise ValueError(f"layers must be distinct layer numbers in 0..{L} (0 = embeddings), got {list(layers)}")
    return tuple(out)


def states_request(model: LensModel, prompts: Sequence[str], layers: tuple[int, ...], prefix_cache: bool) -> dict:
    """What a states file for these inputs must record (its ``meta``, its layers and size)."""
    return {"model_cache_id": model.cache_id, "model": model.name, "prompts_key": content_key(list(prompts)),
            "model_dtype": str(next(model.hf_model.parameters()).dtype), "prefix_cache": bool(prefix_cache),
            "stored_dtype": STORED_DTYPE, "format_version": STATES_FORMAT_VERSION, "n_examples": len(prompts),
            "layers": list(layers), "n_layers": model.n_layers,
            "hidden_size": int(model.hf_model.config.hidden_size)}


def states_cache_path(request: dict) -> Path:
    """``<data>/states/<model cache id>-<key of the request>.npz``."""
    key = content_key(*[request[k] for k in sorted(request)])
    return data_dir() / "states" / f"{request['model_cache_id']}-{key}.npz"


def _found(states: ResidualStates) -> dict:
    meta = states.meta
    return {**{k: meta.get(k) for k in ("model_cache_id", "model", "prompts_key", "model_dtype", "prefix_cache",
                                        "stored_dtype")},
            "format_version": STATES_FORMAT_VERSION, "n_examples": states.n_examples, "layers": list(states.layers),
            "n_layers": states.n_layers, "hidden_size": states.hidden_size}


def _cached(path: Path, request: dict) -> ResidualStates | None:
    if not path.exists():
        return None
    try:
        cached = ResidualStates.load(path)
        found = _found(cached)
        wrong = [f"{k} {found[k]!r}, not {v!r}" for k, v in request.items() if found[k] != v]
        if wrong:
            raise CorruptCacheError(f"states cache {path} holds other states ({'; '.join(wrong)})")
        return cached
    except CorruptCacheError as err:
        log.warning("%s: rebuilding it", err)
        path.unlink(missing_ok=True)
        return None


def residual_states(model: LensModel, prompts: Sequence[str], *, layers: Sequence[int] | None = None,
                    batch_size: int = 8, prefix_cache: bool = True, prefix: str | None = None, cache: bool = False,
                    progress: bool = True) -> ResidualStates:
    """Last-position residual states of ``prompts`` at ``layers`` (default every layer 0..L): see the module
    docstring. ``prompts`` a list of strings (``inputs.check_prompts``: a bare string, an empty or too-long
    prompt is refused); ``prefix`` as in ``lens.trace``. ``cache=True`` reads / writes ``<data>/states/``.
    ``NonFiniteError`` naming the first layer whose state holds NaN or inf; ``ValueError`` for bad layers."""
    prompts = check_prompts(prompts, caller="residual_states")
    wanted = _layer_set(model, layers)
    request = states_request(model, prompts, wanted, prefix_cache)
    path = states_cache_path(request) if cache else None
    hit = _cached(path, request) if path is not None else None
    if hit is not None:
        return hit
    prepared = prepare_prompts(model, prompts, caller="residual_states", batch_size=batch_size,
                               prefix_cache=prefix_cache, prefix=prefix)
    pick = list(wanted)

    def work(b: int) -> np.ndarray:
        states = batch_states(model, prepared.batch(prepared.batches[b]))  # (L+1, B, d)
        check_finite(states, "the residual stream", model=model, layer_axis=0)
        return states[pick].transpose(0, 1).float().cpu().numpy()

    done = parallel.run_batches(None, len(prepared.batches), work, desc=f"states {model.name}", progress=progress)
    order = np.argsort(np.concatenate(prepared.batches))
    array = np.ascontiguousarray(np.concatenate([chunk for _, chunk in done])[order], dtype=np.float32)
    meta = {k: request[k] for k in ("model_cache_id", "model", "prompts_key", "model_dtype", "prefix_cache",
                                    "stored_dtype")}
    out = ResidualStates(states=array, layers=wanted, n_layers=model.n_layers, meta=meta)
    if path is not None:
        atomic_write_bytes(path, out.to_bytes())
        log.info("states cache written: %s", path)
    return out


def task_states(model: LensModel, task, split: str = "train", *, layers: Sequence[int] | None = None,
                batch_size: int = 8, cache: bool = True, progress: bool = True) -> ResidualStates:
    """``residual_states`` of ``task.prompts(split)`` (with the task's shared prefix), cached by default: the
    states a reader is fitted on (``split="train"``) or reads offline."""
    return residual_states(model, task.prompts(split), layers=layers, batch_size=batch_size, prefix=task.prefix,
                           cache=cache, progress=progress)
