"""model.quantization: its config, its refusals (one line, before anything loads), the exact parameter count of
a 4-bit model, and the gradient through 4-bit layers after an evaluation pass on CPU."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from rank_sweep.config import ModelConfig
from rank_sweep.errors import ConfigError
from rank_sweep.train import loading
from rank_sweep.train.lora import num_params
from tests.lm_helpers import compose_lm

bnb = pytest.importorskip("bitsandbytes")
MODEL = ["model.name_or_path=/nowhere", "task=sst2_lm"]


def _tiny_quantized(tmp_path, hidden: int = 128):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    plain = num_params(AutoModelForCausalLM.from_pretrained(tmp_path))
    q = loading.quantization_config(compose_lm(MODEL + ["model.quantization=nf4", "trainer.precision=32-true"]))
    return loading.prepare_quantized(AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=q)), plain


def test_quantization_configs_follow_the_setting_and_the_precision():
    q = loading.quantization_config(compose_lm(MODEL + ["model.quantization=fp4", "trainer.precision=bf16-mixed"]))
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "fp4" and q.bnb_4bit_compute_dtype == torch.bfloat16
    assert q.bnb_4bit_use_double_quant
    assert loading.quantization_config(compose_lm(MODEL + ["model.quantization=int8"])).load_in_8bit
    assert loading.quantization_config(compose_lm(MODEL)) is None
    assert compose_lm(MODEL).model.quantization == "none"


@pytest.mark.parametrize("overrides, message", [
    (["model.quantization=q4"], "model.quantization='q4' is not valid"),
    (["model.quantization=nf4", "lora.full_finetune=true"],
     "lora.full_finetune is not valid with model.quantization=nf4: the base's weights are stored as frozen nf4"),
    (["model.quantization=int8", "search.include_full_finetune=true"],
     "search.include_full_finetune / reference_methods=[full] is not valid with model.quantization=int8"),
    (["model.quantization=nf4", "task=sst2", "search.reference_methods=[ia3]"],
     "method ia3 is not supported with model.quantization=nf4"),
])
def test_a_quantized_base_refuses_what_cannot_train_on_it(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        cfg = compose_lm(MODEL + overrides)
        loading.WorkerCache().tokenizer_and_model(cfg)  # refused before the (missing) folder is read
    assert "\n" not in str(e.value)


def test_missing_bitsandbytes_is_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ConfigError, match=r"model.quantization=nf4 needs the bitsandbytes package, which is not "
                                          r"installed: pip install 'rank-sweep\[quant\]'"):
        ModelConfig(name="x", name_or_path="x", quantization="nf4")


def test_a_4bit_model_counts_the_parameters_it_was_quantized_from(tmp_path):
    model, plain = _tiny_quantized(tmp_path)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    assert num_params(model) == plain
    assert sum(p.numel() for p in model.parameters()) < plain  # two 4-bit values a byte: numel undercounts


def test_gradients_reach_the_first_layer_after_an_eval_pass(tmp_path):
    """bitsandbytes repacks a 4-bit weight for a CPU inference kernel without backward when it runs in eval mode
    on an AVX-512 BF16 CPU; prepare_quantized turns that off, so training after validation still trains layer 0."""
    from peft import LoraConfig, get_peft_model

    model, _ = _tiny_quantized(tmp_path)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights="gaussian"))
    ids = torch.randint(0, 128, (2, 8))
    peft.eval()
    with torch.no_grad():
        peft(input_ids=ids)
    peft.train()
    peft(input_ids=ids, labels=ids).loss.backward()
    grad = peft.base_model.model.model.layers[0].self_attn.q_proj.lora_B.default.weight.grad
    assert grad is not None and grad.abs().sum() > 0
