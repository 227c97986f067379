"""search.lr_bracket (issue #24): before a ladder climbs, its first rung trains a bracket of learning rates; the
best (by more than min_delta) is the lr the ladder and its extension climb at, a tie keeps the configured one, a
best at the edge is tried one step further once. The plan on hand-built histories (no training)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rank_sweep.config import RunConfig, SearchConfig
from rank_sweep.errors import ConfigError
from rank_sweep.study.plan import LadderSpec, Point, plan
from rank_sweep.study.run import build_spec
from tests.unit.study.test_lr_probe import direct, row, via_optuna

WQ, ALL4 = "Wq", "Wq,Wk,Wv,Wo"
BASE = 1e-3


def spec(**kw) -> LadderSpec:
    base = dict(target_sets=[WQ], ranks=[1, 2, 4], seeds=[0], noise_seeds=[1, 2], extend=False, lr_probe=[3.0, 10.0],
                base_lr=BASE, lr_bracket=[0.3, 1.0, 3.0])
    return LadderSpec(**{**base, **kw})


@pytest.fixture(params=["records", "optuna"])
def records(request):
    return direct if request.param == "records" else via_optuna


def first_rung(scores: dict, learning=True):
    """The bracket's trials: the configured lr with seeds 0, 1, 2, the others with seed 0."""
    out = []
    for m, score in scores.items():
        lr = None if m == 1 else BASE * m
        seeds = (0, 1, 2) if m == 1 else (0,)
        out += [row(WQ, 1, score + 0.001 * s, lr=lr, seed=s, not_learning=not learning) for s in seeds]
    return out


def test_the_bracket_runs_first_the_configured_lr_with_every_seed_the_others_with_one(records):
    p = plan(records([]), spec())
    assert p.pending == [Point(WQ, 1, 0, BASE * 0.3), Point(WQ, 1, 0), Point(WQ, 1, 1), Point(WQ, 1, 2),
                         Point(WQ, 1, 0, BASE * 3)]


def test_a_clearly_better_lr_inside_the_bracket_is_where_the_ladder_climbs(records):
    s = spec(lr_bracket=[0.3, 1.0, 3.0, 10.0])
    p = plan(records(first_rung({0.3: 0.60, 1: 0.70, 3: 0.80, 10: 0.75})), s)
    lad = p.ladders[0]
    assert lad.lr == pytest.approx(3e-3) and lad.calibration.kept == 3.0
    assert p.pending == [Point(WQ, 2, 0, 3e-3)]  # the ladder climbs at it, one seed per rung
    assert [m for m, *_ in lad.calibration.tried] == [0.3, 1.0, 3.0, 10.0]


def test_a_tie_keeps_the_configured_lr(records):
    p = plan(records(first_rung({0.3: 0.60, 1: 0.80, 3: 0.803})), spec())  # +0.003 < min_delta 0.005
    lad = p.ladders[0]
    assert lad.lr is None and lad.calibration.kept == 1.0 and "configured one is kept" in lad.calibration.why
    assert p.pending == [Point(WQ, 2, 0)]


def test_a_best_at_the_edge_is_tried_one_step_further_once(records):
    hist = first_rung({0.3: 0.60, 1: 0.70, 3: 0.80})
    p = plan(records(hist), spec())
    assert p.pending == [Point(WQ, 1, 0, 9e-3)] and p.ladders[0].lr is None  # waits for it
    p = plan(records(hist + [row(WQ, 1, 0.85, lr=9e-3)]), spec())
    assert p.ladders[0].lr == pytest.approx(9e-3) and p.pending == [Point(WQ, 2, 0, 9e-3)]
    p = plan(records(hist + [row(WQ, 1, 0.79, lr=9e-3)]), spec())  # not better: the edge stays, no further step
    assert p.ladders[0].lr == pytest.approx(3e-3) and p.pending == [Point(WQ, 2, 0, 3e-3)]


def test_the_extension_climbs_at_the_ladders_lr(records):
    s = spec(lr_bracket=[0.3, 1.0, 3.0, 10.0], extend=True, extend_sets=[ALL4], ranks=[1, 2])
    hist = first_rung({0.3: 0.60, 1: 0.70, 3: 0.80, 10: 0.75}) + [row(WQ, 2, 0.80, lr=3e-3)]
    p = plan(records(hist), s)
    assert p.ladders[0].plateau_rank == 1
    assert p.pending == [Point(ALL4, 1, 0, 3e-3)]


def test_nothing_learns_in_the_bracket_the_probe_goes_on_without_training_a_point_twice(records):
    p = plan(records(first_rung({0.3: 0.5, 1: 0.5, 3: 0.5}, learning=False)), spec())
    assert p.pending == [Point(WQ, 1, 0, 1e-2)]  # 3x is the bracket's; the probe asks only for 10x


@pytest.mark.parametrize("bad", [[0.3, 3], [1, 1], [0, 1], "x", [True, 1]])
def test_a_bad_bracket_is_refused_in_one_line(bad):
    with pytest.raises(ConfigError, match=r"search\.lr_bracket=.* include 1"):
        SearchConfig(lr_bracket=bad)


def test_the_study_passes_the_bracket_only_to_ladders():
    cfg = RunConfig()
    assert build_spec(cfg).lr_bracket == [0.3, 1.0, 3.0]
    cfg.search = SearchConfig(strategy="grid")
    assert build_spec(cfg).lr_bracket == []
    cfg.search = SearchConfig(lr_bracket=[])
    assert build_spec(cfg).lr_bracket == []


def test_a_whole_study_calibrates_through_the_real_sampler_and_objective(monkeypatch, tmp_path):
    """Wq scores best at 3x the configured lr; the study trains the bracket, then climbs at 3e-3, and every row
    carries the lr it trained at."""
    import optuna

    from rank_sweep.results.readers import records_from_study
    from rank_sweep.study import objective as study_objective
    from rank_sweep.study.run import StopWhenDone
    from rank_sweep.study.sampler import LadderSampler
    from rank_sweep.train.lora import ParamCounts
    from rank_sweep.train.trial import TrialResult

    cfg = RunConfig()
    cfg.trainer.lr, cfg.output_dir = BASE, str(tmp_path)
    cfg.search = SearchConfig(ladder=[1, 2], target_sets=[[WQ]], extend=False, noise_seeds=0, lr_bracket=[0.3, 1, 3],
                              head_reference=False)
    trained = []

    def fake_run_trial(run, **kwargs):
        trained.append((run.lora.r, run.trainer.lr))
        score = {3e-4: 0.60, 1e-3: 0.70, 3e-3: 0.80, 9e-3: 0.78}[round(run.trainer.lr, 12)] + 0.001 * run.lora.r
        return TrialResult(score, "accuracy", {}, ParamCounts(10, 2, 12, 100), 1.0, 0.1, 0.50, False, False)

    monkeypatch.setattr(study_objective, "run_trial", fake_run_trial)
    spec = build_spec(cfg)
    study = optuna.create_study(direction="maximize", sampler=LadderSampler(spec))
    objective = study_objective.Objective(cfg, spec, None, None, None, None)
    study.optimize(objective, n_trials=20, callbacks=[StopWhenDone(spec, cfg, printer=lambda *a: None)])
    # the bracket, its edge one step further, the ladder at 3e-3 (plateau r=1), then the check across lr: r=2 at
    # the neighbouring lr below that learned (r=1 there is the bracket's)
    assert trained == [(1, 3e-4), (1, 1e-3), (1, 3e-3), (1, 9e-3), (2, 3e-3), (2, 1e-3)]
    recs = records_from_study(study)
    assert [r.point.lr for r in recs] == [3e-4, None, 3e-3, 9e-3, 3e-3, None]
    assert [r.lr for r in recs] == [3e-4, 1e-3, 3e-3, 9e-3, 3e-3, 1e-3]


def _plateau_at_1(extra=()):
    """The bracket keeps the configured lr (3x ties it), then r=2 is no gain: plateau r=1."""
    return first_rung({0.3: 0.75, 1: 0.80, 3: 0.802}) + [row(WQ, 2, 0.801)] + list(extra)


def test_the_plateau_is_checked_at_the_lower_neighbouring_lr_of_the_bracket(records):
    p = plan(records(_plateau_at_1()), spec(lr_check="lower"))
    lad = p.ladders[0]
    assert lad.plateau_rank == 1 and lad.lr is None and not p.done
    # r=1 at 0.3x exists (the bracket's): only the rank above is trained there, with the first seed
    assert p.pending == [Point(WQ, 2, 0, 3e-4)] and "checking it at lr 0.0003" in lad.lr_verdict
    p = plan(records(_plateau_at_1()), spec(lr_check="both"))  # and the neighbour above too
    assert p.pending == [Point(WQ, 2, 0, 3e-4), Point(WQ, 2, 0, 3e-3)]


def test_a_plateau_that_holds_across_the_lrs(records):
    p = plan(records(_plateau_at_1([row(WQ, 2, 0.752, lr=3e-4)])), spec(lr_check="lower"))
    lad = p.ladders[0]
    assert p.done and not lad.lr_dependent
    assert lad.lr_verdict == "plateau r=1 holds across lr [0.0003, 0.001] (r=2 beats it at none of them)"


def test_a_gain_of_the_rank_above_only_at_a_slower_lr_is_speed_and_the_plateau_holds(records):
    # at 3e-4, r=2 (0.79) gains over r=1 there (0.75), but stays below the plateau row r=1 at 1e-3 (0.801)
    p = plan(records(_plateau_at_1([row(WQ, 2, 0.79, lr=3e-4)])), spec(lr_check="lower"))
    lad = p.ladders[0]
    assert p.done and not lad.lr_dependent and lad.plateau_rank == 1
    assert lad.lr_verdict == ("plateau r=1 holds across lr [0.0003, 0.001]: at lr 0.0003 r=2 gains over r=1 but is "
                              "not shown better than r=1 at lr 0.001: speed at a slower lr, not a need for rank")


def test_a_plateau_that_depends_on_the_learning_rate(records):
    # r=2 at 3e-4 beats the plateau row itself (r=1 at the ladder's lr, every seed)
    p = plan(records(_plateau_at_1([row(WQ, 2, 0.86, lr=3e-4)])), spec(lr_check="lower"))
    lad = p.ladders[0]
    assert p.done and lad.lr_dependent and lad.plateau_rank == 1
    assert lad.lr_verdict == "depends on the learning rate: r=2 at lr 0.0003 beats the plateau r=1 at lr 0.001"
    both = _plateau_at_1([row(WQ, 2, 0.752, lr=3e-4), row(WQ, 2, 0.86, lr=3e-3)])  # the upper neighbour, with both
    assert not plan(records(both), spec(lr_check="lower")).ladders[0].lr_dependent
    assert plan(records(both), spec(lr_check="both")).ladders[0].lr_verdict == (
        "depends on the learning rate: r=2 at lr 0.003 beats the plateau r=1 at lr 0.001")


WV = "Wq,Wv"


def test_later_ladders_wait_for_the_first_ones_bracket_and_climb_at_its_lr(records):
    s = spec(target_sets=[WQ, WV], lr_shared=True, lr_check="lower")
    p = plan(records([]), s)
    assert all(x.targets == WQ for x in p.pending) and not p.ladders[1].rungs  # Wq,Wv waits for Wq's bracket
    wq = first_rung({0.3: 0.60, 1: 0.70, 3: 0.80, 10: 0.75}) + [row(WQ, 2, 0.801, lr=3e-3)]
    p = plan(records(wq), replace(s, lr_bracket=[0.3, 1.0, 3.0, 10.0]))
    wv = p.ladders[1]
    assert wv.lr == pytest.approx(3e-3) and wv.lr_from == WQ and wv.calibration is None
    # its first rung at Wq's lr with every seed (the seed noise), and no bracket of its own
    assert [x for x in p.pending if x.targets == WV] == [Point(WV, 1, s_, 3e-3) for s_ in (0, 1, 2)]


def _shared_study(wv_lower: float):
    """Wq: bracket keeps 3e-3, plateau r=1 (checked at 1e-3); Wq,Wv at 3e-3: plateau r=1; its check at 1e-3."""
    wq = first_rung({0.3: 0.60, 1: 0.70, 3: 0.80}) + [row(WQ, 1, 0.75, lr=9e-3)] + [
        row(WQ, 2, 0.801, lr=3e-3), row(WQ, 2, 0.70)]
    wv = [row(WV, 1, 0.81 + 0.001 * s, lr=3e-3, seed=s) for s in (0, 1, 2)] + [row(WV, 2, 0.812, lr=3e-3)]
    return wq + wv + [row(WV, 1, wv_lower), row(WV, 2, 0.75)]  # 1e-3 is the configured lr


def test_a_shared_lr_is_checked_for_transfer_on_the_later_ladder(records):
    s = spec(target_sets=[WQ, WV], lr_shared=True, lr_check="lower")
    p = plan(records(_shared_study(0.78)[:-2]), s)
    assert p.pending == [Point(WV, 1, 0), Point(WV, 2, 0)]  # both ranks at the lower lr (1e-3): no bracket there
    p = plan(records(_shared_study(0.78)), s)
    wv = p.ladders[1]
    assert p.done and not wv.lr_dependent and wv.lr_verdict.startswith("plateau r=1 holds across lr [0.001, 0.003]")
    p = plan(records(_shared_study(0.88)), s)  # Wq,Wv r=1 scores better at 1e-3 than at Wq's 3e-3
    wv = p.ladders[1]
    assert wv.lr_dependent and wv.lr_verdict == ("depends on the learning rate: lr 0.003 (the lr Wq's bracket "
                                                 "chose) does not transfer: r=1 scores better at lr 0.001")


def test_no_check_without_it_or_without_a_rank_above(records):
    assert plan(records(_plateau_at_1()), spec(lr_check=False)).done
    p = plan(records(first_rung({0.3: 0.75, 1: 0.80, 3: 0.802})), spec(lr_check="lower", ranks=[1]))
    assert p.done and "no rank above" in p.ladders[0].lr_verdict


def test_reference_rows_train_at_their_own_calibrated_lr():
    from rank_sweep.results.records import TrialRecord

    s = spec(lr_check=False, references=[("ia3", 0)], reference_lr={("ia3", 0): 1e-2}, include_full=True,
             seeds=[0, 1], noise_seeds=[])
    ladder = first_rung({0.3: 0.75, 1: 0.80, 3: 0.802}) + [row(WQ, 2, 0.801), row(WQ, 2, 0.801, seed=1)]
    ladder = [x for x in ladder if x[2] in (0, 1)]
    p = plan(direct(ladder), s)
    # the bracket of each row, first seed: full around trainer.lr, ia3 around its own 1e-2
    assert p.pending == [Point.full(0, 3e-4), Point.full(0), Point.full(0, 3e-3),
                         Point.reference("ia3", 0, 0, 3e-3), Point.reference("ia3", 0, 0, 1e-2),
                         Point.reference("ia3", 0, 0, 3e-2)]
    n = len(ladder)
    done = direct(ladder) + [
        TrialRecord(n + i, row_, 0, 0, "COMPLETE", score, None, None, None, tuned=(("lr", lr),) if lr else ())
        for i, (row_, lr, score) in enumerate([("full", 3e-4, 0.843), ("full", None, 0.84), ("full", 3e-3, 0.5),
                                               ("ia3", 3e-3, 0.70), ("ia3", 1e-2, 0.75), ("ia3", 3e-2, 0.80)])]
    p = plan(done, s)
    assert p.pending == [Point.full(1), Point.reference("ia3", 0, 1, 3e-2)]  # full: a tie keeps the customary lr
    assert p.references["ia3"].endswith("-> lr 0.03") and p.references["full"].endswith("-> lr 0.001")
