"""model.hooks: the one hook mechanism on the decoder layers (registered, called, always removed)."""

from __future__ import annotations

import pytest
import torch

from adainfer_lib.model.hooks import (
    StopForward,
    decoder_hooks,
    layer_input,
    layer_output,
    residual_states,
    with_input,
)
from conftest import make_tiny_model

PROMPT = "The movie was wonderful and the acting"


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request, default_tokenizer):
    """Llama passes the hidden states as a keyword-less first argument and returns a tensor; GPT-2 passes the
    mask positionally: both call conventions."""
    return make_tiny_model(request.param, default_tokenizer)


def _ids(model):
    return model.tokenizer(PROMPT, return_tensors="pt")


def _no_hooks_left(model) -> bool:
    return all(not layer._forward_hooks and not layer._forward_pre_hooks and "forward" not in layer.__dict__
               for layer in model.layers)


def test_helpers_read_both_call_conventions():
    h = torch.ones(1, 2, 3)
    assert layer_input((h, "mask"), {}) is h and layer_input((), {"hidden_states": h}) is h
    assert layer_output(h) is h and layer_output((h, None)) is h
    g = torch.zeros(1, 2, 3)
    assert with_input((h, "mask"), {"x": 1}, g) == ((g, "mask"), {"x": 1})
    args, kwargs = with_input((), {"hidden_states": h, "x": 1}, g)
    assert args == () and kwargs["hidden_states"] is g and kwargs["x"] == 1
    with pytest.raises(KeyError):
        layer_input((), {})


def test_hooks_see_every_layer_in_order_and_are_removed(model):
    calls = []
    with decoder_hooks(model, before=lambda i, a, k: calls.append(("before", i, tuple(layer_input(a, k).shape))),
                       after=lambda i, a, k, out: calls.append(("after", i, tuple(layer_output(out).shape)))):
        model.hf_model(**_ids(model))
    L, shape = model.n_layers, tuple(calls[0][2])
    assert [c[:2] for c in calls] == [(kind, i) for i in range(L) for kind in ("before", "after")]
    assert {c[2] for c in calls} == {shape}
    assert _no_hooks_left(model)


def test_hooks_are_removed_on_an_exception(model):
    def stop(index, _args, _kwargs, _output):
        if index == 1:
            raise StopForward

    seen = []
    with pytest.raises(StopForward):
        with decoder_hooks(model, before={0: lambda i, a, k: seen.append(i)}, after=stop,
                           bypass={2: lambda i, a, k: None}):
            model.hf_model(**_ids(model))
    assert seen == [0] and _no_hooks_left(model)
    with pytest.raises(RuntimeError, match="inside"):
        with decoder_hooks(model, after=stop):
            raise RuntimeError("inside the block")
    assert _no_hooks_left(model)


def test_before_and_after_change_what_the_layer_sees_and_returns(model):
    ids = _ids(model)
    with residual_states(model, lambda h: h[0, -1].clone()) as plain:
        reference = model.hf_model(**ids).logits
    # a pre-hook that doubles layer 1's input changes everything after it; a forward hook that returns its
    # input makes layer 2 the identity
    with decoder_hooks(model, before={1: lambda i, a, k: with_input(a, k, 2 * layer_input(a, k))}), \
            residual_states(model, lambda h: h[0, -1].clone()) as doubled:
        model.hf_model(**ids)
    torch.testing.assert_close(doubled[1], plain[1])
    assert not torch.allclose(doubled[2], plain[2])
    with decoder_hooks(model, after={2: lambda i, a, k, out: layer_input(a, k) if torch.is_tensor(out)
                                     else (layer_input(a, k), *out[1:])}), \
            residual_states(model, lambda h: h[0, -1].clone()) as identity:
        changed = model.hf_model(**ids).logits
    torch.testing.assert_close(identity[3], identity[2])
    assert not torch.allclose(changed, reference)
    assert len(plain) == model.n_layers + 1 and _no_hooks_left(model)


def test_bypass_skips_the_layer_and_restores_its_forward(model):
    ran = []
    layer = model.layers[1]
    own = layer.forward  # an instance attribute, as accelerate installs one: it must be put back

    def wrapped(*args, **kwargs):
        ran.append(1)
        return own(*args, **kwargs)

    layer.forward = wrapped
    try:
        with residual_states(model, lambda h: h[0, -1].clone()) as states, \
                decoder_hooks(model, bypass={1: lambda i, a, k: layer_input(a, k)}):
            model.hf_model(**_ids(model))
        assert ran == [] and torch.equal(states[2], states[1])  # layer 1 did not run: its output is its input
        assert layer.__dict__["forward"] is wrapped
        with decoder_hooks(model, bypass=lambda i, a, k: None):  # None: the layer runs
            model.hf_model(**_ids(model))
        assert ran == [1] and layer.__dict__["forward"] is wrapped
    finally:
        del layer.forward
    assert _no_hooks_left(model)


def test_bad_hook_arguments(model):
    with pytest.raises(ValueError, match="not in 0.."):
        with decoder_hooks(model, after={model.n_layers: lambda *a: None}):
            pass
    with pytest.raises(TypeError, match="callable or a mapping"):
        with decoder_hooks(model, before=[lambda *a: None]):
            pass
    assert _no_hooks_left(model)
