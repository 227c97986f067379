"""records_from_study and aggregate on hand-built Optuna trial histories (no training)."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from rank_sweep.errors import RankSweepError
from rank_sweep.results.readers import records_from_study
from rank_sweep.results.records import ConfigSummary, TrialRecord, aggregate

optuna.logging.set_verbosity(optuna.logging.WARNING)

DISTS = {
    "targets": CategoricalDistribution(["Wq", "Wq,Wv", "full"]),
    "r": IntDistribution(0, 64),
    "seed": IntDistribution(0, 10),
}
ATTRS = {
    "lora_params": 49152,
    "trainable_params": 641282,
    "train_seconds": 93.5,
    "not_learning": False,
    "baseline_score": 0.5,
    "alpha": 8.0,
    "lr": 5e-4,
    "mlflow_run_id": "abc123",
}


def _study(trials) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    return study


def _complete(targets, r, seed, value, **attrs):
    return create_trial(
        state=TrialState.COMPLETE,
        value=value,
        params={"targets": targets, "r": r, "seed": seed},
        distributions=DISTS,
        user_attrs={**ATTRS, **attrs},
    )


def test_reads_every_field_of_a_complete_trial():
    trial = create_trial(
        state=TrialState.COMPLETE,
        value=0.86,
        params={"targets": "Wq,Wv", "r": 4},
        distributions={"targets": DISTS["targets"], "r": DISTS["r"]},
        user_attrs={**ATTRS, "seed": 3},
        intermediate_values={2: 0.86, 0: 0.80, 1: 0.84},
    )
    [rec] = records_from_study(_study([trial]))
    assert rec == TrialRecord(
        number=0,
        targets="Wq,Wv",
        r=4,
        seed=3,  # not a param here: read from user_attrs
        state="COMPLETE",
        score=0.86,
        lora_params=49152,
        trainable_params=641282,
        train_seconds=93.5,
        not_learning=False,
        baseline_score=0.5,
        alpha=8.0,
        lr=5e-4,
        run_id="abc123",
        intermediate=(0.80, 0.84, 0.86),  # sorted by step, not by insertion
    )


def test_params_win_over_user_attrs_and_attrs_fill_the_rest():
    trial = create_trial(
        state=TrialState.COMPLETE,
        value=0.7,
        params={"r": 8},
        distributions={"r": DISTS["r"]},
        user_attrs={"r": 2, "targets": ["Wq", "Wv"], "seed": 1},
    )
    [rec] = records_from_study(_study([trial]))
    assert (rec.targets, rec.r, rec.seed) == ("Wq,Wv", 8, 1)
    assert rec.lora_params is None and rec.trainable_params is None and rec.run_id is None
    assert rec.intermediate == ()


def test_fail_pruned_running_trials_are_kept_with_their_state():
    trials = [
        _complete("Wq", 1, 0, 0.8),
        create_trial(state=TrialState.FAIL),
        create_trial(
            state=TrialState.PRUNED,
            params={"targets": "Wq", "r": 2, "seed": 0},
            distributions=DISTS,
            intermediate_values={0: 0.6},
        ),
        create_trial(state=TrialState.RUNNING, user_attrs={"targets": "Wq", "r": 4, "seed": 0}),
    ]
    recs = records_from_study(_study(trials))
    assert [(r.number, r.state, r.score) for r in recs] == [
        (0, "COMPLETE", 0.8),
        (1, "FAIL", None),
        (2, "PRUNED", None),
        (3, "RUNNING", None),
    ]
    fail = recs[1]
    assert (fail.targets, fail.r, fail.seed) == ("", -1, -1)
    assert recs[2].intermediate == (0.6,)
    assert (recs[3].targets, recs[3].r) == ("Wq", 4)


def test_empty_study_gives_no_records():
    assert records_from_study(optuna.create_study()) == []


def test_multi_objective_study_is_refused_in_one_line():
    study = optuna.create_study(directions=["maximize", "minimize"])
    with pytest.raises(RankSweepError, match="2 objectives") as e:
        records_from_study(study)
    assert "\n" not in str(e.value)


def _rec(number, targets, r, score, state="COMPLETE", seed=0, not_learning=False, seconds=10.0, lora=100, tp=1000):
    return TrialRecord(number, targets, r, seed, state, score, lora, tp, seconds, not_learning=not_learning)


def test_aggregate_pools_seeds_and_ignores_unusable_trials():
    records = [
        _rec(0, "Wq", 4, 0.80, seed=0, seconds=10.0),
        _rec(1, "Wq", 4, 0.84, seed=1, seconds=20.0),
        _rec(2, "Wq", 4, 0.99, state="PRUNED"),
        _rec(3, "Wq", 4, None, state="FAIL"),
        _rec(4, "Wq", 4, 0.99, state="RUNNING"),
        _rec(5, "Wq", 4, math.nan),
        _rec(6, "Wq", 4, None),
        _rec(7, "Wq,Wv", 2, 0.86, seconds=None),
        _rec(8, "Wk", 1, 0.5, state="PRUNED"),  # no usable seed: no summary
    ]
    wq, wqwv = aggregate(records)
    assert (wq.targets, wq.r, wq.n, wq.numbers) == ("Wq", 4, 2, (0, 1))
    assert wq.mean == pytest.approx(0.82)
    assert wq.std == pytest.approx(math.sqrt(2 * 0.02**2))  # sample std, not population
    assert wq.train_seconds == pytest.approx(15.0)
    assert (wq.lora_params, wq.trainable_params) == (100, 1000)
    assert wqwv == ConfigSummary("Wq,Wv", 2, 1, 0.86, 0.0, 100, 1000, None, False, (7,), 0)


def test_aggregate_not_learning_only_when_every_seed_is_stuck():
    records = [
        _rec(0, "Wq", 1, 0.81, seed=0, not_learning=True),
        _rec(1, "Wq", 1, 0.81, seed=1, not_learning=True),
        _rec(2, "Wq", 2, 0.81, seed=0, not_learning=True),
        _rec(3, "Wq", 2, 0.85, seed=1),
    ]
    r1, r2 = aggregate(records)
    assert r1.not_learning and r1.n_not_learning == 2
    assert not r2.not_learning and r2.n_not_learning == 1


def test_aggregate_keeps_record_order_of_numbers_and_sorts_configs():
    records = [_rec(9, "Wq,Wv", 2, 0.9, seed=1), _rec(3, "Wq", 8, 0.8), _rec(1, "Wq,Wv", 2, 0.8), _rec(5, "Wq", 2, 0.7)]
    out = aggregate(records)
    assert [(s.targets, s.r) for s in out] == [("Wq", 2), ("Wq", 8), ("Wq,Wv", 2)]
    assert out[2].numbers == (9, 1)


def test_a_point_finished_twice_counts_once_as_in_the_ladder():
    records = [_rec(1, "Wq", 2, 0.8), _rec(4, "Wq", 2, 0.6), _rec(5, "Wq", 2, 0.7, seed=1)]
    [s] = aggregate(records)
    assert (s.n, s.numbers, s.mean) == (2, (1, 5), pytest.approx(0.75))


def test_tuned_values_make_separate_configurations_not_seed_noise():
    # issue #13.5: TPE draws of lr at one (targets, r) were pooled and their spread called seed noise
    a = TrialRecord(1, "Wq", 4, 0, "COMPLETE", 0.8, 10, 20, 1.0, tuned=(("lr", 1e-3),))
    b = TrialRecord(2, "Wq", 4, 0, "COMPLETE", 0.6, 10, 20, 1.0, tuned=(("lr", 3e-4),))
    out = aggregate([a, b])
    assert [(s.n, s.mean, s.label) for s in out] == [(1, 0.6, "Wq r=4 lr=0.0003"), (1, 0.8, "Wq r=4 lr=0.001")]


def test_labels_name_rank_or_full_fine_tuning():
    assert ConfigSummary("Wq,Wv", 4, 1, 0.9, 0.0, 1, 1, None).label == "Wq,Wv r=4"
    assert ConfigSummary("full", 0, 1, 0.9, 0.0, None, 10, None).label == "full"


def test_study_to_summaries_end_to_end():
    trials = [
        _complete("Wq,Wv", 2, 0, 0.85),
        _complete("Wq,Wv", 2, 1, 0.87),
        create_trial(state=TrialState.FAIL),
        _complete("Wq", 2, 0, 0.80, not_learning=True),
    ]
    wq, wqwv = aggregate(records_from_study(_study(trials)))
    assert wq.not_learning and wq.numbers == (3,)
    assert wqwv.mean == pytest.approx(0.86) and wqwv.numbers == (0, 1) and wqwv.lora_params == 49152


def test_a_seed_that_collapsed_while_its_siblings_learned_is_flagged_unstable():
    # issue #14: SST-2, r=16, lr 3e-3, five seeds; the mean says "no gain" while four seeds beat every r=2 seed
    scores = (0.798, 0.796, 0.795, 0.747, 0.603)
    recs = [TrialRecord(i, "Wq,Wk,Wv,Wo", 16, i, "COMPLETE", s, 10, 20, 1.0, lr=3e-3, score_ci_low=s - 0.027,
                        score_ci_high=s + 0.027) for i, s in enumerate(scores)]
    [s] = aggregate(recs)
    assert s.unstable == (4,)  # 0.603 collapsed; 0.747 is within twice the dev-set half-width of the others
    assert s.mean == pytest.approx(sum(scores) / 5)  # charged to the configuration, not averaged away
    from rank_sweep.results.tables import summary_table

    assert "unstable: 1 of 5 seeds collapsed (trials 4)" in summary_table([s])
    steady = [TrialRecord(i, "Wq", 2, i, "COMPLETE", s, 10, 20, 1.0) for i, s in enumerate((0.776, 0.770, 0.781))]
    assert aggregate(steady)[0].unstable == ()
