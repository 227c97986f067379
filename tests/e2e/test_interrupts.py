"""Interrupts (rank_sweep.interrupts): a signal at each phase of a study (load, fit, record, summary) ends the
command with one line and status 130 (SIGINT) / 143 (SIGTERM), no traceback (a second signal included), and leaves
the Optuna study and the MLflow store agreeing: every trial COMPLETE in one is FINISHED in the other, every FAIL
is FAILED (or has no run), nothing is left RUNNING, and both select sources read the same finished trials. The
signal is sent by the process itself from a patched function of the phase (the driver below), so it lands in
the phase every time."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import toy_overrides

STUDY = ["search.ladder=[1,2]", "search.target_sets=[[Wq]]", "search.extend=false", "search.lr_probe=[]",
         "search.study_name=s", "trainer.epochs=2"]
STEPS_PER_TRIAL = 32  # the toy set: 256 examples, batch 16, 2 epochs

DRIVER = r"""
import os, signal, sys
sig, phase, times = getattr(signal, os.environ["KILL_SIG"]), os.environ["KILL_PHASE"], int(os.environ["KILL_TIMES"])
count = {"n": 0}
def kill():  # all the signals at once: the first one's KeyboardInterrupt is raised after the last is sent
    caught = None
    for _ in range(times):
        try:
            os.kill(os.getpid(), sig)
        except KeyboardInterrupt as e:
            caught = caught or e
    if caught is not None:
        raise caught
def patch(owner, name, when):
    original = getattr(owner, name)
    def patched(*args, **kwargs):
        count["n"] += 1
        if count["n"] == when:
            kill()
        return original(*args, **kwargs)
    setattr(owner, name, patched)
from rank_sweep.study import run
from rank_sweep.train import loading, model, trial
if phase == "load":  # loading the model, before the study or any run exists
    patch(loading.WorkerCache, "tokenizer_and_model", 1)
elif phase == "fit":  # a few steps into the second trial's training
    patch(model.SequenceClassifier, "training_step", int(os.environ["KILL_STEP"]))
elif phase == "record":  # the second trial trained, its score and runs being written
    patch(trial, "_record", 2)
elif phase == "summary":  # the study's summary
    patch(run, "wrap_up", 1)
from rank_sweep.cli import sweep
sys.argv = ["rank-sweep", *sys.argv[1:]]
sweep()
"""


def _sweep(args, tmp, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=tmp, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})})


def stores(tmp) -> dict:
    """Each Optuna trial's state and its MLflow run's status; the parent runs' statuses; both sources' usable
    trials."""
    from rank_sweep.results.readers import records_from_mlflow, records_from_study

    uri, storage = f"sqlite:///{tmp}/mlflow.db", f"sqlite:///{tmp}/optuna.db"
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)] if (tmp / "optuna.db").exists() else []
    if "s" not in names:  # interrupted before the study was created
        return {"trials": [], "parents": [], "same": True}
    study = optuna.load_study(study_name="s", storage=storage)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("rank_sweep")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    status = {r.info.run_id: r.info.status for r in runs}
    trials = [(t.number, t.state.name, status.get(t.user_attrs.get("mlflow_run_id"))) for t in study.trials]
    parents = [r.info.status for r in runs if r.data.tags.get("kind") != "trial"]

    def usable(records):
        return sorted((r.number, r.targets, r.r, r.seed, round(r.score, 6)) for r in records if r.usable)

    same = usable(records_from_study(study)) == usable(records_from_mlflow(uri, "s"))
    return {"trials": trials, "parents": parents, "same": same, "orphans": sorted(
        s for rid, s in status.items() if rid not in {t.user_attrs.get("mlflow_run_id") for t in study.trials}
        and rid not in {r.info.run_id for r in runs if r.data.tags.get("kind") != "trial"})}


def _agree(held: dict) -> None:
    for _, state, run_status in held["trials"]:
        assert (state, run_status) in {("COMPLETE", "FINISHED"), ("FAIL", "FAILED"), ("FAIL", None)}, held
    assert "RUNNING" not in held["parents"] and not held.get("orphans"), held
    assert held["same"], held


# phase, signal, how many at once (a second one must be ignored), exit status, Optuna states after
PHASES = [
    ("load", "SIGINT", 1, 130, []),
    ("fit", "SIGTERM", 1, 143, ["COMPLETE", "FAIL"]),
    ("fit", "SIGINT", 2, 130, ["COMPLETE", "FAIL"]),
    ("record", "SIGINT", 2, 130, ["COMPLETE", "COMPLETE"]),
    ("summary", "SIGINT", 2, 130, ["COMPLETE", "COMPLETE"]),
]


@pytest.mark.parametrize("phase, sig, times, status, states", PHASES, ids=[f"{p[0]}-{p[1]}-x{p[2]}" for p in PHASES])
def test_a_signal_in_each_phase_leaves_both_stores_agreeing(tiny_model_dir, toy_data_dir, tmp_path, phase, sig,
                                                            times, status, states):
    args = toy_overrides(tiny_model_dir, toy_data_dir, tmp_path) + STUDY
    res = _sweep(args, tmp_path, {"KILL_SIG": sig, "KILL_PHASE": phase, "KILL_TIMES": str(times),
                                  "KILL_STEP": str(STEPS_PER_TRIAL + 3)})
    out = res.stdout + res.stderr
    assert res.returncode == status, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    lines = [x for x in res.stderr.splitlines() if x.startswith("rank-sweep: interrupted by")]
    assert lines == [f"rank-sweep: interrupted by {sig}: finished trials are kept, the one training is FAIL in the "
                     f"study and FAILED in MLflow; rerun the same command to resume"], res.stderr[-3000:]
    held = stores(tmp_path)
    print(f"{phase} ({sig} x{times}): exit {res.returncode}; trials {held['trials']}; parent runs "
          f"{held['parents']}; both select sources agree: {held['same']}")
    assert [s for _, s, _ in held["trials"]] == states, held
    _agree(held)
    if phase == "summary":
        assert "already stopping" in res.stderr and "ladder Wq" in res.stdout  # the summary was printed whole
    if phase == "fit" and sig == "SIGTERM":  # the rerun resumes: the interrupted point is trained again, and the stores still agree
        again = _sweep(args, tmp_path, {"KILL_SIG": "SIGINT", "KILL_PHASE": "none", "KILL_TIMES": "0"})
        assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
        held = stores(tmp_path)
        print(f"fit, resumed: trials {held['trials']}; parent runs {held['parents']}; agree: {held['same']}")
        assert [s for _, s, _ in held["trials"]] == ["COMPLETE", "FAIL", "COMPLETE"], held
        _agree(held)


def test_a_resume_reconciles_a_finished_run_whose_trial_failed(tmp_path):
    """What a signal between the two writes left before rank_sweep.interrupts (FAIL in Optuna, FINISHED in
    MLflow): the next run of the study marks the run FAILED, so both stores say the same. No training here."""
    from rank_sweep import tracking

    client, exp = tracking.connect(f"sqlite:///{tmp_path}/mlflow.db", "rank_sweep")
    parent = client.create_run(exp).info.run_id
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db")
    runs = {}
    for number, state in enumerate((optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)):
        trial = study.ask()
        runs[number] = tracking.start_run(client, exp, f"trial {number}", {}, {"optuna_trial": number},
                                          parent_run_id=parent)
        trial.set_user_attr("mlflow_run_id", runs[number])
        tracking.end_run(client, runs[number], "FINISHED")
        study.tell(trial, 0.5 if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    fixed = tracking.reconcile_runs(client, exp, parent, {t.number: t for t in study.get_trials()})
    assert fixed == [runs[1]]
    assert [client.get_run(runs[n]).info.status for n in (0, 1)] == ["FINISHED", "FAILED"]
    assert client.get_run(runs[1]).data.tags["failure_reason"].startswith("the Optuna trial 1 is FAIL")
    assert tracking.reconcile_runs(client, exp, parent, {t.number: t for t in study.get_trials()}) == []
