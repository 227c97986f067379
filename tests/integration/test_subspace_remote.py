"""The subspace report of a study whose trials ran on other machines: their A factors are not in this
worker's output folder, so they come from the trials' MLflow artifacts."""

from __future__ import annotations

import shutil

import optuna
import pytest
from mlflow.tracking import MlflowClient

from rank_sweep.study import report as study_report
from rank_sweep.study.report import subspace_report, summarize
from rank_sweep.study.run import build_spec, run_study

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def test_subspace_report_fetches_factors_from_mlflow_when_not_local(toy_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(study_report, "PARENT_SETTLE_SECONDS", 0.05)
    cfg = toy_cfg
    cfg.search.ladder, cfg.search.target_sets, cfg.search.extend = [1, 4], [["Wq", "Wv"]], False
    cfg.search.storage = f"sqlite:///{tmp_path}/optuna.db"
    study = run_study(cfg)
    study = optuna.load_study(study_name=cfg.study_name(), storage=cfg.search.storage)
    _, info = summarize(study, build_spec(cfg), cfg)
    client = MlflowClient(cfg.tracking.resolved_uri())
    for d in "abc":
        (tmp_path / d).mkdir()
    local = subspace_report(info, build_spec(cfg), cfg, str(tmp_path / "a"), client)
    assert local and all(line.startswith("subspace Wq,Wv") for line in local)

    shutil.rmtree(tmp_path / "outputs" / "factors")  # as on another machine: no local factors
    assert subspace_report(info, build_spec(cfg), cfg, str(tmp_path / "b")) == []  # no store to ask
    assert subspace_report(info, build_spec(cfg), cfg, str(tmp_path / "c"), client) == local
    assert (tmp_path / "c" / "subspace_Wq_Wv.png").stat().st_size > 0
