"""Keep every chapter's navigation line (previous · index · next) in sync with the chapter files.

The navigation line is the first line of each chapter's first (markdown) cell that contains "[Index]".
Usage: ``python tools/sync_navigation.py`` rewrites the lines; ``--check`` only reports (exit 1 if stale).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
INDEX = "00_index.ipynb"


def chapters(folder: Path = NOTEBOOKS) -> list[Path]:
    """Numbered chapters in order, the index excluded."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if p.name != INDEX)


def chapter_title(path: Path) -> str:
    """``"02 Feature engineering"`` from the first heading of the notebook (``# 02 · Feature engineering…``)."""
    first = nbformat.read(path, as_version=4).cells[0].source.splitlines()[0]
    number, _, rest = first.lstrip("# ").partition("·")
    return f"{number.strip()} {rest.split(':')[0].strip()}"


def navigation_line(position: int, paths: list[Path]) -> str:
    """``[← prev](prev.ipynb) · [Index](00_index.ipynb) · [next →](next.ipynb)``, ends omitted."""
    parts = []
    if position > 0:
        parts.append(f"[← {chapter_title(paths[position - 1])}]({paths[position - 1].name})")
    parts.append(f"[Index]({INDEX})")
    if position < len(paths) - 1:
        parts.append(f"[{chapter_title(paths[position + 1])} →]({paths[position + 1].name})")
    return " · ".join(parts)


def stale_chapters(folder: Path = NOTEBOOKS, *, fix: bool = False) -> list[str]:
    """Names of chapters whose navigation line is missing or out of date (rewritten when ``fix``)."""
    paths = chapters(folder)
    stale = []
    for position, path in enumerate(paths):
        nb = nbformat.read(path, as_version=4)
        cell = nb.cells[0]
        lines = cell.source.splitlines()
        expected = navigation_line(position, paths)
        where = next((i for i, line in enumerate(lines) if "[Index]" in line), None)
        if where is not None and lines[where] == expected:
            continue
        stale.append(path.name)
        if fix:
            if where is None:
                lines[1:1] = ["", expected]
            else:
                lines[where] = expected
            cell.source = "\n".join(lines)
            nbformat.write(nb, path)
    return stale


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="report stale navigation lines, change nothing")
    args = parser.parse_args(argv)
    stale = stale_chapters(fix=not args.check)
    verb = "stale" if args.check else "updated"
    print(f"{verb}: {', '.join(stale)}" if stale else "navigation lines are in sync")
    sys.exit(1 if args.check and stale else 0)


if __name__ == "__main__":
    main()
