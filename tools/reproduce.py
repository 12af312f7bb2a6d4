"""Run every chapter in full mode and regenerate ``results/`` (tables and figures the README shows).

For each notebook in order: execute it with nbclient (``ADAINFER_MODE=full ADAINFER_PUBLISH=1``), write the
executed copy and an HTML rendering under ``build/reproduce/``, and record its wall-clock time in
``results/chapter_times.csv``. The chapters themselves save their tables and figures to ``results/``
(``NotebookSettings.save_result``). Usage: ``python tools/reproduce.py [01 04 ...]`` (default: all);
``--model gemma3-270m`` runs the chapters on another model (``ADAINFER_MODEL``): its tables and times go to
``results/<model>/``.

A chapter whose **firm checked claim** does not hold on its full-mode numbers (``adainfer_lib.course.claims``:
the prose states something the numbers contradict) fails the run: the other chapters still run, and the script
exits with status 1, naming each chapter and claim. A cell that raises fails the run the same way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd

from adainfer_lib.course.claims import claims_in

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "reproduce"
RESULTS = ROOT / "results"


def failed_claims(nb) -> list[str]:
    """The firm claims of an executed notebook that did not hold, as "key: sentence"."""
    return [f"{c['key']}: {c['text']}" for c in claims_in(nb) if c.get("failed")]


def execute(path: Path) -> tuple[float, list[str]]:
    """Execute ``path`` in full mode; write the executed notebook and its HTML; return the seconds taken and
    the firm claims that did not hold."""
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    nb = nbformat.read(path, as_version=4)
    os.environ.pop("ADAINFER_QUICK", None)
    os.environ["ADAINFER_MODE"] = "full"
    os.environ["ADAINFER_PUBLISH"] = "1"   # only this script publishes to results/ (adainfer_lib.course.modes)
    start = time.perf_counter()
    NotebookClient(nb, timeout=3600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / os.environ.get("ADAINFER_MODEL", "default")
    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out / path.name)
    html, _ = HTMLExporter().from_notebook_node(nb)
    (out / path.with_suffix(".html").name).write_text(html, encoding="utf-8")
    return seconds, failed_claims(nb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("chapters", nargs="*", help="chapter numbers to run (default: all)")
    parser.add_argument("--model", default=None, help="run on this model instead of each chapter's default")
    parser.add_argument("--no-readme", action="store_true", help="do not regenerate the README's results")
    args = parser.parse_args()
    results = RESULTS
    if args.model:
        os.environ["ADAINFER_MODEL"] = args.model
        from adainfer_lib.model.loading import DEFAULT_MODEL

        if args.model != DEFAULT_MODEL:
            results = RESULTS / args.model
    paths = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.chapters:
        paths = [p for p in paths if p.name[:2] in args.chapters]
    results.mkdir(parents=True, exist_ok=True)
    times_path = results / "chapter_times.csv"
    times = (pd.read_csv(times_path) if times_path.exists()
             else pd.DataFrame(columns=["chapter", "minutes", "date", "machine"]))
    failures: dict[str, list[str]] = {}
    for path in paths:
        print(f"running {path.name} (full mode) ...", flush=True)
        try:
            seconds, failed = execute(path)
        except Exception as error:  # a cell raised (nbclient's CellExecutionError): report it, run the rest
            failures[path.stem] = [f"the chapter did not run: {type(error).__name__}: {str(error)[:500]}"]
            continue
        print(f"  {seconds / 60:.1f} min", flush=True)
        if failed:
            failures[path.stem] = failed
            print(f"  {len(failed)} checked claim(s) do not hold", flush=True)
        row = {"chapter": path.stem, "minutes": round(seconds / 60, 1), "date": dt.date.today().isoformat(),
               "machine": f"{os.cpu_count()} cores, {platform.machine()}"}
        times = pd.concat([times[times.chapter != path.stem], pd.DataFrame([row])]).sort_values("chapter")
        times.to_csv(times_path, index=False)
    print(f"executed notebooks and HTML: {OUT}; tables and figures: {results}")
    if not args.no_readme:  # the README shows what the runs measured
        from readme_results import update_readme

        update_readme()
        print("README results section regenerated (tools/readme_results.py)")
    if failures:
        for chapter, failed in failures.items():
            for line in failed:
                print(f"FAILED {chapter}: {line}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
