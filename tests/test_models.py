"""Model loading and the architecture registry."""

from __future__ import annotations

import pytest
import torch

from adainfer_lib import ModelNotFoundError, UnsupportedArchitectureError, load_model, supported_model_types
from adainfer_lib.model.loading import LensModel
from adainfer_lib.model.registry import ARCHITECTURES, spec_for
from conftest import TINY_TYPES


def test_every_registered_family_has_a_tiny_model_under_test():
    registered = {t for spec in ARCHITECTURES for t in spec.model_types}
    # qwen3 shares Qwen2's layout; gemma2 shares Gemma's: both covered by their siblings' tiny models.
    assert registered - set(TINY_TYPES) <= {"qwen3", "gemma2"}


def test_unknown_architecture_names_what_is_supported():
    with pytest.raises(UnsupportedArchitectureError, match="llama") as err:
        spec_for("bert")
    assert "bert" in str(err.value)
    assert "gpt2" in supported_model_types()


def test_wrap_refuses_unsupported_model(default_tokenizer):
    from transformers import BertConfig, BertLMHeadModel

    bert = BertLMHeadModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, is_decoder=True))
    with pytest.raises(UnsupportedArchitectureError, match="not in the adainfer registry"):
        LensModel.wrap(bert, default_tokenizer)


def test_unknown_name_says_which_lookups_failed(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        load_model("no-such-org/no-such-model-xyz")
    message = str(err.value)
    assert "not an offline alias" in message and "not a local folder" in message and "hub" in message


def test_empty_name_is_refused():
    with pytest.raises(ModelNotFoundError):
        load_model("  ")


def test_local_folder_of_unsupported_architecture_is_refused_before_loading(tmp_path):
    from transformers import BertConfig

    BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError):
        load_model(str(tmp_path))


@pytest.mark.parametrize("kind", ["alias", "unknown", "empty", "bert folder", "empty folder", "tiny folder"])
def test_check_model_name_reads_no_weights(tmp_path, monkeypatch, default_tokenizer, kind):
    """What the command line checks before loading anything: the same verdicts as ``load_model``."""
    from transformers import BertConfig

    from adainfer_lib.model import loading
    from conftest import tiny_config

    monkeypatch.setattr(loading, "_load_pretrained", lambda *a, **k: pytest.fail("weights were loaded"))
    if kind == "bert folder":
        BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
            tmp_path)
    if kind == "tiny folder":
        tiny_config("llama", vocab_size=len(default_tokenizer)).save_pretrained(tmp_path)
    name = {"alias": "smollm2-135m", "unknown": "no-such-org/no-such-model-xyz", "empty": " "}.get(kind,
                                                                                                  str(tmp_path))
    error = {"unknown": ModelNotFoundError, "empty": ModelNotFoundError, "bert folder": UnsupportedArchitectureError,
             "empty folder": ModelNotFoundError}.get(kind)
    if error is None:
        assert loading.check_model_name(name) is None
    else:
        with pytest.raises(error, match="registry" if kind == "bert folder" else "(?i)model"):
            loading.check_model_name(name)


def test_local_folder_loads(tmp_path, tiny_model):
    tiny_model.hf_model.save_pretrained(tmp_path)
    tiny_model.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.n_layers == tiny_model.n_layers
    assert loaded.tokenizer.padding_side == "left"
    assert torch.equal(loaded.unembed.weight, tiny_model.unembed.weight)


def test_label_word_must_be_one_token(tiny_model):
    assert len(tiny_model.label_token_ids([" positive", " negative"], "Sentiment:")) == 2
    with pytest.raises(ValueError, match="exactly one"):
        tiny_model.label_token_ids([" supercalifragilistic"], "Sentiment:")


@pytest.mark.slow
def test_default_model_is_the_trained_model_its_description_promises(default_model):
    """``load_model()`` gives the model chapter 00 and the prose describe (the registry's description: layers,
    hidden size, vocabulary; float32 weights dequantized from the GGUF file), and the weights are trained and
    dequantized right: its greedy next token completes facts a 135M model knows."""
    import re

    from adainfer_lib.model.loading import DEFAULT_MODEL, OFFLINE_MODELS

    offline = OFFLINE_MODELS[DEFAULT_MODEL]
    layers, hidden, vocab = re.search(r"(\d+) layers, hidden (\d+), vocab ([\d,]+)", offline.description).groups()
    model = default_model
    assert model.n_layers == len(model.layers) == int(layers)
    assert model.hf_model.config.hidden_size == int(hidden)
    assert model.vocab_size == model.unembed.weight.shape[0] == len(model.tokenizer) == int(vocab.replace(",", ""))
    assert model.weights_note == offline.weights_note and "float32" in offline.weights_note
    assert {p.dtype for p in model.hf_model.parameters()} == {torch.float32}
    for text, word in [("The capital of France is", " Paris"), ("One, two, three, four,", " five"),
                       ("The opposite of hot is", " cold")]:
        ids = model.tokenizer(text, return_tensors="pt")
        top = model.hf_model(**ids).logits[0, -1].argmax()
        assert model.tokenizer.decode([int(top)]) == word, text
