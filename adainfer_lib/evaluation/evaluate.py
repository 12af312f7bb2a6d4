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

from ..common.checks import check_int
from ..common.replay import Decisions, first_exit, metrics_at, oracle_exits
from ..model.identity import check_rule_model, check_trace_model
from ..model.loading import LensModel
from ..rules.interface import ExitRule
from ..rules.plain import FixedExitPolicy
from ..runner.early_exit import ExitResult, measure_check_cost, run_early_exit, run_full
from .baselines import PrunedModel, block_influence, fixed_exit_layer, layers_to_drop, random_exit_layers

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


def check_rules(policies, model, label_words) -> None:
    """``TypeError`` unless ``policies`` maps names to exit rules (``ExitRule``); then ``check_rule_model`` of
    each against ``model`` (a ``LensModel`` or a task trace) and ``label_words`` (``PolicyModelMismatchError``
    for one of another model or task)."""
    if not isinstance(policies, Mapping):
        raise TypeError(f"policies must be a mapping name -> fitted exit policy, not {type(policies).__name__}")
    for name, policy in policies.items():
        if not isinstance(policy, ExitRule):
            raise TypeError(f"policy {name!r} is a {type(policy).__name__}, not an exit policy "
                            "(ExitPolicy, GapThresholdPolicy, FixedExitPolicy, ...)")
        check_rule_model(policy, model, label_words=label_words)


# ---------------------------------------------------------------------------------------------------
# The methods of one evaluation


@dataclass
class Method:
    """One row of the evaluation: its ``exits`` and ``predictions`` (n,) over the test prompts, how they were
    obtained (``kind``), ``time_one(i)`` → seconds of a batch-1 run on test prompt ``i`` (same prompt-prefix
    cache for all), and ``extra`` columns."""

    name: str
    kind: str
    exits: np.ndarray
    predictions: np.ndarray
    time_one: Callable[[int], float]
    extra: dict = field(default_factory=dict)
    timed_results: list[ExitResult] = field(default_factory=list)


@dataclass
class _Setting:
    """What every method of one evaluation shares."""

    model: LensModel
    task: object
    task_trace: object
    prompts: list[str]
    batch_size: int
    progress: bool

    @property
    def words(self) -> list[str]:
        return list(self.task.label_words)

    @property
    def prefix(self) -> str | None:  # every run, timed or not, reuses the prompt-prefix KV cache (the fair comparison)
        return getattr(self.task, "prefix", None)

    def exit_run(self, prompts: list[str], rule, calibration, batch_size: int = 1) -> ExitResult:
        """A real early-exit run: data-parallel under ``accelerate launch`` for the accuracy runs, never for
        the batch-1 timing runs (each process times its own call)."""
        return run_early_exit(self.model, prompts, rule, label_words=self.words, calibration=calibration,
                              batch_size=batch_size, prefix=self.prefix, progress=self.progress and batch_size > 1,
                              distributed=None if len(prompts) > 1 else False)


def _full_method(s: _Setting) -> Method:
    def time_one(i: int) -> float:
        return float(run_full(s.model, [s.prompts[i]], label_words=s.words, calibration=s.task_trace.calibration,
                              prefix=s.prefix, distributed=False).seconds[0])

    n, L = len(s.prompts), s.model.n_layers
    return Method("full", "dense", np.full(n, L), s.task_trace.final_predictions(), time_one)


def _policy_method(s: _Setting, name: str, rule, table) -> Method:
    """A real early-exit run of ``rule`` on every test prompt; ``trace_agreement``: the share of exits equal to
    its replay on the trace's feature table ``table``."""
    calibration = rule.calibration if rule.calibration is not None else s.task_trace.calibration
    res = s.exit_run(s.prompts, rule, calibration, batch_size=s.batch_size)
    simulated = first_exit(rule.stop_matrix(table), rule.threshold, rule.min_layer)
    timed_results: list[ExitResult] = []

    def time_one(i: int) -> float:
        timed_results.append(s.exit_run([s.prompts[i]], rule, calibration))
        return float(timed_results[-1].seconds[0])

    return Method(name, "real early exit", res.exit_layers, res.predictions, time_one,
                  extra={"trace_agreement": float(np.mean(simulated == res.exit_layers)), "result": res},
                  timed_results=timed_results)


def _replayed_method(s: _Setting, name: str, exits: np.ndarray) -> Method:
    """A baseline whose exits are decided without a classifier: accuracy replayed from the trace (the logit
    lens at layer k equals a real exit at k), timed with real exits."""
    def time_one(i: int) -> float:
        return float(s.exit_run([s.prompts[i]], FixedExitPolicy(int(exits[i])), s.task_trace.calibration).seconds[0])

    preds = s.task_trace.predictions()[np.arange(len(exits)), exits]
    return Method(name, "trace replay (timed real)", np.asarray(exits), preds, time_one)


def _shortgpt_method(s: _Setting, target_depth: float, n_influence: int,
                     n_calibration: int) -> tuple[Method, np.ndarray]:
    """ShortGPT at the same depth: the ``round(L × (1 − target_depth / L))`` least influential layers removed."""
    L = s.model.n_layers
    k = int(round(L * (1 - target_depth / L)))
    influence = block_influence(s.model, s.task.prompts("train")[:n_influence], batch_size=s.batch_size,
                                progress=s.progress)
    pruned = PrunedModel.build(s.model, layers_to_drop(influence, k), label_words=s.words,
                               calibration_prompts=s.task.prompts("train")[:n_calibration], batch_size=s.batch_size)
    res = pruned.run(s.prompts, label_words=s.words, batch_size=s.batch_size, prefix=s.prefix, progress=s.progress)

    def time_one(i: int) -> float:
        return float(pruned.run([s.prompts[i]], label_words=s.words, prefix=s.prefix, distributed=False).seconds[0])

    method = Method("shortgpt", "real, layers removed", np.full(len(s.prompts), pruned.n_layers), res.predictions,
                    time_one, extra={"dropped": ",".join(str(i + 1) for i in pruned.drop), "drop": pruned.drop})
    return method, influence


def _baseline_methods(s: _Setting, baselines: Sequence[str], target: float, *, seed: int, n_influence: int,
                      n_calibration: int) -> tuple[list[Method], np.ndarray | None]:
    """The equal-budget baselines at mean depth ``target``, in the order oracle, fixed, random, shortgpt."""
    n, L = len(s.prompts), s.model.n_layers
    exits = {"oracle": lambda: oracle_exits(s.task_trace.predictions()),
             "fixed": lambda: np.full(n, fixed_exit_layer(target, L)),
             "random": lambda: random_exit_layers(n, target, L, seed=seed)}
    methods = [_replayed_method(s, name, make()) for name, make in exits.items() if name in baselines]
    influence = None
    if "shortgpt" in baselines:
        shortgpt, influence = _shortgpt_method(s, target, n_influence, n_calibration)
        methods.append(shortgpt)
    return methods, influence


# ---------------------------------------------------------------------------------------------------
# The evaluation


def _check_evaluation(model, task, policies, *, task_trace, baselines, match, n_timing, repeats, batch_size,
                      n_influence, n_calibration) -> None:
    """Every argument check of ``run_evaluation``, before any work (see its errors)."""
    check_rules(policies, model, task.label_words)
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
    unknown = set(baselines) - set(DEFAULT_BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {DEFAULT_BASELINES}")
    if not policies and set(baselines) - {"oracle"}:
        raise ValueError("the fixed, random and shortgpt baselines match a policy's depth: give at least one policy")


def _check_cost(method: Method, mean_full_seconds: float, n_runs: int) -> dict:
    """The mean cost of one exit check in units of one layer, from the method's last ``n_runs`` timed runs."""
    runs = method.timed_results[-n_runs:] if n_runs else []
    if not runs:
        return {}
    checks = sum(int(np.isfinite(r.stop_proba).sum()) for r in runs)
    return {"check_cost": measure_check_cost(runs, mean_full_seconds), "checks_per_example": checks / len(runs)}


def _table_row(method: Method, *, task: str, decisions: Decisions, mean_s: pd.Series, timed: list[int]) -> dict:
    """One method's row: its metrics (``common.replay.metrics_at`` of its exits and the predictions it made, vs
    the full model's ``decisions.final``), measured speedup over the timed prompts and the runner's extras."""
    m = metrics_at(decisions, method.exits, predictions=method.predictions)
    L = m["L"]
    measured = float(mean_s["full"] / mean_s[method.name]) if method.name in mean_s and "full" in mean_s else np.nan
    timed_depth = float(np.mean(method.exits[timed])) if timed else np.nan
    ideal_timed = L / timed_depth if timed and timed_depth > 0 else np.nan
    return {
        "task": task, "method": method.name, "kind": method.kind, "n": m["n"], "accuracy_full": m["full_accuracy"],
        "accuracy": m["accuracy"], "accuracy_change_pts": m["accuracy_change_pts"], "consistency": m["consistency"],
        "mean_exit_layer": m["mean_exit_layer"], "depth": m["mean_exit_layer"] / L, "layers_saved": m["layers_saved"],
        "ideal_speedup": m["ideal_speedup"], "measured_speedup": measured, "ideal_speedup_timed": ideal_timed,
        "speedup_ratio": measured / ideal_timed, "n_timed": len(timed),
        "ms_per_example": 1000 * float(mean_s.get(method.name, np.nan)),
        **{k: method.extra.get(k, np.nan if k != "dropped" else "") for k in
           ("check_cost", "checks_per_example", "trace_agreement", "dropped")},
    }


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
    """Evaluate ``policies`` (name -> exit rule) and ``baselines`` on ``task``'s test split.

    ``task_trace`` (``trace_task(model, task)``) is computed (cached) when not given. The equal-budget
    baselines match the mean exit depth of ``match`` (default: the first policy). ``n_timing`` prompts
    (the first ones; None = all) are timed at batch size 1, interleaved, ``repeats`` times (fastest kept),
    after one untimed ``warmup`` call per method; the accuracy of every real method is measured on all test
    prompts with batches of ``batch_size``. ShortGPT's Block Influence uses ``n_influence`` train prompts and
    its re-calibration ``n_calibration``.

    Checked before any work: ``TypeError`` when ``policies`` is not a mapping of exit rules;
    ``PolicyModelMismatchError`` for a policy fitted on another model or task (``check_rule_model``),
    ``ModelMismatchError`` for a ``task_trace`` of another model; ``ValueError`` for a ``task_trace`` of other
    label words, a ``match`` that is not a policy's name, or counts out of range (``n_timing`` >= 0 or None,
    ``repeats``, ``batch_size``, ``n_influence`` >= 1, ``n_calibration`` >= 0).
    """
    from ..data.task_trace import trace_task
    from ..features.table import feature_table

    _check_evaluation(model, task, policies, task_trace=task_trace, baselines=baselines, match=match,
                      n_timing=n_timing, repeats=repeats, batch_size=batch_size, n_influence=n_influence,
                      n_calibration=n_calibration)
    tt = task_trace if task_trace is not None else trace_task(model, task, progress=progress)
    prompts = task.prompts("test")
    n, L = len(prompts), model.n_layers
    if tt.n_examples != n:
        raise ValueError(f"task_trace has {tt.n_examples} examples, the task's test split {n}")
    s = _Setting(model, task, tt, prompts, batch_size, progress)
    table = feature_table(tt) if policies else None
    methods = [_full_method(s)] + [_policy_method(s, name, rule, table) for name, rule in policies.items()]
    match = match or (next(iter(policies)) if policies else None)
    target = float(np.mean(methods[list(policies).index(match) + 1].exits)) if match else float(L)
    baseline_methods, influence = _baseline_methods(s, baselines, target, seed=seed, n_influence=n_influence,
                                                    n_calibration=n_calibration)
    methods += baseline_methods

    timed = list(range(n if n_timing is None else min(n, n_timing)))
    timings = time_interleaved({m.name: m.time_one for m in methods}, timed, repeats=repeats, warmup=warmup,
                               progress=progress) if timed else pd.DataFrame(columns=["example", "method", "seconds"])
    mean_s = timings.groupby("method").seconds.mean() if len(timings) else pd.Series(dtype=float)
    for method in methods[1:len(policies) + 1]:
        method.extra.update(_check_cost(method, mean_s.get("full", np.nan), len(timed) * repeats))
    gold = np.asarray(tt.gold)
    decisions = Decisions(tt.predictions(), methods[0].predictions, gold, np.arange(n))
    rows = [_table_row(m, task=task.name, decisions=decisions, mean_s=mean_s, timed=timed) for m in methods]
    meta = {"model": model.name, "weights": model.weights_note, "task": task.name, "n": n, "n_layers": L,
            "match": match, "n_timing": len(timed), "repeats": repeats, "batch_size": batch_size}
    out = pd.DataFrame(rows)
    out.attrs.update(meta)
    shortgpt = next((m for m in methods if m.name == "shortgpt"), None)
    return Evaluation(table=out, exits={m.name: m.exits for m in methods},
                      predictions={m.name: m.predictions for m in methods}, timings=timings, gold=gold, n_layers=L,
                      influence=influence, dropped=shortgpt.extra["drop"] if shortgpt else [],
                      results={m.name: m.extra["result"] for m in methods if "result" in m.extra}, meta=meta)


def evaluate(model: LensModel, task, policies: Mapping[str, object], **kwargs) -> pd.DataFrame:
    """The per-task table of ``run_evaluation`` (same arguments): one row per method."""
    return run_evaluation(model, task, policies, **kwargs).table
