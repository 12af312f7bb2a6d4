"""Saving and loading fitted exit policies without pickle.

A fitted ``ExitPolicy`` travels as a ``PolicyState`` (``ExitPolicy.state()`` / ``ExitPolicy.from_state``): plain
data this module writes and reads, so it never needs the policy class. A saved policy is one zip file (suffix
``.policy`` by convention) holding

- ``config.json``: the format tag and version, the constructor parameters, the fitted features, L, the
  provenance (``ExitPolicy.metadata``), the calibration (method + offsets) and the scorer's kind and config;
- ``arrays.npz``: the scorer's arrays (the CRF's standardisation, bin edges and weights), read with
  ``allow_pickle=False``;
- ``estimator.skops``: the scikit-learn pipeline (SVM, logistic) in skops format, whose loader instantiates only
  the types it is told to trust: scikit-learn's and numpy's, plus the two private classes of
  ``CalibratedClassifierCV`` (``TRUSTED_SKLEARN_TYPES``).

Like tuned-lens's config + state files, nothing in the file is executed when it is read: a tampered or foreign
file is refused with a ``ValueError`` that says what is wrong. A readable ``<file>.json`` sidecar repeats the
provenance.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.cache import atomic_write_bytes, atomic_write_text
from ..data.calibration import Calibration
from ..model.identity import PolicyModelMismatchError, check_rule_model
from .crf import CRFScorer
from .scorers import FeatureScorer, SklearnScorer

FORMAT = "adainfer-exit-policy"
FORMAT_VERSION = 2
#: The types a saved scikit-learn pipeline may contain beyond what skops trusts by default.
TRUSTED_SKLEARN_TYPES = ("sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration")
_MEMBERS = {"config.json", "arrays.npz", "estimator.skops"}


def _jsonable_params(params: dict) -> dict:
    """Constructor parameters as JSON: tuples and dicts (``class_weight`` with label keys) tagged so that
    ``_params_from_json`` gives back exactly what ``get_params`` returned."""
    out = {}
    for key, value in params.items():
        if isinstance(value, tuple):
            value = {"__tuple__": list(value)}
        elif isinstance(value, dict):
            value = {"__dict_items__": [[k, v] for k, v in value.items()]}
        out[key] = value
    return out


def _params_from_json(params: dict) -> dict:
    def decode(value):
        if isinstance(value, dict) and "__tuple__" in value:
            return tuple(value["__tuple__"])
        if isinstance(value, dict) and "__dict_items__" in value:
            return {k: v for k, v in value["__dict_items__"]}
        return value

    return {k: decode(v) for k, v in params.items()}


@dataclass(frozen=True)
class PolicyState:
    """A fitted ``ExitPolicy`` as plain data: its constructor ``params`` (``get_params()``), the fitted
    ``features`` and ``n_layers`` (L), the provenance ``metadata``, its ``calibration`` (or None) and the
    ``scorer`` (``FeatureScorer``, ``SklearnScorer`` or ``CRFScorer``)."""

    params: dict
    features: tuple[str, ...]
    n_layers: int
    metadata: dict
    calibration: Calibration | None
    scorer: FeatureScorer | SklearnScorer | CRFScorer


def save_state(state: PolicyState, path: str | Path) -> Path:
    """Write a fitted policy's ``state`` to ``path`` (atomically) and a readable ``<path>.json`` sidecar of
    its provenance. Returns the path."""
    import skops.io as sio

    path = Path(path)
    scorer = state.scorer
    arrays: dict[str, np.ndarray] = {}
    members: dict[str, bytes] = {}
    scorer_config: dict = {"kind": scorer.kind}
    if isinstance(scorer, CRFScorer):
        arrays = scorer.arrays()
        scorer_config.update(scorer.config())
    elif isinstance(scorer, SklearnScorer):
        members["estimator.skops"] = sio.dumps(scorer.estimator)
    cal = state.calibration
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "params": _jsonable_params(state.params),
              "features_": list(state.features), "n_layers_": int(state.n_layers), "metadata": state.metadata,
              "calibration": None if cal is None else cal.to_dict(), "scorer": scorer_config}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    members["arrays.npz"] = buffer.getvalue()
    members["config.json"] = json.dumps(config, indent=1, default=str).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    atomic_write_bytes(path, out.getvalue())
    atomic_write_text(path.with_name(path.name + ".json"), json.dumps(state.metadata, indent=2, default=str))
    return path


def _read_members(path: Path) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            unknown = names - _MEMBERS
            if unknown or "config.json" not in names:
                raise ValueError(f"{path} is not a saved ExitPolicy (members {sorted(names)})")
            return {name: archive.read(name) for name in names}
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path} is not a saved ExitPolicy ({err}): policies are saved with ExitPolicy.save "
                         f"(format {FORMAT!r} version {FORMAT_VERSION}); older pickle files are not read") from None


def _read_config(path: Path, members: dict[str, bytes]) -> dict:
    try:
        config = json.loads(members["config.json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: config.json is not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not an ExitPolicy file of format {FORMAT!r} version {FORMAT_VERSION}")
    return config


def _load_estimator(path: Path, data: bytes | None):
    import skops.io as sio

    if data is None:
        raise ValueError(f"{path}: the policy's scikit-learn pipeline (estimator.skops) is missing")
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as err:  # noqa: BLE001 - skops raises many kinds on a damaged file
        raise ValueError(f"{path}: estimator.skops cannot be read ({type(err).__name__}: {err})") from None
    refused = [t for t in untrusted if t not in TRUSTED_SKLEARN_TYPES]
    if refused:
        raise ValueError(f"{path}: estimator.skops contains types that are not scikit-learn's exit classifiers "
                         f"{refused}: refusing to load it")
    return sio.loads(data, trusted=list(untrusted))


def _scorer(path: Path, config: dict, members: dict[str, bytes]):
    kind = config["scorer"].get("kind")
    if kind == "threshold":
        return FeatureScorer()
    if kind == "sklearn":
        return SklearnScorer(_load_estimator(path, members.get("estimator.skops")))
    if kind == "crf":
        with np.load(io.BytesIO(members.get("arrays.npz", b"")), allow_pickle=False) as arrays:
            return CRFScorer.from_saved(config["scorer"], {k: arrays[k] for k in arrays.files})
    raise ValueError(f"{path}: unknown scorer kind {kind!r}")


def load_state(path: str | Path) -> PolicyState:
    """Read the ``PolicyState`` written by ``save_state``. ``ValueError`` for a file that is not a saved policy
    of this format (a pickle, a damaged or tampered zip, foreign types)."""
    path = Path(path)
    members = _read_members(path)
    config = _read_config(path, members)
    try:
        return PolicyState(params=_params_from_json(config["params"]), features=tuple(config["features_"]),
                           n_layers=int(config["n_layers_"]), metadata=dict(config["metadata"]),
                           calibration=Calibration.from_dict(config["calibration"]) if config["calibration"] else None,
                           scorer=_scorer(path, config, members))
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: the saved policy is incomplete or damaged ({type(err).__name__}: {err})") from None


def check_loaded_model(rule, path: str | Path, model=None) -> None:
    """With ``model`` (a ``LensModel`` or its ``cache_id``), refuse a ``rule`` read from ``path`` that was
    fitted on another model (``PolicyModelMismatchError`` naming the file); a warning when the rule records
    no model."""
    if model is None:
        return
    if rule.fitted_for.model_id is None:
        import warnings

        warnings.warn(f"{path}: the policy records no model (fitted on a table without attrs); "
                      "cannot check it matches", stacklevel=3)
    try:
        check_rule_model(rule, model)
    except PolicyModelMismatchError as err:
        raise PolicyModelMismatchError(f"{path}: {err}") from None
