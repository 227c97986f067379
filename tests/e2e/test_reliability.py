"""Reliability: a sweep survives kill -9, failing trials, a second worker, a tracking store that goes away,
and never shows credentials. Tiny model, ladders of 1-2 rungs; the kill and two-worker tests run the
command in subprocesses, the rest call ``run_study`` in-process with failures injected by monkeypatching."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from rank_sweep import tracking
from rank_sweep.errors import TrackingError, TrialsFailed
from rank_sweep.study import objective as study_objective
from rank_sweep.study import report as study_report
from rank_sweep.study import run as study_run
from rank_sweep.study import storage as study_storage
from rank_sweep.study import workers as study_workers
from rank_sweep.study.objective import distributions
from rank_sweep.study.run import build_spec, run_study
from rank_sweep.study.storage import load_or_create_study
from rank_sweep.study.workers import WORKER_ATTR
from tests.conftest import toy_overrides
from tests.e2e.test_cli import BIN, run

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fast_parent_settle(monkeypatch):
    monkeypatch.setattr(study_report, "PARENT_SETTLE_SECONDS", 0.05)  # in-process: one worker, no race to settle


def sweep_args(model_dir, data_dir, tmp, *extra) -> list[str]:
    """One ladder [1, 2] of Wq; 128 training examples so a trial lasts seconds."""
    return toy_overrides(model_dir, data_dir, tmp) + [
        "search.ladder=[1,2]", "search.target_sets=[[Wq]]", "search.extend=false", "search.heartbeat_seconds=2",
        "search.lr_probe=[]",  # a first rung at 128 examples may not learn: no probe here (tests/unit/study)
        "task.max_train_samples=128", "trainer.epochs=3", f"search.storage=sqlite:///{tmp}/optuna.db", *extra,
    ]


def mlflow_runs(tmp) -> tuple[MlflowClient, list, list]:
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("rank_sweep")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return (client, [r for r in runs if r.data.tags.get("kind") == "study"],
            [r for r in runs if r.data.tags.get("kind") == "trial"])


def point(t) -> tuple:
    return t.params["targets"], t.params["r"], t.params["seed"]


def by_trial(children) -> dict[int, object]:
    return {int(r.data.tags["optuna_trial"]): r for r in children}


def set_search(cfg, storage: str, **values):
    cfg.search.storage = storage
    for key, value in {"ladder": [1, 2], "target_sets": [["Wq"]], "extend": False, "heartbeat_seconds": 2,
                       "lr_probe": [], **values}.items():  # the points these tests count: no learning-rate probe
        setattr(cfg.search, key, value)
    cfg.task.max_train_samples, cfg.trainer.epochs = 64, 1
    return cfg


# --- 1. kill -9 in the middle of a trial, then the same command again -------------------------------------------

def _running_trial_with_run(db: Path, number: int) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            row = con.execute("SELECT t.state FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                              "WHERE t.number = ? AND a.key = 'mlflow_run_id'", (number,)).fetchone()
    except sqlite3.Error:  # not created yet, or locked for a moment
        return False
    return bool(row) and row[0] == "RUNNING"


def test_kill_9_mid_trial_then_rerun_resumes_without_rerunning_finished_trials(tiny_model_dir, toy_data_dir,
                                                                                tmp_path):
    args = sweep_args(tiny_model_dir, toy_data_dir, tmp_path)
    proc = subprocess.Popen([os.path.join(BIN, "rank-sweep"), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not _running_trial_with_run(tmp_path / "optuna.db", 1):  # trial 0 done, trial 1 training
            assert proc.poll() is None, f"the sweep ended before it could be killed:\n{proc.stdout.read()[-3000:]}"
            assert time.time() < deadline, "trial 1 never started"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    url = f"sqlite:///{tmp_path}/optuna.db"
    before = optuna.load_study(study_name="tiny_bert-toy-ladder", storage=url).trials
    assert [t.state.name for t in before] == ["COMPLETE", "RUNNING"]  # what kill -9 leaves behind
    _, parents, children = mlflow_runs(tmp_path)
    assert [p.info.status for p in parents] == ["RUNNING"]
    assert sorted(c.info.status for c in children) == ["FINISHED", "RUNNING"]
    parent_id = parents[0].info.run_id

    again = run("rank-sweep", args, tmp_path, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert "Traceback" not in again.stderr
    assert re.search(r"trial +1 +Wq +r=2 .* fail .*\[worker lost", again.stdout), again.stdout
    assert "done: every ladder stopped" in again.stdout

    trials = optuna.load_study(study_name="tiny_bert-toy-ladder", storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]  # no junk trial, no busy loop
    assert trials[0].datetime_complete == before[0].datetime_complete  # the finished trial was not rerun
    assert trials[1].user_attrs["fail_reason"].startswith("worker lost")
    assert point(trials[1]) == point(trials[2]) == ("Wq", 2, 0)  # the killed point was retried
    # the configs a run without the kill produces: the whole ladder, each point once
    assert sorted(point(t) for t in trials if t.state.name == "COMPLETE") == [("Wq", 1, 0), ("Wq", 2, 0)]

    client, parents, children = mlflow_runs(tmp_path)
    assert [(p.info.run_id, p.info.status) for p in parents] == [(parent_id, "FINISHED")]  # reused, closed
    runs = by_trial(children)
    assert sorted(runs) == [0, 1, 2]
    assert all(r.data.tags["mlflow.parentRunId"] == parent_id for r in children)
    assert [runs[n].info.status for n in (0, 1, 2)] == ["FINISHED", "FAILED", "FINISHED"]
    assert runs[1].info.run_id == before[1].user_attrs["mlflow_run_id"]  # known from the start of the trial
    assert runs[1].data.tags["failure_reason"].startswith("worker lost")


def test_running_trial_of_a_lost_worker_elsewhere_is_waited_for_then_failed_and_retried(toy_cfg, tmp_path, capsys,
                                                                                       monkeypatch):
    """The heartbeat path: a RUNNING trial of a worker on another machine (so no local process check) whose
    heartbeat stops is waited for, not duplicated; once stale it is failed and its point retried."""
    url = f"sqlite:///{tmp_path}/optuna.db"
    cfg = set_search(toy_cfg, url, ladder=[1])
    spec = build_spec(cfg)
    study = load_or_create_study(cfg, spec, url)
    trial = study.ask()
    for name, dist in distributions(cfg, spec).items():
        trial.suggest_categorical(name, dist.choices)
    study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, {"host": "elsewhere", "pid": 1, "start": "1"})
    study._storage.record_heartbeat(trial._trial_id)
    optimize = study_run.optimize

    def beat_then_optimize(*args, **kwargs):  # its last beat: just before this worker looks (a loaded machine
        study._storage.record_heartbeat(trial._trial_id)  # may take over 2 s to load the model), then never again
        return optimize(*args, **kwargs)

    monkeypatch.setattr(study_run, "optimize", beat_then_optimize)
    t0 = time.time()
    run_study(cfg)
    out = capsys.readouterr().out
    assert "waiting for 1 running trial(s) [0] (another worker, or a killed one whose heartbeat goes stale in <= 2s)" \
        in out
    assert out.count("waiting for") == 1  # one line, not one per poll
    assert time.time() - t0 >= 2
    trials = optuna.load_study(study_name=study.study_name, storage=url).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[0].user_attrs["fail_reason"].startswith("worker lost: no heartbeat for more than 2s")
    assert point(trials[1]) == ("Wq", 1, 0)


def test_worker_is_gone_only_for_a_dead_process_of_this_machine():
    me = study_workers.this_worker()
    assert not study_workers.worker_is_gone(me)
    assert study_workers.worker_is_gone({**me, "start": "0"})  # the pid now belongs to another process (or none)
    assert study_workers.worker_is_gone({**me, "pid": 2 ** 22 + 7})  # above pid_max: no such process
    assert not study_workers.worker_is_gone({**me, "pid": 2 ** 22 + 7, "host": "elsewhere"})  # the heartbeat decides
    assert not study_workers.worker_is_gone(None)


# --- 2. failing trials ------------------------------------------------------------------------------------------

def test_failing_trials_are_recorded_with_their_reason_and_the_sweep_goes_on(toy_cfg, tmp_path, monkeypatch,
                                                                             capsys):
    """r=1 diverges (lr=1e30: NaN loss), r=2 raises inside the model, r=4 trains: both failures are FAIL in
    Optuna with fail_reason and FAILED in MLflow with failure_reason; the plateau rule skips them."""
    from rank_sweep.train import model as model_mod

    url = f"sqlite:///{tmp_path}/optuna.db"
    cfg = set_search(toy_cfg, url, ladder=[1, 2, 4], target_sets=[["Wq", "Wv"]], max_retries=0)
    cfg.task.max_train_samples, cfg.trainer.epochs = None, 5  # enough for r=4 to learn the toy task
    real_config = study_objective.trial_config

    def trial_config(cfg, point, **overrides):
        run = real_config(cfg, point, **overrides)
        if point.r == 1:
            run.trainer.lr = 1e30
        return run

    real_step = model_mod.SequenceClassifier.training_step

    def training_step(self, batch, batch_idx):
        if self.model.peft_config["default"].r == 2:
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (simulated error inside the model)")
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(study_objective, "trial_config", trial_config)
    monkeypatch.setattr(model_mod.SequenceClassifier, "training_step", training_step)
    run_study(cfg)
    out = capsys.readouterr().out

    trials = optuna.load_study(study_name="tiny_bert-toy-ladder", storage=url).trials
    assert [(t.params["r"], t.state.name) for t in trials] == [(1, "FAIL"), (2, "FAIL"), (4, "COMPLETE")]
    assert re.match(r"NonFiniteLossError: training loss is (nan|inf|-inf) at step \d+", trials[0].user_attrs["fail_reason"])
    assert trials[1].user_attrs["fail_reason"].startswith("RuntimeError: mat1 and mat2 shapes")
    assert re.search(r"trial +0 +Wq,Wv +r=1 .* fail .*\[NonFiniteLossError: training loss is", out), out
    assert re.search(r"trial +1 +Wq,Wv +r=2 .* fail .*\[RuntimeError: mat1", out), out

    _, parents, children = mlflow_runs(tmp_path)
    runs = by_trial(children)
    assert [runs[n].info.status for n in (0, 1, 2)] == ["FAILED", "FAILED", "FINISHED"]
    assert runs[0].data.tags["failure_reason"].startswith("NonFiniteLossError")
    assert runs[1].data.tags["failure_reason"].startswith("RuntimeError: mat1")
    assert [runs[n].info.run_id for n in (0, 1)] == [trials[n].user_attrs["mlflow_run_id"] for n in (0, 1)]

    decisions = json.loads((Path(MlflowClient(cfg.tracking.resolved_uri()).download_artifacts(
        parents[0].info.run_id, "decisions.json", str(tmp_path)))).read_text())
    lad = decisions["ladders"]["Wq,Wv"]
    assert [(g["r"], g["decision"]) for g in lad["rungs"]] == [(1, "failed"), (2, "failed"), (4, "first")]
    assert lad["plateau_rank"] == 4 and "plateau" not in lad["reason"]  # failures are no plateau signal


def test_consecutive_failures_stop_the_study_with_a_clear_message(toy_cfg, tmp_path, monkeypatch, capsys):
    from rank_sweep.train import model as model_mod

    def training_step(self, batch, batch_idx):
        raise RuntimeError("CUDA error: device-side assert triggered (simulated)")

    monkeypatch.setattr(model_mod.SequenceClassifier, "training_step", training_step)
    url = f"sqlite:///{tmp_path}/optuna.db"
    cfg = set_search(toy_cfg, url, max_retries=5, max_consecutive_failures=2)
    with pytest.raises(TrialsFailed) as err:  # the command exits 1 with it (#28: it exited 0)
        run_study(cfg)
    out = capsys.readouterr().out
    reason = ("stopped: the last 2 trials failed (search.max_consecutive_failures=2); last error: "
              "RuntimeError: CUDA error: device-side assert triggered (simulated)")
    assert reason in out and str(err.value).startswith(reason) and "rerun the same command" in str(err.value)
    trials = optuna.load_study(study_name="tiny_bert-toy-ladder", storage=url).trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]  # stopped: no third trial
    _, parents, children = mlflow_runs(tmp_path)
    assert [c.info.status for c in children] == ["FAILED", "FAILED"]
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["stop_reason"] == reason


# --- 3. two workers on one study --------------------------------------------------------------------------------

def test_two_workers_share_one_study_on_a_journal_file(tiny_model_dir, toy_data_dir, tmp_path):
    journal = tmp_path / "study.journal"
    args = toy_overrides(tiny_model_dir, toy_data_dir, tmp_path) + [
        "search.ladder=[1,2]", "search.target_sets=[[Wq],[Wq,Wv]]", "search.extend=false", "search.lr_probe=[]",
        "task.max_train_samples=128", "trainer.epochs=3", "trainer.num_threads=1", f"search.storage={journal}"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    procs = [subprocess.Popen([os.path.join(BIN, "rank-sweep"), *args], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
        assert "done: every ladder stopped" in out  # each worker's ladder saw the other's results

    storage = study_storage.open_storage(str(journal))
    study = optuna.load_study(study_name="tiny_bert-toy-ladder", storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(point(t) for t in done) == [("Wq", 1, 0), ("Wq", 2, 0), ("Wq,Wv", 1, 0), ("Wq,Wv", 2, 0)]
    assert all(not t.params for t in study.trials if t.state.name != "COMPLETE")  # nothing trained twice
    workers = {t.system_attrs[WORKER_ATTR]["pid"] for t in done}
    assert workers == {p.pid for p in procs}, "both workers trained"

    _, parents, children = mlflow_runs(tmp_path)
    assert len(parents) == 1, [p.info.run_id for p in parents]  # exactly one parent survives the race
    assert parents[0].info.run_id == study.user_attrs["mlflow_parent_run_id"]
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert sorted(c.info.run_id for c in children) == sorted(t.user_attrs["mlflow_run_id"] for t in done)


def test_workers_creating_the_parent_run_together_keep_exactly_one(toy_cfg, tmp_path, monkeypatch):
    """Both workers find no parent, both create one at the same moment: one survives, the other is deleted,
    and both use the survivor."""
    import threading

    from mlflow.entities import ViewType

    monkeypatch.setattr(study_report, "PARENT_SETTLE_SECONDS", 0.5)
    cfg = set_search(toy_cfg, str(tmp_path / "study.journal"))
    spec = build_spec(cfg)
    barrier, chosen = threading.Barrier(2), []

    def worker():
        client, exp = tracking.connect(cfg.tracking.resolved_uri(), cfg.tracking.experiment)
        study = load_or_create_study(cfg, spec, cfg.search.storage)
        barrier.wait()
        chosen.append(study_report.parent_run(study, client, exp, cfg, spec))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(chosen) == 2 and chosen[0] == chosen[1]
    client, parents, _ = mlflow_runs(tmp_path)
    assert [p.info.run_id for p in parents] == chosen[:1]
    exp = client.get_experiment_by_name("rank_sweep").experiment_id
    every = client.search_runs([exp], run_view_type=ViewType.ALL)
    assert sorted(r.info.lifecycle_stage for r in every) == ["active", "deleted"]  # the loser's run is gone


# --- 4. the tracking store unavailable --------------------------------------------------------------------------

def test_unreachable_tracking_uri_fails_in_one_line_before_any_trial(tiny_model_dir, toy_data_dir, tmp_path):
    res = run("rank-sweep", sweep_args(tiny_model_dir, toy_data_dir, tmp_path, "tracking.uri=http://127.0.0.1:9"),
              tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("rank-sweep: error:")]
    assert len(lines) == 1 and "cannot use the MLflow tracking store 'http://127.0.0.1:9': no tracking server answers there" in lines[0], res.stderr
    assert not (tmp_path / "optuna.db").exists()  # no study, no trial
    assert "trial " not in res.stdout


class FlakyClient:
    """An MlflowClient whose store goes away: after its ``n``-th ``create_run``, ``k`` more calls succeed."""

    def __init__(self, client, n, k):
        self.client, self.n, self.k, self.created = client, n, k, 0
        self.calls_left = None

    def __getattr__(self, name):
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if self.calls_left is not None:
                if self.calls_left <= 0:
                    raise ConnectionError("tracking server went away (simulated)")
                self.calls_left -= 1
            result = attr(*args, **kwargs)
            if name == "create_run":
                self.created += 1
                if self.created == self.n:
                    self.calls_left = self.k
            return result
        return call


def test_tracking_store_lost_mid_study_is_reported_and_results_stay_in_optuna(toy_cfg, tmp_path, monkeypatch,
                                                                            capsys):
    url = f"sqlite:///{tmp_path}/optuna.db"
    cfg = set_search(toy_cfg, url)
    real_connect = tracking.connect

    def flaky_connect(uri, experiment):
        client, exp = real_connect(uri, experiment)
        return FlakyClient(client, n=3, k=2), exp  # parent, trial 0, trial 1: then params, config, and gone

    monkeypatch.setattr(tracking, "connect", flaky_connect)
    with pytest.raises(TrackingError) as err:
        run_study(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"the MLflow tracking store {cfg.tracking.resolved_uri()!r} failed while recording "
                          f"trial 1: Wq r=2 seed=0: ConnectionError: tracking server went away (simulated)")
    assert msg.endswith(f"the study stopped: its 1 finished trial(s) are kept in the study storage {url}; "
                        f"rerun the same command to resume once the store is back")
    assert "summary not logged to MLflow" in capsys.readouterr().out
    study = optuna.load_study(study_name="tiny_bert-toy-ladder", storage=url)
    assert [(t.state.name, point(t)) for t in study.trials] == [("COMPLETE", ("Wq", 1, 0)), ("FAIL", ("Wq", 2, 0))]
    assert study.trials[1].user_attrs["fail_reason"].startswith("the MLflow tracking store")
    _, _, children = mlflow_runs(tmp_path)
    assert by_trial(children)[1].info.status == "RUNNING"  # the store was gone: nobody could close it

    monkeypatch.setattr(tracking, "connect", real_connect)  # the store is back: resume
    run_study(cfg)
    trials = optuna.load_study(study_name="tiny_bert-toy-ladder", storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[0].datetime_complete == study.trials[0].datetime_complete
    _, parents, children = mlflow_runs(tmp_path)
    runs = by_trial(children)
    assert [runs[n].info.status for n in (0, 1, 2)] == ["FINISHED", "FAILED", "FINISHED"]  # the orphan is closed
    assert runs[1].data.tags["failure_reason"].startswith("the MLflow tracking store")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


# --- 6. credentials never logged; servers on 127.0.0.1 ----------------------------------------------------------

def test_credentials_in_store_urls_never_reach_mlflow_or_the_console(toy_cfg, tmp_path, monkeypatch, capsys):
    """tracking.uri and search.storage carry a password; the stores are redirected to local sqlite files,
    so everything the sweep prints and logs can be searched for it."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    cfg = set_search(toy_cfg, "postgresql://alice:hunter2secret@db.example:5432/optuna", ladder=[1])
    local = cfg.tracking.resolved_uri()
    cfg.tracking.uri = "https://alice:hunter2secret@mlflow.example"
    real_connect = tracking.connect
    monkeypatch.setattr(tracking, "connect", lambda uri, experiment: real_connect(local, experiment))
    monkeypatch.setattr(study_run, "open_storage", lambda url, heartbeat_seconds: study_storage.open_storage(storage))
    run_study(cfg)
    captured = capsys.readouterr()
    console = captured.out + captured.err
    assert "postgresql://***@db.example:5432/optuna" in console and "https://***@mlflow.example" in console

    client, parents, children = mlflow_runs(tmp_path)
    logged = [console]
    for r in parents + children:
        logged += [json.dumps(r.data.params), json.dumps(r.data.tags), r.info.run_name]
        folder = client.download_artifacts(r.info.run_id, "", str(tmp_path / "artifacts" / r.info.run_id))
        logged += [p.read_text(errors="replace") for p in Path(folder).rglob("*") if p.suffix in (".json", ".md", ".csv")]
    study = optuna.load_study(study_name="tiny_bert-toy-ladder", storage=storage)
    logged += [json.dumps(study.user_attrs, default=str)] + [json.dumps(t.user_attrs) for t in study.trials]
    text = "\n".join(logged)
    assert list((tmp_path / "artifacts").rglob("config.json")), "the trial's resolved config was searched too"
    assert "hunter2secret" not in text and "alice" not in text


def test_docs_start_servers_on_localhost_only():
    sources = [ROOT / "README.md", ROOT / "Makefile", *(ROOT / "docs").rglob("*.md"), ROOT / "rank_sweep" / "study" / "run.py"]
    commands = [line for p in sources if p.exists() for line in p.read_text().splitlines()  # commands, not names
                if re.search(r"(mlflow (ui|server)|optuna-dashboard) +[-\w$]", line)]
    assert commands, "the MLflow UI command is documented"
    for line in commands:
        assert "--host 127.0.0.1" in line and "0.0.0.0" not in line, line
