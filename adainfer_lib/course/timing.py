"""The chapter timing table: minutes per chapter and mode (quick, class, full), as ``tools/reproduce.py``
measured them. The README's "Chapter run times" and chapter 00 both show ``timing_table()``.

``results/chapter_times.csv`` holds the default model's rows, ``results/<model>/chapter_times.csv`` another
model's; columns ``chapter`` (the notebook's stem), ``mode``, ``minutes``, ``date``, ``machine``. A file
written before modes existed has no ``mode`` column: its rows are full mode.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .modes import MODES

TIMES_FILE = "chapter_times.csv"
RUNS_FILE = "reproduce_runs.csv"   # the wall-clock of the last run of every chapter, per mode (lanes overlap chapters)
RUN_COLUMNS = ["mode", "minutes", "date", "machine", "how"]
COLUMNS = ["chapter", "mode", "minutes", "date", "machine"]


def _results(results: Path | None) -> Path:
    from ..common.paths import REPO_ROOT

    return REPO_ROOT / "results" if results is None else Path(results)


def read_times_file(path: Path) -> pd.DataFrame:
    """One ``chapter_times.csv`` (an empty table when it does not exist); rows without a mode are full mode.
    Raises ``ValueError`` naming the file on a missing column or an unknown mode."""
    if not Path(path).exists():
        return pd.DataFrame(columns=COLUMNS)
    table = pd.read_csv(path)
    if "mode" not in table.columns:
        table.insert(1, "mode", "full")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(COLUMNS)})")
    unknown = sorted(set(table["mode"]) - set(MODES))
    if unknown:
        raise ValueError(f"{path}: unknown mode(s) {', '.join(map(str, unknown))} (expected {', '.join(MODES)})")
    return table[COLUMNS]


def record_times(path: Path, rows: list[dict]) -> pd.DataFrame:
    """Merge ``rows`` (dicts with ``COLUMNS``) into the file at ``path``: a row replaces the one of the same
    chapter and mode, every other row is kept. Written atomically; returns the merged table."""
    from ..common.cache import atomic_write_text

    new = pd.DataFrame(rows, columns=COLUMNS)
    old = read_times_file(path)
    keep = ~old.set_index(["chapter", "mode"]).index.isin(new.set_index(["chapter", "mode"]).index)
    merged = pd.concat([old[keep], new], ignore_index=True)
    merged["order"] = merged["mode"].map(MODES.index)
    merged = merged.sort_values(["chapter", "order"]).drop(columns="order").reset_index(drop=True)
    atomic_write_text(path, merged.to_csv(index=False))
    return merged


def read_times(results: Path | None = None) -> pd.DataFrame:
    """Every model's rows under ``results`` (default: the repository's ``results/``), with a ``model`` column."""
    from ..model.loading import DEFAULT_MODEL

    results = _results(results)
    frames = [read_times_file(results / TIMES_FILE).assign(model=DEFAULT_MODEL)]
    frames += [read_times_file(p).assign(model=p.parent.name) for p in sorted(results.glob(f"*/{TIMES_FILE}"))]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*COLUMNS, "model"])


def timing_table(times: pd.DataFrame | None = None) -> pd.DataFrame:
    """Minutes per model and chapter, one column per mode (``"—"`` where not measured), and a ``total`` row per
    model (the sum over the chapters measured in that mode; ``"—"`` when one is missing)."""
    times = read_times() if times is None else times
    rows = []
    for model, part in times.groupby("model", sort=False):
        wide = part.pivot_table(index="chapter", columns="mode", values="minutes", aggfunc="last")
        wide = wide.reindex(columns=list(MODES))
        total = wide.sum(min_count=1).where(wide.notna().all())
        for chapter, minutes in [*wide.iterrows(), ("total (the chapters above)", total)]:
            rows.append({"model": model, "chapter": chapter,
                         **{f"{mode} (min)": "—" if pd.isna(minutes[mode]) else f"{minutes[mode]:.1f}"
                            for mode in MODES}})
    return pd.DataFrame(rows, columns=["model", "chapter", *[f"{m} (min)" for m in MODES]])


def record_run(path: Path, row: dict) -> pd.DataFrame:
    """Merge one whole run's wall-clock (a dict with ``RUN_COLUMNS``) into ``path``: it replaces the row of its
    mode. Written atomically; returns the merged table."""
    from ..common.cache import atomic_write_text

    old = read_runs_file(path)
    merged = pd.concat([old[old["mode"] != row["mode"]], pd.DataFrame([row], columns=RUN_COLUMNS)], ignore_index=True)
    atomic_write_text(path, merged.to_csv(index=False))
    return merged


def read_runs_file(path: Path) -> pd.DataFrame:
    """``reproduce_runs.csv`` (an empty table when it does not exist); ``ValueError`` naming a missing column."""
    if not Path(path).exists():
        return pd.DataFrame(columns=RUN_COLUMNS)
    table = pd.read_csv(path)
    missing = [c for c in RUN_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(RUN_COLUMNS)})")
    return table[RUN_COLUMNS]


def timing_note(times: pd.DataFrame | None = None, runs: pd.DataFrame | None = None) -> str:
    """When and where each mode was measured, and the whole run's wall-clock where ``runs`` records it (default:
    ``results/reproduce_runs.csv``): "full: 2026-12-07, 2 cores, x86_64 (the whole run: 71.2 min wall-clock, ...);
    class: ..."."""
    times = read_times() if times is None else times
    runs = read_runs_file(_results(None) / RUNS_FILE) if runs is None else runs
    parts = []
    for mode in MODES:
        part = times[times["mode"] == mode]
        where = "; ".join(sorted({f"{d}, {m}" for d, m in zip(part["date"], part["machine"])}))
        run = runs[runs["mode"] == mode]
        if len(run):
            r = run.iloc[-1]
            where += f" (the whole run: {r['minutes']:.1f} min wall-clock on {r['date']}, {r['how']})"
        parts.append(f"{mode}: {where or 'not measured yet'}")
    return "; ".join(parts)
