"""Three workers on one study, against a real PostgreSQL server (the study) and a real MLflow tracking server
(the runs), with tiny models; compared with one worker on the same study settings.

The servers come from ``.ci/services`` (CI starts them; locally: ``eval "$(bash .ci/services start)"``), which
exports RANK_SWEEP_PG_URL and RANK_SWEEP_MLFLOW_URI; without them this module is skipped."""

from __future__ import annotations

import os
import subprocess
import uuid

import optuna
import pytest
from mlflow.tracking import MlflowClient

from rank_sweep.config import RunConfig, SearchConfig
from rank_sweep.results.readers import records_from_study
from rank_sweep.study import run as study_run
from rank_sweep.study import sampler as study_sampler
from rank_sweep.study import storage as study_storage
from rank_sweep.study import workers as study_workers
from rank_sweep.study.plan import plan
from tests.conftest import toy_overrides
from tests.e2e.test_cli import BIN

PG = os.environ.get("RANK_SWEEP_PG_URL")
MLFLOW = os.environ.get("RANK_SWEEP_MLFLOW_URI")
pytestmark = [
    pytest.mark.skipif(not (PG and MLFLOW), reason="no PostgreSQL/MLflow server: eval \"$(bash .ci/services start)\""),
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]
SEARCH = ["search.ladder=[1,2,4,8]", "search.target_sets=[[Wq],[Wq,Wv]]", "search.extend_max_rank=2",
          "search.heartbeat_seconds=10", "search.lr_probe=[]"]  # the points compared here: no learning-rate probe


def worker_args(model_dir, data_dir, tmp, name, storage, uri) -> list[str]:
    return toy_overrides(model_dir, data_dir, tmp) + SEARCH + [
        "trainer.num_threads=1",  # the toy default of 5 epochs: it learns, so ladders plateau and guesses get pruned
        f"search.storage={storage}", f"search.study_name={name}", f"tracking.uri={uri}", f"tracking.experiment={name}",
    ]


def start(args, cwd) -> subprocess.Popen:
    return subprocess.Popen([os.path.join(BIN, "rank-sweep"), *args], cwd=cwd, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "HYDRA_FULL_ERROR": "0"})


def decisions(study) -> tuple:
    """What the ladder decided: per ladder its rungs (rank, decision), reason and plateau rank; the extensions."""
    cfg = RunConfig()
    cfg.search = SearchConfig(ladder=[1, 2, 4, 8], target_sets=[["Wq"], ["Wq", "Wv"]], extend_max_rank=2, lr_probe=[],
                              lr_bracket=[], head_reference=False, allocation_sets=[])  # as the workers (toy_overrides)
    p = plan(study_sampler.trial_records(study), study_run.build_spec(cfg))
    return ([(lad.targets, [(g.r, g.decision) for g in lad.rungs], lad.reason.split(" (")[0], lad.plateau_rank)
             for lad in p.ladders], p.extensions, p.done)


def point(t) -> tuple:
    return t.params["targets"], t.params["r"], t.params["seed"]


def test_three_workers_on_postgresql_and_an_mlflow_server_match_one_worker(tiny_model_dir, toy_data_dir, tmp_path):
    name = f"scale-{uuid.uuid4().hex[:8]}"
    args = worker_args(tiny_model_dir, toy_data_dir, tmp_path, name, PG, MLFLOW)
    workers = [start(args, tmp_path) for _ in range(3)]
    # the reference: one worker, same settings, its own study on a local SQLite file
    ref_dir = tmp_path / "one"
    ref_dir.mkdir()
    ref = start(worker_args(tiny_model_dir, toy_data_dir, ref_dir, "one", f"sqlite:///{ref_dir}/optuna.db",
                            f"sqlite:///{ref_dir}/mlflow.db"), ref_dir)
    outs = [p.communicate(timeout=900)[0] for p in (*workers, ref)]
    for p, out in zip((*workers, ref), outs, strict=True):
        assert p.returncode == 0, out[-4000:]
        assert "done: every ladder stopped" in out, out[-2000:]

    study = optuna.load_study(study_name=name, storage=study_storage.open_storage(PG))
    one = optuna.load_study(study_name="one", storage=study_storage.open_storage(f"sqlite:///{ref_dir}/optuna.db"))
    # the ladder's decisions are those of the single worker
    assert decisions(study) == decisions(one)
    assert decisions(study)[2] is True
    # every point was trained once: one COMPLETE trial per point, no point held by two live trials
    done = [point(t) for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == len(set(done))
    with_params = [point(t) for t in study.trials if t.params and t.state.name != "FAIL"]
    assert len(with_params) == len(set(with_params)), "a point was run twice"
    # ... and the single worker's points are all there; anything more was a speculative rung, finished or pruned
    ref_done = {point(t) for t in one.trials if t.state.name == "COMPLETE"}
    assert ref_done <= set(done)
    extra = [t for t in study.trials if t.params and point(t) not in ref_done]
    assert all(t.user_attrs.get("speculative") for t in extra), [point(t) for t in extra]
    assert all(t.user_attrs.get("pruned_reason", "").startswith("speculative rung no longer needed")
               for t in extra if t.state.name == "PRUNED")
    # the work was shared (a worker that starts late may find the study almost done, so not "all three")
    assert len({t.system_attrs[study_workers.WORKER_ATTR]["pid"] for t in study.trials if t.params}) >= 2
    # the scores match the single worker's, point by point (seeded, deterministic trials)
    ref_scores = {point(t): t.value for t in one.trials if t.state.name == "COMPLETE"}
    assert {p: v for p, v in ((point(t), t.value) for t in study.trials if t.state.name == "COMPLETE")
            if p in ref_scores} == pytest.approx(ref_scores, abs=1e-6)

    # MLflow: one parent run of the study, every trial a child of it, the finished ones FINISHED
    client = MlflowClient(MLFLOW)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("kind") == "study"]
    children = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.run_id == study.user_attrs["mlflow_parent_run_id"]
    assert parents[0].info.status == "FINISHED"
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    by_id = {c.info.run_id: c for c in children}
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert all(by_id[t.user_attrs["mlflow_run_id"]].info.status == "FINISHED" for t in complete)
    assert len(children) == len([t for t in study.trials if t.params])
    assert all(rec.lora_params for rec in records_from_study(study) if rec.state == "COMPLETE")
