"""The Optuna parts of the study, driven by a fake objective (no training).

The fake objective asks for its point the way ``search.Objective`` does
(``suggest_categorical`` over ``distributions(cfg, spec)``) and returns a score
from a lookup table, so a whole ladder walk, a resume from sqlite, retries and
stop rules run in milliseconds.
"""

from __future__ import annotations

import datetime as dt
import math

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from rank_sweep.config import Budget, RunConfig, SearchConfig
from rank_sweep.config.point import decode
from rank_sweep.errors import RankSweepError, TrackingError
from rank_sweep.study import storage as study_storage
from rank_sweep.study.objective import distributions
from rank_sweep.study.plan import Point
from rank_sweep.study.run import StopWhenDone, build_spec, stop_reason
from rank_sweep.study.sampler import LadderSampler
from rank_sweep.study.storage import load_or_create_study, open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # RDB heartbeat

WQ, WQV, ALL4 = "Wq", "Wq,Wv", "Wq,Wk,Wv,Wo"
SCORES = {
    (WQ, 1): 0.60, (WQ, 2): 0.70, (WQ, 4): 0.80, (WQ, 8): 0.801,  # plateau at r=4
    (WQV, 1): 0.70, (WQV, 2): 0.80, (WQV, 4): 0.80, (WQV, 8): 0.90,  # plateau at r=2
    (ALL4, 1): 0.75, (ALL4, 2): 0.85, (ALL4, 4): 0.86, (ALL4, 8): 0.87,
}
# SearchConfig(ladder=[1, 2, 4, 8], target_sets=[[Wq], [Wq, Wv]]), one seed: each ladder in turn, then the
# extension step at each plateau rank (r=4 from Wq, r=2 from Wq,Wv)
WALK = [Point(WQ, r, 0) for r in (1, 2, 4, 8)] + [Point(WQV, r, 0) for r in (1, 2, 4)] + [
    Point(ALL4, 4, 0), Point(ALL4, 2, 0)]


def make_cfg(**search) -> RunConfig:
    cfg = RunConfig()
    cfg.search = SearchConfig(**{"ladder": [1, 2, 4, 8], "target_sets": [[WQ], [WQ, "Wv"]], "lr_bracket": [], "head_reference": False, **search})
    return cfg


class FakeObjective:
    """Reads its point like search.Objective; scores from a table; may fail or return NaN on a schedule."""

    def __init__(self, cfg, spec, scores=SCORES, fail_first=None):
        self.dists = distributions(cfg, spec)
        self.scores = scores
        self.fail_first = dict(fail_first or {})  # point -> how many first attempts raise
        self.visited: list[Point] = []

    def __call__(self, trial: optuna.Trial) -> float:
        p = decode(*(trial.suggest_categorical(k, self.dists[k].choices) for k in ("targets", "r", "seed")))
        self.visited.append(p)
        if self.fail_first.get(p, 0) > 0:
            self.fail_first[p] -= 1
            trial.set_user_attr("fail_reason", "RuntimeError: boom")
            raise RuntimeError("boom")
        return self.scores[(p.row, p.r)]


class StopAfter:
    def __init__(self, n):
        self.n = n

    def __call__(self, study, trial):
        if len([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]) >= self.n:
            study.stop()


def quiet(study, trial):
    return None


def stored_points(study) -> list[Point]:
    return [decode(t.params["targets"], t.params["r"], t.params["seed"])
            for t in sorted(study.get_trials(), key=lambda t: t.number) if t.params]


def memory_study(spec) -> optuna.Study:
    return optuna.create_study(direction="maximize", sampler=LadderSampler(spec))


# --- a whole walk -----------------------------------------------------------------------------------------------

def _walk(*rows):
    return [Point(t, r, s) for t, rs, seeds in rows for r in rs for s in seeds]


@pytest.mark.parametrize(
    "search, expected",
    [
        ({}, WALK),
        ({"extend": False}, WALK[:7]),
        ({"patience": 2}, _walk((WQ, (1, 2, 4, 8), (0,)), (WQV, (1, 2, 4, 8), (0,))) + [Point(ALL4, 4, 0)]),
        ({"seeds": 2, "ladder": [1, 2, 4], "extend": False},
         _walk((WQ, (1,), (0, 1)), (WQ, (2,), (0, 1)), (WQ, (4,), (0, 1)), (WQV, (1,), (0, 1)), (WQV, (2,), (0, 1)),
               (WQV, (4,), (0, 1)))),
        ({"target_sets": [[WQ, "Wv"], [WQ]], "extend_max_rank": 2},
         [Point(WQV, r, 0) for r in (1, 2, 4)] + [Point(WQ, r, 0) for r in (1, 2, 4, 8)] + [Point(ALL4, 2, 0)]),
        ({"strategy": "grid", "ladder": [1, 2]}, _walk((WQ, (1, 2), (0,)), (WQV, (1, 2), (0,)), (ALL4, (1, 2), (0,)))),
        ({"include_full_finetune": True, "extend": False}, WALK[:7] + [Point.full(0)]),
    ],
    ids=["ladder + extensions", "no extension", "patience 2", "two seeds", "ladder order follows target_sets",
         "grid", "full fine-tuning reference"],
)
def test_sampler_walks_the_ladder_and_the_study_stops_itself(search, expected):
    cfg = make_cfg(**search)
    spec = build_spec(cfg)
    study = memory_study(spec)
    objective = FakeObjective(cfg, spec, scores={**SCORES, ("full", 0): 0.95})
    stopper = StopWhenDone(spec, cfg, printer=quiet)
    study.optimize(objective, n_trials=50, callbacks=[stopper])
    assert objective.visited == expected
    assert stored_points(study) == expected
    assert len(study.trials) == len(expected)  # no extra trial once the plan is done
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert stopper.reason == "done: every ladder stopped"


def test_sampler_proposes_the_plan_point_even_on_a_fresh_sampler_each_trial():
    # nothing is remembered in the sampler: a new one per trial walks the same ladder
    cfg = make_cfg()
    spec = build_spec(cfg)
    storage = optuna.storages.InMemoryStorage()
    name = optuna.create_study(storage=storage, direction="maximize").study_name
    objective = FakeObjective(cfg, spec)
    for _ in range(len(WALK)):
        study = optuna.load_study(study_name=name, storage=storage, sampler=LadderSampler(spec))
        study.optimize(objective, n_trials=1)
    assert objective.visited == WALK
    assert stop_reason(study, spec, cfg) == "done: every ladder stopped"


def test_sampler_prunes_a_trial_when_nothing_is_left():
    cfg = make_cfg()
    spec = build_spec(cfg)
    study = memory_study(spec)
    study.optimize(FakeObjective(cfg, spec), n_trials=len(WALK) + 2)  # no stop callback
    extra = study.trials[len(WALK):]
    assert [t.state for t in extra] == [TrialState.PRUNED] * 2
    assert all(not t.params for t in extra)
    assert stored_points(study) == WALK


# --- resume from storage ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("first_run", [2, 5])
def test_resume_from_sqlite_continues_at_the_right_rung(tmp_path, first_run):
    cfg = make_cfg()
    spec = build_spec(cfg)
    url = f"sqlite:///{tmp_path}/optuna.db"
    first = FakeObjective(cfg, spec)
    load_or_create_study(cfg, spec, url).optimize(first, n_trials=50, callbacks=[StopAfter(first_run)])
    assert first.visited == WALK[:first_run]

    study = load_or_create_study(cfg, build_spec(cfg), url)  # a new process: new spec, sampler and study
    assert isinstance(study.sampler, LadderSampler)
    second = FakeObjective(cfg, spec)
    stopper = StopWhenDone(spec, cfg, printer=quiet)
    study.optimize(second, n_trials=50, callbacks=[stopper])
    assert second.visited == WALK[first_run:]
    assert stored_points(study) == WALK  # the uninterrupted walk, no point trained twice
    assert stopper.reason == "done: every ladder stopped"
    # a third run finds the study done before it starts a trial (run_study checks stop_reason first)
    assert stop_reason(load_or_create_study(cfg, spec, url), spec, cfg) == "done: every ladder stopped"


# --- running and failed trials ----------------------------------------------------------------------------------

@pytest.mark.parametrize("speculate", [0, 1])
def test_running_trial_is_not_duplicated_and_is_retried_once_failed(speculate):
    cfg = make_cfg(extend=False, speculate=speculate)
    spec = build_spec(cfg)
    dists = distributions(cfg, spec)
    study = memory_study(spec)
    study.add_trial(create_trial(state=TrialState.RUNNING, params={"targets": WQ, "r": 1, "seed": 0},
                                 distributions=dists))
    objective = FakeObjective(cfg, spec)
    stopper = StopWhenDone(spec, cfg, printer=quiet)
    study.optimize(objective, n_trials=3, callbacks=[stopper])
    assert objective.visited == [Point(WQV, r, 0) for r in (1, 2, 4)]  # the other ladder, not Wq r=1 again
    study.optimize(objective, n_trials=2, callbacks=[stopper])
    # while Wq r=1 runs: nothing to run (speculate=0), or the rung above it, once (speculate=1)
    assert objective.visited[3:] == ([Point(WQ, 2, 0)] if speculate else [])
    assert stopper.reason is None and stop_reason(study, spec, cfg) is None
    speculative = [t.number for t in study.trials if t.user_attrs.get("speculative") or
                   (t.system_attrs.get("rank_sweep:point") or {}).get("speculative")]
    assert speculative == ([4] if speculate else [])

    study.tell(0, state=TrialState.FAIL)  # the worker died: its trial is failed (as a heartbeat would do)
    study.optimize(objective, n_trials=50, callbacks=[stopper])
    # the retry of Wq r=1, then the ladder goes on; a speculative r=2 result counts once r=1 is decided
    assert objective.visited[3 + speculate:] == [Point(WQ, r, 0) for r in (1, 2, 4, 8) if not (speculate and r == 2)]
    assert stopper.reason == "done: every ladder stopped"
    # the decisions are those of one worker that never ran ahead
    assert stored_points(study)[1:] == (
        [Point(WQV, r, 0) for r in (1, 2, 4)] + [Point(WQ, 2, 0)] * speculate
        + [Point(WQ, r, 0) for r in (1, 2, 4, 8) if not (speculate and r == 2)])


def test_failed_and_nan_trials_are_retried():
    cfg = make_cfg(extend=False, max_consecutive_failures=5)
    spec = build_spec(cfg)
    scores = {**SCORES, (WQ, 2): math.nan}  # Optuna fails a trial whose objective returns NaN
    objective = FakeObjective(cfg, spec, scores=scores, fail_first={Point(WQ, 1, 0): 1})
    study = memory_study(spec)
    stopper = StopWhenDone(spec, cfg, printer=quiet)
    study.optimize(objective, n_trials=50, callbacks=[stopper], catch=(RuntimeError,))
    # Wq r=1 fails once then completes; Wq r=2 is NaN three times (max_retries=2) and counts as failed
    assert objective.visited == [Point(WQ, 1, 0)] * 2 + [Point(WQ, 2, 0)] * 3 + [
        Point(WQ, r, 0) for r in (4, 8)] + [Point(WQV, r, 0) for r in (1, 2, 4)]
    assert [t.state for t in study.trials[:5]] == [TrialState.FAIL, TrialState.COMPLETE] + [TrialState.FAIL] * 3
    assert stopper.reason == "done: every ladder stopped"


@pytest.mark.parametrize(
    "max_retries, k, expected",
    [
        (2, 3, [Point(WQ, 1, 0)] * 3),
        (1, 3, [Point(WQ, 1, 0)] * 2 + [Point(WQ, 2, 0)]),
        (0, 3, [Point(WQ, r, 0) for r in (1, 2, 4)]),
        (0, 1, [Point(WQ, 1, 0)]),
    ],
)
def test_max_consecutive_failures_stops_the_study(max_retries, k, expected):
    cfg = make_cfg(max_retries=max_retries, max_consecutive_failures=k)
    spec = build_spec(cfg)
    objective = FakeObjective(cfg, spec, fail_first={p: 99 for p in WALK})
    study = memory_study(spec)
    stopper = StopWhenDone(spec, cfg, printer=quiet)
    study.optimize(objective, n_trials=50, callbacks=[stopper], catch=(Exception,))
    assert objective.visited == expected
    assert len(study.trials) == k and all(t.state == TrialState.FAIL for t in study.trials)
    assert f"search.max_consecutive_failures={k}" in stopper.reason
    assert stopper.reason.endswith("last error: RuntimeError: boom")


# --- stop rules on hand-built histories -------------------------------------------------------------------------

def _trial(state, targets=WQ, r=1, value=None, params=True, seconds=None):
    cfg = make_cfg()
    dists = distributions(cfg, build_spec(cfg))
    t = create_trial(state=state, value=value, params={"targets": targets, "r": r, "seed": 0} if params else {},
                     distributions=dists if params else {})
    if seconds is not None:
        t.datetime_start = t.datetime_complete - dt.timedelta(seconds=seconds)
    return t


def _fail(params=True):
    return _trial(TrialState.FAIL, params=params)


def _done(targets, r, value, seconds=None):
    return _trial(TrialState.COMPLETE, targets, r, value, seconds=seconds)


DONE = [_done(WQ, r, SCORES[(WQ, r)]) for r in (1, 2, 4, 8)] + [_done(WQV, r, SCORES[(WQV, r)]) for r in (1, 2, 4)]


@pytest.mark.parametrize(
    "trials, search, reason",
    [
        ([], {}, None),
        ([_fail()] * 3, {"max_consecutive_failures": 3},
         "stopped: the last 3 trials failed (search.max_consecutive_failures=3); "
                            "last error: see the MLflow runs"),
        ([_fail()] * 2, {"max_consecutive_failures": 3}, None),
        ([_fail()] * 4, {}, None),  # the default allows 5 in a row: one point may use all its retries
        ([_fail(), _fail(), _done(WQ, 1, 0.6), _fail()], {"max_retries": 5}, None),
        ([_fail(params=False)] * 3, {}, None),
        ([_done(WQ, 1, 0.6), _done(WQ, 2, 0.7)], {"budget": Budget(max_trials=2)},
         "budget: search.budget.max_trials=2 trials run"),
        ([_done(WQ, 1, 0.6)], {"budget": Budget(max_trials=2)}, None),
        ([_done(WQ, 1, 0.6, seconds=30), _done(WQ, 2, 0.7, seconds=40)], {"budget": Budget(max_seconds=60)},
         "budget: search.budget.max_seconds=60 spent (70s of trials)"),
        ([_done(WQ, 1, 0.6, seconds=30)], {"budget": Budget(max_seconds=60)}, None),
        ([_done(WQ, 1, 0.6), _done(WQ, 2, 0.7)], {"strategy": "tpe", "n_trials": 2}, "tpe: 2 trials run"),
        (DONE, {"extend": False}, "done: every ladder stopped"),
        (DONE[:-1], {"extend": False}, None),
        (DONE[:-1] + [_trial(TrialState.RUNNING, WQV, 4)], {"extend": False}, None),
        (DONE, {}, None),  # the extension points are still to run
    ],
    ids=["empty", "three failures", "two failures", "four failures under the default", "failures not in a row", "failures without params",
         "max_trials", "under max_trials", "max_seconds", "under max_seconds", "tpe n_trials", "plan done",
         "plan not done", "last point running", "extension pending"],
)
def test_stop_reason(trials, search, reason):
    cfg = make_cfg(**search)
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    assert stop_reason(study, build_spec(cfg), cfg) == reason


def test_max_trials_stops_the_study():
    cfg = make_cfg(budget=Budget(max_trials=3))
    spec = build_spec(cfg)
    objective = FakeObjective(cfg, spec)
    study = memory_study(spec)
    stopper = StopWhenDone(spec, cfg, printer=quiet)
    study.optimize(objective, n_trials=50, callbacks=[stopper])
    assert objective.visited == WALK[:3]
    assert stopper.reason == "budget: search.budget.max_trials=3 trials run"


def test_stop_when_done_calls_the_printer_for_every_trial():
    cfg = make_cfg()
    spec = build_spec(cfg)
    seen = []
    study = memory_study(spec)
    study.optimize(FakeObjective(cfg, spec), n_trials=50,
                   callbacks=[StopWhenDone(spec, cfg, printer=lambda s, t: seen.append(t.number))])
    assert seen == list(range(len(WALK)))


# --- spec, distributions ----------------------------------------------------------------------------------------

def test_build_spec_maps_the_search_config():
    cfg = make_cfg(seeds=3, patience=2, min_delta=0.01, noise_k=2.0, extend_max_rank=2, max_retries=1,
                   include_full_finetune=True, budget=Budget(max_lora_params=1000, max_trainable_params=2000))
    cfg.seed = 10
    spec = build_spec(cfg, cost=lambda t, r: (0, 0))
    assert spec.target_sets == [WQ, WQV] and spec.extend_sets == [ALL4]
    assert spec.ranks == [1, 2, 4, 8] and spec.seeds == [10, 11, 12]
    assert (spec.patience, spec.min_delta, spec.noise_k, spec.extend_max_rank, spec.max_retries) == (2, 0.01, 2.0, 2, 1)
    assert spec.include_full and not spec.grid and spec.direction == "maximize"
    assert (spec.max_lora_params, spec.max_trainable_params) == (1000, 2000)
    assert spec.cost is not None
    assert build_spec(make_cfg(strategy="grid")).grid
    assert build_spec(make_cfg(ladder=None, start_rank=2, max_rank=16)).ranks == [2, 4, 8, 16]


@pytest.mark.parametrize(
    "search, targets, ranks, seeds",
    [
        ({}, [WQ, WQV, ALL4], [1, 2, 4, 8], [0]),
        ({"extend_target_sets": [[WQ]]}, [WQ, WQV], [1, 2, 4, 8], [0]),
        ({"include_full_finetune": True, "seeds": 2}, [WQ, WQV, ALL4, "full"], [0, 1, 2, 4, 8], [0, 1]),
    ],
)
def test_distributions_cover_every_point(search, targets, ranks, seeds):
    cfg = make_cfg(**search)
    d = distributions(cfg, build_spec(cfg))
    assert (list(d["targets"].choices), list(d["r"].choices), list(d["seed"].choices)) == (targets, ranks, seeds)


# --- storage ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "change, key, store",
    [
        ({"ladder": [1, 2, 4]}, "ladder", "sqlite:///{}/optuna.db"),  # shown as the key the user sets (#28)
        ({"seeds": 2}, "seeds", "{}/optuna.journal"),
        ({"target_sets": [[WQ]]}, "target_sets", "{}/optuna.journal"),
    ],
)
def test_changed_settings_on_the_same_study_are_refused(tmp_path, change, key, store):
    url = store.format(tmp_path)
    cfg = make_cfg()
    load_or_create_study(cfg, build_spec(cfg), url).optimize(FakeObjective(cfg, build_spec(cfg)), n_trials=1)
    assert len(load_or_create_study(cfg, build_spec(cfg), url).trials) == 1  # same settings: same study

    changed = make_cfg(**change)
    with pytest.raises(RankSweepError) as err:
        load_or_create_study(changed, build_spec(changed), url)
    msg = str(err.value)
    assert f"{key}=" in msg and "search.study_name" in msg
    assert "\n" not in msg
    others = {"ladder", "seeds", "target_sets"} - {key}
    assert not any(f"{k}=" in msg for k in others)

    changed.search.study_name = "another"  # a new name starts a new study
    assert load_or_create_study(changed, build_spec(changed), url).trials == []


def test_changed_trainer_setting_is_refused(tmp_path):
    url = f"{tmp_path}/optuna.journal"
    cfg = make_cfg()
    load_or_create_study(cfg, build_spec(cfg), url)
    cfg.trainer.lr = 1e-3
    with pytest.raises(RankSweepError, match=r"\(trainer\.lr=0\.0005, now 0\.001\)"):
        load_or_create_study(cfg, build_spec(cfg), url)


@pytest.mark.parametrize(
    "url, shown, hidden",
    [
        ("notascheme://x", "notascheme://x", None),
        ("notascheme://alice:hunter2@db.example/x", "***@db.example", "hunter2"),
        ("sqlite:///{tmp}/no/such/dir/optuna.db", "unable to open database file", "Background on this error"),
    ],
    ids=["unknown scheme", "credentials hidden", "multi-line driver error"],
)
def test_open_storage_with_a_bad_url_fails_in_one_line(tmp_path, url, shown, hidden):
    with pytest.raises(TrackingError) as err:
        open_storage(url.format(tmp=tmp_path))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("cannot open study storage") and shown in msg and "valid: sqlite:///path.db" in msg
    if hidden:
        assert hidden not in msg


def test_open_storage_kinds(tmp_path):
    assert isinstance(open_storage(f"{tmp_path}/study.journal"), optuna.storages.JournalStorage)
    assert isinstance(open_storage(f"journal:{tmp_path}/study.log"), optuna.storages.JournalStorage)


@pytest.mark.parametrize(
    "uri, env, expected",
    [
        ("sqlite:////tmp/x/mlflow.db", None, "sqlite:////tmp/x/optuna.db"),
        (None, None, "sqlite:///optuna.db"),
        ("sqlite:///mlflow.db", None, "sqlite:///optuna.db"),
        ("sqlite:///runs/mlflow.db", None, "sqlite:///runs/optuna.db"),
        (None, "sqlite:////data/m.db", "sqlite:////data/optuna.db"),
        ("http://localhost:5000", "sqlite:////data/m.db", "sqlite:///optuna.db"),
        ("file:./mlruns", None, "sqlite:///optuna.db"),
    ],
)
def test_default_storage_sits_beside_the_mlflow_db(monkeypatch, uri, env, expected):
    if env is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    cfg = RunConfig()
    cfg.tracking.uri = uri
    assert cfg.storage_url() == expected


@pytest.mark.parametrize(
    "change, shown",
    [  # issue #13.2: each of these used to be pooled with the stored trials without a word
        (lambda c: setattr(c.lora, "alpha_k", 4.0), "lora.alpha_k=2.0, now 4.0"),
        (lambda c: setattr(c.lora, "dropout", 0.1), "lora.dropout=0.05, now 0.1"),
        (lambda c: setattr(c.trainer, "batch_size", 16), "trainer.batch_size=32, now 16"),
        (lambda c: setattr(c.trainer, "weight_decay", 0.1), "trainer.weight_decay=0.01, now 0.1"),
        (lambda c: setattr(c.trainer, "warmup_ratio", 0.1), "trainer.warmup_ratio=0.06, now 0.1"),
        (lambda c: setattr(c.trainer, "precision", "32-true"), "trainer.precision="),
        (lambda c: setattr(c.trainer, "early_stopping_patience", 2), "trainer.early_stopping_patience=None, now 2"),
        (lambda c: setattr(c.task, "max_eval_samples", 100), "task.max_eval_samples=None, now 100"),
        (lambda c: setattr(c.lora, "alpha_policy", "rslora"), "lora.alpha_policy='scaled', now 'rslora'"),
    ],
)
def test_every_value_a_result_depends_on_is_fingerprinted(tmp_path, change, shown):
    url = f"sqlite:///{tmp_path}/optuna.db"
    cfg = make_cfg()
    cfg.trainer.precision = "bf16-mixed"  # resolved either way: the same on any machine
    load_or_create_study(cfg, build_spec(cfg), url)
    change(cfg)
    with pytest.raises(RankSweepError) as err:
        load_or_create_study(cfg, build_spec(cfg), url)
    assert shown in str(err.value) and "search.study_name" in str(err.value) and "\n" not in str(err.value)


def test_decision_rules_output_paths_and_budgets_may_change_on_resume(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    cfg = make_cfg()
    load_or_create_study(cfg, build_spec(cfg), url)
    cfg.search.min_delta, cfg.search.patience, cfg.search.budget.max_trials = 0.02, 3, 5
    cfg.output_dir, cfg.trainer.progress_bar, cfg.worker, cfg.tracking.uri = str(tmp_path), False, "w1", "sqlite:///x.db"
    assert load_or_create_study(cfg, build_spec(cfg), url).study_name == cfg.study_name()


def test_changed_data_files_are_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("sentence,label\na,0\nb,1\n")
    (data / "dev.csv").write_text("sentence,label\na,0\n")
    cfg = make_cfg()
    cfg.task.source, cfg.task.data_dir, cfg.task.train_file, cfg.task.validation_file = "csv", str(data), "train.csv", "dev.csv"
    url = f"sqlite:///{tmp_path}/optuna.db"
    load_or_create_study(cfg, build_spec(cfg), url)
    (data / "train.csv").write_text("sentence,label\na,1\nb,0\n")
    with pytest.raises(RankSweepError, match="data.train_sha256="):
        load_or_create_study(cfg, build_spec(cfg), url)


def test_a_study_from_before_the_full_fingerprint_is_checked_on_what_it_kept(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    cfg = make_cfg()
    study = optuna.create_study(study_name=cfg.study_name(), storage=url, direction="maximize")
    study.set_user_attr("fingerprint", study_storage._legacy_fingerprint(cfg, build_spec(cfg)))
    assert study_storage.FINGERPRINT_ATTR in load_or_create_study(cfg, build_spec(cfg), url).user_attrs
    cfg.trainer.lr = 1e-3
    with pytest.raises(RankSweepError, match=r"trainer\.lr=0\.0005, now 0\.001"):
        load_or_create_study(cfg, build_spec(cfg), url)


def test_a_refused_resume_says_which_version_wrote_the_study(tmp_path):
    cfg = make_cfg()
    url = f"sqlite:///{tmp_path}/o.db"
    study = load_or_create_study(cfg, build_spec(cfg), url, fingerprint={"search.ranks": [1, 2, 4, 8]})
    assert study.user_attrs["written_by"]["version"]
    with pytest.raises(RankSweepError, match=r"was written by rank_sweep \S+ at git .* with other settings "
                                             r"\(search.ladder=\[1, 2, 4, 8\], now \[1, 2\]\)"):
        load_or_create_study(cfg, build_spec(cfg), url, fingerprint={"search.ranks": [1, 2]})
    study.set_user_attr("written_by", None)  # a study from before the version was kept
    with pytest.raises(RankSweepError, match="written by a rank_sweep from before 2026-12-05"):
        load_or_create_study(cfg, build_spec(cfg), url, fingerprint={"search.ranks": [1, 2]})
