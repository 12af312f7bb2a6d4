"""The one chapter timing table (quick, class, full minutes per chapter): recorded by ``tools/reproduce.py``,
rendered by ``adainfer_lib.course.timing`` for the README and for chapter 00 alike."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from adainfer_lib.course import timing
from adainfer_lib.course.timing import COLUMNS, TIMES_FILE, read_times, read_times_file, record_times

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from readme_results import RESULTS, render  # noqa: E402


def row(chapter, mode, minutes, date="2026-12-01"):
    return {"chapter": chapter, "mode": mode, "minutes": minutes, "date": date, "machine": "2 cores, x86_64"}


def test_record_times_merges_by_chapter_and_mode(tmp_path):
    path = tmp_path / TIMES_FILE
    record_times(path, [row("01_a", "full", 30.0), row("00_b", "full", 0.1)])
    record_times(path, [row("01_a", "class", 3.0)])
    merged = record_times(path, [row("01_a", "class", 2.5, "2026-12-02")])   # a re-run replaces its own row
    assert list(merged.columns) == COLUMNS
    assert merged[["chapter", "mode", "minutes"]].values.tolist() == [
        ["00_b", "full", 0.1], ["01_a", "class", 2.5], ["01_a", "full", 30.0]]
    assert read_times_file(path).equals(merged) and not list(tmp_path.glob(".*.tmp"))


def test_a_file_without_modes_is_full_mode_and_a_bad_file_is_named(tmp_path):
    old = tmp_path / "old.csv"
    old.write_text('chapter,minutes,date,machine\n00_index,0.1,2026-11-30,"2 cores, x86_64"\n')
    assert read_times_file(old)["mode"].tolist() == ["full"]
    bad = tmp_path / "bad.csv"
    bad.write_text('chapter,mode,minutes,date,machine\n00_index,lecture,0.1,2026-11-30,x\n')
    with pytest.raises(ValueError, match=r"bad\.csv: unknown mode\(s\) lecture"):
        read_times_file(bad)
    with pytest.raises(ValueError, match=r"old\.csv: missing column\(s\) machine"):
        old.write_text("chapter,mode,minutes,date\n00_index,full,0.1,2026-11-30\n")
        read_times_file(old)


def test_timing_table_has_a_column_per_mode_and_a_total(tmp_path):
    record_times(tmp_path / TIMES_FILE, [row("00_index", "full", 0.1), row("01_lens", "full", 30.4),
                                         row("00_index", "class", 0.2), row("01_lens", "class", 4.0),
                                         row("00_index", "quick", 0.1)])
    record_times(tmp_path / "gemma3-270m" / TIMES_FILE, [row("01_lens", "full", 23.1)])
    table = timing.timing_table(read_times(tmp_path))
    assert list(table.columns) == ["model", "chapter", "quick (min)", "class (min)", "full (min)"]
    by = {(m, c): r for m, c, *r in table.itertuples(index=False)}
    assert by[("smollm2-135m", "01_lens")] == ["—", "4.0", "30.4"]
    assert by[("smollm2-135m", "total (the chapters above)")] == ["—", "4.2", "30.5"]   # quick misses 01: no total
    assert by[("gemma3-270m", "01_lens")] == ["—", "—", "23.1"]
    note = timing.timing_note(read_times(tmp_path))
    assert "quick: 2026-12-01, 2 cores, x86_64" in note and "class: 2026-12-01" in note


def test_a_whole_runs_wall_clock_is_recorded_per_mode_and_noted(tmp_path):
    """With lanes the chapters overlap, so their sum is not the run's time: ``tools/reproduce.py`` records the
    whole run's wall-clock (``RUNS_FILE``) and the timing note says it, per mode."""
    path = tmp_path / timing.RUNS_FILE
    run = {"mode": "full", "minutes": 80.0, "date": "2026-12-01", "machine": "2 cores",
           "how": "one chapter after another"}
    timing.record_run(path, run)
    timing.record_run(path, {**run, "mode": "class", "minutes": 20.0})
    merged = timing.record_run(path, {**run, "minutes": 71.2, "how": "chapters 00, 01 at one thread beside a lane"})
    assert sorted(merged[["mode", "minutes"]].values.tolist()) == [["class", 20.0], ["full", 71.2]]
    record_times(tmp_path / TIMES_FILE, [row("01_lens", "full", 30.4)])
    note = timing.timing_note(read_times(tmp_path), timing.read_runs_file(path))
    assert ("full: 2026-12-01, 2 cores, x86_64 (the whole run: 71.2 min wall-clock on 2026-12-01, chapters 00, 01"
            in note)
    assert "quick: not measured yet" in note
    (tmp_path / "bad.csv").write_text("mode,minutes\nfull,3\n")
    with pytest.raises(ValueError, match=r"bad\.csv: missing column\(s\) date, machine, how"):
        timing.read_runs_file(tmp_path / "bad.csv")


def test_published_times_keep_the_full_mode_rows():
    times = read_times_file(RESULTS / TIMES_FILE)
    chapters = {p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert set(times[times["mode"] == "full"].chapter) == chapters


def test_readme_shows_the_timing_table(tmp_path):
    """The README's run-time table is ``timing_table`` of ``results/``, and follows a new class-mode row."""
    shutil.copytree(RESULTS, tmp_path / "results")
    record_times(tmp_path / "results" / TIMES_FILE, [row("00_index", "class", 123.4)])
    section = render(tmp_path / "results")
    full = pd.read_csv(RESULTS / TIMES_FILE).set_index(["chapter", "mode"]).minutes.loc[("00_index", "full")]
    assert re.search(rf"\| smollm2-135m \| 00_index \| [^|]+ \| 123\.4 \| {full:.1f} \|", section)
    assert "123.4" not in render()


def test_chapter_00_prints_the_table_and_types_no_times():
    """Chapter 00 shows the same table (a cell calling ``timing_table``) and no minutes of its own in prose."""
    nb = nbformat.read(ROOT / "notebooks" / "00_index.ipynb", as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "ai.course.timing.timing_table()" in code
    assert not re.search(r"\d\s*min\b", prose), "chapter 00 types a run time: show timing_table() instead"
