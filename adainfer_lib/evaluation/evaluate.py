"""Early exit evaluated against the full model and the baselines, in the paper's form.

``evaluate(model, task, {"AdaInfer (SVM)": svm, "AdaInfer (CRF)": crf})`` gives one row per method:
accuracy of the full model and of the method, the change in points, mean layers used / L, layers saved,
consistency with the full model's predictions, the ideal speedup ``L / mean exit layer`` and the
**measured** wall-clock speedup (the full model and each method timed on the same prompts, interleaved,
batch size 1; ``speedup_ratio`` divides it by ``ideal_speedup_timed``, the ideal speedup on those same
prompts). Methods:

- ``full``: the dense model (accuracy from the trace's last layer; timed as a plain forward pass);
- each policy: a **real** early-exit run (``run_early_exit``) on every test prompt;
- ``oracle``, ``fixed``, ``random`` (same mean depth as the ``match`` policy): their exits are decided
  without the classifier, so their accuracy is replayed from the trace (the logit lens at layer ``k`` equals
  a real exit at ``k``: ``tests/test_early_exit.py``); they are timed with real exits on the timed prompts;
- ``shortgpt``: the ``k = round(L x layers saved of match)`` least influential layers (Block Influence on
  train prompts) really removed, run dense on every test prompt, its scores batch-calibrated on train prompts.

``pareto_curves`` sweeps each method's knob (threshold, fixed layer, mean random depth) over the trace:
accuracy vs layers saved.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .baselines import (GapThresholdPolicy, block_influence, dropped_layers, first_exit, fixed_exit_layer,
                        label_feature_array, layers_to_drop, oracle_exit_layers, pruned_calibration,
                        random_exit_layers)
from ..exits.runner import (ExitResult, FixedExitPolicy, ScheduledExitPolicy, measure_check_cost, resolve_offsets,
                         run_early_exit, run_full)
from ..common.checks import check_choice, check_int, check_number, check_threshold
from ..model.loading import LensModel
from ..exits.policy import check_policy_model, check_trace_model

DEFAULT_BASELINES = ("oracle", "fixed", "random", "shortgpt")
#: The methods ``pareto_curves`` can sweep besides the given policies.
PARETO_METHODS = ("oracle", "fixed", "random", "gap")


@dataclass
class Evaluation:
    """Everything ``run_evaluation`` measured: the ``table`` (one row per method), per-method ``exits`` and
    ``predictions`` over the n test examples, ``timings`` (example x method seconds, the timed subset),
    ShortGPT's ``influence`` (L,) and ``dropped`` layers, and the real ``results`` of each policy."""

    table: pd.DataFrame
    exits: dict[str, np.ndarray]
    predictions: dict[str, np.ndarray]
    timings: pd.DataFrame
    gold: np.ndarray
    n_layers: int
    influence: np.ndarray | None = None
    dropped: list[int] = field(default_factory=list)
    results: dict[str, ExitResult] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------
# Timing


def time_interleaved(runners: Mapping[str, Callable[[int], float]], indices: Sequence[int], *, repeats: int = 1,
                     warmup: bool = True, progress: bool = False) -> pd.DataFrame:
    """Time every runner on every example, interleaved: for each example, each runner in a rotating order
    (so none always runs first or last), ``repeats`` times; keeps the fastest repeat of each (example, runner)
    pair (the least disturbed by other load). A runner takes the example index and returns its seconds.
    Returns a long table: ``example``, ``method``, ``seconds``."""
    from tqdm.auto import tqdm

    names = list(runners)
    indices = list(indices)
    if warmup and indices:
        for name in names:  # first calls pay one-off costs (allocations, kernel selection)
            runners[name](indices[0])
    rows = []
    for pos, i in enumerate(tqdm(indices, desc="timing (interleaved)", disable=not progress)):
        best = {name: np.inf for name in names}
        for r in range(repeats):
            shift = (pos * repeats + r) % len(names)
            for name in names[shift:] + names[:shift]:
                best[name] = min(best[name], float(runners[name](i)))
        rows += [{"example": i, "method": name, "seconds": s} for name, s in best.items()]
    return pd.DataFrame(rows)


def _policy_offsets(policy, task_trace) -> object:
    """The policy's own calibration offsets, or the task trace's when the policy carries none."""
    try:
        resolve_offsets(policy, None, n_layers=task_trace.n_layers, n_labels=len(task_trace.label_names))
        return None
    except ValueError:
        return task_trace.calibration


def _simulated_exits(policy, task_trace) -> np.ndarray | None:
    """The policy's exits replayed on the trace's feature table (None where that is not available)."""
    if not hasattr(policy, "exit_layers"):
        return None
    try:
        if isinstance(policy, GapThresholdPolicy):
            return np.asarray(policy.exit_layers(task_trace))
        from ..exits.features import feature_table

        return np.asarray(policy.exit_layers(feature_table(task_trace)))
    except ImportError:
        return None


def _check_policies(policies, model, label_words) -> None:
    """``TypeError`` unless ``policies`` maps names to exit policies (objects with ``stop_proba_online``);
    then ``check_policy_model`` of each against ``model`` (a ``LensModel`` or a task trace) and
    ``label_words`` (``PolicyModelMismatchError`` for one of another model or task)."""
    if not isinstance(policies, Mapping):
        raise TypeError(f"policies must be a mapping name -> fitted exit policy, not {type(policies).__name__}")
    for name, policy in policies.items():
        if not callable(getattr(policy, "stop_proba_online", None)):
            raise TypeError(f"policy {name!r} is a {type(policy).__name__}, not an exit policy "
                            "(ExitPolicy, GapThresholdPolicy, FixedExitPolicy, ...)")
        check_policy_model(policy, model, label_words=label_words)


# ---------------------------------------------------------------------------------------------------
# The evaluation


def run_evaluation(
    model: LensModel,
    task,
    policies: Mapping[str, object],
    *,
    task_trace=None,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    match: str | None = None,
    n_timing: int | None = 30,
    repeats: int = 1,
    warmup: bool = True,
    batch_size: int = 8,
    n_influence: int = 50,
    n_calibration: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> Evaluation:
    """Evaluate ``policies`` (name -> fitted exit policy) and ``baselines`` on ``task``'s test split.

    ``task_trace`` (``trace_task(model, task)``) is computed (cached) when not given. The equal-budget
    baselines match the mean exit depth of ``match`` (default: the first policy). ``n_timing`` prompts
    (the first ones; None = all) are timed at batch size 1, interleaved, ``repeats`` times (fastest kept),
    after one untimed ``warmup`` call per method; the accuracy of every real method is measured on all test
    prompts with batches of ``batch_size``. ShortGPT's Block Influence uses ``n_influence`` train prompts and
    its re-calibration ``n_calibration``.

    Checked before any work: ``TypeError`` when ``policies`` is not a mapping of exit policies;
    ``PolicyModelMismatchError`` for a policy fitted on another model or task (``check_policy_model``),
    ``ModelMismatchError`` for a ``task_trace`` of another model; ``ValueError`` for a ``task_trace`` of other
    label words, a ``match`` that is not a policy's name, or counts out of range (``n_timing`` >= 0 or None,
    ``repeats``, ``batch_size``, ``n_influence`` >= 1, ``n_calibration`` >= 0).
    """
    from ..data.task_trace import trace_task

    _check_policies(policies, model, task.label_words)
    if match is not None and match not in policies:
        raise ValueError(f"match must be the name of one of the policies {list(policies)}, not {match!r}")
    check_int(n_timing, "n_timing", low=0, none_ok=True)
    for value, name, low in ((repeats, "repeats", 1), (batch_size, "batch_size", 1), (n_influence, "n_influence", 1),
                             (n_calibration, "n_calibration", 0)):
        check_int(value, name, low=low)
    if task_trace is not None:
        check_trace_model(task_trace, model)
        if list(task_trace.trace.label_words) != list(task.label_words):
            raise ValueError(f"task_trace has label words {list(task_trace.trace.label_words)}, the task "
                             f"{list(task.label_words)}: trace this task (trace_task(model, task))")
    if task_trace is None:
        task_trace = trace_task(model, task, progress=progress)
    tt = task_trace
    prompts = task.prompts("test")
    n, L = len(prompts), model.n_layers
    if tt.n_examples != n:
        raise ValueError(f"task_trace has {tt.n_examples} examples, the task's test split {n}")
    unknown = set(baselines) - set(DEFAULT_BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {DEFAULT_BASELINES}")
    if not policies and set(baselines) - {"oracle"}:
        raise ValueError("the fixed, random and shortgpt baselines match a policy's depth: give at least one policy")
    words = list(task.label_words)
    prefix = getattr(task, "prefix", None)  # every run, timed or not, reuses the prompt-prefix KV cache (the fair comparison)
    gold = np.asarray(tt.gold)
    full_pred = tt.final_predictions()
    trace_pred = tt.predictions()
    rows_idx = np.arange(n)
    timed = list(range(n if n_timing is None else min(n, n_timing)))

    exits: dict[str, np.ndarray] = {"full": np.full(n, L)}
    predictions: dict[str, np.ndarray] = {"full": full_pred}
    kinds: dict[str, str] = {"full": "dense"}
    results: dict[str, ExitResult] = {}
    extra: dict[str, dict] = {"full": {}}
    offsets = {name: _policy_offsets(p, tt) for name, p in policies.items()}

    # 1. the policies, real runs on every test prompt
    for name, policy in policies.items():
        res = run_early_exit(model, prompts, policy, label_words=words, calibration=offsets[name],
                             batch_size=batch_size, prefix=prefix, progress=progress)
        results[name] = res
        exits[name], predictions[name], kinds[name] = res.exit_layers, res.predictions, "real early exit"
        sim = _simulated_exits(policy, tt)
        extra[name] = {"trace_agreement": float(np.mean(sim == res.exit_layers)) if sim is not None else np.nan}

    # 2. equal-budget baselines
    match = match or (next(iter(policies)) if policies else None)
    target = float(np.mean(exits[match])) if match else float(L)
    if "oracle" in baselines:
        exits["oracle"] = oracle_exit_layers(tt)
    if "fixed" in baselines:
        exits["fixed"] = np.full(n, fixed_exit_layer(target, L))
    if "random" in baselines:
        exits["random"] = random_exit_layers(n, target, L, seed=seed)
    for name in ("oracle", "fixed", "random"):
        if name in exits:
            predictions[name] = trace_pred[rows_idx, exits[name]]
            kinds[name] = "trace replay (timed real)"
            extra[name] = {}
    influence, drop, drop_offsets = None, [], None
    if "shortgpt" in baselines:
        k = int(round(L * (1 - target / L)))
        influence = block_influence(model, task.prompts("train")[:n_influence], batch_size=batch_size,
                                    progress=progress)
        drop = layers_to_drop(influence, k)
        drop_offsets = pruned_calibration(model, drop, task.prompts("train")[:n_calibration], label_words=words,
                                          batch_size=batch_size)
        with dropped_layers(model, drop):
            res = run_full(model, prompts, label_words=words, calibration=drop_offsets, batch_size=batch_size,
                           prefix=prefix, progress=progress)
        exits["shortgpt"], predictions["shortgpt"] = np.full(n, L - len(drop)), res.predictions
        kinds["shortgpt"] = "real, layers removed"
        extra["shortgpt"] = {"dropped": ",".join(str(i + 1) for i in drop)}

    # 3. wall-clock, batch size 1, interleaved
    def full_runner(i: int) -> float:
        return float(run_full(model, [prompts[i]], label_words=words, calibration=tt.calibration,
                              prefix=prefix).seconds[0])

    timed_results: dict[str, list[ExitResult]] = {name: [] for name in policies}

    def policy_runner(name: str) -> Callable[[int], float]:
        def run(i: int) -> float:
            res = run_early_exit(model, [prompts[i]], policies[name], label_words=words, calibration=offsets[name],
                                 prefix=prefix)
            timed_results[name].append(res)
            return float(res.seconds[0])
        return run

    def layer_runner(name: str) -> Callable[[int], float]:
        def run(i: int) -> float:
            policy = FixedExitPolicy(int(exits[name][i]))
            return float(run_early_exit(model, [prompts[i]], policy, label_words=words,
                                        calibration=tt.calibration, prefix=prefix).seconds[0])
        return run

    def shortgpt_runner(i: int) -> float:
        with dropped_layers(model, drop):
            return float(run_full(model, [prompts[i]], label_words=words, calibration=drop_offsets,
                                  prefix=prefix).seconds[0])

    runners: dict[str, Callable[[int], float]] = {"full": full_runner}
    runners.update({name: policy_runner(name) for name in policies})
    runners.update({name: layer_runner(name) for name in ("oracle", "fixed", "random") if name in exits})
    if "shortgpt" in exits:
        runners["shortgpt"] = shortgpt_runner
    timings = time_interleaved(runners, timed, repeats=repeats, warmup=warmup, progress=progress) if timed else \
        pd.DataFrame(columns=["example", "method", "seconds"])
    mean_s = timings.groupby("method").seconds.mean() if len(timings) else pd.Series(dtype=float)
    for name in policies:
        runs = timed_results[name][-len(timed) * repeats:] if timed else []
        if runs:
            check = np.concatenate([r.check_seconds for r in runs]).sum()
            checks = sum(int(np.isfinite(r.stop_proba).sum()) for r in runs)
            extra[name]["check_cost"] = (check / max(checks, 1)) / (mean_s["full"] / L)
            extra[name]["checks_per_example"] = checks / len(runs)

    # 4. the table
    acc_full = float(np.mean(full_pred == gold))
    rows = []
    for name in exits:
        depth = float(np.mean(exits[name]))
        acc = float(np.mean(predictions[name] == gold))
        measured = float(mean_s["full"] / mean_s[name]) if name in mean_s and "full" in mean_s else np.nan
        ideal = L / depth if depth > 0 else np.inf
        timed_depth = float(np.mean(exits[name][timed])) if timed else np.nan
        ideal_timed = L / timed_depth if timed and timed_depth > 0 else np.nan
        rows.append({
            "task": task.name, "method": name, "kind": kinds[name], "n": n, "accuracy_full": acc_full,
            "accuracy": acc, "accuracy_change_pts": 100 * (acc - acc_full),
            "consistency": float(np.mean(predictions[name] == full_pred)), "mean_exit_layer": depth,
            "depth": depth / L, "layers_saved": 1 - depth / L, "ideal_speedup": ideal,
            "measured_speedup": measured, "ideal_speedup_timed": ideal_timed,
            "speedup_ratio": measured / ideal_timed,
            "n_timed": len(timed), "ms_per_example": 1000 * float(mean_s.get(name, np.nan)),
            **{k: extra[name].get(k, np.nan if k != "dropped" else "") for k in
               ("check_cost", "checks_per_example", "trace_agreement", "dropped")},
        })
    table = pd.DataFrame(rows)
    meta = {"model": model.name, "weights": model.weights_note, "task": task.name, "n": n, "n_layers": L,
            "match": match, "n_timing": len(timed), "repeats": repeats, "batch_size": batch_size}
    table.attrs.update(meta)
    return Evaluation(table=table, exits=exits, predictions=predictions, timings=timings, gold=gold, n_layers=L,
                      influence=influence, dropped=drop, results=results, meta=meta)


def evaluate(model: LensModel, task, policies: Mapping[str, object], **kwargs) -> pd.DataFrame:
    """The per-task table of ``run_evaluation`` (same arguments): one row per method."""
    return run_evaluation(model, task, policies, **kwargs).table


# ---------------------------------------------------------------------------------------------------
# Pareto curves


def _point(method: str, param: float, exits: np.ndarray, task_trace) -> dict:
    preds = task_trace.predictions()
    gold = np.asarray(task_trace.gold)
    chosen = preds[np.arange(len(exits)), exits]
    acc_full = float(np.mean(preds[:, -1] == gold))
    acc = float(np.mean(chosen == gold))
    return {"method": method, "param": float(param), "accuracy": acc, "accuracy_change_pts": 100 * (acc - acc_full),
            "consistency": float(np.mean(chosen == preds[:, -1])), "layers_saved": 1 - float(np.mean(exits)) / task_trace.n_layers,
            "mean_exit_layer": float(np.mean(exits))}


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
    _check_policies(policies or {}, tt, None)
    if table is not None:
        check_trace_model(table, tt)
    rows = []
    for name, policy in (policies or {}).items():
        if table is None and not isinstance(policy, GapThresholdPolicy):
            from ..exits.features import feature_table

            table = feature_table(tt)
        for t in thresholds:
            swept = copy.copy(policy)
            swept.threshold = float(t)
            exits = swept.exit_layers(tt if isinstance(policy, GapThresholdPolicy) else table)
            rows.append(_point(name, t, np.asarray(exits), tt))
    if "oracle" in methods:
        rows.append(_point("oracle", np.nan, oracle_exit_layers(tt), tt))
    if "fixed" in methods:
        rows += [_point("fixed", k, np.full(n, k), tt) for k in range(1, L + 1)]
    if "random" in methods:
        rows += [_point("random", m, random_exit_layers(n, m, L, seed=seed), tt) for m in range(1, L + 1)]
    if "gap" in methods:
        gaps = label_feature_array(tt, "label_gap")
        rows += [_point("label gap threshold", t, first_exit(gaps, t, gap_min_layer), tt) for t in thresholds]
    return pd.DataFrame(rows)


def pareto_front(curve: pd.DataFrame) -> pd.DataFrame:
    """The non-dominated points of one method's curve (no other point has both more layers saved and
    higher accuracy), sorted by layers saved."""
    pts = curve.sort_values(["layers_saved", "accuracy"], ascending=[False, False])
    best, keep = -np.inf, []
    for idx, acc in zip(pts.index, pts.accuracy):
        if acc > best:
            keep.append(idx)
            best = acc
    return curve.loc[keep].sort_values("layers_saved")


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
        offsets = pruned_calibration(model, drop, train, label_words=task.label_words, batch_size=batch_size)
        with dropped_layers(model, drop):
            res = run_full(model, prompts, label_words=task.label_words, calibration=offsets, batch_size=batch_size,
                           prefix=getattr(task, "prefix", None), progress=progress)
        acc = float(np.mean(res.predictions == gold))
        row = {"method": "shortgpt", "param": float(k), "accuracy": acc, "layers_saved": len(drop) / L,
               "mean_exit_layer": float(L - len(drop)), "n": len(prompts)}
        if full_predictions is not None:
            row["consistency"] = float(np.mean(res.predictions == full_predictions))
            row["accuracy_change_pts"] = 100 * (acc - float(np.mean(full_predictions == gold)))
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------
# Fitting the AdaInfer policies on the train split

#: The paper's two classifiers over the paper's two features (``gap``, ``top_prob``, full vocabulary).
ADAINFER_POLICIES: dict[str, dict] = {
    "AdaInfer (SVM)": {"classifier": "svm"},
    "AdaInfer (CRF)": {"classifier": "crf"},
}


def suggest_min_layer(train_trace, quantile: float = 0.05) -> int:
    """A first layer worth checking, from the TRAIN split: the ``quantile`` of the oracle exit layers
    (below it almost no example has settled on its final answer, so checks there are wasted time).
    ``ValueError`` for ``quantile`` outside [0, 1]."""
    check_number(quantile, "quantile", low=0.0, high=1.0)
    exits = np.asarray(train_trace.earliest_consistent_layer())
    return int(max(1, np.floor(np.quantile(exits, quantile))))


def fit_policies(train_trace, specs: Mapping[str, dict] | None = None, *, min_layer: int | str = "auto",
                 max_loss: float = 0.01, cv: int | None = 3) -> dict:
    """Fit ``ExitPolicy(**spec)`` for each ``name -> spec`` (default ``ADAINFER_POLICIES``) on the feature
    table of ``train_trace`` (a trace of the TRAIN split) and tune each threshold there (``tune_threshold``:
    the most layers saved for at most ``max_loss`` accuracy loss, out-of-fold over ``cv`` folds).
    ``min_layer="auto"``: ``suggest_min_layer(train_trace)``; a spec's own ``min_layer`` wins.
    ``ValueError`` for ``min_layer`` neither "auto" nor an integer in 0..L, for a spec that is not a dict of
    ``ExitPolicy`` parameters, and for ``max_loss`` / ``cv`` as in ``choose_threshold``."""
    from ..exits.features import feature_table
    from ..exits.policy import ExitPolicy, tune_threshold

    if min_layer != "auto":
        check_int(min_layer, "min_layer", low=0, high=train_trace.n_layers,
                  allowed=f"'auto' or an integer in 0..{train_trace.n_layers}")
    specs = ADAINFER_POLICIES if specs is None else specs
    bad = [name for name, spec in specs.items() if not isinstance(spec, Mapping)]
    if bad:
        raise ValueError(f"specs must map names to dicts of ExitPolicy parameters; {bad} are not dicts")
    table = feature_table(train_trace)
    first = suggest_min_layer(train_trace) if min_layer == "auto" else int(min_layer)
    fitted = {}
    for name, spec in specs.items():
        policy = ExitPolicy(**{"min_layer": first, **spec}).fit(table)
        fitted[name] = tune_threshold(policy, table, max_loss=max_loss, cv=cv)
    return fitted


def best_within(curves: pd.DataFrame, max_drop_pts: float = 1.0) -> pd.DataFrame:
    """Per method (and per task, when ``curves`` has a ``task`` column), the point with the most layers saved
    whose accuracy is at most ``max_drop_pts`` points below the full model's (methods with no such point are
    left out)."""
    keys = ["task", "method"] if "task" in curves.columns else ["method"]
    ok = curves[curves.accuracy_change_pts >= -max_drop_pts]
    best = ok.sort_values("layers_saved").groupby(keys, sort=False).tail(1)
    return best.sort_values([*keys[:-1], "layers_saved"], ascending=[True] * (len(keys) - 1) + [False])


# ---------------------------------------------------------------------------------------------------
# Figures (seaborn; each titled with model, task and n)


def _title(what: str, model: str, task: str, n: int) -> str:
    """A two-line title (these plots sit side by side, one per task)."""
    return f"{what}\n{model}, {task}, n={n}"


def plot_pareto(curves: pd.DataFrame, *, accuracy_full: float, model: str, task: str, n: int, ax=None):
    """Accuracy vs layers saved per method (lines: knob sweeps; the oracle a star; the full model dashed)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 5))
    lines = curves[curves.method != "oracle"].sort_values(["method", "layers_saved"])
    sns.lineplot(lines, x="layers_saved", y="accuracy", hue="method", marker="o", sort=False, ax=ax,
                 estimator=None, markersize=4)
    oracle = curves[curves.method == "oracle"]
    if len(oracle):
        ax.scatter(oracle.layers_saved, oracle.accuracy, marker="*", s=250, color="black", label="oracle", zorder=5)
    ax.axhline(accuracy_full, ls="--", color="grey", label="full model")
    ax.axhline(accuracy_full - 0.01, ls=":", color="grey", label="full model − 1 pt")
    ax.set(xlabel="layers saved (1 − mean exit layer / L)", ylabel="accuracy", xlim=(-0.02, 1.0),
           title=_title("Accuracy vs layers saved", model, task, n))
    ax.legend(fontsize=8, loc="lower left")
    return ax


def plot_exit_layers(evaluation: Evaluation, methods: Sequence[str] | None = None, *, model: str, task: str, ax=None):
    """Distribution of exit layers per method (one histogram line per method)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    methods = [m for m in (methods or evaluation.exits) if m != "full"]
    long = pd.DataFrame([{"method": m, "exit layer": int(layer)} for m in methods for layer in evaluation.exits[m]])
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    sns.histplot(long, x="exit layer", hue="method", discrete=True, element="step", fill=False, ax=ax,
                 binrange=(0, evaluation.n_layers))
    ax.set(xlim=(0, evaluation.n_layers + 1),
           title=_title("Exit layer distribution", model, task, len(evaluation.gold)))
    return ax


def plot_speedup(table: pd.DataFrame, *, model: str, task: str, ax=None):
    """Measured wall-clock speedup next to the ideal ``L / mean exit layer``, per method."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = table[table.method != "full"].melt(id_vars=["method"], value_vars=["ideal_speedup", "measured_speedup"],
                                              var_name="speedup", value_name="× full model")
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    sns.barplot(data, x="method", y="× full model", hue="speedup", ax=ax)
    ax.axhline(1.0, color="grey", ls="--")
    n_timed = int(table.n_timed.iloc[0]) if len(table) else 0
    ax.set(title=_title(f"Wall-clock speedup (batch 1, {n_timed} prompts timed)", model, task, int(table.n.iloc[0])))
    return ax
