"""Checked claims: a sentence about a number is computed from it, or checked against it.

Prose in a chapter that states a comparison ("raw decisions are less accurate than batch-calibrated ones")
goes stale as soon as the numbers move. So the cell beside such prose calls ``claim``, which

- prints the sentence **computed from the numbers** (``text`` when ``condition`` holds, ``otherwise`` when it
  does not, both formatted with the numbers), so the student reads what this run shows, with n; and
- records the claim as a display output with the MIME type ``CLAIM_MIME`` (beside its plain text), which
  ``tests/test_notebooks.py`` reads from every executed chapter: a **firm** claim (no ``otherwise``: the
  prose states it as a fact) that does not hold fails the test.

Quick mode's numbers are noise (n = 24), and class mode's are noisier than full mode's, so a firm claim about
what the method shows should be checked on the full-mode numbers: ``reference`` reads them from ``results/``
(the last published full-mode run, per model), and ``quick_and_full`` writes a quick- or class-mode value
beside its full-mode reference. A firm claim on the numbers of a smaller run (``basis="quick"``: quick or
class mode) is only reported, never failed, unless it holds at any n (``strict=True``, e.g. "equal to float
precision").
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

CLAIM_MIME = "application/vnd.adainfer.claim+json"


@dataclass(frozen=True)
class Claim:
    """One checked sentence: its key, the text shown, whether it held, and on which numbers."""

    key: str
    text: str
    held: bool
    firm: bool                 # stated as a fact in the prose (no alternative sentence)
    basis: str                 # "full": full-mode numbers (this run or results/); "quick": a quick/class run's
    strict: bool = False       # must hold at any n, quick mode included
    numbers: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """A firm claim that did not hold on numbers it must hold on (what the notebook test fails on)."""
        return self.firm and not self.held and (self.basis == "full" or self.strict)

    def __str__(self) -> str:
        if not self.firm:
            return f"▸ {self.text}"
        if self.held:
            return f"✔ {self.text}"
        note = "" if self.failed else " (numbers at a reduced n are noisy; the full-mode run is what the prose states)"
        return f"✘ does not hold: {self.text}{note}"

    def _repr_mimebundle_(self, include=None, exclude=None):
        data = {k: _jsonable(v) for k, v in asdict(self).items()} | {"failed": self.failed}
        return {"text/plain": str(self), "text/markdown": str(self), CLAIM_MIME: data}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def claim(key: str, condition: bool, text: str, otherwise: str | None = None, *, basis: str = "full",
          strict: bool = False, show: bool = True, **numbers) -> Claim:
    """Print and record the sentence that ``numbers`` support.

    ``text`` (and ``otherwise``) are ``str.format`` templates over ``numbers``. Without ``otherwise`` the claim
    is *firm*: the chapter's prose states it, and a failure is reported (and fails the notebook test when
    ``basis="full"`` or ``strict``). With ``otherwise`` the claim is *adaptive*: the shown sentence follows the
    numbers, whichever way they go.

    ``basis``: ``"full"`` when ``numbers`` are full-mode numbers (this run in full mode, or ``reference``
    values), ``"quick"`` when they are this quick- or class-mode run's.
    """
    if basis not in ("full", "quick"):
        raise ValueError(f"basis must be 'full' or 'quick', got {basis!r}")
    held = bool(condition)
    template = text if held or otherwise is None else otherwise
    result = Claim(key=key, text=template.format(**numbers), held=held, firm=otherwise is None, basis=basis,
                   strict=strict, numbers=numbers)
    if show:
        try:
            from IPython.display import display

            display(result)
        except ImportError:  # pragma: no cover - outside IPython
            print(result)
    return result


def basis(settings) -> str:
    """``"full"`` in full mode, ``"quick"`` in quick or class mode: what numbers this run's own values are."""
    return "full" if settings.full else "quick"


def results_folder(settings=None, model: str | None = None):
    """``results/`` for the default model, ``results/<model>/`` for another (where a publishing run's
    ``save_result`` writes)."""
    from ..model.loading import DEFAULT_MODEL
    from .modes import output_folder

    name = model or (settings.model if settings is not None else DEFAULT_MODEL)
    return output_folder("full", publish=True, model=name)


def reference(settings, name: str, column: str, **where) -> float | None:
    """The full-mode value of ``column`` in ``results/<name>.csv`` on the rows matching ``where`` (their mean
    when several match, e.g. over seeds); None when this model has no such saved result."""
    path = results_folder(settings) / f"{name}.csv"
    if not path.exists():
        return None
    table = pd.read_csv(path)
    for key, value in where.items():
        if key not in table.columns:
            return None
        table = table[table[key] == value]
    if column not in table.columns or table.empty:
        return None
    return float(table[column].mean())


def reference_n(settings, name: str, **where) -> int | None:
    """The ``n`` of the matching rows of ``results/<name>.csv`` (None when unknown)."""
    value = reference(settings, name, "n", **where)
    return None if value is None else int(value)


def quick_and_full(settings, value: float, ref: float | None, *, n: int | None = None, ref_n: int | None = None,
                   fmt: str = "{:.3f}") -> str:
    """``value`` as the reader should take it: in full mode the value itself; in quick or class mode the value
    with "(quick mode, n=…)" (or class) and its full-mode reference beside it (or a note that none is saved for
    this model)."""
    here = fmt.format(value) + (f" (n={n})" if n else "")
    if settings.full:
        return here
    small = fmt.format(value) + (f" ({settings.mode} mode, n={n})" if n else f" ({settings.mode} mode)")
    if ref is None:
        return f"{small}; no full-mode reference saved for {settings.model}"
    return f"{small}; full mode {fmt.format(ref)}" + (f" (n={ref_n})" if ref_n else "")


def claims_in(notebook) -> list[dict]:
    """Every recorded claim in an executed notebook (an ``nbformat`` node), in cell order."""
    found = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if CLAIM_MIME in data:
                record = data[CLAIM_MIME]
                found.append(json.loads(record) if isinstance(record, str) else dict(record))
    return found


# ---- the chapters' checked claims -------------------------------------------------------------------
# Each function computes what one passage of prose says, from the objects the chapter has, and shows it as
# claims (the notebook cell beside the prose is one call). Quick-mode numbers are shown beside the full-mode
# reference, and a firm claim about the method is checked on the full-mode numbers.


def _fmt_pts(x: float) -> str:
    return f"{x:+.1f} pt"


def ch01_top_tokens(tt, examples) -> list[Claim]:
    """Chapter 01's heat map: which token the lens puts first below the layer where a label word takes over."""
    from collections import Counter

    from ..figures.plots import visible_token

    trace = tt.trace
    label_ids = set(np.ravel(np.asarray(trace.label_ids, dtype=object)).tolist()) if trace.label_ids else set()
    top = trace.top_ids[examples][:, :, 0]                        # (examples, L+1)
    probs = trace.top_probs[examples][:, :, 0]
    is_label = np.isin(top, list(label_ids))
    first_label = [int(np.argmax(row)) if row.any() else None for row in is_label]
    below = [(int(t), float(p)) for row, prow, first in zip(top, probs, first_label)
             for layer, (t, p) in enumerate(zip(row, prow)) if 1 <= layer < (first if first is not None else len(row))]
    n = len(examples)
    shown = [f for f in first_label if f is not None]
    out = []
    if below:
        token, count = Counter(t for t, _ in below).most_common(1)[0]
        mean_p = float(np.mean([p for t, p in below if t == token]))
        out.append(claim("ch01.top_tokens.below", True,
                         "Below the first label-word layer, the most frequent top-1 token of these {n} prompts is "
                         "'{token}' ({share:.0%} of the {cells} cells from layer 1 up, mean probability {p:.2f}): "
                         "not an answer at all.", basis="quick",
                         n=n, token=visible_token(trace.token_strings.get(token, "?")), share=count / len(below),
                         cells=len(below), p=mean_p))
    layers = "" if not shown else (f"layer {min(shown)}" if min(shown) == max(shown)
                                   else f"layers {min(shown)}–{max(shown)}")
    out.append(claim("ch01.top_tokens.label_layer", bool(shown),
                     "A label word first becomes the top-1 token at {layers} (of {L}) in {k} of the {n} prompts.",
                     "No label word is the top-1 token at any layer in these {n} prompts.", basis="quick",
                     layers=layers, L=tt.n_layers, k=len(shown), n=n))
    return out


def ch01_calibration(settings, report: pd.DataFrame) -> list[Claim]:
    """Chapter 01's calibration lesson, per task: raw vs batch accuracy and raw's lean towards one label."""
    out = []
    for task, rows in report.groupby("task", sort=False):
        rows = rows.set_index("calibration")
        raw, batch = float(rows.loc["raw", "accuracy_full"]), float(rows.loc["batch", "accuracy_full"])
        share = float(rows.loc["raw", "most_frequent_label_share"])
        n = int(rows.loc["raw", "n"])
        ref = {m: reference(settings, "01_calibration", "accuracy_full", task=task, calibration=m)
               for m in ("raw", "batch")}
        ref_n = reference_n(settings, "01_calibration", task=task, calibration="raw")
        gain = batch - raw
        mode = "" if settings.full else f"{settings.mode} mode, "
        full_text = ""
        if not settings.full:
            full_text = (f" Full mode (n={ref_n}): raw {ref['raw']:.3f} → batch {ref['batch']:.3f}."
                         if None not in ref.values() else f" No full-mode reference saved for {settings.model}.")
        out.append(claim(f"ch01.calibration.{task}", abs(gain) >= 0.01,
                         "{task} ({mode}n={n}): accuracy at layer L raw {raw:.3f} → batch {batch:.3f} ({gain}); raw "
                         "decisions give one label to {share:.0%} of the examples.{full}",
                         "{task} ({mode}n={n}): raw and batch-calibrated decisions are equally accurate here "
                         "({raw:.3f} vs {batch:.3f}); raw decisions give one label to {share:.0%} of the "
                         "examples.{full}",
                         basis=basis(settings), task=task, share=share, gain=_fmt_pts(100 * gain), mode=mode, n=n,
                         raw=raw, batch=batch, full=full_text))
    # the firm claim behind the section's title, on the full-mode numbers
    full = {t: {m: (reference(settings, "01_calibration", "accuracy_full", task=t, calibration=m)
                    if not settings.full
                    else float(report[(report.task == t) & (report.calibration == m)].accuracy_full.iloc[0]))
                for m in ("raw", "batch")} for t in report.task.unique()}
    full = {t: v for t, v in full.items() if None not in v.values()}
    if full:
        helped = [t for t, v in full.items() if v["batch"] - v["raw"] >= 0.02]
        out.append(claim("ch01.calibration.helps", bool(helped),
                         "In full mode, batch calibration raises the accuracy at layer L by ≥ 2 points on {tasks}: "
                         "calibration is needed on this model.", tasks=", ".join(helped) or "no task",
                         basis="full"))
    return out


def ch01_mmlu_at_chance(settings, over_seeds: pd.DataFrame) -> Claim:
    """Chapter 01's discussion: MMLU is at chance for this model (full-mode numbers, over seeds)."""
    acc = reference(settings, "01_over_seeds", "accuracy_full", task="mmlu", demos="fixed") if not settings.full else \
        float(over_seeds[over_seeds.task == "mmlu"].accuracy_full.mean())
    if acc is None:
        acc = float(over_seeds[over_seeds.task == "mmlu"].accuracy_full.mean())
        return claim("ch01.mmlu_chance", abs(acc - 0.25) <= 0.05,
                     "MMLU: accuracy {acc:.3f} ({mode} mode, mean over seeds) vs chance 0.25.",
                     "MMLU: accuracy {acc:.3f} ({mode} mode, mean over seeds) vs chance 0.25 — not at chance here.",
                     basis=basis(settings), acc=acc, mode=settings.mode)
    return claim("ch01.mmlu_chance", abs(acc - 0.25) <= 0.05,
                 "MMLU is at chance for {model}: accuracy at layer L {acc:.3f} (full mode, mean over seeds) vs "
                 "chance 0.25.", model=settings.model, acc=acc, basis="full")


def ch02_trajectories(table: pd.DataFrame) -> list[Claim]:
    """Chapter 02's trajectories: where the full-vocabulary confidence peaks, and whether the early half's
    label gap rises before the late half's."""
    from ..figures.plots_features import exit_groups

    data = table.assign(group=exit_groups(table).to_numpy())
    L = int(table.layer.max())
    peak = int(data[data.layer >= 1].groupby("layer").top_prob.mean().idxmax())
    means = data.groupby(["group", "layer"]).label_gap.mean().unstack(0)
    rise = {g: int(np.argmax(means[g].to_numpy() >= 0.5 * means[g].iloc[-1])) for g in means.columns}
    n = table.example.nunique()
    return [
        claim("ch02.top_prob_peak", peak <= L // 2,
              "Full-vocabulary top_prob is highest, on average over layers 1–{L}, at layer {peak} (n={n}): the lens "
              "is most sure of some token in the lower half, before the answer forms.",
              "Full-vocabulary top_prob is highest, on average over layers 1–{L}, at layer {peak} (n={n}).",
              basis="quick", peak=peak, L=L, n=n),
        claim("ch02.halves_rise", rise.get("early", 0) <= rise.get("late", 0) - 2,
              "The mean label_gap of the early half reaches half its final value at layer {early}, the late half's at "
              "layer {late}: the early half rises first (n={n}).",
              "The mean label_gap of both halves reaches half its final value at layer {early} (early half) and "
              "{late} (late half; n={n}): within two layers of each other, so the *mean* does not tell the "
              "halves apart — what does is the spread at each layer, which the per-layer AUC below measures.",
              basis="quick", early=rise.get("early"), late=rise.get("late"), n=n),
    ]


def ch02_layer_frac(settings, pooled: pd.DataFrame) -> Claim:
    """Chapter 02: does any feature beat ``layer_frac`` (depth alone) in pooled AUC?"""
    auc = pooled.set_index("feature")["auc"]
    depth = float(auc["layer_frac"])
    others = auc.drop("layer_frac")
    best = str((others - 0.5).abs().idxmax())
    best_auc = float(others[best])
    ref_depth = reference(settings, "02_pooled_auc_sentiment", "auc", feature="layer_frac")
    ref_best = reference(settings, "02_pooled_auc_sentiment", "auc", feature=best)
    n = int(pooled["n"].iloc[0]) if "n" in pooled else None
    return claim("ch02.layer_frac", abs(best_auc - 0.5) > abs(depth - 0.5),
                 "Pooled, the best single feature, {best} ({b}), beats depth alone, layer_frac ({d}).",
                 "Pooled, no single feature beats depth alone: layer_frac {d}, the best other feature {best} {b}. "
                 "That is why the per-layer AUC matters: at a given depth the label-word features still separate "
                 "settled from unsettled examples, and a classifier combines them with the layer.",
                 basis=basis(settings), best=best, b=quick_and_full(settings, best_auc, ref_best, n=n),
                 d=quick_and_full(settings, depth, ref_depth))


def ch04_same_numbers(differences) -> Claim:
    """Chapter 04 §1: the real exit's label logits equal the full run's lens at that layer, to float precision."""
    worst = float(np.max(np.abs(np.asarray(differences, dtype=float))))
    return claim("ch04.same_numbers", worst < 1e-4,
                 "Largest difference {worst:.1e}: equal to float precision (float32 keeps about 7 digits).",
                 basis="quick", strict=True, worst=worst)


def ch04_check_cost(settings, table: pd.DataFrame) -> list[Claim]:
    """Chapter 04 §6: what one exit check costs, in layers, with full-vocabulary and with label features."""
    out = []
    rows = table[table.kind == "real early exit"].dropna(subset=["check_cost"])
    for label, mask in (("full-vocabulary (paper features)", rows.method.str.contains("paper")),
                        ("label-word", ~rows.method.str.contains("paper"))):
        part = rows[mask]
        if part.empty:
            continue
        lo, hi = float(part.check_cost.min()), float(part.check_cost.max())
        ref_rows = None
        path = results_folder(settings) / "04_early_exit_by_task.csv"
        if not settings.full and path.exists():
            saved = pd.read_csv(path)
            paper = saved.method.str.contains("paper").eq(label.startswith("full"))
            saved = saved[(saved.kind == "real early exit") & paper]
            ref_rows = (float(saved.check_cost.min()), float(saved.check_cost.max())) if len(saved) else None
        ref_text = f"; full mode {ref_rows[0]:.2f}–{ref_rows[1]:.2f}" if ref_rows else ""
        out.append(claim(f"ch04.check_cost.{label.split()[0]}", lo >= 1.0,
                         "One {label} check costs {lo:.2f}–{hi:.2f} layers of time here{ref} (n timed {n}): at least "
                         "one decoder layer per check.",
                         "One {label} check costs {lo:.2f}–{hi:.2f} layers of time here{ref} (n timed {n}): less "
                         "than one decoder layer per check" + (" — on this task and machine the full LM head is "
                                                                "cheaper than a layer." if label.startswith("full")
                                                                else "."),
                         basis=basis(settings), label=label, lo=lo, hi=hi, ref=ref_text,
                         n=int(part.n_timed.iloc[0])))
    return out


def ch04_mmlu_random(settings, table: pd.DataFrame) -> Claim:
    """Chapter 04 §7: on MMLU, is a random exit about as accurate as the policies?"""
    def spread(t):
        m = t[t.task == "mmlu"].set_index("method")
        policies = m[m.kind == "real early exit"].accuracy
        return float(m.loc["full", "accuracy"]), float(m.loc["random", "accuracy"]), float(policies.min()), \
            float(policies.max()), int(m.n.iloc[0])
    full, rnd, lo, hi, n = spread(table)
    path = results_folder(settings) / "04_early_exit_by_task.csv"
    ref_text = ""
    if not settings.full and path.exists():
        rf, rr, rl, rh, rn = spread(pd.read_csv(path))
        ref_text = (f" Full mode (n={rn}): full model {rf:.2f}, random {rr:.2f}, policies {rl:.2f}–{rh:.2f}.")
    within = lo - 0.05 <= rnd <= hi + 0.05
    return claim("ch04.mmlu_random", within,
                 "MMLU (n={n}): full model {full:.2f}, random exits {rnd:.2f}, policies {lo:.2f}–{hi:.2f}: random "
                 "lands within the policies' range (±5 points) — at chance, no policy beats a random exit.{ref}",
                 "MMLU (n={n}): full model {full:.2f}, random exits {rnd:.2f}, policies {lo:.2f}–{hi:.2f}: random "
                 "falls outside the policies' range — with n={n} at chance, such gaps are noise (one answer is "
                 "{step:.0%}).{ref}",
                 basis=basis(settings), n=n, full=full, rnd=rnd, lo=lo, hi=hi, ref=ref_text, step=1 / n)


def threshold_text(threshold: float | None) -> str:
    """A threshold as a student should read it: above 1 (or None, inf) it is a rule that never exits early."""
    if threshold is None or not np.isfinite(threshold) or threshold > 1:
        return "never exits (> 1)"
    return f"{threshold:.2f}"


def show_thresholds(table: pd.DataFrame, columns=("threshold",), missing: str | None = None) -> pd.DataFrame:
    """``table`` with its threshold columns written for reading: a threshold above 1 says "never exits"; a missing
    one stays empty (the oracle has none), or says ``missing`` when given (e.g. "never exits: nothing certified")."""
    out = table.copy()
    for column in columns:
        if column in out:
            out[column] = [(missing if missing is not None else value)
                           if value is None or (isinstance(value, float) and np.isnan(value))
                           else threshold_text(value) for value in out[column]]
    return out


def _full_value(settings, here: float, name: str, column: str, **where) -> tuple[float, str, float | None]:
    """The number a firm claim about the method is checked on: this run's in full mode; in quick or class mode the
    saved full-mode reference when there is one (else this run's, reported only). Returns (value, basis, reference)."""
    if settings.full:
        return here, "full", here
    ref = reference(settings, name, column, **where)
    return (here, "quick", None) if ref is None else (ref, "full", ref)


# ---- chapter 06 ----------------------------------------------------------------------------------------


def ch06_sizing(sizing: pd.DataFrame) -> Claim:
    """Chapter 06: Hoeffding–Bentkus never certifies more calibration risk than the exact binomial p-value."""
    binomial = sizing["binomial"].fillna(-1.0).to_numpy()
    hb = sizing["Hoeffding–Bentkus"].fillna(-1.0).to_numpy()
    return claim("ch06.hoeffding_bentkus", bool(np.all(hb <= binomial + 1e-12)),
                 "In all {k} cells of the table Hoeffding–Bentkus certifies at most the calibration risk the binomial "
                 "p-value certifies, strictly less in {m}.", basis="quick", strict=True,
                 k=len(sizing), m=int(np.sum(hb < binomial - 1e-12)))


def ch06_certification(cert, delta: float) -> Claim:
    """Chapter 06's certification figure: where the fixed sequence stopped, and untested candidates below δ."""
    frame = cert.to_frame()
    certified = int((frame.status == "certified").sum())
    failed = frame[frame.status == "failed"]
    untested = frame[frame.status == "not tested"]
    below = untested[untested.empirical_risk <= delta]
    if failed.empty:
        return claim("ch06.sequence_stop", True, "All {k} candidates were certified (n = {n}): the sequence never "
                     "stopped.", basis="quick", k=certified, n=cert.n)
    stop = failed.iloc[0]
    return claim("ch06.sequence_stop", len(below) > 0,
                 "The sequence certified {k} candidates and stopped at {t:.2f} (p = {p:.3f} > ε). {m} of the {u} "
                 "untested candidates after it show a calibration risk ≤ δ = {delta:.0%} (the first at {first}) — "
                 "they are never deployed (n = {n}).",
                 "The sequence certified {k} candidates and stopped at {t:.2f} (p = {p:.3f} > ε); no untested "
                 "candidate after it shows a calibration risk ≤ δ = {delta:.0%} here (n = {n}), so the fixed order "
                 "cost nothing on this draw.", basis="quick",
                 k=certified, t=float(stop.threshold), p=float(stop.p_value), m=len(below), u=len(untested),
                 delta=delta, first=f"{below.threshold.iloc[0]:.2f}" if len(below) else "", n=cert.n)


def ch06_held_out(held: pd.DataFrame, delta: float) -> Claim:
    """Chapter 06: the certified threshold on the held-out part of the pool (one draw)."""
    row = held.iloc[0]
    dis = 1 - float(row.consistency)
    return claim("ch06.held_out", dis <= delta,
                 "On the {n} held-out prompts of this draw the certified threshold disagrees with the full model on "
                 "{d:.1%}, within δ = {delta:.0%}.",
                 "On the {n} held-out prompts of this draw the certified threshold disagrees with the full model on "
                 "{d:.1%}, above δ = {delta:.0%}: one draw of {n} prompts is noisy, and the guarantee allows a share "
                 "ε of unlucky draws — the next section checks it over many.", basis="quick",
                 n=int(row.n), d=dis, delta=delta)


def _plug_in(table: pd.DataFrame) -> pd.Series | None:
    """The naive plug-in rule's row of a guarantee-check summary: ≥ 1 − δ consistency on calibration."""
    delta = float(table["delta"].iloc[0])
    rows = table[table.rule == f"≥ {1 - delta:.0%} consistency on calibration"]
    return None if rows.empty else rows.iloc[0]


def ch06_guarantee(settings, summary: pd.DataFrame, epsilon: float) -> list[Claim]:
    """Chapter 06's guarantee check: Learn-then-Test within ε (+ s.e.), the plug-in rule breaking δ far more
    often, and the layers Learn-then-Test gives up for its evidence. Checked on the full-mode numbers (this run's
    in full mode, ``results/06_guarantee_check.csv`` in quick or class mode; this run's, reported only, when none is
    saved)."""
    ltt, plug = summary.set_index("rule").loc["Learn-then-Test"], _plug_in(summary)
    path = results_folder(settings) / "06_guarantee_check.csv"
    saved = pd.read_csv(path) if not settings.full and path.exists() else None
    full, kind = (summary, basis(settings)) if saved is None else (saved, "full")
    f_ltt, f_plug = full.set_index("rule").loc["Learn-then-Test"], _plug_in(full)
    where = f"n_cal = {int(ltt.n_cal)}, {int(ltt.n_draws)} draws"
    ref = ""
    if not settings.full:
        ref = (f" Full mode (δ = {f_ltt.delta:.0%}, n_cal = {int(f_ltt.n_cal)}, {int(f_ltt.n_draws)} draws): "
               f"{f_ltt.violation_rate:.1%}, within: {bool(f_ltt.within_guarantee)}." if saved is not None
               else f" No full-mode reference saved for {settings.model}.")
    out = [claim("ch06.ltt_within", bool(f_ltt.within_guarantee),
                 "Learn-then-Test broke δ in {v:.1%} of the splits ({where}; ε + s.e. = {eps:.0%} + {se:.1%}); over "
                 "the whole pool, in {pool:.1%}.{ref}", basis=kind, v=float(ltt.violation_rate), where=where,
                 eps=epsilon, se=float(ltt.se), pool=float(ltt.pool_violation_rate), ref=ref)]
    if plug is None or f_plug is None:
        return out
    ref = "" if saved is None else (f" Full mode: the plug-in rule broke δ in {f_plug.violation_rate:.1%} of the "
                                    f"splits and saved {f_plug.test_layers_saved:.1%}, Learn-then-Test "
                                    f"{f_ltt.test_layers_saved:.1%}.")
    out.append(claim("ch06.plug_in_breaks", float(f_plug.violation_rate) > epsilon + float(f_plug.se),
                     "The plug-in rule ({rule}) broke δ in {v:.1%} of the splits, far above ε = {eps:.0%}.{ref}",
                     basis=kind, rule=plug["rule"], v=float(plug.violation_rate), eps=epsilon, ref=ref))
    out.append(claim("ch06.ltt_pays", float(f_ltt.test_layers_saved) < float(f_plug.test_layers_saved),
                     "Learn-then-Test saves fewer layers on the test parts than the plug-in rule ({l:.1%} vs {p:.1%}, "
                     "{where}{full}): the price of stopping where the evidence runs out.", basis=kind,
                     l=float(ltt.test_layers_saved), p=float(plug.test_layers_saved), where=where,
                     full="" if saved is None else (f"; full mode {f_ltt.test_layers_saved:.1%} vs "
                                                    f"{f_plug.test_layers_saved:.1%}")))
    return out


def ch06_rules(settings, rules: pd.DataFrame) -> Claim:
    """Chapter 06: under the guarantee, the paper-feature SVM saves less than every label-feature rule."""
    def split(table):
        table = table.set_index("rule")
        label = table[[("label" in r) for r in table.index]].layers_saved
        return float(table.loc["SVM · paper features", "layers_saved"]), float(label.min()), float(label.max())
    svm, lo, hi = split(rules)
    path = results_folder(settings) / "06_rules_certified.csv"
    saved = split(pd.read_csv(path)) if not settings.full and path.exists() else None
    (f_svm, f_lo, _), kind = (saved, "full") if saved else ((svm, lo, hi), basis(settings))
    ref = "" if settings.full else (f" Full mode: SVM {saved[0]:.1%}, label-feature rules {saved[1]:.1%}–"
                                         f"{saved[2]:.1%}." if saved else
                                         f" No full-mode reference saved for {settings.model}.")
    return claim("ch06.svm_least", f_svm < f_lo,
                 "Under the guarantee the paper-feature SVM saves {svm:.1%} of the layers on the {n} held-out prompts, "
                 "the label-feature rules {lo:.1%}–{hi:.1%}: full-vocabulary confidence ranks this model's layers "
                 "poorly (chapter 02).{ref}", basis=kind, svm=svm, lo=lo, hi=hi, n=int(rules.n.iloc[0]), ref=ref)


def _price_ok(price: pd.DataFrame) -> tuple[bool, bool]:
    """(a looser δ saves at least as many layers at every n_cal, the largest n_cal at least as many as the smallest
    at every δ)."""
    table = price.pivot(index="n_cal", columns="delta", values="layers_saved").sort_index().sort_index(axis=1)
    by_delta = bool(np.all(np.diff(table.to_numpy(), axis=1) >= -1e-9))
    by_n = bool(np.all(table.iloc[-1].to_numpy() >= table.iloc[0].to_numpy() - 1e-9))
    return by_delta, by_n


def ch06_price(settings, price: pd.DataFrame, epsilon: float) -> list[Claim]:
    """Chapter 06's price of the guarantee: looser δ and more calibration prompts save more; below
    ``min_calibration_size`` nothing is certified (at any n)."""
    from ..certification import min_calibration_size

    by_delta, by_n = _price_ok(price)
    path = results_folder(settings) / "06_price_of_guarantee.csv"
    saved = pd.read_csv(path) if not settings.full and path.exists() else None
    (f_delta, f_n), kind = (_price_ok(saved), "full") if saved is not None else ((by_delta, by_n), basis(settings))
    note = "" if settings.full else (" The full-mode table in results/ shows the same." if saved is not None and
                                          (f_delta, f_n) == (True, True) else
                                          "" if saved is not None else
                                          f" No full-mode reference saved for {settings.model}.")
    too_small = price[[n < min_calibration_size(d, epsilon) for n, d in zip(price.n_cal, price.delta)]]
    return [
        claim("ch06.price_delta", f_delta, "At every calibration size a looser δ saves at least as many layers "
              "(this run: {here}).{note}", basis=kind, here="yes" if by_delta else "not everywhere", note=note),
        claim("ch06.price_n", f_n, "At every δ the largest calibration set saves at least as many layers as the "
              "smallest (this run: {here}).{note}", basis=kind, here="yes" if by_n else "not everywhere", note=note),
        claim("ch06.price_min_size", bool((too_small.share_certified == 0).all()),
              "The {k} cells whose n_cal is below ai.min_calibration_size(δ, ε) certified nothing in any draw.",
              basis="quick", strict=True, k=len(too_small)),
    ]


def ch06_real_run(real: pd.DataFrame, delta: float, threshold) -> Claim:
    """Chapter 06: the certified rule through the real runner, on fresh prompts; speedup against the ideal of the
    same timed prompts."""
    row = real.set_index("method").loc["certified (Learn-then-Test)"]
    timed = int(row.n_timed)
    return claim("ch06.real_run", float(row.measured_speedup) >= 1.0,
                 "On {n} fresh prompts the certified rule (threshold {t}) disagreed with the full model on {d:.1%} "
                 "(δ = {delta:.0%} bounds the expected rate, not each sample of {n}), accuracy {a:.3f} vs {af:.3f}, "
                 "{s:.1%} of the layers saved; measured speedup {m:.2f}× against the ideal {i:.2f}× of the same "
                 "{timed} timed prompt{pl}.",
                 "On {n} fresh prompts the certified rule (threshold {t}) disagreed with the full model on {d:.1%} "
                 "(δ = {delta:.0%} bounds the expected rate, not each sample of {n}), accuracy {a:.3f} vs {af:.3f}, "
                 "{s:.1%} of the layers saved; measured speedup {m:.2f}× against the ideal {i:.2f}× of the same "
                 "{timed} timed prompt{pl}: slower than the full model here — {why}",
                 basis="quick", n=int(row.n), t=threshold_text(threshold), d=1 - float(row.consistency), delta=delta,
                 a=float(row.accuracy), af=float(row.accuracy_full), s=float(row.layers_saved),
                 m=float(row.measured_speedup), i=float(row.ideal_speedup_timed), timed=timed,
                 pl="" if timed == 1 else "s",
                 why="the timed prompts ran every layer (ideal 1.00×): nothing to gain, only checks to pay."
                 if float(row.ideal_speedup_timed) <= 1.0 + 1e-9 else
                 "the checks and the timing noise of this machine ate the saving (chapter 04 measures what a check "
                 "costs).")


# ---- chapter 03 ----------------------------------------------------------------------------------------

LABEL_POLICIES = ("threshold · label_gap", "CRF · label features", "logistic · label features")


def ch03_best_layer(tt) -> Claim:
    """Chapter 03: is the final layer the most accurate one (else an early exit can even raise accuracy)?"""
    acc, best = tt.accuracy_by_layer(), tt.best_layer()
    return claim("ch03.best_layer", best < tt.n_layers and acc[best] > acc[-1],
                 "Here layer {best} is the most accurate ({a:.3f} vs {f:.3f} at layer {L}, n={n}): an exit there would "
                 "raise accuracy, and an accuracy criterion allows exits that change predictions.",
                 "Here the last layer is the most accurate ({f:.3f}, n={n}): early exit can at best keep it.",
                 basis="quick", best=best, a=float(acc[best]), f=float(acc[-1]), L=tt.n_layers, n=tt.n_examples)


def ch03_default_threshold(settings, svm, test: pd.DataFrame) -> Claim:
    """Chapter 03: at threshold 0.5 the paper's SVM stops nearly every example at the first layer it may."""
    exits = np.asarray(svm.exit_layers(test))
    share = float(np.mean(exits == svm.min_layer))
    return claim("ch03.default_threshold", share >= 0.8,
                 "At threshold 0.5, {share:.0%} of the {n} test examples stop at the first layer allowed "
                 "(min_layer {m}).", basis=basis(settings), share=share, n=len(exits), m=svm.min_layer)


def ch03_two_labels(test: pd.DataFrame, n_labels: int) -> Claim:
    """Chapter 03: with two labels, label_gap = 2 label_top_prob − 1 (the same ranking)."""
    rows = test[test.layer >= 1]
    worst = float(np.max(np.abs(rows.label_gap - (2 * rows.label_top_prob - 1))))
    return claim("ch03.two_labels", n_labels != 2 or worst < 1e-6,
                 "label_gap − (2·label_top_prob − 1) is at most {worst:.1e} over the {rows} rows: the same feature.",
                 basis="quick", strict=True, worst=worst, rows=len(rows))


def _saved_or_here(settings, name: str, here: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """This run's table in full mode; in quick or class mode ``results/<name>.csv`` when saved (else this run's)."""
    path = results_folder(settings) / f"{name}.csv"
    if not settings.full and path.exists():
        return pd.read_csv(path), "full"
    return here, basis(settings)


def ch03_full_run(settings, by_accuracy: pd.DataFrame, by_consistency: pd.DataFrame,
                  seeds: pd.DataFrame) -> list[Claim]:
    """Chapter 03's "what the full run showed": the accuracy criterion's noise, and what the consistency
    criterion saves with label-word vs full-vocabulary features, against the oracle (full-mode numbers)."""
    acc, kind = _saved_or_here(settings, "03_policies_max_accuracy_loss", by_accuracy)
    con, _ = _saved_or_here(settings, "03_policies_min_consistency", by_consistency)
    over, _ = _saved_or_here(settings, "03_policies_over_seeds", seeds)
    where = (f"full mode, n = {int(acc.n.iloc[0])} test" if kind == "full" else f"this run, n = {int(acc.n.iloc[0])}"
             + (f" — {settings.mode} mode, no full-mode reference saved" if not settings.full else ""))
    label = acc[acc.policy.isin(LABEL_POLICIES)]
    changes = over[over.policy.isin(LABEL_POLICIES)].accuracy_change_pts
    width = label.change_ci_high - label.change_ci_low
    c = con.set_index("policy")
    saved_label = c.loc[[p for p in LABEL_POLICIES if p in c.index], "layers_saved"]
    saved_paper = c.loc[[p for p in c.index if "paper" in p or "full vocab" in p], "layers_saved"]
    oracle = float(c.loc["oracle", "layers_saved"])
    cons = c.loc[saved_label.index, "consistency"]
    return [
        claim("ch03.full.accuracy_noise", float(label.change_ci_low.max()) <= float(label.change_ci_high.min()),
              "Accuracy criterion ({where}): the label-word policies' test accuracy changed by {lo:+.1f} to {hi:+.1f} "
              "points over {k} seed(s); their bootstrap intervals are {w0:.1f}–{w1:.1f} points wide and overlap: one "
              "seed cannot rank them.", basis=kind, where=where, lo=float(changes.min()), hi=float(changes.max()),
              k=int(over.seed.nunique()) if "seed" in over else 1, w0=float(width.min()), w1=float(width.max())),
        claim("ch03.full.label_beats_paper", float(saved_label.min()) > float(saved_paper.max()),
              "Consistency criterion ({where}): the label-word policies saved {l0:.0%}–{l1:.0%} of the layers, the "
              "full-vocabulary ones {p0:.0%}–{p1:.0%} (chapter 02's per-layer AUC predicted it).", basis=kind,
              where=where, l0=float(saved_label.min()), l1=float(saved_label.max()), p0=float(saved_paper.min()),
              p1=float(saved_paper.max())),
        claim("ch03.full.oracle_ceiling", oracle > float(c.drop("oracle").layers_saved.max()),
              "The oracle saved {o:.0%}, more than any policy ({where}).", basis=kind, o=oracle, where=where),
        claim("ch03.full.consistency_holds", float(cons.min()) >= 0.98,
              "Chosen on train for ≥ 99% consistency, the label-word policies kept {c0:.1%}–{c1:.1%} consistency on "
              "test ({where}).", basis=kind, c0=float(cons.min()), c1=float(cons.max()), where=where),
    ]


def ch03_transfer(settings, transfer: pd.DataFrame, oracle: pd.DataFrame) -> list[Claim]:
    """Chapter 03's transfer between sentiment and topic: topic settles later; label-word policies fitted on
    sentiment lose consistency on topic; fitted on topic they are safe on sentiment and save less there."""
    t = transfer.set_index(["fitted on", "applied to", "policy"])
    pols = [p for p in LABEL_POLICIES if ("sentiment", "topic", p) in t.index]
    s2t = t.loc[[("sentiment", "topic", p) for p in pols]]
    t2t = t.loc[[("topic", "topic", p) for p in pols]]
    t2s = t.loc[[("topic", "sentiment", p) for p in pols]]
    s2s = t.loc[[("sentiment", "sentiment", p) for p in pols]]
    svm = t.loc[("sentiment", "topic", "SVM · paper features")] if ("sentiment", "topic", "SVM · paper features") \
        in t.index else None
    kind, n = basis(settings), int(transfer.n.iloc[0])
    return [
        claim("ch03.transfer.topic_late", float(oracle.loc["topic", "layers_saved"]) <
              float(oracle.loc["sentiment", "layers_saved"]),
              "Topic settles later than sentiment: its oracle saves {t:.0%} of the layers, sentiment's {s:.0%} "
              "(n={n}).", basis=kind, t=float(oracle.loc["topic", "layers_saved"]),
              s=float(oracle.loc["sentiment", "layers_saved"]), n=n),
        claim("ch03.transfer.eager", bool(np.all(s2t.consistency.to_numpy() < t2t.consistency.to_numpy())),
              "Fitted on sentiment and applied to topic, the label-word policies keep {a0:.1%}–{a1:.1%} consistency "
              "(saving {s0:.0%}–{s1:.0%}), below topic's own policies' {b0:.1%}–{b1:.1%} (saving {u0:.0%}–{u1:.0%}): "
              "too eager on the task that settles late (n={n}).", basis=kind,
              a0=s2t.consistency.min(), a1=s2t.consistency.max(), s0=s2t.layers_saved.min(),
              s1=s2t.layers_saved.max(), b0=t2t.consistency.min(), b1=t2t.consistency.max(),
              u0=t2t.layers_saved.min(), u1=t2t.layers_saved.max(), n=n),
        claim("ch03.transfer.cautious", bool(np.all(t2s.consistency.to_numpy() >= 0.99) and
                                             np.all(t2s.layers_saved.to_numpy() <= s2s.layers_saved.to_numpy())),
              "Fitted on topic and applied to sentiment, they keep {a0:.1%}–{a1:.1%} consistency and save "
              "{s0:.0%}–{s1:.0%}, no more than sentiment's own ({u0:.0%}–{u1:.0%}): safe, and cautious (n={n}).",
              basis=kind, a0=t2s.consistency.min(), a1=t2s.consistency.max(), s0=t2s.layers_saved.min(),
              s1=t2s.layers_saved.max(), u0=s2s.layers_saved.min(), u1=s2s.layers_saved.max(), n=n),
    ] + ([] if svm is None else [
        claim("ch03.transfer.svm", float(svm.layers_saved) > 0.05,
              "The paper's SVM fitted on sentiment saves {s:.0%} of the layers on topic at {c:.1%} consistency.",
              "The paper's SVM fitted on sentiment saves {s:.1%} of the layers on topic ({c:.1%} consistency): it "
              "hardly ever exits, on either task — nothing to transfer.", basis=kind, s=float(svm.layers_saved),
              c=float(svm.consistency))])


def ch07_settling(settle: np.ndarray, n_layers: int, min_layer: int) -> Claim:
    """Chapter 07: where the generated tokens settle (``settle`` (tokens,), the earliest layer from which the
    lens's top-1 is the full model's token and stays)."""
    median, early = float(np.median(settle)), float(np.mean(settle <= min_layer))
    return claim("ch07.settling.late", median >= 0.8 * n_layers,
                 "Generated tokens settle late: half of them only at layer {m:.0f} of {L} or later, {e:.0%} by the "
                 "first checked layer {k} (n={n} tokens).",
                 "Generated tokens settle early enough to leave room: half of them by layer {m:.0f} of {L}, {e:.0%} "
                 "by the first checked layer {k} (n={n} tokens).",
                 m=median, L=n_layers, e=early, k=min_layer, n=len(settle))


def ch07_strategies(summary: pd.DataFrame) -> list[Claim]:
    """Chapter 07: does the naive per-token exit collapse (D-LLM: perplexity in the hundreds, NLL ≥ ln 100), and
    how much of the damage the cache hole causes beyond the exit decisions (skip vs recompute)."""
    by = summary.set_index("method")
    skip, rec = by.loc["skip"], by.loc["recompute"]
    n = int(skip.n)
    return [
        claim("ch07.collapse", float(skip.nll) >= np.log(100),
              "The naive per-token exit (skip) collapses: the full model's NLL of its text is {s:.2f} nats/token "
              "(perplexity {p:.0f}) against {f:.2f} for the full model's own text (n={n}), as D-LLM reported.",
              "No collapse like D-LLM's (perplexity in the hundreds): the naive per-token exit (skip) raises the full "
              "model's NLL of the text from {f:.2f} to {s:.2f} nats/token (perplexity {p:.1f}) and repeated bigrams "
              "from {rf:.0%} to {rs:.0%} (n={n}).", s=float(skip.nll), p=float(np.exp(skip.nll)),
              f=float(skip.nll_full), rf=float(skip.repetition_full), rs=float(skip.repetition), n=n),
        claim("ch07.decisions_not_cache", abs(float(rec.agree_tokens) - float(skip.agree_tokens)) < 1.0,
              "The exit decisions, not the cache, do the damage here: with an exact cache (recompute) the text "
              "diverges after {r:.1f} tokens, with the hole (skip) after {s:.1f} (n={n}).",
              "The cache matters: with an exact cache (recompute) the text diverges after {r:.1f} tokens, with the "
              "hole (skip) after {s:.1f} (n={n}).", r=float(rec.agree_tokens), s=float(skip.agree_tokens), n=n),
    ]


def ch07_speculative(spec_summary: pd.DataFrame) -> list[Claim]:
    """Chapter 07: self-speculative decoding keeps the full model's output (firm, at any n), and whether it is
    faster on this machine."""
    spec = spec_summary[spec_summary.method == "speculative"]
    return [
        claim("ch07.speculative.identical", bool((spec.full_match_rate == 1.0).all()),
              "Self-speculative decoding gave exactly the full model's output on every prompt ({k} drafters, n={n}).",
              strict=True, k=len(spec), n=int(spec.n.min())),
        claim("ch07.speculative.slower", bool((spec.measured_speedup < 1.0).all()),
              "It is slower than the full model here ({lo:.2f}–{hi:.2f}×, acceptance {a0:.0%}–{a1:.0%}, n={n}).",
              "It is faster than the full model for some drafter here (up to {hi:.2f}×, acceptance {a0:.0%}–{a1:.0%}, "
              "n={n}).", lo=float(spec.measured_speedup.min()), hi=float(spec.measured_speedup.max()),
              a0=float(spec.acceptance_rate.min()), a1=float(spec.acceptance_rate.max()), n=int(spec.n.min())),
    ]
