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
#: (equals the final one from there on) at layers 3, 0, 1, 2, 3, 2: the oracle saves 1 - (11/6)/4 = 13/24. Example
#: 0 agrees with its final answer at layer 1, flips at 2 and settles at 3: the one example that flips back;
#: example 5 agrees only at layer 0 (the embeddings, where no rule exits) and does not count.
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

    check = exercises.check_01_flip_example
    assert check(tt, 0) and "first agrees with the final answer at layer 1" in str(check(tt, 0))
    assert "settles at layer 3" in str(check(tt, 0)) and ch01.exercise_3(tt) == 0
    for never in (1, 2, 3, 4, 5):  # 5 agrees at layer 0 only
        assert rejected(check(tt, never), "never agrees")
    assert rejected(check(tt, 6), "between 0 and 5") and rejected(check(tt, ...), "between 0 and 5")


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


def test_claims_record_and_fail_only_where_they_must():
    import nbformat

    from adainfer_lib.course.claims import CLAIM_MIME, claim, claims_in

    adaptive = claim("a", False, "{x} above", "{x} below", show=False, x=1)
    assert adaptive.text == "1 below" and not adaptive.failed
    firm_full = claim("b", False, "{x} holds", show=False, x=2)
    assert firm_full.failed and "does not hold" in str(firm_full)
    firm_quick = claim("c", False, "{x} holds", basis="quick", show=False, x=3)
    assert not firm_quick.failed
    assert claim("d", False, "equal", basis="quick", strict=True, show=False).failed
    bundle = firm_full._repr_mimebundle_()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("display_data", data=bundle)])])
    nb = nbformat.reads(nbformat.writes(nb), as_version=4)   # what an executed notebook on disk holds
    (record,) = claims_in(nb)
    assert record["failed"] and record["key"] == "b" and CLAIM_MIME in bundle


def test_reproduce_names_the_firm_claims_that_fail():
    import nbformat
    from reproduce import failed_claims

    from adainfer_lib.course.claims import claim

    outputs = [nbformat.v4.new_output("display_data", data=c._repr_mimebundle_()) for c in (
        claim("ch99.holds", True, "{x} holds", show=False, x=1),
        claim("ch99.adaptive", False, "up", "down", show=False),
        claim("ch99.quick_noise", False, "noise", basis="quick", show=False),
        claim("ch99.broken", False, "{x} is above 2", show=False, x=1))]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=outputs)])
    nb = nbformat.reads(nbformat.writes(nb), as_version=4)
    assert failed_claims(nb) == ["ch99.broken: 1 is above 2"]


def test_claim_references_read_the_saved_results():
    from adainfer_lib import setup_notebook
    from adainfer_lib.course.claims import quick_and_full, reference

    settings = setup_notebook("smollm2-135m")
    batch = reference(settings, "01_calibration", "accuracy_full", task="sentiment", calibration="batch")
    assert batch is not None and 0 < batch <= 1
    assert reference(settings, "no_such_result", "accuracy_full") is None
    quick = type(settings)(mode="quick", model=settings.model, seed=0)
    assert "full mode" in quick_and_full(quick, 0.5, batch, n=24, ref_n=500)


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


def test_chapter_07_claims_follow_their_numbers():
    """The generation chapter's sentences come from the study's numbers: collapse or not, cache or decisions,
    and speculative decoding's identical output is a firm claim that fails when one output differs."""
    import numpy as np
    import pandas as pd

    from adainfer_lib.course import claims

    def study(skip_nll: float, skip_agree: float) -> pd.DataFrame:
        row = {"n": 10, "nll_full": 1.2, "repetition": 0.3, "repetition_full": 0.1}
        return pd.DataFrame([{**row, "method": "skip", "nll": skip_nll, "agree_tokens": skip_agree},
                             {**row, "method": "recompute", "nll": 1.5, "agree_tokens": 5.0}])

    collapse, decisions = claims.ch07_strategies(study(6.0, 4.8))
    assert collapse.held and "collapses" in collapse.text and decisions.held and "not the cache" in decisions.text
    collapse, decisions = claims.ch07_strategies(study(1.6, 1.0))
    assert not collapse.held and "No collapse" in collapse.text and "The cache matters" in decisions.text
    assert claims.ch07_settling(np.array([29, 30, 28]), 30, 24).held
    assert "early enough" in claims.ch07_settling(np.array([3, 5, 30]), 30, 24).text
    spec = pd.DataFrame({"method": ["speculative"] * 2, "full_match_rate": [1.0, 0.9], "measured_speedup": [0.5, 1.2],
                         "acceptance_rate": [0.2, 0.9], "n": [4, 4]})
    identical, slower = claims.ch07_speculative(spec)
    assert identical.firm and identical.strict and not identical.held  # one output differed: the test would fail
    assert not slower.held and "faster" in slower.text
