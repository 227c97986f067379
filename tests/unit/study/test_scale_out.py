"""Several workers on one study, without training: speculative rungs, pruning a rung that became pointless,
and the claim protocol that gives each point to exactly one trial (through the storage only)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from sqlalchemy.exc import IntegrityError

from rank_sweep.results.records import TrialRecord
from rank_sweep.study import sampler as study_sampler
from rank_sweep.study import storage as study_storage
from rank_sweep.study.objective import PointlessCheck
from rank_sweep.study.plan import LadderSpec, Point, plan, pointless
from rank_sweep.study.sampler import POINT_ATTR, claim_point, next_point
from rank_sweep.study.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)
WQ, WQV, ALL4 = "Wq", "Wq,Wv", "Wq,Wk,Wv,Wo"


def spec(**kw) -> LadderSpec:
    base = dict(target_sets=[WQ], ranks=[1, 2, 4, 8, 16], seeds=[0], extend=False)
    return LadderSpec(**{**base, **kw})


def rec(targets, r, seed=0, score=None, state="COMPLETE", number=None):
    return TrialRecord(number=number if number is not None else hash((targets, r, seed)) % 10_000, targets=targets,
                       r=r, seed=seed, state=state, score=score, lora_params=None, trainable_params=None,
                       train_seconds=None)


# --- speculative rungs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "records, kw, pending, speculative",
    [
        ([], {}, [Point(WQ, 1, 0)], []),  # nothing runs yet: no guess needed
        ([rec(WQ, 1, state="RUNNING")], {}, [], [Point(WQ, 2, 0)]),
        ([rec(WQ, 1, state="RUNNING")], {"speculate": 2}, [], [Point(WQ, 2, 0), Point(WQ, 4, 0)]),
        ([rec(WQ, 1, state="RUNNING")], {"speculate": 0}, [], []),
        ([rec(WQ, 1, state="RUNNING"), rec(WQ, 2, state="RUNNING")], {}, [], []),  # the guess already runs
        ([rec(WQ, 1, state="RUNNING"), rec(WQ, 2, state="RUNNING")], {"speculate": 2}, [], [Point(WQ, 4, 0)]),
        # a rung of 2 seeds with one running: its other seed is pending (not a guess); the next rung is the guess
        ([rec(WQ, 1, 0, state="RUNNING")], {"seeds": [0, 1]}, [Point(WQ, 1, 1)], [Point(WQ, 2, 0), Point(WQ, 2, 1)]),
        # the guess stops at the budget
        ([rec(WQ, 1, state="RUNNING")], {"cost": lambda t, r: (r * 100, r * 100), "max_lora_params": 100}, [], []),
        # a finished ladder has nothing to guess
        ([rec(WQ, 1, score=0.6), rec(WQ, 2, score=0.6)], {}, [], []),
        # the grid plans every point anyway
        ([rec(WQ, 1, state="RUNNING")], {"grid": True, "ranks": [1, 2]}, [Point(WQ, 2, 0)], []),
    ],
    ids=["fresh", "next rung", "two rungs", "speculate=0", "guess running", "second guess", "seeds",
         "budget", "finished", "grid"],
)
def test_speculative_points(records, kw, pending, speculative):
    p = plan(records, spec(**kw))
    assert p.pending == pending
    assert p.speculative == speculative


def test_next_point_prefers_pending_over_a_guess():
    s = spec(target_sets=[WQ, WQV])
    records = [rec(WQ, 1, state="RUNNING")]
    assert next_point(records, s) == (Point(WQV, 1, 0), False)
    records.append(rec(WQV, 1, state="RUNNING"))
    assert next_point(records, s) == (Point(WQ, 2, 0), True)


def test_a_speculative_result_counts_only_once_its_ladder_gets_there():
    s = spec()
    early = [rec(WQ, 1, state="RUNNING"), rec(WQ, 2, score=0.9)]  # the guess finished first, and scored well
    p = plan(early, s)
    assert [g.r for g in p.ladders[0].rungs] == [] and not p.ladders[0].finished
    # once r=1 finishes, r=2 is decided on its own score, exactly as a single worker would have decided it
    p = plan([rec(WQ, 1, score=0.9), rec(WQ, 2, score=0.9)], s)
    assert [(g.r, g.decision) for g in p.ladders[0].rungs] == [(1, "first"), (2, "no gain")]
    assert p.ladders[0].finished and p.ladders[0].plateau_rank == 1


@pytest.mark.parametrize(
    "records, point, why",
    [
        ([rec(WQ, 1, score=0.6), rec(WQ, 2, score=0.6)], Point(WQ, 4, 0), "stopped below r=4"),  # plateau at r=2
        ([rec(WQ, 1, score=0.6), rec(WQ, 2, score=0.6)], Point(WQ, 2, 0), None),  # a decided rung is never pointless
        ([rec(WQ, 1, score=0.6), rec(WQ, 2, score=0.7)], Point(WQ, 4, 0), None),  # still climbing
        ([rec(WQ, 1, state="RUNNING")], Point(WQ, 2, 0), None),
        ([rec(WQ, 1, score=0.6), rec(WQ, 2, score=0.6)], Point(ALL4, 4, 0), None),  # not a ladder of this spec
    ],
    ids=["plateau below", "decided rung", "climbing", "undecided", "other target set"],
)
def test_pointless(records, point, why):
    got = pointless(records, spec(), point)
    assert (got is None) if why is None else (why in got and "plateau" in got)


class _Trial:
    """What PointlessCheck needs of an optuna.Trial: its study, number and user attrs."""

    def __init__(self, study, number):
        self.study, self.number, self.user_attrs = study, number, {}

    def set_user_attr(self, k, v):
        self.user_attrs[k] = v


def _study_with(rows):
    dists = {"targets": CategoricalDistribution([WQ, WQV]), "r": CategoricalDistribution([1, 2, 4, 8, 16]),
             "seed": CategoricalDistribution([0])}
    study = optuna.create_study(direction="maximize")
    for targets, r, state, value in rows:
        study.add_trial(create_trial(state=state, value=value, params={"targets": targets, "r": r, "seed": 0},
                                     distributions=dists))
    return study


def test_pointless_check_prunes_a_guess_once_the_rung_below_ends_the_ladder():
    study = _study_with([(WQ, 1, TrialState.COMPLETE, 0.6), (WQ, 2, TrialState.RUNNING, None),
                         (WQ, 4, TrialState.RUNNING, None)])
    check = PointlessCheck(_Trial(study, 2), spec(), Point(WQ, 4, 0))
    trainer = SimpleNamespace(sanity_checking=False)
    check.on_validation_end(trainer, None)  # r=2 still runs: the guess goes on
    study.tell(1, 0.6)  # r=2 brings no gain: the ladder stops at r=1
    with pytest.raises(optuna.TrialPruned, match="speculative rung no longer needed: Wq stopped below r=4"):
        check.on_validation_end(trainer, None)
    assert "plateau" in check.trial.user_attrs["pruned_reason"]


# --- the claim protocol -----------------------------------------------------------------------------------------

def _running_trial(study) -> tuple[int, int]:
    t = study.ask()
    return t._trial_id, t.number


def test_a_claim_seen_after_planning_makes_the_later_claimer_withdraw(monkeypatch):
    s = spec(target_sets=[WQ, WQV])
    study = optuna.create_study(direction="maximize")
    a_id, a_num = _running_trial(study)
    b_id, b_num = _running_trial(study)
    study._storage.set_trial_system_attr(b_id, POINT_ATTR, {"targets": WQ, "r": 1, "seed": 0, "speculative": False})
    stale = iter([(Point(WQ, 1, 0), False)])  # A planned before B's claim was written: it picks the same point
    real = study_sampler.next_point
    monkeypatch.setattr(study_sampler, "next_point", lambda records, sp: next(stale, None) or real(records, sp))
    pauses = []
    claim = claim_point(study, a_id, a_num, s, sleep=pauses.append)
    assert len(pauses) == 1  # it saw B's claim, withdrew, paused, looked again
    assert claim == {"targets": WQV, "r": 1, "seed": 0, "speculative": False}
    assert study._storage.get_trial(b_id).system_attrs[POINT_ATTR]["targets"] == WQ  # B keeps its point


def test_a_failed_trial_does_not_hold_its_point():
    s = spec()
    study = optuna.create_study(direction="maximize")
    dead_id, _ = _running_trial(study)
    study._storage.set_trial_system_attr(dead_id, POINT_ATTR, {"targets": WQ, "r": 1, "seed": 0})
    study._storage.set_trial_state_values(dead_id, TrialState.FAIL)
    a_id, a_num = _running_trial(study)
    assert claim_point(study, a_id, a_num, s, sleep=lambda _: None)["r"] == 1  # the retry


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_concurrent_claims_never_share_a_point(tmp_path, kind):
    """Eight threads, each a worker with its own storage handle on one file, claim at once, three rounds: every
    kept claim is a different point, and the rung's six seeds plus the guesses above it are all handed out."""
    url = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else str(tmp_path / "s.journal")
    s = spec(seeds=list(range(6)), speculate=1)
    optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    studies = [optuna.load_study(study_name="s", storage=open_storage(url)) for _ in range(8)]
    trials = [_running_trial(st) for st in studies]
    for st, (tid, _) in zip(studies, trials, strict=True):
        st._storage.set_trial_system_attr(tid, "rank_sweep:worker", {"pid": tid})
    kept: dict[int, dict | None] = {}
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait()
        kept[i] = claim_point(studies[i], trials[i][0], trials[i][1], s)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    points = [Point(c["targets"], c["r"], c["seed"]) for c in kept.values() if c]
    assert len(points) == len(set(points)) == 8
    assert set(points) == {Point(WQ, 1, k) for k in range(6)} | {Point(WQ, 2, 0), Point(WQ, 2, 1)}
    stored = [studies[0]._storage.get_trial(tid).system_attrs.get(POINT_ATTR) for tid, _ in trials]
    assert sorted(map(str, stored)) == sorted(map(str, kept.values()))
    # the first six are the rung itself, the last two are guesses
    assert sum(bool(c["speculative"]) for c in kept.values()) == 2


def test_a_trial_part_way_through_suggesting_its_point_still_holds_it():
    """Found by the three-worker test: a trial that had suggested `targets` but not yet `r` and `seed` looked
    like no point at all, and another worker took the same point."""
    s = spec(target_sets=[WQ, WQV])
    study = optuna.create_study(direction="maximize")
    b = study.ask()
    study._storage.set_trial_system_attr(b._trial_id, POINT_ATTR, {"targets": WQ, "r": 1, "seed": 0,
                                                                  "speculative": False})
    b.suggest_categorical("targets", [WQ, WQV])  # `r` and `seed` not yet
    assert [(r.targets, r.r, r.seed) for r in study_sampler.trial_records(study)] == [(WQ, 1, 0)]
    a_id, a_num = _running_trial(study)
    assert claim_point(study, a_id, a_num, s, sleep=lambda _: None)["targets"] == WQV


def test_workers_racing_to_create_a_new_databases_tables_retry(monkeypatch, tmp_path):
    """Seen in CI: three workers opening a fresh PostgreSQL study database at once; all but one hit
    `duplicate key value violates unique constraint` while creating Optuna's tables. They retry."""
    calls = []
    real = study_storage.HeartbeatStorage

    def racing(url, **kw):
        calls.append(url)
        if len(calls) < 3:  # what SQLAlchemy raises from psycopg's UniqueViolation
            raise IntegrityError("CREATE TABLE studies", {}, Exception(
                'duplicate key value violates unique constraint "pg_type_typname_nsp_index"'))
        return real(url, **kw)

    monkeypatch.setattr(study_storage, "HeartbeatStorage", racing)
    monkeypatch.setattr(study_sampler.time, "sleep", lambda s: None)
    assert open_storage(f"sqlite:///{tmp_path}/s.db") is not None and len(calls) == 3
    monkeypatch.setattr(study_storage, "HeartbeatStorage", lambda url, **kw: (_ for _ in ()).throw(RuntimeError("no")))
    with pytest.raises(Exception, match="cannot open study storage"):  # other errors: at once, one line
        open_storage(f"sqlite:///{tmp_path}/t.db")


def test_stale_trials_are_failed_by_optunas_public_call_with_their_reason(tmp_path):
    """A trial whose heartbeat stopped is failed by ``optuna.storages.fail_stale_trials`` and keeps why in
    ``fail_reason``; a dead process of this machine is failed at once; a journal file has no heartbeat."""
    import time

    from rank_sweep.study.workers import WORKER_ATTR, fail_stale_trials, has_heartbeat, this_worker

    storage = open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat_seconds=1)
    assert has_heartbeat(storage) and not has_heartbeat(open_storage(f"{tmp_path}/s.journal"))
    study = optuna.create_study(study_name="s", storage=storage)
    lost = study.ask()
    study._storage.record_heartbeat(lost._trial_id)
    dead = study.ask()
    study._storage.set_trial_system_attr(dead._trial_id, WORKER_ATTR, {**this_worker(), "start": "0"})
    assert [t.user_attrs["fail_reason"] for t in fail_stale_trials(study, 1)] == [
        f"worker lost: process {this_worker()['pid']} on {this_worker()['host']} is gone (killed); the point is retried"]
    time.sleep(2.2)
    failed = fail_stale_trials(study, 1)
    assert [(t.number, t.state) for t in failed] == [(0, TrialState.FAIL)]
    assert failed[0].user_attrs["fail_reason"].startswith("worker lost: no heartbeat for more than 1s")
    assert fail_stale_trials(study, 1) == []
