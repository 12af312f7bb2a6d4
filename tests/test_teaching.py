"""What a teacher reads off the notebooks: every exercise says, in one line, its difficulty, why it matters and
its expected minutes."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
HEADER = re.compile(r"^\s*\*Difficulty (?P<stars>[★☆]{3}) · why: (?P<why>[^*]{20,}) · ~(?P<minutes>\d+) min\*$", re.M)


def exercises(path: Path) -> list[str]:
    """The text of each exercise of a chapter: the markdown cell before each checker call (``ai.exercises.check_``),
    from its numbered item on."""
    cells = nbformat.read(path, as_version=4).cells
    found = []
    for before, cell in zip(cells, cells[1:]):
        if cell.cell_type == "code" and "ai.exercises.check_" in cell.source:
            assert before.cell_type == "markdown", f"{path.name}: a checker cell without its exercise text above it"
            items = list(re.finditer(r"^\d+\. ", before.source, re.M))
            assert items, f"{path.name}: the text above a checker has no numbered exercise"
            found.append(before.source[items[-1].start():])
    return found


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name != "00_index.ipynb"], ids=lambda p: p.stem)
def test_every_exercise_says_difficulty_why_and_minutes(path):
    texts = exercises(path)
    assert texts, f"{path.name}: no exercises found"
    for text in texts:
        headers = HEADER.findall(text)
        assert len(headers) == 1, (f"{path.name}, exercise {text[:40]!r}...: add one line "
                                   "'*Difficulty ★★☆ · why: <why it matters> · ~5 min*'")
        stars, _, minutes = headers[0]
        assert stars in ("★☆☆", "★★☆", "★★★") and 1 <= int(minutes) <= 30


def test_the_header_check_catches_a_missing_line(tmp_path):
    path = next(p for p in NOTEBOOKS if p.name.startswith("01_"))
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        cell.source = HEADER.sub("", cell.source, count=1) if cell.cell_type == "markdown" else cell.source
    nbformat.write(nb, tmp_path / path.name)
    with pytest.raises(AssertionError, match="add one line"):
        test_every_exercise_says_difficulty_why_and_minutes(tmp_path / path.name)


# ---- docs/teaching.md: the lesson plan and instructor notes ------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
TEACHING = ROOT / "docs" / "teaching.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PLAN = re.compile(r"<!-- plan:start -->(?P<table>.*?)<!-- plan:end -->", re.S)


def broken_links(text: str, base: Path) -> list[str]:
    """The relative link targets in markdown ``text`` that name no file or folder under ``base`` (web addresses
    and in-page anchors are not checked; a ``#fragment`` is dropped)."""
    targets = (target.split("#")[0] for target in LINK.findall(text)
               if not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#"))
    return [target for target in targets if target and not (base / target).exists()]


def plan_minutes(text: str) -> list[int]:
    """The minutes of each row of the plan table (first column) between the ``plan:start`` and ``plan:end``
    markers; raises AssertionError when the markers or the minutes are missing."""
    match = PLAN.search(text)
    assert match, "docs/teaching.md: the plan table must sit between <!-- plan:start --> and <!-- plan:end -->"
    rows = [line for line in match["table"].splitlines() if line.startswith("|")][2:]   # past header and rule
    minutes = [line.split("|")[1].strip() for line in rows]
    assert rows and all(m.isdigit() for m in minutes), f"the plan's first column must be whole minutes: {minutes}"
    return [int(m) for m in minutes]


def test_teaching_notes_exist_and_are_linked():
    assert TEACHING.is_file(), "docs/teaching.md is missing"
    assert "docs/teaching.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    index = nbformat.read(ROOT / "notebooks" / "00_index.ipynb", as_version=4)
    assert any("../docs/teaching.md" in c.source for c in index.cells if c.cell_type == "markdown")


def test_teaching_notes_link_only_to_files_that_exist():
    assert broken_links(TEACHING.read_text(encoding="utf-8"), TEACHING.parent) == []


def test_teaching_notes_name_every_chapter():
    text = TEACHING.read_text(encoding="utf-8")
    missing = [p.name for p in NOTEBOOKS if p.name not in text]
    assert not missing, f"docs/teaching.md does not name {missing}"


def test_teaching_plan_fits_in_90_minutes():
    minutes = plan_minutes(TEACHING.read_text(encoding="utf-8"))
    assert sum(minutes) <= 90, f"the plan takes {sum(minutes)} minutes: {minutes}"


def test_the_teaching_checks_catch_a_broken_link_and_a_long_plan():
    assert broken_links("[a](../README.md) [b](../no_such_file.md#x) [c](https://example.org) [d](#plan)",
                        TEACHING.parent) == ["../no_such_file.md"]
    long_plan = "<!-- plan:start -->\n| minutes | chapter |\n| --- | --- |\n| 60 | 01 |\n| 40 | 03 |\n<!-- plan:end -->"
    assert plan_minutes(long_plan) == [60, 40]
    with pytest.raises(AssertionError, match="plan table"):
        plan_minutes("no plan here")


def test_the_set_up_cell_detects_colab_and_prepares_what_is_missing(monkeypatch):
    """On Colab (``google.colab`` imported) the set-up cell picks class mode unless told otherwise and prepares
    the chapter's offline model and the task data when they are missing (the runtime's disk starts empty)."""
    import types

    from adainfer_lib.course import notebook
    from adainfer_lib.data import sources
    from adainfer_lib.model import loading

    assert notebook.hosted_notebook({}) is None
    assert notebook.hosted_notebook({"google.colab": types.ModuleType("google.colab")}) == "colab"
    prepared, missing = [], {"gemma3-270m"}
    monkeypatch.setattr(loading, "is_prepared", lambda alias: alias not in missing)
    monkeypatch.setattr(loading, "prepare_offline_model", lambda alias: prepared.append(alias))
    monkeypatch.setattr(sources, "prepare_sources", lambda: prepared.append("tasks"))
    environ: dict[str, str] = {}
    notebook.prepare_hosted("smollm2-135m", environ)
    assert environ == {"ADAINFER_MODE": "class"} and prepared == ["tasks"]  # the default model is there already
    environ = {"ADAINFER_MODE": "quick"}
    notebook.prepare_hosted("gemma3-270m", environ)
    assert environ == {"ADAINFER_MODE": "quick"} and prepared == ["tasks", "gemma3-270m", "tasks"]
    notebook.prepare_hosted("meta-llama/Llama-2-7b-hf", {})  # a hub model is not an offline alias: nothing to convert
    assert prepared[-1] == "tasks"

    monkeypatch.setitem(__import__("sys").modules, "google.colab", types.ModuleType("google.colab"))
    calls = []
    monkeypatch.setattr(notebook, "prepare_hosted", lambda model: calls.append(model))
    monkeypatch.setenv("ADAINFER_MODE", "quick")
    monkeypatch.delenv("ADAINFER_MODEL", raising=False)
    notebook.setup_notebook("smollm2-135m")
    assert calls == ["smollm2-135m"]
