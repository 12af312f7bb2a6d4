"""Every entry point a user runs is exercised here at a tiny size, so an import or signature change breaks CI,
not a user: each benchmark, each ``tools/`` script, each ``make`` target, ``.ci/run`` and the command line.

Cheap checks run in seconds: every ``adainfer_lib`` name a script imports (at the top or inside a function)
resolves, every script answers ``--help``, every ``.PHONY`` target resolves under ``make -n`` to commands that
exist (and the cheap ones run for real), the shell scripts pass ``bash -n`` and run against fakes. The runs of
the real default model (the benchmarks at a few prompts, ``python -m adainfer_lib trace``) are ``slow``; they
check that the scripts finish and print their side-by-side ratios, never how fast anything is.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("tools/*.py")])
# A tiny run of every Python script (its test below), or the test that runs it elsewhere.
TINY_RUNS = {
    "benchmarks/trace_throughput.py": "test_trace_throughput_benchmark_at_a_tiny_size",
    "benchmarks/early_exit_speed.py": "test_early_exit_benchmark_at_a_tiny_size",
    "benchmarks/gpu_check.py": "tests/test_gpu_check.py::test_dry_run_on_the_cpu",
    "benchmarks/fingerprint_cost.py": "test_fingerprint_cost_benchmark_at_a_tiny_size",
    "benchmarks/reader_exits.py": "test_reader_exits_benchmark_at_a_tiny_size",
    "tools/reproduce.py": "test_reproduce_lists_what_it_would_run",
    "tools/readme_results.py": "test_readme_results_check_runs",
    "tools/sync_navigation.py": "test_sync_navigation_check_runs",
}


def _run(args: list[str], *, env: dict | None = None, cwd: Path = ROOT, timeout: int = 600,
         **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, **kw)


def _python(*args: str, **kw) -> subprocess.CompletedProcess:
    return _run([sys.executable, *args], **kw)


def _fresh_data(tmp_path: Path) -> dict:
    """Environment of a run that writes its caches into a fresh data folder (borrowing the prepared models,
    tasks and sources), on one thread."""
    from adainfer_lib.common.paths import data_dir

    folder = tmp_path / "data"
    folder.mkdir()
    for part in ("models", "tasks", "sources"):
        (folder / part).symlink_to(data_dir() / part)
    return {"ADAINFER_DATA": str(folder), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _fake_bin(folder: Path, **programs: str) -> Path:
    """``folder`` holding executable shell scripts ``name`` -> body (fakes put first on ``PATH``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in programs.items():
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return folder


# --- the scripts: imports, --help, and a tiny run of each -----------------------------------------------------


def adainfer_names(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every ``from adainfer_lib... import name`` in ``path`` (inside functions too) and every
    ``ai.name`` read where the script did ``import adainfer_lib as ai``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names, aliases = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "adainfer_lib":
            names += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name == "adainfer_lib"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            names.append(("adainfer_lib", node.attr))
    return names


def test_every_script_has_a_tiny_run():
    assert sorted(TINY_RUNS) == [str(p.relative_to(ROOT)) for p in SCRIPTS]
    here = Path(__file__).read_text(encoding="utf-8")
    for test in TINY_RUNS.values():
        file, _, name = test.rpartition("::")
        assert f"def {name}(" in ((ROOT / file).read_text(encoding="utf-8") if file else here), test


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_every_library_name_a_script_uses_exists(path):
    """Lazy imports inside a function are reached only at run time: resolve them all now."""
    missing = []
    for module, name in adainfer_names(path):
        if not hasattr(importlib.import_module(module), name):
            missing.append(f"{module}.{name}")
    assert not missing, f"{path.relative_to(ROOT)} uses names the library no longer has: {missing}"


def test_the_import_check_finds_a_moved_name(tmp_path):
    script = tmp_path / "old.py"
    script.write_text("import adainfer_lib as ai\n\ndef f():\n    from adainfer_lib.evaluation.baselines import "
                      "GapThresholdPolicy\n    return ai.load_task, ai.no_such_name\n")
    found = adainfer_names(script)
    assert ("adainfer_lib.evaluation.baselines", "GapThresholdPolicy") in found
    assert ("adainfer_lib", "no_such_name") in found and ("adainfer_lib", "load_task") in found


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_every_script_answers_help(path):
    run = _python(str(path), "--help", timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "usage:" in run.stdout


@pytest.mark.slow
def test_trace_throughput_benchmark_at_a_tiny_size(tmp_path):
    run = _python("benchmarks/trace_throughput.py", "--n", "4", "--tokens", "20", "--batch-size", "2",
                  "--rounds", "1", env=_fresh_data(tmp_path))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    ratios = re.findall(r"^(.+?)\s+[\d.]+ s\s+([\d.]+)x plain forward$", run.stdout, re.M)
    assert [name.strip() for name, _ in ratios] == ["plain forward", "trace, full-vocab lens",
                                                    "trace, label words only", "naive lens (all positions)"]
    assert float(ratios[0][1]) == 1.0  # each run is divided by the plain forward pass measured beside it
    assert re.search(r"prefix cache speedup on the same prompts: [\d.]+x", run.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("classifier", ["crf", "gap"])
def test_early_exit_benchmark_at_a_tiny_size(tmp_path, classifier):
    run = _python("benchmarks/early_exit_speed.py", "--n", "4", "--n-train", "24", "--repeats", "1",
                  "--classifier", classifier, env=_fresh_data(tmp_path))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    out = run.stdout
    measured = float(re.search(r"measured speedup ([\d.]+)x", out).group(1))
    ideal = float(re.search(r"ideal speedup\s+([\d.]+)x", out).group(1))
    ratio = float(re.search(r"^ratio\s+([\d.]+)", out, re.M).group(1))
    assert ratio == pytest.approx(measured / ideal, abs=2e-3)  # printed side by side, from the same run
    assert "n=4 test prompts" in out and "fitted on 24 train examples" in out
    assert ("GapThresholdPolicy" in out) == (classifier == "gap")


@pytest.mark.slow
def test_reader_exits_benchmark_at_a_tiny_size(tmp_path):
    """The readers' study at a tiny size on two seeds: every section prints, the probe's real runs equal their
    replay, and the summary gives each reader's mean ± sd over the two seeds."""
    run = _python("benchmarks/reader_exits.py", "--tasks", "sentiment", "--seeds", "0,1", "--n", "16", "--n-train",
                  "24", "--cs", "0.05", "--translators", "bias", "--real", "2", env=_fresh_data(tmp_path))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    out = run.stdout
    assert "seed 1: n_test=16, n_train=24" in out and "agreement with the full model on test" in out
    table = out.split("agreement with the full model on test:")[1].split("threshold on")[0]
    assert [line.split()[0] for line in table.splitlines()[3:] if line.strip()] == ["5", "10", "15", "20", "25"]
    real = re.findall(r"real run \((\w+)\): \{'real_n': (\d+), 'real_exits_equal': (\d+), 'real_answers_equal': (\d+)",
                      out)
    assert real == [("threshold", "2", "2", "2"), ("logistic", "2", "2", "2")] * 2, out[-1500:]
    summary = out.split("mean ± sd over seeds [0, 1]")[1].splitlines()
    rows = [re.match(r"\s*sentiment\s+(logit lens|probe|tuned lens)\s+(threshold|logistic)\s.*\s(\d+)$", line)
            for line in summary if "sentiment" in line]
    expected = [(reader, rule, "2") for reader in ("logit lens", "probe", "tuned lens")
                for rule in ("threshold", "logistic")]
    assert [(m[1], m[2], m[3]) for m in rows] == expected, summary


def test_reader_exits_benchmark_refuses_layers_the_model_does_not_have():
    """The agreement table's layers default to L/6 .. 5L/6 of the model (gemma3-270m has 18 layers, not 30); a
    layer past L is a usage error that names the model's layers, before any tracing."""
    run = _python("benchmarks/reader_exits.py", "--layers", "5,31", "--n", "4")
    assert run.returncode == 2 and "--layers [5, 31]: smollm2-135m has layers 0..30" in run.stderr, run.stderr[-2000:]


@pytest.mark.slow
def test_fingerprint_cost_benchmark_at_a_tiny_size(tmp_path):
    run = _python("benchmarks/fingerprint_cost.py", "--tokens", "8", "--repeats", "2", env=_fresh_data(tmp_path))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    rows = dict(re.findall(r"^  (.+?)\s+[\d.]+ ms\s+([\d.]+) x forward\(1 token\)$", run.stdout, re.M))
    assert set(rows) == {"cache_id", "weights_version", "forward, 1 token", "forward, 8 tokens",
                         "cache_id, one MLP weight edited"}
    assert float(rows["forward, 1 token"]) == 1.0  # each time is divided by the forward pass measured beside it


def _tool(name: str):
    """``tools/<name>.py`` imported as a module (its ``main(argv)`` runs in this process: no second start-up)."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reproduce_list(args: list[str]) -> str:
    """What ``tools/reproduce.py --list ARGS`` prints (the environment it changes restored)."""
    out = StringIO()
    with mock.patch.dict(os.environ), redirect_stdout(out):
        _tool("reproduce").main([*args, "--list"])
    return out.getvalue()


def test_reproduce_lists_what_it_would_run():
    chapters = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert re.findall(r"would run (\S+) \(full mode\)", reproduce_list(["--no-readme"])) == chapters
    out = reproduce_list(["--model", "gemma3-270m", "01", "03"])
    assert [c[:2] for c in re.findall(r"would run (\S+)", out)] == ["01", "03"]
    assert str(ROOT / "results" / "gemma3-270m") in out and "ADAINFER_MODEL" not in os.environ


@pytest.mark.parametrize("args, says", [(["99"], "no chapter 99 in notebooks/ (chapters: 00, 01"),
                                        (["--model", "no-such-model"], "--model: Cannot load model 'no-such")])
def test_reproduce_refuses_what_it_cannot_run(capsys, args, says):
    """A chapter number that matches no notebook ran nothing and reported success; an unknown model failed in
    the first chapter's kernel."""
    with pytest.raises(SystemExit) as stop:
        reproduce_list(args)
    assert stop.value.code == 2 and says in capsys.readouterr().err


def test_reproduce_runs_a_lane_beside_the_untimed_chapters_only():
    """``make reproduce``'s second model runs beside the default model's chapters that time nothing; the chapters
    that measure wall-clock come after, alone; a lane of timed chapters, or a lane with a lane, is refused."""
    out = reproduce_list(["--alongside", "--model gemma3-270m --n 200 01 03"])
    first = re.findall(r"would run (\d\d)_\S+ \(full mode, beside the lane", out)
    second = re.findall(r"would run (\d\d)_\S+ \(full mode, after the lane, beside chapter 01", out)
    after = re.findall(r"would run (\d\d)_\S+ \(full mode\)$", out, flags=re.M)
    reproduce = _tool("reproduce")
    assert first == ["01"] and second == ["00", "03", "05"]
    assert sorted(first + second) == list(reproduce.UNTIMED_CHAPTERS)
    chapters = sorted(p.name[:2] for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(first + second + after) == chapters
    assert "alongside: tools/reproduce.py --model gemma3-270m --n 200 01 03 --mode full --threads 1 --no-readme" in out
    # the lane runs in this run's mode and publishes only when this run does (a quick run never writes results/)
    quick = reproduce_list(["--mode", "quick", "--alongside", "--model gemma3-270m 01"])
    assert "alongside: tools/reproduce.py --model gemma3-270m 01 --mode quick --threads 1" in quick
    assert "--model gemma3-270m 01 --mode full --no-publish" in reproduce_list(
        ["--no-publish", "--alongside", "--model gemma3-270m 01"])
    for lane, says in [("--model gemma3-270m 04", "chapter(s) 04 measure wall-clock"),
                       ("--model gemma3-270m", "measure wall-clock"),
                       ("01 --alongside 03", "cannot have a lane of its own"), ("--n 0 01", "--n must be a positive"),
                       ("--mode quick 01", "the lane runs in this run's mode (full)")]:
        with pytest.raises(SystemExit), mock.patch("sys.stderr", new_callable=StringIO) as err:
            reproduce_list(["--alongside", lane])
        assert says in err.getvalue(), lane


TIMING_CALLS = ("time_interleaved", "n_timing", "check_cost", "timed", "seconds", "perf_counter", "speedup")


def test_the_chapters_a_lane_may_share_the_cores_with_time_nothing():
    """A chapter in ``UNTIMED_CHAPTERS`` runs at one thread beside another lane, so its code calls nothing that
    measures wall-clock; every other chapter does (the check can tell them apart)."""
    import nbformat

    untimed = _tool("reproduce").UNTIMED_CHAPTERS
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        found = [word for word in TIMING_CALLS if word in code]
        assert bool(found) != (path.name[:2] in untimed), (path.name, found)


def test_reproduce_runs_chapter_01_beside_the_lane_and_the_other_untimed_ones_in_its_place(monkeypatch):
    """Chapter 01 starts beside the lane; the other chapters that time nothing start once the lane has ended, beside
    chapter 01, at one thread too; the timed chapters start after all of them, with the caller's threads; a lane
    that fails fails the run."""
    import threading
    import time

    reproduce = _tool("reproduce")
    seen, lanes, running = [], [], set()

    def fake_lane(args, environ, status=0):
        lanes.append(subprocess.Popen([sys.executable, "-c", f"import time, sys; time.sleep(1); sys.exit({status})"]))
        return lanes[-1]

    def fake_execute(path, out):
        chapter = path.name[:2]
        seen.append((chapter, os.environ.get("OMP_NUM_THREADS"), lanes[-1].poll() is None, "01" in running))
        running.add(chapter)
        time.sleep(3 if chapter == "01" else 0.1)   # chapter 01 outlasts the lane
        running.discard(chapter)
        return 0.0

    recorded = []
    monkeypatch.setattr(reproduce, "execute", fake_execute)
    monkeypatch.setattr(reproduce, "start_lane", fake_lane)
    monkeypatch.setattr(reproduce, "record_times", lambda path, rows: recorded.append(threading.current_thread().name))
    argv = ["--no-publish", "--no-readme", "--alongside", "--model gemma3-270m 01", "00", "01", "02", "03"]
    with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "2"}):
        reproduce.main(argv)
    by = {chapter: rest for chapter, *rest in seen}
    assert seen[0][0] == "01" and by["01"] == ["1", True, False]                 # beside the lane
    assert by["00"] == ["1", False, True] and by["03"] == ["1", False, True]     # in the lane's place, beside 01
    assert seen[-1][0] == "02" and by["02"] == ["2", False, False]                # alone, after all of them
    assert len(recorded) == 4 and "chapters beside the lane" in recorded
    monkeypatch.setattr(reproduce, "start_lane", lambda args, environ: fake_lane(args, environ, status=3))
    with mock.patch.dict(os.environ), pytest.raises(SystemExit) as stop, \
            mock.patch("sys.stderr", new_callable=StringIO) as err:
        reproduce.main(argv)
    assert stop.value.code == 1 and "FAILED alongside" in err.getvalue()


def test_readme_results_check_runs(capsys):
    _tool("readme_results").main(["--check"])
    assert "README results already match results/" in capsys.readouterr().out


def test_sync_navigation_check_runs(capsys):
    with pytest.raises(SystemExit) as stop:
        _tool("sync_navigation").main(["--check"])
    assert stop.value.code == 0 and "navigation lines are in sync" in capsys.readouterr().out


# --- the shell scripts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["tools/install_browser.sh", ".ci/run"])
def test_shell_scripts_parse(script):
    run = _run(["bash", "-n", script])
    assert run.returncode == 0, run.stderr


def test_install_browser_is_idempotent_when_the_browser_is_there(tmp_path):
    browser = _fake_bin(tmp_path / "bin", chromium="echo 'Chromium 1.2.3'") / "chromium"
    apt = _fake_bin(tmp_path / "fakes", **{"apt-get": f"echo \"$@\" >> {tmp_path / 'apt.log'}"})
    for _ in range(2):
        run = _run(["bash", "tools/install_browser.sh"],
                   env={"CHROMIUM": str(browser), "PATH": f"{apt}:{os.environ['PATH']}"})
        assert run.returncode == 0, run.stderr
        assert f"{browser} present (Chromium 1.2.3)" in run.stdout
    assert not (tmp_path / "apt.log").exists()  # nothing installed


def test_install_browser_installs_through_apt_as_root(tmp_path):
    browser = tmp_path / "chromium"
    log = tmp_path / "apt.log"
    fakes = _fake_bin(tmp_path / "fakes", id="echo 0",
                      **{"apt-get": f"echo \"$@\" >> {log}\n"
                                    f"case \"$1\" in install) printf '#!/bin/sh\\necho Chromium 9\\n' > {browser}; "
                                    f"chmod +x {browser};; esac"})
    run = _run(["bash", "tools/install_browser.sh"], env={"CHROMIUM": str(browser),
                                                           "PATH": f"{fakes}:{os.environ['PATH']}"})
    assert run.returncode == 0, run.stderr
    assert log.read_text().splitlines() == ["update", "install -y --no-install-recommends chromium"]
    assert "installed Chromium 9" in run.stdout


def test_install_browser_explains_when_it_cannot_install(tmp_path):
    """Not root and no sudo: a message naming the package, exit 1, no apt-get."""
    fakes = _fake_bin(tmp_path / "fakes", id="echo 1000", **{"apt-get": f"touch {tmp_path / 'apt.log'}"})
    run = _run(["/bin/bash", "tools/install_browser.sh"], env={"CHROMIUM": str(tmp_path / "missing"),
                                                                "PATH": str(fakes)})
    assert run.returncode == 1 and "not root (no sudo)" in run.stderr and "chromium" in run.stderr
    assert not (tmp_path / "apt.log").exists()


def test_ci_runs_the_readme_test_command(tmp_path):
    """.ci/run installs the browser and runs `make test`, the README's test command (with a fake make here)."""
    assert re.search(r"^make test\s", (ROOT / "README.md").read_text(encoding="utf-8"), re.M)
    browser = _fake_bin(tmp_path / "bin", chromium="echo Chromium") / "chromium"
    log = tmp_path / "make.log"
    fakes = _fake_bin(tmp_path / "fakes", make=f"echo \"$PWD $@\" >> {log}")
    run = _run([str(ROOT / ".ci" / "run")], env={"CHROMIUM": str(browser), "PATH": f"{fakes}:{os.environ['PATH']}"},
               cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert log.read_text().splitlines() == [f"{ROOT} test"]  # from the repository root, once
    assert "install_browser: " in run.stdout and "CI finished in" in run.stdout


# --- the Makefile ---------------------------------------------------------------------------------------------


def phony_targets() -> list[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return [t for line in re.findall(r"^\.PHONY:(.*)$", text, re.M) for t in line.split()]


def make_commands(target: str, *extra: str, env: dict | None = None) -> list[list[str]]:
    """The simple commands ``make -n -B target`` would run (every recipe, up to date or not), as argv lists."""
    # --no-print-directory: under `make test` (MAKELEVEL set) make prints "make[1]: Entering directory" lines
    run = _run(["make", "--no-print-directory", "-n", "-B", target, *extra], env=env)
    assert run.returncode == 0, f"make -n {target}: {run.stderr}"
    commands = []
    for line in run.stdout.splitlines():
        words: list[str] = []
        for token in shlex.split(line, comments=True) + [";"]:
            if token in ("||", "&&", ";", "|"):
                if words:
                    commands.append(words)
                words = []
            else:
                words.append(token)
    return commands


SHELL_BUILTINS = {"test", "cd", "echo", "true", ":", "["}


def check_command(argv: list[str]) -> None:
    """The program ``argv`` names exists, and so does what a Python command runs (its script or ``-m`` module);
    a ``tools/reproduce.py`` command is run with ``--list`` (its arguments parsed, chapters found)."""
    env = {}
    while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
        key, _, value = argv.pop(0).partition("=")
        env[key] = value
    program, args = argv[0], argv[1:]
    if program in SHELL_BUILTINS:
        return
    path = ROOT / program if "/" in program else shutil.which(program)
    assert path and os.access(path, os.X_OK), f"{program!r} (in {argv}) is not an executable"
    if Path(program).name.startswith("python"):
        if args[:1] == ["-m"]:
            assert importlib.util.find_spec(args[1]) is not None, f"no module {args[1]} (in {argv})"
        else:
            assert (ROOT / args[0]).is_file(), f"no script {args[0]} (in {argv})"
            if args[0] == "tools/reproduce.py":
                with mock.patch.dict(os.environ, env):
                    assert "would run" in reproduce_list(args[1:]), argv
    if Path(program).name == "jupyter":
        assert importlib.util.find_spec(f"jupyter{args[0]}") is not None, f"jupyter {args[0]} is not installed"


def test_every_phony_target_resolves_to_commands_that_exist():
    targets = phony_targets()
    assert {"lab", "test", "install", "prepare", "reproduce", "benchmark", "clean-cache"} <= set(targets)
    for target in targets:
        commands = make_commands(target)
        assert commands, f"make {target} runs nothing"
        for argv in commands:
            check_command(argv)


def test_make_test_runs_on_xdist_workers_and_test_models_runs_the_second_model():
    """`make test` spreads over TEST_WORKERS pytest-xdist workers, a model's notebooks kept together (loadgroup);
    TEST_WORKERS=0 runs in one process; `make test-models` selects exactly the second model's chapter runs."""
    parallel = make_commands("test", "TEST_WORKERS=2")[-1]
    assert parallel[1:3] == ["-m", "pytest"] and parallel[parallel.index("-n") + 1] == "2"
    assert parallel[parallel.index("--dist") + 1] == "loadgroup"
    assert "-n" not in make_commands("test", "TEST_WORKERS=0")[-1]
    models = make_commands("test-models")[-1]
    assert models[models.index("-m", 3) + 1] == "second_model"
    collected = _run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                      *models[models.index("-m", 3):]])
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    chapters = sorted(p.stem for p in ROOT.glob("notebooks/[0-9][0-9]_*.ipynb"))
    assert sorted(i.split("[")[1].removesuffix("-gemma3-270m]") for i in ids) == chapters, collected.stdout[-2000:]


def test_make_benchmark_runs_every_benchmark_but_the_gpu_one():
    scripts = {argv[1] for argv in make_commands("benchmark") if argv[1:2] and argv[1].startswith("benchmarks/")}
    assert scripts == {str(p.relative_to(ROOT)) for p in ROOT.glob("benchmarks/*.py")} - {"benchmarks/gpu_check.py"}


def test_the_command_check_fails_on_a_missing_script():
    with pytest.raises(AssertionError, match="no script"):
        check_command([sys.executable, "benchmarks/no_such_benchmark.py"])
    with pytest.raises(AssertionError, match="no module"):
        check_command(["ADAINFER_N=2", sys.executable, "-m", "adainfer_lib.no_such_module"])
    with pytest.raises(AssertionError, match="not an executable"):
        check_command(["no-such-program-anywhere", "x"])


@pytest.mark.parametrize("uid, flag", [("0", True), ("1000", False)])
def test_make_lab_allows_root_only_for_root(tmp_path, uid, flag):
    """Jupyter stops with "Running as root is not recommended" unless given --allow-root (containers, Colab):
    the Makefile adds it when `id -u` is 0, and only then."""
    fakes = _fake_bin(tmp_path / "fakes", id=f"echo {uid}")
    lab = [argv for argv in make_commands("lab", env={"PATH": f"{fakes}:{os.environ['PATH']}"})
           if Path(argv[0]).name == "jupyter"]
    assert len(lab) == 1 and lab[0][1] == "lab" and lab[0][-1] == "notebooks/"
    assert ("--allow-root" in lab[0]) == flag


def test_make_clean_cache_removes_only_the_caches(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    for part in ("traces", "policies", "models", "tasks"):
        (tmp_path / "data" / part).mkdir(parents=True)
        (tmp_path / "data" / part / "file").write_text("x")
    run = _run(["make", "clean-cache"], cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["models", "tasks"]


def test_make_prepare_runs_and_is_idempotent():
    """For real (the environment installed once already: its stamp is taken as up to date)."""
    stamp = ROOT / ".venv" / ".adainfer-installed"
    if not stamp.exists():
        pytest.skip("no .venv/.adainfer-installed: `make install` has not run in this checkout")
    run = _run(["make", "-o", str(stamp.relative_to(ROOT)), "prepare"], timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert re.search(r"^model smollm2-135m: ", run.stdout, re.M) and "task data: prepared" in run.stdout


# --- the command line -----------------------------------------------------------------------------------------

BAD_ARGUMENTS = [
    (["--task", "sentiment", "--n", "0"], "argument --n: must be an integer >= 1, not 0"),
    (["--task", "sentiment", "--n", "-3"], "argument --n: must be an integer >= 1, not -3"),
    (["--task", "nope"], "unknown task 'nope'; available tasks: sentiment"),
    (["--task", "sentiment", "--seed", "-1"], "argument --seed: must be an integer >= 0, not -1"),
    (["--task", "sentiment", "--shots", "-1"], "argument --shots: must be an integer >= 0, not -1"),
    (["--task", "sentiment", "--n-train", "-1"], "argument --n-train: must be an integer >= 0, not -1"),
    (["--task", "sentiment", "--model", "no-such-model-xyz"], "Cannot load model 'no-such-model-xyz'"),
    (["--task", "sentiment", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1, not 0"),
    (["--task", "sentiment", "--n", "abc"], "argument --n: must be an integer >= 1, not 'abc'"),
    (["--task", "sentiment", "--n", "99999"], "n_train=500, the default, train examples"),
]


@pytest.mark.parametrize("args, says", BAD_ARGUMENTS, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_cli_bad_arguments_are_usage_errors_before_any_model_loads(monkeypatch, capsys, args, says):
    from adainfer_lib import cli
    from adainfer_lib.model import loading

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(loading, "load_model", no_model)
    with pytest.raises(SystemExit) as stop:
        cli.main(["trace", *args])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m adainfer_lib.cli trace" in err and says in err


def test_cli_n_larger_than_the_task_says_the_task_size(capsys):
    from adainfer_lib import cli
    from adainfer_lib.data import sources

    rows = sources.source_info("sentiment")["rows"]
    with pytest.raises(SystemExit):
        cli.main(["trace", "--task", "sentiment", "--n", "99999", "--n-train", "100", "--shots", "2"])
    err = capsys.readouterr().err
    assert f"only {rows - 102} examples are available for the test split (the source has {rows} rows; " \
           "n_train=100 train examples and shots=2 demonstrations drawn first)" in err
    assert "default" not in err.split("error:")[1]


def test_cli_errors_show_no_traceback():
    run = _python("-m", "adainfer_lib.cli", "trace", "--task", "nope", timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "usage: python -m adainfer_lib.cli trace" in run.stderr and "unknown task 'nope'" in run.stderr


def test_python_m_adainfer_lib_is_the_command_line(capsys):
    run = _python("-m", "adainfer_lib", "--help", timeout=120)
    assert run.returncode == 0 and "usage: python -m adainfer_lib " in run.stdout and "trace" in run.stdout
    from adainfer_lib import cli

    with pytest.raises(SystemExit) as stop:
        cli.main([], prog="python -m adainfer_lib")
    assert stop.value.code == 2 and "the following arguments are required: command" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_trace_at_a_tiny_size(tmp_path):
    run = _python("-m", "adainfer_lib", "trace", "--task", "sentiment", "--n", "4", "--n-train", "8",
                  "--no-progress", env=_fresh_data(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert (summary["model"], summary["task"], summary["n"], summary["n_train"]) == ("smollm2-135m", "sentiment",
                                                                                       4, 8)
    assert Path(summary["trace_cache"]).is_file() and Path(summary["trace_cache"]).is_relative_to(tmp_path)


@pytest.mark.parametrize("online", [False, True])
def test_offline_by_default_reaches_an_imported_hub(monkeypatch, online):
    """``import adainfer_lib`` imports huggingface_hub, which reads HF_HUB_OFFLINE once: setting the variable
    afterwards (what the command line did) left the hub online, and an unknown model name retried the network."""
    from huggingface_hub import constants, is_offline_mode

    from adainfer_lib.common.hub import offline_by_default

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", online)  # as imported without the variable, or online
    if online:
        monkeypatch.setenv("ADAINFER_ONLINE", "1")
    else:
        monkeypatch.delenv("ADAINFER_ONLINE", raising=False)
    assert offline_by_default() is (not online) and is_offline_mode() is (not online)
    assert os.environ["HF_HUB_OFFLINE"] == ("0" if online else "1")


def test_cli_unknown_model_does_not_contact_the_hub():
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "ADAINFER_ONLINE")}
    run = subprocess.run([sys.executable, "-m", "adainfer_lib.cli", "trace", "--task", "sentiment", "--model",
                          "no-such-org/no-such-model-xyz"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 2 and "Cannot load model 'no-such-org/no-such-model-xyz'" in run.stderr
    assert "requesting HEAD" not in run.stderr and "Retrying" not in run.stderr, run.stderr[-2000:]
