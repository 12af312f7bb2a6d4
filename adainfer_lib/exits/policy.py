"""AdaInfer's exit classifier as a scikit-learn estimator, plus the stopping rule and its replay on a trace.

``ExitPolicy`` learns, from feature-table rows (``features.feature_table``), the probability that it is
safe to stop at a layer; the **stopping rule** exits at the first layer ``>= min_layer`` whose stop
probability is ``>= threshold``, else at L. Classifiers (all behind ``fit`` / ``predict_proba``):

- ``"svm"`` (the paper's): ``StandardScaler`` → ``SVC(kernel="rbf")`` with Platt-scaled probabilities
  (``CalibratedClassifierCV(method="sigmoid", ensemble=False)``, what ``SVC(probability=True)`` did — that
  flag is deprecated in scikit-learn 1.9). Our Platt folds are ``GroupKFold`` over *examples*, so no
  example's own layers calibrate its scores. The paper does not state its SVM settings; ours are
  parameters (``C``, ``kernel``, ``gamma``, ``class_weight``) with sklearn's defaults. ``svm="linear"``
  uses ``LinearSVC`` instead (faster on big tables). ``max_train_rows`` caps the training rows (whole
  examples drawn at random; the kernel SVM's cost grows ~ rows²).
- ``"crf"`` (the paper's other choice): a linear-chain CRF (``sklearn_crfsuite.CRF``, L-BFGS with
  ``c1``/``c2`` elastic-net penalties) over each example's *sequence of layers* ``min_layer..L-1``. Each
  layer is described by its standardised features as floats plus, with ``crf_bins``, a one-hot quantile
  bin per feature (fitted on the training rows) — a piecewise-constant, non-linear response. The stop
  probability at layer l is the CRF marginal of "stop" at the **last position of the prefix**
  ``min_layer..l`` (the forward/filtering probability): it uses no future layer, so offline replay and
  the online runner agree. We compute it with our own forward recursion over the fitted crfsuite weights
  (tests check it against crfsuite's own marginals).
- ``"logistic"``: ``StandardScaler`` → ``LogisticRegression``.
- ``"threshold"``: no learning; the stop "probability" is the value of the single feature (default
  ``label_gap``, the calibrated label-word gap).

Features: only ``ONLINE_FEATURES`` (``kl_to_final`` needs the last layer). The default is the paper's two,
``("gap", "top_prob")`` over the full vocabulary, for learned classifiers, and ``("label_gap",)`` for the
threshold. ``cos_prev`` is NaN at layer 0 (no previous state): policies fill it with 0.

Label schemes (which rows are "safe to stop"): ``consistent`` (this layer's decision equals the full
model's, the paper's framing), ``correct`` (equals the gold label), ``settled`` (consistent here and at
every later layer — what the stopping rule actually needs). Training rows are the decision layers
``min_layer <= layer < L`` (at L every example stops anyway).

Replay helpers (no model needed, before any real early exit): ``simulate``, ``simulate_exits``,
``threshold_sweep``, ``choose_threshold`` / ``tune_threshold`` (on the TRAIN table, with out-of-fold stop
probabilities), ``compare_policies`` and ``oracle_exit_layers``.

A policy knows its model: ``check_policy_model`` compares the model cache id, layer count and label words
recorded at fit time with those of the model, trace or table it is used with (``PolicyModelMismatchError``
naming both); ``run_early_exit``, every replay (through ``ExitPolicy.stop_matrix``), the evaluation and the
explorer call it.
"""

from __future__ import annotations

import copy
import json
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone

from ..common.cache import atomic_write_bytes, atomic_write_text
from ..common.checks import (THRESHOLD_RANGE, check_choice, check_exit_layers, check_int, check_min_layer, check_number,
                     check_threshold)
from .features import FULL_VOCAB_FEATURES, LABEL_SCHEMES, ONLINE_FEATURES, UNIT_INTERVAL_FEATURES, n_layers_of

POLICY_FORMAT_VERSION = 1
CLASSIFIERS = ("svm", "crf", "logistic", "threshold")
PAPER_FEATURES = ("gap", "top_prob")
DEFAULT_THRESHOLD_FEATURE = "label_gap"
#: Default threshold grid of sweeps and threshold choice (1.01 = never stop early).
DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.0, 1.0001, 0.01), 2)) + (1.01,)


class ModelMismatchError(ValueError):
    """Something fitted or traced on one model (or task) used with another model (or task's label words)."""


class PolicyModelMismatchError(ModelMismatchError):
    """A policy used with a model, trace, feature table or label words other than those it was fitted on."""


_UNKNOWN_IDENTITY = {"model_id": None, "model": None, "n_layers": None, "label_words": None}


def _model_identity(source) -> dict:
    """What identifies the model behind ``source``, and the task's label words: ``model_id``
    (``LensModel.cache_id``), ``model`` (its name), ``n_layers`` (L) and ``label_words`` — None where unknown.

    ``source``: a ``LensModel`` (anything with a ``cache_id``), a ``LayerTrace`` (``meta["model_cache_id"]``),
    a ``TaskTrace``, a feature table (its ``attrs``, written by ``features.feature_table``), a cache id string,
    or None. ``TypeError`` for anything else."""
    if source is None:
        return dict(_UNKNOWN_IDENTITY)
    if isinstance(source, str):
        return {**_UNKNOWN_IDENTITY, "model_id": source}
    if isinstance(source, pd.DataFrame):
        attrs = source.attrs
        return {"model_id": attrs.get("model_cache_id"), "model": attrs.get("model"),
                "n_layers": attrs.get("n_layers"), "label_words": attrs.get("label_words") or None}
    if hasattr(source, "trace") and hasattr(source, "gold"):  # a TaskTrace: its LayerTrace
        source = source.trace
    if hasattr(source, "label_logits") and hasattr(source, "meta"):  # a LayerTrace
        return {"model_id": source.meta.get("model_cache_id"), "model": source.model_name,
                "n_layers": source.n_layers, "label_words": list(source.label_words) or None}
    if hasattr(source, "cache_id"):  # a LensModel
        return {"model_id": source.cache_id, "model": getattr(source, "name", None),
                "n_layers": getattr(source, "n_layers", None), "label_words": None}
    raise TypeError(f"cannot tell which model {type(source).__name__!r} belongs to: pass a LensModel, a LayerTrace, "
                    "a TaskTrace, a feature table or a model cache id")


def _fitted_identity(policy) -> dict:
    """The model identity and label words a policy recorded when it was fitted (``ExitPolicy.metadata``), or
    carries as attributes (``label_words`` of the simple rules); None where it recorded nothing."""
    meta = getattr(policy, "metadata", None)
    meta = meta() if callable(meta) else meta
    meta = meta if isinstance(meta, Mapping) else {}
    words = meta.get("label_words") or getattr(policy, "label_words", None)
    return {"model_id": meta.get("model_cache_id"), "model": meta.get("model"), "n_layers": meta.get("n_layers"),
            "label_words": list(words) if words else None, "task": meta.get("task")}


def _refuse_other_model(recorded: dict, used: dict, subject: str, error: type[ModelMismatchError],
                        advice: str = "refit it on a trace of this model") -> None:
    """The one comparison of identities: ``error`` naming both models when both cache ids are known and
    differ, or both layer counts are known and differ; unknown identities pass."""
    a, b = recorded.get("model_id"), used.get("model_id")
    if a is not None and b is not None and a != b:
        raise error(f"{subject} model {recorded.get('model')!r} (cache id {a}), not model {used.get('model')!r} "
                    f"(cache id {b}): features, calibration offsets and layer count belong to one model — {advice}")
    la, lb = recorded.get("n_layers"), used.get("n_layers")
    if la is not None and lb is not None and int(la) != int(lb):
        raise error(f"{subject} a model with L={la} layers ({recorded.get('model')!r}), not one with L={lb} "
                    f"({used.get('model')!r}) — {advice}")


def check_policy_model(policy, model=None, *, model_id: str | None = None, label_words: Sequence[str] | None = None,
                       n_examples: int | None = None) -> None:
    """Refuse to use ``policy`` with a model, trace or task it was not fitted for.

    ``model``: a ``LensModel`` (identified by ``cache_id``), or what a replay runs on — a ``LayerTrace``
    (``meta["model_cache_id"]``), a ``TaskTrace`` or a feature table (``attrs``); ``model_id`` and
    ``label_words`` override what ``model`` says. Raises ``PolicyModelMismatchError`` naming both models when
    the policy recorded another model (cache id, or layer count) at fit time, or both label-word lists when it
    carries other label words (its calibration offsets are per label word). Then, where the policy has a
    ``check_layers(n_layers, n_examples)`` method (the simple exit rules, ``ExitPolicy``), its layers are
    checked against the model's L and ``n_examples`` prompts (``ValueError``). Policies that recorded no
    identity (``FixedExitPolicy``, ``ScheduledExitPolicy``, policies from older files) pass the identity checks.
    """
    used = _model_identity(model)
    if model_id is not None:
        used["model_id"] = model_id
    if label_words is not None:
        used["label_words"] = list(label_words) or None
    fitted = _fitted_identity(policy)
    _refuse_other_model(fitted, used, "this policy was fitted on", PolicyModelMismatchError)
    if fitted["label_words"] and used["label_words"] and fitted["label_words"] != used["label_words"]:
        task = f" (task {fitted['task']!r})" if fitted.get("task") else ""
        raise PolicyModelMismatchError(
            f"this policy carries label words {fitted['label_words']}{task}, not {used['label_words']}: its "
            "calibration offsets are per label word — refit it on this task, or move it here with "
            "ExitPolicy.for_task(feature_table of this task)")
    check_layers = getattr(policy, "check_layers", None)
    if callable(check_layers):
        check_layers(None if used["n_layers"] is None else int(used["n_layers"]), n_examples=n_examples)


def check_trace_model(traced, model) -> None:
    """``ModelMismatchError`` naming both models when ``traced`` (a ``LayerTrace``, ``TaskTrace`` or feature
    table) was traced with a model other than ``model`` (a ``LensModel``, or another trace or table); passes
    where either identity is unknown."""
    _refuse_other_model(_model_identity(traced), _model_identity(model), "this trace was made with",
                        ModelMismatchError, advice="trace the prompts with this model")


def check_policy_features(features: Sequence[str]) -> tuple[str, ...]:
    """``features`` as a tuple, or a ValueError naming any feature an online exit rule cannot use."""
    if isinstance(features, str):
        features = (features,)
    features = tuple(features)
    if not features:
        raise ValueError("an ExitPolicy needs at least one feature")
    bad = [f for f in features if f not in ONLINE_FEATURES]
    if bad:
        why = []
        if "kl_to_final" in bad:
            why.append("kl_to_final compares a layer with the final layer L, which a running model has not "
                       "computed yet when it decides to stop")
        if any(f in ("gold", "correct", "consistent", "settled", "final_pred", "pred", "oracle_exit") for f in bad):
            why.append("labels and decisions are not features")
        raise ValueError(f"feature(s) {bad} cannot drive an exit policy"
                         + (f" ({'; '.join(why)})" if why else "") + f"; use some of ONLINE_FEATURES = {ONLINE_FEATURES}")
    return features


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _softmax_last(a: np.ndarray) -> np.ndarray:
    z = a - a.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _layer_number(value) -> int:
    """A history entry's ``layer``: an int, or the runner's per-row array of equal layer numbers."""
    arr = np.asarray(value).reshape(-1)
    return int(arr[0])


class ExitPolicy(ClassifierMixin, BaseEstimator):
    """An AdaInfer exit classifier + stopping rule over feature-table rows (see the module docstring).

    Parameters: ``classifier`` ("svm" | "crf" | "logistic" | "threshold"); ``features`` (None → the
    paper's ``("gap", "top_prob")``, or ``("label_gap",)`` for "threshold"); ``label_scheme``
    ("consistent" | "correct" | "settled"); ``threshold`` and ``min_layer`` of the stopping rule; SVM /
    logistic: ``C``, ``kernel``, ``gamma``, ``class_weight``, ``svm`` ("svc" | "linear"), ``max_train_rows``;
    CRF: ``c1``, ``c2``, ``max_iterations``, ``crf_bins`` (None: floats only); ``random_state``; any other
    keyword is passed to the underlying estimator's constructor.

    ``fit(table)`` reads the labels from ``table[label_scheme]`` (or ``y``, aligned with the rows) and the
    metadata a runner needs (model cache id, task, label words, calibration) from ``table.attrs``.
    ``predict_proba(table)`` → (rows, 2), column 1 = P(stop); ``predict`` → 1 where P(stop) >= threshold.

    The constructor and ``set_params`` check every parameter (``ValueError`` naming the bad value and what is
    allowed: ``threshold`` in ``threshold_range``, ``min_layer`` an integer >= 0, known ``classifier`` /
    ``label_scheme`` / ``svm``, positive ``C``, ...). Replays refuse a table of another model or task, and
    ``run_early_exit`` another model (``check_policy_model``: ``PolicyModelMismatchError``).
    """

    def __init__(self, classifier: str = "svm", features: Sequence[str] | None = None,
                 label_scheme: str = "consistent", threshold: float = 0.5, min_layer: int = 1, *,
                 C: float = 1.0, kernel: str = "rbf", gamma="scale", class_weight=None, svm: str = "svc",
                 max_train_rows: int | None = 20000, c1: float = 0.05, c2: float = 0.01,
                 max_iterations: int = 200, crf_bins: int | None = 8, random_state: int | None = 0,
                 **classifier_params):
        self.classifier = classifier
        self.features = features
        self.label_scheme = label_scheme
        self.threshold = threshold
        self.min_layer = min_layer
        self.C = C
        self.kernel = kernel
        self.gamma = gamma
        self.class_weight = class_weight
        self.svm = svm
        self.max_train_rows = max_train_rows
        self.c1 = c1
        self.c2 = c2
        self.max_iterations = max_iterations
        self.crf_bins = crf_bins
        self.random_state = random_state
        self._extra_params = tuple(sorted(classifier_params))
        for key, value in classifier_params.items():
            setattr(self, key, value)
        # Fail early on what can never work (sklearn re-validates in fit).
        self._validate()

    # ---- sklearn plumbing --------------------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict:
        params = super().get_params(deep=deep)
        params.update({k: getattr(self, k) for k in getattr(self, "_extra_params", ())})
        return params

    def _classifier_extras(self) -> dict:
        return {k: getattr(self, k) for k in getattr(self, "_extra_params", ())}

    def set_params(self, **params) -> ExitPolicy:
        """sklearn's ``set_params``, then the constructor's checks: ``ValueError`` on a bad value (and the
        policy keeps its previous parameters)."""
        previous = {k: getattr(self, k) for k in params if hasattr(self, k)}
        super().set_params(**params)
        try:
            self._validate()
        except ValueError:
            for key, value in previous.items():
                setattr(self, key, value)
            raise
        return self

    def _validate(self) -> tuple[str, ...]:
        """Check every parameter (``ValueError`` naming the bad value and what is allowed); returns the
        resolved features."""
        check_choice(self.classifier, "classifier", CLASSIFIERS)
        check_choice(self.label_scheme, "label_scheme", LABEL_SCHEMES)
        check_choice(self.svm, "svm", ("svc", "linear"))
        features = self.resolved_features
        if self.classifier == "threshold" and len(features) != 1:
            raise ValueError(f"the threshold classifier uses exactly one feature, got {features}")
        low, high = self.threshold_range
        check_threshold(self.threshold, low=low, high=high)
        check_min_layer(self.min_layer)
        check_number(self.C, "C", positive=True)
        check_int(self.max_train_rows, "max_train_rows", low=2, none_ok=True)
        check_number(self.c1, "c1", low=0.0)
        check_number(self.c2, "c2", low=0.0)
        check_int(self.max_iterations, "max_iterations", low=1)
        check_int(self.crf_bins, "crf_bins", low=0, none_ok=True)
        return features

    @property
    def threshold_range(self) -> tuple[float | None, float | None]:
        """Allowed thresholds: ``[0, 1.01]`` (stop probabilities; 1.01 = never stop early), except for the
        ``"threshold"`` classifier on a feature outside [0, 1] (``layer``, ``entropy``, ``cos_prev``), whose
        threshold is any finite number: ``(None, None)``."""
        if self.classifier == "threshold" and self.resolved_features[0] not in UNIT_INTERVAL_FEATURES:
            return (None, None)
        return THRESHOLD_RANGE

    def check_layers(self, n_layers: int | None, n_examples: int | None = None) -> None:
        """``ValueError`` when ``min_layer`` is beyond the model's L (``n_layers``; None: not checked): the
        stopping rule would never check a layer. ``n_examples`` is not used (one policy fits any number)."""
        if n_layers is not None:
            check_min_layer(self.min_layer, n_layers)

    @property
    def resolved_features(self) -> tuple[str, ...]:
        """The features used (``features`` or the classifier's default), validated as online features."""
        if self.features is None:
            return (DEFAULT_THRESHOLD_FEATURE,) if self.classifier == "threshold" else PAPER_FEATURES
        return check_policy_features(self.features)

    @property
    def needs_full_vocab(self) -> bool:
        """True when a feature needs the full vocabulary through the LM head (top_prob, gap, entropy)."""
        features = self.features_ if hasattr(self, "features_") else self.resolved_features
        return any(f in FULL_VOCAB_FEATURES for f in features)

    # ---- metadata the runner reads -------------------------------------------------------------------
    @property
    def metadata(self) -> dict:
        """What the policy was fitted on (empty before ``fit``)."""
        return getattr(self, "metadata_", {})

    @property
    def calibration(self):
        """The ``Calibration`` (method + offsets (L+1, C)) of the fitting table, for online label features."""
        cal = self.metadata.get("calibration")
        if not cal:
            return None
        from ..data.calibration import Calibration

        return Calibration.from_dict(cal)

    @property
    def label_words(self) -> list[str] | None:
        return self.metadata.get("label_words")

    # ---- matrices --------------------------------------------------------------------------------------
    def decision_rows(self, table: pd.DataFrame) -> pd.DataFrame:
        """The rows a decision is made at: ``min_layer <= layer < L`` (training and importance use these)."""
        L = n_layers_of(table)
        layer = table["layer"].to_numpy()
        return table[(layer >= self.min_layer) & (layer < L)]

    def _column(self, source, name: str, layer: int | None, n: int) -> np.ndarray:
        if isinstance(source, pd.DataFrame):
            if name not in source.columns:
                raise KeyError(f"feature {name!r} is not a column of the table")
            values = source[name].to_numpy(dtype=np.float64)
        elif name in source:
            values = np.asarray(source[name], dtype=np.float64).reshape(-1)
            if values.size == 1 and n != 1:
                values = np.full(n, float(values[0]))
        elif name == "layer" and layer is not None:
            values = np.full(n, float(layer))
        elif name == "layer_frac" and layer is not None and self.metadata.get("n_layers"):
            values = np.full(n, layer / self.metadata["n_layers"])
        else:
            raise KeyError(f"online features lack {name!r} (have {sorted(source)})")
        if name == "cos_prev":  # NaN at layer 0 (no previous state): filled with 0, offline and online alike
            values = np.nan_to_num(values, nan=0.0)
        return values

    def _matrix(self, source, layer: int | None = None) -> np.ndarray:
        """(rows, k) float64 matrix of the policy's features from a table or an online feature dict."""
        features = self.features_ if hasattr(self, "features_") else self.resolved_features
        if isinstance(source, pd.DataFrame):
            n = len(source)
        else:
            lengths = [np.asarray(v).reshape(-1).size for k, v in source.items() if k in features]
            n = max(lengths) if lengths else (len(next(iter(source.values()))) if source else 0)
        X = np.column_stack([self._column(source, f, layer, n) for f in features]) if n else np.zeros((0, len(features)))
        bad = [f for j, f in enumerate(features) if not np.isfinite(X[:, j]).all()]
        if bad:
            hint = ""
            if set(bad) & set(FULL_VOCAB_FEATURES):
                hint = (" — full-vocabulary features are NaN when the task was traced with full_vocab=False: "
                        "trace with full_vocab=True, or use label_gap / label_top_prob")
            raise ValueError(f"feature(s) {bad} have NaN or infinite values{hint}")
        return X

    # ---- fit --------------------------------------------------------------------------------------------
    def fit(self, X: pd.DataFrame, y=None) -> ExitPolicy:
        """Fit on the decision rows of the feature table ``X`` (labels ``X[label_scheme]`` unless ``y``)."""
        if not isinstance(X, pd.DataFrame):
            raise TypeError("ExitPolicy.fit takes a feature table (pandas DataFrame from features.feature_table)")
        missing = [c for c in ("example", "layer", *([self.label_scheme] if y is None else [])) if c not in X.columns]
        if missing:
            raise ValueError(f"the table lacks column(s) {missing}: ExitPolicy.fit takes a feature table "
                             "(features.feature_table)")
        self.features_ = self._validate()
        L = n_layers_of(X)
        mask = ((X["layer"] >= self.min_layer) & (X["layer"] < L)).to_numpy()
        labels = X[self.label_scheme].to_numpy() if y is None else np.asarray(y)
        if len(labels) != len(X):
            raise ValueError(f"y has {len(labels)} values for {len(X)} rows")
        part, labels = X[mask], labels[mask].astype(int)
        if len(part) == 0:
            raise ValueError(f"no decision rows (min_layer={self.min_layer} <= layer < L={L}) to fit on")
        self.classes_ = np.array([0, 1])
        self.n_layers_ = L
        if self.classifier != "threshold" and len(np.unique(labels)) < 2:
            raise ValueError(f"the {self.label_scheme!r} labels of the training rows are all {labels[0]}: "
                             "a classifier needs both classes (more examples, or another label scheme)")
        matrix = self._matrix(part)
        extras = self._classifier_extras()
        if self.classifier == "threshold":
            self.estimator_ = None
        elif self.classifier == "crf":
            self._fit_crf(part, matrix, labels, extras)
        else:
            from sklearn.pipeline import make_pipeline
            from sklearn.preprocessing import StandardScaler

            if self.classifier == "logistic":
                from sklearn.linear_model import LogisticRegression

                model = LogisticRegression(C=self.C, class_weight=self.class_weight, max_iter=1000, **extras)
            else:
                from sklearn.calibration import CalibratedClassifierCV
                from sklearn.svm import SVC, LinearSVC

                base = (SVC(C=self.C, kernel=self.kernel, gamma=self.gamma, class_weight=self.class_weight, **extras)
                        if self.svm == "svc" else LinearSVC(C=self.C, class_weight=self.class_weight, **extras))
                model = CalibratedClassifierCV(base, method="sigmoid", ensemble=False,
                                               cv=_group_splits(part["example"].to_numpy(), labels, self.random_state))
            rows = np.arange(len(matrix))
            if self.classifier == "svm" and self.max_train_rows and len(rows) > self.max_train_rows:
                keep = _subsample_examples(part["example"].to_numpy(), self.max_train_rows, self.random_state)
                rows = np.flatnonzero(keep)
                if isinstance(model, CalibratedClassifierCV):
                    model.cv = _group_splits(part["example"].to_numpy()[rows], labels[rows], self.random_state)
            self.estimator_ = make_pipeline(StandardScaler(), model).fit(matrix[rows], labels[rows])
        self.metadata_ = self._fit_metadata(X, part, labels)
        self._proba_cache = {}
        return self

    def _fit_metadata(self, X: pd.DataFrame, part: pd.DataFrame, labels: np.ndarray) -> dict:
        import sklearn

        from .. import __version__

        attrs = dict(X.attrs)
        calibration = attrs.get("calibration")
        params = {k: (v if isinstance(v, (str, int, float, bool, type(None))) else repr(v))
                  for k, v in self.get_params().items()}
        return {
            "format_version": POLICY_FORMAT_VERSION,
            "classifier": self.classifier,
            "features": list(self.features_),
            "label_scheme": self.label_scheme,
            "params": params,
            "model": attrs.get("model"),
            "model_cache_id": attrs.get("model_cache_id"),
            "weights": attrs.get("weights"),
            "task": attrs.get("task"),
            "split": attrs.get("split"),
            "n_layers": int(n_layers_of(X)),
            "label_words": attrs.get("label_words"),
            "label_names": attrs.get("label_names"),
            "calibration": calibration,
            "calibration_method": (calibration or {}).get("method"),
            "calibration_offsets": (calibration or {}).get("offsets"),
            "n_train_examples": int(part["example"].nunique()),
            "n_train_rows": int(len(part)),
            "train_positive_rate": float(labels.mean()),
            "adainfer_version": __version__,
            "sklearn_version": sklearn.__version__,
        }

    # ---- CRF ---------------------------------------------------------------------------------------------
    def _crf_design(self, matrix: np.ndarray) -> np.ndarray:
        """(rows, attributes) design: bias, standardised floats, one-hot quantile bins."""
        z = (matrix - self.crf_mean_) / self.crf_scale_
        blocks = [np.ones((len(matrix), 1)), z]
        for j, edges in enumerate(self.crf_edges_):
            onehot = np.zeros((len(matrix), len(edges) + 1))
            onehot[np.arange(len(matrix)), np.searchsorted(edges, matrix[:, j], side="right")] = 1.0
            blocks.append(onehot)
        return np.hstack(blocks)

    def _fit_crf(self, part: pd.DataFrame, matrix: np.ndarray, labels: np.ndarray, extras: dict) -> None:
        import sklearn_crfsuite

        self.crf_mean_ = matrix.mean(0)
        scale = matrix.std(0)
        self.crf_scale_ = np.where(scale > 1e-12, scale, 1.0)
        edges = []
        if self.crf_bins and self.crf_bins > 1:
            for j in range(matrix.shape[1]):
                qs = np.quantile(matrix[:, j], np.linspace(0, 1, self.crf_bins + 1)[1:-1])
                edges.append(np.unique(qs))
        self.crf_edges_ = edges
        names = ["bias", *self.features_]
        names += [f"{f}@bin{b}" for f, e in zip(self.features_, edges) for b in range(len(e) + 1)]
        self.crf_attributes_ = names
        design = self._crf_design(matrix)
        order = np.lexsort((part["layer"].to_numpy(), part["example"].to_numpy()))
        examples = part["example"].to_numpy()[order]
        design, labels = design[order], labels[order]
        starts = np.flatnonzero(np.r_[True, examples[1:] != examples[:-1]])
        ends = np.r_[starts[1:], len(examples)]
        xseqs, yseqs = [], []
        for s, e in zip(starts, ends):
            xseqs.append([{names[a]: float(v) for a, v in enumerate(row) if v != 0.0} for row in design[s:e]])
            yseqs.append([str(int(v)) for v in labels[s:e]])
        crf = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=self.c1, c2=self.c2, max_iterations=self.max_iterations,
                                   all_possible_transitions=True, **extras)
        crf.fit(xseqs, yseqs)
        index = {n: i for i, n in enumerate(names)}
        W = np.zeros((len(names), 2))
        for (attr, label), weight in crf.state_features_.items():
            W[index[attr], int(label)] = weight
        T = np.zeros((2, 2))
        for (a, b), weight in crf.transition_features_.items():
            T[int(a), int(b)] = weight
        self.crf_ = crf
        self.crf_state_weights_, self.crf_transitions_ = W, T

    def _crf_step(self, log_alpha: np.ndarray | None, matrix: np.ndarray) -> np.ndarray:
        """Forward recursion: log alpha at the next position (B, 2) from the previous one (B, 2) or None."""
        state = self._crf_design(matrix) @ self.crf_state_weights_
        if log_alpha is None:
            return state
        return state + _logsumexp(log_alpha[:, :, None] + self.crf_transitions_[None], axis=1)

    def _crf_table_proba(self, table: pd.DataFrame) -> np.ndarray:
        """P(stop) of every row: the filtering marginal over the example's rows ``min_layer..layer``."""
        proba = np.zeros(len(table))
        layer = table["layer"].to_numpy()
        keep = np.flatnonzero(layer >= self.min_layer)
        if not len(keep):
            return proba
        sub = table.iloc[keep]
        order = np.lexsort((sub["layer"].to_numpy(), sub["example"].to_numpy()))
        matrix = self._matrix(sub)[order]
        examples = sub["example"].to_numpy()[order]
        new = np.r_[True, examples[1:] != examples[:-1]]
        position = np.arange(len(order)) - np.maximum.accumulate(np.where(new, np.arange(len(order)), 0))
        alpha = np.zeros((len(order), 2))
        for t in range(int(position.max()) + 1):
            idx = np.flatnonzero(position == t)
            alpha[idx] = self._crf_step(None if t == 0 else alpha[idx - 1], matrix[idx])
        proba[keep[order]] = _softmax_last(alpha)[:, 1]
        return proba

    def _crf_online(self, features: dict, layer: int, history) -> np.ndarray:
        current = self._matrix(features, layer)
        if layer < self.min_layer:
            return np.zeros(len(current))
        if history is None or (not isinstance(history, Mapping) and len(history) == 0):
            if layer > max(self.min_layer, 0):
                raise ValueError(f"the CRF policy scores layer {layer} from the prefix of layers "
                                 f"{self.min_layer}..{layer}: pass history= (the runner's list of earlier checks, "
                                 "or a dict feature -> (B, earlier layers) array)")
            return _softmax_last(self._crf_step(None, current))[:, 1]
        if isinstance(history, Mapping):  # prefix form: feature -> (B, t) for the current rows
            arrays = {k: np.asarray(v, dtype=np.float64) for k, v in history.items()}
            steps = next(iter(arrays.values())).shape[1]
            alpha = None
            for t in range(steps):
                alpha = self._crf_step(alpha, self._matrix({k: v[:, t] for k, v in arrays.items()}))
            return _softmax_last(self._crf_step(alpha, current))[:, 1]
        entries = [e for e in history if self.min_layer <= _layer_number(e["layer"]) < layer]
        # The forward recursion is resumed from the last entry it already went through (its filtered state is
        # kept in the entry under this policy's key), so a run costs one step per checked layer, not a replay.
        key = ("_crf_forward", id(self), float(self.threshold))
        alpha, rows, start = None, None, 0
        for i in range(len(entries) - 1, -1, -1):
            if key in entries[i]:
                alpha, rows = entries[i][key]
                start = i + 1
                break
        for entry in entries[start:]:
            entry_rows = np.asarray(entry["rows"])
            if rows is not None and not np.array_equal(entry_rows, rows):
                raise ValueError("history does not match this policy's decisions (rows that should have stopped "
                                 "are still running, or the reverse): was it run with another threshold?")
            alpha = self._crf_step(alpha, self._matrix(entry, _layer_number(entry["layer"])))
            go_on = _softmax_last(alpha)[:, 1] < self.threshold
            rows, alpha = entry_rows[go_on], alpha[go_on]
            entry[key] = (alpha, rows)
        if rows is not None and len(rows) != len(current):
            raise ValueError(f"{len(current)} running rows at layer {layer}, but the history leaves {len(rows)}")
        return _softmax_last(self._crf_step(alpha, current))[:, 1]

    # ---- predictions --------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "features_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("this ExitPolicy is not fitted yet: call fit(feature_table) first")

    def _stop_proba_matrix(self, matrix: np.ndarray) -> np.ndarray:
        if self.classifier == "threshold":
            return matrix[:, 0].copy()
        if not len(matrix):
            return np.zeros(0)
        return self.estimator_.predict_proba(matrix)[:, 1]

    def stop_proba(self, table: pd.DataFrame) -> np.ndarray:
        """P(stop) of every row of ``table`` (rows,). CRF: rows below ``min_layer`` get 0 (never checked)."""
        self._check_fitted()
        if self.classifier == "crf":
            return self._crf_table_proba(table)
        return self._stop_proba_matrix(self._matrix(table))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """(rows, 2): P(continue), P(stop) per row of the feature table ``X``."""
        p = self.stop_proba(X)
        return np.column_stack([1.0 - p, p])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """1 where P(stop) >= ``threshold`` (the stopping rule's per-row decision), else 0."""
        return (self.stop_proba(X) >= self.threshold).astype(int)

    def score(self, X: pd.DataFrame, y=None, sample_weight=None) -> float:
        """Accuracy of ``predict`` against the label scheme on the decision rows."""
        L = n_layers_of(X)
        mask = ((X["layer"] >= self.min_layer) & (X["layer"] < L)).to_numpy()
        labels = (X[self.label_scheme].to_numpy() if y is None else np.asarray(y)).astype(int)
        w = None if sample_weight is None else np.asarray(sample_weight)[mask]
        return float(np.average(self.predict(X[mask]) == labels[mask], weights=w))

    def stop_proba_online(self, features: Mapping[str, np.ndarray], layer: int, history=None) -> np.ndarray:
        """P(stop) (B,) for the B still-running examples at ``layer``, from their ONLINE features (name →
        (B,) array; ``layer``/``layer_frac`` may be omitted). Equals ``predict_proba`` on the same rows of
        a feature table. The CRF needs ``history``: the runner's list of earlier checks (dicts with
        ``layer``, ``rows`` and the features of the rows running then), or a dict feature → (B, t) array of
        these rows' features at the earlier checked layers ``min_layer..layer-1``."""
        self._check_fitted()
        if self.classifier == "crf":
            return self._crf_online(features, layer, history)
        return self._stop_proba_matrix(self._matrix(features, layer))

    # ---- the stopping rule ---------------------------------------------------------------------------------
    def stop_matrix(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(examples (n,), P(stop) (n, L+1)); NaN where the table has no row (cached per table object).

        Every replay goes through here (``exit_layers``, ``simulate``, ``threshold_sweep``, ``compare_policies``,
        the explorer): ``PolicyModelMismatchError`` when ``table`` comes from another model or carries other
        label words than the policy was fitted with (``check_policy_model``)."""
        check_policy_model(self, table)
        cache = getattr(self, "_proba_cache", None)
        key = (id(table), len(table), self.min_layer)
        if cache is not None and key in cache and cache[key][0] is table:
            return cache[key][1], cache[key][2]
        proba = self.stop_proba(table)
        examples, P = _pivot(table, proba)
        if cache is not None:
            cache.clear()
            cache[key] = (table, examples, P)
        return examples, P

    def exit_layers(self, table: pd.DataFrame, threshold: float | None = None) -> np.ndarray:
        """Exit layer per example (n_examples,), examples in ascending id order: the first layer
        ``>= min_layer`` whose P(stop) ``>= threshold`` (default ``self.threshold``), else L. ``ValueError`` for
        a threshold outside ``threshold_range``; ``PolicyModelMismatchError`` as in ``stop_matrix``."""
        if threshold is not None:
            low, high = self.threshold_range
            threshold = check_threshold(threshold, low=low, high=high)
        _, P = self.stop_matrix(table)
        return first_exit(P, self.threshold if threshold is None else threshold, self.min_layer)

    # ---- transfer, persistence ---------------------------------------------------------------------------
    def for_task(self, table: pd.DataFrame) -> ExitPolicy:
        """A copy that runs on another task of the same model: the classifier is unchanged, the task, label
        words and calibration offsets (needed online) are those of ``table`` (a feature table)."""
        self._check_fitted()
        # the model must match (PolicyModelMismatchError); the label words are what this copy swaps
        _refuse_other_model(_fitted_identity(self), _model_identity(table), "this policy was fitted on",
                            PolicyModelMismatchError)
        other = copy.copy(self)
        other.metadata_ = {**self.metadata, "task": table.attrs.get("task"),
                           "label_words": table.attrs.get("label_words"), "label_names": table.attrs.get("label_names"),
                           "calibration": table.attrs.get("calibration"),
                           "calibration_method": (table.attrs.get("calibration") or {}).get("method"),
                           "calibration_offsets": (table.attrs.get("calibration") or {}).get("offsets"),
                           "fitted_task": self.metadata.get("fitted_task", self.metadata.get("task"))}
        other._proba_cache = {}
        return other

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_proba_cache"] = {}
        return state

    def save(self, path: str | Path) -> Path:
        """One pickle (policy + metadata), written atomically, and a readable ``<path>.json`` sidecar."""
        self._check_fitted()
        path = Path(path)
        payload = {"format_version": POLICY_FORMAT_VERSION, "metadata": self.metadata, "policy": self}
        atomic_write_bytes(path, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
        sidecar = {k: v for k, v in self.metadata.items() if k not in ("calibration", "calibration_offsets")}
        atomic_write_text(path.with_name(path.name + ".json"), json.dumps(sidecar, indent=2, default=str))
        return path

    @classmethod
    def load(cls, path: str | Path, model=None) -> ExitPolicy:
        """Read a saved policy (a pickle: load only files you trust). With ``model`` (a ``LensModel`` or its
        ``cache_id``), refuse a policy fitted on another model: its features and calibration would not match."""
        with open(path, "rb") as f:
            payload = pickle.load(f)
        if not isinstance(payload, dict) or payload.get("format_version") != POLICY_FORMAT_VERSION:
            raise ValueError(f"{path} is not an ExitPolicy file of format {POLICY_FORMAT_VERSION}")
        policy = payload["policy"]
        if model is not None:
            if policy.metadata.get("model_cache_id") is None:
                import warnings

                warnings.warn(f"{path}: the policy records no model (fitted on a table without attrs); "
                              "cannot check it matches", stacklevel=2)
            try:
                check_policy_model(policy, model)
            except PolicyModelMismatchError as err:
                raise PolicyModelMismatchError(f"{path}: {err}") from None
        return policy


# ---------------------------------------------------------------------------------------------------------
# The stopping rule on whole trajectories, and its replay


def _group_splits(groups: np.ndarray, labels: np.ndarray, seed, n_splits: int = 5) -> list:
    """Platt-scaling folds over *examples* (``GroupKFold``), so no example's layers calibrate its own
    scores; fewer folds when there are few examples."""
    from sklearn.model_selection import GroupKFold

    k = int(min(n_splits, len(np.unique(groups))))
    if k < 2:
        raise ValueError("the SVM's probability calibration needs at least 2 training examples")
    return list(GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(labels, labels, groups=groups))


def _subsample_examples(groups: np.ndarray, max_rows: int, seed) -> np.ndarray:
    """Bool mask keeping whole examples, drawn at random, up to ``max_rows`` rows."""
    unique = np.unique(groups)
    per = len(groups) / len(unique)
    keep_n = max(2, int(max_rows // per))
    chosen = np.random.default_rng(seed).choice(unique, min(keep_n, len(unique)), replace=False)
    return np.isin(groups, chosen)


def first_exit(stop_proba: np.ndarray, threshold: float, min_layer: int = 1) -> np.ndarray:
    """``stop_proba`` (n, L+1) → exit layer (n,): the first layer ``>= min_layer`` with proba ``>=
    threshold``, else L. NaN never stops."""
    P = np.asarray(stop_proba, dtype=np.float64)
    L = P.shape[1] - 1
    with np.errstate(invalid="ignore"):
        ok = P >= threshold
    ok[:, : max(int(min_layer), 0)] = False
    ok[:, L] = True
    return ok.argmax(1)


def _pivot(table: pd.DataFrame, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(examples (n,), matrix (n, L+1)) of per-row ``values``; NaN where a row is missing."""
    L = n_layers_of(table)
    examples, inverse = np.unique(table["example"].to_numpy(), return_inverse=True)
    M = np.full((len(examples), L + 1), np.nan)
    M[inverse, table["layer"].to_numpy()] = values
    return examples, M


def _per_example(table: pd.DataFrame) -> dict[str, np.ndarray]:
    _, pred = _pivot(table, table["pred"].to_numpy(dtype=np.float64))
    first = table.drop_duplicates("example").sort_values("example")
    return {"pred": pred, "gold": first["gold"].to_numpy(), "final_pred": first["final_pred"].to_numpy()}


def simulate_exits(table: pd.DataFrame, exits: np.ndarray, *, ci: float | None = None, n_boot: int = 2000,
                   seed: int = 0) -> dict:
    """Replay given exit layers (n_examples,) on a feature table: ``layers_saved`` = 1 − mean(exit)/L,
    ``accuracy`` (decision at the exit layer vs gold), ``consistency`` (vs the full model), ``full_accuracy``,
    ``accuracy_change_pts`` (100 × difference), ``mean_exit_layer``, ``n``, ``L``. With ``ci`` (e.g. 0.95),
    also ``change_ci_low``/``change_ci_high``: a paired bootstrap interval (over examples, ``n_boot``
    resamples) of the accuracy change in points — how much of it n can resolve.

    ``ValueError`` for exits that are not integers in 0..L, one per example of the table, for ``ci`` outside
    (0, 1) or ``n_boot`` < 1."""
    L = n_layers_of(table)
    ex = _per_example(table)
    exits = check_exit_layers(exits, L, "exits", n_examples=len(ex["gold"]))
    check_number(ci, "ci", low=0.0, high=1.0, none_ok=True)
    check_int(n_boot, "n_boot", low=1)
    at_exit = ex["pred"][np.arange(len(exits)), exits]
    if np.isnan(at_exit).any():
        raise ValueError("some exit layers have no row in the table")
    accuracy = float((at_exit == ex["gold"]).mean())
    full = float((ex["final_pred"] == ex["gold"]).mean())
    out = {"layers_saved": float(1 - exits.mean() / L), "accuracy": accuracy,
           "consistency": float((at_exit == ex["final_pred"]).mean()), "full_accuracy": full,
           "accuracy_change_pts": 100 * (accuracy - full), "mean_exit_layer": float(exits.mean()),
           "n": int(len(exits)), "L": int(L)}
    if ci:
        diff = (at_exit == ex["gold"]).astype(float) - (ex["final_pred"] == ex["gold"]).astype(float)
        idx = np.random.default_rng(seed).integers(0, len(diff), size=(n_boot, len(diff)))
        lo, hi = np.quantile(diff[idx].mean(1), [(1 - ci) / 2, (1 + ci) / 2])
        out.update(change_ci_low=100 * float(lo), change_ci_high=100 * float(hi))
    return out


def simulate(policy: ExitPolicy, table: pd.DataFrame, threshold: float | None = None, **kwargs) -> dict:
    """``simulate_exits`` of the policy's own exits (at ``threshold``, default its own) on ``table``:
    what early exit would give, computed from the trace before any real early-exit run.
    ``PolicyModelMismatchError`` when ``table`` is of another model or task (``check_policy_model``);
    ``ValueError`` for a threshold outside the policy's ``threshold_range``."""
    return simulate_exits(table, policy.exit_layers(table, threshold), **kwargs)


def oracle_exit_layers(source) -> np.ndarray:
    """The oracle exits (n,): the earliest layer whose decision equals the final one and stays.
    ``source``: a ``TaskTrace`` (its ``earliest_consistent_layer``) or a feature table (``oracle_exit``)."""
    if isinstance(source, pd.DataFrame):
        return source.drop_duplicates("example").sort_values("example")["oracle_exit"].to_numpy()
    return np.asarray(source.earliest_consistent_layer())


def _sweep(table: pd.DataFrame, P: np.ndarray, thresholds: Sequence[float], min_layer: int) -> pd.DataFrame:
    rows = []
    for t in thresholds:
        rows.append({"threshold": float(t), **simulate_exits(table, first_exit(P, t, min_layer))})
    return pd.DataFrame(rows)


def threshold_sweep(policy: ExitPolicy, table: pd.DataFrame, thresholds: Sequence[float] | None = None) -> pd.DataFrame:
    """One row per threshold: ``simulate`` metrics of ``policy`` on ``table`` (stop probabilities computed
    once). Columns: threshold, layers_saved, accuracy, consistency, full_accuracy, accuracy_change_pts, ...
    ``ValueError`` for an empty grid or a threshold outside the policy's ``threshold_range``;
    ``PolicyModelMismatchError`` when ``table`` is of another model or task."""
    thresholds = _threshold_grid(policy, thresholds)
    _, P = policy.stop_matrix(table)
    return _sweep(table, P, thresholds, policy.min_layer)


def _threshold_grid(policy: ExitPolicy, thresholds: Sequence[float] | None) -> list[float]:
    """``thresholds`` (default ``DEFAULT_THRESHOLDS``) checked against the policy's ``threshold_range``."""
    if thresholds is None:
        return list(DEFAULT_THRESHOLDS)
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, (Sequence, np.ndarray)):
        raise ValueError(f"thresholds must be a sequence of numbers, not {thresholds!r}")
    if len(thresholds) == 0:
        raise ValueError("thresholds is empty: give at least one threshold (or None for the default grid)")
    low, high = policy.threshold_range
    return [check_threshold(t, "each threshold", low=low, high=high) for t in thresholds]


_OOF_CACHE: "OrderedDict[tuple, tuple]" = OrderedDict()  # (table id, params, cv, seed) -> (table, P)
_OOF_CACHE_SIZE = 64


def out_of_fold_stop_matrix(policy: ExitPolicy, table: pd.DataFrame, cv: int = 5, seed: int = 0) -> np.ndarray:
    """P(stop) (n, L+1) of every train example from a clone fitted on the *other* examples (``GroupKFold``
    over examples): an honest stand-in for unseen data when tuning on the train table.

    Memoised per table object and policy parameters (the threshold excepted): choosing thresholds by two
    criteria, or re-tuning an identical policy, refits nothing. Tables are treated as immutable: do not
    modify one in place after tuning on it."""
    params = {k: v for k, v in policy.get_params().items() if k != "threshold"}
    key = (id(table), len(table), repr(sorted(params.items())), cv, seed)
    hit = _OOF_CACHE.get(key)
    if hit is not None and hit[0] is table:
        _OOF_CACHE.move_to_end(key)
        return hit[1].copy()
    P = _out_of_fold(policy, table, cv, seed)
    _OOF_CACHE[key] = (table, P)
    while len(_OOF_CACHE) > _OOF_CACHE_SIZE:
        _OOF_CACHE.popitem(last=False)
    return P.copy()


def _out_of_fold(policy: ExitPolicy, table: pd.DataFrame, cv: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import GroupKFold

    proba = np.full(len(table), np.nan)
    groups = table["example"].to_numpy()
    for fit_idx, held_idx in GroupKFold(n_splits=cv, shuffle=True, random_state=seed).split(table, groups=groups):
        est = clone(policy).fit(table.iloc[fit_idx])
        proba[held_idx] = est.stop_proba(table.iloc[held_idx])
    return _pivot(table, proba)[1]


def choose_threshold(policy: ExitPolicy, train_table: pd.DataFrame, *, max_loss: float = 0.01,
                     metric: str = "accuracy", thresholds: Sequence[float] | None = None,
                     cv: int | None = 5, seed: int = 0) -> tuple[float, pd.DataFrame]:
    """The threshold that saves the most layers while losing at most ``max_loss`` (0.01 = 1 point) of
    ``metric`` ("accuracy" vs the full model's accuracy, or "consistency" vs 1) on the TRAIN table — never
    tune on test. With ``cv``, stop probabilities are out-of-fold (``out_of_fold_stop_matrix``; a fitted
    classifier is over-confident on its own training rows); ``cv=None`` uses the fitted policy in-sample.
    Ties go to the higher (more cautious) threshold. Returns (threshold, the train sweep).

    ``ValueError`` for ``max_loss`` outside [0, 1], an unknown ``metric``, a bad threshold grid or ``cv`` not
    None / an integer >= 2; ``PolicyModelMismatchError`` when ``train_table`` is of another model or task."""
    if not isinstance(policy, ExitPolicy):
        raise TypeError(f"choose_threshold takes an ExitPolicy, not {type(policy).__name__}")
    check_number(max_loss, "max_loss", low=0.0, high=1.0, allowed="a number in [0, 1] (0.01 = 1 point)")
    check_choice(metric, "metric", ("accuracy", "consistency"))
    check_int(cv, "cv", low=2, none_ok=True, allowed="None (in-sample) or an integer >= 2 (folds)")
    thresholds = _threshold_grid(policy, thresholds)
    check_policy_model(policy, train_table)
    if cv and policy.classifier != "threshold":
        P = out_of_fold_stop_matrix(policy, train_table, cv=cv, seed=seed)
    else:
        P = policy.stop_matrix(train_table)[1]
    sweep = _sweep(train_table, P, thresholds, policy.min_layer)
    if metric == "accuracy":
        ok = sweep["accuracy"] >= sweep["full_accuracy"] - max_loss - 1e-12
    elif metric == "consistency":
        ok = sweep["consistency"] >= 1 - max_loss - 1e-12
    else:
        raise ValueError(f"metric must be 'accuracy' or 'consistency', not {metric!r}")
    candidates = sweep[ok]
    best = candidates.sort_values(["layers_saved", "threshold"], ascending=[False, False]).iloc[0]
    sweep["chosen"] = sweep["threshold"] == best["threshold"]
    return float(best["threshold"]), sweep


def tune_threshold(policy: ExitPolicy, train_table: pd.DataFrame, **kwargs) -> ExitPolicy:
    """A copy of the fitted ``policy`` with ``threshold`` from ``choose_threshold`` (kwargs passed on);
    the train sweep is kept as ``threshold_selection_``."""
    threshold, sweep = choose_threshold(policy, train_table, **kwargs)
    tuned = copy.copy(policy)
    tuned.threshold = threshold
    tuned.threshold_selection_ = sweep
    tuned._proba_cache = {}
    return tuned


def compare_policies(policies: Mapping[str, ExitPolicy], train_table: pd.DataFrame, test_table: pd.DataFrame, *,
                     max_loss: float = 0.01, metric: str = "accuracy", cv: int | None = 5,
                     oracle: bool = True, ci: float | None = 0.95) -> pd.DataFrame:
    """Each fitted policy at the threshold chosen on ``train_table`` (``choose_threshold``), evaluated on
    ``test_table``; plus the oracle. One row per policy: name, classifier, features, label_scheme, threshold,
    train_layers_saved, train_accuracy_change_pts, then the test metrics of ``simulate_exits`` (with the
    bootstrap interval of the accuracy change when ``ci``). ``TypeError`` for a policy that is not an
    ``ExitPolicy``, ``NotFittedError`` for an unfitted one; the rest as ``choose_threshold`` and ``simulate``."""
    if not isinstance(policies, Mapping):
        raise TypeError(f"policies must be a mapping name -> fitted ExitPolicy, not {type(policies).__name__}")
    rows = []
    for name, policy in policies.items():
        if not isinstance(policy, ExitPolicy):
            raise TypeError(f"policy {name!r} is a {type(policy).__name__}, not an ExitPolicy")
        policy._check_fitted()
        threshold, sweep = choose_threshold(policy, train_table, max_loss=max_loss, metric=metric, cv=cv)
        chosen = sweep[sweep["chosen"]].iloc[0]
        rows.append({"policy": name, "classifier": policy.classifier, "features": "+".join(policy.features_),
                     "label_scheme": policy.label_scheme, "threshold": threshold,
                     "train_layers_saved": chosen["layers_saved"],
                     "train_accuracy_change_pts": chosen["accuracy_change_pts"],
                     **simulate(policy, test_table, threshold, ci=ci)})
    if oracle:
        rows.append({"policy": "oracle", "classifier": "oracle", "features": "", "label_scheme": "",
                     "threshold": np.nan, "train_layers_saved": np.nan, "train_accuracy_change_pts": np.nan,
                     **simulate_exits(test_table, oracle_exit_layers(test_table), ci=ci)})
    return pd.DataFrame(rows)
