"""rank_sweep.lora on tiny random models built from configs (no hub access):
role -> module mapping per family, one-line ConfigErrors, exact parameter
counts against the closed form r * (d_in + d_out), alpha policies, merging."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DebertaConfig,
    DebertaForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    MixtralConfig,
    MixtralForSequenceClassification,
    Phi3Config,
    Phi3ForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from rank_sweep.config import LoraConfig
from rank_sweep.errors import ConfigError
from rank_sweep.train.groups import expand
from rank_sweep.train.lora import (
    FAMILY_OF,
    FAMILY_ROLES,
    ROLES,
    ParamCounts,
    check_rank_fits,
    count_parameters,
    family_of,
    merged_copy,
    num_params,
    plan_targets,
    wrap,
)

LAYERS = 2


def make_bert():
    return BertForSequenceClassification(
        BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=64)
    )


def make_roberta():
    return RobertaForSequenceClassification(
        RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    )


def make_deberta():
    return DebertaV2ForSequenceClassification(
        DebertaV2Config(vocab_size=100, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    )


def make_deberta_v1():
    # relative attention as in deberta-base: adds pos_proj / pos_q_proj, which no role may pick up
    return DebertaForSequenceClassification(
        DebertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, relative_attention=True,
                      pos_att_type=["c2p", "p2c"])
    )


def make_phi3():
    return Phi3ForSequenceClassification(
        Phi3Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                   bos_token_id=1, eos_token_id=2)
    )


def make_mixtral():
    return MixtralForSequenceClassification(
        MixtralConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      num_local_experts=2, num_experts_per_tok=1, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    )


def make_llama():
    # GQA: 4 query heads of size 8, 2 key/value heads -> k_proj, v_proj are 32 -> 16
    return LlamaForSequenceClassification(
        LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    )


def make_gpt2():
    return GPT2ForSequenceClassification(
        GPT2Config(vocab_size=100, n_embd=32, n_layer=LAYERS, n_head=2, n_positions=64,
                   pad_token_id=0, bos_token_id=1, eos_token_id=1)
    )


def make_distilbert():
    return DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=100, dim=32, n_layers=LAYERS, n_heads=2, hidden_dim=64, max_position_embeddings=64)
    )


_BERT_ROLES = {
    "Wq": "attention.self.query", "Wk": "attention.self.key", "Wv": "attention.self.value",
    "Wo": "attention.output.dense", "Wup": "intermediate.dense", "Wdown": "output.dense",
}
# family -> (factory, layer prefix, role -> module name inside a layer, head module names)
FAMILIES = {
    "bert": (make_bert, "bert.encoder.layer.{i}.", _BERT_ROLES, ["classifier"]),
    "roberta": (make_roberta, "roberta.encoder.layer.{i}.", _BERT_ROLES, ["classifier"]),
    "deberta-v2": (make_deberta, "deberta.encoder.layer.{i}.", {
        "Wq": "attention.self.query_proj", "Wk": "attention.self.key_proj", "Wv": "attention.self.value_proj",
        "Wo": "attention.output.dense", "Wup": "intermediate.dense", "Wdown": "output.dense",
    }, ["classifier"]),
    "deberta": (make_deberta_v1, "deberta.encoder.layer.{i}.", {
        "Wqkv": "attention.self.in_proj", "Wo": "attention.output.dense", "Wup": "intermediate.dense",
        "Wdown": "output.dense",
    }, ["classifier"]),
    "phi3": (make_phi3, "model.layers.{i}.", {
        "Wqkv": "self_attn.qkv_proj", "Wo": "self_attn.o_proj", "Wdown": "mlp.down_proj",
    }, ["score"]),
    "mixtral": (make_mixtral, "model.layers.{i}.", {
        "Wq": "self_attn.q_proj", "Wk": "self_attn.k_proj", "Wv": "self_attn.v_proj", "Wo": "self_attn.o_proj",
    }, ["score"]),
    "llama": (make_llama, "model.layers.{i}.", {
        "Wq": "self_attn.q_proj", "Wk": "self_attn.k_proj", "Wv": "self_attn.v_proj", "Wo": "self_attn.o_proj",
        "Wup": "mlp.up_proj", "Wdown": "mlp.down_proj", "Wgate": "mlp.gate_proj",
    }, ["score"]),
    "gpt2": (make_gpt2, "transformer.h.{i}.", {
        "Wqkv": "attn.c_attn", "Wo": "attn.c_proj", "Wup": "mlp.c_fc", "Wdown": "mlp.c_proj",
    }, ["score"]),
    "distilbert": (make_distilbert, "distilbert.transformer.layer.{i}.", {
        "Wq": "attention.q_lin", "Wk": "attention.k_lin", "Wv": "attention.v_lin", "Wo": "attention.out_lin",
        "Wup": "ffn.lin1", "Wdown": "ffn.lin2",
    }, ["classifier", "pre_classifier"]),
}


def build(family: str) -> nn.Module:
    torch.manual_seed(0)
    return FAMILIES[family][0]()


def expected_names(family: str, targets: list[str]) -> set[str]:
    _, prefix, roles, _ = FAMILIES[family]
    targets = expand(targets, FAMILY_ROLES[FAMILY_OF[family]], family)[0]  # groups (mlp, ...) as the role map has them
    return {prefix.format(i=i) + roles[t] for t in targets for i in range(LAYERS)}


def closed_form(model: nn.Module, names: set[str], r: int) -> int:
    """sum over adapted matrices of r * (d_in + d_out), read off the weights themselves
    (nn.Linear stores (out, in), GPT-2's Conv1D (in, out): the sum is the same)."""
    return sum(r * sum(model.get_submodule(n).weight.shape) for n in names)


def head_numel(model: nn.Module, family: str) -> int:
    return sum(p.numel() for h in FAMILIES[family][3] for p in getattr(model, h).parameters())


def lora_layers(peft_model) -> dict[str, nn.Module]:
    """Wrapped model's LoRA layers by base-model module name."""
    out = {}
    for name, module in peft_model.named_modules():
        if isinstance(getattr(module, "lora_A", None), nn.ModuleDict) and "default" in module.lora_A:
            out[name.removeprefix("base_model.model.")] = module
    return out


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------- role mapping


ROLE_CASES = [(fam, role) for fam, spec in FAMILIES.items() for role in spec[2]]


@pytest.mark.parametrize(("family", "role"), ROLE_CASES, ids=[f"{f}-{r}" for f, r in ROLE_CASES])
def test_role_resolves_to_one_module_per_layer(family, role):
    model = build(family)
    plan = plan_targets(model, [role])
    assert set(plan.modules) == expected_names(family, [role])
    assert len(plan.modules) == LAYERS
    assert set(plan.role_of.values()) == {role}
    for name, (d_in, d_out) in plan.modules.items():
        assert sum(model.get_submodule(name).weight.shape) == d_in + d_out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_all_roles_of_a_family_resolve_to_distinct_modules(family):
    model = build(family)
    roles = list(FAMILIES[family][2])
    plan = plan_targets(model, roles)
    assert set(plan.modules) == expected_names(family, roles)
    assert len(plan.modules) == LAYERS * len(roles)
    # the classification head is never a LoRA target
    assert not any(n.split(".")[0] in FAMILIES[family][3] for n in plan.modules)


def test_family_detection_and_the_family_role_table_agree():
    assert set(FAMILY_ROLES["bert"]) == set(_BERT_ROLES)
    assert family_of(build("roberta")) == "bert"
    assert family_of(build("deberta-v2")) == "deberta-v2"
    assert family_of(build("llama")) == "llama"
    assert family_of(build("gpt2")) == "gpt2"
    assert family_of(build("distilbert")) == "distilbert"
    for fam in ("deberta", "phi3", "mixtral"):  # each has its own map, not a look-alike's
        assert family_of(build(fam)) == fam
        assert set(FAMILY_ROLES[fam]) == set(FAMILIES[fam][2])


def test_llama_gqa_key_value_are_smaller_than_query():
    plan = plan_targets(build("llama"), ["Wq", "Wk", "Wv"])
    shapes = {plan.role_of[n]: s for n, s in plan.modules.items()}
    assert shapes["Wq"] == (32, 32)
    assert shapes["Wk"] == shapes["Wv"] == (32, 16)  # (d_in, d_out)


@pytest.mark.parametrize(
    ("family", "targets", "suffixes"),
    [
        ("bert", ["query", "value"], ["attention.self.query", "attention.self.value"]),
        ("bert", ["attention.self.query"], ["attention.self.query"]),
        ("roberta", ["query"], ["attention.self.query"]),
        ("llama", ["q_proj"], ["self_attn.q_proj"]),
        ("llama", ["q_proj", "Wv"], ["self_attn.q_proj", "self_attn.v_proj"]),
        ("gpt2", ["c_attn"], ["attn.c_attn"]),
    ],
)
def test_explicit_module_names_match_as_dotted_suffix(family, targets, suffixes):
    model = build(family)
    plan = plan_targets(model, targets)
    prefix = FAMILIES[family][1]
    assert set(plan.modules) == {prefix.format(i=i) + s for s in suffixes for i in range(LAYERS)}
    assert set(plan.role_of.values()) == set(targets)


def test_explicit_name_is_a_whole_dotted_suffix_not_a_substring():
    # "query" must not pick up DeBERTa's query_proj, nor "proj" Llama's q_proj
    with pytest.raises(ConfigError):
        plan_targets(build("deberta-v2"), ["query"])
    with pytest.raises(ConfigError):
        plan_targets(build("llama"), ["proj"])


def test_explicit_names_work_without_a_role_map():
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    plan = plan_targets(model, ["0"])
    assert plan.modules == {"0": (8, 4)}
    with pytest.raises(ConfigError) as err:
        plan_targets(model, ["Wq"])
    assert "model.family" in one_line(err)


# ---------------------------------------------------------------------------- GPT-2 fused qkv


@pytest.mark.parametrize("role", ["Wq", "Wk", "Wv"])
def test_gpt2_single_projection_role_explains_the_fused_c_attn(role):
    with pytest.raises(ConfigError) as err:
        plan_targets(build("gpt2"), [role])
    msg = one_line(err)
    assert "c_attn" in msg and "Wqkv" in msg and role in msg


def test_gpt2_wqkv_wraps_conv1d_with_fan_in_fan_out():
    model = build("gpt2")
    base_total = num_params(model)
    r = 4
    expected = closed_form(model, expected_names("gpt2", ["Wqkv"]), r)
    pm = wrap(model, LoraConfig(r=r, targets=["Wqkv"]))
    assert pm.peft_config["default"].fan_in_fan_out is True
    layers = lora_layers(pm)
    assert set(layers) == expected_names("gpt2", ["Wqkv"])
    for layer in layers.values():
        assert tuple(layer.lora_A["default"].weight.shape) == (r, 32)
        assert tuple(layer.lora_B["default"].weight.shape) == (96, r)  # q, k, v fused: 3 x 32
    assert count_parameters(pm, base_total).lora_params == expected == 2 * r * (32 + 96)
    pm.eval()
    with torch.no_grad():
        logits = pm(input_ids=torch.randint(1, 100, (2, 6))).logits
    assert logits.shape == (2, 2)


# ---------------------------------------------------------------------------- one-line errors


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_unknown_role_lists_the_valid_roles(family):
    with pytest.raises(ConfigError) as err:
        plan_targets(build(family), ["Wx"])
    msg = one_line(err)
    assert "'Wx'" in msg
    assert all(role in msg for role in ROLES)


def test_module_name_matching_nothing_lists_the_linear_modules():
    with pytest.raises(ConfigError) as err:
        plan_targets(build("bert"), ["q_proj"])
    msg = one_line(err)
    assert "'q_proj'" in msg
    for name in ("attention.self.query", "attention.self.value", "intermediate.dense", "output.dense"):
        assert name in msg
    assert "classifier" not in msg  # the head is not a candidate target
    with pytest.raises(ConfigError) as err:
        plan_targets(build("llama"), ["query"])
    assert "q_proj" in one_line(err) and "gate_proj" in str(err.value)


@pytest.mark.parametrize(("family", "role"), [("bert", "Wgate"), ("distilbert", "Wgate"), ("bert", "Wqkv"),
                                              ("llama", "Wqkv"), ("gpt2", "Wgate")])
def test_role_the_family_lacks_names_the_valid_roles(family, role):
    with pytest.raises(ConfigError) as err:
        plan_targets(build(family), [role])
    msg = one_line(err)
    assert role in msg
    for valid in FAMILIES[family][2]:
        assert valid in msg


@pytest.mark.parametrize("bad", ["", None, 3])
def test_non_string_or_empty_target_is_rejected(bad):
    with pytest.raises(ConfigError) as err:
        plan_targets(build("bert"), ["Wq", bad])
    assert repr(bad) in one_line(err)


@pytest.mark.parametrize(
    ("family", "targets", "limit"),
    [("bert", ["Wq", "Wup"], 32), ("llama", ["Wq", "Wk"], 16), ("llama", ["Wv"], 16), ("gpt2", ["Wqkv"], 32)],
)
def test_rank_larger_than_the_smallest_matrix_names_the_limit(family, targets, limit):
    model = build(family)
    plan = plan_targets(model, targets)
    check_rank_fits(plan, limit)  # the limit itself fits
    with pytest.raises(ConfigError) as err:
        check_rank_fits(plan, limit + 1)
    msg = one_line(err)
    assert f"lora.r={limit + 1}" in msg and f"at most {limit}" in msg
    with pytest.raises(ConfigError):
        wrap(model, LoraConfig(r=limit + 1, targets=targets))


# ---------------------------------------------------------------------------- parameter counts


TARGET_SETS = {
    "bert": [["Wq"], ["Wq", "Wv"], ["Wq", "Wk", "Wv", "Wo", "Wup", "Wdown"], ["mlp"], ["all_linear"], ["qv"]],
    "roberta": [["Wq", "Wv"], ["Wup", "Wdown"]],
    "deberta-v2": [["Wq", "Wv"], ["Wq", "Wk", "Wv", "Wo"]],
    "llama": [["Wq", "Wv"], ["Wk", "Wv"], ["Wq", "Wk", "Wv", "Wo", "Wup", "Wdown", "Wgate"], ["mlp"], ["all_linear"],
              ["attention"], ["Wq", "mlp"]],
    "gpt2": [["Wqkv"], ["Wqkv", "Wo", "Wup", "Wdown"], ["attention"], ["all_linear"]],
    "distilbert": [["Wq", "Wv"], ["Wo", "Wup", "Wdown"]],
    "deberta": [["Wqkv"], ["Wqkv", "Wo", "Wup", "Wdown"]],
    "phi3": [["Wqkv"], ["Wqkv", "Wo", "Wdown"]],
    "mixtral": [["Wq", "Wv"], ["Wq", "Wk", "Wv", "Wo"]],
}
COUNT_CASES = [(fam, r, ts) for fam, sets in TARGET_SETS.items() for ts in sets for r in (1, 2, 8)]


@pytest.mark.parametrize(
    ("family", "r", "targets"), COUNT_CASES, ids=[f"{f}-r{r}-{'+'.join(t)}" for f, r, t in COUNT_CASES]
)
def test_counts_match_the_closed_form(family, r, targets):
    model = build(family)
    names = expected_names(family, targets)
    base_total = num_params(model)
    expected_lora = closed_form(model, names, r)
    expected_head = head_numel(model, family)
    plan = plan_targets(model, targets)

    pm = wrap(model, LoraConfig(r=r, targets=targets), plan=plan)
    counts = count_parameters(pm, base_total)

    assert set(lora_layers(pm)) == names
    assert counts.lora_params == expected_lora == plan.lora_params(r)
    assert counts.head_params == expected_head  # once, not the frozen copy as well
    assert counts.trainable_params == expected_lora + expected_head
    assert counts.trainable_params == sum(p.numel() for p in pm.parameters() if p.requires_grad)
    assert counts.total_params == base_total
    assert counts.trainable_pct == pytest.approx(100.0 * (expected_lora + expected_head) / base_total)
    assert 0 < counts.trainable_pct < 100
    metrics = counts.as_metrics()
    assert metrics["lora_params"] == expected_lora and metrics["trainable_pct"] == counts.trainable_pct


@pytest.mark.parametrize(("family", "group", "roles", "note"), [
    ("bert", "mlp", ("Wup", "Wdown"), "mlp on bert: no Wgate in its role map, so mlp is Wup,Wdown"),
    ("llama", "mlp", ("Wup", "Wdown", "Wgate"), None),
    ("llama", "all_linear", ("Wq", "Wk", "Wv", "Wo", "Wup", "Wdown", "Wgate"), None),
    ("gpt2", "attention", ("Wqkv", "Wo"), None),  # q, k and v fused: the group adapts c_attn whole
    ("phi3", "mlp", ("Wdown",), "mlp on phi3: no Wup, Wgate in its role map, so mlp is Wdown"),
])
def test_groups_resolve_to_the_roles_the_family_has(family, group, roles, note):
    plan = plan_targets(build(family), [group])
    assert plan.targets == roles and plan.notes == (() if note is None else (note,))


def test_a_group_the_family_has_no_role_of_is_refused():
    with pytest.raises(ConfigError, match="Wup cannot be adapted on mixtral"):
        plan_targets(build("mixtral"), ["mlp"])
    with pytest.raises(ConfigError, match="Wq cannot be adapted alone on gpt2"):
        plan_targets(build("gpt2"), ["qv"])


def test_llama_gqa_key_value_counts_use_their_own_d_out():
    model = build("llama")
    base_total = num_params(model)
    pm = wrap(model, LoraConfig(r=2, targets=["Wk", "Wv"]))
    # 2 layers x 2 matrices x r * (32 + 16): a square d x d formula (2dr) would say 512
    assert count_parameters(pm, base_total).lora_params == 2 * 2 * 2 * (32 + 16) == 384
    for layer in lora_layers(pm).values():
        assert tuple(layer.lora_B["default"].weight.shape) == (16, 2)


def test_param_counts_percent():
    counts = ParamCounts(lora_params=10, head_params=30, trainable_params=40, total_params=400)
    assert counts.trainable_pct == pytest.approx(10.0)
    assert counts.as_metrics()["total_params"] == 400


def test_only_lora_and_head_are_trainable():
    model = build("bert")
    pm = wrap(model, LoraConfig(r=2, targets=["Wq", "Wv"]))
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable
    for n in trainable:
        assert "lora_" in n or ".classifier.modules_to_save." in n, n


# ---------------------------------------------------------------------------- alpha policies


@pytest.mark.parametrize(
    ("policy", "r", "expected"),
    [
        ("scaled", 1, 2.0), ("scaled", 4, 2.0), ("scaled", 16, 2.0),  # alpha = 2r: alpha/r = 2
        ("fixed", 1, 16.0), ("fixed", 4, 4.0), ("fixed", 16, 1.0),  # alpha = 16: 16/r
        ("rslora", 1, 16.0), ("rslora", 4, 8.0), ("rslora", 16, 4.0),  # 16/sqrt(r)
    ],
)
def test_peft_scaling_follows_the_alpha_policy(policy, r, expected):
    cfg = LoraConfig(r=r, targets=["Wq", "Wv"], alpha_policy=policy, alpha=16.0, alpha_k=2.0)
    pm = wrap(build("bert"), cfg)
    layers = lora_layers(pm)
    assert layers
    denominator = math.sqrt(r) if policy == "rslora" else r
    for layer in layers.values():
        assert layer.scaling["default"] == pytest.approx(expected)
        assert layer.scaling["default"] == pytest.approx(cfg.lora_alpha / denominator)
        assert layer.scaling["default"] == pytest.approx(cfg.scale)
    assert pm.peft_config["default"].use_rslora is (policy == "rslora")
    assert pm.peft_config["default"].lora_alpha == cfg.lora_alpha


# ---------------------------------------------------------------------------- merging


@pytest.mark.parametrize("family", list(FAMILIES))
def test_merged_and_unmerged_outputs_agree(family):
    model = build(family)
    roles = list(FAMILIES[family][2])
    pm = wrap(model, LoraConfig(r=4, targets=roles, dropout=0.1))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)  # B starts at zero: make the update non-zero
    pm.eval()
    ids = torch.randint(1, 100, (3, 7))
    with torch.no_grad():
        unmerged = pm(input_ids=ids).logits
        with pm.disable_adapter():
            base = pm(input_ids=ids).logits
        merged_model = merged_copy(pm)
        merged_model.eval()
        merged = merged_model(input_ids=ids).logits
    assert unmerged.dtype == torch.float32
    assert not torch.allclose(unmerged, base, atol=1e-4)  # the adapter does change the output
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    assert not lora_layers(merged_model)  # merged: no adapter left
    assert lora_layers(pm)  # and the original was not merged in place
