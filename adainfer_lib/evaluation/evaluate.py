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

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .baselines import (GapThresholdPolicy, block_influence, dropped_layers, fixed_exit_layer,
                        layers_to_drop, oracle_exit_layers, pruned_calibration,
                        random_exit_layers)
from ..exits.runner import (ExitResult, FixedExitPolicy, resolve_offsets,
                         run_early_exit, run_full)
from ..common.checks import check_int
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
