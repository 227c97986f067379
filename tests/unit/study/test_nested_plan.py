"""search=nested in the plan (issue #15): one screen per target set at the top rank, the ladder's rule on its
truncated ranks, then ordinary trials from the screened plateau rank up, on hand-built histories."""

from __future__ import annotations

from rank_sweep.results.records import TrialRecord
from rank_sweep.study.history import SCREEN, screened_records
from rank_sweep.study.plan import LadderSpec, Point, plan, pointless

WQ = "Wq"
RANKS = [1, 2, 4, 8]


def spec(**kw) -> LadderSpec:
    return LadderSpec(**{"target_sets": [WQ], "ranks": RANKS, "seeds": [0], "extend": False, "nested": True, **kw})


def screen(scores: dict[int, float], number=0, not_learning=()) -> TrialRecord:
    return TrialRecord(number, WQ, RANKS[-1], 0, "COMPLETE", scores[RANKS[-1]], 8 * 100, 8 * 100 + 10, 1.0,
                       tuned=(SCREEN,), run_id="run", nested={str(b): [s, s - 0.01, s + 0.01, b in not_learning]
                                                              for b, s in scores.items()})


def trial(r, score, number) -> TrialRecord:
    return TrialRecord(number, WQ, r, 0, "COMPLETE", score, r * 100, r * 100 + 10, 1.0)


def test_the_screen_runs_first_and_alone():
    p = plan([], spec())
    assert p.pending == [Point(WQ, 8, 0, kind="screen")] and not p.done


def test_screened_rows_carry_each_rank_with_its_run_and_exact_counts():
    rows = screened_records(screen({1: 0.6, 2: 0.7, 4: 0.71, 8: 0.72}))
    assert [(x.r, x.score, f"{x.run_id}/{x.outputs}", x.lora_params, x.trainable_params) for x in rows] == [
        (1, 0.6, "run/r1", 100, 110), (2, 0.7, "run/r2", 200, 210), (4, 0.71, "run/r4", 400, 410),
        (8, 0.72, "run/r8", 800, 810)]
    assert all(x.tuned == (("screened", 1.0),) for x in rows)


def test_the_screens_plateau_is_confirmed_by_its_rank_and_the_rank_above():
    s = spec()
    scr = screen({1: 0.60, 2: 0.70, 4: 0.701, 8: 0.702})  # screened: gains up to r=2, then a plateau
    p = plan([scr], s)
    lad = p.ladders[0]
    assert lad.screen.plateau_rank == 2 and p.pending == [Point(WQ, 2, 0)]
    p = plan([scr, trial(2, 0.70, 1)], s)
    assert p.pending == [Point(WQ, 4, 0)]  # the rank above the screened plateau
    p = plan([scr, trial(2, 0.70, 1), trial(4, 0.70, 2)], s)
    assert p.done and p.ladders[0].plateau_rank == 2 and p.ladders[0].reason.startswith("plateau")
    assert [g.r for g in p.ladders[0].rungs] == [2, 4]  # two ordinary trials, not four


def test_when_the_rank_above_gains_after_all_the_ordinary_ladder_climbs_on():
    s = spec()
    scr = screen({1: 0.60, 2: 0.70, 4: 0.701, 8: 0.702})
    p = plan([scr, trial(2, 0.70, 1), trial(4, 0.80, 2)], s)
    assert p.pending == [Point(WQ, 8, 0)] and not p.done


def test_a_screen_that_finds_no_plateau_hands_over_to_the_ordinary_ladder():
    s = spec()
    scr = screen({1: 0.5, 2: 0.5, 4: 0.5, 8: 0.5}, not_learning=(1, 2, 4, 8))
    p = plan([scr], s)
    assert p.ladders[0].screen.plateau_rank is None and p.pending == [Point(WQ, 1, 0)]


def test_a_screen_is_never_pointless_and_a_failed_one_falls_back():
    assert pointless([], spec(), Point(WQ, 8, 0, kind="screen")) is None
    failed = [TrialRecord(i, WQ, 8, 0, "FAIL", None, None, None, None, tuned=(SCREEN,)) for i in range(3)]
    assert plan(failed, spec(max_retries=2)).pending == [Point(WQ, 1, 0)]
