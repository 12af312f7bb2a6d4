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


#: Written answers to the exercises' "why" questions (the functions above compute the numbers).
WHY = {
    1: "`correct` compares a layer's decision with the gold label, so it needs labelled training data; `consistent` "
       "and `settled` compare it with the full model's own final decision, which the model produces for any "
       "unlabelled prompt. The per-layer AUCs differ where the full model is wrong: there a settled layer is "
       "'incorrect', so `correct` rewards layers that are right even where the final layer is not.",
    2: "With raw decisions one label word takes most predictions (chapter 01's most_frequent_label_share), so the "
       "raw label gap mostly measures that shared bias, not how sure the model is about this input; whether the "
       "pooled AUC for `settled` drops or holds depends on how much of the ranking the bias leaves — the checker "
       "prints the share beside your number. Batch calibration removes the shared offset, so the gap ranks "
       "inputs again.",
    3: "An online feature may only use layers computed so far; the change of label_gap needs one number per "
       "example kept from the previous layer, so the real runner can afford it.",
}
