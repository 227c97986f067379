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
from rank_sweep.config import build_config
from rank_sweep.results.command import choose
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
