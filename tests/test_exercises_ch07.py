"""Chapter 07's exercise checkers accept the reference solutions (``notebooks/solutions/ch07.py``) on a tiny
model's generations and reject the ``...`` placeholder and the plausible wrong answers they name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import adainfer_lib as ai
from adainfer_lib import exercises
from conftest import make_tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "notebooks"))

from solutions import ch07  # noqa: E402

PROMPT = "The movie was a long and winding story about"


@pytest.fixture(scope="module")
def runs(default_tokenizer):
    model = make_tiny_model("llama", default_tokenizer)
    full = ai.greedy_generate(model, PROMPT, max_new_tokens=10)
    skip = ai.generate_early_exit(model, PROMPT, ai.TopProbRule(0.0, min_layer=1), strategy="skip", max_new_tokens=10)
    spec = ai.speculative_generate(model, PROMPT, ai.TopProbRule(0.0, min_layer=1), draft_tokens=3, max_new_tokens=10)
    return full, skip, spec


def rejected(feedback, *words: str) -> bool:
    return not feedback and str(feedback).startswith("❌") and all(w in feedback.message for w in words)


def test_agreement(runs):
    full, skip, _ = runs
    assert exercises.check_07_agreement(skip, full, ch07.exercise_1(skip, full))
    assert exercises.check_07_agreement(full, full, ch07.exercise_1(full, full))
    assert rejected(exercises.check_07_agreement(skip, full, ...), "`...`")
    assert rejected(exercises.check_07_agreement(skip, full, "three"), "number")
    assert rejected(exercises.check_07_agreement(skip, full, ch07.exercise_1(skip, full) + 100), "leading tokens")


def test_tokens_per_pass(runs):
    *_, spec = runs
    assert exercises.check_07_tokens_per_pass(spec, ch07.exercise_2(spec))
    assert rejected(exercises.check_07_tokens_per_pass(spec, ...), "`...`")
    assert rejected(exercises.check_07_tokens_per_pass(spec, spec.n_tokens / spec.verify_passes), "prompt's pass")
    assert rejected(exercises.check_07_tokens_per_pass(runs[1], 1.0), "no verification passes")
