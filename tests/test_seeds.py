"""Results over demonstration seeds: the per-trace statistics and the mean ± sd summary."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from adainfer_lib.evaluation.seeds import layer_statistics, mean_sd
from conftest import task_trace_from_predictions


def test_layer_statistics_of_a_known_trace():
    # 4 examples, layers 0..3; gold = [1, 1, 0, 0]
    preds = [[0, 1, 1, 1],   # settles at 1
             [1, 0, 1, 1],   # flips back: settles at 2
             [0, 0, 0, 1],   # settles at 3 (the last layer)
             [1, 0, 0, 0]]   # settles at 1
    stats = layer_statistics(task_trace_from_predictions(preds, gold=[1, 1, 0, 0]))
    assert stats["n"] == 4 and stats["chance"] == 0.5
    # accuracy by layer: [0.5, 0.75, 1.0, 0.75]
    assert stats["accuracy_full"] == pytest.approx(0.75)
    assert stats["best_layer"] == 2 and stats["best_layer_accuracy"] == pytest.approx(1.0)
    assert stats["oracle_layers_saved"] == pytest.approx(1 - np.mean([1, 2, 3, 1]) / 3)


def test_mean_sd_formats_each_group():
    frame = pd.DataFrame({"task": ["a", "a", "a", "b"], "x": [0.1, 0.2, 0.3, 0.5]})
    out = mean_sd(frame, ["task"], ["x"])
    assert out.to_dict("records") == [{"task": "a", "seeds": 3, "x": "0.200 ± 0.100"},
                                      {"task": "b", "seeds": 1, "x": "0.500"}]
    with pytest.raises(KeyError, match=r"\['y'\] are not in the frame"):
        mean_sd(frame, ["task"], ["y"])


def test_best_layer_is_the_last_of_tied_layers():
    stats = layer_statistics(task_trace_from_predictions([[1, 1, 1], [0, 0, 0]], gold=[1, 0]))
    assert stats["best_layer"] == 2 and stats["best_layer_accuracy"] == 1.0


def test_seeds_traced_with_the_full_vocabulary_are_read_back_by_a_later_chapter(default_tokenizer, monkeypatch,
                                                                               tmp_path):
    """Chapter 01 traces the sentiment seeds with the full vocabulary (``full_vocab_seeds``) so that chapter 03's
    full-vocabulary policies over the same seeds read them from the cache: no forward pass for those; a seed traced
    with label rows only is traced again when the full vocabulary is asked for."""
    from adainfer_lib.data import sources
    from adainfer_lib.data.task_trace import trace_task
    from adainfer_lib.data.tasks import load_task
    from adainfer_lib.evaluation.seeds import layer_statistics_over_seeds
    from adainfer_lib.model import lens
    from conftest import make_tiny_model

    model = make_tiny_model("llama", default_tokenizer)
    monkeypatch.setenv("ADAINFER_DATA", str(tmp_path))   # a trace cache of this test's own
    sources.prepare_sources(["sentiment"])
    make = lambda **kw: load_task("sentiment", n=8, n_train=12, shots=2, **kw)  # noqa: E731
    forwards = []
    batch_states = lens.batch_states
    monkeypatch.setattr(lens, "batch_states", lambda m, b: forwards.append(len(b.last)) or batch_states(m, b))
    stats = layer_statistics_over_seeds(model, make, [0, 1], full_vocab_seeds=[1])
    assert list(stats.seed) == [0, 1] and forwards
    traced = len(forwards)
    full = trace_task(model, make(seed=1), full_vocab=True, progress=False)    # chapter 03's request, seed 1
    assert len(forwards) == traced and np.isfinite(full.trace.top_prob).all()
    trace_task(model, make(seed=0), full_vocab=True, progress=False)           # seed 0 had label rows only
    assert len(forwards) > traced
