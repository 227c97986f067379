"""ladder.plan on hand-built trial histories (no training).

Each table row is a history of trials and what the plan must say about it:
which points run next, whether each ladder stopped, why, and at which rank it
plateaued. Most tables run twice: on TrialRecord lists built by hand, and on
the same history stored in a real Optuna study (create_trial + add_trials) and
read back with records_from_study, so the planner sees what a study stores.
"""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from rank_sweep.config import FULL
from rank_sweep.results.readers import records_from_study
from rank_sweep.results.records import TrialRecord, aggregate
from rank_sweep.study.plan import LadderSpec, Point, plan

optuna.logging.set_verbosity(optuna.logging.WARNING)

WQ, WQV, ALL4 = "Wq", "Wq,Wv", "Wq,Wk,Wv,Wo"
DISTS = {
    "targets": CategoricalDistribution([WQ, WQV, ALL4, FULL, "head only"]),
    "r": CategoricalDistribution([0, 1, 2, 4, 8, 16, 32]),
    "seed": IntDistribution(0, 10),
}


def spec(**kw) -> LadderSpec:
    base = dict(target_sets=[WQ], ranks=[1, 2, 4, 8, 16], seeds=[0], extend=False)
    return LadderSpec(**{**base, **kw})


def row(targets, r, seed=0, score=None, state="COMPLETE", not_learning=False):
    return (targets, r, seed, state, score, not_learning)


def rungs(targets, scores_by_rank, not_learning=()):
    """One COMPLETE trial per (rank, seed): ``{r: [score of seed 0, seed 1, ...]}`` (a float means one seed)."""
    out = []
    for r, scores in scores_by_rank.items():
        for seed, score in enumerate(scores if isinstance(scores, list) else [scores]):
            out.append(row(targets, r, seed, score, not_learning=r in not_learning))
    return out


def direct(rows) -> list[TrialRecord]:
    return [
        TrialRecord(number=i, targets=t, r=r, seed=s, state=state, score=score, lora_params=None,
                    trainable_params=None, train_seconds=None, not_learning=nl)
        for i, (t, r, s, state, score, nl) in enumerate(rows)
    ]


def via_optuna(rows) -> list[TrialRecord]:
    study = optuna.create_study(direction="maximize")
    study.add_trials([
        create_trial(state=TrialState[state], value=score if state == "COMPLETE" else None,
                     params={"targets": t, "r": r, "seed": s}, distributions=DISTS,
                     user_attrs={"not_learning": nl, "lora_params": 1024 * r})
        for t, r, s, state, score, nl in rows
    ])
    return records_from_study(study)


@pytest.fixture(params=["records", "optuna"])
def records(request):
    """Turns table rows into records, by hand or through a real Optuna study."""
    return direct if request.param == "records" else via_optuna


def decisions(ladder_state) -> list[tuple[int, str]]:
    return [(g.r, g.decision) for g in ladder_state.rungs]


# --- plateau, max_rank, direction -------------------------------------------------------------------------------

# id, scores by rank, spec overrides, finished, reason prefix, plateau rank, pending ranks, decisions
PLATEAU = [
    ("empty history asks for the first rung", {}, {}, False, "running", None, [1], []),
    ("one rung asks for the next", {1: 0.60}, {}, False, "running", 1, [2], [(1, "first")]),
    ("plateau at r=4, patience 1", {1: 0.60, 2: 0.70, 4: 0.80, 8: 0.802}, {}, True, "plateau", 4, [],
     [(1, "first"), (2, "gain"), (4, "gain"), (8, "no gain")]),
    ("plateau at r=4, patience 2 asks for r=16", {1: 0.60, 2: 0.70, 4: 0.80, 8: 0.802}, {"patience": 2},
     False, "running", 4, [16], [(1, "first"), (2, "gain"), (4, "gain"), (8, "no gain")]),
    ("patience 2 stops after two rungs without gain", {1: 0.60, 2: 0.70, 4: 0.80, 8: 0.802, 16: 0.801},
     {"patience": 2}, True, "plateau: 2 rung(s)", 4, [], [(1, "first"), (2, "gain"), (4, "gain"), (8, "no gain"),
                                                           (16, "no gain")]),
    ("a drop is no gain; plateau rank is the best rung", {1: 0.60, 2: 0.70, 4: 0.65}, {}, True, "plateau", 2, [],
     [(1, "first"), (2, "gain"), (4, "no gain")]),
    ("after a drop, gains count from the best lower rung", {1: 0.60, 2: 0.70, 4: 0.65, 8: 0.69}, {"patience": 2},
     True, "plateau", 2, [], [(1, "first"), (2, "gain"), (4, "no gain"), (8, "no gain")]),
    ("steady gains reach max_rank", {1: 0.5, 2: 0.6, 4: 0.7, 8: 0.8, 16: 0.9}, {}, True,
     "max_rank reached (r=16)", 16, [], [(1, "first")] + [(r, "gain") for r in (2, 4, 8, 16)]),
    ("a gain of exactly min_delta is no gain", {1: 0.600, 2: 0.605}, {"min_delta": 0.005}, True, "plateau", 1, [],
     [(1, "first"), (2, "no gain")]),
    ("a gain just above min_delta is a gain", {1: 0.600, 2: 0.6051}, {"min_delta": 0.005}, False, "running", 2, [4],
     [(1, "first"), (2, "gain")]),
    ("minimize: lower is a gain", {1: 0.50, 2: 0.40, 4: 0.30, 8: 0.31}, {"direction": "minimize"}, True, "plateau",
     4, [], [(1, "first"), (2, "gain"), (4, "gain"), (8, "no gain")]),
    ("maximize on the same scores: lower is no gain", {1: 0.50, 2: 0.40, 4: 0.30, 8: 0.31}, {}, True, "plateau", 1,
     [], [(1, "first"), (2, "no gain")]),
    ("minimize: a rise is no gain", {1: 0.50, 2: 0.40, 4: 0.45}, {"direction": "minimize"}, True, "plateau", 2, [],
     [(1, "first"), (2, "gain"), (4, "no gain")]),
]


@pytest.mark.parametrize(
    "scores, overrides, finished, reason, plateau_rank, pending, expected",
    [case[1:] for case in PLATEAU], ids=[case[0] for case in PLATEAU],
)
def test_plateau_rule(records, scores, overrides, finished, reason, plateau_rank, pending, expected):
    p = plan(records(rungs(WQ, scores)), spec(**overrides))
    [lad] = p.ladders
    assert decisions(lad) == expected
    assert lad.finished is finished
    assert lad.reason.startswith(reason)
    assert lad.plateau_rank == plateau_rank
    assert p.pending == [Point(WQ, r, 0) for r in pending]
    assert p.done is finished
    assert p.extensions == []


# --- noise-aware threshold (seeds) ------------------------------------------------------------------------------

NOISY = {1: [0.70, 0.75, 0.80], 2: [0.72, 0.77, 0.82]}  # means +0.02, seed std 0.05
QUIET = {1: [0.749, 0.750, 0.751], 2: [0.769, 0.770, 0.771]}  # means +0.02, seed std 0.001


@pytest.mark.parametrize(
    "scores, overrides, decision, threshold, finished, plateau_rank",
    [
        (NOISY, {}, "no gain", 0.05, True, 1),
        (NOISY, {"noise_k": 0.5}, "no gain", 0.025, True, 1),
        (NOISY, {"noise_k": 0.3}, "gain", 0.015, False, 2),
        (NOISY, {"noise_k": 0.0}, "gain", 0.005, False, 2),
        (QUIET, {}, "gain", 0.005, False, 2),
        (QUIET, {"min_delta": 0.03}, "no gain", 0.03, True, 1),
    ],
    ids=["noisy: no gain", "noisy, noise_k 0.5", "noisy, noise_k 0.3", "noisy, noise_k 0: min_delta only",
         "quiet: gain", "quiet, large min_delta"],
)
def test_gain_must_beat_pooled_seed_noise(records, scores, overrides, decision, threshold, finished, plateau_rank):
    p = plan(records(rungs(WQ, scores)), spec(seeds=[0, 1, 2], **overrides))
    [lad] = p.ladders
    first, second = lad.rungs
    assert (first.n, second.n) == (3, 3)
    assert second.mean - first.mean == pytest.approx(0.02)
    assert second.decision == decision
    assert lad.threshold == pytest.approx(threshold)
    assert lad.finished is finished
    assert lad.plateau_rank == plateau_rank
    assert p.pending == ([] if finished else [Point(WQ, 4, s) for s in (0, 1, 2)])


def test_rung_waits_for_all_its_seeds(records):
    p = plan(records(rungs(WQ, {1: [0.6, 0.6, 0.6], 2: [0.9]})), spec(seeds=[0, 1, 2]))
    assert [(g.r, g.n) for g in p.ladders[0].rungs] == [(1, 3)]
    assert p.pending == [Point(WQ, 2, 1), Point(WQ, 2, 2)]


# --- failed trials, NaN scores ----------------------------------------------------------------------------------

def fails(targets, r, n, seed=0):
    return [row(targets, r, seed, state="FAIL") for _ in range(n)]


@pytest.mark.parametrize(
    "n_fail, max_retries, retried",
    [(1, 2, True), (2, 2, True), (3, 2, False), (1, 0, False), (1, 1, True), (2, 1, False)],
)
def test_failed_point_is_retried_until_max_retries(records, n_fail, max_retries, retried):
    history = rungs(WQ, {1: 0.6}) + fails(WQ, 2, n_fail)
    p = plan(records(history), spec(max_retries=max_retries))
    [lad] = p.ladders
    if retried:
        assert p.pending == [Point(WQ, 2, 0)]
        assert decisions(lad) == [(1, "first")]
    else:  # the rung is decided as failed and the ladder climbs on
        assert p.pending == [Point(WQ, 4, 0)]
        assert decisions(lad) == [(1, "first"), (2, "failed")]
        assert lad.rungs[1].mean is None


def test_a_completed_retry_counts(records):
    history = rungs(WQ, {1: 0.6}) + fails(WQ, 2, 2) + rungs(WQ, {2: 0.7})
    p = plan(records(history), spec())
    assert decisions(p.ladders[0]) == [(1, "first"), (2, "gain")]
    assert p.pending == [Point(WQ, 4, 0)]


@pytest.mark.parametrize(
    "patience, finished, pending, plateau_rank",
    [(1, True, [], 1), (2, False, [Point(WQ, 8, 0)], 1)],
)
def test_failed_rung_is_no_plateau_signal(records, patience, finished, pending, plateau_rank):
    # r=2 failed for good: with patience 2 only r=4 counts as a rung without a gain
    history = rungs(WQ, {1: 0.6}) + fails(WQ, 2, 3) + rungs(WQ, {4: 0.6})
    p = plan(records(history), spec(patience=patience))
    [lad] = p.ladders
    assert decisions(lad) == [(1, "first"), (2, "failed"), (4, "no gain")]
    assert lad.finished is finished
    assert p.pending == pending
    assert lad.plateau_rank == plateau_rank


def test_ladder_whose_every_rung_failed_has_no_plateau_and_is_not_called_not_learning(records):
    history = [f for r in (1, 2, 4) for f in fails(WQ, r, 3)]
    p = plan(records(history), spec(ranks=[1, 2, 4]))
    [lad] = p.ladders
    assert decisions(lad) == [(1, "failed"), (2, "failed"), (4, "failed")]
    assert lad.finished and p.done
    assert lad.plateau_rank is None
    assert "not learning" not in lad.reason


def test_pruned_rung_is_no_plateau_signal(records):
    history = rungs(WQ, {1: 0.6}) + [row(WQ, 2, state="PRUNED")] + rungs(WQ, {4: 0.6})
    p = plan(records(history), spec(patience=2))
    assert decisions(p.ladders[0]) == [(1, "first"), (2, "pruned"), (4, "no gain")]
    assert p.pending == [Point(WQ, 8, 0)]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_are_ignored(bad):
    # Optuna itself turns a NaN objective into FAIL; a hand-made or foreign record may still carry one
    history = rungs(WQ, {1: [0.60, 0.60], 2: [bad, 0.70], 4: [bad, bad]})
    p = plan(direct(history), spec(seeds=[0, 1], patience=2))
    [lad] = p.ladders
    assert [(g.r, g.n, g.decision) for g in lad.rungs] == [(1, 2, "first"), (2, 1, "gain"), (4, 0, "not learning")]
    assert lad.rungs[1].mean == pytest.approx(0.70)
    assert p.pending == [Point(WQ, 8, 0), Point(WQ, 8, 1)]


# --- not-learning rungs -----------------------------------------------------------------------------------------

def test_ladder_that_never_learns_has_no_plateau_rank(records):
    history = rungs(WQ, {1: 0.5, 2: 0.5, 4: 0.5}, not_learning=(1, 2, 4))
    p = plan(records(history), spec(ranks=[1, 2, 4], extend=True, extend_sets=[ALL4]))
    [lad] = p.ladders
    assert decisions(lad) == [(1, "not learning"), (2, "not learning"), (4, "not learning")]
    assert lad.finished and p.done
    assert lad.plateau_rank is None
    assert "not learning" in lad.reason
    assert p.pending == [] and p.extensions == []


@pytest.mark.parametrize(
    "scores, finished, plateau_rank, pending, expected",
    [
        ({1: 0.5, 2: 0.5}, False, None, [4], [(1, "not learning"), (2, "not learning")]),
        ({1: 0.5, 2: 0.5, 4: 0.70}, False, 4, [8], [(1, "not learning"), (2, "not learning"), (4, "first")]),
        ({1: 0.5, 2: 0.5, 4: 0.70, 8: 0.70}, True, 4, [],
         [(1, "not learning"), (2, "not learning"), (4, "first"), (8, "no gain")]),
        ({1: 0.5, 2: 0.5, 4: 0.70, 8: 0.80, 16: 0.80}, True, 8, [],
         [(1, "not learning"), (2, "not learning"), (4, "first"), (8, "gain"), (16, "no gain")]),
    ],
    ids=["two not-learning rungs are no plateau", "first learning rung", "plateau at the first learning rung",
         "plateau later"],
)
def test_not_learning_rungs_never_make_a_plateau(records, scores, finished, plateau_rank, pending, expected):
    p = plan(records(rungs(WQ, scores, not_learning=(1, 2))), spec())
    [lad] = p.ladders
    assert decisions(lad) == expected
    assert lad.finished is finished
    assert lad.plateau_rank == plateau_rank
    assert p.pending == [Point(WQ, r, 0) for r in pending]
    if finished:
        assert lad.reason.startswith("plateau")


def test_a_seed_that_did_not_learn_counts_in_the_rung_mean_as_in_the_summary(records):
    # issue #13.1: the ladder used to drop the seed (0.80, n=1) while select kept it (0.65, n=2)
    history = rungs(WQ, {1: [0.6, 0.6], 2: [0.5, 0.8]})
    history[2] = row(WQ, 2, 0, 0.5, not_learning=True)
    recs = records(history)
    p = plan(recs, spec(seeds=[0, 1]))
    second = p.ladders[0].rungs[1]
    assert (second.n, second.mean, second.decision) == (2, pytest.approx(0.65), "no gain")
    summary = {(s.targets, s.r): s for s in aggregate(recs)}[(WQ, 2)]
    assert (summary.n, summary.mean, summary.std, summary.n_not_learning) == (2, pytest.approx(0.65),
                                                                            pytest.approx(second.std), 1)


def test_a_rung_where_no_seed_learned_is_not_learning(records):
    history = rungs(WQ, {1: [0.6, 0.6], 2: [0.5, 0.5]}, not_learning=(2,))
    p = plan(records(history), spec(seeds=[0, 1]))
    assert decisions(p.ladders[0]) == [(1, "first"), (2, "not learning")]


# --- extension step ---------------------------------------------------------------------------------------------

PLATEAU_AT_2 = {1: 0.60, 2: 0.70, 4: 0.70}


@pytest.mark.parametrize(
    "ladders, overrides, pending",
    [
        ({WQ: PLATEAU_AT_2}, {}, [Point(ALL4, 2, 0), Point(ALL4, 2, 1)]),
        ({WQ: {1: 0.5, 2: 0.6, 4: 0.7, 8: 0.7}}, {}, [Point(ALL4, 4, 0), Point(ALL4, 4, 1)]),
        ({WQ: {1: 0.5, 2: 0.6, 4: 0.7, 8: 0.8, 16: 0.9, 32: 0.9}}, {"ranks": [1, 2, 4, 8, 16, 32]}, []),
        ({WQ: PLATEAU_AT_2}, {"extend_max_rank": 1}, []),
        ({WQ: PLATEAU_AT_2}, {"extend": False}, []),
        ({WQ: PLATEAU_AT_2, WQV: PLATEAU_AT_2}, {}, [Point(ALL4, 2, 0), Point(ALL4, 2, 1)]),
        ({WQ: PLATEAU_AT_2, WQV: {1: 0.6, 2: 0.7, 4: 0.8, 8: 0.8}}, {},
         [Point(ALL4, 2, 0), Point(ALL4, 2, 1), Point(ALL4, 4, 0), Point(ALL4, 4, 1)]),
        ({WQ: PLATEAU_AT_2, WQV: {1: 0.6}}, {}, [Point(WQV, 2, 0), Point(WQV, 2, 1), Point(ALL4, 2, 0),
                                                  Point(ALL4, 2, 1)]),
        ({WQ: {1: 0.5, 2: 0.5}}, {"ranks": [1, 2]}, [Point(ALL4, 1, 0), Point(ALL4, 1, 1)]),
    ],
    ids=["plateau r=2 extends at r=2", "plateau r=4 extends at r=4", "plateau r=16 > extend_max_rank=4",
         "extend_max_rank=1", "extend off", "two ladders at r=2: one extension", "two ladders at r=2 and r=4",
         "ladders pending before extensions", "plateau at r=1 extends at r=1"],
)
def test_extension_step(records, ladders, overrides, pending):
    history = [t for targets, scores in ladders.items() for t in rungs(targets, {r: [s, s] for r, s in scores.items()})]
    kw = dict(target_sets=list(ladders), seeds=[0, 1], extend=True, extend_sets=[ALL4], extend_max_rank=4)
    p = plan(records(history), spec(**{**kw, **overrides}))
    assert p.pending == pending
    assert len(set(p.pending)) == len(p.pending)


def test_extension_runs_once_and_is_not_proposed_again(records):
    kw = dict(target_sets=[WQ, WQV], seeds=[0], extend=True, extend_sets=[ALL4], extend_max_rank=4)
    history = rungs(WQ, PLATEAU_AT_2) + rungs(WQV, PLATEAU_AT_2)
    assert plan(records(history), spec(**kw)).pending == [Point(ALL4, 2, 0)]
    p = plan(records(history + rungs(ALL4, {2: 0.75})), spec(**kw))
    assert p.pending == [] and p.done
    assert all(note.startswith(f"{ALL4} at r=2") for note in p.extensions)


def test_extension_set_already_in_the_ladders_is_skipped(records):
    p = plan(records(rungs(WQ, PLATEAU_AT_2)), spec(extend=True, extend_sets=[WQ]))
    assert p.pending == [] and p.extensions == [] and p.done


# --- parameter budget -------------------------------------------------------------------------------------------

def cost(targets: str, r: int) -> tuple[int, int]:
    """Like LoRA on 384-wide matrices: 2*384*r per adapted matrix."""
    lora = 2 * 384 * r * len(targets.split(","))
    return lora, lora + 1000


@pytest.mark.parametrize(
    "budget, scores, stop_r, pending, plateau_rank",
    [
        ({"max_lora_params": 2 * 384 * 4}, {1: 0.5, 2: 0.6, 4: 0.7}, 8, [], 4),
        ({"max_trainable_params": 2 * 384 * 4 + 1000}, {1: 0.5, 2: 0.6, 4: 0.7}, 8, [], 4),
        ({"max_lora_params": 2 * 384 * 4}, {1: 0.5, 2: 0.6}, None, [4], 2),
        ({"max_lora_params": 2 * 384 * 8}, {1: 0.5, 2: 0.6, 4: 0.7}, None, [8], 4),
    ],
    ids=["lora budget stops before r=8", "trainable budget stops before r=8", "r=4 still fits", "r=8 fits"],
)
def test_budget_cut_off(records, budget, scores, stop_r, pending, plateau_rank):
    s = spec(cost=cost, extend=True, extend_sets=[ALL4], **budget)  # the extension at r=4 would break it too
    p = plan(records(rungs(WQ, scores)), s)
    [lad] = p.ladders
    assert p.pending == [Point(WQ, r, 0) for r in pending]
    assert lad.plateau_rank == plateau_rank
    if stop_r is not None:
        assert lad.finished and p.done
        assert lad.reason.startswith(f"budget: next rung r={stop_r} needs")
        assert all(pt.r != stop_r for pt in p.pending)
        assert p.extensions == []


def _measured(scores: dict, memory: dict) -> list[TrialRecord]:
    """Direct records of ``rungs(WQ, scores)`` with each rung's peak memory (MiB)."""
    return [TrialRecord(i, WQ, r, 0, "COMPLETE", score, None, None, None, peak_memory_mb=memory.get(r))
            for i, (r, score) in enumerate(scores.items())]


@pytest.mark.parametrize("limit, memory, pending, reason", [
    # r=2 adds 2*384 trainable params: 12,288 bytes over r=1 -> 1000.0117 MiB predicted for r=2
    (1000.01, {1: 1000.0}, [], "budget: next rung r=2 is predicted to need 1,000 MB peak memory > budget 1,000 "
                               "(r=1 measured 1,000 MB + 16 bytes per added trainable param)"),
    (1000.02, {1: 1000.0}, [2], None),  # fits: r=2 runs
    (1000.02, {}, [2], None),  # nothing measured (a study from before): no prediction, no cut
    (1500.0, {1: 1000.0, 2: 1600.0}, [], "budget: next rung r=4 is predicted to need 1,600 MB"),  # from r=2's peak
])
def test_a_rung_predicted_over_the_memory_budget_is_not_trained(limit, memory, pending, reason):
    scores = {1: 0.5} if 2 not in memory else {1: 0.5, 2: 0.6}
    p = plan(_measured(scores, memory), spec(cost=cost, max_memory_mb=limit))
    [lad] = p.ladders
    assert p.pending == [Point(WQ, r, 0) for r in pending]
    if reason is not None:
        assert lad.finished and lad.reason.startswith(reason)


def test_memory_prediction_adds_16_bytes_per_trainable_param():
    from rank_sweep.study.spec import predicted_memory

    mb, below = predicted_memory(spec(cost=cost), WQ, 8, {1: 500.0, 2: 510.0})
    assert below == 2 and mb == pytest.approx(510.0 + 2 * 384 * 6 * 16 / 2 ** 20)
    assert predicted_memory(spec(cost=cost), WQ, 1, {2: 510.0}) is None  # nothing measured below


def test_budget_on_the_first_rung_says_budget(records):
    p = plan(records([]), spec(cost=cost, max_lora_params=10))
    [lad] = p.ladders
    assert p.pending == [] and p.done
    assert lad.plateau_rank is None
    assert lad.reason.startswith("budget: next rung r=1 needs")


def test_budget_skips_only_the_extension_that_breaks_it(records):
    s = spec(cost=cost, max_lora_params=2 * 384 * 8, extend=True, extend_sets=[ALL4], ranks=[1, 2, 4, 8])
    p = plan(records(rungs(WQ, PLATEAU_AT_2)), s)
    assert p.pending == [Point(ALL4, 2, 0)]  # 4 matrices at r=2 = 8 matrix-ranks: fits exactly
    p = plan(records(rungs(WQ, {1: 0.5, 2: 0.6, 4: 0.7, 8: 0.7})), s)
    assert p.pending == [] and p.done  # 4 matrices at r=4 does not fit


# --- running trials, order, grid, full fine-tuning --------------------------------------------------------------

@pytest.mark.parametrize(
    "history, pending",
    [
        ([row(WQ, 1, 0, state="RUNNING")], [Point(WQ, 1, 1), Point(WQV, 1, 0), Point(WQV, 1, 1)]),
        ([row(WQ, 1, 0, state="RUNNING"), row(WQ, 1, 1, state="RUNNING")], [Point(WQV, 1, 0), Point(WQV, 1, 1)]),
        ([row(WQ, 1, 0, state="FAIL"), row(WQ, 1, 0, state="RUNNING")],
         [Point(WQ, 1, 1), Point(WQV, 1, 0), Point(WQV, 1, 1)]),
        (rungs(WQ, {1: [0.6, 0.6], 2: [0.6, 0.6]}) + rungs(WQV, {1: [0.6, 0.6]})
         + [row(WQV, 2, 0, 0.6), row(WQV, 2, 1, state="RUNNING")], []),
    ],
    ids=["one seed running", "rung running", "retry running", "last point running"],
)
def test_running_points_are_not_proposed_and_block_done(records, history, pending):
    p = plan(records(history), spec(target_sets=[WQ, WQV], seeds=[0, 1]))
    assert p.pending == pending
    assert not p.done


@pytest.mark.parametrize(
    "point, overrides",
    [(Point(ALL4, 2, 0), {"extend": True, "extend_sets": [ALL4]}), (Point.full(0), {"include_full": True})],
    ids=["extension running", "full fine-tuning running"],
)
def test_running_point_outside_the_ladders_blocks_done(records, point, overrides):
    history = rungs(WQ, PLATEAU_AT_2)
    assert plan(records(history), spec(**overrides)).pending == [point]
    p = plan(records(history + [row(point.row, point.r, point.seed, state="RUNNING")]), spec(**overrides))
    assert p.pending == [] and all(lad.finished for lad in p.ladders)
    assert not p.done


def test_done_once_the_running_point_completes(records):
    history = rungs(WQ, {1: [0.6, 0.6], 2: [0.6, 0.6]}) + rungs(WQV, {1: [0.6, 0.6], 2: [0.6, 0.6]})
    p = plan(records(history), spec(target_sets=[WQ, WQV], seeds=[0, 1]))
    assert p.pending == [] and p.done
    assert [lad.plateau_rank for lad in p.ladders] == [1, 1]


def test_first_pending_point_is_ladder_one_before_ladder_two(records):
    s = spec(target_sets=[WQV, WQ], seeds=[0, 1])
    assert plan(records([]), s).pending == [Point(WQV, 1, 0), Point(WQV, 1, 1), Point(WQ, 1, 0), Point(WQ, 1, 1)]
    p = plan(records(rungs(WQV, {1: [0.6, 0.6]}) + rungs(WQ, {1: [0.6, 0.6], 2: [0.7, 0.7]})), s)
    assert p.pending[0] == Point(WQV, 2, 0)
    assert p.pending == [Point(WQV, 2, 0), Point(WQV, 2, 1), Point(WQ, 4, 0), Point(WQ, 4, 1)]


def test_grid_lists_every_point_in_order_and_ignores_plateaus(records):
    s = spec(target_sets=[WQ, WQV], ranks=[1, 2, 4], seeds=[0, 1], grid=True, extend=True, extend_sets=[ALL4])
    every = [Point(t, r, seed) for t in (WQ, WQV, ALL4) for r in (1, 2, 4) for seed in (0, 1)]
    assert plan(records([]), s).pending == every
    history = rungs(WQ, {1: [0.7, 0.7], 2: [0.6, 0.6]}) + [row(WQV, 1, 0, state="RUNNING")]
    p = plan(records(history), s)
    assert p.pending == [pt for pt in every if pt not in {Point(WQ, 1, 0), Point(WQ, 1, 1), Point(WQ, 2, 0),
                                                            Point(WQ, 2, 1), Point(WQV, 1, 0)}]
    assert not p.done
    wq = p.ladders[0]
    assert decisions(wq) == [(1, "first"), (2, "no gain")]
    assert not wq.finished


def test_grid_is_done_when_every_point_ran(records):
    s = spec(target_sets=[WQ], ranks=[1, 2], seeds=[0], grid=True, extend=True, extend_sets=[ALL4])
    p = plan(records(rungs(WQ, {1: 0.7, 2: 0.6}) + rungs(ALL4, {1: 0.7})), s)
    assert p.pending == [Point(ALL4, 2, 0)] and not p.done
    p = plan(records(rungs(WQ, {1: 0.7, 2: 0.6}) + rungs(ALL4, {1: 0.7, 2: 0.8})), s)
    assert p.pending == [] and p.done
    assert [lad.reason for lad in p.ladders] == ["max_rank reached (r=2)"] * 2


def test_grid_skips_points_over_budget(records):
    s = spec(target_sets=[WQ], ranks=[1, 2, 4], grid=True, extend=True, extend_sets=[ALL4], cost=cost,
             max_lora_params=2 * 384 * 4)
    assert plan(records([]), s).pending == [Point(WQ, 1, 0), Point(WQ, 2, 0), Point(WQ, 4, 0), Point(ALL4, 1, 0)]


def test_grid_trains_extension_sets_only_when_extend_is_on(records):
    # issue #13.13: search=grid search.extend=false also trained every rank of Wq,Wk,Wv,Wo
    s = spec(target_sets=[WQV], ranks=[1, 2], grid=True, extend=False, extend_sets=[ALL4])
    p = plan(records([]), s)
    assert p.pending == [Point(WQV, 1, 0), Point(WQV, 2, 0)]
    assert [lad.targets for lad in p.ladders] == [WQV]
    assert plan(records(rungs(WQV, {1: 0.7, 2: 0.6})), s).done


def test_a_rank_budget_stops_the_ladder_before_the_rung():
    s = spec(ranks=[1, 2, 4, 8], rank_limit=2)
    p = plan(direct(rungs(WQ, {1: 0.5, 2: 0.6})), s)
    assert p.ladders[0].finished and p.ladders[0].reason == "budget: next rung r=4 > budget max_rank 2"


def test_full_finetune_reference_runs_after_the_ladders(records):
    s = spec(seeds=[0, 1], include_full=True, cost=cost, max_lora_params=10)
    p = plan(records([]), s)
    assert p.pending == [Point.full(0), Point.full(1)]
    p = plan(records([row(FULL, 0, 0, 0.9), row(FULL, 0, 1, 0.9)]), s)
    assert p.pending == [] and p.done


def test_records_without_parameters_are_ignored():
    nothing = TrialRecord(number=9, targets="", r=-1, seed=-1, state="FAIL", score=None, lora_params=None,
                          trainable_params=None, train_seconds=None)
    assert plan(direct([]) + [nothing], spec()).pending == [Point(WQ, 1, 0)]


# --- the paired decision rule (issue #14) -------------------------------------------------------------------------

def _paired(half: float, wide: dict | None = None):
    """A compare function: the difference of the means, +/- ``half`` (or ``wide[(r_a, r_b)]``); it records
    the seed noise it was given."""
    from statistics import fmean

    from rank_sweep.results.paired import Interval

    seen = []

    def compare(a, b, seed_std):
        seen.append(((a[0].r, b[0].r), len(a), len(b), seed_std))
        est = fmean(x.score for x in b) - fmean(x.score for x in a)
        h = (wide or {}).get((a[0].r, b[0].r), (wide or {}).get((b[0].r, a[0].r), half))
        return Interval(est, est - h, est + h)

    compare.seen = seen
    return compare


def test_a_rung_is_a_gain_only_when_the_interval_clears_min_delta(records):
    # r=2 beats r=1 by 0.03 in the mean (the old rule: a gain over 0.005), but its interval straddles 0.005
    s = spec(ranks=[1, 2, 4], compare=_paired(0.01, {(1, 2): 0.04}), min_delta=0.005, patience=2)
    p = plan(records(rungs(WQ, {1: 0.70, 2: 0.73, 4: 0.76})), s)
    lad = p.ladders[0]
    assert decisions(lad) == [(1, "first"), (2, "no gain"), (4, "gain")]
    g = lad.rungs[1]
    assert (g.diff, g.diff_ci_low, g.diff_ci_high, g.vs_r) == pytest.approx((0.03, -0.01, 0.07, 1))
    assert "[-0.0100, +0.0700] at 95%" in g.detail
    assert lad.rungs[2].vs_r == 2  # the best lower rung by mean, even without a significant gain


def test_the_plateau_rank_is_the_lowest_rank_not_surely_worse_than_the_best(records):
    p = plan(records(rungs(WQ, {1: 0.70, 2: 0.71})), spec(ranks=[1, 2], compare=_paired(0.03)))
    assert p.ladders[0].plateau_rank == 1  # r=1 is within the noise of r=2
    p = plan(records(rungs(WQ, {1: 0.70, 2: 0.75})), spec(ranks=[1, 2], compare=_paired(0.03)))
    assert p.ladders[0].plateau_rank == 2  # r=1 is surely worse


def test_noise_seeds_run_on_the_first_rung_and_their_spread_is_reused_up_the_ladder(records):
    s = spec(ranks=[1, 2, 4], seeds=[0], noise_seeds=[1, 2], compare=_paired(0.01))
    assert plan(records([]), s).pending == [Point(WQ, 1, 0), Point(WQ, 1, 1), Point(WQ, 1, 2)]
    history = rungs(WQ, {1: [0.70, 0.72, 0.74]})
    assert plan(records(history), s).pending == [Point(WQ, 2, 0)]  # one seed from the second rung on
    plan(records(history + rungs(WQ, {2: 0.75})), s)
    (pair, ka, kb, seed_std), *_ = s.compare.seen
    assert pair == (1, 2) and (ka, kb) == (3, 1) and seed_std == pytest.approx(0.02)


def test_the_head_reference_runs_first_and_a_ladder_that_does_not_beat_it_reports_no_rank(records):
    from rank_sweep.results.records import HEAD

    s = spec(ranks=[1, 2], head_reference=True, compare=_paired(0.02))
    assert plan(records([]), s).pending == [Point.head(0), Point(WQ, 1, 0)]  # the head first
    history = [row(HEAD, 0, 0, 0.70)] + rungs(WQ, {1: 0.70, 2: 0.71})
    lad = plan(records(history), s).ladders[0]
    assert lad.finished and lad.plateau_rank is None
    assert lad.reason.startswith("the adapters add nothing yet: no rung beats the head alone (best r=2: +0.0100")
    history = [row(HEAD, 0, 0, 0.60)] + rungs(WQ, {1: 0.70, 2: 0.71})  # now every rung beats the head
    lad = plan(records(history), s).ladders[0]
    assert lad.plateau_rank == 1


def test_the_head_reference_is_never_chosen_by_select():
    from rank_sweep.config import HEAD
    from rank_sweep.results.selection import select

    recs = [TrialRecord(0, HEAD, 0, 0, "COMPLETE", 0.80, 0, 10, 1.0),
            TrialRecord(1, WQ, 1, 0, "COMPLETE", 0.79, 10, 20, 1.0)]
    sel = select(recs, tolerance=0.05)
    assert sel.chosen.targets == WQ
    assert ("head only", "reference: the head alone, no adapter") in [(s.label, why) for s, why in sel.runners_up]
