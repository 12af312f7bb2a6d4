"""Learned readers: the logit-lens reader reproduces today's scores; probe and tuned lens train deterministically
under a seed; saved readers round-trip and are refused on another model or with a bad field; a real run with a
reader exits where its replay says; the residual-states cache is keyed and rebuilt when stale.

Tiny random models (fast) for the mechanics; the real default model (slow) for real exits on a few prompts."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from io import BytesIO

import numpy as np
import pytest
import torch

from adainfer_lib.certification import certify_threshold
from adainfer_lib.common.numerics import log_softmax, softmax
from adainfer_lib.common.replay import first_exit
from adainfer_lib.data import sources
from adainfer_lib.data.task_trace import trace_task
from adainfer_lib.data.tasks import load_task
from adainfer_lib.features.online import label_features
from adainfer_lib.features.table import feature_table
from adainfer_lib.model.identity import PolicyModelMismatchError
from adainfer_lib.model.lens import last_states
from adainfer_lib.readers import (
    LogitLensReader,
    ProbeReader,
    Reader,
    ReaderModelMismatchError,
    ReaderTrace,
    TunedLensReader,
    choose_translator,
    out_of_fold_trace,
    residual_states,
    task_states,
)
from adainfer_lib.readers import states as states_module
from adainfer_lib.rules import ExitPolicy, FeatureThresholdRule, PatienceRule
from adainfer_lib.rules.plain import decision_runs
from adainfer_lib.rules.tuning import choose_threshold
from adainfer_lib.runner.early_exit import run_early_exit
from conftest import make_tiny_model


@pytest.fixture(scope="module")
def tiny(default_tokenizer):
    """A tiny random Llama whose unembedding is scaled up: a random model's label logits are all but equal (KL
    between layers ~1e-6), scaled they differ, so decisions change across layers and training has a signal."""
    model = make_tiny_model("llama", default_tokenizer)
    with torch.no_grad():
        model.unembed.weight.mul_(300.0)
    return model


@pytest.fixture(scope="module")
def task():
    sources.prepare_sources()
    return load_task("sentiment", n=12, n_train=30, shots=2, seed=0)


@pytest.fixture(scope="module")
def traced(tiny, task):
    """(train trace, test trace, train states, test states) of the tiny model."""
    train = trace_task(tiny, task, split="train", cache=False, progress=False)
    test = trace_task(tiny, task, cache=False, progress=False)
    return (train, test, task_states(tiny, task, "train", cache=False, progress=False),
            task_states(tiny, task, "test", cache=False, progress=False))


@pytest.fixture(scope="module")
def readers(tiny, traced):
    train, _, st_train, _ = traced
    return {"lens": LogitLensReader().fit(tiny, train),
            "probe": ProbeReader().fit(tiny, train, st_train),
            "tuned_bias": TunedLensReader(translator="bias", steps=40).fit(tiny, train, st_train),
            "tuned_low_rank": TunedLensReader(translator="low_rank", rank=4, steps=40).fit(tiny, train, st_train)}


def _read(reader, model, traced, split="test"):
    train, test, st_train, st_test = traced
    return reader.read(model, test if split == "test" else train, st_test if split == "test" else st_train)


# ---- the logit lens as a reader ----------------------------------------------------------------------


def test_logit_lens_reader_reproduces_todays_scores(tiny, traced, readers):
    _, test, _, st_test = traced
    lens = readers["lens"]
    read = lens.read(tiny, test)
    assert isinstance(read, ReaderTrace) and lens.reader_id == "logit_lens" == read.reader
    np.testing.assert_array_equal(read.scores(), test.scores())
    np.testing.assert_array_equal(read.consistency_by_layer(), test.consistency_by_layer())
    a, b = feature_table(read), feature_table(test)
    assert a.equals(b) and a.attrs == b.attrs  # the lens table records reader 'logit_lens' too
    np.testing.assert_allclose(lens.layer_scores(tiny, st_test.states), test.scores()[:, :-1], atol=1e-4)
    head = tiny.label_head(torch.tensor(lens.label_ids_))
    online = lens.bind(tiny, head)
    for layer in range(tiny.n_layers + 1):
        _, scores = online(torch.from_numpy(st_test.states[:, layer]), layer)
        np.testing.assert_allclose(scores, test.scores()[:, layer], atol=1e-4)


def test_a_reader_trace_is_read_as_the_lens_is(tiny, traced, readers):
    _, test, _, _ = traced
    read = _read(readers["probe"], tiny, traced)
    table = feature_table(read)
    L = tiny.n_layers
    assert table.attrs["reader"] == readers["probe"].reader_id
    np.testing.assert_allclose(table["label_top_prob"].to_numpy(),
                               label_features(read.scores())["label_top_prob"].reshape(-1))
    np.testing.assert_array_equal(read.final_predictions(), test.final_predictions())  # layer L: the model's
    np.testing.assert_array_equal(read.scores()[:, L], test.scores()[:, L])
    for column in ("top_prob", "gap", "cos_prev"):  # the lens's full-vocabulary statistics stay
        np.testing.assert_array_equal(table[column].to_numpy(), feature_table(test)[column].to_numpy())
    with pytest.raises(ValueError, match="calibration"):
        read.with_calibration("raw")


# ---- fitting -----------------------------------------------------------------------------------------


def test_probe_is_deterministic_predicts_the_full_model_and_is_sklearns(tiny, traced, readers):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test, st_train, st_test = traced
    probe = readers["probe"]
    again = ProbeReader().fit(tiny, train, st_train)
    assert again.reader_id == probe.reader_id
    np.testing.assert_array_equal(again.arrays_["weight"], probe.arrays_["weight"])
    other_gold = replace(train, gold=(train.gold + 1) % 2)  # labels are not used: the full model's decision is
    assert ProbeReader().fit(tiny, other_gold, st_train).reader_id == probe.reader_id
    layer = 2
    y = train.final_predictions()
    assert len(np.unique(y)) == 2, "the test needs both decisions among the train prompts"
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=probe.C, max_iter=probe.max_iter, tol=probe.tol))
    pipe.fit(st_train.at(layer).astype(np.float64), y)
    ours = np.exp(probe.layer_scores(tiny, st_test.states)[:, layer])
    np.testing.assert_allclose(ours[:, pipe.classes_], pipe.predict_proba(st_test.at(layer).astype(np.float64)),
                               atol=1e-8)
    with pytest.raises(ValueError, match="C"):
        ProbeReader(C=0)


def test_tuned_lens_starts_at_the_lens_learns_and_is_deterministic(tiny, traced, readers):
    train, test, st_train, st_test = traced
    lens_scores = test.scores()[:, :-1]
    for translator in ("bias", "low_rank", "affine"):
        untrained = TunedLensReader(translator=translator, steps=0).fit(tiny, train, st_train)
        np.testing.assert_allclose(untrained.layer_scores(tiny, st_test.states), lens_scores, atol=1e-4)
    tuned = readers["tuned_low_rank"]
    again = TunedLensReader(translator="low_rank", rank=4, steps=40).fit(tiny, train, st_train)
    assert again.reader_id == tuned.reader_id
    for name, value in tuned.arrays_.items():
        np.testing.assert_array_equal(again.arrays_[name], value)
    other = TunedLensReader(translator="low_rank", rank=4, steps=40, seed=1).fit(tiny, train, st_train)
    assert other.reader_id != tuned.reader_id

    final = softmax(train.scores()[:, -1])[:, None]  # the full model's calibrated label distribution

    def kl(reader):  # mean KL(final || layer) over train prompts and layers 0..L-1
        return float((final * (np.log(final) - log_softmax(reader.layer_scores(tiny, st_train.states)))).sum(-1).mean())

    longer = TunedLensReader(translator="low_rank", rank=4, steps=200).fit(tiny, train, st_train)
    assert kl(longer) < 0.9 * kl(TunedLensReader(translator="low_rank", rank=4, steps=0).fit(tiny, train, st_train))
    with pytest.raises(ValueError, match="translator"):
        TunedLensReader(translator="full")
    with pytest.raises(ValueError, match="model"):
        TunedLensReader().fit(None, train, st_train)


def test_choose_translator_keeps_the_best_held_out(tiny, traced):
    train, _, st_train, _ = traced
    candidates = [{"translator": "bias", "steps": 20}, {"translator": "low_rank", "rank": 2, "steps": 20}]
    reader, table = choose_translator(tiny, train, st_train, candidates=candidates, holdout=0.3, tolerance=0.0)
    assert list(table["translator"]) == ["bias", "low_rank"] and table["chosen"].sum() == 1
    best = table[table["chosen"]].iloc[0]
    assert best["held_out_agreement"] == table["held_out_agreement"].max()
    assert reader.translator == best["translator"] and reader.metadata_["n_train_examples"] == train.n_examples
    _, lenient = choose_translator(tiny, train, st_train, candidates=candidates, holdout=0.3, tolerance=1.0)
    assert lenient["chosen"].tolist() == [True, False]  # within the tolerance the simpler map is kept


def test_out_of_fold_trace(tiny, traced, readers):
    train, _, st_train, _ = traced
    probe = readers["probe"]
    oof = out_of_fold_trace(probe, tiny, train, st_train, cv=3, seed=0)
    in_sample = probe.read(tiny, train, st_train)
    assert oof.reader == probe.reader_id
    np.testing.assert_array_equal(oof.scores()[:, -1], in_sample.scores()[:, -1])
    assert not np.allclose(oof.scores()[:, 1:-1], in_sample.scores()[:, 1:-1])
    np.testing.assert_array_equal(out_of_fold_trace(probe, tiny, train, st_train, cv=3, seed=0).scores(),
                                  oof.scores())
    np.testing.assert_array_equal(out_of_fold_trace(readers["lens"], tiny, train).scores(), train.scores())
    with pytest.raises(ValueError, match="cv"):
        out_of_fold_trace(probe, tiny, train, st_train, cv=1)


def test_states_of_other_prompts_are_refused(tiny, traced, readers):
    train, test, st_train, st_test = traced
    with pytest.raises(ValueError, match="prompts"):
        readers["probe"].read(tiny, test, st_train)
    with pytest.raises(ValueError, match="states"):
        ProbeReader().fit(tiny, train)
    partial = residual_states(tiny, ["Review: fine.\nSentiment:"], layers=[0, 2], progress=False)
    with pytest.raises(ValueError, match="every layer"):
        ProbeReader().fit(tiny, replace(train), partial)


# ---- save / load -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lens", "probe", "tuned_bias", "tuned_low_rank"])
def test_save_load_round_trip(tiny, traced, readers, tmp_path, name):
    reader = readers[name]
    path = reader.save(tmp_path / f"{name}.reader")
    loaded = Reader.load(path, model=tiny)
    assert type(loaded) is type(reader) and loaded.reader_id == reader.reader_id
    assert loaded.get_params() == reader.get_params() and loaded.fitted_for == reader.fitted_for
    np.testing.assert_array_equal(_read(loaded, tiny, traced).scores(), _read(reader, tiny, traced).scores())
    assert type(reader).load(path).reader_id == reader.reader_id
    with pytest.raises(ValueError, match="not a 'probe'|a 'probe' reader"):
        (TunedLensReader if name == "probe" else ProbeReader).load(path)


def test_a_reader_is_refused_on_another_model(default_tokenizer, tiny, traced, readers, tmp_path):
    other = make_tiny_model("llama", default_tokenizer, seed=1)
    path = readers["probe"].save(tmp_path / "probe.reader")
    with pytest.raises(ReaderModelMismatchError, match="probe.reader.*cache id"):
        Reader.load(path, model=other)
    with pytest.raises(ReaderModelMismatchError):
        readers["probe"].read(other, traced[1], traced[3])
    rule = FeatureThresholdRule(feature="label_top_prob", threshold=0.6)
    with pytest.raises(ReaderModelMismatchError):
        run_early_exit(other, ["Review: fine.\nSentiment:"], rule, label_words=[" positive", " negative"],
                       reader=readers["probe"])


def _rewrite(src, dst, header=None, arrays=None):
    """Copy a saved reader with its header (a dict -> dict function) and arrays (dict -> dict) changed."""
    with np.load(src, allow_pickle=False) as archive:
        content = {k: archive[k] for k in archive.files}
    head = json.loads(str(content.pop("header")))
    head = header(head) if header else head
    content = arrays(content) if arrays else content
    buffer = BytesIO()
    np.savez(buffer, header=np.array(json.dumps(head)), **content)
    dst.write_bytes(buffer.getvalue())
    return dst


def _set(path_keys, value):
    def change(head):
        node = head
        for key in path_keys[:-1]:
            node = node[key]
        node[path_keys[-1]] = value
        return head
    return change


@pytest.mark.parametrize(("header", "arrays", "message"), [
    (_set(["identity", "model_cache_id"], 7), None, "identity.model_cache_id"),
    (_set(["identity", "n_layers"], 0), None, "identity.n_layers"),
    (_set(["identity", "label_words"], [" a"]), None, "identity.label_words"),
    (_set(["label_ids"], [1]), None, "label_ids"),
    (_set(["hidden_size"], -3), None, "hidden_size"),
    (_set(["calibration_method"], "magic"), None, "calibration_method"),
    (_set(["kind"], "oracle"), None, "kind"),
    (_set(["params", "C"], -1.0), None, "params"),
    (_set(["params", "max_iter"], "many"), None, "params"),
    (_set(["format_version"], 99), None, "format"),
    (None, lambda a: {k: v for k, v in a.items() if k != "weight"}, "arrays"),
    (None, lambda a: {**a, "weight": a["weight"][:, :, :3]}, "weight has shape"),
    (None, lambda a: {**a, "bias": np.full_like(a["bias"], np.nan)}, "bias has .* NaN"),
    (None, lambda a: {**a, "calibration_offsets": a["calibration_offsets"][:2]}, "calibration_offsets"),
])
def test_every_field_is_checked_at_load(readers, tmp_path, header, arrays, message):
    src = readers["probe"].save(tmp_path / "probe.reader")
    bad = _rewrite(src, tmp_path / "bad.reader", header, arrays)
    with pytest.raises(ValueError, match=message) as err:
        Reader.load(bad)
    assert "bad.reader" in str(err.value)


def test_not_a_reader_file_is_refused(tmp_path):
    import pickle

    path = tmp_path / "pickled.reader"
    path.write_bytes(pickle.dumps({"kind": "probe"}))
    with pytest.raises(ValueError, match="not a saved reader"):
        Reader.load(path)


# ---- real runs with a reader == the replay --------------------------------------------------------------


def _replayed(rule, read):
    """(exit layers, predictions) of ``rule`` replayed on a reader trace's feature table."""
    exits = first_exit(rule.stop_matrix(feature_table(read)), rule.threshold, rule.min_layer)
    return exits, read.predictions()[np.arange(read.n_examples), exits]


def _middle_threshold(read) -> float:
    """A confidence threshold between the reader's confidences at the decision layers (varied exits)."""
    conf = label_features(read.scores())["label_top_prob"][:, 1:-1]
    return float(np.quantile(conf, 0.5))


@pytest.mark.parametrize("name", ["probe", "tuned_bias", "tuned_low_rank", "lens"])
@pytest.mark.parametrize("batch_size", [1, 5])
def test_reader_exits_equal_the_replay(tiny, task, traced, readers, name, batch_size):
    reader = readers[name]
    read = _read(reader, tiny, traced)
    rule = FeatureThresholdRule(feature="label_top_prob", threshold=_middle_threshold(read), min_layer=1,
                                label_words=task.label_words)
    exits, preds = _replayed(rule, read)
    assert len(np.unique(exits)) > 1, "the test needs prompts exiting at different layers"
    res = run_early_exit(tiny, task.prompts("test"), rule, reader=reader, prefix=task.prefix, batch_size=batch_size)
    np.testing.assert_array_equal(res.exit_layers, exits)
    np.testing.assert_array_equal(res.predictions, preds)
    np.testing.assert_allclose(res.scores, read.scores()[np.arange(read.n_examples), exits], atol=1e-4)
    assert res.meta["reader"] == reader.reader_id and (res.check_seconds > 0).all()


@pytest.mark.parametrize("classifier", ["logistic", "crf", "threshold"])
def test_rules_fitted_on_a_readers_table_run_with_it(tiny, task, traced, readers, classifier):
    train, test, st_train, _ = traced
    probe = readers["probe"]
    train_table = feature_table(out_of_fold_trace(probe, tiny, train, st_train, cv=3))
    features = ("label_top_prob",) if classifier == "threshold" else ("label_top_prob", "label_gap", "cos_prev")
    policy = ExitPolicy(classifier, features=features, min_layer=1).fit(train_table)
    threshold, _ = choose_threshold(policy, train_table, max_loss=0.2, metric="consistency", cv=3)
    policy = policy.with_threshold(threshold)
    read = _read(probe, tiny, traced)
    exits, preds = _replayed(policy, read)
    res = run_early_exit(tiny, task.prompts("test"), policy, reader=probe, prefix=task.prefix, batch_size=4)
    np.testing.assert_array_equal(res.exit_layers, exits)
    np.testing.assert_array_equal(res.predictions, preds)
    # the rule reads the probe's features: refused without it, with another reader, and on the lens's table
    with pytest.raises(PolicyModelMismatchError, match="reader"):
        run_early_exit(tiny, task.prompts("test")[:2], policy, prefix=task.prefix)
    with pytest.raises(PolicyModelMismatchError, match="reader"):
        run_early_exit(tiny, task.prompts("test")[:2], policy, reader=readers["tuned_bias"], prefix=task.prefix)
    with pytest.raises(PolicyModelMismatchError, match="reader"):
        policy.stop_matrix(feature_table(test))
    # a reader decides with its own calibration: another one given beside it is refused, not silently dropped
    with pytest.raises(ValueError, match="calibration= and reader= together"):
        run_early_exit(tiny, task.prompts("test")[:2], policy, reader=probe, calibration="raw", prefix=task.prefix)


def test_a_lens_rule_runs_with_the_lens_reader_and_not_with_a_probe(tiny, task, traced, readers):
    train, test, _, _ = traced
    policy = ExitPolicy("threshold", features=("label_top_prob",), threshold=0.55).fit(feature_table(train))
    prompts = task.prompts("test")
    plain = run_early_exit(tiny, prompts, policy, prefix=task.prefix)
    with_lens = run_early_exit(tiny, prompts, policy, reader=readers["lens"], prefix=task.prefix)
    np.testing.assert_array_equal(plain.exit_layers, with_lens.exit_layers)
    np.testing.assert_allclose(plain.scores, with_lens.scores)
    with pytest.raises(PolicyModelMismatchError, match="reader"):
        run_early_exit(tiny, prompts, policy, reader=readers["probe"], prefix=task.prefix)
    with pytest.raises(ReaderModelMismatchError, match="label words"):
        run_early_exit(tiny, prompts, FeatureThresholdRule(feature="label_top_prob"), label_words=[" good", " bad"],
                       reader=readers["probe"], prefix=task.prefix)


def test_a_certified_reader_rule_runs_as_replayed(tiny, task, traced, readers):
    """Learn-then-Test on a held-out calibration split of the reader's table, then a real run."""
    train, _, st_train, _ = traced
    probe = readers["probe"]
    rule = ExitPolicy("threshold", features=("label_top_prob",), min_layer=1).fit(
        feature_table(out_of_fold_trace(probe, tiny, train, st_train, cv=3)))
    read = _read(probe, tiny, traced)
    certified, cert = certify_threshold(rule, feature_table(read), delta=0.5, epsilon=0.2)
    assert cert.n == read.n_examples and cert.risk == "disagreement"
    exits, preds = _replayed(certified, read)
    res = run_early_exit(tiny, task.prompts("test"), certified, reader=probe, prefix=task.prefix, batch_size=3)
    np.testing.assert_array_equal(res.exit_layers, exits)
    np.testing.assert_array_equal(res.predictions, preds)


# ---- the states cache --------------------------------------------------------------------------------


def test_states_equal_the_models_and_the_cache_is_keyed_and_rebuilt(default_tokenizer, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ADAINFER_DATA", str(tmp_path))
    model = make_tiny_model("qwen2", default_tokenizer)
    prompts = ["Review: a warm film.\nSentiment:", "Review: dull.\nSentiment:", "Review: fine, I guess.\nSentiment:"]
    fresh = residual_states(model, prompts, cache=True, progress=False, batch_size=2)
    reference, _ = last_states(model, prompts)
    np.testing.assert_allclose(fresh.states, reference.transpose(0, 1).numpy(), atol=1e-5)
    files = sorted((tmp_path / "states").glob("*.npz"))
    assert len(files) == 1

    def no_forward(*args, **kwargs):
        raise AssertionError("the cached states should have been read")

    with monkeypatch.context() as patch:
        patch.setattr(states_module, "batch_states", no_forward)
        cached = residual_states(model, prompts, cache=True, progress=False, batch_size=2)
    np.testing.assert_array_equal(cached.states, fresh.states)
    residual_states(model, prompts, layers=[0, 3], cache=True, progress=False)  # another layer set, another file
    residual_states(model, prompts[:2], cache=True, progress=False)  # other prompts, another file
    assert len(list((tmp_path / "states").glob("*.npz"))) == 3
    files[0].write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING, logger="adainfer_lib"):
        rebuilt = residual_states(model, prompts, cache=True, progress=False)
    assert "rebuilding" in caplog.text
    np.testing.assert_allclose(rebuilt.states, fresh.states, atol=1e-5)
    other = sorted(set((tmp_path / "states").glob("*.npz")) - {files[0]})[0]
    files[0].write_bytes(other.read_bytes())  # the file of other states under this request's name
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="adainfer_lib"):
        residual_states(model, prompts, cache=True, progress=False)
    assert "holds other states" in caplog.text
    with torch.no_grad():
        model.layers[0].mlp.down_proj.weight.mul_(1.5)  # edited weights: a new cache id, a new file
    residual_states(model, prompts, cache=True, progress=False)
    assert len(list((tmp_path / "states").glob("*.npz"))) == 4
    with pytest.raises(ValueError, match="layers"):
        residual_states(model, prompts, layers=[0, 9])


# ---- the real default model --------------------------------------------------------------------------


def _fitted_reader_runs(model, task, *, steps: int, min_layer: int, batch_size: int) -> list:
    """Trace both splits of ``task`` (no cache), fit a probe and a bias-only tuned lens (``steps``) on train, and run
    each for real at a median-confidence threshold from ``min_layer``: its exits and answers must equal its replay
    (asserted here). Returns the runs."""
    train, test = (trace_task(model, task, split=s, cache=False, progress=False) for s in ("train", "test"))
    st_train, st_test = (task_states(model, task, s, cache=False, progress=False) for s in ("train", "test"))
    runs = []
    for reader in (ProbeReader().fit(model, train, st_train),
                   TunedLensReader(translator="bias", steps=steps).fit(model, train, st_train)):
        read = reader.read(model, test, st_test)
        rule = FeatureThresholdRule(feature="label_top_prob", threshold=_middle_threshold(read), min_layer=min_layer,
                                    label_words=task.label_words)
        exits, preds = _replayed(rule, read)
        where = f"{model.name} {reader.kind}"
        assert len(np.unique(exits)) > 1, f"{where}: the test needs prompts exiting at different layers"
        res = run_early_exit(model, task.prompts("test"), rule, reader=reader, prefix=task.prefix,
                             batch_size=batch_size)
        np.testing.assert_array_equal(res.exit_layers, exits, err_msg=where)
        np.testing.assert_array_equal(res.predictions, preds, err_msg=where)
        runs.append(res)
    return runs


@pytest.mark.slow
def test_default_model_reader_exits_equal_the_replay(default_model):
    sources.prepare_sources()
    task = load_task("sentiment", n=6, n_train=40, shots=4, seed=0)
    runs = _fitted_reader_runs(default_model, task, steps=60, min_layer=2, batch_size=3)
    assert all(res.layers_saved > 0 for res in runs)


def test_decision_runs_counted_by_hand():
    preds = np.array([[0, 1, 1, 1, 0], [1, 0, 1, 0, 1], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(decision_runs(preds, 1), [[0, 1, 2, 3, 1], [0, 1, 1, 1, 1], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(decision_runs(preds, 3)[:, :3], 0)   # nothing counts below min_layer
    for bad in (0, 2.5, -1):
        with pytest.raises(ValueError):
            PatienceRule(threshold=bad)


@pytest.mark.parametrize("name", ["probe", "lens"])
@pytest.mark.parametrize("batch_size", [1, 5])
def test_patience_exits_equal_the_replay(tiny, task, traced, readers, name, batch_size):
    """PABEE's patience over any reader's decisions: the runner carries each row's last decision and run in the
    OnlineState, and its exits and answers are the replay's; the patience is chosen on train like a threshold."""
    reader = readers[name]
    train_read = reader.read(tiny, traced[0], traced[2])
    read = _read(reader, tiny, traced)
    patience, _ = choose_threshold(PatienceRule(min_layer=1), feature_table(train_read), max_loss=0.2,
                                   metric="consistency", thresholds=list(range(1, tiny.n_layers + 2)))
    rule = PatienceRule(threshold=2, min_layer=1, label_words=task.label_words)
    assert 1 <= patience <= tiny.n_layers + 1
    exits, preds = _replayed(rule, read)
    assert len(np.unique(exits)) > 1, "the test needs prompts exiting at different layers"
    np.testing.assert_array_equal(exits, rule.exit_layers(feature_table(read)))
    res = run_early_exit(tiny, task.prompts("test"), rule, reader=reader, prefix=task.prefix, batch_size=batch_size)
    np.testing.assert_array_equal(res.exit_layers, exits)
    np.testing.assert_array_equal(res.predictions, preds)


# ---- exit rules on a reader, and the probe's C (evaluation.reader_rules) ----------------------------


def test_a_readers_rule_is_fitted_and_thresholded_on_its_out_of_fold_table(tiny, traced, readers):
    """``fit_reader_rule`` keeps the threshold ``choose_threshold`` picks on the out-of-fold table (the refined
    confidence grid for the threshold rule), so that table loses at most ``max_loss`` of consistency there; the
    logistic rule reads confidence and depth; an unknown rule or budget is refused."""
    from adainfer_lib.evaluation.reader_rules import fit_reader_rule
    from adainfer_lib.rules.policy import CONFIDENCE_THRESHOLDS
    from adainfer_lib.rules.tuning import simulate

    train, _, st_train, _ = traced
    oof = feature_table(out_of_fold_trace(readers["probe"], tiny, train, st_train, cv=3))
    rule = fit_reader_rule("threshold", oof, max_loss=0.1)
    expected, _ = choose_threshold(ExitPolicy("threshold", features=("label_top_prob",), min_layer=1).fit(oof), oof,
                                   max_loss=0.1, metric="consistency", thresholds=CONFIDENCE_THRESHOLDS)
    assert rule.threshold == expected and tuple(rule.features) == ("label_top_prob",)
    assert simulate(rule, oof)["consistency"] >= 0.9
    assert fit_reader_rule("threshold", oof, max_loss=0.0).threshold >= rule.threshold   # a tighter budget waits
    logistic = fit_reader_rule("logistic", oof, max_loss=0.1)
    assert logistic.classifier == "logistic" and tuple(logistic.features) == ("label_top_prob", "layer_frac")
    with pytest.raises(ValueError, match="kind"):
        fit_reader_rule("svm", oof)
    with pytest.raises(ValueError, match="max_loss"):
        fit_reader_rule("threshold", oof, max_loss=2.0)


def test_the_probes_c_is_the_one_whose_out_of_fold_exits_save_the_most(tiny, traced):
    """``choose_probe_c`` fits one probe per C, reads train out of fold, and keeps the C whose threshold rule saves
    the most layers there; the returned probe and table are that C's (equal to fitting it alone); bad Cs are
    refused."""
    from adainfer_lib.evaluation.reader_rules import choose_probe_c, fit_reader_rule
    from adainfer_lib.rules.tuning import simulate

    train, _, st_train, _ = traced
    probe, oof, choice = choose_probe_c(tiny, train, st_train, (0.01, 1.0), max_loss=0.1, cv=3)
    assert list(choice["C"]) == [0.01, 1.0] and choice["chosen"].sum() == 1
    chosen = choice[choice["chosen"]].iloc[0]
    assert chosen["oof_layers_saved"] == choice["oof_layers_saved"].max()
    assert probe.C == chosen["C"]
    alone = ProbeReader(C=probe.C).fit(tiny, train, st_train)
    assert alone.reader_id == probe.reader_id
    expected = feature_table(out_of_fold_trace(alone, tiny, train, st_train, cv=3))
    np.testing.assert_array_equal(oof["label_top_prob"].to_numpy(), expected["label_top_prob"].to_numpy())
    for _, row in choice.iterrows():
        table = feature_table(out_of_fold_trace(ProbeReader(C=row["C"]).fit(tiny, train, st_train), tiny, train,
                                                st_train, cv=3))
        assert row["oof_layers_saved"] == simulate(fit_reader_rule("threshold", table, max_loss=0.1),
                                                   table)["layers_saved"]
    with pytest.raises(ValueError, match="at least one C"):
        choose_probe_c(tiny, train, st_train, ())
    with pytest.raises(ValueError, match="C"):
        choose_probe_c(tiny, train, st_train, (0.0,))


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma", "gemma3_text", "opt"])
def test_reader_exits_equal_the_replay_on_every_model_family(default_tokenizer, task, family):
    """Every model family the suite loads (tiny random models of each): a probe and a tuned lens fitted on its
    states run inside the runner and exit and answer where their replay says, batched."""
    model = make_tiny_model(family, default_tokenizer)
    with torch.no_grad():
        model.unembed.weight.mul_(300.0)
    assert len(_fitted_reader_runs(model, task, steps=20, min_layer=1, batch_size=5)) == 2
