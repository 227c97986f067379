"""records_from_mlflow / load_mlflow_study on hand-built MLflow stores (no training).

:func:`log_study` writes a study the way ``rank-sweep`` does (parent run tagged
``kind=study``, child runs tagged ``kind=trial`` under ``mlflow.parentRunId``, the
same run names, params, metrics and tags); tests/e2e/test_notebook.py checks those
names against a real sweep and reuses it to feed the notebook."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from rank_sweep.errors import RankSweepError
from rank_sweep.results.readers import (
    _search_all,
    load_mlflow_study,
    record_from_run,
    records_from_mlflow,
    trial_number,
)
from rank_sweep.results.records import UNKNOWN, TrialRecord, aggregate
from rank_sweep.results.selection import select

HIDDEN, LAYERS, HEAD = 384, 6, 770  # MiniLM-L6: every adapted matrix is 384 x 384


def trial(targets: str, r: int, seed: int, score: float | None, status: str = "FINISHED", *,
          curve: tuple[float, ...] | None = None, not_learning: bool = False, name: str | None = None) -> dict:
    """One trial as log_study writes it; ``curve`` defaults to three epochs ending at ``score``."""
    if curve is None:
        curve = () if score is None else (score - 0.04, score - 0.01, score)
    return {"targets": targets, "r": r, "seed": seed, "score": score, "status": status, "curve": curve,
            "not_learning": not_learning, "name": name}


def _batch(client: MlflowClient, run_id: str, metrics=None, params=None, tags=None, step=0) -> None:
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()],
                     params=[Param(k, str(v)) for k, v in (params or {}).items()],
                     tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])


def log_study(client: MlflowClient, experiment_id: str, name: str, trials: list[dict], metric: str = "accuracy",
              ladder: tuple[int, ...] = (1, 2, 4)) -> str:
    """A study as rank_sweep.sweep / search.Objective / trial.run_trial log it; returns the parent run id."""
    parent = client.create_run(experiment_id, run_name=f"study {name}", tags={"kind": "study", "study_name": name})
    pid = parent.info.run_id
    sets = list(dict.fromkeys(t["targets"] for t in trials))
    _batch(client, pid, params={"study_name": name, "strategy": "ladder", "ladder": list(ladder),
                                "target_sets": sets, "seeds": sorted({t["seed"] for t in trials}),
                                "task": "sst2", "model": "minilm_l6", "epochs": 3, "lr": 1e-3})
    for number, t in enumerate(trials):
        full = t["targets"] == "full"
        run_name = t["name"] or f"trial {number}: {t['targets']} r={t['r']} seed={t['seed']}"
        tags = {"kind": "trial", "mlflow.parentRunId": pid}
        if t["name"] is None:  # a run of the study's own: it carries the Optuna trial's number and study
            tags.update(optuna_trial=number, optuna_study=name)
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        rid = run.info.run_id
        lora_params = 0 if full else t["r"] * 2 * HIDDEN * LAYERS * len(t["targets"].split(","))
        trainable = 22_713_986 if full else lora_params + HEAD
        _batch(client, rid, params={"model": "minilm_l6", "task": "sst2", "r": t["r"], "targets": t["targets"],
                                    "alpha": None if full else 2.0 * t["r"], "alpha_policy": "scaled", "lr": 1e-3,
                                    "epochs": 3, "batch_size": 32, "seed": t["seed"], "max_seq_length": 64,
                                    "metric": metric},
               metrics={"lora_params": lora_params, "head_params": HEAD, "trainable_params": trainable,
                        "total_params": 22_713_986, "trainable_pct": 100.0 * trainable / 22_713_986,
                        "rank": t["r"], "baseline_score": 0.51})
        for epoch, value in enumerate(t["curve"]):
            _batch(client, rid, metrics={f"val/{metric}": value, "train/loss": 0.7 - 0.1 * epoch}, step=epoch)
        if t["status"] == "FINISHED":
            _batch(client, rid, metrics={"score": t["score"], "train_seconds": 30.0 + t["r"], "setup_seconds": 1.0,
                                         "not_learning": float(t["not_learning"]), "train_steps": 189},
                   tags={"score_metric": metric, "not_learning": str(t["not_learning"]).lower()})
        elif t["status"] == "FAILED":
            client.set_tag(rid, "failure_reason", "RuntimeError: boom")
        if t["status"] != "RUNNING":
            client.set_terminated(rid, status=t["status"])
    _batch(client, pid, metrics={"n_trials": len(trials)}, tags={"decision": "Wq: r=2", "stop_reason": "done"})
    client.set_terminated(pid, status="FINISHED")
    return pid


STUDY = [
    trial("Wq", 1, 0, 0.52, not_learning=True),
    trial("Wq", 1, 1, 0.80),
    trial("Wq", 2, 0, 0.84),
    trial("Wq", 2, 1, 0.86),
    trial("Wq,Wv", 1, 0, 0.85),
    trial("Wq,Wv", 1, 1, 0.87),
    trial("Wq,Wv", 2, 0, None, "FAILED", curve=(0.6,)),
    trial("Wq,Wv", 2, 0, 0.88, curve=(0.88, 0.8, 0.85)),  # the retry; the curve keeps epoch order
    trial("Wq,Wv", 4, 0, None, "KILLED", curve=(0.5,)),
    trial("Wq,Wk,Wv,Wo", 1, 0, None, "RUNNING", curve=()),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """One store (creating a SQLite store costs seconds) with three studies, one name twice."""
    folder = tmp_path_factory.mktemp("mlflow_store")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("rank_sweep")
    client.create_experiment("other")
    ids = {
        "old": log_study(client, exp, "ladder_study", [trial("Wq", 8, 0, 0.5)]),
        "main": log_study(client, exp, "ladder_study", STUDY),  # the same name again: the latest counts
        "mrpc": log_study(client, exp, "mrpc", [trial("Wq", 4, 0, 0.81, name="my own run")], metric="f1"),
    }
    # a trial run that belongs to no study, and a study in another experiment: never read
    client.create_run(exp, run_name="trial 0: Wq r=1 seed=0", tags={"kind": "trial"})
    return {"uri": uri, "client": client, "ids": ids, "folder": folder}


def test_the_named_study_with_its_parent_and_trials_in_number_order(store):
    study = load_mlflow_study(store["uri"], "ladder_study")
    assert study.run_id == store["ids"]["main"]  # the later parent run of the name
    assert study.name == "ladder_study" and study.metric == "accuracy"
    assert study.params["ladder"] == "[1, 2, 4]" and study.tags["decision"] == "Wq: r=2"
    assert not any(k.startswith("mlflow.") for k in study.tags)
    assert [r.number for r in study.records] == list(range(len(STUDY)))
    assert [(r.targets, r.r, r.seed) for r in study.records] == [(t["targets"], t["r"], t["seed"]) for t in STUDY]
    assert [r.state for r in study.records] == ["COMPLETE"] * 6 + ["FAIL", "COMPLETE", "PRUNED", "RUNNING"]


def test_a_record_carries_what_the_trial_logged(store):
    recs = records_from_mlflow(store["uri"], "ladder_study")
    first, retry, failed = recs[0], recs[7], recs[6]
    assert first == TrialRecord(number=0, targets="Wq", r=1, seed=0, state="COMPLETE", score=0.52,
                                lora_params=4608, trainable_params=4608 + HEAD, train_seconds=31.0,
                                not_learning=True, baseline_score=0.51, alpha=2.0, lr=1e-3, run_id=first.run_id,
                                intermediate=pytest.approx((0.48, 0.51, 0.52)))
    assert retry.intermediate == (0.88, 0.8, 0.85) and retry.lora_params == 2 * 2 * 2 * HIDDEN * LAYERS
    assert failed.score is None and failed.intermediate == (0.6,) and not failed.usable
    assert recs[9].score is None and recs[9].intermediate == ()
    assert all(len(r.run_id) == 32 for r in recs)


def test_without_history_no_curves(store):
    recs = records_from_mlflow(store["uri"], "ladder_study", history=False)
    assert all(r.intermediate == () for r in recs)
    assert recs == [r.__class__(**{**r.__dict__, "intermediate": ()}) for r in records_from_mlflow(
        store["uri"], "ladder_study")]


def test_default_is_the_latest_study_and_other_run_names_get_numbers(store):
    study = load_mlflow_study(store["uri"])
    assert study.name == "mrpc" and study.metric == "f1"
    (rec,) = study.records
    assert rec.number == 0 and rec.score == 0.81 and rec.intermediate == pytest.approx((0.77, 0.80, 0.81))


def test_records_aggregate_and_select_like_the_optuna_ones(store):
    summaries = aggregate(records_from_mlflow(store["uri"], "ladder_study"))
    table = {(s.targets, s.r): (s.n, round(s.mean, 4), s.n_not_learning) for s in summaries}
    assert table == {("Wq", 1): (2, 0.66, 1), ("Wq", 2): (2, 0.85, 0), ("Wq,Wv", 1): (2, 0.86, 0),
                     ("Wq,Wv", 2): (1, 0.88, 0)}
    chosen = select(summaries, tolerance=0.03).chosen
    assert (chosen.targets, chosen.r) == ("Wq,Wv", 1)  # within 0.03 of the best (0.88) and cheaper


def test_unknown_study_names_the_ones_there(store):
    with pytest.raises(RankSweepError, match=r"no study named 'nope' .*studies there are ladder_study, mrpc"):
        load_mlflow_study(store["uri"], "nope")


def test_unknown_experiment_names_the_ones_there(store):
    with pytest.raises(RankSweepError, match=r"no experiment 'missing' .*Default, other, rank_sweep"):
        load_mlflow_study(store["uri"], experiment="missing")


def test_an_experiment_without_studies(store):
    with pytest.raises(RankSweepError, match=r"no study in experiment 'other' .*run rank-sweep first"):
        load_mlflow_study(store["uri"], experiment="other")


def test_a_missing_sqlite_file_is_an_error_and_is_not_created(tmp_path):
    db = tmp_path / "nowhere" / "mlflow.db"
    with pytest.raises(RankSweepError, match="no MLflow tracking store at .*nowhere/mlflow.db"):
        records_from_mlflow(f"sqlite:///{db}")
    assert not db.exists() and not db.parent.exists()


def _run(params=None, metrics=None, tags=None, status="FINISHED", run_id="r1"):
    return SimpleNamespace(data=SimpleNamespace(params=params or {}, metrics=metrics or {}, tags=tags or {}),
                           info=SimpleNamespace(status=status, run_id=run_id))


def test_record_from_a_run_without_params_keeps_the_unknown_markers():
    rec = record_from_run(_run(status="FAILED"), 5)
    assert (rec.number, rec.targets, rec.r, rec.seed, rec.state) == (5, "", UNKNOWN, UNKNOWN, "FAIL")
    assert rec.score is None and rec.lora_params is None and rec.alpha is None and not rec.not_learning


def test_record_from_a_full_finetune_run_and_the_not_learning_tag():
    run = _run(params={"targets": "full", "r": "0", "seed": "2", "alpha": "None", "lr": "0.0005"},
               metrics={"score": 0.9, "trainable_params": 22713986.0}, tags={"not_learning": "true"},
               status="SCHEDULED")
    rec = record_from_run(run, 1, [0.8, 0.9])
    assert (rec.targets, rec.r, rec.seed, rec.alpha, rec.lr) == ("full", 0, 2, None, 5e-4)
    assert rec.state == "WAITING" and rec.not_learning and rec.trainable_params == 22713986
    assert rec.intermediate == (0.8, 0.9)


def test_search_follows_page_tokens():
    class Page(list):
        def __init__(self, items, token):
            super().__init__(items)
            self.token = token

    pages = {None: Page([1, 2], "a"), "a": Page([3], "b"), "b": Page([], None)}
    client = SimpleNamespace(search_runs=lambda ids, filter_string, max_results, order_by, page_token: pages[page_token])
    assert _search_all(client, "0", "") == [1, 2, 3]


def test_an_unreachable_store_is_one_error_without_the_password():
    with pytest.raises(RankSweepError, match="cannot read the MLflow tracking store") as err:
        load_mlflow_study("postgresql://user:secret@127.0.0.1:9/db")
    assert "secret" not in str(err.value) and "***@127.0.0.1:9" in str(err.value)


@pytest.mark.parametrize(("tags", "name", "number"), [
    ({"optuna_trial": "7"}, "trial 3: Wq r=1 seed=0", 7),  # the tag wins
    ({}, "trial 12: Wq,Wv r=4 seed=2", 12),
    ({}, "my own run", None),
    ({"optuna_trial": "x"}, None, None),
])
def test_trial_number_from_the_tag_or_the_run_name(tags, name, number):
    run = SimpleNamespace(data=SimpleNamespace(tags=tags), info=SimpleNamespace(run_name=name))
    assert trial_number(run) == number
