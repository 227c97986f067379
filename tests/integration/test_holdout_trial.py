"""A tiny trial scores the held-out split once after its fit: its metrics, provenance and per-example outputs are
recorded, and neither the score nor the learning flag changes with the split on or off."""

from __future__ import annotations

import os

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from rank_sweep.results.holdout import HOLDOUT_ARTIFACT
from rank_sweep.results.predictions import load_predictions, predictions_path
from rank_sweep.train import holdout
from rank_sweep.train.loading import WorkerCache
from rank_sweep.train.trial import run_trial


def _with_and_without_the_split(cfg, size: int):
    """The same trial with the held-out split on and off: it decides alike; (the trial with it, without it, its MLflow metrics
    and params)."""
    on = run_trial(cfg, cache=WorkerCache())
    cfg.task.holdout = False
    off = run_trial(cfg, cache=WorkerCache())
    assert (on.score, on.not_learning, on.score_ci, on.history) == (off.score, off.not_learning, off.score_ci,
                                                                     off.history)
    assert off.holdout == {} and on.holdout["holdout_size"] == size
    run = MlflowClient(cfg.tracking.resolved_uri()).get_run(on.run_id)
    return on, off, run.data.metrics, run.data.params


def test_a_trial_records_its_held_out_split_and_decides_as_without_it(toy_cfg):
    toy_cfg.task.max_train_samples, toy_cfg.task.holdout_size = 64, 150  # 192 unused toy training rows
    toy_cfg.trainer.epochs = 2
    on, off, m, p = _with_and_without_the_split(toy_cfg, 150)
    assert m["holdout_score"] == pytest.approx(on.holdout["holdout_score"]) == pytest.approx(m["holdout/accuracy"])
    assert m["holdout_ci_low"] <= m["holdout_score"] <= m["holdout_ci_high"]
    rows = holdout.permutation(256)[64:214]
    assert p["holdout_source"] == "train_unused" and p["holdout_file"].endswith("train.csv")
    assert p["holdout_ids_sha256"] == holdout.HoldoutInfo("train_unused", None, "", tuple(rows.tolist())).ids_sha256
    pred = load_predictions(predictions_path(toy_cfg.output_dir, on.run_id, HOLDOUT_ARTIFACT))
    assert pred.index.tolist() == rows.tolist() and len(pred) == 150
    assert np.mean(pred.prediction == pred.label) == pytest.approx(m["holdout_score"])
    artifacts = [a.path for a in MlflowClient(toy_cfg.tracking.resolved_uri()).list_artifacts(on.run_id, "predictions")]
    assert {"predictions/val.npz", HOLDOUT_ARTIFACT} <= set(artifacts)
    assert not os.path.exists(predictions_path(toy_cfg.output_dir, off.run_id, HOLDOUT_ARTIFACT))


def test_a_study_reports_its_held_out_split_in_the_summary_and_select_from_either_store(tiny_model_dir, toy_data_dir,
                                                                                        tmp_path, monkeypatch, capsys):
    import csv
    import io

    from rank_sweep.commands.select import choose
    from rank_sweep.study.run import run_study
    from tests.conftest import make_toy_data
    from tests.integration.test_study_answers import _artifact, _cfg

    monkeypatch.chdir(tmp_path)
    held = make_toy_data(tmp_path / "held", n_train=1, n_dev=150)  # its dev.csv: the held-out file
    cfg = _cfg(tiny_model_dir, toy_data_dir, tmp_path, f"task.test_file={held}/dev.csv", "search.lr_probe=[]")
    study = run_study(cfg)
    parent = study.user_attrs["mlflow_parent_run_id"]
    rows = list(csv.DictReader(io.StringIO(_artifact(cfg, parent, "summary.csv", tmp_path / "a"))))
    assert len(rows) == 2 and all(r["holdout_n"] == "150" and 0 <= float(r["holdout_mean"]) <= 1 for r in rows)
    assert "held-out (report only)" in _artifact(cfg, parent, "summary.md", tmp_path / "b")
    capsys.readouterr()
    texts = []
    for source in ("study", "mlflow"):
        choice = choose(cfg, {"output_dir": str(tmp_path / source), "tolerance": 0.5, "source": source}, {})
        texts.append(choice.report[choice.report.index("held-out (report only"):].split("\n\nplots:")[0])
        c = choice.selection.chosen
        assert choice.held[c.label].optimism == pytest.approx(c.mean - choice.held[c.label].score.estimate)
    assert texts[0] == texts[1] and "optimism" in texts[0] and "paired" in texts[0]  # the runner-up's difference
    metrics = MlflowClient(cfg.tracking.resolved_uri()).get_run(parent).data.metrics
    assert {"select/holdout_score", "select/optimism", "select/holdout_ci_low"} <= set(metrics)


def test_a_causal_trial_records_its_held_out_split_and_decides_as_without_it(tmp_path):
    from rank_sweep.train.metrics import example_losses
    from tests.lm_helpers import compose_lm, lm_overrides, make_lm_toy, make_tiny_llama

    llama, toy = make_tiny_llama(tmp_path / "llama"), make_lm_toy(tmp_path / "toy")  # 192 training rows
    cfg = compose_lm(lm_overrides(llama, toy, tmp_path) + ["task.max_train_samples=64", "task.holdout_size=100"])
    on, off, m, p = _with_and_without_the_split(cfg, 100)
    assert m["holdout_score"] == pytest.approx(m["holdout/loss"]) and 0 <= m["holdout/accuracy"] <= 1
    assert m["holdout/perplexity"] == pytest.approx(np.exp(m["holdout/loss"]), rel=1e-5)
    assert m["holdout_ci_low"] <= m["holdout_score"] <= m["holdout_ci_high"]
    rows = holdout.permutation(192)[64:164]
    assert p["holdout_source"] == "train_unused" and p["holdout_file"].endswith("train.jsonl")
    assert p["holdout_file_sha256"] == holdout.file_sha256(os.path.join(toy, "train.jsonl"))
    assert p["holdout_ids_sha256"] == holdout.HoldoutInfo("train_unused", None, "", tuple(rows.tolist())).ids_sha256
    pred = load_predictions(predictions_path(cfg.output_dir, on.run_id, HOLDOUT_ARTIFACT))
    assert pred.index.tolist() == rows.tolist() and pred.outputs.shape == (100, 2)
    assert example_losses(pred.outputs).mean() == pytest.approx(m["holdout_score"], rel=1e-5)  # the paired form


def test_scrambled_held_out_outputs_change_no_decision_of_a_causal_lm_study(tmp_path, monkeypatch, capsys):
    """The scramble test of tests/unit/results/test_holdout.py on a real causal-LM study (the tiny Llama): with
    every trial's held-out outputs shuffled across examples and their answers swapped, the ladder's plan and
    select's choice stay the same and the held-out report changes; select says where the split came from."""
    from rank_sweep.commands.select import choose
    from rank_sweep.results.predictions import save_predictions
    from rank_sweep.results.readers import records_from_study
    from rank_sweep.study.plan import plan
    from rank_sweep.study.run import build_spec, run_study
    from tests.lm_helpers import compose_lm, lm_overrides, make_lm_toy, make_tiny_llama

    monkeypatch.chdir(tmp_path)
    llama, toy = make_tiny_llama(tmp_path / "llama"), make_lm_toy(tmp_path / "toy")
    cfg = compose_lm(lm_overrides(llama, toy, tmp_path) + [
        "task.max_train_samples=64", "task.holdout_size=100", "search.ladder=[1,2]", "search.target_sets=[[Wq,Wv]]",
        "search.extend=false", "search.lr_probe=[]", f"search.storage=sqlite:///{tmp_path}/optuna.db"])
    study = run_study(cfg)
    records = records_from_study(study)
    assert len(records) == 2 and all(r.run_id for r in records)

    def decisions(where: str):
        choice = choose(cfg, {"output_dir": str(tmp_path / where), "tolerance": 0.005}, {})
        s = choice.selection
        return plan(records, build_spec(cfg)), (s.chosen, s.best, s.reason, s.runners_up, s.vs_best), choice

    plan_before, choice_before, before = decisions("a")
    rng = np.random.default_rng(0)
    for rec in records:  # every held-out file: outputs shuffled across examples, the two columns swapped
        path = predictions_path(cfg.output_dir, rec.run_id, HOLDOUT_ARTIFACT)
        p = load_predictions(path)
        save_predictions(path, p.outputs[rng.permutation(len(p))][:, ::-1], p.label, index=p.index)
    plan_after, choice_after, after = decisions("b")
    assert plan_after == plan_before and choice_after == choice_before  # decisions read the decision split only
    label = before.selection.chosen.label
    assert abs(after.held[label].score.estimate - before.held[label].score.estimate) > 0.05  # the report did change
    source = (f"held-out: 100 examples of lm_toy from the training examples the subsample leaves unused "
              f"({os.path.join(toy, 'train.jsonl')}, sha256 {holdout.file_sha256(os.path.join(toy, 'train.jsonl'))[:12]}")
    assert source in before.report and source in after.report
    capsys.readouterr()
