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
  bin per feature (fitted on the training rows). The stop probability at layer l is the CRF's filtering
  marginal over the prefix ``min_layer..l`` (``crf.CRFScorer``): no future layer, so replay and runner agree.
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

``ExitPolicy`` is an ``ExitRule`` (``rules.py``): a small estimator over a scorer (``scorers.SklearnScorer``,
``scorers.FeatureScorer`` or ``crf.CRFScorer``) plus the stopping rule. It knows its model: ``fitted_for``
records the model cache id, layer count, task and label words of the fitting table, and
``identity.check_rule_model`` refuses another model, trace or task (``PolicyModelMismatchError`` naming both);
``run_early_exit`` and every replay (through ``ExitPolicy.stop_matrix``) call it. Replays and threshold
tuning are in ``tuning.py``; saving and loading (no pickle) in ``persistence.py``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from ..common.checks import THRESHOLD_RANGE, check_choice, check_int, check_min_layer, check_number, check_threshold
from ..common.replay import first_exit, n_layers_of, pivot_layers
from ..data.calibration import Calibration
from ..features.online import FULL_VOCAB_FEATURES, LABEL_SCHEMES, ONLINE_FEATURES, UNIT_INTERVAL_FEATURES
from ..model.identity import ModelIdentity, PolicyModelMismatchError, check_rule_model, identity_of, refuse_other_model
from .crf import CRFScorer
from .interface import OnlineState
from .persistence import PolicyState, check_loaded_model, load_policy, save_state
from .scorers import FeatureScorer, SklearnScorer

POLICY_FORMAT_VERSION = 2
CLASSIFIERS = ("svm", "crf", "logistic", "threshold")
PAPER_FEATURES = ("gap", "top_prob")
DEFAULT_THRESHOLD_FEATURE = "label_gap"
#: Default threshold grid of sweeps and threshold choice (1.01 = never stop early).
DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.0, 1.0001, 0.01), 2)) + (1.01,)
#: ``DEFAULT_THRESHOLDS`` refined near 1 (0.900, 0.901, ..., 0.999, 0.9995, 0.9999), where a learned reader's
#: confidences crowd (chapter 08, ``benchmarks/reader_exits.py``).
CONFIDENCE_THRESHOLDS = tuple(sorted(set(DEFAULT_THRESHOLDS) | {round(float(t), 4) for t in np.arange(0.9, 1.0, 0.001)}
                                     | {0.9995, 0.9999}))


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
        reasons = f" ({'; '.join(why)})" if why else ""
        raise ValueError(f"feature(s) {bad} cannot drive an exit policy{reasons}; use some of ONLINE_FEATURES = "
                         f"{ONLINE_FEATURES}")
    return features


def _provenance(table: pd.DataFrame) -> dict:
    """What a feature table says about where it comes from (the ``attrs`` ``feature_table`` writes)."""
    attrs = table.attrs
    return {"model": attrs.get("model"), "model_cache_id": attrs.get("model_cache_id"), "weights": attrs.get("weights"),
            "task": attrs.get("task"), "split": attrs.get("split"), "prompts_key": attrs.get("prompts_key"),
            "label_words": attrs.get("label_words"),
            "label_names": attrs.get("label_names"),
            "calibration_method": (attrs.get("calibration") or {}).get("method"), "reader": attrs.get("reader")}


def _table_calibration(table: pd.DataFrame) -> Calibration | None:
    cal = table.attrs.get("calibration")
    return Calibration.from_dict(cal) if cal else None


def feature_matrix(source, features: Sequence[str], *, layer: int | None = None,
                   n_layers: int | None = None) -> np.ndarray:
    """(rows, k) float64 matrix of ``features`` from a feature table or an online feature dict (name → (B,)
    array; ``layer`` / ``layer_frac`` are filled from ``layer`` and ``n_layers`` when missing). ``cos_prev`` is
    NaN at layer 0 (no previous state): filled with 0, offline and online alike. ``KeyError`` for a missing
    feature, ``ValueError`` naming features with NaN or infinite values."""
    if isinstance(source, pd.DataFrame):
        n = len(source)
    else:
        # read only the features asked for: an online mapping computes a feature when it is read
        lengths = [np.size(source[k]) for k in features if k in source]
        n = max(lengths) if lengths else (len(source[next(iter(source))]) if source else 0)
    columns = [_feature_column(source, f, layer, n, n_layers) for f in features]
    X = np.column_stack(columns) if n else np.zeros((0, len(features)))
    finite = np.isfinite(X).all(axis=0)
    bad = [f for f, ok in zip(features, finite) if not ok]
    if bad:
        hint = ""
        if set(bad) & set(FULL_VOCAB_FEATURES):
            hint = (" — full-vocabulary features are NaN when the task was traced with full_vocab=False: "
                    "trace with full_vocab=True, or use label_gap / label_top_prob")
        raise ValueError(f"feature(s) {bad} have NaN or infinite values{hint}")
    return X


def _feature_column(source, name: str, layer: int | None, n: int, n_layers: int | None) -> np.ndarray:
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
    elif name == "layer_frac" and layer is not None and n_layers:
        values = np.full(n, layer / n_layers)
    else:
        raise KeyError(f"online features lack {name!r} (have {sorted(source)})")
    return np.nan_to_num(values, nan=0.0) if name == "cos_prev" else values


def training_rows(X: pd.DataFrame, y, *, label_scheme: str, min_layer: int,
                  both_classes: bool) -> tuple[pd.DataFrame, np.ndarray]:
    """The decision rows (``min_layer <= layer < L``) of the feature table ``X`` and their 0/1 labels
    (``X[label_scheme]`` unless ``y``). ``TypeError`` / ``ValueError`` naming what is missing or wrong; with
    ``both_classes``, a ``ValueError`` when every label is the same."""
    if not isinstance(X, pd.DataFrame):
        raise TypeError("ExitPolicy.fit takes a feature table (pandas DataFrame from features.feature_table)")
    missing = [c for c in ("example", "layer", *([label_scheme] if y is None else [])) if c not in X.columns]
    if missing:
        raise ValueError(f"the table lacks column(s) {missing}: ExitPolicy.fit takes a feature table "
                         "(features.feature_table)")
    L = n_layers_of(X)
    mask = ((X["layer"] >= min_layer) & (X["layer"] < L)).to_numpy()
    labels = X[label_scheme].to_numpy() if y is None else np.asarray(y)
    if len(labels) != len(X):
        raise ValueError(f"y has {len(labels)} values for {len(X)} rows")
    part, labels = X[mask], labels[mask].astype(int)
    if len(part) == 0:
        raise ValueError(f"no decision rows (min_layer={min_layer} <= layer < L={L}) to fit on")
    if both_classes and len(np.unique(labels)) < 2:
        raise ValueError(f"the {label_scheme!r} labels of the training rows are all {labels[0]}: "
                         "a classifier needs both classes (more examples, or another label scheme)")
    return part, labels


def fit_metadata(policy, X: pd.DataFrame, part: pd.DataFrame, labels: np.ndarray) -> dict:
    """What a fitted policy records about itself and its fitting table (``ExitPolicy.metadata``)."""
    import sklearn

    from .. import __version__

    params = {k: (v if isinstance(v, (str, int, float, bool, type(None))) else repr(v))
              for k, v in policy.get_params().items()}
    return {"format_version": POLICY_FORMAT_VERSION, "classifier": policy.classifier,
            "features": list(policy.features_), "label_scheme": policy.label_scheme, "params": params,
            **_provenance(X), "n_layers": int(n_layers_of(X)),
            "n_train_examples": int(part["example"].nunique()), "n_train_rows": int(len(part)),
            "train_positive_rate": float(labels.mean()), "adainfer_version": __version__,
            "sklearn_version": sklearn.__version__}


def fit_scorer(policy, matrix: np.ndarray, part: pd.DataFrame, labels: np.ndarray):
    """The scorer ``policy`` fits on the decision rows ``part`` (feature ``matrix``, 0/1 ``labels``): a
    ``FeatureScorer`` (threshold), ``CRFScorer`` (its sklearn-crfsuite model kept as ``policy.crf_``) or
    ``SklearnScorer`` (SVM, logistic)."""
    examples = part["example"].to_numpy()
    if policy.classifier == "threshold":
        return FeatureScorer()
    if policy.classifier == "crf":
        scorer, policy.crf_ = CRFScorer.fit(
            matrix, examples, part["layer"].to_numpy(), labels, features=policy.features_, bins=policy.crf_bins,
            c1=policy.c1, c2=policy.c2, max_iterations=policy.max_iterations, **policy._classifier_extras())
        return scorer
    return SklearnScorer.fit(policy, matrix, examples, labels, policy._classifier_extras())


def check_policy_params(policy) -> tuple[str, ...]:
    """Check every parameter of an ``ExitPolicy`` (``ValueError`` naming the bad value and what is allowed);
    returns the resolved features."""
    check_choice(policy.classifier, "classifier", CLASSIFIERS)
    check_choice(policy.label_scheme, "label_scheme", LABEL_SCHEMES)
    check_choice(policy.svm, "svm", ("svc", "linear"))
    features = policy.resolved_features
    if policy.classifier == "threshold" and len(features) != 1:
        raise ValueError(f"the threshold classifier uses exactly one feature, got {features}")
    low, high = policy.threshold_range
    check_threshold(policy.threshold, low=low, high=high)
    check_min_layer(policy.min_layer)
    check_number(policy.C, "C", positive=True)
    check_int(policy.max_train_rows, "max_train_rows", low=2, none_ok=True)
    check_number(policy.c1, "c1", low=0.0)
    check_number(policy.c2, "c2", low=0.0)
    check_int(policy.max_iterations, "max_iterations", low=1)
    check_int(policy.crf_bins, "crf_bins", low=0, none_ok=True)
    return features


def moved_to_task(policy, table: pd.DataFrame):
    """``ExitPolicy.for_task``: a copy of the fitted ``policy`` with the task, label words and calibration of
    ``table``; ``PolicyModelMismatchError`` when ``table`` is of another model."""
    refuse_other_model(policy.fitted_for, identity_of(table), "this policy was fitted on", PolicyModelMismatchError)
    other = copy.copy(policy)
    source = _provenance(table)
    moved = {k: source[k] for k in ("task", "label_words", "label_names", "calibration_method")}
    other.metadata_ = {**policy.metadata, **moved,
                       "fitted_task": policy.metadata.get("fitted_task", policy.metadata.get("task"))}
    other.calibration_ = _table_calibration(table)
    return other


class ExitPolicy(ClassifierMixin, BaseEstimator):
    """An AdaInfer exit classifier + stopping rule over feature-table rows (see the module docstring).

    Parameters: ``classifier`` ("svm" | "crf" | "logistic" | "threshold"); ``features`` (None → the
    paper's ``("gap", "top_prob")``, or ``("label_gap",)`` for "threshold"); ``label_scheme``
    ("consistent" | "correct" | "settled"); ``threshold`` and ``min_layer`` of the stopping rule; SVM /
    logistic: ``C``, ``kernel``, ``gamma``, ``class_weight``, ``svm`` ("svc" | "linear"), ``max_train_rows``;
    CRF: ``c1``, ``c2``, ``max_iterations``, ``crf_bins`` (None: floats only); ``random_state``; any other
    keyword is passed to the underlying estimator's constructor.

    ``fit(table)`` reads the labels from ``table[label_scheme]`` (or ``y``, aligned with the rows) and what a
    runner needs (model identity, task, label words, calibration) from the table's provenance (``attrs``).
    ``predict_proba(table)`` → (rows, 2), column 1 = P(stop); ``predict`` → 1 where P(stop) >= threshold.
    Fitted state: ``features_``, ``scorer_``, ``calibration_``, ``metadata_``.

    The constructor and ``set_params`` check every parameter (``ValueError`` naming the bad value and what is
    allowed: ``threshold`` in ``threshold_range``, ``min_layer`` an integer >= 0, known ``classifier`` /
    ``label_scheme`` / ``svm``, positive ``C``, ...). Replays refuse a table of another model or task, and
    ``run_early_exit`` another model (``check_rule_model``: ``PolicyModelMismatchError``).
    """

    def __init__(self, classifier: str = "svm", features: Sequence[str] | None = None,
                 label_scheme: str = "consistent", threshold: float = 0.5, min_layer: int = 1, *,
                 C: float = 1.0, kernel: str = "rbf", gamma="scale", class_weight=None, svm: str = "svc",
                 max_train_rows: int | None = 20000, c1: float = 0.05, c2: float = 0.01,
                 max_iterations: int = 200, crf_bins: int | None = 8, random_state: int | None = 0,
                 **classifier_params):
        params = {k: v for k, v in locals().items() if k not in ("self", "classifier_params", "__class__")}
        for key, value in {**params, **classifier_params}.items():
            setattr(self, key, value)
        self._extra_params = tuple(sorted(classifier_params))
        # Fail early on what can never work (sklearn re-validates in fit).
        self._validate()

    # ---- sklearn plumbing and parameter checks ---------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict:
        params = super().get_params(deep=deep)
        params.update(self._classifier_extras())
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
        return check_policy_params(self)

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

    # ---- what the ExitRule interface reads -------------------------------------------------------------------
    @property
    def metadata(self) -> dict:
        """Where the policy comes from (empty before ``fit``): classifier, features, parameters, the model,
        task and split of the fitting table, label words and names, calibration method, training size,
        versions. JSON-serialisable (it is the saved policy's readable part)."""
        return getattr(self, "metadata_", {})

    @property
    def calibration(self) -> Calibration | None:
        """The ``Calibration`` (method + offsets (L+1, C)) of the fitting table, for online label features."""
        return getattr(self, "calibration_", None)

    @property
    def label_words(self) -> list[str] | None:
        return self.metadata.get("label_words")

    @property
    def fitted_for(self) -> ModelIdentity:
        """The model and task the policy was fitted on (empty before ``fit``)."""
        return ModelIdentity.from_dict(self.metadata)

    def with_threshold(self, threshold: float) -> ExitPolicy:
        """A copy of the fitted policy at another ``threshold`` (checked against ``threshold_range``)."""
        low, high = self.threshold_range
        out = copy.copy(self)
        out.threshold = check_threshold(threshold, low=low, high=high)
        return out

    # ---- feature matrices ------------------------------------------------------------------------------------
    def _matrix(self, source, layer: int | None = None) -> np.ndarray:
        features = self.features_ if hasattr(self, "features_") else self.resolved_features
        return feature_matrix(source, features, layer=layer, n_layers=self.metadata.get("n_layers"))

    def decision_rows(self, table: pd.DataFrame) -> pd.DataFrame:
        """The rows a decision is made at: ``min_layer <= layer < L`` (training and importance use these)."""
        L = n_layers_of(table)
        layer = table["layer"].to_numpy()
        return table[(layer >= self.min_layer) & (layer < L)]

    # ---- fit -------------------------------------------------------------------------------------------------
    def fit(self, X: pd.DataFrame, y=None) -> ExitPolicy:
        """Fit on the decision rows of the feature table ``X`` (labels ``X[label_scheme]`` unless ``y``)."""
        self.features_ = self._validate()
        part, labels = training_rows(X, y, label_scheme=self.label_scheme, min_layer=self.min_layer,
                                     both_classes=self.classifier != "threshold")
        self.classes_ = np.array([0, 1])
        self.n_layers_ = n_layers_of(X)
        self.scorer_ = fit_scorer(self, self._matrix(part), part, labels)
        self.calibration_ = _table_calibration(X)
        self.metadata_ = fit_metadata(self, X, part, labels)
        return self

    # ---- stop probabilities ----------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "scorer_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("this ExitPolicy is not fitted yet: call fit(feature_table) first")

    def stop_proba(self, table: pd.DataFrame) -> np.ndarray:
        """P(stop) of every row of ``table`` (rows,). CRF: rows below ``min_layer`` get 0 (never checked)."""
        self._check_fitted()
        if self.classifier != "crf":
            return self.scorer_.proba(self._matrix(table))
        proba = np.zeros(len(table))
        keep = np.flatnonzero(table["layer"].to_numpy() >= self.min_layer)
        if len(keep):
            sub = table.iloc[keep]
            proba[keep] = self.scorer_.sequence_proba(self._matrix(sub), sub["example"].to_numpy(),
                                                      sub["layer"].to_numpy())
        return proba

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

    def stop_proba_online(self, features: Mapping[str, np.ndarray], layer: int,
                          state: OnlineState | None = None) -> np.ndarray:
        """P(stop) (B,) for the B still-running examples at ``layer``, from their ONLINE features (name → (B,)
        array; ``layer``/``layer_frac`` may be omitted). Equals ``predict_proba`` on the same rows of a feature
        table. The CRF carries its forward messages from one checked layer to the next in ``state`` (the
        runner's ``OnlineState``; ``ValueError`` without it past the first checked layer)."""
        self._check_fitted()
        matrix = self._matrix(features, layer)
        if self.classifier != "crf":
            return self.scorer_.proba(matrix)
        if layer < self.min_layer:
            return np.zeros(len(matrix))
        if state is None:
            state = OnlineState(rows=np.arange(len(matrix)))
        return self.scorer_.online_proba(matrix, layer <= max(self.min_layer, 0), np.asarray(state.rows),
                                         state.memory, ("crf", id(self)))

    # ---- the stopping rule -----------------------------------------------------------------------------------
    def stop_matrix(self, table: pd.DataFrame) -> np.ndarray:
        """P(stop) (n, L+1) of every example of ``table`` (ascending example ids); NaN where the table has no
        row. Every replay goes through here: ``PolicyModelMismatchError`` when ``table`` comes from another
        model or carries other label words than the policy was fitted with (``check_rule_model``)."""
        check_rule_model(self, table)
        return pivot_layers(table, self.stop_proba(table))

    def exit_layers(self, table: pd.DataFrame, threshold: float | None = None) -> np.ndarray:
        """Exit layer per example (n_examples,), examples in ascending id order: the first layer
        ``>= min_layer`` whose P(stop) ``>= threshold`` (default ``self.threshold``), else L. ``ValueError`` for
        a threshold outside ``threshold_range``; ``PolicyModelMismatchError`` as in ``stop_matrix``."""
        if threshold is not None:
            low, high = self.threshold_range
            threshold = check_threshold(threshold, low=low, high=high)
        return first_exit(self.stop_matrix(table), self.threshold if threshold is None else threshold, self.min_layer)

    # ---- transfer, persistence -------------------------------------------------------------------------------
    def for_task(self, table: pd.DataFrame) -> ExitPolicy:
        """A copy that runs on another task of the same model: the classifier is unchanged, the task, label
        words and calibration offsets (needed online) are those of ``table`` (a feature table)."""
        self._check_fitted()
        return moved_to_task(self, table)

    def state(self) -> PolicyState:
        """The fitted policy as plain data (``persistence.PolicyState``); ``NotFittedError`` before ``fit``."""
        self._check_fitted()
        return PolicyState(self.get_params(), tuple(self.features_), int(self.n_layers_), dict(self.metadata),
                           self.calibration, self.scorer_)

    @classmethod
    def from_state(cls, state: PolicyState) -> ExitPolicy:
        """The fitted policy ``state`` describes (the inverse of ``state()``)."""
        policy = cls(**state.params)
        policy.features_, policy.classes_, policy.n_layers_ = tuple(state.features), np.array([0, 1]), state.n_layers
        policy.metadata_, policy.calibration_, policy.scorer_ = dict(state.metadata), state.calibration, state.scorer
        return policy

    def save(self, path: str | Path) -> Path:
        """Save the fitted policy without pickle (``persistence.save_state`` of ``state()``: one zip file, a readable
        ``<path>.json`` beside). ``NotFittedError`` before ``fit``."""
        return save_state(self.state(), path)

    @classmethod
    def load(cls, path: str | Path, model=None) -> ExitPolicy:
        """Read a saved policy (``persistence.load_policy``: a tampered or foreign file, or a field that cannot work,
        is refused with a ``ValueError`` naming file and field). With ``model`` (a ``LensModel`` or its ``cache_id``),
        refuse a policy of another model: its features and calibration would not fit (``PolicyModelMismatchError``)."""
        policy = load_policy(cls.from_state, path)
        check_loaded_model(policy, path, model)
        return policy
