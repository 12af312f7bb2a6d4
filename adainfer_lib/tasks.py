"""Tasks: seeded train/test splits, label words and k-shot prompts.

``load_task("sentiment", n=200)`` gives a :class:`Task` whose ``prompts()`` end right where the label
word goes ("...\\nSentiment:"), so the model's next token is read at the last prompt position.
Demonstrations come from the train split only, balanced across labels, and are drawn per query from
a seed derived from ``(seed, query text)``: reproducible, varied across queries, independent of ``n``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import datasets
import numpy as np

from . import sources
from .cache import content_key

DEFAULT_N_TRAIN = 500
TASK_FORMAT_VERSION = 1  # bump when splitting or prompting changes, so trace caches are rebuilt


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
        return self.instruction + self.separator.join([self.demo(t, w) for t, w in demos] + [self.render(text)])

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
           shared: bool) -> tuple[np.ndarray, np.ndarray]:
    """(test, train) row indices, balanced across labels where possible.

    With a ``shared`` pool, train is taken first from the back of each label's seeded permutation
    and test from the front of what is left, so the train split does not depend on ``n``.
    Without one (hub: separate train/test pools) both are drawn from their own pool here.
    """
    perm = _rng(seed, "perm")
    per_label = [perm.permutation(np.flatnonzero(labels == c)) for c in range(n_labels)]
    cap = np.array([len(p) for p in per_label])
    if shared:
        if n_train >= cap.sum():
            raise ValueError(f"n_train={n_train} leaves no test examples (the source has {cap.sum()} rows)")
        q_train = balanced_quota(cap, n_train, _rng(seed, "train"))
        train = np.concatenate([p[len(p) - q:] for p, q in zip(per_label, q_train)])
        cap = cap - q_train
    else:
        train = np.array([], dtype=int)
    if n is None:
        q_test = cap
    elif n > cap.sum():
        raise ValueError(f"n={n} but only {cap.sum()} examples are available"
                         + (f" after n_train={n_train}: lower n or n_train" if shared else ""))
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

    def __repr__(self) -> str:
        return (f"Task({self.name!r}, source={self.source!r}, test={len(self.test)}, train={len(self.train)}, "
                f"shots={self.shots}, seed={self.seed}, labels={self.label_names})")

    @property
    def n_labels(self) -> int:
        return len(self.label_words)

    @property
    def cache_id(self) -> str:
        """Key for anything computed from this task's prompts (trace caches)."""
        return content_key(self.name, self.source, len(self.test), self.shots, self.seed, str(self.template),
                           self.label_words, len(self.train), self.data_version, TASK_FORMAT_VERSION)

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
        exclude = [exclude_index, self._train_index.get(key), self._train_index.get(query)]
        idx = self.demo_indices(key, exclude=exclude)
        demos = [(self._train_texts[i], self.label_words[self._train_labels[i]]) for i in idx]
        return self.template.build(demos, query)

    # ------------------------------------------------------------------ public prompt builders

    def prompts(self, split: str = "test") -> list[str]:
        """One k-shot prompt per example of ``split`` ("test" or "train"), in split order."""
        if split not in ("test", "train"):
            raise ValueError(f"split must be 'test' or 'train', not {split!r}")
        texts = list((self.test if split == "test" else self.train)["text"])
        return [self._prompt(t, t, i if split == "train" else None) for i, t in enumerate(texts)]

    def prompt_for(self, text: str, *, exclude_index: int | None = None) -> str:
        """k-shot prompt for any text (equals ``prompts()[i]`` when ``text`` is test example i)."""
        return self._prompt(text, text, exclude_index)

    def content_free_prompt(self, content: str = "N/A", *, text: str | None = None) -> str:
        """The prompt with the query replaced by ``content`` (contextual calibration, Zhao et al. 2021).

        Demos are those of ``prompt_for(text)`` when ``text`` is given, else a fixed seeded draw.
        """
        return self._prompt(content, content if text is None else text)

    def check_label_words(self, tokenizer) -> list[int]:
        """Token id of each label word as the token that follows the prompt's end.

        Raises ValueError naming the word and its tokens unless it is exactly one token there,
        or if two label words share a token.
        """
        ctx = self.template.render("x")
        base = tokenizer.encode(ctx, add_special_tokens=False)
        ids = []
        for word in self.label_words:
            full = tokenizer.encode(ctx + word, add_special_tokens=False)
            extra = full[len(base):] if full[: len(base)] == base else tokenizer.encode(word, add_special_tokens=False)
            if len(extra) != 1:
                raise ValueError(
                    f"label word {word!r} of task {self.name!r} is {len(extra)} tokens "
                    f"{tokenizer.convert_ids_to_tokens(extra)} for this tokenizer, not exactly one: "
                    "pick a single-token synonym")
            ids.append(extra[0])
        if len(set(ids)) != len(ids):
            raise ValueError(f"label words {self.label_words} of task {self.name!r} share a token: {ids}")
        return ids


def load_task(name: str, *, n: int | None = None, shots: int = 4, seed: int = 0, source: str = "offline",
              n_train: int | None = None) -> Task:
    """Load task ``name`` with ``n`` test examples (all that remain if None) and ``n_train`` train ones.

    Both splits are seeded and balanced across labels where possible; ``n_train`` defaults to 500.
    Offline, train is drawn first so it does not depend on ``n``; on the hub, test comes from the
    data set's test/validation split and train from its train split. Offline sources need
    ``python -m adainfer_lib.prepare`` once; ``source="hub"`` needs a reachable hub (or its cache).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available tasks: "
                         + ", ".join(f"{k} ({v})" for k, v in available_tasks().items()))
    if source not in ("offline", "hub"):
        raise ValueError(f"source must be 'offline' or 'hub', not {source!r}")
    spec = TASKS[name]
    n_train = DEFAULT_N_TRAIN if n_train is None else n_train
    if source == "offline":
        if not spec.offline:
            raise ValueError(f"task {name!r} has no offline source; use source='hub' where a hub is reachable")
        pool = sources.load_source(name)
        label_names = list(sources.SOURCES[name].label_names)
        data_version = sources.source_info(name)["sha256"]
        test_idx, train_idx = _split(np.asarray(pool["label"]), len(label_names), n, n_train, seed, shared=True)
        test, train = _subset(pool, test_idx), _subset(pool, train_idx)
    else:
        train_pool, test_pool = sources.load_hub_source(name)
        label_names = list(sources.HUB_SOURCES[name].label_names)
        data_version = content_key(_rows_digest(train_pool), _rows_digest(test_pool))
        k = len(label_names)
        test_idx, _ = _split(np.asarray(test_pool["label"]), k, n, 0, seed, shared=False)
        # the hub's train split is its own pool: draw n_train from it the same balanced way
        train_idx, _ = _split(np.asarray(train_pool["label"]), k, min(n_train, len(train_pool)), 0, seed + 1,
                              shared=False)
        test, train = _subset(test_pool, test_idx), _subset(train_pool, train_idx)
    if shots > len(train):
        raise ValueError(f"shots={shots} but the train split has only {len(train)} examples")
    label_words = [spec.label_words.get(c, " " + c) for c in label_names]
    return Task(name, train, test, label_words, label_names, spec.template, shots, seed, source,
                spec.group_column, data_version)
