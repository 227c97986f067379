"""Inputs refused before any training, each with a one-line ConfigError: a role fused into one matrix or
held outside linear modules (DeBERTa v1, Phi-3, Mixtral), a LoRA init whose saved adapter would not be the
trained model, several devices for one trial, and a max_seq_length past the model's position table."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from rank_sweep.config import LoraConfig, TrainerConfig
from rank_sweep.train.loading import WorkerCache, max_tokens
from rank_sweep.train.lora import _linear_modules, plan_targets, wrap
from tests.conftest import make_tiny_model, minilm_path
from tests.unit.test_config import error_of
from tests.unit.train.test_lora import LAYERS, build, expected_names

# ---------------------------------------------------------------------------- role maps


def test_deberta_v1_roles_name_its_own_modules_not_deberta_v2s():
    model = build("deberta")
    assert plan_targets(model, ["Wqkv"]).modules.keys() == expected_names("deberta", ["Wqkv"])
    assert all(shape == (32, 96) for shape in plan_targets(model, ["Wqkv"]).modules.values())  # q, k, v: 3 x 32
    plan = plan_targets(model, ["Wqkv", "Wo", "Wup", "Wdown"])
    assert not any("pos_" in n or n.startswith("pooler") for n in plan.modules)  # not roles: never adapted
    assert len(plan.modules) == 4 * LAYERS


def test_phi3_roles_name_the_fused_qkv_and_the_down_projection():
    plan = plan_targets(build("phi3"), ["Wqkv", "Wo", "Wdown"])
    shapes = {(plan.role_of[n], s) for n, s in plan.modules.items()}
    # 4 query heads of 8 + 2 x 2 key/value heads of 8 = 64; down: 64 -> 32
    assert shapes == {("Wqkv", (32, 64)), ("Wo", (32, 32)), ("Wdown", (64, 32))}


@pytest.mark.parametrize(("family", "role", "fused", "also"), [
    ("deberta", "Wq", "in_proj", "Wqkv"), ("deberta", "Wk", "in_proj", "Wqkv"), ("deberta", "Wv", "in_proj", "Wqkv"),
    ("phi3", "Wq", "qkv_proj", "Wqkv"), ("phi3", "Wk", "qkv_proj", "Wqkv"), ("phi3", "Wv", "qkv_proj", "Wqkv"),
    ("phi3", "Wup", "gate_up_proj", "Wgate"), ("phi3", "Wgate", "gate_up_proj", "Wup"),
    ("gpt2", "Wq", "c_attn", "Wqkv"),
])
def test_a_role_fused_with_others_names_the_fused_module(family, role, fused, also):
    msg = error_of(plan_targets, build(family), [role])
    assert f"role {role} cannot be adapted alone on {family}" in msg
    assert f"one matrix '{fused}'" in msg and f"module name {fused}" in msg and also in msg


def test_phi3_fused_messages_read_in_full():
    model = build("phi3")
    assert error_of(plan_targets, model, ["Wup"]) == (
        "lora.targets: role Wup cannot be adapted alone on phi3: it fuses Wgate and Wup into one matrix "
        "'gate_up_proj'; use the module name gate_up_proj")
    assert error_of(plan_targets, model, ["Wk"]) == (
        "lora.targets: role Wk cannot be adapted alone on phi3: it fuses Wq, Wk and Wv into one matrix "
        "'qkv_proj'; use the role Wqkv (or the module name qkv_proj)")


def test_the_module_names_the_fused_errors_suggest_do_resolve():
    for family, name in (("deberta", "in_proj"), ("phi3", "qkv_proj"), ("phi3", "gate_up_proj")):
        assert len(plan_targets(build(family), [name]).modules) == LAYERS


def test_mixtral_experts_are_not_linear_modules():
    model = build("mixtral")
    experts = model.get_submodule("model.layers.0.mlp.experts")
    assert not isinstance(experts, torch.nn.Linear) and experts.gate_up_proj.dim() == 3
    assert not any(".mlp." in n for n in _linear_modules(model))  # what makes Wup/Wdown/Wgate unreachable


@pytest.mark.parametrize("role", ["Wup", "Wdown", "Wgate"])
def test_mixtral_mlp_roles_say_the_experts_cannot_be_wrapped(role):
    msg = error_of(plan_targets, build("mixtral"), [role])
    assert msg == (f"lora.targets: role {role} cannot be adapted on mixtral: its MLP weights are per-expert 3-D "
                   f"parameters of 'mlp.experts' (transformers 5), not linear modules LoRA can wrap; adapt the "
                   f"attention roles Wq, Wk, Wv, Wo")


def test_mixtral_attention_roles_wrap():
    pm = wrap(build("mixtral"), LoraConfig(r=2, targets=["Wq", "Wk", "Wv", "Wo"]))
    with torch.no_grad():
        assert pm(input_ids=torch.randint(3, 100, (2, 5))).logits.shape == (2, 2)


# ---------------------------------------------------------------------------- lora.init


@pytest.mark.parametrize(("init", "why"), [
    ("pissa", "it rewrites the base weights, so the saved adapter would not reproduce the trained model on a "
              "fresh base"),
    ("olora", "it rewrites the base weights, so the saved adapter would not reproduce the trained model on a "
              "fresh base"),
    ("loftq", "it needs a quantized base model and a loftq_config, which rank_sweep does not pass"),
], ids=["pissa", "olora", "loftq"])
def test_inits_that_break_the_saved_adapter_are_refused(init, why):
    assert error_of(LoraConfig, init=init) == f"lora.init={init!r} is not supported: {why}; choose default or gaussian"


@pytest.mark.parametrize(("init", "peft_init"), [("default", True), ("gaussian", "gaussian")])
def test_supported_inits_reach_peft(init, peft_init):
    pm = wrap(build("bert"), LoraConfig(r=2, targets=["Wq"], init=init))
    assert pm.peft_config["default"].init_lora_weights == peft_init


# ---------------------------------------------------------------------------- trainer.devices


@pytest.mark.parametrize("devices", [1, "1", [0], [3]])
def test_one_device_is_accepted(devices):
    assert TrainerConfig(devices=devices).devices == devices


@pytest.mark.parametrize("devices", [2, 8, -1, 0, "auto", "2", "0,1", [0, 1], True, 1.5])
def test_several_or_unspecified_devices_are_refused(devices):
    assert error_of(TrainerConfig, devices=devices) == (
        f"trainer.devices={devices!r} is not valid: a trial runs on one device (its dev-set predictions are "
        f"scored in one process); run several workers on one study to use several devices (docs/scale_out.md)")


# ---------------------------------------------------------------------------- task.max_seq_length


def test_max_tokens_reads_the_position_table_and_the_tokenizer():
    tok = AutoTokenizer.from_pretrained(minilm_path())  # model_max_length 512
    common = dict(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    assert max_tokens(tok, BertForSequenceClassification(BertConfig(max_position_embeddings=64, **common))) == 64
    # RoBERTa's positions start after padding_idx=1: 66 rows hold 64 tokens
    roberta = RobertaForSequenceClassification(RobertaConfig(max_position_embeddings=66, pad_token_id=1, **common))
    assert max_tokens(tok, roberta) == 64
    big = BertForSequenceClassification(BertConfig(max_position_embeddings=1024, **common))
    assert max_tokens(tok, big) == 512  # the tokenizer's limit is the smaller
    tok.model_max_length = int(1e30)  # "no limit" sentinel of tokenizers that do not know theirs
    assert max_tokens(tok, big) == 1024


@pytest.fixture
def model_64(tmp_path):
    return make_tiny_model(tmp_path / "bert64")  # max_position_embeddings=64, MiniLM's tokenizer


def test_max_seq_length_past_the_model_limit_is_refused_at_load(toy_cfg, model_64):
    cfg = dataclasses.replace(toy_cfg, model=dataclasses.replace(toy_cfg.model, name_or_path=model_64))
    cache = WorkerCache()
    at_limit = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, max_seq_length=64))
    assert cache.tokenizer_and_model(at_limit)[1].config.max_position_embeddings == 64
    for too_long in (65, 100000):  # the second load hits the cache: it is checked there too
        bad = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, max_seq_length=too_long))
        assert error_of(cache.tokenizer_and_model, bad) == (
            f"task.max_seq_length={too_long} is not valid: model {model_64} takes at most 64 tokens; "
            f"set task.max_seq_length <= 64")
        assert error_of(WorkerCache().tokenizer_and_model, bad).startswith(f"task.max_seq_length={too_long} ")
