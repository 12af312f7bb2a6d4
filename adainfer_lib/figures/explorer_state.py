"""The explorer's state, without any widget: what ``ExitExplorer`` shows, computed from plain arguments.

``ExplorerState(model, task, policies, dataset_trace)`` holds the explorer's data and its memo caches, and
answers the questions the widget asks when a control moves:

- ``trace_text(text)`` / ``example_trace(i)``: the one-example ``LayerTrace`` of a typed text (traced once,
  kept in a small LRU by text) or of a test example (sliced out of ``dataset_trace``, no model run);
- ``example_exit(layer_trace, gold, policy_name, threshold, min_layer)`` → ``ExampleExit``: the input's
  feature rows, the policy's stop probability per layer and its exit layer;
- ``dataset_decisions(policy_name, min_layer)``: the split's stop probabilities and decisions (the classifier
  runs once per policy — the CRF once per minimum layer) and the threshold sweep; ``certify(...)``:
  Learn-then-Test on the split; ``dataset_exits(...)``: one row per example.

Decisions use the chosen policy's own calibration (as ``run_early_exit`` does), falling back to
``dataset_trace``'s, then to raw label scores. Tests drive it directly; the widget only wires controls to it.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..common.checks import check_int
from ..common.paths import data_dir
from ..common.replay import first_exit
from ..data.calibration import Calibration
from ..features.table import feature_table
from ..model.identity import PolicyModelMismatchError, check_rule_model, check_trace_model
from ..model.layer_trace import LayerTrace
from ..model.lens import trace
from ..rules.policy import ExitPolicy
from . import explorer_views as views

SNIPPET_CHARS = 70


def policy_label(policy) -> str:
    """``"svm · consistent"``: a policy's classifier and label scheme (plus a threshold's feature)."""
    name = f"{policy.classifier} · {policy.label_scheme}"
    if policy.classifier == "threshold":
        name = f"threshold on {'+'.join(policy.resolved_features)}"
    return name


def snippet(text: str) -> str:
    """``text`` on one line, cut to ``SNIPPET_CHARS`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"


def load_saved_policies(model, task_name: str, directory: str | Path | None = None, *,
                        train_table: pd.DataFrame | None = None) -> dict:
    """Policies saved with ``ExitPolicy.save`` under ``directory`` (default ``data/policies``, searched
    recursively for ``*.policy``) that were fitted on ``model``'s weights and on ``task_name``, sorted by file:
    ``"saved: <file stem without the model's cache id> (<classifier · label scheme>)"`` → policy. Files of
    another model or task, or unreadable ones, are skipped.

    With ``train_table`` (the ``feature_table`` of the train split the caller uses), only policies fitted on
    those same prompts (``prompts_key``) with the same calibration method are kept: a policy saved by a quick
    run (40 train prompts) or under another calibration is not offered beside this run's."""
    folder = Path(directory) if directory is not None else data_dir() / "policies"
    wanted = None if train_table is None else (train_table.attrs.get("prompts_key"),
                                               (train_table.attrs.get("calibration") or {}).get("method"))
    found = {}
    for path in sorted(folder.rglob("*.policy")) if folder.exists() else []:
        try:
            policy = ExitPolicy.load(path, model=model)
        except Exception:  # noqa: BLE001 - another model's policy, a stale format, not a policy at all
            continue
        meta = policy.metadata
        if meta.get("task") != task_name or not meta.get("model_cache_id"):
            continue
        if wanted is not None and (meta.get("prompts_key"), meta.get("calibration_method")) != wanted:
            continue
        stem = path.stem.removeprefix(f"{model.cache_id}-")
        found[f"saved: {stem} ({policy_label(policy)})"] = policy
    return found


def check_explorer_args(model, policy, task, *, policies, dataset_trace, top_k, max_examples, cache_size) -> None:
    """The explorer's arguments, checked before anything is built: ``TypeError`` for a policy that is not a
    fitted ``ExitPolicy``, ``PolicyModelMismatchError`` for one fitted on another model or task,
    ``ModelMismatchError`` / ``ValueError`` for a ``dataset_trace`` of another model or task, ``ValueError``
    for ``top_k``, ``max_examples`` or ``cache_size`` below 1."""
    for value, name in ((top_k, "top_k"), (max_examples, "max_examples"), (cache_size, "cache_size")):
        check_int(value, name, low=1)
    if policies is not None and not isinstance(policies, Mapping):
        raise TypeError(f"policies must be a mapping name -> fitted ExitPolicy, not {type(policies).__name__}")
    for name, candidate in {"policy": policy, **{f"policies[{k!r}]": v for k, v in (policies or {}).items()}}.items():
        if not isinstance(candidate, ExitPolicy):
            raise TypeError(f"{name} is a {type(candidate).__name__}: the explorer shows fitted ExitPolicy objects "
                            "(their classifier, label scheme and stop probabilities)")
        candidate._check_fitted()
        try:
            check_rule_model(candidate, model, label_words=task.label_words)
        except PolicyModelMismatchError as err:
            raise PolicyModelMismatchError(f"the explorer cannot show {name} on model {model.name!r}, task "
                                           f"{task.name!r}: {err}") from None
    if dataset_trace is not None:
        check_trace_model(dataset_trace, model)
        if dataset_trace.task_name != task.name or list(dataset_trace.trace.label_words) != list(task.label_words):
            raise ValueError(f"dataset_trace is of task {dataset_trace.task_name!r} with label words "
                             f"{list(dataset_trace.trace.label_words)}, not of {task.name!r} with "
                             f"{list(task.label_words)}: pass trace_task(model, task)")


@dataclass(frozen=True)
class ExampleExit:
    """One input under one stopping rule: its feature rows ``table`` (L+1 rows), the calibration used, the
    policy's ``stop_proba`` (L+1,) and the ``exit_layer``."""

    table: pd.DataFrame
    calibration: Calibration
    stop_proba: np.ndarray
    exit_layer: int


class ExplorerState:
    """The explorer's data and memo caches for ``model`` × ``task`` (see the module docstring).

    ``policies``: name → fitted ``ExitPolicy`` (``policy`` added under its label when missing; ``policy_name``
    is its name); ``dataset_trace``: a ``TaskTrace`` of the task's test split or None; ``top_k`` tokens per
    layer; ``cache_size`` typed texts kept. ``timings`` holds the seconds of the last trace."""

    def __init__(self, model, policy, task, *, policies: Mapping[str, ExitPolicy] | None = None,
                 dataset_trace=None, top_k: int = 5, max_examples: int = 200, cache_size: int = 64):
        check_explorer_args(model, policy, task, policies=policies, dataset_trace=dataset_trace, top_k=top_k,
                            max_examples=max_examples, cache_size=cache_size)
        self.model, self.task, self.top_k, self.cache_size = model, task, top_k, cache_size
        self.n_layers = int(model.n_layers)
        self.policies = dict(policies or {})
        if not any(p is policy for p in self.policies.values()):
            name = policy_label(policy)
            while name in self.policies:
                name += " (given)"
            self.policies = {name: policy, **self.policies}
        self.policy_name = next(name for name, p in self.policies.items() if p is policy)
        self.dataset_trace = dataset_trace
        self.texts, self.gold = list(task.test["text"]), list(task.test["label"])
        self.gold_by_text = dict(zip(self.texts, self.gold))
        self.timings: dict[str, float] = {}
        self._traces: OrderedDict[str, LayerTrace] = OrderedDict()
        self._memo: dict[str, dict] = {"tables": {}, "policies": {}, "decisions": {}, "sweeps": {}, "certified": {}}

    # ---- inputs ----------------------------------------------------------------------------------------
    def trace_text(self, text: str) -> LayerTrace:
        """One-example ``LayerTrace`` of ``text`` in the task's k-shot prompt (cached in memory by text).
        ValueError for empty text or a prompt longer than the model's context."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("The text is empty: type a review (or pick a test example) first.")
        if text in self._traces:
            self._traces.move_to_end(text)
            return self._traces[text]
        prompt = self.task.prompt_for(text)
        n_tokens = len(self.model.tokenizer(prompt)["input_ids"])
        limit = getattr(self.model.hf_model.config, "max_position_embeddings", None)
        if limit and n_tokens > limit:
            raise ValueError(f"The prompt is {n_tokens} tokens ({self.task.shots}-shot demonstrations + your text), "
                             f"longer than the model's context of {limit} tokens: shorten the text.")
        start = time.perf_counter()
        result = trace(self.model, [prompt], label_words=self.task.label_words, top_k=self.top_k,
                       full_vocab=True, prefix=self.task.prefix, cache=False, progress=False)
        self.timings["trace"] = time.perf_counter() - start
        self._traces[text] = result
        while len(self._traces) > self.cache_size:
            self._traces.popitem(last=False)
        return result

    @property
    def n_cached_texts(self) -> int:
        return len(self._traces)

    def example_trace(self, index: int) -> LayerTrace | None:
        """Test example ``index`` sliced out of ``dataset_trace`` (no model run), when it is this task's test
        split traced with the full vocabulary and ``top_k`` tokens; else None (it has to be traced)."""
        tt = self.dataset_trace
        if tt is None or tt.n_examples != len(self.texts) or tt.trace.top_ids.shape[2] < self.top_k:
            return None
        if tt.task_name != self.task.name or list(tt.trace.label_words) != list(self.task.label_words):
            return None
        return views.slice_trace(tt.trace, index)

    # ---- one input -------------------------------------------------------------------------------------
    def calibration(self, policy) -> Calibration:
        """The policy's calibration (it decided its training labels with it); else the dataset's; else raw."""
        cal = policy.calibration
        if cal is None and self.dataset_trace is not None:
            cal = self.dataset_trace.calibration
        if cal is None:
            cal = Calibration("raw", np.zeros((self.n_layers + 1, len(self.task.label_words))))
        return cal

    def policy_at(self, name: str, min_layer: int) -> ExitPolicy:
        """Policy ``name`` with its stopping rule's minimum layer set to ``min_layer``. Only the CRF's stop
        probabilities depend on it (its filtering starts at min_layer); the others are returned as they are."""
        policy = self.policies[name]
        if policy.classifier != "crf" or policy.min_layer == min_layer:
            return policy
        copies = self._memo["policies"]
        if (name, min_layer) not in copies:
            copies[(name, min_layer)] = copy.copy(policy).set_params(min_layer=min_layer)
        return copies[(name, min_layer)]

    def example_exit(self, layer_trace: LayerTrace, gold: int | None, name: str, threshold: float,
                     min_layer: int) -> ExampleExit:
        """The input ``layer_trace`` under policy ``name`` at ``threshold`` and ``min_layer``."""
        cal = self.calibration(self.policies[name])
        table = views.example_table(layer_trace, cal, gold=gold, task_name=self.task.name,
                                    label_names=self.task.label_names)
        stop = np.asarray(self.policy_at(name, min_layer).stop_proba(table), dtype=np.float64)
        return ExampleExit(table, cal, stop, int(first_exit(stop[None], threshold, min_layer)[0]))

    # ---- the whole split ---------------------------------------------------------------------------------
    def dataset_decisions(self, name: str, min_layer: int) -> tuple[views.DatasetDecisions, pd.DataFrame]:
        """(decisions, sweep) of policy ``name`` on the test split: the classifier runs once per policy (the
        CRF: once per minimum layer), the sweep once per minimum layer; a threshold move reuses both."""
        tables, decisions, sweeps = self._memo["tables"], self._memo["decisions"], self._memo["sweeps"]
        if name not in tables:  # decided with the policy's calibration, as a real early exit would
            cal = self.calibration(self.policies[name])
            tt = replace(self.dataset_trace, calibrations={**self.dataset_trace.calibrations, cal.method: cal},
                         method=cal.method)
            tables[name] = feature_table(tt)
        policy = self.policy_at(name, min_layer)
        key = (name, min_layer if policy.classifier == "crf" else None)
        if key not in decisions:
            decisions[key] = views.stop_and_decisions(policy, tables[name])
        if (key, min_layer) not in sweeps:
            sweeps[(key, min_layer)] = views.threshold_sweep_frame(decisions[key], min_layer)
        return decisions[key], sweeps[(key, min_layer)]

    def certify(self, name: str, min_layer: int, delta: float, epsilon: float):
        """Learn-then-Test of policy ``name`` on the split (once per policy, minimum layer, δ and ε)."""
        key = (name, min_layer, delta, epsilon)
        if key not in self._memo["certified"]:
            decisions = self.dataset_decisions(name, min_layer)[0]
            self._memo["certified"][key] = views.certify_decisions(decisions, min_layer, delta=delta, epsilon=epsilon)
        return self._memo["certified"][key]

    def dataset_exits(self, name: str, threshold: float, min_layer: int) -> pd.DataFrame:
        """Each test example at this threshold and minimum layer (``explorer_views.exits_frame``)."""
        decisions = self.dataset_decisions(name, min_layer)[0]
        texts = [snippet(t) for t in self.texts] if len(self.texts) == decisions.decisions.n else None
        return views.exits_frame(decisions, threshold, min_layer, self.task.label_names, texts)
