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
