"""Results over demonstration seeds, as the calibration papers report them (Zhao et al. 2021; Zhou et al. 2023).

With one demonstration set per seed (``load_task(..., demos="fixed")``) a number depends on which
demonstrations were drawn; the honest report is its mean ± sd over several seeds. Two summaries:

- ``layer_statistics_over_seeds``: per (task, seed, protocol) the full model's calibrated accuracy, the best
  layer and the oracle's layers saved (chapter 01);
- ``policies_over_seeds``: per (seed, policy) the train-chosen operating point on test (chapter 03);

and ``mean_sd`` turns either into one row per group with ``mean ± sd`` over seeds.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import pandas as pd

from ..common.replay import layers_saved
from ..data.task_trace import TaskTrace, trace_task


def layer_statistics(tt: TaskTrace) -> dict:
    """Headline statistics of one traced task: ``n``, ``accuracy_full`` (layer L), ``best_layer`` and
    ``best_layer_accuracy`` (the most accurate layer, ``TaskTrace.best_layer``: the later one on ties),
    ``oracle_layers_saved`` (1 - mean earliest consistent layer / L) and ``chance`` (1 / number of labels)."""
    accuracy = tt.accuracy_by_layer()
    best = tt.best_layer()
    return {"n": tt.n_examples, "accuracy_full": float(accuracy[-1]), "best_layer": best,
            "best_layer_accuracy": float(accuracy[best]),
            "oracle_layers_saved": layers_saved(tt.earliest_consistent_layer(), tt.n_layers),
            "chance": 1 / len(tt.label_names)}


def layer_statistics_over_seeds(model, make_task: Callable[..., object], seeds: Sequence[int], *,
                                demos: Sequence[str] = ("fixed",), full_vocab_seeds: Sequence[int] = (),
                                progress: bool = False) -> pd.DataFrame:
    """One row per (seed, demonstration protocol): ``layer_statistics`` of ``make_task(seed=s, demos=d)``'s
    test split, batch-calibrated on its train split. Traces are cached; a seed not in ``full_vocab_seeds`` is
    traced with label rows only (all these statistics need: about half the time on the default model), a seed
    in it with the full vocabulary — the trace a later chapter reads from the cache instead of computing it
    again (chapter 03 fits full-vocabulary policies on every sentiment seed). ``ValueError`` for an empty
    ``seeds``."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("layer_statistics_over_seeds needs at least one seed")
    rows = []
    for mode in demos:
        for seed in seeds:
            task = make_task(seed=seed, demos=mode)
            tt = trace_task(model, task, full_vocab=seed in full_vocab_seeds, progress=progress)
            rows.append({"task": task.name, "demos": mode, "seed": seed, **layer_statistics(tt)})
    return pd.DataFrame(rows)


def policies_over_seeds(model, make_task: Callable[..., object], seeds: Sequence[int],
                        policies: Mapping[str, Callable[[], object]], *, max_loss: float = 0.01,
                        metric: str = "accuracy", progress: bool = False) -> pd.DataFrame:
    """For each seed: fit every policy (``policies``: name -> a factory returning an unfitted ``ExitPolicy``)
    on the seed's train table, choose its threshold on train (``compare_policies``, at most ``max_loss``
    lost in ``metric``) and evaluate it on the seed's test table. One row per (seed, policy), the oracle
    included; the columns of ``compare_policies`` plus ``seed`` and ``task``."""
    from ..features.table import feature_table
    from ..rules.tuning import compare_policies

    frames = []
    for seed in seeds:
        task = make_task(seed=seed)
        train, test = (feature_table(trace_task(model, task, split=s, progress=progress)) for s in ("train", "test"))
        fitted = {name: factory().fit(train) for name, factory in policies.items()}
        table = compare_policies(fitted, train, test, max_loss=max_loss, metric=metric, ci=None)
        frames.append(table.assign(seed=seed, task=task.name))
    return pd.concat(frames, ignore_index=True)


def mean_sd(frame: pd.DataFrame, by: Sequence[str], columns: Sequence[str], *, digits: int = 3) -> pd.DataFrame:
    """One row per group of ``by``: each of ``columns`` as ``"mean ± sd"`` over the group's rows (sample sd,
    ddof=1; just the mean for a single row), plus ``seeds`` (how many rows). ``KeyError`` names a missing
    column."""
    missing = [c for c in (*by, *columns) if c not in frame.columns]
    if missing:
        raise KeyError(f"columns {missing} are not in the frame (it has {list(frame.columns)})")

    def fmt(values: pd.Series) -> str:
        values = values.astype(float)
        if len(values) < 2:
            return f"{values.mean():.{digits}f}"
        return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"

    grouped = frame.groupby(list(by), sort=False)
    out = grouped[list(columns)].agg(fmt)
    out.insert(0, "seeds", grouped.size())
    return out.reset_index()
