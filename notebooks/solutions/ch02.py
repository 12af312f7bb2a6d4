"""Solutions to chapter 02's exercises. Each takes the objects the notebook has and returns the answer."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

import adainfer_lib as ai


def _pooled_auc(table, feature: str, label: str) -> float:
    """ROC AUC of ``feature`` for ``label`` over the rows of the decision layers 1..L-1 (NaN with one class)."""
    last = table.attrs.get("n_layers", table.layer.max())
    rows = table[(table.layer >= 1) & (table.layer < last)].dropna(subset=[feature])
    positive = rows[label].astype(bool)
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, rows[feature]))


def exercise_1(table) -> float:
    """Pooled AUC of label_gap for the ``correct`` label scheme."""
    return _pooled_auc(table, "label_gap", "correct")


def exercise_2(tt) -> float:
    """Pooled AUC of label_gap for ``settled`` when the decisions are raw (uncalibrated)."""
    return _pooled_auc(ai.feature_table(tt.with_calibration("raw")), "label_gap", "settled")


def exercise_3(table) -> dict:
    """The change of label_gap from the previous layer (NaN at layer 0), and whether its pooled AUC for
    ``settled`` is further from 0.5 than cos_prev's."""
    change = table.groupby("example")["label_gap"].diff()
    mine = _pooled_auc(table.assign(change=change), "change", "settled")
    baseline = _pooled_auc(table, "cos_prev", "settled")
    return {"label_gap_change": change, "beats_cos_prev": bool(np.abs(mine - 0.5) > np.abs(baseline - 0.5))}
