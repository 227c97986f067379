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


def test_a_trial_records_its_held_out_split_and_decides_as_without_it(toy_cfg):
    toy_cfg.task.max_train_samples, toy_cfg.task.holdout_size = 64, 150  # 192 unused toy training rows
    toy_cfg.trainer.epochs = 2
    on = run_trial(toy_cfg, cache=WorkerCache())
    toy_cfg.task.holdout = False
    off = run_trial(toy_cfg, cache=WorkerCache())
    assert (on.score, on.not_learning, on.score_ci, on.history) == (off.score, off.not_learning, off.score_ci,
                                                                     off.history)
    assert off.holdout == {} and on.holdout["holdout_size"] == 150
    run = MlflowClient(toy_cfg.tracking.resolved_uri()).get_run(on.run_id)
    m, p = run.data.metrics, run.data.params
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
