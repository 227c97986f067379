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
