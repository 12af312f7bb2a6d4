"""Replaying an exit policy on a trace, and choosing its threshold — before any real early exit.

``simulate_exits`` / ``simulate`` replay exits on a feature table (``common.replay`` does the arithmetic),
``threshold_sweep`` one row per threshold, ``choose_threshold`` / ``tune_threshold`` pick the threshold on the
TRAIN table (with out-of-fold stop probabilities: a fitted classifier is over-confident on its own training
rows), ``compare_policies`` puts several fitted policies side by side with the oracle.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.base import clone

from ..common.checks import check_choice, check_exit_layers, check_int, check_number, check_threshold
from ..common.replay import Decisions, metrics_at, most_saved_within, oracle_exits, pivot_layers, sweep
from ..model.identity import check_rule_model
from .interface import ExitRule
from .policy import DEFAULT_THRESHOLDS, ExitPolicy


def simulate_exits(table: pd.DataFrame, exits: np.ndarray, *, ci: float | None = None, n_boot: int = 2000,
                   seed: int = 0) -> dict:
    """Replay given exit layers (n_examples,) on a feature table: ``layers_saved`` = 1 − mean(exit)/L,
    ``accuracy`` (decision at the exit layer vs gold), ``consistency`` (vs the full model), ``full_accuracy``,
    ``accuracy_change_pts`` (100 × difference), ``mean_exit_layer``, ``n``, ``L``. With ``ci`` (e.g. 0.95),
    also ``change_ci_low``/``change_ci_high``: a paired bootstrap interval (over examples, ``n_boot``
    resamples) of the accuracy change in points — how much of it n can resolve.

    ``ValueError`` for exits that are not integers in 0..L, one per example of the table, for ``ci`` outside
    (0, 1) or ``n_boot`` < 1."""
    decisions = Decisions.from_table(table)
    exits = check_exit_layers(exits, decisions.n_layers, "exits", n_examples=decisions.n)
    check_number(ci, "ci", low=0.0, high=1.0, none_ok=True)
    check_int(n_boot, "n_boot", low=1)
    out = metrics_at(decisions, exits)
    if ci:
        diff = (decisions.at(exits) == decisions.gold).astype(float) - (decisions.final == decisions.gold).astype(float)
        idx = np.random.default_rng(seed).integers(0, len(diff), size=(n_boot, len(diff)))
        lo, hi = np.quantile(diff[idx].mean(1), [(1 - ci) / 2, (1 + ci) / 2])
        out.update(change_ci_low=100 * float(lo), change_ci_high=100 * float(hi))
    return out


def simulate(policy: ExitPolicy, table: pd.DataFrame, threshold: float | None = None, **kwargs) -> dict:
    """``simulate_exits`` of the policy's own exits (at ``threshold``, default its own) on ``table``:
    what early exit would give, computed from the trace before any real early-exit run.
    ``PolicyModelMismatchError`` when ``table`` is of another model or task (``check_rule_model``);
    ``ValueError`` for a threshold outside the policy's ``threshold_range``."""
    return simulate_exits(table, policy.exit_layers(table, threshold), **kwargs)


def oracle_exit_layers(source) -> np.ndarray:
    """The oracle exits (n,): the earliest layer whose decision equals the final one and stays.
    ``source``: a ``TaskTrace`` or a feature table."""
    decisions = Decisions.from_table(source) if isinstance(source, pd.DataFrame) else Decisions.from_task_trace(source)
    return oracle_exits(decisions.predictions)


def threshold_grid(policy, thresholds: Sequence[float] | None) -> list[float]:
    """``thresholds`` (default ``DEFAULT_THRESHOLDS``) checked against the policy's ``threshold_range``."""
    if thresholds is None:
        return list(DEFAULT_THRESHOLDS)
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, (Sequence, np.ndarray)):
        raise ValueError(f"thresholds must be a sequence of numbers, not {thresholds!r}")
    if len(thresholds) == 0:
        raise ValueError("thresholds is empty: give at least one threshold (or None for the default grid)")
    low, high = policy.threshold_range
    return [check_threshold(t, "each threshold", low=low, high=high) for t in thresholds]


def threshold_sweep(policy, table: pd.DataFrame, thresholds: Sequence[float] | None = None) -> pd.DataFrame:
    """One row per threshold: ``simulate`` metrics of ``policy`` (any ``ExitRule``) on ``table`` (stop
    probabilities computed once). Columns: threshold, layers_saved, accuracy, consistency, full_accuracy,
    accuracy_change_pts, ... ``ValueError`` for an empty grid or a threshold outside the policy's
    ``threshold_range``; ``PolicyModelMismatchError`` when ``table`` is of another model or task."""
    thresholds = threshold_grid(policy, thresholds)
    return sweep(Decisions.from_table(table), policy.stop_matrix(table), thresholds, policy.min_layer)


_OOF_CACHE: "OrderedDict[tuple, np.ndarray]" = OrderedDict()  # (table content, params, cv, seed) -> P
_OOF_CACHE_SIZE = 64


def _table_key(table: pd.DataFrame) -> str:
    """A content key of a feature table: its columns and values (what out-of-fold stop probabilities depend on)."""
    import hashlib

    hashed = pd.util.hash_pandas_object(table, index=True).to_numpy().tobytes()
    return hashlib.sha256(repr(list(table.columns)).encode() + hashed).hexdigest()


def out_of_fold_stop_matrix(policy: ExitPolicy, table: pd.DataFrame, cv: int = 5, seed: int = 0) -> np.ndarray:
    """P(stop) (n, L+1) of every train example from a clone fitted on the *other* examples (``GroupKFold``
    over examples): an honest stand-in for unseen data when tuning on the train table.

    Memoised by the table's content and the policy's parameters (the threshold excepted): choosing thresholds
    by two criteria, or re-tuning an identical policy, refits nothing."""
    params = {k: v for k, v in policy.get_params().items() if k != "threshold"}
    key = (_table_key(table), repr(sorted(params.items())), cv, seed)
    if key not in _OOF_CACHE:
        _OOF_CACHE[key] = _out_of_fold(policy, table, cv, seed)
        while len(_OOF_CACHE) > _OOF_CACHE_SIZE:
            _OOF_CACHE.popitem(last=False)
    _OOF_CACHE.move_to_end(key)
    return _OOF_CACHE[key].copy()


def _out_of_fold(policy: ExitPolicy, table: pd.DataFrame, cv: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import GroupKFold

    proba = np.full(len(table), np.nan)
    groups = table["example"].to_numpy()
    for fit_idx, held_idx in GroupKFold(n_splits=cv, shuffle=True, random_state=seed).split(table, groups=groups):
        est = clone(policy).fit(table.iloc[fit_idx])
        proba[held_idx] = est.stop_proba(table.iloc[held_idx])
    return pivot_layers(table, proba)


def choose_threshold(policy: ExitRule, train_table: pd.DataFrame, *, max_loss: float = 0.01,
                     metric: str = "accuracy", thresholds: Sequence[float] | None = None,
                     cv: int | None = 5, seed: int = 0) -> tuple[float, pd.DataFrame]:
    """The threshold that saves the most layers while losing at most ``max_loss`` (0.01 = 1 point) of
    ``metric`` ("accuracy" vs the full model's accuracy, or "consistency" vs 1) on the TRAIN table — never
    tune on test. With ``cv``, stop probabilities are out-of-fold (``out_of_fold_stop_matrix``; a fitted
    classifier is over-confident on its own training rows); ``cv=None`` uses the fitted policy in-sample.
    The choice is ``common.replay.most_saved_within`` (ties: the higher accuracy, then the higher, more cautious
    threshold). Returns (threshold, the train sweep, its ``chosen`` row marked).

    ``ValueError`` for ``max_loss`` outside [0, 1], an unknown ``metric``, a bad threshold grid, ``cv`` not
    None / an integer >= 2, or a grid where no threshold meets ``max_loss`` (the default grid always has one:
    1.01 never exits early); ``PolicyModelMismatchError`` when ``train_table`` is of another model or task."""
    if not isinstance(policy, ExitRule):
        raise TypeError(f"choose_threshold takes an exit rule (an ExitPolicy, a PatienceRule...), not "
                        f"{type(policy).__name__}")
    check_number(max_loss, "max_loss", low=0.0, high=1.0, allowed="a number in [0, 1] (0.01 = 1 point)")
    check_choice(metric, "metric", ("accuracy", "consistency"))
    check_int(cv, "cv", low=2, none_ok=True, allowed="None (in-sample) or an integer >= 2 (folds)")
    thresholds = threshold_grid(policy, thresholds)
    check_rule_model(policy, train_table)
    if cv and isinstance(policy, ExitPolicy) and policy.classifier != "threshold":  # a fitted classifier
        P = out_of_fold_stop_matrix(policy, train_table, cv=cv, seed=seed)
    else:
        P = policy.stop_matrix(train_table)
    table = sweep(Decisions.from_table(train_table), P, thresholds, policy.min_layer)
    loss = table["full_accuracy"] - table["accuracy"] if metric == "accuracy" else 1 - table["consistency"]
    best = most_saved_within(table["layers_saved"], loss, max_loss, threshold=table["threshold"])
    if best is None:
        raise ValueError(f"no threshold meets max_loss={max_loss:g} of {metric} on the train table (the least loss "
                         f"in the grid is {loss.min():.4f}): allow a larger loss, or add a higher threshold")
    table["chosen"] = np.arange(len(table)) == best
    return float(table["threshold"].iloc[best]), table


def tune_threshold(policy: ExitPolicy, train_table: pd.DataFrame, **kwargs) -> ExitPolicy:
    """A copy of the fitted ``policy`` with ``threshold`` from ``choose_threshold`` (kwargs passed on);
    the train sweep is kept as ``threshold_selection_``."""
    threshold, table = choose_threshold(policy, train_table, **kwargs)
    tuned = policy.with_threshold(threshold)
    tuned.threshold_selection_ = table
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
        threshold, table = choose_threshold(policy, train_table, max_loss=max_loss, metric=metric, cv=cv)
        chosen = table[table["chosen"]].iloc[0]
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
