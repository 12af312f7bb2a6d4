"""Tasks: splits, balance, leakage, reproducibility, label words, errors (no hub access needed)."""
from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest

from adainfer_lib.data import sources
from adainfer_lib.data.tasks import Task, available_tasks, balanced_quota, load_task
from adainfer_lib.model.inputs import label_token_ids

LABEL_LINE = {"sentiment": "Sentiment:", "topic": "Topic:", "mmlu": "Answer:"}


@pytest.fixture(scope="module")
def prepared() -> None:
    sources.prepare_sources()


@pytest.fixture(scope="module", params=["fixed", "per_query"])
def tasks(prepared, request) -> dict[str, Task]:
    """The three offline tasks under each demonstration protocol."""
    demos = request.param
    return {"sentiment": load_task("sentiment", n=60, seed=0, demos=demos),
            "topic": load_task("topic", n=50, shots=5, seed=0, demos=demos),
            "mmlu": load_task("mmlu", n=40, seed=0, demos=demos)}


@pytest.fixture(scope="module")
def per_query(prepared) -> dict[str, Task]:
    return {"sentiment": load_task("sentiment", n=60, seed=0, demos="per_query"),
            "mmlu": load_task("mmlu", n=40, seed=0, demos="per_query")}


@pytest.fixture(scope="module")
def tokenizer():
    """The default model's tokenizer (models.load_model), or the converted SmolLM2 copy in /tmp/smol."""
    try:
        from adainfer_lib.model.loading import load_model
    except ImportError:
        if not Path("/tmp/smol").exists():
            pytest.skip("neither adainfer_lib.model.loading nor /tmp/smol is available")
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained("/tmp/smol")
    return load_model().tokenizer


def demo_labels(task: Task, prompt: str) -> list[str]:
    """Label words of the demonstrations in a prompt (the lines "<Label line> <word>")."""
    key = LABEL_LINE[task.name]
    return [" " + line[len(key):].strip() for line in prompt.splitlines() if line.startswith(key + " ")]


def demo_texts(task: Task, key: str) -> list[str]:
    return [task.train[i]["text"] for i in task.demo_indices(key)]


# --------------------------------------------------------------------------- splits


@pytest.mark.parametrize("name", ["sentiment", "topic", "mmlu"])
def test_train_test_disjoint_and_balanced(tasks, name):
    task = tasks[name]
    assert not set(task.train["text"]) & set(task.test["text"])
    assert len(task.train) == 500
    for ds in (task.test, task.train):
        counts = Counter(ds["label"])
        assert set(counts) == set(range(len(task.label_words)))
        assert max(counts.values()) - min(counts.values()) <= 1


def test_train_does_not_depend_on_n(prepared):
    a, b = load_task("sentiment", n=20), load_task("sentiment", n=300)
    assert a.train["text"] == b.train["text"]
    assert set(a.test["text"]) <= set(b.test["text"])


@pytest.mark.parametrize("demos", ["fixed", "per_query"])
def test_n_none_takes_the_rest(prepared, demos):
    task = load_task("topic", n=None, n_train=300, demos=demos)
    held_out = task.shots if demos == "fixed" else 0  # the shared demonstrations
    assert len(task.train) == 300 and len(task.test) + 300 + held_out == sources.source_info("topic")["rows"]


def test_n_too_large(prepared):
    with pytest.raises(ValueError, match="n_train"):
        load_task("topic", n=2000)


@pytest.mark.parametrize("n_train, shots, says", [
    (None, 4, "n_train=500, the default, train examples and shots=4 demonstrations drawn first"),
    (100, 4, "n_train=100 train examples and shots=4 demonstrations drawn first"),
    (100, 0, "n_train=100 train examples drawn first"),
])
def test_n_too_large_names_the_arguments_given(prepared, n_train, shots, says):
    """The error reports the n_train the caller gave (or that it is the default) and the demonstrations apart,
    not their sum as an n_train nobody passed, and the source's size."""
    rows = sources.source_info("sentiment")["rows"]
    drawn = (500 if n_train is None else n_train) + shots
    with pytest.raises(ValueError) as error:
        load_task("sentiment", n=99999, n_train=n_train, shots=shots)
    message = str(error.value)
    assert f"only {rows - drawn} examples" in message and f"{rows} rows" in message and says in message
    if shots:
        assert f"n_train={drawn}" not in message


def test_balanced_quota():
    rng = np.random.default_rng(0)
    assert balanced_quota([10, 10], 4, rng).tolist() == [2, 2]
    assert balanced_quota([1, 10, 10], 9, rng).tolist() == [1, 4, 4]
    assert sorted(balanced_quota([5, 5, 5], 4, rng).tolist()) == [1, 1, 2]
    with pytest.raises(ValueError):
        balanced_quota([1, 1], 3, rng)


# --------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("name", ["sentiment", "topic", "mmlu"])
def test_prompt_shape_and_shot_balance(tasks, name):
    task = tasks[name]
    prompts = task.prompts()
    assert len(prompts) == len(task.test)
    per_label = task.shots // len(task.label_words)
    for text, prompt in zip(task.test["text"], prompts):
        assert prompt.endswith(task.template.render(text)) and prompt.endswith(LABEL_LINE[name])
        labels = demo_labels(task, prompt)
        assert len(labels) == task.shots
        assert Counter(labels) == {w: per_label for w in task.label_words}


@pytest.mark.parametrize("name", ["sentiment", "topic", "mmlu"])
def test_no_leakage(tasks, name):
    task = tasks[name]
    for split in ("test", "train"):
        ds = task.test if split == "test" else task.train
        for text, prompt in zip(ds["text"], task.prompts(split)):
            demos = prompt[: -len(task.template.render(text))]
            assert text not in demos
    for i, text in enumerate(task.train["text"][:50]):
        assert text not in task.prompt_for(text)[: -len(task.template.render(text))]
        if task.demos == "per_query":
            assert i not in task.demo_indices(text, exclude=[i])


def test_demos_vary_but_are_reproducible(per_query, prepared):
    task = per_query["sentiment"]
    assert len({tuple(task.demo_indices(t)) for t in task.test["text"]}) > len(task.test) // 2
    assert load_task("sentiment", n=60, seed=0, demos="per_query").prompts() == task.prompts()
    other = load_task("sentiment", n=60, seed=1, demos="per_query")
    assert other.prompts() != task.prompts() and other.test["text"] != task.test["text"]
    assert other.cache_id != task.cache_id
    assert load_task("sentiment", n=60, shots=2, demos="per_query").cache_id != task.cache_id
    assert load_task("sentiment", n=60, seed=0).cache_id != task.cache_id  # the fixed protocol


def test_fixed_demos_one_shared_set_per_seed(prepared):
    task = load_task("sentiment", n=60, n_train=80, seed=0)
    assert task.demos == "fixed" and len(task.demo_set) == 4 and len(task.train) == 80
    assert Counter(task.demo_set["label"]) == {0: 2, 1: 2}
    for split, ds in (("test", task.test), ("train", task.train)):
        for text, prompt in zip(ds["text"], task.prompts(split)):
            assert prompt == task.prefix + task.query(text)
    assert task.prefix.count("Review:") == 4 and task.prefix.endswith("\n\n")
    # no prompt contains its own query among the demonstrations
    assert not set(task.demo_set["text"]) & (set(task.train["text"]) | set(task.test["text"]))
    assert task.content_free_prompt() == task.prefix + task.query("N/A")
    again, other = load_task("sentiment", n=60, n_train=80, seed=0), load_task("sentiment", n=60, n_train=80, seed=1)
    assert again.prompts() == task.prompts() and other.prefix != task.prefix
    per_query = load_task("sentiment", n=60, n_train=80, seed=0, demos="per_query")
    assert per_query.prefix == "" and per_query.test["text"] == task.test["text"]
    assert load_task("mmlu", n=5, shots=1).prefix.startswith("The following are multiple choice questions")


@pytest.mark.parametrize("bad, match", [({"demos": "random"}, "demos must be one of"), ({"n": 0}, "n must be"),
                                        ({"shots": -1}, "shots must be"), ({"seed": 1.5}, "seed must be"),
                                        ({"n_train": "10"}, "n_train must be")])
def test_load_task_argument_errors(prepared, bad, match):
    with pytest.raises(ValueError, match=match):
        load_task("sentiment", **bad)


def test_prompt_for_matches_prompts(tasks):
    for task in tasks.values():
        assert [task.prompt_for(t) for t in task.test["text"][:5]] == task.prompts()[:5]
    free = tasks["sentiment"].prompt_for("An unseen review.")
    assert free.endswith("Review: An unseen review.\nSentiment:") and free.count("Review:") == 5


def test_content_free_prompt(tasks):
    task = tasks["sentiment"]
    text = task.test["text"][0]
    free = task.content_free_prompt(text=text)
    assert free == task.prompts()[0][: -len(task.template.render(text))] + task.template.render("N/A")
    assert task.content_free_prompt("").endswith("Review: \nSentiment:")
    assert task.content_free_prompt() == task.content_free_prompt()


def test_mmlu_demos_prefer_same_subject(per_query):
    task = per_query["mmlu"]
    groups = np.asarray(task.train["subject"])
    same = [np.mean(groups[task.demo_indices(t)] == s) for t, s in zip(task.test["text"], task.test["subject"])]
    assert np.mean(same) > 0.5  # about 9 train rows per subject: most slots find one


def test_zero_shot(prepared):
    task = load_task("sentiment", n=4, shots=0)
    assert task.prompts()[0] == task.template.render(task.test["text"][0])


def test_label_words_name_each_examples_answer(tasks):
    """The word of an example's label is its answer as the data defines it: " positive" exactly for the reviews
    the sentiment lexicon rates above zero, the topic folder the article was filed in, the letter in front of the
    right choice of a question; and a demonstration is followed by the word of its own label."""
    sentiment, topic, mmlu = tasks["sentiment"], tasks["topic"], tasks["mmlu"]
    for ds in (sentiment.train, sentiment.test):
        words = [sentiment.label_words[c] for c in ds["label"]]
        assert [w == " positive" for w in words] == [r > 0 for r in ds["rating"]]
    for ds in (topic.train, topic.test):
        assert [topic.label_words[c].strip() for c in ds["label"]] == [d.split("/")[0] for d in ds["doc"]]
    for ds in (mmlu.train, mmlu.test):
        for text, label, choices in zip(ds["text"], ds["label"], ds["choices"]):
            assert f"\n{mmlu.label_words[label].strip()}. {choices[label].strip()}" in text
    for task in tasks.values():
        for prompt, text in zip(task.prompts()[:5], task.test["text"][:5]):
            if task.demos == "fixed":
                demos = zip(task.demo_set["text"], task.demo_set["label"])
            else:
                demos = [(task.train[i]["text"], task.train[i]["label"]) for i in task.demo_indices(text)]
            for demo_text, label in demos:  # the label line right after the demonstration's text
                after = prompt[prompt.index(demo_text) + len(demo_text):]
                line = next(x for x in after.splitlines() if x.startswith(LABEL_LINE[task.name]))
                assert line == LABEL_LINE[task.name] + task.label_words[label], (task.name, demo_text[:40])


# --------------------------------------------------------------------------- errors


def test_unknown_task_lists_available():
    with pytest.raises(ValueError, match="sentiment.*topic.*mmlu"):
        load_task("imdb")
    assert {"sentiment", "topic", "mmlu", "commonsense_qa", "boolq", "piqa"} <= set(available_tasks())


def test_hub_only_task_offline():
    with pytest.raises(ValueError, match="source='hub'"):
        load_task("boolq")


def test_missing_prepared_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAINFER_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="python -m adainfer_lib.data.prepare"):
        load_task("sentiment", n=10)


def test_hub_unreachable(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")
    monkeypatch.setattr(sources.datasets, "load_dataset", offline)
    with pytest.raises(sources.DataSourceError, match="hub"):
        load_task("sentiment", source="hub")


def test_hub_task_with_a_fake_hub(monkeypatch):
    def fake(path, config=None, **kwargs):
        assert path == "google/boolq"
        split = lambda k, off: datasets.Dataset.from_dict({  # noqa: E731
            "question": [f"is {i} even" for i in range(off, off + k)],
            "passage": [f"Passage {i}." for i in range(off, off + k)],
            "answer": [i % 2 == 0 for i in range(off, off + k)]})
        return datasets.DatasetDict({"train": split(40, 0), "validation": split(10, 100)})
    monkeypatch.setattr(sources.datasets, "load_dataset", fake)
    task = load_task("boolq", source="hub", n=6, n_train=20)
    assert task.label_words == [" no", " yes"] and task.source == "hub"
    assert len(task.test) == 6 and len(task.train) == 20 and Counter(task.test["label"]) == {0: 3, 1: 3}
    prompt = task.prompts()[0]
    assert prompt.startswith("Passage: Passage ") and prompt.endswith("?\nAnswer:") and prompt.count("Answer:") == 5
    assert task.cache_id == load_task("boolq", source="hub", n=6, n_train=20).cache_id


class CharTokenizer:
    """Whitespace-prefixed known words are one token, anything else one token per character."""

    vocab = [" negative", " positive", " A", " B"]

    def encode(self, text, add_special_tokens=False):
        ids, i = [], 0
        while i < len(text):
            w = next((w for w in self.vocab if text.startswith(w, i)), None)
            ids.append(1000 + self.vocab.index(w) if w else ord(text[i]))
            i += len(w) if w else 1
        return ids

    def convert_ids_to_tokens(self, ids):
        return [self.vocab[i - 1000] if i >= 1000 else chr(i) for i in ids]


def check_label_words(task, tokenizer) -> list[int]:
    """The task's label words resolved as the runner resolves them: the token after a prompt's end."""
    return label_token_ids(tokenizer, task.label_words, task.template.render("x"), owner=f"task {task.name!r}")


def test_check_label_words_fake_tokenizer(tasks):
    task = tasks["sentiment"]
    assert check_label_words(task, CharTokenizer()) == [1000, 1001]
    bad = dataclasses.replace(task, label_words=[" neg", " positive"])
    with pytest.raises(ValueError, match=r"' neg'.*4 tokens"):
        check_label_words(bad, CharTokenizer())
    with pytest.raises(ValueError, match="' positive' and ' positive' are the same token"):
        label_token_ids(CharTokenizer(), [" positive", " positive"], "Review: x\nSentiment:")


def test_a_task_needs_two_distinct_labels(tasks):
    """Issue 22: a task with one label was accepted, and every input exited at the minimum layer without a word
    (one label is certain at every layer). A task is refused where it is built, as are labels it cannot tell
    apart (one word for two labels)."""
    task = tasks["sentiment"]
    with pytest.raises(ValueError, match=r"task 'sentiment' has 1 distinct label word\(s\) \[' positive'\]: a "
                                         "classification task needs 2 or more labels"):
        dataclasses.replace(task, label_words=[" positive"], label_names=["positive"])
    with pytest.raises(ValueError, match=r"label words \[' positive', ' positive'\] must be distinct"):
        dataclasses.replace(task, label_words=[" positive", " positive"])
    with pytest.raises(ValueError, match="one word per label"):
        dataclasses.replace(task, label_words=[" positive", " negative", " neutral"])


# --------------------------------------------------------------------------- real tokenizer


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sentiment", "topic", "mmlu"])
def test_label_words_single_token(tasks, tokenizer, name):
    task = tasks[name]
    ids = check_label_words(task, tokenizer)
    assert ids == [tokenizer.encode(w, add_special_tokens=False)[0] for w in task.label_words]
    prompt = task.prompts()[0]
    # inside a demonstration, the label word is the same single token as after the prompt's end
    demo_ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert sum(demo_ids.count(i) for i in ids) >= task.shots


@pytest.mark.slow
def test_bad_label_word(tasks, tokenizer):
    bad = dataclasses.replace(tasks["sentiment"], label_words=[" supercalifragilistic", " positive"])
    with pytest.raises(ValueError, match="' supercalifragilistic'.*tokens"):
        check_label_words(bad, tokenizer)


@pytest.mark.slow
def test_prompt_lengths(tasks, tokenizer):
    """4-5 shot sentiment and topic prompts stay short enough for CPU tracing."""
    for name, limit in [("sentiment", 300), ("topic", 512)]:
        lengths = [len(tokenizer.encode(p)) for p in tasks[name].prompts()]
        assert max(lengths) <= limit, (name, max(lengths))
