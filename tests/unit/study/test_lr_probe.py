"""search.lr_probe (issue #14): a ladder whose first rung does not learn retries it at larger learning rates
and climbs at the first that learns. The plan on hand-built histories, then a whole study through the real
sampler and objective (the training replaced by a table: a rung learns only at a large enough lr)."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from rank_sweep.config import RunConfig, SearchConfig
from rank_sweep.errors import ConfigError
from rank_sweep.results.readers import records_from_study
from rank_sweep.results.records import TrialRecord
from rank_sweep.study import objective as study_objective
from rank_sweep.study.plan import LadderSpec, Point, plan, pointless
from rank_sweep.study.run import StopWhenDone, build_spec
from rank_sweep.study.sampler import LadderSampler
from rank_sweep.train.lora import ParamCounts
from rank_sweep.train.trial import TrialResult

optuna.logging.set_verbosity(optuna.logging.WARNING)
WQ, WQV, ALL4 = "Wq", "Wq,Wv", "Wq,Wk,Wv,Wo"
BASE = 1e-3
DISTS = {"targets": CategoricalDistribution([WQ, WQV, ALL4]), "r": CategoricalDistribution([1, 2, 4]),
         "seed": IntDistribution(0, 10), "lr": FloatDistribution(1e-12, 1e3, log=True)}


def spec(**kw) -> LadderSpec:
    base = dict(target_sets=[WQ], ranks=[1, 2, 4], seeds=[0], extend=False, lr_probe=[3.0, 10.0], base_lr=BASE)
    return LadderSpec(**{**base, **kw})


def row(targets, r, score, lr=None, seed=0, not_learning=False):
    return targets, r, seed, lr, score, not_learning


def direct(rows) -> list[TrialRecord]:
    return [TrialRecord(i, t, r, s, "COMPLETE", score, None, None, None, not_learning=nl,
                        tuned=() if lr is None else (("lr", lr),))
            for i, (t, r, s, lr, score, nl) in enumerate(rows)]


def via_optuna(rows) -> list[TrialRecord]:
    study = optuna.create_study(direction="maximize")
    for t, r, s, lr, score, nl in rows:
        params = {"targets": t, "r": r, "seed": s, **({} if lr is None else {"lr": lr})}
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=score, params=params,
                                     distributions={k: DISTS[k] for k in params}, user_attrs={"not_learning": nl}))
    return records_from_study(study)


@pytest.fixture(params=["records", "optuna"])
def records(request):
    return direct if request.param == "records" else via_optuna


def test_a_first_rung_that_does_not_learn_is_probed_in_turn_and_the_ladder_climbs_at_the_first_that_learns(records):
    s = spec()
    flat = [row(WQ, 1, 0.51, not_learning=True)]
    assert plan(records(flat), s).pending == [Point(WQ, 1, 0, BASE * 3)]
    flat.append(row(WQ, 1, 0.51, lr=BASE * 3, not_learning=True))
    assert plan(records(flat), s).pending == [Point(WQ, 1, 0, BASE * 10)]
    flat.append(row(WQ, 1, 0.70, lr=BASE * 10))
    p = plan(records(flat), s)
    assert p.pending == [Point(WQ, 2, 0, BASE * 10)]  # up the ladder at the probe's lr
    lad = p.ladders[0]
    assert lad.lr == pytest.approx(0.01) and [(g.r, g.decision, g.lr) for g in lad.rungs] == [(1, "first", BASE * 10)]
    assert lad.probes == ["r=1 at lr 0.001 (configured): not learning", "r=1 at lr 0.003 (3x): not learning",
                          "r=1 at lr 0.01 (10x): learning"]
    done = flat + [row(WQ, 2, 0.70, lr=BASE * 10)]
    lad = plan(records(done), s).ladders[0]
    assert lad.finished and lad.plateau_rank == 1 and lad.reason.startswith("plateau")


def test_a_ladder_whose_first_rung_learns_never_probes(records):
    p = plan(records([row(WQ, 1, 0.70)]), spec())
    assert p.pending == [Point(WQ, 2, 0)] and p.ladders[0].probes == [] and p.ladders[0].lr is None


def test_when_no_probe_learns_the_ladder_climbs_at_the_configured_lr_and_says_what_it_tried(records):
    s = spec()
    flat = [row(WQ, 1, 0.51, not_learning=True), row(WQ, 1, 0.51, lr=BASE * 3, not_learning=True),
            row(WQ, 1, 0.51, lr=BASE * 10, not_learning=True)]
    assert plan(records(flat), s).pending == [Point(WQ, 2, 0)]
    flat += [row(WQ, r, 0.51, not_learning=True) for r in (2, 4)]
    lad = plan(records(flat), s).ladders[0]
    assert lad.finished and lad.plateau_rank is None and lad.lr is None
    assert lad.reason.startswith("not learning: no rung beat the trivial baseline")
    assert lad.reason.endswith("lr probes: r=1 at lr 0.001 (configured): not learning; r=1 at lr 0.003 (3x): not "
                               "learning; r=1 at lr 0.01 (10x): not learning")


def test_no_probe_when_it_is_off_or_a_higher_rung_does_not_learn(records):
    flat = [row(WQ, 1, 0.51, not_learning=True)]
    assert plan(records(flat), spec(lr_probe=[])).pending == [Point(WQ, 2, 0)]
    later = [row(WQ, 1, 0.70), row(WQ, 2, 0.51, not_learning=True)]  # only the first rung is probed
    assert plan(records(later), spec()).pending == [Point(WQ, 4, 0)]


def test_the_extension_runs_at_the_lr_its_ladder_climbed_at(records):
    s = spec(extend=True, extend_sets=[ALL4], extend_max_rank=4)
    flat = [row(WQ, 1, 0.51, not_learning=True), row(WQ, 1, 0.70, lr=BASE * 3), row(WQ, 2, 0.70, lr=BASE * 3)]
    assert plan(records(flat), s).pending == [Point(ALL4, 1, 0, BASE * 3)]


def test_a_speculative_rung_at_the_configured_lr_is_pointless_once_the_ladder_climbs_at_a_probe(records):
    s = spec()
    flat = [row(WQ, 1, 0.51, not_learning=True), row(WQ, 1, 0.70, lr=BASE * 3)]
    assert pointless(records(flat), s, Point(WQ, 2, 0)).endswith("climbs at lr 0.003")
    assert pointless(records(flat), s, Point(WQ, 2, 0, BASE * 3)) is None


@pytest.mark.parametrize("bad", [[1], [0, 3], [-3], [3, 3], "3", [True]])
def test_bad_lr_probe_is_refused_in_one_line(bad):
    with pytest.raises(ConfigError, match=r"^search.lr_probe=.* is not valid: give distinct multiples"):
        SearchConfig(lr_probe=bad)


def test_a_whole_study_probes_through_the_real_sampler_and_objective(monkeypatch, tmp_path):
    """Wq learns only at lr >= 3e-3, Wq,Wv at the configured lr: the study's trials and their stored lr."""
    cfg = RunConfig()
    cfg.trainer.lr, cfg.output_dir = BASE, str(tmp_path)
    cfg.search = SearchConfig(ladder=[1, 2], target_sets=[[WQ], [WQ, "Wv"]], extend=False, lr_probe=[3, 10],
                              lr_bracket=[], head_reference=False)  # the probe alone (test_lr_bracket: the bracket)
    trained = []

    def fake_run_trial(run, **kwargs):
        targets = ",".join(run.lora.targets)
        trained.append((targets, run.lora.r, run.trainer.lr))
        learns = targets == WQV or run.trainer.lr >= 3e-3
        score = 0.70 + 0.001 * run.lora.r if learns else 0.51
        return TrialResult(score, "accuracy", {}, ParamCounts(10, 2, 12, 100), 1.0, 0.1, 0.50, not learns, False)

    monkeypatch.setattr(study_objective, "run_trial", fake_run_trial)
    spec = build_spec(cfg)
    study = optuna.create_study(direction="maximize", sampler=LadderSampler(spec))
    objective = study_objective.Objective(cfg, spec, None, None, None, None)
    study.optimize(objective, n_trials=20, callbacks=[StopWhenDone(spec, cfg, printer=lambda *a: None)])
    assert trained == [(WQ, 1, BASE), (WQ, 1, 3 * BASE), (WQ, 2, 3 * BASE), (WQV, 1, BASE), (WQV, 2, BASE)]
    recs = records_from_study(study)
    assert [dict(r.tuned).get("lr") for r in recs] == [None, 3 * BASE, 3 * BASE, None, None]
    assert [r.lr for r in recs] == [BASE, 3 * BASE, 3 * BASE, BASE, BASE]  # the lr each trial trained at
    lad = plan(recs, spec).ladders[0]
    assert lad.lr == pytest.approx(3 * BASE) and lad.plateau_rank == 1
