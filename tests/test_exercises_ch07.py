"""Chapter 07's exercise checkers accept the answer counted by hand on token sequences written out here, and the
reference solutions (``notebooks/solutions/ch07.py``) on a tiny model's generations, and reject the ``...``
placeholder and the plausible wrong answers they name (matches counted past the first divergence, the prompt's
own token counted as verified, the acceptance rate)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
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


def generated(tokens, **counts):
    """What the checkers read of a ``GenerationResult``: its tokens, and the speculative counts."""
    return SimpleNamespace(tokens=np.array(tokens), n_tokens=len(tokens), **counts)


def test_agreement_counted_by_hand():
    full = generated([5, 8, 2, 9, 4, 7])
    mine = generated([5, 8, 2, 1, 4, 7])  # diverges at the 4th token, agrees again afterwards
    check = exercises.check_07_agreement
    assert check(mine, full, 3) and ch07.exercise_1(mine, full) == 3
    assert rejected(check(mine, full, 5), "counts equal tokens at every position")  # 5 positions match in all
    assert rejected(check(mine, full, 4), "leading tokens")  # one too many
    assert check(full, full, 6) and "the whole sequence" in str(check(full, full, 6))
    assert check(generated([1, 8, 2]), full, 0)  # the first token already differs
    assert check(generated([5, 8]), full, 2)  # a shorter output that agrees throughout


def test_tokens_per_pass_counted_by_hand():
    spec = generated(list(range(10)), verify_passes=3, accepted=6, drafted=9, acceptance_rate=6 / 9)
    check = exercises.check_07_tokens_per_pass
    assert check(spec, 3.0) and ch07.exercise_2(spec) == 3.0  # (10 − 1) / 3: the first token is the prompt's
    assert rejected(check(spec, 10 / 3), "prompt's pass")
    assert rejected(check(spec, 6 / 9), "acceptance rate")
    assert rejected(check(spec, 2.0), "not it")  # accepted drafts / passes, without the full model's own tokens
    assert rejected(check(generated([1, 2], verify_passes=0), 1.0), "no verification passes")
