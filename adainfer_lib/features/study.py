"""Studying features: how well each tells "stop" from "go on" (AUCs per layer and pooled), how they
correlate, which a fitted policy leans on (permutation importance), what a check costs, and splitting a
feature table by example."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..common.replay import n_layers_of
from .online import FEATURE_COLUMNS


def per_layer_auc(table: pd.DataFrame, feature: str | Sequence[str], label: str = "consistent") -> pd.DataFrame:
    """ROC AUC of ``feature`` (higher = more likely positive) for ``label`` at each layer separately.

    Returns columns ``feature``, ``layer``, ``auc`` (NaN where a layer has one class only or the feature
    is NaN), ``n``, ``positive_rate``. AUC 0.5 = the feature says nothing about the label at that layer.
    """
    from sklearn.metrics import roc_auc_score

    features = [feature] if isinstance(feature, str) else list(feature)
    rows = []
    for name in features:
        for layer, part in table.groupby("layer", sort=True):
            y = part[label].to_numpy().astype(bool)
            x = part[name].to_numpy(dtype=np.float64)
            ok = np.isfinite(x)
            auc = np.nan
            if ok.any() and 0 < y[ok].sum() < ok.sum():
                auc = float(roc_auc_score(y[ok], x[ok]))
            rows.append({"feature": name, "layer": int(layer), "auc": auc, "n": int(ok.sum()),
                         "positive_rate": float(y.mean())})
    return pd.DataFrame(rows)


def feature_auc(table: pd.DataFrame, features: Sequence[str], label: str = "settled", *,
                min_layer: int = 1) -> pd.DataFrame:
    """ROC AUC of each feature for ``label`` pooled over the decision layers ``min_layer <= layer < L`` —
    what one threshold on that feature, applied at every layer, has to work with. Columns ``feature``,
    ``auc`` (below 0.5: lower values mean "stop", e.g. entropy), ``n``; sorted by |auc − 0.5|."""
    from sklearn.metrics import roc_auc_score

    L = n_layers_of(table)
    part = table[(table["layer"] >= min_layer) & (table["layer"] < L)]
    y = part[label].to_numpy().astype(bool)
    rows = []
    for name in features:
        x = part[name].to_numpy(dtype=np.float64)
        ok = np.isfinite(x)
        auc = float(roc_auc_score(y[ok], x[ok])) if ok.any() and 0 < y[ok].sum() < ok.sum() else np.nan
        rows.append({"feature": name, "auc": auc, "n": int(ok.sum())})
    out = pd.DataFrame(rows)
    return out.iloc[np.argsort(-np.abs(out["auc"].fillna(0.5).to_numpy() - 0.5), kind="stable")].reset_index(drop=True)


def lens_check_cost(model, label_words: Sequence[str], *, context: str = "Answer:", batch: int = 1,
                    repeats: int = 30) -> pd.DataFrame:
    """Measured seconds of one exit check at one layer (``lens.lens_stats`` on ``batch`` states): with the
    full vocabulary through the LM head (needed for top_prob, gap, entropy) vs the label-word rows only.
    Median of ``repeats`` timings after one warm-up; also the cost relative to the label-only check. The
    label words are resolved as the tokens that follow ``context`` (a prompt's end, e.g. ``task.prompts()[0]``)."""
    import time

    import torch

    from ..model.lens import lens_stats

    device = model.lens_device  # where the lens computes (the final norm's device; offloaded models included)
    ids = torch.tensor(model.label_token_ids(list(label_words), context), dtype=torch.long, device=device)
    hidden = model.hf_model.config.hidden_size
    dtype = next(model.hf_model.parameters()).dtype
    states = torch.randn(batch, hidden, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if states.is_cuda else (lambda: None)  # time the kernels, not their launch
    rows = []
    for full in (True, False):
        times = []
        with torch.no_grad():
            for i in range(repeats + 1):
                sync()
                t0 = time.perf_counter()
                lens_stats(model, states, ids, full_vocab=full, top_k=1)
                sync()
                if i:
                    times.append(time.perf_counter() - t0)
        rows.append({"check": "full vocabulary" if full else "label words only",
                     "vocab rows": model.vocab_size if full else len(ids), "batch": batch,
                     "seconds (median)": float(np.median(times))})
    out = pd.DataFrame(rows)
    out["× label-only"] = out["seconds (median)"] / out["seconds (median)"].iloc[-1]
    return out


def split_by_example(table: pd.DataFrame, test_size: float = 0.25, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) tables with every example's layers on one side only (``GroupShuffleSplit``,
    groups = ``example``). Use it to hold out examples *within* one traced split; the notebooks fit on the
    task's train split and test on its test split, which are different examples by construction."""
    from sklearn.model_selection import GroupShuffleSplit

    splitter = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train_idx, test_idx = next(splitter.split(table, groups=table["example"]))
    return table.iloc[train_idx].copy(), table.iloc[test_idx].copy()


def feature_correlations(table: pd.DataFrame, features: Sequence[str] | None = None, *,
                         method: str = "spearman", layers: Sequence[int] | None = None) -> pd.DataFrame:
    """Correlation matrix of ``features`` over the rows (optionally only ``layers``); all-NaN features
    (e.g. full-vocabulary ones of a label-only trace) are dropped."""
    features = list(features or [f for f in FEATURE_COLUMNS if f != "layer"])
    part = table if layers is None else table[table["layer"].isin(list(layers))]
    part = part[features].astype(np.float64)
    return part.loc[:, part.notna().any()].corr(method=method)


class _FixedRows:
    """Adapter for permutation importance: scores a matrix of ``features`` columns while the table's other
    columns (``example``, ``layer``, labels) stay as they are, so a sequence model still sees sequences."""

    def __init__(self, policy, table: pd.DataFrame, features: Sequence[str]):
        self.policy, self.table, self.features = policy, table, list(features)

    def fit(self, X, y=None):  # pragma: no cover - permutation_importance never fits
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        frame = self.table.copy()
        frame[self.features] = np.asarray(X, dtype=np.float64)
        return self.policy.predict_proba(frame)


def permutation_importance_table(policy, table: pd.DataFrame, *, label: str | None = None, n_repeats: int = 5,
                                 seed: int = 0, scoring: str = "roc_auc") -> pd.DataFrame:
    """Permutation importance (``sklearn.inspection.permutation_importance``) of each of a *fitted*
    policy's features on ``table``: how much the score drops when one feature's values are shuffled across
    rows. ``scoring``: ``"roc_auc"`` of the stop probability for ``label`` (default: the policy's label
    scheme) or ``"accuracy"`` of ``predict``. Rows are the policy's decision layers (min_layer..L-1).
    Returns ``feature``, ``importance_mean``, ``importance_std``, ``baseline`` sorted by importance."""
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import accuracy_score, roc_auc_score

    features = list(policy.features_)
    label = label or policy.label_scheme
    part = policy.decision_rows(table)
    y = part[label].to_numpy().astype(int)
    threshold = policy.threshold

    def score(estimator, X, y_true):
        proba = estimator.predict_proba(X)[:, 1]
        if scoring == "roc_auc":
            return roc_auc_score(y_true, proba)
        if scoring == "accuracy":
            return accuracy_score(y_true, proba >= threshold)
        raise ValueError(f"scoring must be 'roc_auc' or 'accuracy', not {scoring!r}")

    adapter = _FixedRows(policy, part, features)
    X = part[features].to_numpy(dtype=np.float64)
    result = permutation_importance(adapter, X, y, scoring=score, n_repeats=n_repeats, random_state=seed)
    return pd.DataFrame({
        "feature": features,
        "importance_mean": result.importances_mean,
        "importance_std": result.importances_std,
        "baseline": score(adapter, X, y),
    }).sort_values("importance_mean", ascending=False, ignore_index=True)
