"""Causal-LM trials end to end on the tiny random Llama: the record (score = loss per completion token, the
zero-shot reference, per-example outputs the paired comparison reads, the exported merged model generating the
same tokens), an exact-match trial, a trial on a 4-bit base (QLoRA) beside the same trial in float32, and the bad
inputs that only show once the data and the model are loaded."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from rank_sweep.errors import RankSweepError
from rank_sweep.results.paired import score_interval
from rank_sweep.results.predictions import load_predictions, predictions_path
from rank_sweep.train.loading import WorkerCache
from rank_sweep.train.metrics import example_losses
from rank_sweep.train.trial import resolved_config, run_trial
from tests.lm_helpers import compose_lm, lm_overrides, make_lm_toy, make_tiny_llama


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="module")
def lm_toy(tmp_path_factory) -> str:
    return make_lm_toy(tmp_path_factory.mktemp("lm_toy"))


def test_a_causal_trial_records_loss_zero_shot_predictions_and_an_export_that_generates_the_same(
        tiny_llama, lm_toy, tmp_path):
    cfg = compose_lm(lm_overrides(tiny_llama, lm_toy, tmp_path) + [
        "save_adapter=true", "trainer.accumulate_grad_batches=2", "trainer.gradient_checkpointing=true"])
    result = run_trial(cfg, cache=WorkerCache(), learn_margin=0.02)
    assert result.metric == "loss" and result.score == result.metrics["loss"]
    assert result.counts.lora_params == 2 * 4 * ((32 + 32) + (32 + 16)) and result.counts.head_params == 0
    assert result.train_steps == 3 * 6  # 12 batches an epoch, one optimizer step every 2
    m = MlflowClient(cfg.tracking.resolved_uri()).get_run(result.run_id).data.metrics
    assert m["baseline_score"] == m["zero_shot/loss"] == result.baseline_score
    assert m["val/perplexity"] == pytest.approx(np.exp(m["val/loss"]), rel=1e-5)
    assert 0 <= m["val/accuracy"] <= 1 and 0 <= m["zero_shot/accuracy"] <= 1
    assert m["score"] < m["baseline_score"] and m["not_learning"] == 0.0  # the loss fell below the base model's
    assert m["export/merge_same_generation"] == 1.0 and m["export/generated_tokens"] > 0
    assert m["export/merge_max_abs_diff"] < 1e-4 and m["export/reload_same_predictions"] == 1.0
    lora_bytes = 4 * result.counts.lora_params  # float32 factors: 8 tensors (2 layers x Wq, Wv x A, B)
    assert m["gradient_mb"] * 2 ** 20 == lora_bytes
    assert m["optimizer_state_mb"] * 2 ** 20 == 2 * lora_bytes + 8 * 4  # AdamW: two moments, one step counter each
    assert lora_bytes < m["adapter_mb"] * 2 ** 20 < lora_bytes + 20_000  # the safetensors file and its config
    assert m["peak_memory_mb"] >= m["fit_memory_mb"] >= 0 and m["peak_memory_mb"] > m["weights_mb"]
    assert result.memory["peak_memory_mb"] == m["peak_memory_mb"]
    p = load_predictions(predictions_path(cfg.output_dir, result.run_id))
    assert len(p) == 48 and p.outputs.shape == (48, 2)
    assert example_losses(p.outputs).mean() == pytest.approx(result.score, rel=1e-5)
    ci = score_interval("loss", p.outputs, p.label, is_regression=False, num_labels=2)
    assert (ci.low, ci.high) == pytest.approx(result.score_ci)
    task = resolved_config(cfg)["task"]
    assert task["type"] == "causal_lm" and task["choices"] == [" negative", " positive"]


def test_a_classification_record_keeps_no_causal_keys_nor_new_trainer_keys_at_their_old_value(toy_cfg):
    rec = resolved_config(toy_cfg)
    assert not {"type", "format", "choices", "prompt_template"} & set(rec["task"])
    assert not {"accumulate_grad_batches", "gradient_checkpointing"} & set(rec["trainer"])
    toy_cfg.trainer.accumulate_grad_batches = 4
    assert resolved_config(toy_cfg)["trainer"]["accumulate_grad_batches"] == 4


def error_of(cfg) -> str:
    with pytest.raises(RankSweepError) as e:
        cache = WorkerCache()
        cache.splits(cfg, cache.tokenizer_and_model(cfg)[0])
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_data_and_models_are_one_line_before_training(tiny_llama, tiny_model_dir, lm_toy, tmp_path):
    base = lm_overrides(tiny_llama, lm_toy, tmp_path, choices=False)
    msg = error_of(compose_lm(base + ["task.prompt_field=question"]))
    assert "has no column 'question' (task.prompt_field): columns present are prompt, completion" in msg
    rows = [json.loads(x) for x in open(f"{lm_toy}/train.jsonl")]
    rows[3]["completion"] = ""
    (tmp_path / "empty.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    msg = error_of(compose_lm(base + [f"task.train_file={tmp_path}/empty.jsonl"]))
    assert msg.endswith("have an empty completion ('completion'): the loss would count no token there; drop those "
                        "rows or fill them") and msg.startswith("1 of 192 rows of data file")
    msg = error_of(compose_lm(base + [f"model.name_or_path={tiny_model_dir}"]))
    assert msg.startswith(f"model {tiny_model_dir!r} has no LM head for causal LM task lm_toy: it is saved as BertModel")
    msg = error_of(compose_lm(base + ["search.head_reference=true"]))
    assert msg.startswith("search.head_reference=true is not valid for causal LM task lm_toy")


def test_an_exact_match_trial_scores_greedy_answers_and_keeps_them(tiny_llama, lm_toy, tmp_path):
    # the tiny random model learns the answer word in a few full fine-tuning steps, not yet to stop after it: the
    # pattern reads the first word, as a user's pattern reads "#### 72" out of a longer generation
    cfg = compose_lm(lm_overrides(tiny_llama, lm_toy, tmp_path, choices=False) + [
        "task.metric=exact_match", "task.metrics=[exact_match,loss]", "task.max_new_tokens=3",
        "task.answer_pattern='([a-z]+)'", "lora.full_finetune=true", "trainer.lr=1e-2"])
    result = run_trial(cfg, cache=WorkerCache(), learn_margin=0.02)
    client = MlflowClient(cfg.tracking.resolved_uri())
    m = client.get_run(result.run_id).data.metrics
    assert result.metric == "exact_match" and m["val/exact_match"] == pytest.approx(result.score)
    assert m["score"] > m["zero_shot/exact_match"] == m["baseline_score"]  # it learned to answer
    details = np.load(client.download_artifacts(result.run_id, "predictions/val_lm.npz", str(tmp_path)))
    assert details["generated"].dtype.kind == "U" and len(details["generated"]) == 48
    assert details["exact_match"].mean() == result.score  # one 0/1 per dev example
    assert set(details["answer"]) <= {"positive", "negative"}  # one word, read by the pattern
    assert [a == g.strip() for a, g in zip(details["answer"], details["gold"], strict=True)] == list(
        details["exact_match"].astype(bool))
    p = load_predictions(predictions_path(cfg.output_dir, result.run_id))
    ci = score_interval("exact_match", p.outputs, p.label, is_regression=False, num_labels=2)
    assert ci.estimate == result.score and (ci.low, ci.high) == pytest.approx(result.score_ci)
    with open(client.download_artifacts(result.run_id, "predictions/answers.jsonl", str(tmp_path))) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 48 and set(rows[0]) == {"index", "generated", "answer", "gold", "exact_match"}


def test_a_4bit_trial_trains_lora_on_linear4bit_layers_with_exact_counts_and_an_adapter_export(
        tiny_llama, lm_toy, tmp_path):
    """The base's linear layers are 4-bit, the counts those of the float32 trial, the loss falls, the weights take
    less memory, the adapter saves and reloads, and no merged model is written."""
    pytest.importorskip("bitsandbytes")
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
