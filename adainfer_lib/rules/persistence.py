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
from ..common.checks import checked_array
from ..data.calibration import CALIBRATION_METHODS, Calibration
from ..features.online import ONLINE_FEATURES
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
    """Read the ``PolicyState`` written by ``save_state``, every field checked (``check_state``). ``ValueError``
    for a file that is not a saved policy of this format (a pickle, a damaged or tampered zip, foreign types)
    or whose fields cannot work (naming the file and the field)."""
    path = Path(path)
    members = _read_members(path)
    config = _read_config(path, members)
    try:
        state = PolicyState(params=_params_from_json(config["params"]), features=tuple(config["features_"]),
                            n_layers=int(config["n_layers_"]), metadata=dict(config["metadata"]),
                            calibration=Calibration.from_dict(config["calibration"]) if config["calibration"] else None,
                            scorer=_scorer(path, config, members))
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: the saved policy is incomplete or damaged ({type(err).__name__}: {err})") from None
    return check_state(state, path)


# ---- what a loaded policy must hold ------------------------------------------------------------------------

_SCORER_OF = {"threshold": FeatureScorer, "crf": CRFScorer, "svm": SklearnScorer, "logistic": SklearnScorer}


def _array(path: Path, field: str, value, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``value`` as a float64 array of ``shape`` (None: any 1-D) with finite values only (``checks.checked_array``)."""
    return checked_array(path, field, value, shape, dtype=np.float64,
                         advice="the policy would never stop (or always); refit and save it again")


def _check_identity(state: PolicyState, path: Path) -> None:
    """The fitted features, L, the first checked layer, the label words and the recorded model."""
    features = state.features
    bad = [f for f in features if f not in ONLINE_FEATURES]
    if not features or bad or len(set(features)) != len(features):
        why = "none" if not features else (f"unknown {bad}" if bad else "a feature listed twice")
        raise ValueError(f"{path}: config.json features_ {list(features)}: {why}; an exit policy uses some of "
                         f"ONLINE_FEATURES = {ONLINE_FEATURES}")
    given = state.params.get("features")
    if given is not None and tuple([given] if isinstance(given, str) else given) != features:
        raise ValueError(f"{path}: config.json params.features {given!r} differ from the fitted features_ "
                         f"{list(features)}")
    for key, value in (("features", list(features)), ("classifier", state.params.get("classifier"))):
        if state.metadata.get(key, value) != value:
            raise ValueError(f"{path}: config.json metadata.{key} {state.metadata[key]!r} differs from the "
                             f"policy's {value!r}")
    if state.n_layers < 1 or state.metadata.get("n_layers", state.n_layers) != state.n_layers:
        raise ValueError(f"{path}: config.json n_layers_ {state.n_layers} is not a layer count L >= 1 matching "
                         f"metadata.n_layers {state.metadata.get('n_layers')!r}")
    min_layer = state.params.get("min_layer")
    if isinstance(min_layer, int) and not 0 <= min_layer <= state.n_layers:
        raise ValueError(f"{path}: config.json params.min_layer {min_layer} is outside 0..{state.n_layers} (the "
                         f"policy's model has L={state.n_layers} layers)")
    words = state.metadata.get("label_words")
    if words is not None and (not isinstance(words, list) or len(set(words)) < 2
                              or not all(isinstance(w, str) and w for w in words)):
        raise ValueError(f"{path}: config.json metadata.label_words {words!r}: a task's label words are 2 or more "
                         "distinct non-empty strings")
    model_id = state.metadata.get("model_cache_id")
    if model_id is not None and not isinstance(model_id, str):
        raise ValueError(f"{path}: config.json metadata.model_cache_id {model_id!r} is not a cache id string")
    reader = state.metadata.get("reader")
    if reader is not None and not (isinstance(reader, str) and reader):
        raise ValueError(f"{path}: config.json metadata.reader {reader!r} is not a reader id string ('logit_lens' "
                         "or a learned reader's reader_id)")


def _check_calibration(state: PolicyState, path: Path) -> None:
    """The calibration's method, and offsets (L+1, C) of finite numbers (C = the label words, when known)."""
    cal = state.calibration
    if cal is None:
        return
    if cal.method not in CALIBRATION_METHODS:
        raise ValueError(f"{path}: config.json calibration.method {cal.method!r} is not one of {CALIBRATION_METHODS}")
    words = state.metadata.get("label_words")
    n_labels = len(words) if words else (cal.offsets.shape[1] if cal.offsets.ndim == 2 else -1)
    _array(path, "config.json calibration.offsets", cal.offsets, (state.n_layers + 1, n_labels))


def _check_scorer(state: PolicyState, path: Path) -> None:
    """The scorer fits the classifier and the features: the CRF's arrays (standardisation, bin edges, design
    attributes, weights, transitions) finite and of matching shapes; the pipeline's input width."""
    scorer, k = state.scorer, len(state.features)
    expected = _SCORER_OF.get(state.params.get("classifier"))
    if expected is not None and not isinstance(scorer, expected):
        raise ValueError(f"{path}: config.json scorer.kind {scorer.kind!r} does not fit classifier "
                         f"{state.params.get('classifier')!r}")
    if isinstance(scorer, FeatureScorer) and k != 1:
        raise ValueError(f"{path}: config.json features_ {list(state.features)}: the threshold classifier uses one")
    if isinstance(scorer, SklearnScorer):
        width = getattr(scorer.estimator, "n_features_in_", k)
        if width != k or not hasattr(scorer.estimator, "predict_proba"):
            raise ValueError(f"{path}: estimator.skops takes {width} features and must give probabilities; the "
                             f"policy has {k} {list(state.features)}")
    if isinstance(scorer, CRFScorer):
        _array(path, "arrays.npz crf_mean", scorer.mean, (k,))
        scale = _array(path, "arrays.npz crf_scale", scorer.scale, (k,))
        if (scale <= 0).any():
            raise ValueError(f"{path}: arrays.npz crf_scale has values <= 0 (standard deviations)")
        if len(scorer.edges) not in (0, k):
            raise ValueError(f"{path}: config.json scorer.n_edges is {len(scorer.edges)}: 0 or one per feature ({k})")
        for j, edges in enumerate(scorer.edges):
            if np.any(np.diff(_array(path, f"arrays.npz crf_edges_{j}", edges)) < 0):
                raise ValueError(f"{path}: arrays.npz crf_edges_{j} is not sorted (quantile bin edges)")
        names = ["bias", *state.features,
                 *(f"{f}@bin{b}" for f, e in zip(state.features, scorer.edges) for b in range(len(e) + 1))]
        if list(scorer.attributes) != names:
            raise ValueError(f"{path}: config.json scorer.attributes {list(scorer.attributes)[:6]}... do not describe "
                             f"the design of features {list(state.features)} and their bins")
        _array(path, "arrays.npz crf_W", scorer.W, (len(names), 2))
        _array(path, "arrays.npz crf_T", scorer.T, (2, 2))


def check_state(state: PolicyState, path: str | Path) -> PolicyState:
    """``state`` (read from ``path``) if every field can work: known, distinct online features (those of the
    constructor parameters when given); L >= 1 (the metadata's too) and the first checked layer within 0..L;
    2 or more distinct label words; a known calibration method with finite offsets (L+1, C); a scorer of the
    classifier's kind — a CRF's arrays finite, of the features' shapes, its design attributes those of the
    features and bins; a pipeline taking k features. ``ValueError`` naming the file and the field otherwise
    (the constructor parameters are checked by ``ExitPolicy.load``)."""
    path = Path(path)
    _check_identity(state, path)
    _check_calibration(state, path)
    _check_scorer(state, path)
    return state


def load_policy(from_state, path: str | Path):
    """``from_state(state)`` (``ExitPolicy.from_state``) of the state read from ``path`` (``load_state``: every
    field checked); the constructor's ``ValueError`` for a bad parameter names the file and the field too."""
    state = load_state(path)
    try:
        return from_state(state)
    except ValueError as err:
        raise ValueError(f"{path}: config.json params: {err}") from None


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
