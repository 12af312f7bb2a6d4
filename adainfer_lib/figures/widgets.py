"""The interactive exit explorer: ``ExitExplorer(model, policy, task)`` (ipywidgets 8).

Thin wiring: the numbers come from ``explorer_state.ExplorerState`` (no widget needed, tested on its own), the
HTML and figures from the pure render functions of ``explorer_views``. Controls: a test example (dropdown with
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

import time
from typing import Mapping

import numpy as np

from ..common.checks import THRESHOLD_RANGE
from . import explorer_views as views
from .explorer_state import ExplorerState, load_saved_policies, policy_label, snippet
from .plots import figure_title

__all__ = ["ExitExplorer", "load_saved_policies", "policy_label"]


def build_controls(state: ExplorerState, policy, max_examples: int, delta: float, epsilon: float) -> dict:
    """The explorer's controls (name → ipywidget): example, text, trace_button, policy_choice, lens, threshold,
    min_layer, delta, epsilon."""
    import ipywidgets as w

    texts, gold, names = state.texts, state.gold, state.task.label_names
    options = [(f"#{i} [{names[g]}] {snippet(t)}", i)
               for i, (t, g) in enumerate(zip(texts[:max_examples], gold[:max_examples]))]
    wide, style = w.Layout(width="98%"), {"description_width": "90px"}
    slider = {"continuous_update": False, "style": style, "layout": w.Layout(width="460px")}
    level = {"min": 0.001, "max": 0.999, "style": style, "layout": w.Layout(width="190px")}
    return {
        "example": w.Dropdown(options=options, value=0 if options else None, description="test example",
                              layout=wide, style=style),
        "text": w.Textarea(value=texts[0] if texts else "", placeholder="Type any text to classify",
                           description="text", layout=w.Layout(width="98%", height="70px"), style=style),
        "trace_button": w.Button(description="Trace this text", icon="play", button_style="primary",
                                 tooltip="run the model on the text above (cached by text)"),
        "policy_choice": w.Dropdown(options=list(state.policies), value=state.policy_name, description="policy",
                                    disabled=len(state.policies) < 2, style=style, layout=w.Layout(width="520px")),
        "lens": w.ToggleButtons(options=[("full vocabulary", "full"), ("label words", "labels")], value="full",
                                tooltips=["top-k tokens over the whole vocabulary",
                                          "the task's label words, calibrated"],
                                style={"button_width": "120px"}),  # labelled in the layout
        # up to 1.01 = "never stop early" (what a threshold choice returns when no threshold keeps its criterion):
        # clipped to 1.00 it would read as a rule that stops where the stop probability is exactly 1
        "threshold": w.FloatSlider(value=float(np.clip(policy.threshold, *THRESHOLD_RANGE)), min=THRESHOLD_RANGE[0],
                                   max=THRESHOLD_RANGE[1], step=0.01, description="threshold", readout_format=".2f",
                                   **slider),
        "min_layer": w.IntSlider(value=int(np.clip(policy.min_layer, 0, state.n_layers)), min=0, max=state.n_layers,
                                 step=1, description="min layer", **slider),
        "delta": w.BoundedFloatText(value=delta, step=0.005, description="δ (risk)", **level,
                                    tooltip="Learn-then-Test: at most this disagreement with the full model"),
        "epsilon": w.BoundedFloatText(value=epsilon, step=0.01, description="ε (error)", **level,
                                      tooltip="Learn-then-Test: the guarantee may fail for this share of draws"),
    }


class ExitExplorer:
    """Interactive AdaInfer exit explorer for ``model`` × ``task`` (see the module docstring).

    Parameters: ``policy`` (a fitted ``ExitPolicy``; its threshold and minimum layer start the sliders),
    ``policies`` (name → fitted policy, offered in a dropdown; ``policy`` is added when missing),
    ``dataset_trace`` (a ``TaskTrace`` of the task's test split: the dataset view, and test examples are
    shown from it without running the model), ``top_k`` tokens per layer, ``max_examples`` in the dropdown.

    Widgets (attributes): ``example``, ``text``, ``trace_button``, ``policy_choice``, ``lens``, ``threshold``,
    ``min_layer``, ``delta``, ``epsilon`` (controls); ``status``, ``summary``, ``tokens``, ``curves``,
    ``certificate``, ``dataset_summary``, ``dataset_plot`` (views); ``widget`` (the whole box); ``state``
    (the ``ExplorerState`` behind it).
    Learn-then-Test (with ``dataset_trace``): the split serves as the calibration set (the policy must not have
    been fitted on it); ``certification`` holds the current ``risk_control.Certification`` (disagreement with
    the full model, risk level ``delta``, error level ``epsilon``) and ``threshold_certified`` says whether the
    slider's threshold is certified.
    State after each render: ``exit_layer``, ``stop_proba`` (L+1,), ``table`` (the input's feature rows),
    ``current_text``, ``current_gold``, ``error`` (the last message or None), ``timings`` (seconds).
    Methods: ``select_example(i)``, ``show_text(text)``, ``trace_text(text)``, ``render()``; with
    ``dataset_trace``: ``dataset_sweep()`` and ``dataset_exits()`` (the dataset view's numbers as tables).

    The constructor checks its arguments (``explorer_state.check_explorer_args``): ``TypeError`` for a policy
    that is not a fitted ``ExitPolicy``, ``PolicyModelMismatchError`` for one fitted on another model or task,
    ``ModelMismatchError`` / ``ValueError`` for a ``dataset_trace`` of another model or task, ``ValueError``
    for ``top_k``, ``max_examples`` or ``cache_size`` below 1, ``delta`` or ``epsilon`` outside (0, 1).
    """

    def __init__(self, model, policy, task, *, policies: Mapping[str, object] | None = None,
                 dataset_trace=None, top_k: int = 5, max_examples: int = 200, cache_size: int = 64,
                 delta: float = 0.02, epsilon: float = 0.05):
        from ..certification import check_level

        self.state = ExplorerState(model, policy, task, policies=policies, dataset_trace=dataset_trace, top_k=top_k,
                                   max_examples=max_examples, cache_size=cache_size)
        delta, epsilon = check_level(delta, "delta"), check_level(epsilon, "epsilon")
        self.model, self.task, self.top_k = model, task, top_k
        self.n_layers, self.policies, self.dataset_trace = self.state.n_layers, self.state.policies, dataset_trace
        self.certification = None
        self._busy = 0
        self._dataset_rendered = False
        self.exit_layer: int | None = None
        self.stop_proba: np.ndarray | None = None
        self.table = None
        self.current_text: str | None = None
        self.current_gold: int | None = None
        self.error: str | None = None
        self.timings: dict[str, float] = self.state.timings
        for name, control in build_controls(self.state, policy, max_examples, delta, epsilon).items():
            setattr(self, name, control)
        self._build_views()
        self._wire()
        if self.state.texts:
            self.select_example(0)
        else:
            self._safely(self.render, example=False, dataset=True)

    # ---- building --------------------------------------------------------------------------------------
    def _build_views(self) -> None:
        import ipywidgets as w

        self.certificate, self.status, self.summary, self.tokens = w.HTML(), w.HTML(), w.HTML(), w.HTML()
        self.curves = w.Image(format="png", layout=w.Layout(margin="0 16px 0 0"))  # natural size (max-width 100%)
        self.dataset_summary = w.HTML()
        self.dataset_plot = w.Image(format="png")
        row = w.Layout(flex_flow="row wrap")
        self.widget = w.VBox([
            w.HTML("<b>Input</b>"), self.example, self.text, self.trace_button,
            w.HTML("<b>Stopping rule</b>"),
            w.HBox([self.policy_choice, w.Label("lens", layout=w.Layout(margin="0 6px 0 24px")), self.lens],
                   layout=w.Layout(flex_flow="row wrap", align_items="center")),
            w.HBox([self.threshold, self.min_layer], layout=row),
            self.certificate, w.HBox([self.delta, self.epsilon], layout=row),
            self.status, self.summary,
            w.Box([self.curves, self.tokens], layout=w.Layout(display="flex", flex_flow="row wrap",
                                                              align_items="flex-start")),
            w.HTML(f"<b>Whole {getattr(self.dataset_trace, 'split', 'test')} split</b>"), self.dataset_summary,
            self.dataset_plot,
        ], layout=w.Layout(width="100%"))

    def _wire(self) -> None:
        self.example.observe(self._on_example, names="value")
        self.trace_button.on_click(self._on_trace_button)
        self.policy_choice.observe(self._on_policy, names="value")
        self.lens.observe(lambda _change: self._safely(self.render, example=True, dataset=False), names="value")
        self.threshold.observe(lambda _change: self._safely(self.render), names="value")
        self.min_layer.observe(lambda _change: self._safely(self.render), names="value")
        for level in (self.delta, self.epsilon):
            level.observe(lambda _change: self._safely(self.render, example=False, dataset=True), names="value")

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
        self.text.value = self.state.texts[index]
        self._safely(self._show, self.state.texts[index], self.state.gold[index], index)

    def show_text(self, text: str) -> None:
        """Trace ``text`` (once; cached) and show it; an error message in ``status`` instead of raising."""
        self.text.value = text
        self._safely(self._show, text, self.state.gold_by_text.get(text), None)

    def trace_text(self, text: str):
        """``ExplorerState.trace_text``: the one-example ``LayerTrace`` of ``text`` (cached by text)."""
        return self.state.trace_text(text)

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

    def dataset_sweep(self):
        """The chosen policy's threshold sweep over the test split at the current minimum layer (DataFrame:
        ``explorer_views.threshold_sweep_frame``), or None without ``dataset_trace``."""
        if self.dataset_trace is None:
            return None
        return self.state.dataset_decisions(self.policy_choice.value, int(self.min_layer.value))[1]

    def dataset_exits(self):
        """Each test example at the current threshold and minimum layer (DataFrame: ``text`` snippet,
        ``exit_layer``, ``gold``, ``at_exit``, ``full_model``; ``explorer_views.exits_frame``), or None
        without ``dataset_trace``."""
        if self.dataset_trace is None:
            return None
        return self.state.dataset_exits(self.policy_choice.value, float(self.threshold.value),
                                        int(self.min_layer.value))

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
            self.threshold.value = float(np.clip(policy.threshold, *THRESHOLD_RANGE))
            self.min_layer.value = int(np.clip(policy.min_layer, 0, self.n_layers))
        finally:
            self._busy -= 1
        self._safely(self.render)

    # ---- rendering -------------------------------------------------------------------------------------
    def _show(self, text: str, gold: int | None, example: int | None) -> None:
        layer_trace = self.state.example_trace(example) if example is not None else None
        if layer_trace is None:
            layer_trace = self.state.trace_text(text)
        self._layer_trace, self.current_text, self.current_gold = layer_trace, text, gold
        self._source = (f"test example #{example}" if example is not None else "typed text") + \
            f" · prompt {int(layer_trace.n_tokens[0])} tokens"
        self.render(example=True, dataset=not self._dataset_rendered)  # the split's view ignores the input

    def _render_example(self) -> None:
        if self._busy:
            return
        name, threshold, min_layer = self.policy_choice.value, float(self.threshold.value), int(self.min_layer.value)
        found = self.state.example_exit(self._layer_trace, self.current_gold, name, threshold, min_layer)
        table, stop, exit_layer = found.table, found.stop_proba, found.exit_layer
        preds, lens = table["pred"].to_numpy(), self.lens.value
        frame = views.token_frame(self._layer_trace, lens=lens, calibration=found.calibration,
                                  label_names=self.task.label_names, k=self.top_k)
        what = "full-vocabulary lens" if lens == "full" else "label-word lens (calibrated)"
        self.tokens.value = views.token_table_html(frame, stop_proba=stop, exit_layer=exit_layer, min_layer=min_layer,
                                                   threshold=threshold, title=f"top tokens per layer — {what}")
        self.summary.value = views.exit_summary_html(
            exit_layer=exit_layer, n_layers=self.n_layers, pred_exit=int(preds[exit_layer]), pred_full=int(preds[-1]),
            label_names=self.task.label_names, gold=self.current_gold, stop_at_exit=float(stop[exit_layer]),
            threshold=threshold, min_layer=min_layer, policy_name=name, source=self._source)
        title = figure_title("layer by layer", self.model.name, self.task.name, 1)
        fig = views.layer_curves_figure(table, stop, lens=lens, threshold=threshold, min_layer=min_layer,
                                        exit_layer=exit_layer, title=title, features=self.policy.features_)
        self.curves.value = views.figure_png(fig)
        self.table, self.stop_proba, self.exit_layer = table, stop, exit_layer
        self.error = None
        self.status.value = views.message_html(
            f"{self._source} · {self.state.n_cached_texts} typed text(s) cached", kind="info")

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
        name, threshold, min_layer = self.policy_choice.value, float(self.threshold.value), int(self.min_layer.value)
        decisions, sweep = self.state.dataset_decisions(name, min_layer)
        self.certification = self.state.certify(name, min_layer, float(self.delta.value), float(self.epsilon.value))
        split = f"{self.dataset_trace.split} split"
        self.certificate.value = views.certification_html(self.certification, threshold, split=split)
        title = figure_title(f"early exit with {name}", self.model.name, self.task.name, decisions.decisions.n)
        fig = views.dataset_figure(decisions, sweep, threshold=threshold, min_layer=min_layer, title=title,
                                   certified=self.certification.threshold)
        self.dataset_plot.value = views.figure_png(fig)
        self.dataset_summary.value = views.dataset_summary_html(decisions, threshold=threshold, min_layer=min_layer,
                                                                split=split)
