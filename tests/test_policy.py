"""ExitPolicy: a real scikit-learn estimator, a stopping rule without off-by-ones, online == offline,
classifiers that use their inputs, and saved policies that refuse the wrong model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import Pipeline

from adainfer_lib.common.replay import first_exit
from adainfer_lib.features.online import ONLINE_FEATURES
from adainfer_lib.model.identity import PolicyModelMismatchError
from adainfer_lib.rules.interface import OnlineState
from adainfer_lib.rules.policy import ExitPolicy
from adainfer_lib.rules.tuning import (
    choose_threshold,
    compare_policies,
    oracle_exit_layers,
    simulate,
    simulate_exits,
    threshold_sweep,
    tune_threshold,
)
from conftest import synthetic_table

CLASSIFIERS = ["svm", "crf", "logistic", "threshold"]
LABEL_FEATURES = ("label_gap", "label_top_prob", "layer_frac")


@pytest.fixture(scope="module")
def train():
    return synthetic_table(80, 10, seed=0)


@pytest.fixture(scope="module")
def test_table():
    return synthetic_table(60, 10, seed=1)


@pytest.fixture(scope="module")
def fitted(train):
    """One fitted policy per classifier (label-word features + depth, label = settled)."""
    return {c: ExitPolicy(c, features=None if c == "threshold" else LABEL_FEATURES, label_scheme="settled").fit(train)
            for c in CLASSIFIERS}


def hand_table(values: np.ndarray) -> pd.DataFrame:
    """A feature table whose label_gap is ``values`` (n, L+1); everything else from a synthetic table."""
    n, layers = values.shape
    table = synthetic_table(n, layers - 1, seed=5)
    table["label_gap"] = values.reshape(-1)
    return table


# ---------------------------------------------------------------------------------------------------
# The stopping rule


def test_stopping_rule_exits_where_the_proba_first_crosses():
    L = 10
    v = np.full((4, L + 1), 0.1)
    v[0, 5:] = 0.8          # first crossing at 5
    v[1, 0] = 0.9           # high at layer 0 only: below min_layer, never used
    v[2, 3] = 0.5           # exactly at the threshold: stops (>=)
    v[2, 7] = 0.9
    # row 3 never crosses → L
    table = hand_table(v)
    policy = ExitPolicy("threshold", threshold=0.5, min_layer=1).fit(table)
    np.testing.assert_array_equal(policy.exit_layers(table), [5, L, 3, L])
    np.testing.assert_array_equal(policy.set_params(min_layer=0).exit_layers(table), [5, 0, 3, L])
    np.testing.assert_array_equal(policy.set_params(min_layer=6).exit_layers(table), [6, L, 7, L])
    np.testing.assert_array_equal(policy.exit_layers(table, threshold=0.85), [L, L, 7, L])
    np.testing.assert_array_equal(first_exit(v, 0.5, 1), [5, L, 3, L])


def test_learned_exit_layers_follow_their_own_probabilities(fitted, test_table):
    for name, policy in fitted.items():
        P = policy.predict_proba(test_table)[:, 1].reshape(-1, 11)
        expected = []
        for row in P:
            hits = [l for l in range(policy.min_layer, 11) if row[l] >= policy.threshold]
            expected.append(hits[0] if hits else 10)
        np.testing.assert_array_equal(policy.exit_layers(test_table), expected, err_msg=name)
        np.testing.assert_array_equal(policy.predict(test_table), (P.reshape(-1) >= policy.threshold).astype(int))


def test_simulate_replays_decisions_at_the_exit_layer():
    table = synthetic_table(30, 8, seed=4)
    n = 30
    at_L = simulate_exits(table, np.full(n, 8))
    assert at_L["layers_saved"] == 0 and at_L["consistency"] == 1 and at_L["accuracy"] == at_L["full_accuracy"]
    oracle = simulate_exits(table, oracle_exit_layers(table))
    assert oracle["consistency"] == 1 and oracle["accuracy_change_pts"] == 0 and oracle["layers_saved"] > 0
    exits = np.random.default_rng(0).integers(0, 9, n)
    sim = simulate_exits(table, exits)
    pred = table["pred"].to_numpy().reshape(n, 9)[np.arange(n), exits]
    gold = table["gold"].to_numpy().reshape(n, 9)[:, 0]
    assert sim["accuracy"] == pytest.approx((pred == gold).mean())
    assert sim["layers_saved"] == pytest.approx(1 - exits.mean() / 8)


def test_threshold_sweep_and_choice_on_train(fitted, train, test_table):
    policy = fitted["logistic"]
    sweep = threshold_sweep(policy, test_table, [0.0, 0.5, 1.01])
    assert sweep["layers_saved"].iloc[-1] == 0 and sweep["consistency"].iloc[-1] == 1
    assert sweep["layers_saved"].is_monotonic_decreasing
    thr, train_sweep = choose_threshold(policy, train, max_loss=0.01)
    chosen = train_sweep[train_sweep.chosen].iloc[0]
    assert chosen["threshold"] == thr
    assert chosen["accuracy"] >= chosen["full_accuracy"] - 0.01
    allowed = train_sweep[train_sweep.accuracy >= train_sweep.full_accuracy - 0.01]
    assert chosen["layers_saved"] == allowed["layers_saved"].max()
    tuned = tune_threshold(policy, train, cv=None)
    assert tuned.threshold == choose_threshold(policy, train, cv=None)[0] and policy.threshold == 0.5
    report = compare_policies({"logistic": policy}, train, test_table, cv=3)
    assert list(report.policy) == ["logistic", "oracle"]
    assert report.set_index("policy").loc["logistic", "threshold"] == choose_threshold(policy, train, cv=3)[0]


# ---------------------------------------------------------------------------------------------------
# Classifiers use their input


@pytest.mark.parametrize("classifier", ["svm", "crf", "logistic"])
def test_classifier_beats_chance_and_depends_on_features(classifier, fitted, test_table):
    policy = fitted[classifier]
    rows = policy.decision_rows(test_table)
    proba = policy.predict_proba(rows)[:, 1]
    auc = roc_auc_score(rows["settled"], proba)
    assert auc > 0.85, f"{classifier}: AUC {auc:.3f} on informative synthetic data"
    shuffled = rows.copy()
    perm = np.random.default_rng(0).permutation(len(rows))
    for f in policy.features_:
        shuffled[f] = rows[f].to_numpy()[perm]
    proba_shuffled = policy.predict_proba(shuffled)[:, 1]
    assert not np.allclose(proba, proba_shuffled)
    assert roc_auc_score(rows["settled"], proba_shuffled) < auc - 0.2


def test_crf_marginals_match_crfsuite_and_use_no_future_layer(fitted, test_table):
    policy = fitted["crf"]
    one = test_table[test_table.example == 3].sort_values("layer")
    proba = policy.stop_proba(one)
    design = policy.scorer_.design(policy._matrix(one[one.layer >= policy.min_layer]))
    names = policy.scorer_.attributes
    seq = [{names[a]: float(v) for a, v in enumerate(row) if v != 0.0} for row in design]
    ref = [policy.crf_.predict_marginals_single(seq[: k + 1])[-1]["1"] for k in range(len(seq))]
    np.testing.assert_allclose(proba[policy.min_layer:], ref, atol=1e-5)
    # changing layers after l never changes P(stop) at l
    changed = one.copy()
    changed.loc[changed.layer > 4, "label_gap"] = 1 - changed.loc[changed.layer > 4, "label_gap"]
    np.testing.assert_allclose(policy.stop_proba(changed)[:5], proba[:5])
    # ... but the sequence matters: earlier layers change it
    earlier = one.copy()
    earlier.loc[earlier.layer < 4, "label_gap"] = 1.0
    assert not np.isclose(policy.stop_proba(earlier)[4], proba[4])


# ---------------------------------------------------------------------------------------------------
# Online == offline


def runner_replay(policy, table, rows_in_batch):
    """Drive ``stop_proba_online`` the way ``early_exit.run_early_exit`` does: from ``min_layer`` on, the
    features of the still-running rows, one OnlineState carried across the layers, stopped rows dropped."""
    L = int(table.attrs["n_layers"])
    by_layer = {l: part.set_index("example").loc[rows_in_batch] for l, part in table.groupby("layer")}
    running = np.arange(len(rows_in_batch))
    state, online = OnlineState(rows=np.asarray(rows_in_batch)), np.full((len(rows_in_batch), L + 1), np.nan)
    for layer in range(policy.min_layer, L + 1):
        part = by_layer[layer].iloc[running]
        feats = {k: part[k].to_numpy() for k in ONLINE_FEATURES}
        feats["layer"] = np.full(len(running), float(layer))
        state.rows = np.asarray(rows_in_batch)[running]
        proba = policy.stop_proba_online(feats, layer, state)
        online[running, layer] = proba
        state.history.append({"layer": layer, "rows": state.rows, **feats})
        running = running[(proba < policy.threshold) & (layer < L)]
        if not len(running):
            break
    return online


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_online_probabilities_equal_predict_proba(classifier, fitted, test_table):
    policy = clone(fitted[classifier]).set_params(threshold=0.6).fit(synthetic_table(80, 10, seed=0))
    rows = [4, 9, 17, 2, 33, 50]
    offline = policy.predict_proba(test_table)[:, 1].reshape(-1, 11)[rows]
    online = runner_replay(policy, test_table, rows)
    seen = np.isfinite(online)
    assert seen[:, policy.min_layer].all() and seen.sum() > len(rows)
    np.testing.assert_allclose(online[seen], offline[seen], rtol=0, atol=1e-12)
    exits = policy.exit_layers(test_table)[rows]
    np.testing.assert_array_equal([np.flatnonzero(s).max() for s in seen], exits)


def test_crf_forward_step_is_scipys_logsumexp_to_rounding(fitted):
    """The forward recursion's logsumexp (numpy's logaddexp.reduce, for speed) equals scipy's to float64 rounding
    (1e-13 relative, 1e-14 absolute), on ties and on any scale of the messages. Bit for bit on some CPUs, not on
    all: numpy's AVX-512 exp / log1p round differently (75 of 10,000 values differed by 1-2e-15 on an AMD EPYC with
    AVX-512)."""
    from scipy.special import logsumexp

    scorer = fitted["crf"].scorer_
    rng = np.random.default_rng(0)
    alpha = rng.standard_normal((5000, 2)) * rng.choice([1e-3, 1.0, 40.0], size=(5000, 1))
    alpha[:50, 1] = alpha[:50, 0]  # ties
    matrix = rng.random((5000, len(scorer.mean)))
    expected = scorer.design(matrix) @ scorer.W + logsumexp(alpha[:, :, None] + scorer.T[None], axis=1)
    np.testing.assert_allclose(scorer.step(alpha, matrix), expected, rtol=1e-13, atol=1e-14)


def test_crf_online_carries_its_forward_state_one_step_per_layer(fitted, test_table, monkeypatch):
    """The CRF's online score steps its forward recursion once per checked layer (linear in depth), with the
    messages carried in the OnlineState, and equals the offline filtering marginals at every layer."""
    policy = fitted["crf"]
    rows = [1, 2, 3]
    part = test_table[test_table.example.isin(rows)]
    offline = policy.predict_proba(part)[:, 1].reshape(3, 11)
    feats = lambda l: {k: part[part.layer == l][k].to_numpy() for k in policy.features_}
    np.testing.assert_allclose(policy.stop_proba_online(feats(1), 1), offline[:, 1], atol=1e-12)
    with pytest.raises(ValueError, match="OnlineState"):
        policy.stop_proba_online(feats(6), 6)
    steps = []
    original = type(policy.scorer_).step
    monkeypatch.setattr(type(policy.scorer_), "step", lambda self, a, m: steps.append(len(m)) or original(self, a, m))
    state = OnlineState(rows=np.array(rows))
    for layer in range(policy.min_layer, 11):
        np.testing.assert_allclose(policy.stop_proba_online(feats(layer), layer, state), offline[:, layer], atol=1e-12)
    assert steps == [3] * (11 - policy.min_layer)  # one step per layer, never a replay of the prefix
    state.rows = np.array([2, 99, 3])
    with pytest.raises(ValueError, match="earlier checks"):
        policy.stop_proba_online(feats(10), 10, state)


# ---------------------------------------------------------------------------------------------------
# scikit-learn compatibility and validation


def test_clone_get_set_params_and_extra_classifier_params(train):
    policy = ExitPolicy("logistic", features=("label_gap",), threshold=0.7, tol=1e-3)
    params = policy.get_params()
    assert params["tol"] == 1e-3 and params["threshold"] == 0.7 and params["classifier"] == "logistic"
    twin = clone(policy)
    assert twin.get_params() == params and not hasattr(twin, "features_")
    twin.set_params(tol=1e-5, C=0.5)
    assert twin.tol == 1e-5 and twin.C == 0.5
    twin.fit(train)
    assert twin.scorer_.estimator[-1].tol == 1e-5 and twin.scorer_.estimator[-1].C == 0.5  # passed through


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_cross_val_score_with_groups_and_pipeline(classifier, train):
    policy = ExitPolicy(classifier, features=None if classifier == "threshold" else LABEL_FEATURES,
                        label_scheme="settled")
    scores = cross_val_score(policy, train, groups=train["example"], cv=GroupKFold(n_splits=3))
    assert scores.shape == (3,) and np.all((scores > 0.5) & (scores <= 1))
    auc = cross_val_score(policy, train, train["settled"], groups=train["example"], cv=GroupKFold(3), scoring="roc_auc")
    assert auc.mean() > 0.8
    pipe = Pipeline([("policy", clone(policy))]).fit(train)
    np.testing.assert_allclose(pipe.predict_proba(train), clone(policy).fit(train).predict_proba(train))


def test_features_are_validated():
    with pytest.raises(ValueError, match="kl_to_final"):
        ExitPolicy("svm", features=("gap", "kl_to_final"))
    with pytest.raises(ValueError, match="not features"):
        ExitPolicy("logistic", features=("gold",))
    with pytest.raises(ValueError, match="classifier"):
        ExitPolicy("forest")
    with pytest.raises(ValueError, match="label_scheme"):
        ExitPolicy(label_scheme="lucky")
    with pytest.raises(ValueError, match="exactly one"):
        ExitPolicy("threshold", features=("gap", "top_prob"))


def test_needs_full_vocab_and_defaults():
    assert ExitPolicy().resolved_features == ("gap", "top_prob") and ExitPolicy().needs_full_vocab
    assert ExitPolicy("threshold").resolved_features == ("label_gap",)
    assert not ExitPolicy("threshold").needs_full_vocab
    assert not ExitPolicy("crf", features=("label_gap", "cos_prev", "layer")).needs_full_vocab
    assert ExitPolicy("logistic", features=("label_gap", "entropy")).needs_full_vocab


def test_nan_full_vocab_features_give_a_clear_error(train):
    table = train.copy()
    table["gap"] = np.nan
    with pytest.raises(ValueError, match="full_vocab=False"):
        ExitPolicy("svm").fit(table)


def test_cos_prev_nan_at_layer_zero_is_filled_with_zero(train):
    policy = ExitPolicy("logistic", features=("cos_prev", "label_gap"), min_layer=0).fit(train)
    assert np.isfinite(policy.predict_proba(train)).all()
    row0 = train[(train.layer == 0)].head(3)
    filled = row0.assign(cos_prev=0.0)
    np.testing.assert_allclose(policy.predict_proba(row0), policy.predict_proba(filled))


def test_single_class_training_labels_are_refused(train):
    table = train.assign(consistent=True)
    with pytest.raises(ValueError, match="both classes"):
        ExitPolicy("logistic", features=("label_gap",)).fit(table)


# ---------------------------------------------------------------------------------------------------
# Metadata and persistence


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_every_classifier_round_trips_without_pickle(classifier, fitted, test_table, tmp_path):
    """A saved policy is a zip of JSON, arrays and a skops pipeline: loaded, it scores, exits and carries its
    calibration exactly as before; nothing in the file is a pickle."""
    import zipfile

    policy = clone(fitted[classifier]).set_params(class_weight={0: 1.0, 1: 2.0} if classifier == "logistic" else None)
    policy = policy.fit(synthetic_table(80, 10, seed=0))
    path = policy.save(tmp_path / f"{classifier}.policy")
    with zipfile.ZipFile(path) as archive:
        assert set(archive.namelist()) <= {"config.json", "arrays.npz", "estimator.skops"}
        assert not any(archive.read(n).startswith(b"\x80") for n in archive.namelist())  # no pickle stream
    loaded = ExitPolicy.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(test_table), policy.predict_proba(test_table))
    np.testing.assert_array_equal(loaded.exit_layers(test_table), policy.exit_layers(test_table))
    np.testing.assert_array_equal(loaded.calibration.offsets, policy.calibration.offsets)
    assert loaded.get_params() == policy.get_params() and loaded.metadata == policy.metadata
    rebuilt = ExitPolicy.from_state(policy.state())  # the plain state persistence writes, without a file
    np.testing.assert_array_equal(rebuilt.predict_proba(test_table), policy.predict_proba(test_table))
    with pytest.raises(NotFittedError):
        ExitPolicy(classifier).state()


def test_a_foreign_or_tampered_file_is_refused(fitted, tmp_path):
    import functools
    import operator
    import pickle
    import zipfile

    import skops.io as sio

    path = fitted["svm"].save(tmp_path / "svm.policy")
    members = {n: zipfile.ZipFile(path).read(n) for n in zipfile.ZipFile(path).namelist()}

    def rewrite(name: str, **changes) -> Path:
        out = tmp_path / name
        with zipfile.ZipFile(out, "w") as archive:
            for member, data in {**members, **changes}.items():
                archive.writestr(member, data)
        return out

    (tmp_path / "old.policy").write_bytes(pickle.dumps({"policy": "anything"}))
    with pytest.raises(ValueError, match="not a saved ExitPolicy.*pickle files are not read"):
        ExitPolicy.load(tmp_path / "old.policy")
    foreign = sio.dumps(functools.partial(operator.add, 1))  # callables outside scikit-learn
    with pytest.raises(ValueError, match="refusing to load it"):
        ExitPolicy.load(rewrite("foreign.policy", **{"estimator.skops": foreign}))
    config = json.loads(members["config.json"])
    with pytest.raises(ValueError, match="is not an ExitPolicy file of format"):
        ExitPolicy.load(rewrite("version.policy", **{"config.json": json.dumps({**config, "format_version": 99})}))
    with pytest.raises(ValueError, match="not valid JSON"):
        ExitPolicy.load(rewrite("json.policy", **{"config.json": b"{not json"}))
    with pytest.raises(ValueError, match="incomplete or damaged"):
        ExitPolicy.load(rewrite("damaged.policy", **{"config.json": json.dumps({k: v for k, v in config.items()
                                                                                    if k != "params"})}))
    with pytest.raises(ValueError, match="not a saved ExitPolicy"):
        ExitPolicy.load(rewrite("extra.policy", **{"payload.pkl": b"x"}))


def _nan(value):
    return np.full_like(np.asarray(value, dtype=float), np.nan)


def _set(config: dict, dotted: str, value) -> dict:
    """A copy of ``config`` with the field ``dotted`` ("params.min_layer") set to ``value`` (a function of the
    old value when callable); several comma-separated fields take a tuple of values."""
    config = json.loads(json.dumps(config))
    for field, new in zip(dotted.split(","), value if "," in dotted else [value]):
        *parents, key = field.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[key] = new(node[key]) if callable(new) else new
    return config


# (classifier, member, field, new value or function of the old one, what the error says): one per field.
TAMPERED = [
    ("crf", "arrays.npz", "crf_W", _nan, r"arrays.npz crf_W has 56 NaN or infinite value\(s\) of 56"),
    ("crf", "arrays.npz", "crf_T", lambda T: T[:1], r"arrays.npz crf_T has shape \(1, 2\), expected \(2, 2\)"),
    ("crf", "arrays.npz", "crf_mean", _nan, "arrays.npz crf_mean has 3 NaN"),
    ("crf", "arrays.npz", "crf_scale", lambda a: a * 0, r"arrays.npz crf_scale has values <= 0"),
    ("crf", "arrays.npz", "crf_edges_1", lambda e: e[::-1], "arrays.npz crf_edges_1 is not sorted"),
    ("crf", "arrays.npz", "crf_edges_0", lambda e: e + np.inf, "arrays.npz crf_edges_0 has .* NaN or infinite"),
    ("crf", "config.json", "scorer.attributes", lambda a: a[::-1], "config.json scorer.attributes"),
    ("crf", "config.json", "scorer.n_edges", 1, "config.json scorer.n_edges is 1: 0 or one per feature"),
    ("crf", "config.json", "params.classifier", "logistic", "metadata.classifier 'crf' differs"),
    ("crf", "config.json", "params.classifier,metadata.classifier", ("logistic", "logistic"),
     "scorer.kind 'crf' does not fit classifier 'logistic'"),
    ("crf", "config.json", "features_", ["label_gap", "nope", "layer_frac"], r"features_ .*unknown \['nope'\]"),
    ("crf", "config.json", "features_", [], "features_ \\[\\]: none"),
    ("crf", "config.json", "params.features", {"__tuple__": ["gap", "top_prob", "layer"]},
     "params.features .* differ from the fitted features_"),
    ("crf", "config.json", "metadata.features", ["gap"], "metadata.features .* differs"),
    ("crf", "config.json", "n_layers_", 0, "n_layers_ 0 is not a layer count"),
    ("crf", "config.json", "n_layers_", 12, "n_layers_ 12 .* matching metadata.n_layers 10"),
    ("crf", "config.json", "params.min_layer", 11, r"params.min_layer 11 is outside 0..10"),
    ("crf", "config.json", "params.threshold", float("nan"), "config.json params: threshold must be"),
    ("crf", "config.json", "params.label_scheme", "best", "config.json params: label_scheme must be one of"),
    ("crf", "config.json", "metadata.label_words", [" l0"], "metadata.label_words \\[' l0'\\]: .* 2 or more"),
    ("crf", "config.json", "metadata.model_cache_id", 7, "metadata.model_cache_id 7 is not a cache id"),
    ("crf", "config.json", "calibration.method", "magic", "calibration.method 'magic' is not one of"),
    ("crf", "config.json", "calibration.offsets", lambda o: [[float("nan")] * 2] * len(o),
     "calibration.offsets has 22 NaN or infinite"),
    ("crf", "config.json", "calibration.offsets", lambda o: o[:-1],
     r"calibration.offsets has shape \(10, 2\), expected \(11, 2\)"),
    ("threshold", "config.json", "features_,metadata.features", (["label_gap", "layer"],) * 2,
     "the threshold classifier uses one"),
    ("svm", "config.json", "features_,metadata.features,params.features", (["label_gap", "label_top_prob"],) * 3,
     "estimator.skops takes 3 features"),
]


@pytest.mark.parametrize("classifier, member, field, value, message", TAMPERED,
                         ids=[f"{c}-{f}-{i}" for i, (c, _, f, _, _) in enumerate(TAMPERED)])
def test_every_field_of_a_saved_policy_is_checked_at_load(fitted, tmp_path, classifier, member, field, value, message):
    """Issue 22: a saved CRF whose arrays are all NaN loaded and silently never exited; unknown feature names and
    NaN or wrong-shape calibration offsets loaded and failed later. Each field is checked at load, the error
    naming the file and the field."""
    import io
    import re
    import zipfile

    path = fitted[classifier].save(tmp_path / f"{classifier}.policy")
    ExitPolicy.load(path)  # the file as saved loads
    members = {n: zipfile.ZipFile(path).read(n) for n in zipfile.ZipFile(path).namelist()}
    if member == "config.json":
        members[member] = json.dumps(_set(json.loads(members[member]), field, value)).encode()
    else:
        with np.load(io.BytesIO(members[member])) as archive:
            arrays = {k: archive[k] for k in archive.files}
        arrays[field] = value(arrays[field])
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        members[member] = buffer.getvalue()
    tampered = tmp_path / "tampered.policy"
    with zipfile.ZipFile(tampered, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tampered))}: .*{message}"):
        ExitPolicy.load(tampered)


def test_save_load_roundtrip_and_wrong_model_is_refused(fitted, train, test_table, tmp_path):
    policy = fitted["crf"]
    meta = policy.metadata
    assert meta["model_cache_id"] == "synthetic-0" and meta["task"] == "synthetic"
    assert meta["features"] == list(LABEL_FEATURES) and meta["label_scheme"] == "settled"
    assert meta["calibration_method"] == "raw" and "calibration_offsets" not in meta  # offsets: policy.calibration
    assert meta["adainfer_version"] and meta["n_train_examples"] == 80
    assert policy.calibration.offsets.shape == (11, 2) and policy.label_words == [" l0", " l1"]
    path = policy.save(tmp_path / "crf.policy")
    sidecar = json.loads((tmp_path / "crf.policy.json").read_text())
    assert sidecar["classifier"] == "crf" and sidecar["model_cache_id"] == "synthetic-0"
    assert sorted(os.listdir(tmp_path)) == ["crf.policy", "crf.policy.json"]  # no temporary files left
    loaded = ExitPolicy.load(path, model=SimpleNamespace(cache_id="synthetic-0", name="synthetic"))
    np.testing.assert_array_equal(loaded.predict_proba(test_table), policy.predict_proba(test_table))
    with pytest.raises(PolicyModelMismatchError, match="refit"):
        ExitPolicy.load(path, model=SimpleNamespace(cache_id="smollm2-135m-other", name="smollm2-135m"))
    assert ExitPolicy.load(path).metadata == meta


def test_for_task_swaps_calibration_but_keeps_the_classifier(fitted, test_table):
    other = synthetic_table(20, 10, n_labels=3, seed=9)
    other.attrs["task"] = "other"
    moved = fitted["svm"].for_task(other)
    assert moved.metadata["task"] == "other" and moved.metadata["fitted_task"] == "synthetic"
    assert moved.calibration.offsets.shape == (11, 3)
    np.testing.assert_array_equal(moved.predict_proba(other), fitted["svm"].predict_proba(other))
    assert fitted["svm"].metadata["task"] == "synthetic"


# ---------------------------------------------------------------------------------------------------
# The real runner (early_exit.run_early_exit) on a tiny random model


def _tiny_tables(model, prompts, words, seed=0):
    from adainfer_lib.data.calibration import fit_calibration
    from adainfer_lib.data.task_trace import TaskTrace
    from adainfer_lib.features.table import feature_table
    from adainfer_lib.model.lens import trace

    tr = trace(model, prompts, label_words=words, full_vocab=True, progress=False)
    cal = fit_calibration("batch", unlabelled=tr.label_logits)
    gold = np.random.default_rng(seed).integers(0, len(words), len(prompts))
    return feature_table(TaskTrace(trace=tr, gold=gold, calibrations={"batch": cal}, task_name="tiny",
                                   label_names=[w.strip() for w in words]))


@pytest.mark.parametrize("classifier", ["crf", "logistic"])
def test_runner_stop_probabilities_equal_the_replay_on_a_tiny_model(classifier, default_tokenizer):
    from adainfer_lib.runner.early_exit import run_early_exit
    from conftest import make_tiny_model

    model = make_tiny_model("llama", default_tokenizer)
    words = [" positive", " negative", " neutral"]
    prompts = [f"Example {i}: " + "word " * (i % 7) + "end" for i in range(24)]
    table = _tiny_tables(model, prompts, words)
    table["consistent"] = table["label_gap"] > table["label_gap"].median()  # any learnable target will do
    policy = ExitPolicy(classifier, features=("label_gap", "gap", "cos_prev", "layer_frac"), min_layer=1).fit(table)
    P = policy.stop_matrix(table)
    policy.set_params(threshold=float(np.nanmedian(P[:, 1:])))  # some rows stop early, some run on
    result = run_early_exit(model, prompts, policy, batch_size=5)
    seen = np.isfinite(result.stop_proba)
    assert seen[:, 2:].any() and (result.exit_layers < model.n_layers).any()
    np.testing.assert_allclose(result.stop_proba[seen], P[seen], atol=1e-5)
    np.testing.assert_array_equal(result.exit_layers, policy.exit_layers(table))


# ---------------------------------------------------------------------------------------------------
# The real default model (slow)


@pytest.mark.slow
def test_real_model_policy_matches_the_early_exit_runner(default_model, tmp_path):
    """Fit on a tiny real sentiment trace; the real runner's stop probabilities equal the trace's."""
    from adainfer_lib.data.task_trace import trace_task
    from adainfer_lib.data.tasks import load_task
    from adainfer_lib.features.table import feature_table
    from adainfer_lib.runner.early_exit import run_early_exit

    task = load_task("sentiment", n=16, n_train=16, shots=2, seed=0)
    train = feature_table(trace_task(default_model, task, split="train", progress=False))
    test = feature_table(trace_task(default_model, task, split="test", progress=False))
    assert train.attrs["model_cache_id"] == default_model.cache_id
    for classifier in ("logistic", "crf"):
        policy = ExitPolicy(classifier, features=("label_gap", "layer_frac"), threshold=0.8, min_layer=10).fit(train)
        assert not policy.needs_full_vocab
        result = run_early_exit(default_model, task.prompts("test"), policy, batch_size=4)
        P = policy.stop_matrix(test)
        seen = np.isfinite(result.stop_proba)
        np.testing.assert_allclose(result.stop_proba[seen], P[seen], atol=2e-3)
        exits = policy.exit_layers(test)
        near = (np.abs(P - policy.threshold) < 5e-3).any(1)
        np.testing.assert_array_equal(result.exit_layers[~near], exits[~near])
    path = policy.save(tmp_path / "p.policy")
    assert ExitPolicy.load(path, model=default_model).metadata["model_cache_id"] == default_model.cache_id
    stats = simulate(policy, test)
    assert 0 <= stats["layers_saved"] <= 1 and stats["n"] == 16
