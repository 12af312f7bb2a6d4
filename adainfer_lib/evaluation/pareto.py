"""Accuracy vs layers saved: each method's knob swept over a trace (replay), ShortGPT with layers really
removed, the non-dominated front and the best point within an accuracy budget."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..common.checks import check_choice, check_int, check_threshold
from ..common.replay import Decisions, first_exit, metrics_at, most_saved_within, oracle_exits
from ..model.identity import check_trace_model
from ..model.loading import LensModel
from ..rules.plain import label_feature_array
from .baselines import PrunedModel, block_influence, layers_to_drop, random_exit_layers
from .evaluate import PARETO_METHODS, check_rules


def _point(method: str, param: float, exits: np.ndarray, decisions: Decisions) -> dict:
    m = metrics_at(decisions, exits)
    return {"method": method, "param": float(param), **{k: m[k] for k in ("accuracy", "accuracy_change_pts",
                                                                          "consistency", "layers_saved",
                                                                          "mean_exit_layer")}}


def pareto_curves(
    task_trace,
    policies: Mapping[str, object] | None = None,
    *,
    thresholds: Sequence[float] | None = None,
    methods: Sequence[str] = ("oracle", "fixed", "random", "gap"),
    gap_min_layer: int = 1,
    seed: int = 0,
    table: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Accuracy vs layers saved, one row per (method, knob value), replayed on ``task_trace``: each policy
    with its threshold swept over ``thresholds`` (default 0.05..0.95 and 0.99), ``fixed`` at every layer,
    ``random`` at every mean depth (seeded), the calibrated label ``gap`` threshold, and the ``oracle`` point.
    ``table``: the trace's feature table (built with ``features.feature_table`` when a policy needs one).
    Columns: method, param, accuracy, accuracy_change_pts, consistency, layers_saved, mean_exit_layer.

    ``ValueError`` for unknown ``methods``, an empty threshold grid or thresholds outside [0, 1.01], or
    ``gap_min_layer`` outside 0..L; ``PolicyModelMismatchError`` for a policy of another model or task, and
    ``ModelMismatchError`` for a ``table`` of another model than ``task_trace``."""
    tt = task_trace
    L, n = tt.n_layers, tt.n_examples
    thresholds = list(thresholds) if thresholds is not None else [*np.round(np.arange(0.05, 1.0, 0.05), 2), 0.99]
    for method in methods:
        check_choice(method, "each of methods", PARETO_METHODS)
    if not thresholds:
        raise ValueError("thresholds is empty: give at least one threshold (or None for the default grid)")
    thresholds = [check_threshold(t, "each threshold") for t in thresholds]
    check_int(gap_min_layer, "gap_min_layer", low=0, high=L)
    check_rules(policies or {}, tt, None)
    if table is not None:
        check_trace_model(table, tt)
    decisions = Decisions.from_task_trace(tt)
    rows = []
    for name, policy in (policies or {}).items():
        if table is None:
            from ..features.table import feature_table

            table = feature_table(tt)
        stop = policy.stop_matrix(table)
        rows += [_point(name, t, first_exit(stop, float(t), policy.min_layer), decisions) for t in thresholds]
    if "oracle" in methods:
        rows.append(_point("oracle", np.nan, oracle_exits(decisions.predictions), decisions))
    if "fixed" in methods:
        rows += [_point("fixed", k, np.full(n, k), decisions) for k in range(1, L + 1)]
    if "random" in methods:
        rows += [_point("random", m, random_exit_layers(n, m, L, seed=seed), decisions) for m in range(1, L + 1)]
    if "gap" in methods:
        gaps = label_feature_array(tt, "label_gap")
        rows += [_point("label gap threshold", t, first_exit(gaps, t, gap_min_layer), decisions) for t in thresholds]
    return pd.DataFrame(rows)


def best_within(curves: pd.DataFrame, max_drop_pts: float = 1.0, *, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Per group ``by`` (default: per method, and per task when ``curves`` has a ``task`` column; ``by=["task"]``:
    the best method per task), the point with the most layers saved whose accuracy is at most ``max_drop_pts``
    points below the full model's: ``common.replay.most_saved_within`` on each group (ties: the smaller accuracy
    drop, then the higher knob ``param`` when the rows have one — the more conservative threshold or exit
    layer). Groups with no such point are left out. ``curves``: rows with ``layers_saved`` and
    ``accuracy_change_pts`` (``pareto_curves``, an ``Evaluation.table``). Sorted by the groups other than
    ``method``, then layers saved (descending)."""
    keys = list(by) if by is not None else (["task", "method"] if "task" in curves.columns else ["method"])
    picked = []
    for _, group in curves.groupby(keys, sort=False):
        knob = group["param"] if "param" in group.columns else None
        best = most_saved_within(group["layers_saved"], -group["accuracy_change_pts"] / 100, max_drop_pts / 100,
                                 threshold=knob)
        if best is not None:
            picked.append(group.index[best])
    order = [k for k in keys if k != "method"]
    return curves.loc[picked].sort_values([*order, "layers_saved"], ascending=[True] * len(order) + [False])


def shortgpt_curve(model: LensModel, task, ks: Sequence[int], *, n: int | None = None, n_influence: int = 50,
                   n_calibration: int = 100, batch_size: int = 8, full_predictions=None,
                   influence: np.ndarray | None = None, progress: bool = False) -> pd.DataFrame:
    """ShortGPT's accuracy vs layers saved with ``k`` in ``ks`` layers really removed (real runs on the first
    ``n`` test prompts, all if None; each ``k`` costs one pass over them). Same columns as ``pareto_curves``,
    plus ``n``; ``full_predictions`` (the full model's, over all test prompts) adds consistency.
    ``influence``: Block Influence already measured (e.g. ``Evaluation.influence``), else measured on
    ``n_influence`` train prompts. ``ValueError`` for ``n`` < 1 or a ``k`` outside 0..L."""
    L = model.n_layers
    check_int(n, "n", low=1, none_ok=True)
    for k in ks:
        check_int(k, "each k (layers to drop)", low=0, high=L)
    prompts = task.prompts("test")[:n]
    gold = np.asarray(task.test["label"])[: len(prompts)]
    if full_predictions is not None:
        full_predictions = np.asarray(full_predictions)[: len(prompts)]
    if influence is None:
        influence = block_influence(model, task.prompts("train")[:n_influence], batch_size=batch_size)
    train = task.prompts("train")[:n_calibration]
    rows = []
    for k in ks:
        drop = layers_to_drop(influence, k)
        pruned = PrunedModel.build(model, drop, label_words=task.label_words, calibration_prompts=train,
                                   batch_size=batch_size)
        res = pruned.run(prompts, label_words=task.label_words, batch_size=batch_size,
                         prefix=getattr(task, "prefix", None), progress=progress)
        acc = float(np.mean(res.predictions == gold))
        row = {"method": "shortgpt", "param": float(k), "accuracy": acc, "layers_saved": len(drop) / L,
               "mean_exit_layer": float(L - len(drop)), "n": len(prompts)}
        if full_predictions is not None:
            row["consistency"] = float(np.mean(res.predictions == full_predictions))
            row["accuracy_change_pts"] = 100 * (acc - float(np.mean(full_predictions == gold)))
        rows.append(row)
    return pd.DataFrame(rows)
