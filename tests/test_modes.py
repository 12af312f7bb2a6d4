"""Quick, class and full mode: parsing the ``ADAINFER_*`` variables, the sizes of each mode (named once, used by
the chapters), and where a run writes — only a publishing run (``tools/reproduce.py`` in full mode) writes
``results/``; quick, class and ``ADAINFER_N`` runs write the same file names under ``build/<mode>/``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from adainfer_lib.course import modes
from adainfer_lib.course.notebook import NotebookSettings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from reproduce import chapter_paths, kernel_environment, parse_args, publishes  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("environ, mode", [
    ({}, "full"), ({"ADAINFER_QUICK": "1"}, "quick"), ({"ADAINFER_QUICK": "true"}, "quick"),
    ({"ADAINFER_QUICK": "0"}, "full"), ({"ADAINFER_MODE": "class"}, "class"), ({"ADAINFER_MODE": " Class "}, "class"),
    ({"ADAINFER_MODE": "quick", "ADAINFER_QUICK": "1"}, "quick"), ({"ADAINFER_MODE": "class", "ADAINFER_QUICK": "0"},
                                                                   "class"),
    ({"ADAINFER_MODE": ""}, "full"),
])
def test_mode_from_the_environment(environ, mode):
    assert modes.run_mode(environ) == mode


@pytest.mark.parametrize("environ, message", [
    ({"ADAINFER_MODE": "classroom"}, "ADAINFER_MODE='classroom': expected one of quick, class, full"),
    ({"ADAINFER_MODE": "class", "ADAINFER_QUICK": "1"}, "ADAINFER_QUICK=1 asks for quick mode"),
    ({"ADAINFER_QUICK": "2"}, "ADAINFER_QUICK='2'"),
])
def test_an_unknown_or_contradictory_mode_is_a_clear_error(environ, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        modes.run_mode(environ)


def test_size_cap():
    assert modes.size_cap({}) is None and modes.size_cap({"ADAINFER_N": "0"}) is None
    assert modes.size_cap({"ADAINFER_N": "100"}) == 100
    for bad in ("-3", "abc", "1.5"):
        with pytest.raises(ValueError, match="ADAINFER_N"):
            modes.size_cap({"ADAINFER_N": bad})


def test_sizes_per_mode():
    quick, klass, full = (NotebookSettings(mode=m, model="smollm2-135m", seed=0) for m in modes.MODES)
    assert (quick.n("test"), klass.n("test"), full.n("test")) == (24, 200, 500)
    assert (quick.n("train"), klass.n("train"), full.n("train")) == (40, 250, 250)
    assert quick.quick and not klass.quick and not full.quick   # quick means quick mode only
    assert full.full and not klass.full
    assert quick.param("ch06.delta") == 0.10 and klass.param("ch06.delta") == full.param("ch06.delta") == 0.02
    for name, (q, c, f) in modes.SIZES.items():  # class sits between quick and full
        assert q <= c <= f, name
    capped = NotebookSettings(mode="class", model="smollm2-135m", seed=0, cap=100)
    assert capped.n("test") == 100 and capped.n("ch04.test") == 40   # ADAINFER_N caps prompt counts...
    assert capped.param("ch07.new_tokens") == klass.param("ch07.new_tokens")   # ... not other settings
    with pytest.raises(KeyError, match="no size 'tset'"):
        klass.n("tset")
    with pytest.raises(KeyError, match="no setting 'ch06.dleta'"):
        klass.param("ch06.dleta")
    with pytest.raises(ValueError, match="mode must be one of"):
        NotebookSettings(mode="classroom", model="smollm2-135m", seed=0)


@pytest.mark.parametrize("mode", ["class", "full"])
def test_chapter_06_can_certify_at_its_delta(mode):
    """Chapter 06 in class and full mode: its calibration sets are at least twice the smallest size at which zero
    disagreements are certified at the mode's δ, ε = 5% ((1 − δ)ⁿ ≤ ε), so a rule that disagrees on a few
    prompts can still be certified."""
    from adainfer_lib.certification import min_calibration_size

    settings = NotebookSettings(mode=mode, model="smollm2-135m", seed=0)
    n_cal = min(settings.n("ch06.calibration"), settings.n("ch06.pool") // 2)
    assert n_cal >= 2 * min_calibration_size(settings.param("ch06.delta"), 0.05)


def _names_used(kind: str) -> set[str]:
    text = "\n".join(c.source for p in NOTEBOOKS for c in nbformat.read(p, as_version=4).cells
                     if c.cell_type == "code")
    return set(re.findall(rf'settings\.{kind}\("([^"]+)"\)', text))


def test_every_size_is_named_once_and_used():
    """The chapters ask the table for their sizes by name (no size typed into a notebook, no mode test), and
    every name in the table is used."""
    used_sizes, used_settings = _names_used("n"), _names_used("param")
    assert used_sizes - {"test", "train"} <= set(modes.SIZES) and used_settings <= set(modes.SETTINGS)
    assert set(modes.SIZES) - {"test", "train"} <= used_sizes, "sizes no chapter uses"
    assert set(modes.SETTINGS) <= used_settings, "settings no chapter uses"
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                assert not re.search(r"settings\.n\(\d", cell.source), f"{path.name}: a size typed into the cell"
                assert "settings.quick" not in cell.source, f"{path.name}: a size chosen by mode in the cell"


def _save_both(settings: NotebookSettings) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    paths = [settings.save_result(pd.DataFrame({"x": [1]}), "table"), settings.save_result(fig, "figure")]
    plt.close(fig)
    return paths


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A stand-in repository root: ``save_result`` and ``output_folder`` write under it."""
    import adainfer_lib.common.paths as paths

    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path)
    return tmp_path


@pytest.mark.parametrize("environ, folder", [
    ({"ADAINFER_MODE": "quick"}, "build/quick"), ({"ADAINFER_QUICK": "1"}, "build/quick"),
    ({"ADAINFER_MODE": "class"}, "build/class"), ({"ADAINFER_N": "100"}, "build/full"), ({}, "build/full"),
    ({"ADAINFER_MODE": "class", "ADAINFER_N": "50"}, "build/class"),
    ({"ADAINFER_MODE": "class", "ADAINFER_MODEL": "gemma3-270m"}, "build/class/gemma3-270m"),
])
def test_runs_that_do_not_publish_write_nothing_under_results(repo, environ, folder):
    settings = NotebookSettings.from_environ("smollm2-135m", environ=environ)
    paths = _save_both(settings)
    assert not (repo / "results").exists()
    assert paths == [repo / folder / "table.csv", repo / folder / "figure.png"] and all(p.exists() for p in paths)


@pytest.mark.parametrize("environ, folder", [
    ({"ADAINFER_PUBLISH": "1"}, "results"), ({"ADAINFER_PUBLISH": "1", "ADAINFER_N": "200"}, "results"),
    ({"ADAINFER_PUBLISH": "1", "ADAINFER_MODEL": "gemma3-270m"}, "results/gemma3-270m"),
])
def test_the_publish_path_writes_results(repo, environ, folder):
    paths = _save_both(NotebookSettings.from_environ("smollm2-135m", environ=environ))
    assert paths == [repo / folder / "table.csv", repo / folder / "figure.png"] and all(p.exists() for p in paths)
    assert not (repo / "build").exists()


@pytest.mark.parametrize("mode", ["quick", "class"])
def test_only_full_mode_may_publish(mode):
    with pytest.raises(ValueError, match="ADAINFER_PUBLISH=1 writes results/, which only full mode may"):
        NotebookSettings.from_environ(environ={"ADAINFER_MODE": mode, "ADAINFER_PUBLISH": "1"})
    with pytest.raises(ValueError, match="only full mode publishes"):
        kernel_environment(mode, publish=True)


def test_reproduce_publishes_in_full_mode_only():
    """``tools/reproduce.py``'s kernels: full mode (``make reproduce``) publishes, class (``make class``) and quick
    do not, whatever the calling shell had set; the chapters read back the mode reproduce chose."""
    shell = {"ADAINFER_QUICK": "1", "ADAINFER_PUBLISH": "1", "ADAINFER_N": "200", "PATH": "/bin"}
    for argv, mode, publish in [([], "full", True), (["--model", "gemma3-270m", "01"], "full", True),
                                (["--mode", "class"], "class", False), (["--mode", "quick", "00"], "quick", False),
                                (["--no-publish"], "full", False), (["--mode", "class", "--prepare"], "class", False)]:
        args = parse_args(argv)
        assert (args.mode, publishes(args)) == (mode, publish), argv
        env = kernel_environment(args.mode, publishes(args), shell)
        settings = NotebookSettings.from_environ(environ=env)
        assert (settings.mode, settings.publish, settings.cap) == (mode, publish, 200)
        assert env["PATH"] == "/bin"
    with pytest.raises(SystemExit):
        parse_args(["--mode", "class", "--no-publish"])


def test_reproduce_chapters():
    assert [p.name[:2] for p in chapter_paths(["02", "00"])] == ["00", "02"]
    prepared = [p.name[:2] for p in chapter_paths([], prepare=True)]
    assert "07" not in prepared and "01" in prepared   # the chapters that trace
    assert len(chapter_paths([])) == len(NOTEBOOKS)
    with pytest.raises(ValueError, match="no chapter 42 in notebooks"):
        chapter_paths(["42"])


def test_the_readme_states_the_sizes_of_the_table():
    """The README's mode section quotes the study sizes of each mode: they follow the table when it is tuned."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Quick, class and full mode", 1)[1].split("\n### ", 1)[0]
    for mode in modes.MODES:
        test, train = modes.size("test", mode), modes.size("train", mode)
        assert f"{test} test and {train} train prompts per task" in " ".join(section.split()), mode
