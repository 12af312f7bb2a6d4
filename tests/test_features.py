"""Feature table: columns and labels agree with the TaskTrace; helpers never split an example across sides."""

from __future__ import annotations

import numpy as np
import pandas as pd

from adainfer_lib.data.calibration import Calibration
from adainfer_lib.data.task_trace import TaskTrace
from adainfer_lib.features.online import FEATURE_COLUMNS, ONLINE_FEATURES, label_features
from adainfer_lib.features.study import (
    feature_correlations,
    per_layer_auc,
    permutation_importance_table,
    split_by_example,
)
from adainfer_lib.features.table import feature_table
from adainfer_lib.model.layer_trace import LayerTrace
from conftest import synthetic_table

COLUMNS = ["example", "layer", "layer_frac", "top_prob", "gap", "entropy", "kl_to_final", "cos_prev",
           "label_top_prob", "label_gap", "pred", "final_pred", "gold", "consistent", "correct"]


def fake_task_trace(n=7, L=5, C=3, seed=0, full_vocab=True) -> TaskTrace:
    """A TaskTrace of random numbers (no model): enough to test the table's bookkeeping."""
    rng = np.random.default_rng(seed)
    shape = (n, L + 1)
    full = (lambda: rng.random(shape).astype(np.float32)) if full_vocab else (lambda: np.full(shape, np.nan,
                                                                                              np.float32))
    cos = rng.random(shape).astype(np.float32)
    cos[:, 0] = np.nan
    tr = LayerTrace(model_name="fake", n_layers=L, top_ids=np.zeros((n, L + 1, 0), np.int32),
                    top_probs=np.zeros((n, L + 1, 0), np.float32), top_prob=full(), gap=full(), entropy=full(),
                    kl_to_final=full(), cos_prev=cos, label_logits=rng.normal(size=(n, L + 1, C)).astype(np.float32),
                    n_tokens=np.full(n, 10, np.int32), label_words=[f" w{c}" for c in range(C)],
                    label_ids=list(range(C)), meta={"model_cache_id": "fake-123", "full_vocab": full_vocab})
    cal = Calibration("batch", rng.normal(size=(L + 1, C)))
    return TaskTrace(trace=tr, gold=rng.integers(0, C, n), calibrations={"batch": cal},
                     task_name="fake", label_names=[f"w{c}" for c in range(C)])


def test_label_features_values_and_shapes():
    scores = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))
    f = label_features(scores)
    np.testing.assert_allclose(f["label_top_prob"], [0.7, 0.6])
    np.testing.assert_allclose(f["label_gap"], [0.5, 0.3])
    np.testing.assert_array_equal(f["pred"], [0, 2])
    # any leading shape; a single label has no runner-up (top-2 = 0)
    assert label_features(np.zeros((4, 6, 2)))["label_gap"].shape == (4, 6)
    np.testing.assert_array_equal(label_features(np.zeros((3, 1)))["label_gap"], 1.0)


def test_feature_table_matches_task_trace():
    tt = fake_task_trace()
    table = feature_table(tt)
    n, L = tt.n_examples, tt.n_layers
    assert list(table.columns[: len(COLUMNS)]) == COLUMNS
    assert len(table) == n * (L + 1)
    assert (table.groupby("example")["layer"].apply(list) == pd.Series([list(range(L + 1))] * n)).all()
    preds = table["pred"].to_numpy().reshape(n, L + 1)
    np.testing.assert_array_equal(preds, tt.predictions())
    np.testing.assert_array_equal(table["consistent"].to_numpy().reshape(n, L + 1),
                                  tt.predictions() == tt.final_predictions()[:, None])
    np.testing.assert_array_equal(table["correct"].to_numpy().reshape(n, L + 1), tt.predictions() == tt.gold[:, None])
    oracle = table.drop_duplicates("example")["oracle_exit"].to_numpy()
    np.testing.assert_array_equal(oracle, tt.earliest_consistent_layer())
    settled = table["settled"].to_numpy().reshape(n, L + 1)
    assert (settled == (np.arange(L + 1)[None] >= oracle[:, None])).all()
    lf = label_features(tt.scores())
    np.testing.assert_allclose(table["label_gap"].to_numpy().reshape(n, L + 1), lf["label_gap"])
    np.testing.assert_allclose(table["layer_frac"].to_numpy().reshape(n, L + 1)[0], np.arange(L + 1) / L)
    assert table["cos_prev"][table["layer"] == 0].isna().all()  # left NaN here; policies fill it with 0
    assert table.attrs["model_cache_id"] == "fake-123" and table.attrs["n_layers"] == L
    np.testing.assert_allclose(table.attrs["calibration"]["offsets"], tt.calibration.offsets)
    assert table.attrs["calibration"]["method"] == "batch"


def test_feature_table_without_full_vocab_has_nan_full_vocab_features():
    table = feature_table(fake_task_trace(full_vocab=False))
    assert table[["top_prob", "gap", "entropy"]].isna().all().all()
    assert table["label_gap"].notna().all()
    assert table.attrs["full_vocab"] is False


def test_online_features_exclude_final_layer_and_labels():
    assert "kl_to_final" not in ONLINE_FEATURES and "kl_to_final" in FEATURE_COLUMNS
    assert not {"gold", "correct", "consistent", "settled", "pred", "final_pred"} & set(ONLINE_FEATURES)


def test_per_layer_auc_perfect_feature_and_single_class_layer():
    table = synthetic_table(40, 6, seed=0)
    table["perfect"] = table["consistent"].astype(float)
    auc = per_layer_auc(table, ["perfect", "label_gap"], label="consistent")
    assert set(auc.columns) >= {"feature", "layer", "auc", "n", "positive_rate"}
    perfect = auc[auc.feature == "perfect"].set_index("layer")["auc"]
    assert np.isnan(perfect[6])  # at layer L every example is consistent: one class → NaN, not a number
    assert (perfect.drop(6).dropna() == 1.0).all()


def test_split_by_example_never_splits_an_example():
    table = synthetic_table(50, 8, seed=1)
    train, test = split_by_example(table, test_size=0.3, seed=0)
    assert not set(train.example) & set(test.example)
    assert len(train) + len(test) == len(table)
    assert (train.groupby("example").size() == 9).all() and (test.groupby("example").size() == 9).all()
    assert 0.2 < test.example.nunique() / 50 < 0.4


def test_feature_correlations_drop_all_nan_features():
    table = synthetic_table(30, 6, seed=2)
    table["entropy"] = np.nan
    corr = feature_correlations(table, ["label_gap", "gap", "entropy"])
    assert list(corr.columns) == ["label_gap", "gap"]
    assert corr.loc["label_gap", "gap"] > 0.3


def test_permutation_importance_ranks_an_informative_feature_above_noise():
    from adainfer_lib.rules.policy import ExitPolicy

    table = synthetic_table(80, 10, seed=3)
    table["entropy"] = np.random.default_rng(0).random(len(table))  # pure noise
    policy = ExitPolicy("logistic", features=("label_gap", "entropy"), label_scheme="settled").fit(table)
    imp = permutation_importance_table(policy, table, n_repeats=3).set_index("feature")
    assert imp.loc["label_gap", "importance_mean"] > 0.1
    assert abs(imp.loc["entropy", "importance_mean"]) < 0.03
    assert imp.loc["label_gap", "baseline"] > 0.8
