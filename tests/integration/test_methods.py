"""Reference-method trials on the tiny BERT: each trains and records its method, size and counts in MLflow,
AdaLoRA logs its rank pattern, the adapter exports, a misfit fails before any MLflow run exists, and the
command line runs one (rank-sweep-trial method=ia3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from rank_sweep.config import MethodConfig
from rank_sweep.errors import ConfigError
from rank_sweep.train.loading import WorkerCache
from rank_sweep.train.trial import run_trial
from tests.conftest import toy_overrides

STEPS = 2 * 256 // 16  # 2 epochs of the toy task at batch 16
SIZE = {"ia3": 0, "prompt_tuning": 8, "adalora": 4}
SETTINGS = {"ia3": {}, "prompt_tuning": {"num_virtual_tokens": 8}, "adalora": {"init_r": 6, "target_r": 4}}


def _runs(cfg):
    client = MlflowClient(cfg.tracking.resolved_uri())
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    return client, ([] if exp is None else client.search_runs([exp.experiment_id]))


def _artifact(client, run, path: str) -> dict:
    with open(client.download_artifacts(run.info.run_id, path)) as f:
        return json.load(f)


@pytest.mark.parametrize("name", ["ia3", "prompt_tuning", "adalora"])
def test_a_reference_trial_trains_and_records_its_method(toy_cfg, name):
    toy_cfg.method = MethodConfig(name=name, settings=SETTINGS[name])
    toy_cfg.trainer.epochs, toy_cfg.save_adapter = 2, True
    result = run_trial(toy_cfg, cache=WorkerCache())
    client, (run,) = _runs(toy_cfg)
    params, metrics = run.data.params, run.data.metrics
    assert run.info.status == "FINISHED"
    assert params["method"] == name and params["targets"] == name and params["r"] == str(SIZE[name])
    assert params["alpha"] == "None"
    assert run.info.run_name == f"{name} r={SIZE[name]} seed=0"
    assert result.counts.trainable_params == result.counts.lora_params + result.counts.head_params
    assert result.counts.head_params == 2 * 32 + 2 and result.counts.lora_params > 0  # the toy pins cls_frozen
    assert metrics["lora_params"] == result.counts.lora_params and metrics["rank"] == SIZE[name]
    assert result.train_steps == STEPS
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(losses) == 2 and losses[0] != losses[1], "it trains"
    assert not any(k.startswith("spectra/") for k in metrics), "LoRA's spectra are LoRA's only"
    assert metrics["export/reload_max_abs_diff"] < 1e-5 and metrics["export/reload_same_predictions"] == 1.0
    assert ("export/merge_max_abs_diff" in metrics) == (name != "prompt_tuning")  # soft prompts do not merge
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "config.json", "predictions"} <= artifacts
    assert _artifact(client, run, "config.json")["method"]["name"] == name
    if name == "adalora":
        pattern = _artifact(client, run, "adalora/rank_pattern.json")
        assert pattern["total_step"] == STEPS and pattern["init_r"] == 6
        assert len(pattern["ranks"]) == 4 and sum(pattern["ranks"].values()) == 4 * 4  # 2 layers x (Wq, Wv)
        assert metrics["adalora/total_rank"] == 16 and metrics["adalora/mean_rank"] == 4


@pytest.mark.parametrize("setup, message", [
    (lambda c: setattr(c, "method", MethodConfig(name="prefix_tuning")), "method=prefix_tuning does not fit"),
    (lambda c: setattr(c, "method", MethodConfig(name="adalora", settings={"tinit": 100})),
     "leave AdaLoRA no pruning phase in this trial's 80 optimizer steps"),
    (lambda c: setattr(c, "method", MethodConfig(name="prompt_tuning", settings={"num_virtual_tokens": 60})),
     "inputs reach 76 positions, and the model takes 64"),
    (lambda c: (setattr(c, "method", MethodConfig(name="ia3")), setattr(c.lora, "full_finetune", True)),
     "method=ia3 cannot be combined with lora.full_finetune=true"),
])
def test_a_bad_method_leaves_no_run(toy_cfg, setup, message):
    setup(toy_cfg)
    with pytest.raises(ConfigError, match=message):
        run_trial(toy_cfg, cache=WorkerCache())
    assert _runs(toy_cfg)[1] == []


def test_the_command_line_runs_a_reference_method(tiny_model_dir, toy_data_dir, tmp_path):
    args = [*toy_overrides(tiny_model_dir, toy_data_dir, tmp_path), "trainer.epochs=1", "method=ia3",
            "method.settings.targets=[Wk,Wv]"]
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "rank-sweep-trial"), *args], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "lora_params 128  head_params 66  trainable_params 194" in out.stdout  # 2 x (32 + 32); head + pooler
    bad = subprocess.run([os.path.join(os.path.dirname(sys.executable), "rank-sweep-trial"), *args,
                          "method.settings.init_r=4"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "rank-sweep: error: method.settings.init_r is not a setting of ia3: valid settings are ")
