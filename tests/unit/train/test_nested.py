"""train.nested (issue #15): the masks on PEFT's LoRA factors make rank b of an r_max adapter exactly an ordinary
rank-b PEFT adapter (truncated weights, scale of the chosen mode); frozen mode passes no gradient to the
components below b - 1; the ranks a screen trains are drawn from the ladder only."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from transformers import BertConfig, BertForSequenceClassification

from rank_sweep.config import LoraConfig
from rank_sweep.train import nested


def tiny(seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(cfg).eval()


def adapter(base, r, alpha):
    model = get_peft_model(base, PeftLoraConfig(r=r, lora_alpha=alpha, target_modules=["query", "value"],
                                                lora_dropout=0.0, modules_to_save=["classifier"]))
    for layer in nested.lora_layers(model):
        torch.nn.init.normal_(layer.lora_B["default"].weight)  # B starts at zero in PEFT: make the update visible
    return model.eval()


BATCH = {"input_ids": torch.randint(0, 50, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.long)}


@pytest.mark.parametrize("policy, scale", [("scaled", "policy"), ("scaled", "dylora"), ("fixed", "policy"),
                                           ("rslora", "policy")])
def test_rank_b_of_the_masked_adapter_is_an_ordinary_rank_b_peft_adapter(policy, scale):
    r_max, b = 8, 2
    lora_cfg = LoraConfig(r=r_max, alpha_policy=policy, alpha=16.0, alpha_k=2.0)
    big = adapter(tiny(), r_max, lora_cfg.lora_alpha)
    if policy == "rslora":
        for layer in nested.lora_layers(big):
            layer.scaling["default"] = lora_cfg.lora_alpha / r_max ** 0.5
    cb = nested.NestedRanks([1, 2, 4, 8], lora_cfg, scale=scale)
    state = nested.attach(big, r_max, cb.factor)
    state.b = b
    got = big(**BATCH).logits
    weights = nested.truncated_state(big, b, cb.factor(b))
    small = adapter(tiny(), b, nested.scale_at(lora_cfg, r_max) * b)  # PEFT scaling alpha / b = the big one's
    small.load_state_dict({**small.state_dict(), **_peft_keys(small, weights)})
    small.base_model.model.classifier.load_state_dict(big.base_model.model.classifier.state_dict())
    assert torch.allclose(got, small(**BATCH).logits, atol=1e-5)
    state.b = r_max  # at r_max the masks change nothing
    nested.detach(big)
    assert not any(torch.nn.utils.parametrize.is_parametrized(layer.lora_A["default"])
                   for layer in nested.lora_layers(big))
    if scale == "policy" and policy == "scaled":
        assert cb.factor(b) == pytest.approx(1.0)  # alpha = alpha_k r: every rank at the same scale
    if scale == "dylora":
        assert cb.factor(b) == pytest.approx(r_max / b)


def _peft_keys(model, weights):
    keys = model.state_dict().keys()
    out = {}
    for name, w in weights.items():
        tail = name.split("base_model.model.", 1)[-1]
        match = [k for k in keys if k.endswith(tail)]
        assert len(match) == 1, (name, match)
        out[match[0]] = w
    return out


def test_frozen_mode_passes_no_gradient_below_b_minus_one():
    lora_cfg = LoraConfig(r=8)
    model = adapter(tiny(), 8, lora_cfg.lora_alpha).train()
    state = nested.attach(model, 8, lambda b: 1.0, frozen=True)
    state.b = 4
    model(**BATCH).logits.sum().backward()
    layer = nested.lora_layers(model)[0]
    grad_a = layer.lora_A["default"].parametrizations.weight.original.grad
    grad_b = layer.lora_B["default"].parametrizations.weight.original.grad
    assert torch.all(grad_a[:3] == 0) and torch.any(grad_a[3] != 0) and torch.all(grad_a[4:] == 0)
    assert torch.all(grad_b[:, :3] == 0) and torch.any(grad_b[:, 3] != 0) and torch.all(grad_b[:, 4:] == 0)


def test_a_screen_draws_only_the_ladders_ranks_and_is_seeded():
    draws = []
    for _ in range(2):
        cb = nested.NestedRanks([1, 2, 4, 8], LoraConfig(r=8), seed=3)
        cb.state = nested.attach(adapter(tiny(), 8, 16.0), 8, cb.factor)
        for i in range(400):
            cb.on_train_batch_start(None, None, None, i)
        draws.append(cb.drawn)
    assert draws[0] == draws[1] and set(draws[0]) == {1, 2, 4, 8}
    assert min(draws[0].count(b) for b in (1, 2, 4, 8)) > 70  # uniform over the ladder: about 100 each


def test_a_model_without_lora_layers_is_refused():
    with pytest.raises(ValueError, match="needs a PEFT LoRA adapter"):
        nested.attach(tiny(), 8, lambda b: 1.0)
    with pytest.raises(ValueError, match="scale='half'"):
        nested.NestedRanks([1, 2], LoraConfig(r=2), scale="half")
