"""Tasks: seeded train/test splits, label words and k-shot prompts.

``load_task("sentiment", n=200)`` gives a :class:`Task` whose ``prompts()`` end right where the label
word goes ("...\\nSentiment:"), so the model's next token is read at the last prompt position.
Demonstrations come from the train side of the data only, balanced across labels. Two protocols:

- ``demos="fixed"`` (default): **one demonstration set per seed**, shared by every prompt of the task —
  the protocol of the calibration papers (Zhao et al. 2021; Zhou et al. 2023), whose results are reported
  over several seeds. Every prompt is ``Task.prefix + Task.query(text)``; the prefix (instruction and
  demonstrations) is the same for all, so a model's label bias is shared and batch calibration can remove
  it, and its keys and values can be computed once (``inputs.prefix_kv``). The demonstrations are held out
  of the train split (and never share a text with a test or train query), so no prompt contains its query.
- ``demos="per_query"``: demonstrations drawn per query from a seed derived from ``(seed, query text)``:
  reproducible, varied across queries, independent of ``n`` (the suite's protocol before version 2).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import datasets
import numpy as np

from ..common.cache import content_key
from ..common.checks import check_int, check_label_count
from . import sources

DEFAULT_N_TRAIN = 500
TASK_FORMAT_VERSION = 2  # bump when splitting or prompting changes, so trace caches are rebuilt
DEMO_MODES = ("fixed", "per_query")


@dataclass(frozen=True)
class PromptTemplate:
    """k-shot prompt layout: ``instruction + demo + separator + ... + query``.

    ``query`` is a format string with ``{text}`` that ends where the label word goes; a
    demonstration is the rendered query followed by its label word (which carries its leading space).
    """

    query: str
    separator: str = "\n\n"
    instruction: str = ""

    def render(self, text: str) -> str:
        return self.query.format(text=text)

    def demo(self, text: str, label_word: str) -> str:
        return self.render(text) + label_word

    def build(self, demos: Sequence[tuple[str, str]], text: str) -> str:
        """Prompt from ``(text, label_word)`` demonstrations and the query text."""
        return self.prefix(demos) + self.render(text)

    def prefix(self, demos: Sequence[tuple[str, str]]) -> str:
        """Everything before the query: the instruction and the demonstrations, each followed by the separator."""
        return self.instruction + "".join(self.demo(t, w) + self.separator for t, w in demos)

    def __str__(self) -> str:
        return repr((self.instruction, self.query, self.separator))


@dataclass(frozen=True)
class _TaskDef:
    description: str
    template: PromptTemplate
    offline: bool  # has an offline source in sources.SOURCES
    group_column: str | None = None  # demos preferably share this column's value with the query
    label_words: dict[str, str] = field(default_factory=dict)  # label name -> word, default " " + name


_CHOICE = PromptTemplate("Question: {text}\nAnswer:")
_MMLU = PromptTemplate("Question: {text}\nAnswer:",
                       instruction="The following are multiple choice questions (with answers).\n\n")

TASKS: dict[str, _TaskDef] = {
    "sentiment": _TaskDef("movie-review sentiment, 2 labels", PromptTemplate("Review: {text}\nSentiment:"), True),
    "products": _TaskDef("product-review sentiment, 2 labels (sentiment's prompt and labels on Amazon snippets: "
                         "a domain shift)", PromptTemplate("Review: {text}\nSentiment:"), True),
    "topic": _TaskDef("news topic (offline: BBC, 5 labels; hub: AG News, 4 labels)",
                      PromptTemplate("Article: {text}\nTopic:"), True, label_words={"sci/tech": " science"}),
    "mmlu": _TaskDef("MMLU 4-way multiple choice, 57 subjects", _MMLU, True, group_column="subject"),
    "commonsense_qa": _TaskDef("CommonsenseQA 5-way multiple choice (hub only)", _CHOICE, False),
    "boolq": _TaskDef("BoolQ yes/no questions on a passage (hub only)",
                      PromptTemplate("Passage: {text}\nAnswer:"), False),
    "piqa": _TaskDef("PIQA 2-way physical commonsense (hub only)", _CHOICE, False),
}


def available_tasks() -> dict[str, str]:
    """Task name -> one-line description."""
    return {name: d.description for name, d in TASKS.items()}


def _rng(*key: int | str) -> np.random.Generator:
    """A generator seeded from ints and strings (strings through sha256, so stable across runs)."""
    ints = [k if isinstance(k, int) else int(hashlib.sha256(k.encode("utf-8")).hexdigest()[:15], 16) for k in key]
    return np.random.default_rng(np.random.SeedSequence(ints))


def balanced_quota(capacity: Sequence[int], k: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``k`` draws across labels as evenly as capacities allow; leftovers go to random labels."""
    cap = np.asarray(capacity, dtype=int)
    if k > cap.sum():
        raise ValueError(f"cannot draw {k} examples from {int(cap.sum())}")
    quota = np.zeros_like(cap)
    while (left := k - quota.sum()) > 0:
        open_ = np.flatnonzero(quota < cap)
        share = left // len(open_)
        if share == 0:
            quota[rng.permutation(open_)[:left]] += 1
        else:
            quota[open_] = np.minimum(cap[open_], quota[open_] + share)
    return quota


def _split(labels: np.ndarray, n_labels: int, n: int | None, n_train: int, seed: int,
           shared: bool, train_note: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(test, train) row indices, balanced across labels where possible.

    With a ``shared`` pool, train is taken first from the back of each label's seeded permutation
    and test from the front of what is left, so the train split does not depend on ``n``.
    Without one (hub: separate train/test pools) both are drawn from their own pool here.
    ``train_note`` says in the errors what the ``n_train`` rows drawn for train are (default ``n_train=...``):
    the caller's arguments, not this function's.
    """
    perm = _rng(seed, "perm")
    per_label = [perm.permutation(np.flatnonzero(labels == c)) for c in range(n_labels)]
    cap = np.array([len(p) for p in per_label])
    train_note = train_note or f"n_train={n_train}"
    if shared:
        if n_train >= cap.sum():
            raise ValueError(f"{train_note} leaves no test examples (the source has {cap.sum()} rows)")
        q_train = balanced_quota(cap, n_train, _rng(seed, "train"))
        train = np.concatenate([p[len(p) - q:] for p, q in zip(per_label, q_train)])
        cap = cap - q_train
    else:
        train = np.array([], dtype=int)
    if n is None:
        q_test = cap
    elif n > cap.sum():
        raise ValueError(f"n={n} but only {cap.sum()} examples are available for the test split"
                         + (f" (the source has {len(labels)} rows; {train_note}): lower n or n_train" if shared
                            else f" (its pool has {len(labels)} rows): lower n"))
    else:
        q_test = balanced_quota(cap, n, _rng(seed, "test"))
    test = np.concatenate([p[:q] for p, q in zip(per_label, q_test)])
    return _rng(seed, "test order").permutation(test), _rng(seed, "train order").permutation(train)


def _rows_digest(ds: datasets.Dataset) -> str:
    """sha256 of a data set's texts and labels (a version stamp for hub data)."""
    h = hashlib.sha256()
    for text, label in zip(ds["text"], ds["label"]):
        h.update(f"{label}\t{text}\n".encode("utf-8"))
    return h.hexdigest()


def _subset(ds: datasets.Dataset, idx: np.ndarray) -> datasets.Dataset:
    return ds.select(idx.tolist())


@dataclass(eq=False)
class Task:
    """A classification task: splits, label words and k-shot prompt builders."""

    name: str
    train: datasets.Dataset
    test: datasets.Dataset
    label_words: list[str]
    label_names: list[str]
    template: PromptTemplate
    shots: int
    seed: int
    source: str
    group_column: str | None = None
    data_version: str = ""
    demos: str = "fixed"
    demo_set: datasets.Dataset | None = None  # the shared demonstrations (demos="fixed"), in prompt order

    def __post_init__(self) -> None:
        if len(self.label_words) != len(self.label_names) or len(set(self.label_names)) != len(self.label_names) \
                or len(set(self.label_words)) != len(self.label_words):
            raise ValueError(f"task {self.name!r}: label names {list(self.label_names)} and label words "
                             f"{list(self.label_words)} must be distinct, one word per label")
        check_label_count(self.label_words, owner=f"task {self.name!r}")
        if self.demos not in DEMO_MODES:
            raise ValueError(f"demos must be one of {DEMO_MODES}, not {self.demos!r}")
        if self.demos == "fixed" and self.shots and (self.demo_set is None or len(self.demo_set) != self.shots):
            raise ValueError(f"demos='fixed' with shots={self.shots} needs a demo_set of {self.shots} rows")

    def __repr__(self) -> str:
        return (f"Task({self.name!r}, source={self.source!r}, test={len(self.test)}, train={len(self.train)}, "
                f"shots={self.shots}, demos={self.demos!r}, seed={self.seed}, labels={self.label_names})")

    @property
    def n_labels(self) -> int:
        return len(self.label_words)

    @property
    def cache_id(self) -> str:
        """Key for anything computed from this task's prompts (trace caches)."""
        return content_key(self.name, self.source, len(self.test), self.shots, self.seed, str(self.template),
                           self.label_words, len(self.train), self.data_version, self.demos, TASK_FORMAT_VERSION)

    @property
    def prefix(self) -> str:
        """The part every prompt starts with: the instruction and, with ``demos="fixed"``, the shared
        demonstrations (with ``demos="per_query"`` only the instruction is shared)."""
        if self.demos == "per_query" or not self.shots:
            return self.template.instruction
        pairs = [(t, self.label_words[c]) for t, c in zip(self.demo_set["text"], self.demo_set["label"])]
        return self.template.prefix(pairs)

    def query(self, text: str) -> str:
        """The per-example part of a ``demos="fixed"`` prompt: ``prompt == prefix + query(text)``."""
        return self.template.render(text)

    # ------------------------------------------------------------------ demonstrations

    @cached_property
    def _train_texts(self) -> list[str]:
        return list(self.train["text"])

    @cached_property
    def _train_labels(self) -> np.ndarray:
        return np.asarray(self.train["label"])

    @cached_property
    def _train_groups(self) -> np.ndarray | None:
        return np.asarray(self.train[self.group_column]) if self.group_column else None

    @cached_property
    def _train_index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self._train_texts)}

    @cached_property
    def _group_of(self) -> dict[str, str]:
        if not self.group_column:
            return {}
        return {t: g for ds in (self.train, self.test) for t, g in zip(ds["text"], ds[self.group_column])}

    def demo_indices(self, key: str, *, exclude: Sequence[int] = (), group: str | None = None) -> list[int]:
        """Train rows used as demonstrations for the query ``key`` (seeded by ``(seed, key)``).

        ``shots // n_labels`` per label, the remainder to random labels, never an ``exclude`` row;
        rows of the same ``group`` (MMLU subject; looked up from ``key`` when None) first; order shuffled.
        """
        if self.shots == 0:
            return []
        group = self._group_of.get(key) if group is None else group
        rng = _rng(self.seed, key)
        ok = np.ones(len(self._train_texts), dtype=bool)
        ok[[i for i in exclude if i is not None]] = False
        pools = [np.flatnonzero(ok & (self._train_labels == c)) for c in range(self.n_labels)]
        quota = balanced_quota([len(p) for p in pools], self.shots, rng)
        chosen: list[int] = []
        for pool, q in zip(pools, quota):
            pool = rng.permutation(pool)
            if group is not None and self._train_groups is not None:
                same = self._train_groups[pool] == group
                pool = np.concatenate([pool[same], pool[~same]])  # stable: same-group rows first
            chosen.extend(pool[:q].tolist())
        return rng.permutation(chosen).tolist()

    def _prompt(self, query: str, key: str, exclude_index: int | None = None) -> str:
        if self.demos == "fixed":
            return self.prefix + self.template.render(query)
        exclude = [exclude_index, self._train_index.get(key), self._train_index.get(query)]
        idx = self.demo_indices(key, exclude=exclude)
        demos = [(self._train_texts[i], self.label_words[self._train_labels[i]]) for i in idx]
        return self.template.build(demos, query)

    # ------------------------------------------------------------------ public prompt builders

    def prompts(self, split: str = "test") -> list[str]:
        """One k-shot prompt per example of ``split`` ("test" or "train"), in split order (``ValueError``
        for another split name)."""
        if split not in ("test", "train"):
            raise ValueError(f"split must be 'test' or 'train', not {split!r}")
        texts = list((self.test if split == "test" else self.train)["text"])
        return [self._prompt(t, t, i if split == "train" else None) for i, t in enumerate(texts)]

    def prompt_for(self, text: str, *, exclude_index: int | None = None) -> str:
        """k-shot prompt for any text (equals ``prompts()[i]`` when ``text`` is test example i). With
        ``demos="fixed"`` it is ``prefix + query(text)``; ``TypeError`` for a non-string text."""
        if not isinstance(text, str):
            raise TypeError(f"prompt_for() takes a text (str), not {type(text).__name__}")
        return self._prompt(text, text, exclude_index)

    def content_free_prompt(self, content: str = "N/A", *, text: str | None = None) -> str:
        """The prompt with the query replaced by ``content`` (contextual calibration, Zhao et al. 2021).

        With ``demos="fixed"`` the demonstrations are the shared set; per query, those of ``prompt_for(text)``
        when ``text`` is given, else a fixed seeded draw.
        """
        return self._prompt(content, content if text is None else text)


def _draw_demos(train: datasets.Dataset, n_labels: int, shots: int, seed: int, avoid: set[str]) -> np.ndarray:
    """Rows of ``train`` for the one demonstration set of ``seed``: balanced across labels, never a text in
    ``avoid`` (the test split's), in a seeded order."""
    rng = _rng(seed, "fixed demonstrations")
    labels = np.asarray(train["label"])
    usable = np.array([t not in avoid for t in train["text"]], dtype=bool)
    pools = [rng.permutation(np.flatnonzero(usable & (labels == c))) for c in range(n_labels)]
    quota = balanced_quota([len(pool) for pool in pools], shots, rng)
    return rng.permutation(np.concatenate([pool[:q] for pool, q in zip(pools, quota)]).astype(int))


def load_task(name: str, *, n: int | None = None, shots: int = 4, seed: int = 0, source: str = "offline",
              n_train: int | None = None, demos: str = "fixed") -> Task:
    """Load task ``name`` with ``n`` test examples (all that remain if None) and ``n_train`` train ones.

    Both splits are seeded and balanced across labels where possible; ``n_train`` defaults to 500.
    Offline, train is drawn first so it does not depend on ``n``; on the hub, test comes from the
    data set's test/validation split and train from its train split. ``demos="fixed"`` (default) draws one
    balanced set of ``shots`` demonstrations per ``seed`` from the train side, held out of the ``n_train``
    train examples and never sharing a text with a test example; ``demos="per_query"`` draws them per query
    (see the module docstring). Offline sources need ``python -m adainfer_lib.data.prepare`` once;
    ``source="hub"`` needs a reachable hub (or its cache). ``ValueError`` names any invalid argument.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available tasks: "
                         + ", ".join(f"{k} ({v})" for k, v in available_tasks().items()))
    if source not in ("offline", "hub"):
        raise ValueError(f"source must be 'offline' or 'hub', not {source!r}")
    if demos not in DEMO_MODES:
        raise ValueError(f"demos must be one of {DEMO_MODES}, not {demos!r}")
    check_int(n, "n", low=1, none_ok=True)
    check_int(n_train, "n_train", low=0, none_ok=True)
    check_int(shots, "shots", low=0)
    check_int(seed, "seed", low=0)
    spec = TASKS[name]
    n_train_default = n_train is None
    n_train = DEFAULT_N_TRAIN if n_train_default else n_train
    n_draw = n_train + (shots if demos == "fixed" else 0)  # the fixed demonstrations come out of the train side
    if source == "offline":
        if not spec.offline:
            raise ValueError(f"task {name!r} has no offline source; use source='hub' where a hub is reachable")
        pool = sources.load_source(name)
        label_names = list(sources.SOURCES[name].label_names)
        data_version = sources.source_info(name)["sha256"]
        note = (f"n_train={n_train}" + (", the default," if n_train_default else "") + " train examples"
                + (f" and shots={shots} demonstrations" if demos == "fixed" and shots else "") + " drawn first")
        test_idx, train_idx = _split(np.asarray(pool["label"]), len(label_names), n, n_draw, seed, shared=True,
                                     train_note=note)
        test, train = _subset(pool, test_idx), _subset(pool, train_idx)
    else:
        train_pool, test_pool = sources.load_hub_source(name)
        label_names = list(sources.HUB_SOURCES[name].label_names)
        data_version = content_key(_rows_digest(train_pool), _rows_digest(test_pool))
        k = len(label_names)
        test_idx, _ = _split(np.asarray(test_pool["label"]), k, n, 0, seed, shared=False)
        # the hub's train split is its own pool: draw n_train from it the same balanced way
        train_idx, _ = _split(np.asarray(train_pool["label"]), k, min(n_draw, len(train_pool)), 0, seed + 1,
                              shared=False)
        test, train = _subset(test_pool, test_idx), _subset(train_pool, train_idx)
    if shots > len(train):
        raise ValueError(f"shots={shots} but the train split has only {len(train)} examples")
    demo_set = None
    if demos == "fixed" and shots:
        rows = _draw_demos(train, len(label_names), shots, seed, avoid=set(test["text"]))
        demo_set = _subset(train, rows)
        demo_texts = set(demo_set["text"])
        keep = [i for i, t in enumerate(train["text"]) if i not in set(rows.tolist()) and t not in demo_texts]
        train = _subset(train, np.asarray(keep[:n_train], dtype=int))
    label_words = [spec.label_words.get(c, " " + c) for c in label_names]
    return Task(name, train, test, label_words, label_names, spec.template, shots, seed, source,
                spec.group_column, data_version, demos, demo_set)
