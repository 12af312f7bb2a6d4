"""Checkers for the exercises at the end of chapters 01–04 and 06.

A student computes an answer in the notebook and calls the checker, which recomputes the reference from
the same objects and says what is wrong. Each checker returns a ``Feedback`` (truthy when correct) that
prints as one line. Reference solutions live in ``notebooks/solutions/``; the tests run every checker
against its solution and against a wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..common.replay import layers_saved
from ..data.task_trace import TaskTrace


@dataclass(frozen=True)
class Feedback:
    """The verdict of a checker: ``ok`` and a message that says what is right or wrong."""

    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return ("✅ " if self.ok else "❌ ") + self.message

    def _repr_markdown_(self) -> str:
        return str(self)


def _close(answer: object, reference: float, tol: float) -> bool:
    """``answer`` is a number within ``tol`` of ``reference`` (anything else, e.g. ``...``, is not)."""
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return False
    return bool(np.isfinite(value) and abs(value - reference) <= tol)


# ---- chapter 01 -------------------------------------------------------------------------------------


def _whole_number(answer: object, what: str, low: int, high: int) -> tuple[int | None, Feedback | None]:
    """``answer`` as a whole number in ``[low, high]`` (``20.0`` or ``np.int64(20)`` count as 20), else a ❌ that
    says what was wrong: the ``...`` placeholder, not a number, a fraction, or out of range."""
    if answer is Ellipsis:
        return None, Feedback(False, f"replace the `...` with {what} between {low} and {high}.")
    value = None if isinstance(answer, (bool, np.bool_)) else _as_number(answer)
    if value is None or not np.isfinite(value):
        return None, Feedback(False, f"answer {what} (a whole number between {low} and {high}), got {answer!r:.60}.")
    if value != round(value):
        return None, Feedback(False, f"{value:g} is not a whole number: answer {what}.")
    if not low <= value <= high:
        return None, Feedback(False, f"answer {what} between {low} and {high}, got {value:g}.")
    return int(value), None


def first_layer_reaching(tt: TaskTrace, fraction: float = 0.9) -> int:
    """Reference: the first layer whose accuracy is at least ``fraction`` of the final layer's."""
    accuracy = tt.accuracy_by_layer()
    return int(np.argmax(accuracy >= fraction * accuracy[-1]))


def check_01_first_layer_reaching(tt: TaskTrace, answer: int, fraction: float = 0.9) -> Feedback:
    """Exercise 01.1: the first layer that reaches ``fraction`` of the final accuracy."""
    reference = first_layer_reaching(tt, fraction)
    accuracy = tt.accuracy_by_layer()
    answer, problem = _whole_number(answer, "a layer number", 0, tt.n_layers)
    if problem is not None:
        return problem
    if answer == reference:
        return Feedback(True, f"layer {reference} is the first with accuracy ≥ {fraction:.0%} of the final "
                              f"{accuracy[-1]:.3f} ({accuracy[reference]:.3f}, {tt.task_name}, n={tt.n_examples}).")
    if accuracy[answer] < fraction * accuracy[-1]:
        return Feedback(False, f"layer {answer} has accuracy {accuracy[answer]:.3f} < {fraction:.0%} × "
                               f"{accuracy[-1]:.3f}: it does not reach the bar.")
    return Feedback(False, f"layer {answer} reaches the bar, but an earlier layer does too: look for the *first*.")


def check_01_raw_oracle(tt: TaskTrace, oracle_layers_saved: float, accuracy_full: float) -> Feedback:
    """Exercise 01.2: the oracle's layers saved and the full model's accuracy under *raw* decisions."""
    raw = tt.with_calibration("raw")
    saved = layers_saved(raw.earliest_consistent_layer(), raw.n_layers)
    accuracy = float((raw.final_predictions() == raw.gold).mean())
    for given, right, what in ((accuracy_full, accuracy, "accuracy"), (oracle_layers_saved, saved, "oracle saving")):
        if _close(given, 100 * right, 0.1) and not _close(given, right, 1e-3):
            return Feedback(False, f"the {what} {given!r} looks like a percentage: answer a fraction between 0 and 1 "
                                   f"(e.g. {right:.3f}, not {100 * right:.1f}).")
    if not _close(accuracy_full, accuracy, 1e-3):
        return Feedback(False, f"the raw accuracy is off (got {accuracy_full!r}); use "
                               "tt.with_calibration('raw').final_predictions() against tt.gold.")
    if not _close(oracle_layers_saved, saved, 1e-3):
        return Feedback(False, f"the oracle saving is off (got {oracle_layers_saved!r}); it is "
                               "1 - mean(earliest consistent layer) / L with raw decisions.")
    own_saved = layers_saved(tt.earliest_consistent_layer(), tt.n_layers)
    own_accuracy = float((tt.final_predictions() == tt.gold).mean())
    share = float(np.bincount(raw.final_predictions()).max() / raw.n_examples)
    acc_way = "less" if accuracy < own_accuracy - 1e-9 else "more" if accuracy > own_accuracy + 1e-9 else "as"
    saved_way = "more" if saved > own_saved + 1e-9 else "fewer" if saved < own_saved - 1e-9 else "as many"
    return Feedback(True, f"raw decisions: accuracy {accuracy:.3f}, oracle saves {saved:.1%} of layers "
                          f"({tt.method}: {own_accuracy:.3f}, {own_saved:.1%}; n={tt.n_examples}) — {acc_way} "
                          f"accurate{' as' if acc_way == 'as' else ''}, and the oracle saves {saved_way} layers. "
                          f"Raw decisions give one label to {share:.0%} of the examples: the more constant the final "
                          "prediction, the more early layers are 'consistent' with it for free.")


def changes_before_settling(tt: TaskTrace, *, first_layer: int = 1) -> np.ndarray:
    """Per example (n,), how often its decision changes between consecutive layers ``first_layer..e``, with ``e``
    its earliest consistent layer (after ``e`` it never changes). Layer 0 (the embeddings, where the label scores
    tie up to rounding and no rule exits) is left out by default."""
    preds, earliest = tt.predictions(), tt.earliest_consistent_layer()
    changed = preds[:, first_layer + 1:] != preds[:, first_layer:-1]            # change from layer l to l + 1
    upto = np.arange(first_layer + 1, preds.shape[1])[None, :] <= earliest[:, None]
    return (changed & upto).sum(1)


def check_01_most_changes(tt: TaskTrace, answer) -> Feedback:
    """Exercise 01.3: the largest number of times an example changes its decision (from layer 1) before it
    settles."""
    value, problem = _whole_number(answer, "a number of changes", 0, tt.n_layers)
    if problem is not None:
        return problem
    counts = changes_before_settling(tt)
    right, example = int(counts.max()), int(counts.argmax())
    if value == right:
        settles = int(tt.earliest_consistent_layer()[example])
        return Feedback(True, f"example {example} changes its mind {right} times between layer 1 and layer {settles}, "
                              f"where it settles; {int((counts >= 2).sum())} of {tt.n_examples} examples change at "
                              "least twice — a rule that stops at the first agreement is right by luck on them.")
    if value == int(changes_before_settling(tt, first_layer=0).max()):
        return Feedback(False, f"{value} counts the change from layer 0 (the embeddings, where no rule exits): "
                               "start at layer 1.")
    return Feedback(False, f"{value} is {'too high' if value > right else 'too low'}: per example, count the layers "
                           "l ≥ 1 whose decision differs from layer l + 1's, up to its earliest consistent layer, "
                           "and take the largest count.")


# ---- shared helpers for chapters 02–04 --------------------------------------------------------------


def _as_number(answer: object) -> float | None:
    """``answer`` as one float (NaN allowed; a one-element array or Series counts), else None."""
    if answer is None or isinstance(answer, (str, bytes, bool, np.bool_)):
        return None
    try:
        values = np.asarray(answer, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    return float(values[0]) if values.size == 1 else None


def _not_a_number(answer: object, what: str) -> Feedback | None:
    """A ❌ when ``answer`` is the ``...`` placeholder or not one number; None when it is a number."""
    if answer is Ellipsis:
        return Feedback(False, f"replace the `...` with one number: {what}.")
    if _as_number(answer) is None:
        return Feedback(False, f"answer {what} as one number, got {type(answer).__name__} {answer!r:.60}.")
    return None


def _compare(answer: object, reference: float, *, what: str, ok: str, tol: float,
             bounds: tuple[float, float] | None = None, mistakes: tuple = (), hint: str = "") -> Feedback:
    """The verdict on a numeric answer against ``reference``: ✅ ``ok`` within ``tol``; otherwise ❌ with the
    first fitting reason: not a number, outside ``bounds`` (a fraction given in percent is named), equal to a
    known mistake (``(value, what that value is)`` pairs), or too high / too low, followed by ``hint``."""
    problem = _not_a_number(answer, what)
    if problem is not None:
        return problem
    value = _as_number(answer)
    if np.isnan(reference):
        if np.isnan(value):
            return Feedback(True, ok)
        return Feedback(False, f"{what} cannot be computed here (see the hint); answer float('nan'). {hint}".strip())
    if np.isnan(value):
        return Feedback(False, f"{what} is a finite number here, not NaN. {hint}".strip())
    if abs(value - reference) <= tol:
        return Feedback(True, ok)
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        percent = " — a percentage? Answer a fraction (0.25, not 25)" if bounds[1] == 1 and value <= 100 else ""
        return Feedback(False, f"{what} lies between {bounds[0]:g} and {bounds[1]:g}, got {value:.4g}{percent}.")
    for other, meaning in mistakes:
        if np.isfinite(other) and abs(value - other) <= tol:
            return Feedback(False, f"{value:.4g} is {meaning}.")
    direction = "too high" if value > reference else "too low"
    return Feedback(False, f"{what}: {value:.4g} is {direction}. {hint}".strip())


def _pooled_auc(table, feature: str, label: str = "settled") -> float:
    """Pooled AUC of one ``feature`` for ``label`` over the decision layers 1 <= layer < L (``feature_auc``)."""
    from ..features.study import feature_auc

    return float(feature_auc(table, [feature], label=label)["auc"].iloc[0])


def _layer_auc_stats(table, feature: str, label: str) -> dict[str, float]:
    """Plausible mis-computations of the pooled AUC: the mean of the per-layer AUCs over the decision layers,
    and the AUC over all rows (layers 0..L)."""
    from sklearn.metrics import roc_auc_score

    from ..common.replay import n_layers_of
    from ..features.study import per_layer_auc

    L = n_layers_of(table)
    per_layer = per_layer_auc(table, feature, label=label)
    decision = per_layer[(per_layer.layer >= 1) & (per_layer.layer < L)]
    y, x = table[label].to_numpy().astype(bool), table[feature].to_numpy(dtype=np.float64)
    ok = np.isfinite(x)
    every = float(roc_auc_score(y[ok], x[ok])) if 0 < y[ok].sum() < ok.sum() else np.nan
    return {"mean_per_layer": float(decision.auc.mean()), "all_layers": every}


def _auc_mistakes(table, feature: str, label: str, reference: float) -> tuple:
    """The known wrong turns of a pooled-AUC answer, each with what it is."""
    stats = _layer_auc_stats(table, feature, label)
    return ((1 - reference, "1 − the AUC: a higher value of the feature must score as the positive class"),
            (stats["mean_per_layer"], "the mean of the per-layer AUCs; the pooled AUC ranks all decision rows at once "
                                      "(`ai.feature_auc`)"),
            (stats["all_layers"], "the AUC over all layers 0..L; the pooled AUC uses the decision layers 1 ≤ ℓ < L "
                                  "(`ai.feature_auc`)"))


# ---- chapter 02 -------------------------------------------------------------------------------------


def check_02_correct_auc(table, answer: float) -> Feedback:
    """Exercise 02.1: the pooled AUC of ``label_gap`` for the ``correct`` label scheme."""
    problem = _not_a_number(answer, "the pooled AUC of label_gap for `correct`")
    if problem is not None:
        return problem
    reference = _pooled_auc(table, "label_gap", "correct")
    others = {lab: _pooled_auc(table, "label_gap", lab) for lab in ("settled", "consistent")}
    mistakes = tuple((auc, f"the AUC for `{lab}`: pass label=\"correct\"") for lab, auc in others.items())
    return _compare(answer, reference, what="the pooled AUC of label_gap for `correct`", tol=1e-3, bounds=(0, 1),
                    mistakes=mistakes + _auc_mistakes(table, "label_gap", "correct", reference),
                    hint="Use ai.feature_auc(table, [\"label_gap\"], label=\"correct\").",
                    ok=f"label_gap's pooled AUC is {reference:.3f} for `correct` vs {others['settled']:.3f} for "
                       f"`settled` (n = {table.example.nunique()} examples). `correct` compares with the gold label, "
                       "so training on it needs labelled data; `consistent` and `settled` only need the model's own "
                       "final answer.")


def check_02_raw_calibration_auc(tt: TaskTrace, answer: float) -> Feedback:
    """Exercise 02.2: the pooled AUC of ``label_gap`` for ``settled`` when decisions are *raw*."""
    from ..features.table import feature_table

    what = "the pooled AUC of label_gap for `settled` with raw decisions"
    problem = _not_a_number(answer, what)
    if problem is not None:
        return problem
    raw_table = feature_table(tt.with_calibration("raw"))
    reference = _pooled_auc(raw_table, "label_gap", "settled")
    own = _pooled_auc(feature_table(tt), "label_gap", "settled")
    share, own_share = (float(np.bincount(view.final_predictions()).max() / view.n_examples)
                        for view in (tt.with_calibration("raw"), tt))
    L = tt.n_layers
    decision = raw_table[(raw_table.layer >= 1) & (raw_table.layer < L)]
    own_mistake = (own, f"the AUC with tt's own `{tt.method}` calibration: build the table from "
                        "tt.with_calibration(\"raw\")")
    return _compare(answer, reference, what=what, tol=1e-3, bounds=(0, 1),
                    mistakes=(own_mistake,) + _auc_mistakes(raw_table, "label_gap", "settled", reference),
                    hint=f"Raw decisions: {share:.0%} of final answers are one label, {decision.settled.mean():.0%} "
                         "of decision rows are settled.",
                    ok=f"with raw decisions the pooled AUC is {reference:.3f} ({tt.method}: {own:.3f}). The final "
                       f"answer is the same label for {share:.0%} of examples ({tt.method}: {own_share:.0%}) and "
                       f"{decision.settled.mean():.0%} of the decision rows are `settled`. "
                       + (f"Raw decisions lean more towards one label and the label gap tells less (AUC "
                          f"{'lower' if reference < own else 'not lower'}): `settled` then reflects the lean, not "
                          "the input." if share > own_share and reference < own else
                          f"Here raw decisions {'lean more' if share > own_share else 'do not lean more'} towards one "
                          f"label, yet the AUC is {'higher' if reference > own else 'about the same'}: the label "
                          "gap's ranking survives a shared offset — calibration changes *which* label wins, and with "
                          "it which rows are `settled`, more than how the gap orders them."))


def _label_gap_change(table):
    """Reference: ``label_gap`` at this layer minus at the previous layer of the same example (NaN at layer 0)."""
    return table.groupby("example", sort=False)["label_gap"].diff().to_numpy(dtype=np.float64)


def _column_problem(table, column, reference: np.ndarray) -> str | None:
    """Why ``column`` (one value per row of ``table``) is not ``reference`` at layers >= 1 (at layer 0 NaN and
    0 are both fine); None when it is."""
    values = np.asarray(column, dtype=np.float64).reshape(-1)
    later = table["layer"].to_numpy() > 0
    first_ok = np.isnan(values[~later]) | (values[~later] == 0)
    if np.allclose(values[later], reference[later], atol=1e-9, equal_nan=True) and first_ok.all():
        return None
    gap = table["label_gap"].to_numpy(dtype=np.float64)
    if np.allclose(values[later], -reference[later], atol=1e-9):
        return "has the wrong sign: take this layer's label_gap minus the previous layer's"
    if np.allclose(values[later], reference[later], atol=1e-9, equal_nan=True):
        return "is right from layer 1 on, but at layer 0 it reaches into the previous example: group by example"
    if np.allclose(values, gap, atol=1e-9):
        return "is label_gap itself, not its change from the previous layer"
    nxt = table.groupby("example", sort=False)["label_gap"].diff(-1).to_numpy(dtype=np.float64)
    if np.allclose(values, nxt, atol=1e-9, equal_nan=True) or np.allclose(values, -nxt, atol=1e-9, equal_nan=True):
        return "compares with the *next* layer, which a running model has not computed yet: use diff(), not diff(-1)"
    wrong = np.flatnonzero(later & ~np.isclose(values, reference, atol=1e-9, equal_nan=True))
    row = table.iloc[wrong[0]]
    return (f"differs from label_gap(ℓ) − label_gap(ℓ−1) at {len(wrong)} rows, e.g. example {row.example}, layer "
            f"{row.layer}: got {values[wrong[0]]:.4g}")


def check_02_label_gap_change(table, label_gap_change, beats_cos_prev: bool) -> Feedback:
    """Exercise 02.3: the change of ``label_gap`` from the previous layer as a new online feature, and whether
    its pooled AUC for ``settled`` is further from 0.5 than ``cos_prev``'s."""
    if label_gap_change is Ellipsis:
        return Feedback(False, "replace the `...` with a column: one value per row of `table`, in its order.")
    if hasattr(label_gap_change, "index") and hasattr(label_gap_change, "reindex") \
            and set(label_gap_change.index) == set(table.index):
        label_gap_change = label_gap_change.reindex(table.index)
    try:
        values = np.asarray(label_gap_change, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return Feedback(False, f"answer a numeric column, got {type(label_gap_change).__name__}.")
    if values.size != len(table):
        return Feedback(False, f"the column has {values.size} values, but `table` has {len(table)} rows: one value "
                               "per example × layer row, in the table's order.")
    reference = _label_gap_change(table)
    problem = _column_problem(table, values, reference)
    if problem is not None:
        return Feedback(False, f"your label_gap change {problem}.")
    if not isinstance(beats_cos_prev, (bool, np.bool_)):
        return Feedback(False, f"the column is right; now answer beats_cos_prev with True or False, got "
                               f"{beats_cos_prev!r:.60}.")
    auc = {name: _pooled_auc(table.assign(label_gap_change=reference), name)
           for name in ("label_gap_change", "cos_prev")}
    beats = abs(auc["label_gap_change"] - 0.5) > abs(auc["cos_prev"] - 0.5)
    if bool(beats_cos_prev) != beats:
        return Feedback(False, "the column is right, but not the comparison: compute both pooled AUCs for `settled` "
                               "(ai.feature_auc) — 'better' means further from 0.5, in either direction.")
    return Feedback(True, f"pooled AUC for `settled`: label_gap change {auc['label_gap_change']:.3f}, cos_prev "
                          f"{auc['cos_prev']:.3f} — the change {'beats' if beats else 'does not beat'} cos_prev. "
                          "Per layer (ai.per_layer_auc) shows where each one helps.")


# ---- chapter 03 -------------------------------------------------------------------------------------


def _replay(policy, train, test, **criterion) -> tuple[float, dict, dict]:
    """(threshold chosen on ``train`` by ``choose_threshold(**criterion)``, the replay on ``test`` with its 95%
    bootstrap interval, the train sweep's chosen row)."""
    from ..rules.tuning import choose_threshold, simulate

    threshold, sweep = choose_threshold(policy, train, **criterion)
    return threshold, simulate(policy, test, threshold, ci=0.95), sweep[sweep["chosen"]].iloc[0].to_dict()


def check_03_operating_point(train, test, policies, layers_saved: float, accuracy_change_pts: float,
                             policy: str = "SVM · paper features", max_loss: float = 0.03) -> Feedback:
    """Exercise 03.1: the paper's SVM at the threshold chosen on train for at most 3 points of accuracy lost:
    its layers saved and accuracy change (points) on test."""
    for answer, what in ((layers_saved, "the layers saved on test, a fraction of L"),
                         (accuracy_change_pts, "the accuracy change on test, in points")):
        problem = _not_a_number(answer, what)
        if problem is not None:
            return problem
    svm = policies[policy]
    threshold, test_run, train_row = _replay(svm, train, test, max_loss=max_loss, metric="accuracy")
    one_point_threshold, one_point, _ = _replay(svm, train, test, max_loss=0.01, metric="accuracy")
    saved = _compare(layers_saved, test_run["layers_saved"], what="the layers saved on test", tol=1e-3, bounds=(0, 1),
                     mistakes=((one_point["layers_saved"], "the saving at the 1-point threshold: pass max_loss=0.03"),
                               (train_row["layers_saved"], "the saving on train: replay the threshold on test")),
                     hint="Replay the train-chosen threshold with ai.simulate(policy, test, threshold).", ok="")
    if not saved:
        return saved
    change = test_run["accuracy_change_pts"]
    verdict = _compare(accuracy_change_pts, change, what="the accuracy change on test", tol=0.05,
                       mistakes=((change / 100, "a fraction: answer points (× 100)"),
                                 (one_point["accuracy_change_pts"], "the change at the 1-point threshold"),
                                 (train_row["accuracy_change_pts"], "the change on train: report it on test")),
                       hint="It is accuracy − full accuracy, in points, on test.", ok="")
    if not verdict:
        return verdict
    low, high = test_run["change_ci_low"], test_run["change_ci_high"]
    inside = "inside" if low <= 0 <= high else "outside"
    return Feedback(True, f"threshold {threshold:.2f} chosen on train (1 point: {one_point_threshold:.2f}); on test "
                          f"{test_run['layers_saved']:.1%} of layers saved, accuracy {change:+.1f} points, 95% "
                          f"interval [{low:+.1f}, {high:+.1f}] — zero is {inside} it (n = {test_run['n']}).")


def _consistency_saving(policy, train, test) -> tuple[float, dict]:
    """Threshold chosen on ``train`` for ≥ 99% consistency and the replay on ``test``."""
    threshold, run, _ = _replay(policy, train, test, max_loss=0.01, metric="consistency")
    return threshold, run


def check_03_min_layer(train, test, policies, answer: dict, policy: str = "CRF · label features") -> Feedback:
    """Exercise 03.2: the label-feature CRF refitted with larger ``min_layer`` values, thresholds chosen on
    train for ≥ 99% consistency: ``answer`` maps each ``min_layer`` to its layers saved on test."""
    from collections.abc import Mapping

    from sklearn.base import clone

    from ..common.replay import n_layers_of

    L = n_layers_of(train)
    if answer is Ellipsis or not isinstance(answer, Mapping) or not answer:
        return Feedback(False, "answer a dict {min_layer: layers saved on test}, e.g. {10: 0.2, 20: 0.1}; got "
                               f"{answer!r:.60}.")
    bad = [m for m in answer if not isinstance(m, (int, np.integer)) or not 1 <= m < L]
    if bad:
        return Feedback(False, f"the keys are min_layer values, whole numbers from 1 to {L - 1}; got {bad}.")
    for m, value in answer.items():
        problem = _not_a_number(value, f"the layers saved with min_layer={m}")
        if problem is not None:
            return problem
    base = policies[policy]
    _, original = _consistency_saving(base, train, test)
    lines, savings = [f"min_layer={base.min_layer}: {original['layers_saved']:.1%}"], [original["layers_saved"]]
    for m in sorted(answer):
        refit = clone(base).set_params(min_layer=int(m)).fit(train)
        threshold, run = _consistency_saving(refit, train, test)
        _, by_accuracy, _ = _replay(refit, train, test, max_loss=0.01, metric="accuracy")
        verdict = _compare(answer[m], run["layers_saved"], what=f"the layers saved with min_layer={m}", tol=1e-3,
                           bounds=(0, 1),
                           mistakes=((original["layers_saved"], f"the saving of the original min_layer="
                                      f"{base.min_layer}: refit with set_params(min_layer={m})"),
                                     (by_accuracy["layers_saved"], "the saving with the accuracy criterion: choose for "
                                      "≥ 99% consistency (metric=\"consistency\")")),
                           hint="Fit on train, choose the threshold on train, replay on test.", ok="")
        if not verdict:
            return verdict
        lines.append(f"min_layer={m}: {run['layers_saved']:.1%} (threshold {threshold:.2f})")
        savings.append(run["layers_saved"])
    trend = "raised" if savings[-1] > savings[0] else "did not raise"
    return Feedback(True, "layers saved on test at ≥ 99% train consistency — " + "; ".join(lines) + f". Here the "
                          f"largest min_layer {trend} the saving. Layers below min_layer are never checked, which caps "
                          "the saving at 1 − min_layer / L; but a noisy classifier can no longer fire there by chance, "
                          "so the consistency bar may accept a lower threshold above it.")


def _fitted_on(policy, table) -> bool:
    """``policy`` was fitted on the examples of ``table`` (same task, split and number of examples)."""
    meta = policy.metadata
    return (meta.get("task"), meta.get("split"), meta.get("n_train_examples")) == \
        (table.attrs.get("task"), table.attrs.get("split"), int(policy.decision_rows(table)["example"].nunique()))


def check_03_beats_baseline(train, test, policies, answer, baseline: str = "SVM · paper features") -> Feedback:
    """Exercise 03.3: a policy that, with its threshold chosen on train for ≥ 99% consistency, saves more layers
    on test than ``baseline`` chosen the same way, at a test consistency at most 1 point lower."""
    from sklearn.base import clone

    from ..rules.policy import ExitPolicy

    if not isinstance(answer, ExitPolicy):
        return Feedback(False, "answer an ai.ExitPolicy(...) (fitted on train, or not fitted: the checker fits it); "
                               f"got {answer!r:.60}.")
    if baseline not in policies:
        return Feedback(False, f"no policy {baseline!r} to compare with; `policies` has {sorted(policies)}.")
    if not hasattr(answer, "features_"):
        answer = clone(answer).fit(train)
    elif not _fitted_on(answer, train):
        meta = answer.metadata
        return Feedback(False, f"your policy was fitted on {meta.get('task')} / {meta.get('split')} "
                               f"({meta.get('n_train_examples')} examples), not on `train`: fit it on train, or pass "
                               "it unfitted. The test split only reports.")
    base = policies[baseline]
    if {k: v for k, v in answer.get_params().items() if k != "threshold"} == \
            {k: v for k, v in base.get_params().items() if k != "threshold"}:
        return Feedback(False, f"that is the baseline {baseline!r} itself: change the classifier, the features, the "
                               "label scheme or min_layer.")
    threshold, mine = _consistency_saving(answer, train, test)
    _, theirs = _consistency_saving(base, train, test)
    summary = (f"yours (threshold {threshold:.2f}, chosen on train): {mine['layers_saved']:.1%} of layers saved at "
               f"consistency {mine['consistency']:.3f}; {baseline}: {theirs['layers_saved']:.1%} at "
               f"{theirs['consistency']:.3f} (test, n = {mine['n']})")
    if mine["layers_saved"] <= theirs["layers_saved"]:
        return Feedback(False, f"{summary} — not more. Hint: chapter 02 found which features separate `settled` rows.")
    if mine["consistency"] < theirs["consistency"] - 0.01:
        return Feedback(False, f"{summary} — it saves more by changing more predictions (consistency more than 1 "
                               "point lower). Try a more cautious feature set or label scheme (`settled`).")
    harder = "threshold · label_gap"
    next_step = f" Now try the bare threshold as the baseline: baseline=\"{harder}\"." if baseline != harder else ""
    return Feedback(True, f"{summary}.{next_step}")


# ---- chapter 04 -------------------------------------------------------------------------------------


def _method_row(evaluations, task: str, method: str):
    """The row of ``method`` in the evaluation table of ``task``."""
    table = evaluations[task].table
    return table[table["method"] == method].iloc[0]


def check_04_affordable_checks(evaluations, answer: float, task: str = "sentiment",
                               method: str = "CRF · paper features") -> Feedback:
    """Exercise 04.1: how many exit checks per example ``method`` could afford on ``task`` before their
    measured cost (``check_cost`` layers each) eats all the layers it saves (``layers_saved`` × L)."""
    what = "the number of checks per example that would cost the layers saved"
    problem = _not_a_number(answer, what)
    if problem is not None:
        return problem
    row, L = _method_row(evaluations, task, method), evaluations[task].n_layers
    cost, checks = float(row["check_cost"]), float(row["checks_per_example"])
    if not np.isfinite(cost) or cost <= 0:
        return Feedback(False, f"{method} on {task} has no measured check cost ({cost}): run the evaluation with "
                               "n_timing ≥ 1.")
    saved = float(row["layers_saved"]) * L
    reference = saved / cost
    spent = checks * cost
    share = (f"{spent / saved:.0%} of the saving goes to checks" if saved > 0
             else "it saves nothing: every check is a loss")
    return _compare(answer, reference, what=what, tol=max(1e-3, 0.01 * abs(reference)), bounds=(0, np.inf),
                    mistakes=((row["layers_saved"] / cost, "layers_saved / check_cost: layers_saved is a fraction of "
                                                           f"the L = {L} layers"),
                              (spent, "what its checks cost now (check_cost × checks_per_example), in layers"),
                              (saved - spent, "the layers left after paying for the checks"),
                              (saved, "the layers saved per example: divide by the cost of one check"),
                              (cost / saved if saved else np.nan, "upside down: the cost of one check / the layers "
                                                                  "saved")),
                    hint="Layers saved per example = layers_saved × L; one check costs check_cost layers.",
                    ok=f"{method} on {task} saves {saved:.1f} of {L} layers per example and one check costs "
                       f"{cost:.2f} layers: about {reference:.1f} checks would eat the saving. It makes {checks:.1f} "
                       f"per example — {share}.")


def check_04_consistency_threshold(policies, train_traces, test_traces, answer: float, task: str = "sentiment",
                                   method: str = "CRF · label features", max_loss: float = 0.01) -> Feedback:
    """Exercise 04.2: ``method``'s threshold chosen on the train trace for at most ``max_loss`` consistency lost
    instead of accuracy, replayed on the test trace: its layers saved."""
    from ..features.table import feature_table
    from ..rules.tuning import simulate

    what = f"the layers saved on the {task} test split, a fraction of L"
    problem = _not_a_number(answer, what)
    if problem is not None:
        return problem
    policy = policies[task][method]
    train, test = feature_table(train_traces[task]), feature_table(test_traces[task])
    threshold, run, train_row = _replay(policy, train, test, max_loss=max_loss, metric="consistency")
    own = simulate(policy, test)
    return _compare(answer, run["layers_saved"], what=what, tol=1e-3, bounds=(0, 1),
                    mistakes=((own["layers_saved"], f"the saving at the policy's own threshold {policy.threshold:.2f}, "
                                                    "chosen for accuracy: tune it with metric=\"consistency\""),
                              (train_row["layers_saved"], "the saving on the train trace: replay on the test trace")),
                    hint=f"ai.tune_threshold(policy, train table, metric=\"consistency\", max_loss={max_loss:g}) "
                         "with the default cv, then ai.simulate on the test table.",
                    ok=f"threshold {threshold:.2f} for ≥ {1 - max_loss:.0%} consistency (accuracy criterion: "
                       f"{policy.threshold:.2f}): "
                       f"{run['layers_saved']:.1%} of layers saved on {task} at consistency {run['consistency']:.3f} "
                       f"(accuracy criterion: {own['layers_saved']:.1%} at {own['consistency']:.3f}).")


def check_04_exit_before_settling(evaluations, example, task: str = "sentiment",
                                  method: str = "CRF · label features") -> Feedback:
    """Exercise 04.3: the example whose real exit under ``method`` comes earliest relative to the layer where
    its answer settles (exit layer − oracle layer smallest; any example tied at that minimum is right)."""
    ev = evaluations[task]
    exits, oracle = np.asarray(ev.exits[method]), np.asarray(ev.exits["oracle"])
    margin = exits - oracle
    best = np.flatnonzero(margin == margin.min())
    example, problem = _whole_number(example, f"an index into the {task} test examples", 0, len(exits) - 1)
    if problem is not None:
        return problem
    if example not in best:
        return Feedback(False, f"example {example} exits at layer {exits[example]}, its answer settles at layer "
                               f"{oracle[example]} (exit − settle = {margin[example]:+d}); another example has a "
                               "smaller difference: compute evaluations[task].exits[method] − .exits['oracle'].")
    pred, full = ev.predictions[method][example], ev.predictions["full"][example]
    changed = int(np.sum(np.asarray(ev.predictions[method]) != np.asarray(ev.predictions["full"])))
    if margin[example] < 0:
        verdict = (f"it stopped {-margin[example]} layer(s) before its answer settled, and its answer there "
                   f"{'differs from' if pred != full else 'equals'} the full model's"
                   + (" — by luck: the answer was still going to change." if pred == full else "."))
    else:
        verdict = (f"even this example exits {margin[example]} layer(s) after its answer settled: on {task}, "
                   f"{method} never stops before the oracle (n={len(exits)}) — it is cautious; the savings it leaves "
                   "are the gap to the oracle.")
    return Feedback(True, f"example {example}: exit at layer {exits[example]}, settles at layer {oracle[example]}; "
                          f"{verdict} {changed} of {len(exits)} exits change the full model's answer.")


# ---- chapter 05 -------------------------------------------------------------------------------------


def check_05_earliest_exit(explorer, example) -> Feedback:
    """Exercise 05.1: the test example that exits earliest at the explorer's current policy, threshold and
    minimum layer (any example tied at the earliest exit layer is right)."""
    exits = explorer.dataset_exits()
    layers = exits["exit_layer"].to_numpy()
    first = np.flatnonzero(layers == layers.min())
    example, problem = _whole_number(example, "an index into the test examples (a row of dataset_exits())", 0,
                                     len(layers) - 1)
    if problem is not None:
        return problem
    if layers.min() >= explorer.model.n_layers:
        return Feedback(False, "no test example exits before the last layer at these settings: lower the threshold "
                               "or the minimum layer, or pick another policy, then ask again.")
    if example not in first:
        return Feedback(False, f"example {example} exits at layer {layers[example]}, but {len(first)} example(s) exit "
                               f"at layer {layers.min()}: sort dataset_exits() by exit_layer.")
    row = exits.iloc[int(example)]
    same = "equals" if row["at_exit"] == row["full_model"] else "differs from"
    return Feedback(True, f"example {example} exits at layer {layers.min()} of {explorer.model.n_layers} (threshold "
                          f"{float(explorer.threshold.value):.2f}, min layer {int(explorer.min_layer.value)}); its "
                          f"answer there, {row['at_exit']!r}, {same} the full model's ({row['full_model']!r}; gold "
                          f"{row['gold']!r}). {len(first)} example(s) share that exit layer, of {len(layers)}.")


def check_05_threshold_within_one_point(explorer, answer) -> Feedback:
    """Exercise 05.2: the smallest threshold of the explorer's sweep whose test accuracy is at most one point below
    the full model's."""
    sweep = explorer.dataset_sweep()
    ok = sweep[sweep["accuracy"] >= sweep["full_accuracy"] - 0.01 - 1e-9]
    reference = float(ok["threshold"].min())
    tuned = float(explorer.policy.threshold)
    side = "below" if reference < tuned else "above" if reference > tuned else "equal to"
    return _compare(answer, reference, what="the smallest threshold losing at most 1 accuracy point on test",
                    tol=1e-6, bounds=(0, np.inf),
                    mistakes=((tuned, "the policy's tuned threshold (chosen on train); read the sweep on test"),
                              (float(sweep["threshold"].min()), "the smallest threshold of the sweep, whatever it "
                                                                "loses")),
                    hint="Filter dataset_sweep() on accuracy ≥ full_accuracy − 0.01, then take the smallest threshold.",
                    ok=f"{reference:.2f} on test (n={explorer.dataset_trace.n_examples}), {side} the tuned "
                       f"{tuned:.2f} chosen on train: the test split is another sample, and a threshold read off it "
                       "would flatter the policy — chapter 03 chooses on train for that reason.")


# ---- chapter 06 -------------------------------------------------------------------------------------


def check_06_min_calibration(answer: int, delta: float = 0.02, epsilon: float = 0.05) -> Feedback:
    """Exercise 06.1: the smallest calibration size at which a threshold with zero calibration losses is
    certified at ``delta``, ``epsilon`` (both p-values are (1 − δ)^n there)."""
    import math

    from ..certification import min_calibration_size

    what = "the smallest calibration size, a number of prompts"
    problem = _not_a_number(answer, what)
    if problem is not None:
        return problem
    reference = min_calibration_size(delta, epsilon)
    value = _as_number(answer)
    if np.isfinite(value) and value != round(value):
        return Feedback(False, f"a number of prompts is a whole number, got {value:g}.")
    bentkus_alone = math.ceil(math.log(epsilon / math.e) / math.log1p(-delta))
    below = (1 - delta) ** (reference - 1)
    return _compare(answer, reference, what=what, tol=1e-9, bounds=(1, np.inf),
                    mistakes=((reference - 1, f"one too few: (1 − δ)^{reference - 1} = {below:.4f} > ε = "
                                              f"{epsilon:g}"),
                              (bentkus_alone, "what the Bentkus term e·(1 − δ)^n alone needs; the Hoeffding term "
                                              "(1 − δ)^n is smaller, and the p-value is the smaller of the two"),
                              (math.ceil(1 / delta), "1/δ: the n at which one loss is expected, not a test")),
                    hint="Find the least n with (1 − δ)^n <= ε (ai.risk_control.binomial_p_value(0, n, δ) is "
                         "the same).",
                    ok=f"n = {reference}: (1 − δ)^{reference} = {(1 - delta) ** reference:.4f} <= ε = {epsilon:g}, "
                       f"while (1 − δ)^{reference - 1} = {below:.4f} > ε. With fewer calibration prompts nothing "
                       "can "
                       f"be certified at δ = {delta:.0%}, whatever the exit rule; to certify a threshold that shows "
                       "some disagreement on calibration, many more are needed (ai.max_certifiable_risk).")


def _threshold_verdict(answer, reference: float | None, *, what: str, mistakes: tuple = (), ok: str) -> Feedback:
    """The verdict on a certified-threshold answer: a number, or None when nothing is certified."""
    if answer is Ellipsis:
        return Feedback(False, f"replace the `...` with {what} (a number), or None if nothing is certified.")
    if answer is None:
        if reference is None:
            return Feedback(True, ok)
        return Feedback(False, f"a threshold is certified here: read `.threshold` of the Certification ({what}).")
    problem = _not_a_number(answer, what)
    if problem is not None:
        return problem
    if reference is None:
        return Feedback(False, "nothing is certified here: the Certification's `.threshold` is None (answer None).")
    value = _as_number(answer)
    if abs(value - reference) <= 1e-6:
        return Feedback(True, ok)
    for other, meaning in mistakes:
        if other is not None and abs(value - other) <= 1e-6:
            return Feedback(False, f"{value:g} is {meaning}.")
    return Feedback(False, f"{value:g} is not {what}: call ai.certify_threshold(...) and read the Certification's "
                           "`.threshold`.")


def _rank(cert, threshold: float | None) -> int:
    """Position of ``threshold`` in the candidates' testing order (-1 for None: never exits early)."""
    if threshold is None:
        return -1
    return int(np.flatnonzero(np.isclose(cert.thresholds, threshold))[0])


def check_06_accuracy_drop(policy, calibration, answer, *, delta: float = 0.02, epsilon: float = 0.05) -> Feedback:
    """Exercise 06.2: the threshold Learn-then-Test certifies for ``risk="accuracy_drop"`` on ``calibration``."""
    from ..certification import certify_threshold

    _, drop = certify_threshold(policy, calibration, delta=delta, epsilon=epsilon, risk="accuracy_drop")
    _, dis = certify_threshold(policy, calibration, delta=delta, epsilon=epsilon)
    _, hb = certify_threshold(policy, calibration, delta=delta, epsilon=epsilon, risk="accuracy_drop",
                              method="hoeffding_bentkus")
    further = _rank(drop, drop.threshold) - _rank(dis, dis.threshold)
    compare = ("the same threshold" if further == 0 else
               f"{further} candidate{'s' if further != 1 else ''} further down the sequence")
    fmt = lambda t: "nothing" if t is None else f"{t:g}"  # noqa: E731
    return _threshold_verdict(
        answer, drop.threshold, what="the threshold certified for the accuracy drop",
        mistakes=((dis.threshold, "the threshold certified for disagreement: pass risk=\"accuracy_drop\""),
                  (hb.threshold, "the Hoeffding–Bentkus threshold; the default p-value is the exact binomial one")),
        ok=f"accuracy drop certifies {fmt(drop.threshold)} (disagreement: {fmt(dis.threshold)}; {compare}), saving "
           f"{drop.calibration_layers_saved:.1%} vs {dis.calibration_layers_saved:.1%} of the layers on calibration "
           f"(n = {drop.n}). Every accuracy drop is also a disagreement, so at every threshold the accuracy-drop risk "
           "is at most the disagreement risk, its p-value no larger, and the fixed sequence gets at least as far. The "
           "catch: it needs gold labels on the calibration prompts, and it allows changed answers where the full "
           "model was wrong anyway.")


def check_06_bonferroni(policy, calibration, answer, *, delta: float = 0.02, epsilon: float = 0.05) -> Feedback:
    """Exercise 06.3: the threshold Learn-then-Test deploys with ``procedure="bonferroni"`` on ``calibration``."""
    from ..certification import certify_threshold

    _, bonf = certify_threshold(policy, calibration, delta=delta, epsilon=epsilon, procedure="bonferroni")
    _, fst = certify_threshold(policy, calibration, delta=delta, epsilon=epsilon)
    loose = np.flatnonzero(fst.p_values <= epsilon)
    uncorrected = float(fst.thresholds[loose[-1]]) if loose.size else None
    k = len(bonf.thresholds)
    order = _rank(bonf, bonf.threshold) - _rank(fst, fst.threshold)
    compare = ("the same as" if order == 0 else "more aggressive than" if order > 0 else "more conservative than")
    fmt = lambda t: "nothing" if t is None else f"{t:g}"  # noqa: E731
    return _threshold_verdict(
        answer, bonf.threshold, what="the threshold Bonferroni deploys",
        mistakes=((fst.threshold, "the fixed-sequence threshold: pass procedure=\"bonferroni\""),
                  (uncorrected, f"the most aggressive threshold with p <= ε — without dividing ε by the k = {k} "
                                "candidates that is no guarantee at all")),
        ok=f"Bonferroni certifies {int(bonf.certified.sum())} of {k} candidates (p <= ε/k = {epsilon / k:.2g}) and "
           f"deploys {fmt(bonf.threshold)}, {compare} the fixed sequence's {fmt(fst.threshold)} "
           f"({int(fst.certified.sum())} certified). Bonferroni may jump over a candidate that fails, but pays for "
           "it with a k times stricter level everywhere; the fixed sequence pays nothing, if its order is fixed "
           "in advance and the risk rises along it.")


# ---------------------------------------------------------------------------------------------------
# Chapter 07: early exit in generation


def check_07_agreement(result, reference, answer) -> Feedback:
    """Exercise 07.1: how many tokens of ``result`` (a ``GenerationResult``) come before its first
    divergence from the full model's ``reference``."""
    from ..generation.study import agreement_prefix

    if answer is Ellipsis:
        return Feedback(False, "replace the `...` with a number of tokens.")
    problem = _not_a_number(answer, "a number of tokens")
    if problem is not None:
        return problem
    mine, full = result.tokens.tolist(), reference.tokens.tolist()
    value, right = _as_number(answer), agreement_prefix(mine, full)
    n = min(len(mine), len(full))
    anywhere = int(sum(a == b for a, b in zip(mine[:n], full[:n])))
    if value == right:
        after = "the whole sequence" if mine == full else "after it the two texts go separate ways"
        return Feedback(True, f"{right} of the full model's {len(full)} tokens come before the first divergence"
                              f" ({after}).")
    if value == anywhere and anywhere != right:
        return Feedback(False, f"{value:g} counts equal tokens at every position, also after the first divergence; "
                               "once the texts differ, later coincidences are not agreement: stop at the first "
                               "difference.")
    return Feedback(False, f"{value:g} is not the number of leading tokens equal to the full model's: compare "
                           "result.tokens with reference.tokens position by position and stop at the first difference.")


def check_07_tokens_per_pass(result, answer) -> Feedback:
    """Exercise 07.2: new tokens per verification pass of a speculative ``result``; the first new token comes
    from the prompt's own pass, so it is (tokens − 1) / verify passes."""
    if answer is Ellipsis:
        return Feedback(False, "replace the `...` with a number (tokens per verification pass).")
    problem = _not_a_number(answer, "a number of tokens per pass")
    if problem is not None:
        return problem
    if not result.verify_passes:
        return Feedback(False, "this result has no verification passes: pass a speculative_generate result.")
    value = _as_number(answer)
    right = (result.n_tokens - 1) / result.verify_passes
    if abs(value - right) <= 1e-6:
        return Feedback(True, f"{right:.2f} tokens per full pass ({result.accepted} of {result.drafted} drafts "
                              f"accepted, plus one token of the full model's own per pass): the full model ran "
                              f"{result.verify_passes} times instead of {result.n_tokens - 1}.")
    if abs(value - result.n_tokens / result.verify_passes) <= 1e-6:
        return Feedback(False, "the first new token comes from the prompt's pass, not from a verification: leave it "
                               "out.")
    if abs(value - result.acceptance_rate) <= 1e-6:
        return Feedback(False, "that is the acceptance rate (accepted / drafted); each pass also yields the full "
                               "model's own token.")
    return Feedback(False, f"{value:g} is not it: count the new tokens after the first and divide by verify_passes.")


# ---------------------------------------------------------------------------------------------------
# Chapter 08: learned readers


def check_08_probe_agreement(probe_trace, lens_trace, layer: int, answer) -> Feedback:
    """Exercise 08.1: the test agreement with the full model of a probe trained at ``layer`` (section 1's
    recipe). Reference: the ``ProbeReader``'s reading ``probe_trace`` (a ``ReaderTrace`` of the test prompts,
    equal to the probe written out to 1e-6), at ``layer``; ``lens_trace``: the lens's (a known mistake)."""
    L = probe_trace.n_layers
    if not 0 <= layer < L:
        raise ValueError(f"layer must be in 0..{L - 1} (a probe reads below the last layer), got {layer}")
    reference = float(probe_trace.consistency_by_layer()[layer])
    half = float(probe_trace.consistency_by_layer()[L // 2])
    n = probe_trace.n_examples
    return _compare(
        answer, reference, what=f"the probe's agreement at layer {layer}", tol=0.5 / n, bounds=(0.0, 1.0),
        mistakes=((float(lens_trace.consistency_by_layer()[layer]), f"the logit lens's agreement at layer {layer}: "
                   "read the probe's predict_proba on the test states instead"),
                  (half, f"the agreement at layer {L // 2} (section 1's layer): take the states at layer {layer}")),
        ok=f"at layer {layer} the probe agrees with the full model on {reference:.1%} of {n} test prompts, the lens "
           f"on {float(lens_trace.consistency_by_layer()[layer]):.1%}.",
        hint="fit on the train states at that layer, predict the test states, and compare the argmax with "
             "test.final_predictions().")


def check_08_recertified_threshold(rule, table, calibration_examples, answer, *, delta: float = 0.10,
                                   epsilon: float = 0.05) -> Feedback:
    """Exercise 08.2: the threshold Learn-then-Test certifies (at ``delta``, ``epsilon``) for ``rule`` moved to
    the data of ``table`` (``rule.for_task(table)``) on the prompts ``calibration_examples`` of that table, as
    section 8 certifies (``evaluation.reader_rules.certify_reader_rule``)."""
    from ..evaluation.reader_rules import certify_reader_rule

    calibration = table[table.example.isin(np.asarray(calibration_examples))]
    if calibration.empty:
        raise ValueError("calibration_examples selects no prompt of the table")
    moved = rule.for_task(table)
    _, cert = certify_reader_rule(moved, calibration, delta=delta, epsilon=epsilon)
    _, strict = certify_reader_rule(moved, calibration, delta=0.05, epsilon=epsilon)
    fmt = lambda t: "nothing" if t is None else f"{t:g}"  # noqa: E731
    return _threshold_verdict(
        answer, cert.threshold, what=f"the threshold certified at δ = {delta:g}",
        mistakes=((strict.threshold if delta != 0.05 else None, "the threshold certified at δ = 5% (section 8's): "
                   f"pass delta={delta:g}"),
                  (rule.threshold if rule.threshold != cert.threshold else None,
                   "the threshold chosen on the movie reviews, before any certification")),
        ok=f"δ = {delta:g} certifies {fmt(cert.threshold)} on {cert.n} unlabeled prompts (δ = 5%: "
           f"{fmt(strict.threshold)}): a looser risk level buys a more aggressive threshold, and no label was read.")
