"""Checked claims: a sentence about a number is computed from it, or checked against it.

Prose in a chapter that states a comparison ("raw decisions are less accurate than batch-calibrated ones")
goes stale as soon as the numbers move. So the cell beside such prose calls ``claim``, which

- prints the sentence **computed from the numbers** (``text`` when ``condition`` holds, ``otherwise`` when it
  does not, both formatted with the numbers), so the student reads what this run shows, with n; and
- records the claim as a display output with the MIME type ``CLAIM_MIME`` (beside its plain text), which
  ``tests/test_notebooks.py`` reads from every executed chapter: a **firm** claim (no ``otherwise``: the
  prose states it as a fact) that does not hold fails the test.

Quick mode's numbers are noise (n = 24), so a firm claim about what the method shows should be checked on
the full-mode numbers: ``reference`` reads them from ``results/`` (the last full-mode run, per model), and
``quick_and_full`` writes a quick-mode value beside its full-mode reference. A firm claim on quick-mode
numbers (``basis="quick"``) is only reported, never failed, unless it holds at any n (``strict=True``, e.g.
"equal to float precision").
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
    basis: str                 # "full": full-mode numbers (this run or results/); "quick": quick-mode noise
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
        note = "" if self.failed else " (quick-mode numbers are noise; the full-mode run is what the prose describes)"
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
    values), ``"quick"`` when they are this quick-mode run's.
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
    """``"quick"`` or ``"full"``: what numbers this run's own values are."""
    return "quick" if settings.quick else "full"


def results_folder(settings=None, model: str | None = None):
    """``results/`` for the default model, ``results/<model>/`` for another (as ``save_result`` writes it)."""
    from ..common.paths import REPO_ROOT
    from ..model.loading import DEFAULT_MODEL

    name = model or (settings.model if settings is not None else DEFAULT_MODEL)
    folder = REPO_ROOT / "results"
    if name != DEFAULT_MODEL:
        folder = folder / "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return folder


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
    """``value`` as the reader should take it: in full mode the value itself; in quick mode the value with
    "(quick, n=…)" and its full-mode reference beside it (or a note that none is saved for this model)."""
    here = fmt.format(value) + (f" (n={n})" if n else "")
    if not settings.quick:
        return here
    quick = fmt.format(value) + (f" (quick mode, n={n})" if n else " (quick mode)")
    if ref is None:
        return f"{quick}; no full-mode reference saved for {settings.model}"
    return f"{quick}; full mode {fmt.format(ref)}" + (f" (n={ref_n})" if ref_n else "")


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
        ref = {m: reference(settings, "01_calibration", "accuracy_full", task=task, calibration=m) for m in ("raw", "batch")}
        ref_n = reference_n(settings, "01_calibration", task=task, calibration="raw")
        gain = batch - raw
        mode = "quick mode, " if settings.quick else ""
        full_text = ""
        if settings.quick:
            full_text = (f" Full mode (n={ref_n}): raw {ref['raw']:.3f} → batch {ref['batch']:.3f}."
                         if None not in ref.values() else f" No full-mode reference saved for {settings.model}.")
        out.append(claim(f"ch01.calibration.{task}", abs(gain) >= 0.01,
                         "{task} ({mode}n={n}): accuracy at layer L raw {raw:.3f} → batch {batch:.3f} ({gain}); raw "
                         "decisions give one label to {share:.0%} of the examples.{full}",
                         "{task} ({mode}n={n}): raw and batch-calibrated decisions are equally accurate here ({raw:.3f} "
                         "vs {batch:.3f}); raw decisions give one label to {share:.0%} of the examples.{full}",
                         basis=basis(settings), task=task, share=share, gain=_fmt_pts(100 * gain), mode=mode, n=n,
                         raw=raw, batch=batch, full=full_text))
    # the firm claim behind the section's title, on the full-mode numbers
    full = {t: {m: (reference(settings, "01_calibration", "accuracy_full", task=t, calibration=m)
                    if settings.quick else float(report[(report.task == t) & (report.calibration == m)].accuracy_full.iloc[0]))
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
    acc = reference(settings, "01_over_seeds", "accuracy_full", task="mmlu", demos="fixed") if settings.quick else \
        float(over_seeds[over_seeds.task == "mmlu"].accuracy_full.mean())
    if acc is None:
        acc = float(over_seeds[over_seeds.task == "mmlu"].accuracy_full.mean())
        return claim("ch01.mmlu_chance", abs(acc - 0.25) <= 0.05,
                     "MMLU: accuracy {acc:.3f} (quick mode, mean over seeds) vs chance 0.25.",
                     "MMLU: accuracy {acc:.3f} (quick mode, mean over seeds) vs chance 0.25 — not at chance here.",
                     basis="quick", acc=acc)
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
              "{late} (late half; n={n}): within two layers of each other, so the *mean* does not tell the halves apart — what does is "
              "the spread at each layer, which the per-layer AUC below measures.",
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
        if settings.quick and path.exists():
            saved = pd.read_csv(path)
            saved = saved[(saved.kind == "real early exit") & saved.method.str.contains("paper").eq(label.startswith("full"))]
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
    if settings.quick and path.exists():
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
