"""A causal-LM trial on a 4-bit base (QLoRA) end to end on the tiny random Llama, on CPU: the base's linear
layers are bitsandbytes 4-bit layers, the counts are those of the same trial in float32, the loss falls, the
memory is smaller, the adapter saves and reloads and no merged model is written."""

from __future__ import annotations

import os

import pytest
from mlflow.tracking import MlflowClient

from rank_sweep.train.loading import WorkerCache
from rank_sweep.train.trial import resolved_config, run_trial
from tests.lm_helpers import compose_lm, lm_overrides, make_lm_toy, make_tiny_llama

pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="module")
def lm_toy(tmp_path_factory) -> str:
    return make_lm_toy(tmp_path_factory.mktemp("lm_toy"))


def test_a_4bit_trial_trains_lora_on_linear4bit_layers_with_exact_counts_and_an_adapter_export(
        tiny_llama, lm_toy, tmp_path):
    cache = WorkerCache()
    base = lm_overrides(tiny_llama, lm_toy, tmp_path) + ["trainer.epochs=2", "trainer.precision=bf16-mixed"]
    full = run_trial(compose_lm(base), cache=cache)
    cfg = compose_lm(base + ["model.quantization=nf4", "save_adapter=true"])
    result = run_trial(cfg, cache=cache)
    model = cache.tokenizer_and_model(cfg)[1]
    kinds = {type(m).__name__ for n, m in model.named_modules() if n.endswith(("q_proj", "down_proj"))}
    assert kinds == {"Linear4bit"}
    assert result.counts == full.counts  # LoRA, head and total params as the unquantized model has them
    run = MlflowClient(cfg.tracking.resolved_uri()).get_run(result.run_id)
    m, params = run.data.metrics, run.data.params
    assert params["quantization"] == "nf4" and resolved_config(cfg)["model"]["quantization"] == "nf4"
    assert "quantization" not in resolved_config(compose_lm(base))["model"]  # old records keep their fingerprint
    assert m["score"] < m["baseline_score"] and m["not_learning"] == 0.0  # the loss per answer token fell
    # the quantized linear layers hold a 4-bit weight: the model's stored bytes fall (the embedding stays float)
    assert result.memory["weights_mb"] < full.memory["weights_mb"]
    assert result.memory["optimizer_state_mb"] == full.memory["optimizer_state_mb"]  # the same LoRA tensors
    assert m["export/reload_same_predictions"] == 1.0 and m["export/reload_max_abs_diff"] < 1e-3
    out = os.path.join(cfg.output_dir, "adapters", result.run_id)
    assert os.path.isdir(os.path.join(out, "adapter")) and not os.path.exists(os.path.join(out, "merged"))
    assert "export/merge_max_abs_diff" not in m and "export/merge_same_generation" not in m
