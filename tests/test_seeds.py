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
