"""Row-wise exit scorers: P(stop) of one layer from that layer's features alone.

- ``SklearnScorer``: a scikit-learn pipeline ``StandardScaler`` → classifier, fitted on the decision rows:
  ``"svm"`` (the paper's): ``SVC(kernel="rbf")`` with Platt-scaled probabilities
  (``CalibratedClassifierCV(method="sigmoid", ensemble=False)``, what ``SVC(probability=True)`` did — that flag
  is deprecated in scikit-learn 1.9), Platt folds ``GroupKFold`` over *examples* so no example's own layers
  calibrate its scores; ``svm="linear"`` uses ``LinearSVC``; ``max_train_rows`` caps the rows (whole examples
  drawn at random: the kernel SVM's cost grows ~ rows²). ``"logistic"``: ``LogisticRegression``.
- ``FeatureScorer``: no learning; the stop "probability" is the value of the single feature.

The CRF, which scores a layer from the whole prefix of layers, is ``crf.CRFScorer``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class FeatureScorer:
    """The single feature's value is the stop score (the threshold classifier)."""

    kind = "threshold"

    def proba(self, matrix: np.ndarray) -> np.ndarray:
        return matrix[:, 0].copy()


@dataclass
class SklearnScorer:
    """A fitted scikit-learn pipeline; ``proba(matrix (rows, k)) -> (rows,)`` P(stop)."""

    estimator: object

    kind = "sklearn"

    def proba(self, matrix: np.ndarray) -> np.ndarray:
        if not len(matrix):
            return np.zeros(0)
        return self.estimator.predict_proba(matrix)[:, 1]

    @classmethod
    def fit(cls, policy, matrix: np.ndarray, examples: np.ndarray, labels: np.ndarray, extras: dict) -> SklearnScorer:
        """Fit ``policy``'s classifier (``"svm"`` or ``"logistic"``, with its ``C``, ``kernel``, ``gamma``,
        ``class_weight``, ``svm``, ``max_train_rows``, ``random_state``; ``extras`` go to the classifier's
        constructor) on the decision rows ``matrix`` of ``examples`` with 0/1 ``labels``."""
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if policy.classifier == "logistic":
            from sklearn.linear_model import LogisticRegression

            model = LogisticRegression(C=policy.C, class_weight=policy.class_weight, max_iter=1000, **extras)
        else:
            from sklearn.calibration import CalibratedClassifierCV
            from sklearn.svm import SVC, LinearSVC

            base = (SVC(C=policy.C, kernel=policy.kernel, gamma=policy.gamma, class_weight=policy.class_weight,
                        **extras)
                    if policy.svm == "svc" else LinearSVC(C=policy.C, class_weight=policy.class_weight, **extras))
            model = CalibratedClassifierCV(base, method="sigmoid", ensemble=False,
                                           cv=group_splits(examples, labels, policy.random_state))
        rows = np.arange(len(matrix))
        if policy.classifier == "svm" and policy.max_train_rows and len(rows) > policy.max_train_rows:
            keep = subsample_examples(examples, policy.max_train_rows, policy.random_state)
            rows = np.flatnonzero(keep)
            model.cv = group_splits(examples[rows], labels[rows], policy.random_state)
        return cls(make_pipeline(StandardScaler(), model).fit(matrix[rows], labels[rows]))


def group_splits(groups: np.ndarray, labels: np.ndarray, seed, n_splits: int = 5) -> list:
    """Platt-scaling folds over *examples* (``GroupKFold``), so no example's layers calibrate its own scores;
    fewer folds when there are few examples. ``ValueError`` with fewer than 2 examples."""
    from sklearn.model_selection import GroupKFold

    k = int(min(n_splits, len(np.unique(groups))))
    if k < 2:
        raise ValueError("the SVM's probability calibration needs at least 2 training examples")
    return list(GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(labels, labels, groups=groups))


def subsample_examples(groups: np.ndarray, max_rows: int, seed) -> np.ndarray:
    """Bool mask keeping whole examples, drawn at random, up to ``max_rows`` rows."""
    unique = np.unique(groups)
    per = len(groups) / len(unique)
    keep_n = max(2, int(max_rows // per))
    chosen = np.random.default_rng(seed).choice(unique, min(keep_n, len(unique)), replace=False)
    return np.isin(groups, chosen)
