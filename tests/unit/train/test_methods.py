"""Reference methods (rank_sweep.config.method, rank_sweep.train.methods) on tiny models built from configs:
one-line ConfigErrors for bad settings and misfits, exact counts against PEFT's own, the head counted once,
each method's adapter changes in a training step, AdaLoRA's allocator, the trial's params."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from rank_sweep.commands.overrides import check_overrides
from rank_sweep.config import METHODS, MethodConfig, RunConfig, TrainerConfig, method_size
from rank_sweep.errors import ConfigError
from rank_sweep.train.lora import count_parameters, num_params
from rank_sweep.train.methods import (
    AdaLoraAllocator,
    check_method_fits,
    method_callbacks,
    peft_config,
    rank_pattern,
    record_method,
    total_steps,
    wrap_method,
)

CONF = Path(__file__).resolve().parents[3] / "conf"
SMALL = {  # small settings for 32-wide, 2-layer models
    "ia3": {},
    "prefix_tuning": {"num_virtual_tokens": 5},
    "prompt_tuning": {"num_virtual_tokens": 5},
    "adalora": {"init_r": 4, "target_r": 2},
}


def make_bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64,
                                                    max_position_embeddings=64))


def make_roberta():
    torch.manual_seed(0)
    return RobertaForSequenceClassification(RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                          num_attention_heads=2, intermediate_size=64,
                                                          max_position_embeddings=64, pad_token_id=0))


def make_distilbert():
    torch.manual_seed(0)
    return DistilBertForSequenceClassification(DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2,
                                                                hidden_dim=64, max_position_embeddings=64))


def batch(n=4, length=7):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (n, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1] * (n // 2))}


# --- config -------------------------------------------------------------------------------------------------


def test_every_method_has_an_option_file_with_each_setting_explained():
    # and full, head: full fine-tuning and the head alone as options of the group (tests/unit/test_point.py)
    assert {p.stem for p in (CONF / "method").glob("*.yaml")} == set(METHODS) | {"full", "head"}
    for name in METHODS:
        text = (CONF / "method" / f"{name}.yaml").read_text()
        assert yaml.safe_load(text)["name"] == name
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("  ") and not line.lstrip().startswith("#"):  # a setting
                assert lines[i - 1].lstrip().startswith("#"), f"{name}.yaml: no comment above {line.strip()!r}"


@pytest.mark.parametrize("name", METHODS)
def test_python_and_hydra_build_the_same_method(name):
    from hydra import compose, initialize_config_dir

    from rank_sweep.config import build_config

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = build_config(compose("config", overrides=[f"method={name}"]))
    assert cfg.method == MethodConfig(name=name)  # the option file is the one home of a method's defaults


@pytest.mark.parametrize("name, settings, message", [
    ("dora", {}, "method.name='dora' is not valid: choose one of lora, ia3, prefix_tuning, prompt_tuning, adalora"),
    ("lora", {"r": 4}, "is not valid for method=lora: LoRA's settings live in the lora section"),
    ("ia3", {"r": 4}, "method.settings.r is not a setting of ia3: valid settings are exclude_modules, "),
    ("prompt_tuning", {"init_r": 4}, "method.settings.init_r is not a setting of prompt_tuning: valid settings are "),
    ("ia3", {"target_modules": ["query"]}, "method.settings.target_modules cannot be set for ia3: give "
                                           "method.settings.targets"),
    ("adalora", {"total_step": 10}, "method.settings.total_step cannot be set for adalora: the trial computes it"),
    ("adalora", {"task_type": "CAUSAL_LM"}, "method.settings.task_type cannot be set for adalora: rank_sweep sets it"),
    ("prefix_tuning", {"modules_to_save": ["x"]}, "the classification head is always trained in full"),
    ("adalora", {"r": 4}, "method.settings.r is not used by adalora: set init_r"),
    ("adalora", {"init_r": 8, "target_r": 8}, "method.settings.target_r=8 is not valid for adalora: it must be below "
                                              "init_r=8"),
    ("adalora", {"init_r": 0}, "method.settings.init_r=0 is not valid for adalora: it must be an integer >= 1"),
    ("adalora", {"tinit": -1}, "method.settings.tinit=-1 is not valid for adalora: it must be an integer >= 0"),
    ("adalora", {"targets": []}, "method.settings.targets=[] is not valid: give roles or module names"),
    ("prompt_tuning", {"num_virtual_tokens": 0}, "num_virtual_tokens=0 is not valid for prompt_tuning"),
    ("prefix_tuning", {"num_virtual_tokens": None}, "method.settings.num_virtual_tokens is required for prefix_tuning"),
    ("ia3", {"feedforward_targets": ["Wdown"]}, "method.settings.feedforward_targets needs method.settings.targets"),
    ("ia3", {"targets": ["Wk"], "feedforward_targets": ["Wdown"]}, "feedforward_targets: Wdown is not among"),
])
def test_bad_method_config_is_one_line(name, settings, message):
    with pytest.raises(ConfigError) as err:
        MethodConfig(name=name, settings=settings)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_settings_fill_from_the_option_file_and_targets_split():
    m = MethodConfig(name="adalora", settings={"targets": "Wq,Wk", "target_r": 4})
    assert m.settings["targets"] == ["Wq", "Wk"] and m.settings["target_r"] == 4
    assert m.settings["init_r"] == 12  # from conf/method/adalora.yaml


@pytest.mark.parametrize("name, settings, size", [
    ("ia3", {}, 0), ("prompt_tuning", {}, 20), ("prompt_tuning", {"num_virtual_tokens": 8}, 8),
    ("prefix_tuning", {}, 20), ("adalora", {}, 8), ("adalora", {"target_r": 4}, 4),
])
def test_method_size(name, settings, size):
    assert method_size(MethodConfig(name=name, settings=settings)) == size


def test_lora_has_no_method_size():
    with pytest.raises(ValueError, match="lora.r"):
        method_size(MethodConfig())


def test_config_stays_light_until_a_reference_method_is_checked():
    code = ("import sys; from rank_sweep.config import MethodConfig, RunConfig; RunConfig(); MethodConfig(); "
            "print('peft' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_command_line_settings_reach_hydra_as_additions():
    out, notes = check_overrides(["method=adalora", "method.settings.beta1=0.9", "~method.settings.targets",
                                  "++method.settings.tinit=1"], "config")
    assert out == ["method=adalora", "++method.settings.beta1=0.9", "~method.settings.targets",
                   "++method.settings.tinit=1"] and notes == []


# --- counts and training ------------------------------------------------------------------------------------


HEAD = {"bert": 2 * 32 + 2, "roberta": (32 * 32 + 32) + (32 * 2 + 2)}  # RoBERTa's head: dense + out_proj
ADAPTER = {  # closed forms on the 2-layer, 32-wide models (intermediate 64)
    "ia3": 2 * (32 + 32 + 32 + 64),  # key, value (outputs); attention.output.dense, output.dense (inputs)
    "prefix_tuning": 5 * 2 * 2 * 32,  # tokens x layers x (key, value) x hidden
    "prompt_tuning": 5 * 32,
    "adalora": 2 * 2 * (4 * (32 + 32) + 4),  # layers x (Wq, Wv) x (A, B and E at init_r = 4)
}


@pytest.mark.parametrize("family, make", [("bert", make_bert), ("roberta", make_roberta)])
@pytest.mark.parametrize("name", SMALL)
def test_counts_equal_pefts_and_the_head_is_counted_once(name, family, make):
    base = make()
    model = wrap_method(base, MethodConfig(name=name, settings=SMALL[name]), None, total_steps=10)
    counts = count_parameters(model, num_params(make()))
    assert counts.trainable_params == model.get_nb_trainable_parameters()[0]
    assert counts.head_params == HEAD[family]
    assert counts.lora_params == ADAPTER[name]
    assert counts.trainable_params == counts.lora_params + counts.head_params


@pytest.mark.parametrize("name", ["ia3", "prompt_tuning", "adalora"])
def test_each_method_trains_its_adapter_and_the_head_only(name):
    model = wrap_method(make_bert(), MethodConfig(name=name, settings=SMALL[name]), None, total_steps=10)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    loss = model(**batch()).loss
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any("modules_to_save" in n for n in changed), "the head trains"
    adapter = {n for n in changed if "modules_to_save" not in n}
    marker = {"ia3": "ia3_l", "prompt_tuning": "prompt_encoder", "adalora": "lora_"}[name]
    assert adapter and all(marker in n for n in adapter), sorted(changed)
    assert loss.item() != model(**batch()).loss.item()


def test_ia3_roles_on_a_model_type_without_a_peft_default():
    method = MethodConfig(name="ia3", settings={"targets": ["Wk", "Wv", "Wdown"], "feedforward_targets": ["Wdown"]})
    check_method_fits(make_distilbert(), method)
    model = wrap_method(make_distilbert(), method, None, total_steps=10)
    counts = count_parameters(model, 1)
    assert counts.trainable_params == model.get_nb_trainable_parameters()[0]
    assert counts.lora_params == 2 * (32 + 32 + 64)  # Wdown (ffn.lin2, 64 -> 32) is scaled at its input
    shapes = {n.split(".ia3_l")[0].rsplit(".", 1)[-1]: tuple(p.shape) for n, p in model.named_parameters()
              if "ia3_l" in n}
    assert shapes == {"k_lin": (32, 1), "v_lin": (32, 1), "lin2": (1, 64)}


@pytest.mark.parametrize("make, name, settings, kwargs, message", [
    (make_bert, "prefix_tuning", {"num_virtual_tokens": 5}, {}, "method=prefix_tuning does not fit "
                                                                "BertForSequenceClassification (model type bert)"),
    (make_distilbert, "ia3", {}, {}, "method=ia3: PEFT has no default target modules for model type 'distilbert'"),
    (make_distilbert, "adalora", {"targets": None}, {}, "method=adalora: PEFT has no default target modules"),
    (make_bert, "adalora", {"targets": ["Wx"]}, {}, "method.settings.targets: unknown role 'Wx'"),
    (make_bert, "adalora", {"targets": ["nope"]}, {}, "method.settings.targets: 'nope' matches no linear module"),
    (make_bert, "adalora", {"init_r": 40, "target_r": 8}, {}, "method.settings.init_r=40 is too large"),
    (make_bert, "ia3", {"targets": ["Wq"], "feedforward_targets": ["Wq"]}, {}, None),
    (make_bert, "prompt_tuning", {"num_virtual_tokens": 60}, {"max_seq_length": 16},
     "method.settings.num_virtual_tokens=60 does not fit: with task.max_seq_length=16 inputs reach 76 positions"),
])
def test_a_method_that_does_not_fit_is_one_line(make, name, settings, kwargs, message):
    method = MethodConfig(name=name, settings=settings)
    if message is None:
        check_method_fits(make(), method, **kwargs)
        return
    with pytest.raises(ConfigError) as err:
        check_method_fits(make(), method, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_name_set_after_building_is_still_checked():
    method = MethodConfig()
    method.name, method.settings = "ia3", {"bogus": 1}  # as trial_config's setattr does: no __post_init__
    with pytest.raises(ConfigError, match="method.settings.bogus is not a setting of ia3"):
        check_method_fits(make_bert(), method)


def test_adalora_needs_a_pruning_phase_in_the_trials_steps():
    method = MethodConfig(name="adalora", settings={"init_r": 4, "target_r": 2, "tinit": 8, "tfinal": 2})
    with pytest.raises(ConfigError, match=r"leave AdaLoRA no pruning phase in this trial's 10 optimizer steps"):
        peft_config(make_bert(), method, None, 10)
    assert peft_config(make_bert(), method, None, 11).total_step == 11


def test_total_steps_follow_epochs_batches_and_max_steps():
    assert total_steps(TrainerConfig(epochs=3, batch_size=32), 100) == 12
    assert total_steps(TrainerConfig(epochs=3, batch_size=32, max_steps=5), 100) == 5


def test_adalora_allocator_runs_after_every_step_and_its_pattern_is_logged():
    method = MethodConfig(name="adalora", settings={"init_r": 4, "target_r": 2})
    model = wrap_method(make_bert(), method, None, total_steps=6)
    (allocator,) = method_callbacks(model, method)
    assert isinstance(allocator, AdaLoraAllocator) and method_callbacks(model, MethodConfig(name="ia3")) == []
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    assert rank_pattern(model) == {}
    for step in range(6):
        opt.zero_grad()
        model(**batch()).loss.backward()
        opt.step()
        trainer = SimpleNamespace(global_step=step + 1)  # Lightning counts the step just taken
        allocator.on_train_batch_end(trainer, None, None, None, step)
        allocator.on_train_batch_end(trainer, None, None, None, step)  # no new optimizer step: no allocation
    assert allocator.steps == list(range(6))
    ranks = rank_pattern(model)
    assert set(ranks) == {f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")}
    assert sum(ranks.values()) == 2 * 4  # target_r x adapted matrices: the budget at the last step
    logged = {}
    client = SimpleNamespace(log_dict=lambda run_id, d, path: logged.update({path: d}))
    metrics = record_method(model, method, client, "run")
    assert logged["adalora/rank_pattern.json"]["ranks"] == ranks
    assert logged["adalora/rank_pattern.json"]["total_step"] == 6
    assert metrics["adalora/total_rank"] == 8 and metrics["adalora/mean_rank"] == 2
    assert record_method(model, MethodConfig(name="ia3"), client, "run") == {}


def test_orthogonality_penalty_is_in_the_training_loss():
    method = MethodConfig(name="adalora", settings={"init_r": 4, "target_r": 2, "orth_reg_weight": 0.0})
    plain = wrap_method(make_bert(), method, None, total_steps=10)
    penalized = wrap_method(make_bert(), MethodConfig(name="adalora", settings={"init_r": 4, "target_r": 2}),
                            None, total_steps=10)
    penalized.load_state_dict(copy.deepcopy(plain.state_dict()))
    plain.eval(), penalized.eval()
    b = batch()
    assert penalized(**b).loss.item() > plain(**b).loss.item()  # PEFT adds it in forward when labels are given
    del b["labels"]
    assert torch.allclose(penalized(**b).logits, plain(**b).logits)


# --- the trial's params -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, r, targets", [
    (MethodConfig(name="adalora", settings={"target_r": 4}), "4", "adalora"),
    (MethodConfig(name="prompt_tuning"), "20", "prompt_tuning"),
    (MethodConfig(name="ia3"), "0", "ia3"),
    (MethodConfig(), "8", "Wq,Wv"),
])
def test_trial_params_carry_the_method_and_its_size(method, r, targets):
    from rank_sweep.train.trial import trial_params

    params = trial_params(RunConfig(method=method))
    assert params["method"] == method.name and str(params["r"]) == r and params["targets"] == targets
    assert (params["alpha"] is None) == (method.name != "lora")
