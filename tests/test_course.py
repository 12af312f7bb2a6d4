"""The course layer: navigation lines in sync, the README shows what results/ holds, chapter 01's exercise
checkers accept the solutions and reject wrong answers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from adainfer_lib import exercises
from conftest import task_trace_from_predictions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "notebooks"))

from readme_results import RESULTS, render, update_readme  # noqa: E402
from solutions import ch01  # noqa: E402
from sync_navigation import chapters, stale_chapters  # noqa: E402


def test_navigation_lines_are_in_sync():
    assert len(chapters()) >= 1
    assert stale_chapters() == [], "run `python tools/sync_navigation.py`"


def test_readme_results_section_matches_the_results_folder():
    assert not update_readme(check=True), "run `python tools/readme_results.py` (or `make reproduce`)"


def test_readme_results_follow_a_changed_measurement(tmp_path):
    import shutil

    import pandas as pd

    shutil.copytree(RESULTS, tmp_path / "results")
    seeds = pd.read_csv(tmp_path / "results" / "01_over_seeds.csv")
    seeds["oracle_layers_saved"] = 0.987654  # every seed of every task: mean 0.988, sd 0
    seeds.to_csv(tmp_path / "results" / "01_over_seeds.csv", index=False)
    section = render(tmp_path / "results")
    assert section != render() and "98.8 ± 0.0" in section  # oracle layers saved (%), mean ± sd


def test_navigation_check_detects_a_stale_line(tmp_path):
    import shutil

    import nbformat

    for path in chapters():
        shutil.copy(path, tmp_path / path.name)
    first = sorted(tmp_path.glob("*.ipynb"))[0]
    nb = nbformat.read(first, as_version=4)
    nb.cells[0].source = nb.cells[0].source.replace("[Index](00_index.ipynb)", "[Index](old.ipynb)")
    nbformat.write(nb, first)
    assert stale_chapters(tmp_path) == [first.name]
    stale_chapters(tmp_path, fix=True)
    assert stale_chapters(tmp_path) == []


#: Decisions by layer (0..4) of six examples, with their gold labels. By hand, against gold: layer accuracy
#: 3/6, 4/6, 3/6, 5/6, 5/6 — the first layer at >= 90% of the final 5/6 is layer 3. Each example's answer settles
#: (equals the final one from there on) at layers 3, 0, 1, 2, 3, 2: the oracle saves 1 - (11/6)/4 = 13/24. From
#: layer 1 up to its settling layer, example 0 changes its decision twice (1 -> 0 -> 1), examples 3, 4 and 5 once,
#: examples 1 and 2 never (example 2's one change is from layer 0, the embeddings, where no rule exits).
HAND_PREDS = [[0, 1, 0, 1, 1], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1], [0, 1, 0, 0, 0]]
HAND_GOLD = [1, 1, 0, 0, 1, 0]


def rejected(feedback, *words: str) -> bool:
    """``feedback`` is a ❌ whose message contains every one of ``words``."""
    return not feedback and str(feedback).startswith("❌") and all(w in feedback.message for w in words)


def test_chapter_01_checkers_accept_the_hand_computed_answers_and_reject_the_near_misses():
    tt = task_trace_from_predictions(HAND_PREDS, gold=HAND_GOLD)
    np.testing.assert_allclose(tt.accuracy_by_layer(), [3 / 6, 4 / 6, 3 / 6, 5 / 6, 5 / 6])  # the hand numbers
    check = exercises.check_01_first_layer_reaching
    assert check(tt, 3) and check(tt, np.int64(3)) and ch01.exercise_1(tt) == 3
    assert check(tt, 0, fraction=0.5) and rejected(check(tt, 3, fraction=0.5), "earlier")  # 3/6 >= 5/12 at layer 0
    assert rejected(check(tt, 2), "layer 2 has accuracy 0.500", "does not reach the bar")  # one too early
    assert rejected(check(tt, 4), "an earlier layer does too")  # one too late (counting from 1)
    assert rejected(check(tt, 5), "between 0 and 4") and rejected(check(tt, ...), "between 0 and 4")
    assert rejected(check(tt, "3"), "a layer number")

    check = exercises.check_01_raw_oracle
    assert check(tt, oracle_layers_saved=13 / 24, accuracy_full=5 / 6) and ch01.exercise_2(tt) == pytest.approx(
        {"oracle_layers_saved": 13 / 24, "accuracy_full": 5 / 6})
    assert check(tt, oracle_layers_saved=0.5417, accuracy_full=0.8333)  # rounded to the 4 digits a reader copies
    assert rejected(check(tt, oracle_layers_saved=100 * 13 / 24, accuracy_full=5 / 6), "looks like a percentage")
    assert rejected(check(tt, oracle_layers_saved=13 / 24, accuracy_full=500 / 6), "accuracy 83.3", "percentage")
    assert rejected(check(tt, oracle_layers_saved=(11 / 6) / 4, accuracy_full=5 / 6), "1 - mean")  # the depth
    assert rejected(check(tt, oracle_layers_saved=5 / 6, accuracy_full=13 / 24), "raw accuracy is off")  # swapped
    assert rejected(check(tt, oracle_layers_saved=..., accuracy_full=...), "raw accuracy is off")

    check = exercises.check_01_most_changes
    assert list(exercises.changes_before_settling(tt)) == [2, 0, 0, 1, 1, 1]   # counted by hand from HAND_PREDS
    assert check(tt, 2) and check(tt, 2.0) and ch01.exercise_3(tt) == 2 and "example 0" in str(check(tt, 2))
    assert rejected(check(tt, 3), "layer 0")          # 0 -> 1 -> 0 -> 1 counted from the embeddings
    assert rejected(check(tt, 1), "too low") and rejected(check(tt, 4), "too high")
    assert rejected(check(tt, ...), "between 0 and 4") and rejected(check(tt, 1.5), "whole number")


def test_chapter_01_raw_oracle_is_computed_from_the_raw_decisions():
    """On a trace whose raw decisions lean to one label (batch calibration removes the lean), the checker wants
    the raw numbers — computed here with a loop over the raw argmax — and rejects the calibrated ones."""
    from test_exercises import settling_trace

    tt = settling_trace(seed=1, lean=2.0)
    raw = tt.trace.label_logits.argmax(-1)  # (n, L+1), no calibration
    L, gold = tt.n_layers, np.asarray(tt.gold)
    settle = []
    for row in raw:
        layer = L
        while layer > 0 and row[layer - 1] == row[-1]:
            layer -= 1
        settle.append(layer)
    saved, accuracy = 1 - np.mean(settle) / L, float(np.mean(raw[:, -1] == gold))
    own_saved = 1 - tt.earliest_consistent_layer().mean() / L
    own_accuracy = float(np.mean(tt.final_predictions() == gold))
    assert abs(own_saved - saved) > 0.01 and abs(own_accuracy - accuracy) > 0.01  # the two can be told apart
    check = exercises.check_01_raw_oracle
    assert check(tt, oracle_layers_saved=saved, accuracy_full=accuracy)
    assert not check(tt, oracle_layers_saved=own_saved, accuracy_full=accuracy)
    assert not check(tt, oracle_layers_saved=saved, accuracy_full=own_accuracy)


def test_prose_shows_a_smaller_run_beside_the_published_full_mode_value():
    """``prose.beside_full`` reads ``results/`` for the run's model: the value alone in full mode, with the caveat and
    the full-mode value in quick and class mode, a plain note where nothing is published."""
    import pandas as pd

    from adainfer_lib import NotebookSettings
    from adainfer_lib.course import prose

    saved = pd.read_csv(ROOT / "results" / "01_calibration.csv").set_index(["task", "calibration"])
    batch, n = saved.loc[("sentiment", "batch"), "accuracy_full"], int(saved.loc[("sentiment", "batch"), "n"])
    where = dict(task="sentiment", calibration="batch")
    quick, klass, full = (NotebookSettings(mode=m, model="smollm2-135m", seed=0) for m in ("quick", "class", "full"))
    assert prose.full_mode(quick, "01_calibration", "accuracy_full", **where) == (pytest.approx(batch), n)
    text = prose.beside_full(quick, 0.5, "01_calibration", "accuracy_full", n=24, **where)
    assert text == f"0.500 (quick mode, n = 24: noise; full mode {batch:.3f}, n = {n})"
    assert "class mode, n = 200: noisier than full mode" in prose.beside_full(klass, 0.5, "01_calibration",
                                                                              "accuracy_full", n=200, **where)
    assert prose.beside_full(full, 0.5, "01_calibration", "accuracy_full", n=500, **where) == "0.500 (n = 500)"
    assert "not saved for smollm2-135m" in prose.beside_full(quick, 0.5, "no_such_result", "auc")
    assert prose.full_mode(quick, "01_calibration", "accuracy_full", task="no such task") is None
    assert prose.note(full, 24, "x") == "" and prose.note(quick, 24) == " (quick mode, n = 24: noise)"
    assert prose.threshold_text(1.01) == prose.threshold_text(None) == "never exits (> 1)"
    assert prose.threshold_text(0.4) == "0.40"
    shown = prose.show_thresholds(pd.DataFrame({"threshold": [0.5, 1.01, float("nan")]}), missing="none")
    assert shown.threshold.tolist() == ["0.50", "never exits (> 1)", "none"]


@pytest.mark.parametrize("chapter", ["ch01", "ch02", "ch03", "ch04", "ch05", "ch06"])
def test_solutions_answer_the_why_questions_in_words(chapter):
    """Every exercise whose text asks why (or to explain, argue, compare) has a written answer in ``WHY``."""
    import importlib
    import re

    import nbformat

    module = importlib.import_module(f"solutions.{chapter}")
    (path,) = (ROOT / "notebooks").glob(f"{chapter[2:]}_*.ipynb")
    text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")
    exercises_text = text.split("## Exercises", 1)[1].split("### More to explore", 1)[0]
    exercises_text = re.sub(r"^\s*\*Difficulty .*$", "", exercises_text, flags=re.M)  # "· why: it matters ·"
    asked = {int(m.group(1)) for m in re.finditer(r"^(\d)\. (.*?)(?=^\d\. |\Z)", exercises_text, re.M | re.S)
             if re.search(r"\b(why|explain|argue|what does that say)\b", m.group(2), re.I)}
    answered = {k for k, v in getattr(module, "WHY", {}).items() if isinstance(v, str) and len(v) > 80}
    assert asked <= answered, f"{chapter}: exercises {sorted(asked - answered)} ask why but WHY does not answer"
