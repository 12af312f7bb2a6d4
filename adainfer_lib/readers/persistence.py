"""Saving and loading fitted readers without pickle: one ``.npz`` file (suffix ``.reader`` by convention).

A fitted reader travels as a ``ReaderState`` (``Reader.state()`` / ``Reader.from_state``): plain data this
module writes and reads, so it never needs the reader classes. The file holds a JSON ``header`` (the format tag
and version, the reader's kind and constructor parameters, the model and task it was fitted on, the label
words and their token ids, the hidden size, the calibration method, provenance) and the arrays: the
calibration offsets and the reader's own (a probe's weights, a tuned lens's translators), read with
``allow_pickle=False``. Nothing in the file is executed when it is read; every field is checked, and a file that
is not a saved reader, or a field that cannot work, is refused with a ``ValueError`` naming the file and the
field. The arrays each kind must hold, with their shapes, are checked by the reader class
(``Reader.from_state``)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np

from ..common.cache import atomic_write_bytes
from ..common.checks import checked_array
from ..data.calibration import CALIBRATION_METHODS, Calibration
from ..model.identity import ModelIdentity

FORMAT = "adainfer-reader"
FORMAT_VERSION = 1
_RESERVED = ("header", "calibration_offsets")


@dataclass(frozen=True)
class ReaderState:
    """A fitted reader as plain data: its ``kind`` and constructor ``params``, the ``identity`` of the model and
    task it was fitted on (``ModelIdentity``: cache id, name, L, label words, task), the label words' token
    ``label_ids``, the task's lens ``calibration`` (offsets (L+1, C)), the model's ``hidden_size`` d (0 for a
    reader that reads no states), the reader's ``arrays`` (name → array) and its provenance ``metadata``."""

    kind: str
    params: dict
    identity: ModelIdentity
    label_ids: tuple[int, ...]
    calibration: Calibration
    hidden_size: int
    arrays: dict
    metadata: dict


def save_state(state: ReaderState, path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (``.npz``: a JSON header and the arrays). Returns the path."""
    bad = [name for name in state.arrays if name in _RESERVED]
    if bad:
        raise ValueError(f"reader arrays may not be named {bad}")
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": state.kind, "params": state.params,
              "identity": state.identity.to_dict(), "label_ids": [int(i) for i in state.label_ids],
              "calibration_method": state.calibration.method, "hidden_size": int(state.hidden_size),
              "metadata": state.metadata}
    buffer = BytesIO()
    np.savez(buffer, header=np.array(json.dumps(header, default=str)),
             calibration_offsets=np.asarray(state.calibration.offsets, dtype=np.float64),
             **{name: np.asarray(value) for name, value in state.arrays.items()})
    return atomic_write_bytes(path, buffer.getvalue())


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{path} is not a saved reader ({type(err).__name__}: {err}); readers are saved with "
                         f"Reader.save (format {FORMAT!r} version {FORMAT_VERSION})") from None
    if "header" not in arrays:
        raise ValueError(f"{path} is not a saved reader: no header (members {sorted(arrays)})")
    try:
        header = json.loads(str(arrays.pop("header")))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: header is not valid JSON ({err})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a reader file of format {FORMAT!r} version {FORMAT_VERSION}")
    return header, arrays


def finite_array(path: Path, name: str, value, shape: tuple[int, ...]) -> np.ndarray:
    """``value`` as an array of numbers of ``shape`` (its dtype kept), every value finite (``checks.checked_array``);
    ``ValueError`` naming file and field."""
    return checked_array(path, name, value, shape)


def _identity(path: Path, header: dict) -> ModelIdentity:
    data = header.get("identity")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: header.identity is missing (the model and task the reader was fitted on)")
    model_id, layers, words = data.get("model_cache_id"), data.get("n_layers"), data.get("label_words")
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"{path}: header.identity.model_cache_id {model_id!r} is not a model cache id string")
    if not isinstance(data.get("model"), str):
        raise ValueError(f"{path}: header.identity.model {data.get('model')!r} is not a model name")
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        raise ValueError(f"{path}: header.identity.n_layers {layers!r} is not a layer count L >= 1")
    if (not isinstance(words, list) or len(words) < 2 or len(set(words)) != len(words)
            or not all(isinstance(w, str) and w for w in words)):
        raise ValueError(f"{path}: header.identity.label_words {words!r}: a task's label words are 2 or more "
                         "distinct non-empty strings")
    if data.get("task") is not None and not isinstance(data["task"], str):
        raise ValueError(f"{path}: header.identity.task {data['task']!r} is not a task name")
    return ModelIdentity(model_id, data["model"], layers, tuple(words), data.get("task"))


def _label_ids(path: Path, header: dict, n_labels: int) -> tuple[int, ...]:
    ids = header.get("label_ids")
    if (not isinstance(ids, list) or len(ids) != n_labels or len(set(ids)) != len(ids)
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)):
        raise ValueError(f"{path}: header.label_ids {ids!r}: one distinct token id >= 0 per label word "
                         f"({n_labels})")
    return tuple(ids)


def load_state(path: str | Path, kinds) -> ReaderState:
    """Read the ``ReaderState`` written by ``save_state``, its shared fields checked: the format, a ``kind`` among
    ``kinds``, the identity (a cache id string, L >= 1, 2+ distinct label words), one token id per label word,
    the hidden size, the calibration (a known method, finite offsets (L+1, C)), ``params`` and ``metadata``
    objects. ``ValueError`` naming the file and the field otherwise."""
    path = Path(path)
    header, arrays = _read(path)
    kind = header.get("kind")
    if kind not in kinds:
        raise ValueError(f"{path}: header.kind {kind!r} is not a reader kind ({sorted(kinds)})")
    identity = _identity(path, header)
    L, C = identity.n_layers, len(identity.label_words)
    label_ids = _label_ids(path, header, C)
    hidden = header.get("hidden_size")
    if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 0:
        raise ValueError(f"{path}: header.hidden_size {hidden!r} is not a hidden size >= 0 (0: a reader of no "
                         "states, the logit lens)")
    method = header.get("calibration_method")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"{path}: header.calibration_method {method!r} is not one of {CALIBRATION_METHODS}")
    if "calibration_offsets" not in arrays:
        raise ValueError(f"{path}: the calibration offsets (calibration_offsets) are missing")
    offsets = finite_array(path, "calibration_offsets", arrays.pop("calibration_offsets"), (L + 1, C))
    for name in ("params", "metadata"):
        if not isinstance(header.get(name), dict):
            raise ValueError(f"{path}: header.{name} is not an object")
    return ReaderState(kind, dict(header["params"]), identity, label_ids,
                       Calibration(method, offsets.astype(np.float64)), hidden, arrays, dict(header["metadata"]))
