"""Chapter 08's exercise checkers accept the reference solutions (``notebooks/solutions/ch08.py``) on a tiny
model's traces and states, and reject the ``...`` placeholder and the plausible wrong answers they name (the
lens's agreement, section 1's layer; the δ = 5% threshold, the uncertified one)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adainfer_lib import exercises
from adainfer_lib.data import sources
from adainfer_lib.data.task_trace import trace_task
from adainfer_lib.data.tasks import load_task
from adainfer_lib.features.table import feature_table
from adainfer_lib.readers import LogitLensReader, ProbeReader, task_states
from adainfer_lib.rules import ExitPolicy
from conftest import make_tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "notebooks"))

from solutions import ch08  # noqa: E402


@pytest.fixture(scope="module")
def chapter(default_tokenizer):
    """The chapter's objects on a tiny Llama (unembedding scaled up so that decisions change across layers)."""
    model = make_tiny_model("llama", default_tokenizer)
    with torch.no_grad():
        model.unembed.weight.mul_(300.0)
    sources.prepare_sources()
    task = load_task("sentiment", n=16, n_train=30, shots=2, seed=0)
    train = trace_task(model, task, split="train", cache=False, progress=False)
    test = trace_task(model, task, cache=False, progress=False)
    train_states = task_states(model, task, "train", cache=False, progress=False)
    test_states = task_states(model, task, "test", cache=False, progress=False)
    probe = ProbeReader().fit(model, train, train_states)
    lens_read = LogitLensReader().fit(model, train).read(model, test, test_states)
    probe_read = probe.read(model, test, test_states)
    table = feature_table(probe_read)
    rule = ExitPolicy("threshold", features=("label_top_prob",), min_layer=1).fit(table).with_threshold(0.9)
    return dict(train=train, test=test, train_states=train_states, test_states=test_states, lens_read=lens_read,
                probe_read=probe_read, table=table, rule=rule)


def rejected(feedback, *words: str) -> bool:
    return not feedback and str(feedback).startswith("❌") and all(w in feedback.message for w in words)


def test_probe_agreement(chapter):
    c, layer = chapter, 1
    check = lambda answer: exercises.check_08_probe_agreement(c["probe_read"], c["lens_read"], layer, answer)  # noqa: E731
    answer = ch08.exercise_1(c["train"], c["test"], c["train_states"], c["test_states"], layer)
    assert answer == pytest.approx(c["probe_read"].consistency_by_layer()[layer])   # the library's reader agrees
    assert check(answer) and check(np.float64(answer))
    assert rejected(check(...), "`...`")
    assert rejected(check(100 * answer if answer > 0.01 else 50.0), "percentage")
    assert not check(answer + 2 / c["test"].n_examples if answer < 0.5 else answer - 2 / c["test"].n_examples)
    lens = float(c["lens_read"].consistency_by_layer()[layer])
    if abs(lens - answer) > 0.5 / c["test"].n_examples:
        assert rejected(check(lens), "logit lens")
    with pytest.raises(ValueError, match="layer must be in"):
        exercises.check_08_probe_agreement(c["probe_read"], c["lens_read"], c["test"].n_layers, 0.5)


def test_recertified_threshold(chapter):
    c = chapter
    half = np.arange(c["test"].n_examples // 2)
    check = lambda answer, delta=0.10: exercises.check_08_recertified_threshold(  # noqa: E731
        c["rule"], c["table"], half, answer, delta=delta)
    answer = ch08.exercise_2(c["rule"], c["table"], half, delta=0.10)
    assert check(answer)
    assert rejected(check(...), "`...`")
    assert rejected(check("high"), "number")
    wrong = 0.123 if answer != 0.123 else 0.456
    assert not check(wrong)
    assert check(ch08.exercise_2(c["rule"], c["table"], half, delta=0.2), delta=0.2)
    with pytest.raises(ValueError, match="selects no prompt"):
        exercises.check_08_recertified_threshold(c["rule"], c["table"], [9999], 0.5)
