"""select, pareto_front, Budget and the reports on hand-made summaries and trial histories."""

from __future__ import annotations

import csv
import io

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from rank_sweep.config import Budget
from rank_sweep.errors import RankSweepError
from rank_sweep.results.readers import records_from_study
from rank_sweep.results.records import ConfigSummary, TrialRecord
from rank_sweep.results.selection import pareto_front, select
from rank_sweep.results.tables import format_selection, summary_table

optuna.logging.set_verbosity(optuna.logging.WARNING)


def S(targets, r, mean, tp, lora=None, std=0.0, n=1, not_learning=False, seconds=None, memory=None):
    """A summary; LoRA params default to the trainable count (no head)."""
    return ConfigSummary(targets, r, n, mean, std, tp if lora is None else lora, tp, seconds, not_learning,
                         peak_memory_mb=memory)


def R(number, targets, r, score, state="COMPLETE", lora=100, tp=100, seed=0, not_learning=False):
    return TrialRecord(number, targets, r, seed, state, score, lora, tp, 1.0, not_learning=not_learning)


LADDER = [S("Wq", 1, 0.850, 10), S("Wq", 2, 0.858, 20), S("Wq", 4, 0.861, 40)]
LOSSES = [S("Wq", 1, 0.50, 10), S("Wq", 2, 0.45, 20), S("Wq", 4, 0.44, 40)]

CASES = {
    # name: (summaries, budget, tolerance, direction, chosen label, best label)
    "same score: cheaper wins": (
        [S("Wq,Wv", 4, 0.86, 200), S("Wq", 8, 0.86, 150)],
        Budget(),
        0.0,
        "maximize",
        "Wq r=8",
        "Wq r=8",
    ),
    "same score and cost: lower r wins": (
        [S("Wq", 4, 0.86, 100), S("Wv", 2, 0.86, 100)],
        Budget(),
        0.0,
        "maximize",
        "Wv r=2",
        "Wv r=2",
    ),
    "tolerance 0 picks the best": (LADDER, Budget(), 0.0, "maximize", "Wq r=4", "Wq r=4"),
    "small tolerance picks cheaper": (LADDER, Budget(), 0.005, "maximize", "Wq r=2", "Wq r=4"),
    "large tolerance picks cheapest": (LADDER, Budget(), 0.02, "maximize", "Wq r=1", "Wq r=4"),
    "difference exactly at tolerance is in": (
        [S("Wq", 1, 0.856, 10), S("Wq", 4, 0.861, 40)],
        Budget(),
        0.005,
        "maximize",
        "Wq r=1",
        "Wq r=4",
    ),
    "budget excludes the best": (LADDER, Budget(max_lora_params=30), 0.0, "maximize", "Wq r=2", "Wq r=2"),
    "max_rank excludes the best": (LADDER, Budget(max_rank=2), 0.0, "maximize", "Wq r=2", "Wq r=2"),
    "max_train_seconds": (
        [S("Wq", 1, 0.80, 10, seconds=5.0), S("Wq", 4, 0.90, 40, seconds=50.0)],
        Budget(max_train_seconds=10),
        0.0,
        "maximize",
        "Wq r=1",
        "Wq r=1",
    ),
    "max_memory_mb: the best is over the memory budget": (
        [S("Wq", 1, 0.80, 10, memory=900.0), S("Wq", 4, 0.90, 40, memory=1200.0)],
        Budget(max_memory_mb=1000),
        0.0,
        "maximize",
        "Wq r=1",
        "Wq r=1",
    ),
    "trainable budget counts the head, not LoRA": (
        [S("Wq", 1, 0.80, 1010, lora=10), S("Wq", 4, 0.90, 1040, lora=40)],
        Budget(max_trainable_params=1020),
        0.0,
        "maximize",
        "Wq r=1",
        "Wq r=1",
    ),
    "missing metrics excluded": (
        [S("Wq", 8, None, 80), ConfigSummary("Wq", 16, 1, 0.99, 0.0, 160, None, None), S("Wq", 2, 0.8, 20)],
        Budget(),
        0.0,
        "maximize",
        "Wq r=2",
        "Wq r=2",
    ),
    "not learning never chosen, even if cheapest and in tolerance": (
        [S("Wq", 1, 0.86, 10, not_learning=True), S("Wq,Wv", 2, 0.86, 20)],
        Budget(),
        0.01,
        "maximize",
        "Wq,Wv r=2",
        "Wq,Wv r=2",
    ),
    "minimize, tolerance 0": (LOSSES, Budget(), 0.0, "minimize", "Wq r=4", "Wq r=4"),
    "minimize, tolerance picks cheaper": (LOSSES, Budget(), 0.01, "minimize", "Wq r=2", "Wq r=4"),
    "maximize on the same numbers": (LOSSES, Budget(), 0.0, "maximize", "Wq r=1", "Wq r=1"),
    "full fine-tuning is a reference row by default (select.methods=[lora])": (
        [S("full", 0, 0.95, 10_000, lora=0), S("Wq", 4, 0.90, 40)],
        Budget(),
        0.01,
        "maximize",
        "Wq r=4",
        "Wq r=4",
    ),
    "full fine-tuning has no rank under max_rank": (
        [S("full", 0, 0.95, 10_000, lora=0), S("Wq", 4, 0.90, 40)],
        Budget(max_rank=64),
        0.0,
        "maximize",
        "Wq r=4",
        "Wq r=4",
    ),
}


@pytest.mark.parametrize("summaries,budget,tol,direction,chosen,best", CASES.values(), ids=CASES.keys())
def test_select_table(summaries, budget, tol, direction, chosen, best):
    sel = select(summaries, budget, tol, direction)
    assert sel.chosen.label == chosen
    assert sel.best.label == best
    assert sel.chosen.label not in [s.label for s, _ in sel.runners_up]
    assert len(sel.runners_up) == len(summaries) - 1


def test_reason_and_runners_up_say_why_each_lost():
    summaries = [
        S("Wq", 1, 0.801, 24_576),
        S("Wq", 2, 0.95, 12_288, not_learning=True),
        S("Wq,Wv", 2, 0.858, 49_152),
        S("Wq,Wv", 4, 0.861, 98_304),
        S("Wq,Wk,Wv,Wo", 4, 0.87, 196_608),
        S("Wq,Wv", 8, None, 196_608),
    ]
    sel = select(summaries, Budget(max_lora_params=150_000), tolerance=0.005)
    assert sel.reason == (
        "cheapest configuration within 0.005 of the best in budget (Wq,Wv r=4: 0.861): "
        "Wq,Wv r=2 scores 0.858 with 49,152 LoRA params"
    )
    assert [(s.label, why) for s, why in sel.runners_up] == [
        ("Wq,Wv r=4", "costs 98,304 trainable params, more than the chosen 49,152"),
        ("Wq r=1", "scores 0.801, more than 0.005 below the best"),
        ("Wq,Wk,Wv,Wo r=4", "over budget: 196,608 LoRA params > max 150,000"),
        ("Wq r=2", "not learning"),
        ("Wq,Wv r=8", "missing metrics"),
    ]
    # the front leaves out what does not learn or has no score, but shows what is over budget
    assert [s.label for s in sel.pareto] == ["Wq r=1", "Wq,Wv r=2", "Wq,Wv r=4", "Wq,Wk,Wv,Wo r=4"]


def test_reason_when_the_best_is_chosen_names_head_and_tolerance():
    sel = select([S("Wq", 4, 0.9, 1040, lora=40), S("Wq", 1, 0.5, 1010, lora=10)], Budget(), 0.01)
    assert sel.chosen is sel.best
    assert (
        sel.reason
        == "best score in budget: Wq r=4 scores 0.9 with 40 LoRA params (1,040 trainable) (nothing cheaper within 0.01)"
    )


def test_same_cost_tie_loser_reason_names_rank():
    sel = select([S("Wq", 4, 0.86, 100), S("Wv", 2, 0.86, 100)])
    assert sel.runners_up[0][1] == "same cost, higher rank r=4 than the chosen r=2"


def test_minimize_runner_up_is_above_the_best():
    sel = select(LOSSES, Budget(), 0.01, "minimize")
    assert ("Wq r=1", "scores 0.5, more than 0.01 above the best") in [(s.label, w) for s, w in sel.runners_up]


def _records_with_noise():
    return [
        R(0, "Wq", 1, 0.80, tp=10, seed=0),
        R(1, "Wq", 1, 0.82, tp=10, seed=1),
        R(2, "Wq", 4, 0.99, state="PRUNED", tp=40),  # a pruned trial's last report must not count
        R(3, "Wq", 8, None, state="FAIL", tp=80),
        R(4, "Wq", 16, 0.99, state="RUNNING", tp=160),
        R(5, "Wq", 2, 0.84, tp=20),
    ]


def test_records_pruned_failed_running_ignored():
    sel = select(_records_with_noise(), Budget(), 0.0)
    assert sel.chosen.label == "Wq r=2"
    assert sorted(s.label for s, _ in sel.runners_up) == ["Wq r=1"]
    assert sel.runners_up[0][0].mean == pytest.approx(0.81) and sel.runners_up[0][0].n == 2


DIST = {"targets": CategoricalDistribution(["Wq", "Wq,Wv"]), "r": IntDistribution(1, 64), "seed": IntDistribution(0, 9)}


def _trial(state, targets, r, value=None, tp=None):
    return create_trial(
        state=state,
        value=value,
        params={"targets": targets, "r": r, "seed": 0},
        distributions=DIST,
        user_attrs={} if tp is None else {"lora_params": tp, "trainable_params": tp},
    )


def test_select_from_a_study_history():
    study = optuna.create_study(direction="maximize")
    study.add_trials(
        [
            _trial(TrialState.COMPLETE, "Wq", 1, 0.80, 10),
            _trial(TrialState.COMPLETE, "Wq,Wv", 1, 0.86, 20),
            _trial(TrialState.PRUNED, "Wq", 2),
            create_trial(state=TrialState.FAIL),
            _trial(TrialState.COMPLETE, "Wq,Wv", 2, 0.862, 40),
        ]
    )
    sel = select(records_from_study(study), Budget(max_lora_params=100), 0.005)
    assert sel.chosen.label == "Wq,Wv r=1" and sel.best.label == "Wq,Wv r=2"


def _error(*args, **kwargs) -> str:
    with pytest.raises(RankSweepError) as e:
        select(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_empty_study_error():
    assert _error(records_from_study(optuna.create_study())) == "the study has no trials"


def test_all_failed_or_pruned_error():
    recs = [R(0, "Wq", 1, None, "FAIL"), R(1, "Wq", 2, None, "PRUNED"), R(2, "", -1, None, "FAIL")]
    assert _error(recs) == "all 3 trials failed or were pruned"


def test_nothing_completed_yet_error_counts_states():
    recs = [R(0, "Wq", 1, None, "FAIL"), R(1, "Wq", 2, None, "RUNNING")]
    assert _error(recs) == "none of the 2 trials completed with a finite score (1 FAIL, 1 RUNNING)"


def test_budget_below_cheapest_names_the_cheapest():
    summaries = [S("Wq,Wv", 1, 0.9, 2468), S("Wq", 1, 0.8, 1234), S("Wq", 2, 0.85, 2468)]
    msg = _error(summaries, Budget(max_lora_params=100))
    assert msg == "the budget max_lora_params=100 is below the cheapest trial: Wq r=1 with 1,234 LoRA params"


def test_budget_below_cheapest_trainable():
    msg = _error([S("Wq", 1, 0.8, 1234, lora=34)], Budget(max_trainable_params=1000))
    assert (
        msg == "the budget max_trainable_params=1,000 is below the cheapest trial: Wq r=1 with 1,234 trainable params"
    )


@pytest.mark.parametrize("tol", [-0.001, float("nan"), "0.1"])
def test_bad_tolerance_error(tol):
    assert "tolerance=" in _error(LADDER, Budget(), tol)


def test_bad_direction_error():
    assert _error(LADDER, Budget(), 0.0, "max") == "direction='max' is not valid: choose maximize or minimize"


def test_nothing_learning_error():
    msg = _error([S("Wq", 1, 0.8, 10, not_learning=True), S("Wq", 2, 0.8, 20, not_learning=True)])
    assert msg == "no configuration within the budget is learning: all 2 stay at the baseline"


def test_all_missing_metrics_error():
    assert "has a score and a trainable-parameter count" in _error([S("Wq", 1, None, 10)])


@pytest.mark.parametrize("field", ["max_lora_params", "max_trainable_params", "max_rank", "max_train_seconds",
                                   "max_memory_mb"])
def test_budget_rejects_negative_limits(field):
    with pytest.raises(RankSweepError, match=f"budget\\.{field}=-1 is not valid"):
        Budget(**{field: -1})


@pytest.mark.parametrize(
    "budget,summary,expected",
    [
        (Budget(), S("Wq", 64, 0.9, 10**9), (True, None)),
        (
            Budget(max_lora_params=50_000),
            S("Wq", 4, 0.9, 120_000),
            (False, "over budget: 120,000 LoRA params > max 50,000"),
        ),
        (Budget(max_lora_params=120_000), S("Wq", 4, 0.9, 120_000), (True, None)),
        (Budget(max_rank=8), S("Wq", 16, 0.9, 10), (False, "over budget: r=16 > max 8")),
        (Budget(max_rank=8), S("full", 0, 0.9, 10), (False, "over budget: full fine-tuning has no rank <= max 8")),
        (
            Budget(max_train_seconds=60),
            S("Wq", 1, 0.9, 10),
            (False, "over budget: s of training unknown, max_train_seconds=60"),
        ),
        (
            Budget(max_train_seconds=60),
            S("Wq", 1, 0.9, 10, seconds=61.0),
            (False, "over budget: 61 s of training > max 60"),
        ),
        (Budget(max_memory_mb=512.5), S("Wq", 1, 0.9, 10), (False, "over budget: MB peak memory unknown, max_memory_mb=512.5")),
        (Budget(max_memory_mb=512), S("Wq", 1, 0.9, 10, memory=600.4), (False, "over budget: 600.4 MB peak memory > max 512")),
        (Budget(max_memory_mb=512), S("Wq", 1, 0.9, 10, memory=511.0), (True, None)),
    ],
)
def test_budget_fits(budget, summary, expected):
    assert budget.fits(summary) == expected


def test_pareto_front_hand_example():
    a, b, c = S("Wq", 1, 0.80, 10), S("Wq", 2, 0.85, 20), S("Wq", 4, 0.84, 30)  # c: b is cheaper and better
    d, e, f = S("Wq,Wv", 2, 0.86, 40), S("Wk", 4, 0.85, 40), S("Wq", 8, 0.86, 50)  # e, f dominated by d
    g = S("Wv", 8, None, 5)  # no score: not on any front
    assert pareto_front([f, e, d, c, b, a, g]) == [a, b, d]
    # minimizing, the cheapest is also the lowest: it dominates everything
    assert pareto_front([f, e, d, c, b, a, g], "minimize") == [a]


def test_pareto_front_keeps_exact_duplicates_and_is_empty_for_nothing():
    x, y = S("Wq", 2, 0.85, 20), S("Wv", 2, 0.85, 20)
    assert pareto_front([x, y]) == [x, y]
    assert pareto_front([]) == []


def test_format_selection_reports_choice_runners_up_and_front():
    sel = select(LADDER, Budget(max_lora_params=100), 0.005)
    text = format_selection(sel)
    assert text.splitlines()[0] == "chosen: Wq r=2 (maximize, budget: max_lora_params=100, tolerance 0.005)"
    assert f"why: {sel.reason}" in text
    assert "| Wq r=4 | 0.861 | ? | 0 | 1 | 40 | costs 40 trainable params, more than the chosen 20 |" in text
    front_part = text.split("Pareto front")[1]
    assert all(f"| Wq | {r} |" in front_part for r in (1, 2, 4))


def test_summary_table_markdown_and_csv():
    summaries = [S("Wq", 1, 0.8, 1010, lora=10, std=0.01, n=3), S("Wq,Wv", 2, 0.86, 1040, lora=40, not_learning=True)]
    md = summary_table(summaries).splitlines()
    assert md[0] == "| targets | r | mean | interval | std | n | LoRA params | trainable params | note |"
    assert md[2] == "| Wq | 1 | 0.8 | ? | 0.01 | 3 | 10 | 1,010 |  |"
    assert md[3].endswith("| not learning |")
    rows = list(csv.DictReader(io.StringIO(summary_table(summaries, fmt="csv"))))
    assert rows[1] == {
        "targets": "Wq,Wv",
        "r": "2",
        "mean": "0.86",
        "std": "0.0",
        "n": "1",
        "lora_params": "40",
        "trainable_params": "1040",
        "not_learning": "True",
        "ci_low": "", "ci_high": "", "decision": "", "vs_r": "", "diff": "", "diff_ci_low": "", "diff_ci_high": "",
        "peak_memory_mb": "", "adapter_mb": "", "label": "Wq,Wv r=2", "lr": "",
    }


def test_memory_columns_when_measured():
    """Peak memory (the largest over seeds) and adapter size reach the markdown and the CSV."""

    recs = [TrialRecord(i, "Wq", 4, i, "COMPLETE", 0.8, 10, 20, 1.0, peak_memory_mb=mb, adapter_mb=0.04)
            for i, mb in enumerate((1500.0, 1620.0))]
    md = summary_table(recs).splitlines()
    assert md[0].endswith("| peak memory MB | adapter MB | note |")
    assert md[2] == "| Wq | 4 | 0.8 | ? | 0 | 2 | 10 | 20 | 1,620 | 0.04 |  |"
    [row] = csv.DictReader(io.StringIO(summary_table(recs, fmt="csv")))
    assert (row["peak_memory_mb"], row["adapter_mb"]) == ("1620.0", "0.04")


def test_a_configurations_interval_combines_dev_set_and_seed_noise():
    from rank_sweep.results.records import aggregate

    recs = [TrialRecord(i, "Wq", 4, i, "COMPLETE", score, 10, 20, 1.0, score_ci_low=score - 0.03,
                        score_ci_high=score + 0.03) for i, score in enumerate((0.80, 0.82))]
    [s] = aggregate(recs)
    seed = 1.959964 * 0.0141421 / 2 ** 0.5  # z * std / sqrt(k)
    assert s.ci_low == pytest.approx(0.81 - (0.03 ** 2 + seed ** 2) ** 0.5, abs=1e-4)
    assert s.ci_high == pytest.approx(0.81 + (0.03 ** 2 + seed ** 2) ** 0.5, abs=1e-4)
    assert "| Wq | 4 | 0.81 | [0.7742, 0.8458] |" in summary_table([s])


def test_summary_table_from_records_and_bad_format():
    assert "| Wq | 2 | 0.84 |" in summary_table(_records_with_noise())
    with pytest.raises(RankSweepError, match="fmt='html' is not valid"):
        summary_table(LADDER, fmt="html")


def test_summary_table_notes_partly_stuck_seeds():
    partly = ConfigSummary("Wq", 2, 3, 0.8, 0.05, 20, 20, None, False, (1, 2, 3), 1)
    assert summary_table([partly]).splitlines()[2].endswith("| 1 of 3 seeds not learning |")


@pytest.mark.parametrize(
    "budget,expected",
    [
        (Budget(max_rank=1), "the budget max_rank=1 is below the lowest rank tried: Wq r=2"),
        (
            Budget(max_train_seconds=0.5),
            "the budget max_train_seconds=0.5 is below the cheapest trial: Wq r=4 with 3 s of training",
        ),
        (Budget(max_rank=2, max_train_seconds=4), "no configuration fits the budget max_rank=2, max_train_seconds=4"),
    ],
)
def test_budget_error_names_the_limit(budget, expected):
    summaries = [S("Wq", 2, 0.8, 20, seconds=6.0), S("Wq", 4, 0.85, 40, seconds=3.0)]  # each limit alone admits one
    assert _error(summaries, budget) == expected


def _paired(half):
    from rank_sweep.results.paired import Interval

    def compare(a, b):
        est = b.mean - a.mean
        return Interval(est, est - half, est + half)

    return compare


def test_with_paired_intervals_within_tolerance_means_not_shown_worse():
    """issue #14: a cheaper configuration 0.02 below the best, with a paired interval of +/-0.03, is not shown
    worse than the best by more than the tolerance 0.005: it is chosen; with +/-0.01 it is shown worse."""
    summaries = [S("Wq", 1, 0.80, 10), S("Wq", 4, 0.82, 40)]
    sel = select(summaries, Budget(), 0.005, compare=_paired(0.03))
    assert sel.chosen.label == "Wq r=1" and sel.best.label == "Wq r=4"
    assert sel.confidence_line.startswith("confidence: Wq r=1 - Wq r=4 = -0.0200 [-0.0500, +0.0100] (95% paired")
    assert "confidence:" in format_selection(sel)
    sel = select(summaries, Budget(), 0.005, compare=_paired(0.01))
    assert sel.chosen.label == "Wq r=4"
    assert dict((s.label, why) for s, why in sel.runners_up)["Wq r=1"].startswith(
        "shown worse than the best by more than 0.005: -0.0200 [-0.0300, -0.0100]")


def test_without_predictions_select_says_the_choice_rests_on_means():
    sel = select([S("Wq", 1, 0.80, 10), S("Wq", 4, 0.82, 40)], Budget(), 0.005, compare=lambda a, b: None)
    assert sel.chosen.label == "Wq r=4" and sel.confidence is None
    assert sel.confidence_line.startswith("confidence: no per-example predictions were found")


def test_select_methods_choose_among_reference_methods_too_and_list_them_beside_the_choice():
    rows = [S("full", 0, 0.95, 10_000, lora=0), S("ia3", 0, 0.91, 800, lora=30), S("Wq", 4, 0.90, 810, lora=40)]
    sel = select(rows, Budget(), 0.005)
    assert sel.chosen.label == "Wq r=4"
    why = dict((s.label, w) for s, w in sel.runners_up)
    assert why["ia3"] == ("reference method ia3, not chosen: 30 ia3 params (800 trainable); scores 0.91 against "
                          "the choice's 0.9")
    assert why["full"].startswith("reference method full, not chosen: 10,000 trainable params")
    assert select(rows, Budget(), 0.005, methods=["all"]).chosen.label == "full"
    assert select(rows, Budget(), 0.05, methods=["lora", "ia3"]).chosen.label == "ia3"  # cheaper, within 0.05
    with pytest.raises(RankSweepError, match=r"no configuration of select.methods=\['adalora'\] is within"):
        select(rows, Budget(), 0.005, methods=["adalora"])


def test_a_reference_row_is_compared_to_the_choice_with_its_paired_interval():
    from rank_sweep.results.paired import Interval

    rows = [S("ia3", 0, 0.88, 800, lora=30), S("Wq", 4, 0.90, 810, lora=40)]
    sel = select(rows, Budget(), 0.005, compare=lambda a, b: Interval(b.mean - a.mean, -0.05, 0.01))
    assert dict((s.label, w) for s, w in sel.runners_up)["ia3"].endswith("vs the choice -0.0200 [-0.0500, +0.0100] "
                                                                          "(paired)")


def test_select_methods_is_checked_in_one_line():
    from rank_sweep.config import SelectConfig
    from rank_sweep.errors import ConfigError

    assert SelectConfig(methods="lora,ia3").methods == ["lora", "ia3"]
    with pytest.raises(ConfigError, match=r"^select.methods='lorra' is not valid"):
        SelectConfig(methods=["lorra"])


def L(r, mean, lr, tp, configured=1e-3):
    """A LoRA row on Wq trained at ``lr`` (its own lr is part of its identity unless it is the configured one)."""
    tuned = () if lr == configured else (("lr", lr),)
    return ConfigSummary("Wq", r, 1, mean, 0.0, tp, tp, None, False, peak_memory_mb=None, tuned=tuned, lr=lr)


def test_select_says_whether_the_choices_rank_holds_at_the_other_learning_rates():
    # the bracket and the check: Wq r=1 best at 3e-3; at 1e-3 r=2 gains over r=1 there, not over the choice
    rows = [L(1, 0.81, 3e-3, 10), L(2, 0.805, 3e-3, 20), L(1, 0.70, 1e-3, 10), L(2, 0.78, 1e-3, 20)]
    sel = select(rows, Budget(), 0.01)
    assert sel.chosen.label == "Wq r=1 lr=0.003" and not sel.lr_dependent
    assert sel.lr_notes == [
        "learning rate: the choice trained at lr 0.003 (its preset keeps it); its rank holds at the other lrs tried",
        "  at lr 0.001 r=2 gains over r=1 (+0.0800, means) but not over the choice (-0.0300, means): speed at that "
        "lr, not a need for rank"]
    assert "its rank holds at the other lrs tried" in format_selection(sel)


def test_a_higher_rank_at_another_lr_that_beats_the_choice_outside_the_budget_makes_it_lr_dependent():
    rows = [L(1, 0.81, 3e-3, 10), L(2, 0.805, 3e-3, 20), L(1, 0.70, 1e-3, 10), L(2, 0.86, 1e-3, 20)]
    sel = select(rows, Budget(max_trainable_params=15), 0.01)
    assert sel.chosen.label == "Wq r=1 lr=0.003" and sel.lr_dependent
    assert sel.lr_notes[0].endswith("its rank depends on the learning rate")
    assert sel.lr_notes[1].startswith("  at lr 0.001 r=2 beats the choice (+0.0500, means) but is not eligible")
    # in budget, select simply chooses it: the rank is part of the answer at its own lr
    assert select(rows, Budget(), 0.01).chosen.label == "Wq r=2"


def test_no_lr_lines_when_every_row_trained_at_one_lr():
    assert select([L(1, 0.81, 1e-3, 10), L(2, 0.80, 1e-3, 20)], Budget(), 0.01).lr_notes == []
