"""issue #13.11: no swallowed or misreported errors in the study's report and select's adapter lookup."""

from __future__ import annotations

import os
from types import SimpleNamespace

import optuna
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from optuna.trial import TrialState

from rank_sweep.config import RunConfig
from rank_sweep.errors import TrackingError
from rank_sweep.results.records import ConfigSummary, TrialRecord
from rank_sweep.study import report
from rank_sweep.study.workers import WORKER_ATTR, this_worker


def _info():
    summaries = [ConfigSummary("Wq", r, 1, 0.5 + 0.1 * r, 0.0, 10 * r, 100 + 10 * r, 1.0) for r in (1, 2)]
    records = [TrialRecord(i, "Wq", r, 0, "COMPLETE", 0.5 + 0.1 * r, 10 * r, 100 + 10 * r, 1.0, intermediate=(0.5,))
               for i, r in enumerate((1, 2))]
    return {"summaries": summaries, "records": records}


def test_one_failing_plot_is_named_and_the_others_are_drawn(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("a broken backend\nwith a second line")

    monkeypatch.setattr(report.plots, "plot_pareto", broken)
    skipped = report.draw_plots(_info(), RunConfig(), str(tmp_path))
    assert skipped == ["plot pareto.png skipped: ValueError: a broken backend"]
    assert sorted(os.listdir(tmp_path)) == ["learning_curves.png", "rank_curves.png"]


class _Client:
    def __init__(self, error):
        self.error = error

    def get_run(self, run_id):
        raise self.error


def test_a_parent_run_the_store_lost_is_replaced_but_a_store_error_stops_the_study():
    uri = "sqlite:///mlflow.db"
    gone = MlflowException("Run 'abc' not found", error_code=RESOURCE_DOES_NOT_EXIST)  # as MLflow's stores raise it
    assert report._usable_run(_Client(gone), "abc", uri) is False
    with pytest.raises(TrackingError, match="failed while reading the study's parent run abc"):
        report._usable_run(_Client(ConnectionError("connection reset by peer")), "abc", uri)


def test_the_parent_run_stays_running_while_another_worker_trains(tmp_path, monkeypatch):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/o.db")
    other = optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs={
        WORKER_ATTR: {**this_worker(), "host": "elsewhere", "pid": 1}})
    study.add_trial(other)
    closed = []
    client = SimpleNamespace(set_terminated=lambda run_id, status: closed.append(status))
    monkeypatch.setattr(report, "finish", lambda *a, **k: "summary so far")
    report.wrap_up(study, client, "parent", None, RunConfig(), "done", "FINISHED", 0.0)
    assert closed == []  # the other worker closes it when it finishes
    assert report.others_running(study) == [0]
    study._storage.set_trial_state_values(study.trials[0]._trial_id, state=TrialState.COMPLETE, values=[0.5])
    report.wrap_up(study, client, "parent", None, RunConfig(), "done", "FINISHED", 0.0)
    assert closed == ["FINISHED"]


def test_select_says_when_the_store_cannot_be_read_about_the_adapter(tmp_path, monkeypatch):
    from rank_sweep.commands.select import save_chosen_adapter

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = RunConfig()
    cfg.tracking.uri, cfg.output_dir = "http://127.0.0.1:9", str(tmp_path / "outputs")
    rec = TrialRecord(3, "Wq", 4, 0, "COMPLETE", 0.8, 10, 20, 1.0, run_id="abc123")
    path, line = save_chosen_adapter(cfg, rec, str(tmp_path), "rank-sweep-trial ...")
    assert path is None
    assert "could not be read about trial 3's adapter" in line and "save_adapter=false" not in line
