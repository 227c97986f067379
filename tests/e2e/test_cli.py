"""The commands as a user runs them, in subprocesses: a sweep on the tiny model
(parent/child runs, summary, resume), a bad input, and one real MiniLM trial."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import toy_overrides

BIN = os.path.dirname(sys.executable)


def run(cmd: str, args: list[str], cwd, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, cmd), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HYDRA_FULL_ERROR": "0"})


def test_sweep_tiny_model_parent_child_summary_and_resume(tiny_model_dir, toy_data_dir, tmp_path):
    args = toy_overrides(tiny_model_dir, toy_data_dir, tmp_path) + [
        "search.ladder=[1,2,4]", "search.target_sets=[[Wq,Wv]]", "search.extend_target_sets=[[Wq,Wk,Wv,Wo]]",
        "search.min_delta=0.5",  # no gain reaches 0.5: the ladder plateaus at its second rung, then extends
        f"search.storage=sqlite:///{tmp_path}/optuna.db",
    ]
    first = run("rank-sweep", args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout
    assert "| targets | r | lr | mean |" in out, out  # every row with its learning rate (issue 24)
    # the tiny model may not learn at r=1 (then r=1 is no plateau signal): read the plateau rank it found
    m = re.search(r"ladder Wq,Wv: plateau rank r=(\d+); stopped: plateau", out)
    assert m, out
    k = int(m.group(1))
    assert f"extension: Wq,Wk,Wv,Wo at r={k}" in out, out
    trained = sorted(re.findall(r"trial +\d+ +(\S+) +r=(\d+) ", out))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("rank_sweep")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "study"]
    children = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert len(parents) == 1 and len(children) == len(trained) >= 3  # >= 2 rungs + the extension
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert all(c.info.status == "FINISHED" for c in children)
    assert sorted((c.data.params["targets"], c.data.params["r"]) for c in children) == trained
    assert ("Wq,Wk,Wv,Wo", str(k)) in trained
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"summary.md", "summary.csv", "decisions.json", "rank_curves.png"} <= artifacts
    assert parents[0].data.params["ladder"] == "[1, 2, 4]"

    again = run("rank-sweep", args, tmp_path)  # resume: the study is done, nothing retrains
    assert again.returncode == 0, again.stderr[-3000:]
    assert "done: every ladder stopped" in again.stdout
    runs = client.search_runs([exp.experiment_id])
    assert len([r for r in runs if r.data.tags.get("kind") == "trial"]) == len(trained)
    assert len([r for r in runs if r.data.tags.get("kind") == "study"]) == 1

    chosen = run("rank-sweep-select", args + ["select.tolerance=1.0"], tmp_path)
    assert chosen.returncode == 0, chosen.stderr[-3000:]
    assert f"chosen: Wq,Wv r={k}" in chosen.stdout, chosen.stdout  # the cheapest within a loose tolerance
    out = tmp_path / "outputs/select/tiny_bert-toy-ladder"
    assert (out / "pareto.png").stat().st_size > 0
    # the sweep kept no adapters: the last line says how to get the chosen one
    assert chosen.stdout.strip().splitlines()[-1].endswith(
        f"to get it: rank-sweep-trial --config-dir {out} experiment=selected_tiny_bert-toy-ladder save_adapter=true")
    assert not (out / "adapter").exists()
    # the same choice from the MLflow store alone (no Optuna storage given: it is not read)
    from_mlflow = run("rank-sweep-select", args[:-1] + ["select.tolerance=1.0", "select.source=mlflow",
                                                        f"search.storage=sqlite:///{tmp_path}/absent.db"], tmp_path)
    assert from_mlflow.returncode == 0, from_mlflow.stderr[-3000:]
    assert " trials read from MLflow sqlite:///" in from_mlflow.stdout.splitlines()[0]
    assert from_mlflow.stdout.split("\n", 1)[1] == chosen.stdout.split("\n", 1)[1]
    assert not (tmp_path / "absent.db").exists()
    # the written preset retrains the choice
    retrain = run("rank-sweep-trial", ["--config-dir", str(out), "experiment=selected_tiny_bert-toy-ladder",
                                       *toy_overrides(tiny_model_dir, toy_data_dir, tmp_path)], tmp_path)
    assert retrain.returncode == 0, retrain.stderr[-3000:]
    newest = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert (newest.data.params["targets"], newest.data.params["r"]) == ("Wq,Wv", str(k))


def test_select_bad_source_is_one_line(tmp_path):
    res = run("rank-sweep-select", ["select.source=optuna", f"output_dir={tmp_path}/outputs"], tmp_path, timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [x for x in res.stderr.splitlines() if x.startswith("rank-sweep: error:")]
    assert errors == ["rank-sweep: error: select.source='optuna' is not valid: choose one of study, mlflow, auto"]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "outputs/select").exists() and not (tmp_path / "optuna.db").exists()


@pytest.mark.parametrize("override, message", [
    ("lora.r=0", "lora.r=0 is not valid"),
    ("lora.alpha_policy=magic", "lora.alpha_policy='magic' is not valid"),
    ("lora.targets=[Wz]", "unknown role 'Wz'"),
])
def test_bad_input_is_one_line_and_trains_nothing(tiny_model_dir, toy_data_dir, tmp_path, override, message):
    res = run("rank-sweep-trial", toy_overrides(tiny_model_dir, toy_data_dir, tmp_path) + [override], tmp_path)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.startswith("rank-sweep: error:")]
    assert len(lines) == 1 and message in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    db = tmp_path / "mlflow.db"
    if db.exists():
        exp = MlflowClient(f"sqlite:///{db}").get_experiment_by_name("rank_sweep")
        assert exp is None or not MlflowClient(f"sqlite:///{db}").search_runs([exp.experiment_id])


@pytest.mark.skipif(not os.environ.get("GLUE_DIR"), reason="needs GLUE_DIR (../shared/glue)")
def test_real_minilm_trial_on_sst2_sample(tmp_path):
    res = run("rank-sweep-trial", [
        "task=sst2", "lora.r=4", "lora.targets=[Wq,Wv]", "task.max_train_samples=256", "task.max_eval_samples=128",
        "task.max_seq_length=64", "trainer.epochs=1", "trainer.progress_bar=false",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "lora_params 36,864" in res.stdout  # 6 layers x 2 matrices x 4 x (384 + 384)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("rank_sweep")
    (r,) = client.search_runs([exp.experiment_id])
    p, m = r.data.params, r.data.metrics
    assert (p["model"], p["task"], p["r"], p["targets"], p["seed"]) == ("minilm_l6", "sst2", "4", "Wq,Wv", "0")
    assert p["alpha_policy"] == "scaled" and float(p["alpha"]) == 8.0 and p["max_seq_length"] == "64"
    assert {"lr", "epochs", "batch_size"} <= set(p)
    assert m["lora_params"] == 36864 and m["total_params"] == 22713986
    assert m["trainable_params"] == 36864 + 770  # + the classifier head (384 x 2 + 2)
    assert 0.0 <= m["score"] <= 1.0 and m["score"] == m["val/accuracy"]
    assert {"train/loss", "train_seconds", "trainable_pct", "baseline_score"} <= set(m)
    assert r.data.tags["score_metric"] == "accuracy" and "version.transformers" in r.data.tags
