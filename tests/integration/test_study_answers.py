"""The answer a study gives, end to end on the tiny model: the sweep's summary, its ladder decisions and
rank-sweep-select score every configuration alike (issue #13.1); a TPE study stores its seed and tuned values,
reports best trials without ladder verdicts, and its preset restores every tuned value (#13.5); a metric to
minimize runs the study, the learning check and select in that direction (#13.12)."""

from __future__ import annotations

import csv
import io
import json

import pytest
import yaml
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from rank_sweep.cli import CONF_DIR
from rank_sweep.commands.select import choose
from rank_sweep.config import build_config
from rank_sweep.study.run import run_study
from tests.conftest import toy_overrides


def _cfg(tiny_model_dir, toy_data_dir, tmp, *extra):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        tree = compose("config", overrides=toy_overrides(tiny_model_dir, toy_data_dir, tmp) + [
            "search.ladder=[1,2]", "search.target_sets=[[Wq,Wv]]", "search.extend=false",
            f"search.storage=sqlite:///{tmp}/optuna.db", *extra])
    return build_config(tree)


def _artifact(cfg, run_id: str, name: str, tmp) -> str:
    client = MlflowClient(cfg.tracking.resolved_uri())
    with open(client.download_artifacts(run_id, name, str(tmp))) as f:
        return f.read()


def test_summary_csv_ladder_decisions_and_select_agree_row_by_row(tiny_model_dir, toy_data_dir, tmp_path,
                                                                 monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(tiny_model_dir, toy_data_dir, tmp_path, "search.seeds=2", "search.min_delta=0.5")
    study = run_study(cfg)
    parent = study.user_attrs["mlflow_parent_run_id"]
    summary = {(r["targets"], int(r["r"])): r for r in csv.DictReader(io.StringIO(
        _artifact(cfg, parent, "summary.csv", tmp_path / "a")))}
    decisions = json.loads(_artifact(cfg, parent, "decisions.json", tmp_path / "b"))
    choice = choose(cfg, {"output_dir": str(tmp_path / "select"), "tolerance": 0.005}, {})
    capsys.readouterr()
    selected = {(s.targets, s.r): s for s in [choice.selection.chosen] + [s for s, _ in choice.selection.runners_up]}
    assert set(summary) == set(selected) and len(summary) == 2
    for key, row in summary.items():
        s = selected[key]
        assert (float(row["mean"]), float(row["std"]), int(row["n"])) == pytest.approx((s.mean, s.std, s.n))
        assert s.n == 2
    for rung in decisions["ladders"]["Wq,Wv"]["rungs"]:
        if rung["mean"] is not None:
            s = selected[("Wq,Wv", rung["r"])]
            assert (rung["mean"], rung["std"], rung["n"]) == pytest.approx((s.mean, s.std, s.n))


def test_a_tpe_study_end_to_end(tiny_model_dir, toy_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(tiny_model_dir, toy_data_dir, tmp_path, "search=tpe", "search.n_trials=3", "seed=7",
               "search.tpe_lr_range=[1e-2,3e-2]")  # the tiny model learns the toy at the toy's lr
    study = run_study(cfg)
    out = capsys.readouterr().out
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 3
    assert all(t.user_attrs["seed"] == 7 and set(t.params) == {"targets", "r", "lr", "alpha_k"} for t in done)
    assert "best trials (TPE: no ladder, so no plateau verdict):" in out
    assert "stopped: running" not in out and "plateau rank" not in out
    choice = choose(cfg, {"output_dir": str(tmp_path / "select"), "tolerance": 0.0}, {})
    trial = study.trials[choice.trial.number]
    preset = yaml.safe_load(open(choice.preset).read().split("\n", 2)[2])
    assert preset["seed"] == 7
    assert preset["trainer"]["lr"] == pytest.approx(trial.params["lr"])
    assert preset["lora"]["alpha_k"] == pytest.approx(trial.params["alpha_k"])
    assert "lr=" in choice.selection.chosen.label  # the tuned values are part of the configuration


def test_tpe_tunes_alpha_k_only_where_it_acts(tiny_model_dir, toy_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(tiny_model_dir, toy_data_dir, tmp_path, "search=tpe", "search.n_trials=1", "lora.alpha_policy=fixed")
    study = run_study(cfg)
    assert set(study.trials[0].params) == {"targets", "r", "lr"}


def test_a_metric_to_minimize_runs_the_study_and_select_in_that_direction(tiny_model_dir, toy_data_dir, tmp_path,
                                                                          monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(tiny_model_dir, toy_data_dir, tmp_path, "task.metric=loss", "task.metrics=[loss,accuracy]",
               "search.min_delta=0.0", "search.learn_margin=0.0")
    study = run_study(cfg)
    assert study.direction.name == "MINIMIZE"
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert done and all(t.value < t.user_attrs["baseline_score"] for t in done)  # it learned: a lower loss
    assert not any(t.user_attrs["not_learning"] for t in done)
    for source in ("study", "mlflow"):
        choice = choose(cfg, {"source": source, "output_dir": str(tmp_path / source), "tolerance": 0.0}, {})
        assert choice.selection.direction == "minimize"
        assert choice.selection.best.mean == pytest.approx(min(t.value for t in done))


def test_reference_methods_run_beside_the_ladder_and_select_lists_them(tiny_model_dir, toy_data_dir, tmp_path,
                                                                      monkeypatch, capsys):
    """search.reference_methods (#17): an IA3 and a prompt-tuning row beside the ladder, in the summary, the
    parent run and select (which chooses LoRA by default and compares each reference to the choice); the
    prompt-tuning row trains at its own lr."""
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(tiny_model_dir, toy_data_dir, tmp_path, "search.ladder=[1]",
               "search.reference_methods=[ia3,{name:prompt_tuning,num_virtual_tokens:2,lr:0.03}]")
    study = run_study(cfg)
    out = capsys.readouterr().out
    assert [(t.params["targets"], t.params["r"]) for t in study.trials] == [("Wq,Wv", 1), ("ia3", 0),
                                                                          ("prompt_tuning", 2)]
    parent = study.user_attrs["mlflow_parent_run_id"]
    rows = {r["label"]: r for r in csv.DictReader(io.StringIO(_artifact(cfg, parent, "summary.csv", tmp_path / "a")))}
    assert set(rows) == {"Wq,Wv r=1", "ia3", "prompt_tuning r=2 lr=0.03"}
    assert study.trials[2].params["lr"] == 0.03 and "lr" not in study.trials[1].params
    assert all(rows[k]["ci_low"] and rows[k]["ci_high"] for k in rows)  # every row has its interval
    assert "| ia3 | 0 |" in out
    client = MlflowClient(cfg.tracking.resolved_uri())
    experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    runs = {r.data.params["targets"]: r for r in client.search_runs([experiment], "tags.kind = 'trial'")}
    assert runs["ia3"].data.params["method"] == "ia3" and runs["prompt_tuning"].data.params["method"] == "prompt_tuning"
    assert client.get_run(parent).data.params["reference_methods"] == "['ia3', 'prompt_tuning']"
    assert client.get_run(parent).data.params["reference_lr"] == "{'prompt_tuning 2': 0.03}"
    assert float(runs["prompt_tuning"].data.params["lr"]) == 0.03 and float(runs["ia3"].data.params["lr"]) == cfg.trainer.lr
    assert int(runs["ia3"].data.metrics["lora_params"]) > 0  # the adapter's params, counted as for LoRA
    choice = choose(cfg, {"output_dir": str(tmp_path / "select"), "tolerance": 0.005}, {})
    text = capsys.readouterr().out
    assert choice.selection.chosen.targets == "Wq,Wv"
    assert "reference method ia3, not chosen" in text and "vs the choice" in text
    everything = choose(cfg, {"output_dir": str(tmp_path / "select_all"), "tolerance": 1.0, "methods": ["all"]}, {})
    assert everything.selection.chosen.trainable_params == min(
        s.trainable_params for s in [everything.selection.chosen] + [s for s, _ in everything.selection.runners_up]
        if not s.not_learning and s.targets != "head only")


def test_a_reference_method_the_model_cannot_take_is_refused_before_any_trial(tiny_model_dir, toy_data_dir,
                                                                              tmp_path, monkeypatch):
    from rank_sweep.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    cfg = _cfg(tiny_model_dir, toy_data_dir, tmp_path, "search.reference_methods=[prefix_tuning]")
    with pytest.raises(ConfigError, match=r"^search.reference_methods: method=prefix_tuning does not fit"):
        run_study(cfg)
    assert not (tmp_path / "outputs" / "predictions").exists()


def test_a_nested_study_screens_every_rank_in_one_training_then_confirms(tiny_model_dir, toy_data_dir, tmp_path,
                                                                       monkeypatch, capsys):
    """search=nested (#15): one screen at the top rank logs nested/r<rank>/score with intervals and keeps
    per-rank predictions; the ladder's rule runs on them; ordinary trials confirm; select picks a confirmed one."""
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(tiny_model_dir, toy_data_dir, tmp_path, "search=nested", "search.ladder=[1,2,4]")
    study = run_study(cfg)
    out = capsys.readouterr().out
    screen, *confirmations = sorted(study.trials, key=lambda t: t.number)
    assert screen.params["screen"] == 1.0 and screen.params["r"] == 4
    assert set(screen.user_attrs["nested"]) == {"1", "2", "4"}
    assert confirmations and all("screen" not in t.params for t in confirmations)
    client = MlflowClient(cfg.tracking.resolved_uri())
    metrics = client.get_run(screen.user_attrs["mlflow_run_id"]).data.metrics
    for b in (1, 2, 4):
        assert metrics[f"nested/r{b}/score_ci_low"] <= metrics[f"nested/r{b}/score"] <= metrics[f"nested/r{b}/score_ci_high"]
        assert (tmp_path / "outputs" / "predictions" / screen.user_attrs["mlflow_run_id"] / f"r{b}" / "val.npz").exists()
    assert sum(metrics[f"nested/r{b}/steps"] for b in (1, 2, 4)) == screen.user_attrs["train_steps"]
    assert "screened (one nested-rank training at r=4)" in out and "screened: truncated from the nested screen" in out
    parent = study.user_attrs["mlflow_parent_run_id"]
    decisions = json.loads(_artifact(cfg, parent, "decisions.json", tmp_path / "b"))
    assert "screen" in decisions["ladders"]["Wq,Wv"]
    choice = choose(cfg, {"output_dir": str(tmp_path / "select"), "tolerance": 0.005}, {})
    assert not choice.selection.chosen.screened
    assert "screen" not in study.trials[choice.trial.number].params


def test_the_allocation_step_end_to_end(tiny_model_dir, toy_data_dir, tmp_path, monkeypatch, capsys):
    """After the ladder, each allocation set at the rank whose LoRA count is closest to each budget: at the
    ladder's seeds and lr, in the summary's table and decisions.json, as ordinary rows select weighs; a rerun
    of the finished study trains nothing more."""
    monkeypatch.chdir(tmp_path)
    # tiny BERT: 2 layers, hidden 32, intermediate 64: Wq,Wv 256 per rank, attention 512, mlp (Wup,Wdown) 384
    cfg = _cfg(tiny_model_dir, toy_data_dir, tmp_path, "search.min_delta=0.5",
               "search.allocation_sets=[[Wq,Wv],[attention],[mlp]]", "search.allocation_budgets=[plateau,768]")
    study = run_study(cfg)
    out = capsys.readouterr().out
    done = sorted((t.params["targets"], t.params["r"]) for t in study.trials if t.state.name == "COMPLETE")
    # the ladder r=1, 2 (plateau r=1: budget 256); at 256: attention r=1, mlp r=1; at 768: Wq,Wv r=3, mlp r=2
    # (attention: 512 and 1,024 are both 256 away, so the lower rank, already trained)
    assert done == [("Wq,Wk,Wv,Wo", 1), ("Wq,Wv", 1), ("Wq,Wv", 2), ("Wq,Wv", 3), ("Wup,Wdown", 1), ("Wup,Wdown", 2)]
    assert "target group mlp on bert: no Wgate in its role map, so mlp is Wup,Wdown" in out
    assert "allocation at 256 LoRA params (the plateau of Wq,Wv r=1;" in out
    assert "| mlp (Wup,Wdown) | 1 | 384 | +50.0% | 0.02 |" in out
    assert "| attention (Wq,Wk,Wv,Wo) | 1 | 512 | +0.0% | 0.02 |" not in out  # 512 vs 768 is -33.3%
    assert "| attention (Wq,Wk,Wv,Wo) | 1 | 512 | -33.3% | 0.02 |" in out
    parent = study.user_attrs["mlflow_parent_run_id"]
    rows = json.loads(_artifact(cfg, parent, "decisions.json", tmp_path / "b"))["allocation"]
    assert {(r["budget"], r["targets"], r["r"]) for r in rows} >= {(256, "Wup,Wdown", 1), (768, "Wup,Wdown", 2)}
    assert all(r["lr"] == pytest.approx(2e-2) and r["n"] == 1 and r["ci_low"] <= r["mean"] for r in rows)
    choice = choose(cfg, {"output_dir": str(tmp_path / "select"), "tolerance": 0.005}, {})
    weighed = {(s.targets, s.r) for s in [choice.selection.chosen] + [s for s, _ in choice.selection.runners_up]}
    assert {("Wup,Wdown", 1), ("Wup,Wdown", 2), ("Wq,Wv", 3)} <= weighed
    again = run_study(cfg)
    assert len(again.trials) == len(study.trials)
