"""The interactive exit explorer: ``ExitExplorer(model, policy, task)`` (ipywidgets 8).

Thin wiring around the pure render functions of ``explorer_views``. Controls: a test example (dropdown with
its gold label and a snippet) or any typed text (textarea + button); the stopping rule's threshold and
minimum layer (sliders); the policy (classifier · label scheme) when several are given; the lens (full
vocabulary or the task's label words). Views, updated on every change: the top-k tokens per layer with
their probabilities and the stop probability, the confidence curves with the exit layer marked, the verdict
("exit layer: 17 / 30", the prediction at the exit vs the full model's), and — given ``dataset_trace`` — how
the exit-layer histogram, layers saved and accuracy of the whole split move with the threshold, and which
thresholds Learn-then-Test certifies on that split for the δ, ε chosen beside the sliders (marked ▲ under
the threshold slider; chapter 06).

What is slow is done once: a typed text is traced once (cached in memory by text; a test example is
sliced out of ``dataset_trace`` without running the model), and each policy's stop probabilities over the
split are computed once, so a slider move only re-applies the stopping rule and redraws (well under a
second). Every handler can be driven from Python (set ``.value``, call ``.click()``, or use
``select_example`` / ``show_text``); errors — empty text, a prompt longer than the model's context — are
shown in the widget's status line instead of raising. ``timings`` holds the seconds of the last renders.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Mapping

import numpy as np

from . import explorer_views as views
from ..data.calibration import Calibration
from ..exits.features import feature_table
from ..model.lens import LayerTrace, trace
from ..common.paths import data_dir
from .plots import figure_title
from ..common.checks import check_int
from ..common.replay import first_exit
from ..exits.identity import PolicyModelMismatchError, check_rule_model, check_trace_model
from ..exits.policy import ExitPolicy

SNIPPET_CHARS = 70


def policy_label(policy) -> str:
    """``"svm · consistent"``: a policy's classifier and label scheme (plus a threshold's feature)."""
    name = f"{policy.classifier} · {policy.label_scheme}"
    if policy.classifier == "threshold":
        name = f"threshold on {'+'.join(policy.resolved_features)}"
    return name


def load_saved_policies(model, task_name: str, directory: str | Path | None = None) -> dict:
    """Policies saved with ``ExitPolicy.save`` under ``directory`` (default ``data/policies``, searched
    recursively for ``*.policy``) that were fitted on ``model``'s weights and on ``task_name``, sorted by file:
    ``"saved: <file stem without the model's cache id> (<classifier · label scheme>)"`` → policy. Files of
    another model or task, or unreadable ones, are skipped."""
    folder = Path(directory) if directory is not None else data_dir() / "policies"
    found = {}
    for path in sorted(folder.rglob("*.policy")) if folder.exists() else []:
        try:
            policy = ExitPolicy.load(path, model=model)
        except Exception:  # noqa: BLE001 - another model's policy, a stale format, not a policy at all
            continue
        if policy.metadata.get("task") == task_name and policy.metadata.get("model_cache_id"):
            stem = path.stem.removeprefix(f"{model.cache_id}-")
            found[f"saved: {stem} ({policy_label(policy)})"] = policy
    return found


def _check_explorer_args(model, policy, task, *, policies, dataset_trace, top_k, max_examples, cache_size) -> None:
    """The explorer's arguments, checked before any widget is built (errors: see ``ExitExplorer``)."""
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


class ExitExplorer:
    """Interactive AdaInfer exit explorer for ``model`` × ``task`` (see the module docstring).

    Parameters: ``policy`` (a fitted ``ExitPolicy``; its threshold and minimum layer start the sliders),
    ``policies`` (name → fitted policy, offered in a dropdown; ``policy`` is added when missing),
    ``dataset_trace`` (a ``TaskTrace`` of the task's test split: the dataset view, and test examples are
    shown from it without running the model), ``top_k`` tokens per layer, ``max_examples`` in the dropdown.

    Widgets (attributes): ``example``, ``text``, ``trace_button``, ``policy_choice``, ``lens``, ``threshold``,
    ``min_layer``, ``delta``, ``epsilon`` (controls); ``status``, ``summary``, ``tokens``, ``curves``,
    ``certificate``, ``dataset_summary``, ``dataset_plot`` (views); ``widget`` (the whole box).
    Learn-then-Test (with ``dataset_trace``): the split serves as the calibration set (the policy must not have
    been fitted on it); ``certification`` holds the current ``risk_control.Certification`` (disagreement with
    the full model, risk level ``delta``, error level ``epsilon``) and ``threshold_certified`` says whether the
    slider's threshold is certified.
    State after each render: ``exit_layer``, ``stop_proba`` (L+1,), ``table`` (the input's feature rows),
    ``current_text``, ``current_gold``, ``error`` (the last message or None), ``timings`` (seconds).
    Methods: ``select_example(i)``, ``show_text(text)``, ``trace_text(text)``, ``render()``; with
    ``dataset_trace``: ``dataset_sweep()`` and ``dataset_exits()`` (the dataset view's numbers as tables).

    Decisions — the input's and the split's — use the chosen policy's own calibration (as ``run_early_exit``
    does), falling back to ``dataset_trace``'s, then to raw label scores.

    The constructor checks its arguments (``_check_explorer_args``): ``TypeError`` for a policy that is not a
    fitted ``ExitPolicy``, ``PolicyModelMismatchError`` for one fitted on another model or task,
    ``ModelMismatchError`` / ``ValueError`` for a ``dataset_trace`` of another model or task, ``ValueError``
    for ``top_k``, ``max_examples`` or ``cache_size`` below 1.
    """

    def __init__(self, model, policy, task, *, policies: Mapping[str, object] | None = None,
                 dataset_trace=None, top_k: int = 5, max_examples: int = 200, cache_size: int = 64,
                 delta: float = 0.02, epsilon: float = 0.05):
        import ipywidgets as w

        from ..exits.risk_control import check_level

        _check_explorer_args(model, policy, task, policies=policies, dataset_trace=dataset_trace, top_k=top_k,
                             max_examples=max_examples, cache_size=cache_size)
        delta, epsilon = check_level(delta, "delta"), check_level(epsilon, "epsilon")
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
        self._dataset_tables: dict = {}  # policy name -> feature table of dataset_trace
        self._texts = list(task.test["text"])
        self._gold = list(task.test["label"])
        self._gold_by_text = dict(zip(self._texts, self._gold))
        self._trace_cache: OrderedDict[str, LayerTrace] = OrderedDict()
        self._policy_copies: dict = {}
        self._decisions: dict = {}
        self._sweeps: dict = {}
        self._certifications: dict = {}
        self.certification = None
        self._busy = 0
        self._dataset_rendered = False
        self.exit_layer: int | None = None
        self.stop_proba: np.ndarray | None = None
        self.table = None
        self.current_text: str | None = None
        self.current_gold: int | None = None
        self.error: str | None = None
        self.timings: dict[str, float] = {}

        names = task.label_names
        options = [(f"#{i} [{names[g]}] {self._snippet(t)}", i)
                   for i, (t, g) in enumerate(zip(self._texts[:max_examples], self._gold[:max_examples]))]
        wide = w.Layout(width="98%")
        style = {"description_width": "90px"}
        self.example = w.Dropdown(options=options, value=0 if options else None, description="test example",
                                  layout=wide, style=style)
        self.text = w.Textarea(value=self._texts[0] if self._texts else "", placeholder="Type any text to classify",
                               description="text", layout=w.Layout(width="98%", height="70px"), style=style)
        self.trace_button = w.Button(description="Trace this text", icon="play", button_style="primary",
                                     tooltip="run the model on the text above (cached by text)")
        self.policy_choice = w.Dropdown(options=list(self.policies), value=self.policy_name, description="policy",
                                        disabled=len(self.policies) < 2, style=style, layout=w.Layout(width="520px"))
        self.lens = w.ToggleButtons(options=[("full vocabulary", "full"), ("label words", "labels")], value="full",
                                    tooltips=["top-k tokens over the whole vocabulary",
                                              "the task's label words, calibrated"],
                                    style={"button_width": "120px"})  # labelled in the layout below
        self.threshold = w.FloatSlider(value=float(np.clip(policy.threshold, 0, 1)), min=0.0, max=1.0, step=0.01,
                                       description="threshold", continuous_update=False, readout_format=".2f",
                                       style=style, layout=w.Layout(width="460px"))
        self.min_layer = w.IntSlider(value=int(np.clip(policy.min_layer, 0, self.n_layers)), min=0,
                                     max=self.n_layers, step=1, description="min layer", continuous_update=False,
                                     style=style, layout=w.Layout(width="460px"))
        self.delta = w.BoundedFloatText(value=delta, min=0.001, max=0.999, step=0.005, description="δ (risk)",
                                        style=style, layout=w.Layout(width="190px"),
                                        tooltip="Learn-then-Test: at most this disagreement with the full model")
        self.epsilon = w.BoundedFloatText(value=epsilon, min=0.001, max=0.999, step=0.01, description="ε (error)",
                                          style=style, layout=w.Layout(width="190px"),
                                          tooltip="Learn-then-Test: the guarantee may fail for this share of draws")
        self.certificate = w.HTML()
        self.status = w.HTML()
        self.summary = w.HTML()
        self.tokens = w.HTML()
        self.curves = w.Image(format="png", layout=w.Layout(margin="0 16px 0 0"))  # natural size (max-width 100%)
        self.dataset_summary = w.HTML()
        self.dataset_plot = w.Image(format="png")
        self.widget = w.VBox([
            w.HTML("<b>Input</b>"), self.example, self.text, self.trace_button,
            w.HTML("<b>Stopping rule</b>"),
            w.HBox([self.policy_choice, w.Label("lens", layout=w.Layout(margin="0 6px 0 24px")), self.lens],
                   layout=w.Layout(flex_flow="row wrap", align_items="center")),
            w.HBox([self.threshold, self.min_layer], layout=w.Layout(flex_flow="row wrap")),
            self.certificate, w.HBox([self.delta, self.epsilon], layout=w.Layout(flex_flow="row wrap")),
            self.status, self.summary,
            w.Box([self.curves, self.tokens], layout=w.Layout(display="flex", flex_flow="row wrap",
                                                              align_items="flex-start")),
            w.HTML(f"<b>Whole {getattr(dataset_trace, 'split', 'test')} split</b>"), self.dataset_summary,
            self.dataset_plot,
        ], layout=w.Layout(width="100%"))

        self.example.observe(self._on_example, names="value")
        self.trace_button.on_click(self._on_trace_button)
        self.policy_choice.observe(self._on_policy, names="value")
        self.lens.observe(lambda _change: self._safely(self.render, example=True, dataset=False), names="value")
        self.threshold.observe(lambda _change: self._safely(self.render), names="value")
        self.min_layer.observe(lambda _change: self._safely(self.render), names="value")
        for level in (self.delta, self.epsilon):
            level.observe(lambda _change: self._safely(self.render, example=False, dataset=True), names="value")
        if self._texts:
            self.select_example(0)
        else:
            self._safely(self.render, example=False, dataset=True)

    # ---- display -------------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self):  # older IPython front ends
        from IPython.display import display

        display(self.widget)

    # ---- public API ------------------------------------------------------------------------------------
    @property
    def policy(self):
        """The policy chosen in the dropdown."""
        return self.policies[self.policy_choice.value]

    @property
    def threshold_certified(self) -> bool | None:
        """Whether the slider's threshold is certified by Learn-then-Test (None without ``dataset_trace``)."""
        if self.certification is None:
            return None
        return self.certification.is_certified(float(self.threshold.value))

    def select_example(self, index: int) -> None:
        """Show test example ``index`` (its text goes into the textarea, editable); errors go to ``status``."""
        if self.example.value != index:
            self.example.value = index  # the observer calls back here
            return
        self.text.value = self._texts[index]
        self._safely(self._show, self._texts[index], self._gold[index], index)

    def show_text(self, text: str) -> None:
        """Trace ``text`` (once; cached) and show it; an error message in ``status`` instead of raising."""
        self.text.value = text
        self._safely(self._show, text, self._gold_by_text.get(text), None)

    def trace_text(self, text: str) -> LayerTrace:
        """One-example ``LayerTrace`` of ``text`` in the task's k-shot prompt (cached in memory by text).
        ValueError for empty text or a prompt longer than the model's context."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("The text is empty: type a review (or pick a test example) first.")
        if text in self._trace_cache:
            self._trace_cache.move_to_end(text)
            return self._trace_cache[text]
        prompt = self.task.prompt_for(text)
        n_tokens = len(self.model.tokenizer(prompt)["input_ids"])
        limit = getattr(self.model.hf_model.config, "max_position_embeddings", None)
        if limit and n_tokens > limit:
            raise ValueError(f"The prompt is {n_tokens} tokens ({self.task.shots}-shot demonstrations + your text), "
                             f"longer than the model's context of {limit} tokens: shorten the text.")
        start = time.perf_counter()
        result = trace(self.model, [prompt], label_words=self.task.label_words, top_k=self.top_k, full_vocab=True,
                       prefix=self.task.prefix, cache=False, progress=False)
        self.timings["trace"] = time.perf_counter() - start
        self._trace_cache[text] = result
        while len(self._trace_cache) > self.cache_size:
            self._trace_cache.popitem(last=False)
        return result

    def render(self, *, example: bool = True, dataset: bool = True) -> None:
        """Re-draw the views from the current controls (``example``: the input's views; ``dataset``: the
        split's). Raises on errors; the widget handlers call it through ``_safely``."""
        start = time.perf_counter()
        if example and self.current_text is not None:
            self._render_example()
            self.timings["example_view"] = time.perf_counter() - start
        if dataset:
            t0 = time.perf_counter()
            self._render_dataset()
            self.timings["dataset_view"] = time.perf_counter() - t0
        self.timings["render"] = time.perf_counter() - start

    # ---- handlers --------------------------------------------------------------------------------------
    def _safely(self, fn, *args, **kwargs) -> None:
        """Run a handler; any exception becomes the status message (and ``error``), never a traceback."""
        start = time.perf_counter()
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - shown to the user instead
            self.error = str(err) or type(err).__name__
            self.status.value = views.message_html(self.error, kind="error")
        self.timings["handler"] = time.perf_counter() - start

    def _on_example(self, change) -> None:
        if change["new"] is not None:
            self.select_example(change["new"])

    def _on_trace_button(self, _button) -> None:
        self.show_text(self.text.value)

    def _on_policy(self, change) -> None:
        policy = self.policies[change["new"]]
        self._busy += 1
        try:  # the policy's own threshold and minimum layer, one render afterwards
            self.threshold.value = float(np.clip(policy.threshold, 0, 1))
            self.min_layer.value = int(np.clip(policy.min_layer, 0, self.n_layers))
        finally:
            self._busy -= 1
        self._safely(self.render)

    # ---- internals -------------------------------------------------------------------------------------
    @staticmethod
    def _snippet(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"

    def _show(self, text: str, gold: int | None, example: int | None) -> None:
        layer_trace = self._example_trace(example) if example is not None else None
        if layer_trace is None:
            layer_trace = self.trace_text(text)
        self._layer_trace, self.current_text, self.current_gold = layer_trace, text, gold
        self._source = (f"test example #{example}" if example is not None else "typed text") + \
            f" · prompt {int(layer_trace.n_tokens[0])} tokens"
        self.render(example=True, dataset=not self._dataset_rendered)  # the split's view ignores the input

    def _example_trace(self, index: int) -> LayerTrace | None:
        """Test example ``index`` sliced out of ``dataset_trace`` (no model run), when it is this task's test
        split traced with the full vocabulary and ``top_k`` tokens; else None (it is traced)."""
        tt = self.dataset_trace
        if tt is None or tt.n_examples != len(self._texts) or tt.trace.top_ids.shape[2] < self.top_k:
            return None
        if tt.task_name != self.task.name or list(tt.trace.label_words) != list(self.task.label_words):
            return None
        return views.slice_trace(tt.trace, index)

    def _calibration(self, policy) -> Calibration:
        """The policy's calibration (it decided its training labels with it); else the dataset's; else raw."""
        cal = policy.calibration
        if cal is None and self.dataset_trace is not None:
            cal = self.dataset_trace.calibration
        if cal is None:
            cal = Calibration("raw", np.zeros((self.n_layers + 1, len(self.task.label_words))))
        return cal

    def _policy_at(self, min_layer: int):
        """The chosen policy with its stopping rule's minimum layer set to ``min_layer``. Only the CRF's stop
        probabilities depend on it (its filtering starts at min_layer); the others are returned as they are."""
        policy = self.policy
        if policy.classifier != "crf" or policy.min_layer == min_layer:
            return policy
        key = (self.policy_choice.value, min_layer)
        if key not in self._policy_copies:
            other = copy.copy(policy).set_params(min_layer=min_layer)
            self._policy_copies[key] = other
        return self._policy_copies[key]

    def _render_example(self) -> None:
        if self._busy:
            return
        policy, threshold, min_layer = self.policy, float(self.threshold.value), int(self.min_layer.value)
        cal = self._calibration(policy)
        table = views.example_table(self._layer_trace, cal, gold=self.current_gold, task_name=self.task.name,
                                    label_names=self.task.label_names)
        stop = np.asarray(self._policy_at(min_layer).stop_proba(table), dtype=np.float64)
        exit_layer = int(first_exit(stop[None], threshold, min_layer)[0])
        preds = table["pred"].to_numpy()
        lens = self.lens.value
        frame = views.token_frame(self._layer_trace, lens=lens, calibration=cal, label_names=self.task.label_names,
                                  k=self.top_k)
        what = "full-vocabulary lens" if lens == "full" else "label-word lens (calibrated)"
        self.tokens.value = views.token_table_html(frame, stop_proba=stop, exit_layer=exit_layer, min_layer=min_layer,
                                                   threshold=threshold, title=f"top tokens per layer — {what}")
        self.summary.value = views.exit_summary_html(
            exit_layer=exit_layer, n_layers=self.n_layers, pred_exit=int(preds[exit_layer]), pred_full=int(preds[-1]),
            label_names=self.task.label_names, gold=self.current_gold, stop_at_exit=float(stop[exit_layer]),
            threshold=threshold, min_layer=min_layer, policy_name=self.policy_choice.value, source=self._source)
        title = figure_title("layer by layer", self.model.name, self.task.name, 1)
        fig = views.layer_curves_figure(table, stop, lens=lens, threshold=threshold, min_layer=min_layer,
                                        exit_layer=exit_layer, title=title)
        self.curves.value = views.figure_png(fig)
        self.table, self.stop_proba, self.exit_layer = table, stop, exit_layer
        self.error = None
        self.status.value = views.message_html(
            f"{self._source} · {len(self._trace_cache)} typed text(s) cached", kind="info")

    def _dataset_decisions(self, min_layer: int):
        """(decisions, sweep) of the chosen policy on the test split: the classifier runs once per policy (the
        CRF: once per minimum layer), the sweep once per minimum layer; a threshold move reuses both."""
        name = self.policy_choice.value
        if name not in self._dataset_tables:  # decided with the policy's calibration, as a real early exit would
            cal = self._calibration(self.policy)
            tt = replace(self.dataset_trace, calibrations={**self.dataset_trace.calibrations, cal.method: cal},
                         method=cal.method)
            self._dataset_tables[name] = feature_table(tt)
        policy = self._policy_at(min_layer)
        key = (name, min_layer if policy.classifier == "crf" else None)
        if key not in self._decisions:
            self._decisions[key] = views.stop_and_decisions(policy, self._dataset_tables[name])
        if (key, min_layer) not in self._sweeps:
            self._sweeps[(key, min_layer)] = views.threshold_sweep_frame(self._decisions[key], min_layer)
        return self._decisions[key], self._sweeps[(key, min_layer)]

    def _render_dataset(self) -> None:
        if self._busy:
            return
        self._dataset_rendered = True
        if self.dataset_trace is None:
            self.dataset_summary.value = views.message_html(
                "Pass dataset_trace=trace_task(model, task) to see how the whole test split moves with the threshold.",
                kind="info")
            self.certificate.value = views.message_html(
                "Pass dataset_trace=trace_task(model, task) to certify thresholds with Learn-then-Test.", kind="info")
            return
        threshold, min_layer = float(self.threshold.value), int(self.min_layer.value)
        decisions, sweep = self._dataset_decisions(min_layer)
        levels = (float(self.delta.value), float(self.epsilon.value))
        key = (self.policy_choice.value, min_layer, levels)
        if key not in self._certifications:  # Learn-then-Test once per policy, minimum layer, δ and ε
            self._certifications[key] = views.certify_decisions(decisions, min_layer, delta=levels[0],
                                                                epsilon=levels[1])
        self.certification = self._certifications[key]
        self.certificate.value = views.certification_html(self.certification, threshold,
                                                          split=f"{self.dataset_trace.split} split")
        title = figure_title(f"early exit with {self.policy_choice.value}", self.model.name, self.task.name,
                             len(decisions.gold))
        fig = views.dataset_figure(decisions, sweep, threshold=threshold, min_layer=min_layer, title=title,
                                   certified=self.certification.threshold)
        self.dataset_plot.value = views.figure_png(fig)
        self.dataset_summary.value = views.dataset_summary_html(decisions, threshold=threshold, min_layer=min_layer,
                                                                split=f"{self.dataset_trace.split} split")

    def dataset_sweep(self):
        """The chosen policy's threshold sweep over the test split at the current minimum layer (DataFrame:
        ``explorer_views.threshold_sweep_frame``), or None without ``dataset_trace``."""
        if self.dataset_trace is None:
            return None
        return self._dataset_decisions(int(self.min_layer.value))[1]

    def dataset_exits(self):
        """Each test example at the current threshold and minimum layer (DataFrame: ``text`` snippet,
        ``exit_layer``, ``gold``, ``at_exit``, ``full_model``; ``explorer_views.exits_frame``), or None
        without ``dataset_trace``."""
        if self.dataset_trace is None:
            return None
        m = int(self.min_layer.value)
        decisions = self._dataset_decisions(m)[0]
        texts = [self._snippet(t) for t in self._texts] if len(self._texts) == len(decisions.gold) else None
        return views.exits_frame(decisions, float(self.threshold.value), m, self.task.label_names, texts)
