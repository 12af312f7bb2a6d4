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


def timing_note(times: pd.DataFrame | None = None) -> str:
    """When and where each mode was measured: "full: 2026-11-30, 2 cores, x86_64; class: not measured; ..."."""
    times = read_times() if times is None else times
    parts = []
    for mode in MODES:
        part = times[times["mode"] == mode]
        where = "; ".join(sorted({f"{d}, {m}" for d, m in zip(part["date"], part["machine"])}))
        parts.append(f"{mode}: {where or 'not measured yet'}")
    return "; ".join(parts)
