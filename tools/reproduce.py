"""Run every chapter in one mode; in full mode, publish ``results/`` (the tables and figures the README shows).

For each notebook in order: execute it with nbclient in the chosen mode (``ADAINFER_MODE``), write the executed
copy and an HTML rendering under ``build/<mode>/executed/<model>/``, and record its wall-clock minutes.

- ``--mode full`` (the default, ``make reproduce``) **publishes**: the kernels run with ``ADAINFER_PUBLISH=1``,
  so the chapters save their tables and figures to ``results/`` (``NotebookSettings.save_result``), the times
  go to ``results/chapter_times.csv`` (``mode`` full) and the README's results section is regenerated
  (``--no-publish``: a full-mode run that writes under ``build/full/`` like any other).
- ``--mode class`` (``make class``) and ``--mode quick`` publish nothing: tables, figures and times go under
  ``build/<mode>/``. ``--record-times`` also merges this run's minutes into ``results/chapter_times.csv`` under
  its mode (the timing table of the README and chapter 00) — the only thing such a run may write to
  ``results/``, and only when asked.
- ``--prepare`` (``make class-prepare``, the day before a class): runs the chapters that trace (00–06 and 08 unless
  chapters are given) in the mode, so that every trace, policy and calibration they cache is on disk; its
  times go to ``build/<mode>/prepare_times.csv``.

``--alongside "ARGS"`` (``make reproduce``: the second model's lane) starts a second run of this script with ARGS
(e.g. ``--model gemma3-270m --n 200 01 03``) at the same time as this run's chapters that time nothing
(``UNTIMED_CHAPTERS``), each kernel at one thread (``--threads 1``): on two cores a trace's batches keep one core
busy at about 70% of what two threads do, so two lanes get more done. Chapter 01, the long one
(``FIRST_BESIDE``), starts beside the lane; the other chapters that time nothing wait for the lane to end and run
in its place, beside chapter 01 (by then it has cached the traces they read). The chapters that measure wall-clock
run after both, alone, with every thread; the lane's own chapters must time nothing too. The times of the chapters
run beside the lane record it in their ``machine`` column.

``--model gemma3-270m`` runs the chapters on another model (``ADAINFER_MODEL``): its tables and times go to a
sub-folder named after it (``results/gemma3-270m/``). ``ADAINFER_N`` caps every n, as in a notebook.

A chapter whose cell raises — an exact identity ``assert``ed in a cell included — fails the run: the other chapters
still run, and the script exits with status 1, naming each chapter. After a publishing run on the default model,
``tests/test_results.py`` checks the firm facts the prose states on the new ``results/`` tables; a fact that no
longer holds fails the run the same way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import threading
import time
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from adainfer_lib.course.modes import MODES, output_folder  # noqa: E402
from adainfer_lib.course.timing import RUNS_FILE, TIMES_FILE, record_run, record_times  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PREPARE_CHAPTERS = ("00", "01", "02", "03", "04", "05", "06", "08")   # the chapters that trace (07 generates)
# chapters that measure no wall-clock time (tests/test_entry_points.py checks their code): they may share the cores
# with another lane; 05 reads the policies 03 saved, so it runs after it
UNTIMED_CHAPTERS = ("00", "01", "03", "05")
# the untimed chapter that starts beside the lane (the longest: 31 of the 38 untimed minutes); the others run in the
# lane's place once it has ended (a lane of 25 min + 00, 03, 05 ≈ chapter 01's 31 min at one thread)
FIRST_BESIDE = ("01",)
_TIMES_LOCK = threading.Lock()   # two threads record chapter times beside the lane


def kernel_environment(mode: str, publish: bool, environ: dict | None = None, *, n: int | None = None,
                       threads: int | None = None) -> dict:
    """The environment the chapters' kernels run in: ``ADAINFER_MODE`` set, the older ``ADAINFER_QUICK``
    removed, ``ADAINFER_PUBLISH=1`` exactly when publishing (a full-mode run only); ``ADAINFER_N`` when ``n``
    is given, and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (torch's threads) when ``threads`` is."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if publish and mode != "full":
        raise ValueError(f"only full mode publishes to results/, got --mode {mode}")
    env = dict(os.environ if environ is None else environ)
    env.pop("ADAINFER_QUICK", None)
    env.pop("ADAINFER_PUBLISH", None)
    env["ADAINFER_MODE"] = mode
    if publish:
        env["ADAINFER_PUBLISH"] = "1"
    if n is not None:
        env["ADAINFER_N"] = str(n)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def execute(path: Path, out: Path) -> float:
    """Execute ``path`` (in the current ``os.environ``); write the executed notebook and its HTML under ``out``;
    return the seconds taken (nbclient's ``CellExecutionError`` when a cell raises)."""
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=3600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out / path.name)
    html, _ = HTMLExporter().from_notebook_node(nb)
    (out / path.with_suffix(".html").name).write_text(html, encoding="utf-8")
    return seconds


def chapter_paths(chapters: list[str], *, prepare: bool = False) -> list[Path]:
    """The notebooks to run, in order: ``chapters`` (two-digit numbers) or all (``prepare``: those that trace).
    An unknown chapter number is an error."""
    paths = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    unknown = sorted(set(chapters) - {p.name[:2] for p in paths})
    if unknown:
        raise ValueError(f"no chapter {', '.join(unknown)} in notebooks/ (chapters: "
                         f"{', '.join(p.name[:2] for p in paths)})")
    wanted = chapters or (PREPARE_CHAPTERS if prepare else [p.name[:2] for p in paths])
    return [p for p in paths if p.name[:2] in wanted]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chapters", nargs="*", help="chapter numbers to run (default: all)")
    parser.add_argument("--mode", choices=MODES, default="full", help="the sizes to run at (default: full)")
    parser.add_argument("--model", default=None, help="run on this model instead of each chapter's default")
    parser.add_argument("--no-publish", action="store_true", help="full mode only: write under build/full/, "
                        "not results/")
    parser.add_argument("--record-times", action="store_true", help="also merge this run's minutes into "
                        "results/chapter_times.csv under its mode (the published timing table)")
    parser.add_argument("--prepare", action="store_true", help="run the chapters that trace, to fill the caches "
                        "ahead of a class (times: build/<mode>/prepare_times.csv)")
    parser.add_argument("--no-readme", action="store_true", help="do not regenerate the README's results")
    parser.add_argument("--n", type=int, default=None, help="cap every prompt count at N (ADAINFER_N in the kernels)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per kernel (default: every core)")
    parser.add_argument("--alongside", metavar="ARGS", default=None, help="a second run of this script (its "
                        "arguments in one string) beside this run's chapters that time nothing; the timed ones run "
                        "after both")
    parser.add_argument("--list", action="store_true", help="print what would run and exit (executes nothing)")
    args = parser.parse_args(argv)
    for name in ("n", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.alongside is not None:
        args.lane = _lane_args(parser, args.alongside)
        if "--mode" in args.lane.words and args.lane.mode != args.mode:
            parser.error(f"--alongside: the lane runs in this run's mode ({args.mode}); drop its "
                         f"--mode {args.lane.mode}")
    try:
        chapter_paths(args.chapters, prepare=args.prepare)
    except ValueError as err:
        parser.error(str(err))
    if args.model:
        from adainfer_lib.model.loading import check_model_name

        try:
            check_model_name(args.model)
        except ValueError as err:  # ModelNotFoundError, UnsupportedArchitectureError
            parser.error(f"--model: {err}")
    if args.no_publish and args.mode != "full":
        parser.error(f"--no-publish is for full mode; --mode {args.mode} never publishes")
    if args.prepare and args.record_times:
        parser.error("--prepare fills the caches: its times are not the chapters' run times (drop --record-times)")
    return args


def _lane_args(parser: argparse.ArgumentParser, text: str) -> argparse.Namespace:
    """The ``--alongside`` run's arguments, parsed as this script's: an error unless its chapters all time
    nothing (a timing beside another lane measures the other lane too) and it names no lane of its own."""
    import shlex

    words = shlex.split(text)
    try:
        lane = parse_args(words)
    except SystemExit as stop:
        parser.error(f"--alongside {text!r}: not arguments of this script (exit {stop.code})")
    if lane.alongside is not None:
        parser.error("--alongside: the lane cannot have a lane of its own")
    timed = sorted({p.name[:2] for p in chapter_paths(lane.chapters, prepare=lane.prepare)} - set(UNTIMED_CHAPTERS))
    if timed:
        parser.error(f"--alongside: chapter(s) {', '.join(timed)} measure wall-clock time and cannot share the "
                     f"cores; a lane runs only chapters {', '.join(UNTIMED_CHAPTERS)}")
    lane.words = words
    return lane


def publishes(args: argparse.Namespace) -> bool:
    """Whether the run publishes to ``results/``: full mode, unless ``--no-publish`` or ``--prepare``."""
    return args.mode == "full" and not args.no_publish and not args.prepare


def run_order(paths: list[Path], alongside: bool) -> tuple[list[Path], list[Path], list[Path]]:
    """The chapters that start beside the lane, those that run in its place once it has ended (beside the first
    ones), and those that run after both (each in its own order). Without a lane: every chapter, in order, after."""
    if not alongside:
        return [], [], paths
    first = [p for p in paths if p.name[:2] in UNTIMED_CHAPTERS and p.name[:2] in FIRST_BESIDE]
    second = [p for p in paths if p.name[:2] in UNTIMED_CHAPTERS and p not in first]
    return first, second, [p for p in paths if p not in first and p not in second]


def lane_words(args: argparse.Namespace) -> list[str]:
    """The ``--alongside`` run's arguments: its own, then this run's mode and what it publishes or records
    (``--no-publish``, ``--record-times``, ``--prepare``), one thread per kernel, no README of its own."""
    words = [*args.lane.words]
    if "--mode" not in words:
        words += ["--mode", args.mode]
    words += [flag for flag, on in (("--no-publish", args.no_publish), ("--record-times", args.record_times),
                                    ("--prepare", args.prepare)) if on and flag not in words]
    return [*words, "--threads", "1", "--no-readme"]


def start_lane(args: argparse.Namespace, environ: dict):
    """The ``--alongside`` run as a child process (one thread per kernel, no README of its own), or None."""
    if args.alongside is None:
        return None
    import subprocess

    words = lane_words(args)
    print(f"alongside: tools/reproduce.py {' '.join(words)}", flush=True)
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *words], cwd=ROOT, env=environ)


def machine_note(threads: int | None = None, beside: bool = False) -> str:
    """The ``machine`` column of a timing row: cores and architecture, and the threads when set (and whether the
    kernel shared the cores with another lane)."""
    note = f"{os.cpu_count()} cores, {platform.machine()}"
    if threads:
        note += f", {threads} thread{'s' if threads > 1 else ''}" + (" beside another lane" if beside else "")
    return note


def run_chapters(paths: list[Path], executed: Path, args: argparse.Namespace, model: str, times_path: Path,
                 published_times: Path, *, publish: bool, beside: bool) -> dict[str, list[str]]:
    """Execute ``paths`` in order (in the current ``os.environ``), recording each chapter's minutes; the chapters
    that failed, with why. ``beside``: the kernels share the cores with another lane (their ``machine`` says so)."""
    failures: dict[str, list[str]] = {}
    machine = machine_note(1 if beside else args.threads, beside)
    for path in paths:
        print(f"running {path.name} ({args.mode} mode, {model}{', beside another lane' if beside else ''}) ...",
              flush=True)
        try:
            seconds = execute(path, executed)
        except Exception as error:  # a cell raised (nbclient's CellExecutionError): report it, run the rest
            failures[path.stem] = [f"the chapter did not run: {type(error).__name__}: {str(error)[:500]}"]
            continue
        print(f"  {path.name}: {seconds / 60:.1f} min", flush=True)
        row = {"chapter": path.stem, "mode": args.mode, "minutes": round(seconds / 60, 1),
               "date": dt.date.today().isoformat(), "machine": machine}
        with _TIMES_LOCK:
            record_times(times_path, [row])
            if args.record_times and not publish:
                record_times(published_times, [row])
    return failures


def run_beside_lane(lane, first: list[Path], second: list[Path], run) -> dict[str, list[str]]:
    """``first`` in a thread from now, beside ``lane``; ``second`` in this thread once the lane has ended (beside
    what is left of ``first``) or ``first`` has (beside the lane); when all three are done, the failures (a lane
    that failed among them). ``run(paths)`` runs chapters (``run_chapters`` with ``beside=True``)."""
    done: dict = {}

    def first_part() -> None:
        try:
            done["failures"] = run(first)
        except BaseException as error:  # noqa: BLE001 - raised again in the calling thread
            done["error"] = error

    worker = threading.Thread(target=first_part, name="chapters beside the lane")
    worker.start()
    while lane.poll() is None and worker.is_alive():   # the lane's place frees up (or the first part ended)
        time.sleep(1)
    failures = run(second)
    if lane.wait():
        failures["alongside"] = [f"the lane exited with status {lane.returncode}"]
    worker.join()
    if "error" in done:
        raise done["error"]
    return done["failures"] | failures


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    publish = publishes(args)
    from adainfer_lib.model.loading import DEFAULT_MODEL

    model = args.model or os.environ.get("ADAINFER_MODEL") or DEFAULT_MODEL
    folder = output_folder(args.mode, publish=publish, model=model)
    executed = ROOT / "build" / args.mode / ("prepare" if args.prepare else "executed") / (args.model or "default")
    paths = chapter_paths(args.chapters, prepare=args.prepare)
    first, second, after = run_order(paths, args.alongside is not None)
    if args.list:
        readme = "regenerated" if (publish or args.record_times) and not args.no_readme else "kept"
        print(f"model {model}; results to {folder}; executed notebooks to {executed}; README results {readme}")
        print("\n".join(f"would run {p.name} ({args.mode} mode, beside the lane at 1 thread)" for p in first))
        print("\n".join(f"would run {p.name} ({args.mode} mode, after the lane, beside chapter "
                        f"{', '.join(c.name[:2] for c in first)} at 1 thread)" for p in second))
        print("\n".join(f"would run {p.name} ({args.mode} mode)" for p in after))
        if args.alongside is not None:
            print(f"alongside: tools/reproduce.py {' '.join(lane_words(args))}")
        return
    calling_environment = dict(os.environ)
    env = kernel_environment(args.mode, publish, n=args.n, threads=args.threads)
    if args.model:
        env["ADAINFER_MODEL"] = args.model
    os.environ.clear()
    os.environ.update(env)   # the kernels inherit it
    times_path = folder / ("prepare_times.csv" if args.prepare else TIMES_FILE)
    published_times = output_folder("full", publish=True, model=model) / TIMES_FILE
    what = "publishing to results/" if publish else f"writing under {folder.relative_to(ROOT)}/"
    print(f"{len(paths)} chapter(s) in {args.mode} mode on {model}, {what}", flush=True)
    start = time.perf_counter()
    lane = start_lane(args, calling_environment)
    failures: dict[str, list[str]] = {}
    if lane is not None:
        os.environ.update(kernel_environment(args.mode, publish, env, threads=1))
        failures = run_beside_lane(lane, first, second, lambda part: run_chapters(
            part, executed, args, model, times_path, published_times, publish=publish, beside=True))
        os.environ.clear()
        os.environ.update(env)
    failures |= run_chapters(after, executed, args, model, times_path, published_times, publish=publish,
                             beside=False)
    minutes = (time.perf_counter() - start) / 60
    print(f"executed notebooks and HTML: {executed}; tables, figures and times: {folder}; "
          f"wall-clock {minutes:.1f} min", flush=True)
    if not args.chapters and not args.prepare and not failures:   # the whole run: its wall-clock
        how = "one chapter after another"
        if lane is not None:
            how = (f"chapter {', '.join(p.name[:2] for p in first)} beside tools/reproduce.py {args.alongside}, "
                   f"then {', '.join(p.name[:2] for p in second)} in its place, one thread each; then "
                   f"{', '.join(p.name[:2] for p in after)} alone")
        row = {"mode": args.mode, "minutes": round(minutes, 1), "date": dt.date.today().isoformat(),
               "machine": machine_note(), "how": how}
        record_run(folder / RUNS_FILE, row)
        if args.record_times and not publish:
            record_run(published_times.parent / RUNS_FILE, row)
    if (publish or args.record_times) and not args.no_readme:  # the README shows what the runs measured
        from readme_results import update_readme

        update_readme()
        print("README results section regenerated (tools/readme_results.py)")
    if publish and model == DEFAULT_MODEL and not args.chapters:   # the firm facts the prose states, on results/
        import subprocess

        tests = str(ROOT / "tests" / "test_results.py")
        check = subprocess.run([sys.executable, "-m", "pytest", "-q", tests], cwd=ROOT)
        if check.returncode:
            failures["results"] = ["tests/test_results.py: a fact the prose states no longer holds on results/"]
    if failures:
        for chapter, failed in failures.items():
            for line in failed:
                print(f"FAILED {chapter}: {line}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
