"""The allocation step on hand-built trial histories: the rank-matching rule, the rows the plan derives once the
ladders stop, their seeds and learning rate, the table the summary prints, and select choosing among its rows."""

from __future__ import annotations

import pytest

from rank_sweep.results.paired import Interval
from rank_sweep.results.records import TrialRecord, aggregate
from rank_sweep.results.selection import select
from rank_sweep.study import allocation
from rank_sweep.study.plan import LadderSpec, Point, plan, pointless

QV, ALL4, MLP = "Wq,Wv", "Wq,Wk,Wv,Wo", "Wup,Wdown"
# MiniLM-L6's shapes: 6 layers; attention 384 x 384, Wup 384 -> 1536, Wdown 1536 -> 384
PER_RANK = {QV: 6 * 2 * 768, ALL4: 6 * 4 * 768, MLP: 6 * 2 * 1920, "Wq": 6 * 768}


def cost(targets: str, r: int) -> tuple[int, int]:
    return PER_RANK[targets] * r, PER_RANK[targets] * r + 770


def spec(**kw) -> LadderSpec:
    base = dict(target_sets=["Wq", QV], ranks=[1, 2, 4, 8], seeds=[0], extend=False, cost=cost,
                allocation_sets=[QV, ALL4, MLP], allocation_budgets=["plateau"], labels={MLP: "mlp", ALL4: "attention"})
    return LadderSpec(**{**base, **kw})


def rec(i, targets, r, seed=0, score=0.8, lr=None, state="COMPLETE", not_learning=False) -> TrialRecord:
    return TrialRecord(number=i, targets=targets, r=r, seed=seed, state=state, score=score, not_learning=not_learning,
                       lora_params=cost(targets, r)[0], trainable_params=cost(targets, r)[1], train_seconds=1.0,
                       tuned=() if lr is None else (("lr", lr),))


def ladders(wq=(0.70, 0.70), qv=(0.80, 0.80), lr=None, seeds=(0,)) -> list[TrialRecord]:
    """Both ladders stop at r=2 (no gain), plateau r=1."""
    rungs = [("Wq", 1, wq[0]), ("Wq", 2, wq[1]), (QV, 1, qv[0]), (QV, 2, qv[1])]
    return [rec(10 * s + i, t, r, seed=s, score=x, lr=lr) for s in seeds for i, (t, r, x) in enumerate(rungs)]


@pytest.mark.parametrize("per_rank, budget, r", [
    (23_040, 36_864, 2),     # 46,080 is 9,216 over, 23,040 is 13,824 under
    (18_432, 36_864, 2),     # exact
    (23_040, 9_216, 1),      # r >= 1 even when r=1 costs more than the budget
    (10, 25, 2),             # a tie (20 and 30 are both 5 away) goes to the lower rank
    (10, 26, 3),
    (9_216, 92_160, 10),
])
def test_closest_rank(per_rank, budget, r):
    assert allocation.closest_rank(per_rank, budget) == r


def test_no_rows_while_a_ladder_climbs():
    p = plan([rec(0, "Wq", 1)], spec())
    assert p.allocation == [] and all(pt.targets in ("Wq", QV) for pt in p.pending)


def test_rows_at_the_best_plateau_after_the_ladders():
    p = plan(ladders(seeds=(0, 1)), spec(seeds=[0, 1]))
    # best plateau: Wq,Wv r=1 (0.80 > 0.70): 9,216 LoRA params
    assert [(row.targets, row.r, row.lora_params) for row in p.allocation] == [
        (QV, 1, 9_216), (ALL4, 1, 18_432), (MLP, 1, 23_040)]
    assert all(row.budget == 9_216 and row.lr is None for row in p.allocation)
    # the ladders' seeds; Wq,Wv r=1 is the ladder's own rung, so it is not run again
    assert p.pending == [Point(ALL4, 1, 0), Point(ALL4, 1, 1), Point(MLP, 1, 0), Point(MLP, 1, 1)]
    assert not p.done


def test_explicit_budgets_and_the_plateau():
    p = plan(ladders(), spec(allocation_budgets=["plateau", 36_864]))
    at = [(row.targets, row.r, row.lora_params) for row in p.allocation if row.budget == 36_864]
    assert at == [(QV, 4, 36_864), (ALL4, 2, 36_864), (MLP, 2, 46_080)]
    assert Point(QV, 4, 0) in p.pending and Point(MLP, 2, 0) in p.pending


def test_rows_train_at_the_lr_the_best_ladder_climbed_at():
    unlearned = [rec(20, "Wq", 1, score=0.5, not_learning=True), rec(21, QV, 1, score=0.5, not_learning=True)]
    p = plan(unlearned + ladders(lr=3e-3), spec(base_lr=1e-3, lr_probe=[3.0]))
    assert {row.lr for row in p.allocation} == {3e-3}
    assert Point(MLP, 1, 0, 3e-3) in p.pending


def test_a_row_over_the_study_budget_is_not_trained():
    p = plan(ladders(), spec(max_lora_params=20_000))
    skipped = [row for row in p.allocation if row.skipped]
    assert [row.targets for row in skipped] == [MLP] and Point(MLP, 1, 0) not in p.pending


def test_done_when_the_rows_ran_and_no_plateau_no_plateau_budget():
    history = ladders() + [rec(4, ALL4, 1, score=0.81), rec(5, MLP, 1, score=0.79)]
    assert plan(history, spec()).done
    assert plan(history, spec(allocation_sets=[])).allocation == []
    assert plan(history, spec(grid=True)).allocation == []


def test_an_allocation_row_of_a_ladder_set_is_not_pruned_as_a_speculative_rung():
    s = spec(allocation_budgets=[36_864])
    assert pointless(ladders(), s, Point(QV, 4, 0)) is None  # Wq,Wv stopped at r=2, but r=4 is its row
    assert pointless(ladders(), s, Point(QV, 8, 0)) is not None


def test_candidates_cover_every_row_the_plan_can_ask_for():
    s = spec(allocation_budgets=["plateau", 36_864])
    cands = allocation.candidates(s)
    for wq, qv in ((0.7, 0.8), (0.9, 0.8)):
        for row in plan(ladders(wq=(wq, wq), qv=(qv, qv)), s).allocation:
            assert (row.targets, row.r) in cands


def _compare(a, b, _std):
    mean = lambda recs: sum(x.score for x in recs) / len(recs)  # noqa: E731
    d = mean(b) - mean(a)
    return Interval(d, d - 0.01, d + 0.01)


def test_the_table_rows_with_their_difference_to_the_best():
    history = ladders() + [rec(4, ALL4, 1, score=0.81), rec(5, MLP, 1, score=0.83)]
    s = spec(compare=_compare, base_lr=1e-3)
    lines, rows = allocation.report(plan(history, s).allocation, history, s)
    text = "\n".join(lines)
    assert "allocation at 9,216 LoRA params (the plateau of Wq,Wv r=1" in text
    assert "| mlp (Wup,Wdown) | 1 | 23,040 | +150.0% | 0.001 | 0.8300 |" in text
    assert "| attention (Wq,Wk,Wv,Wo) | 1 | 18,432 | +100.0% | 0.001 | 0.8100 |" in text and "best" in text
    assert "shown worse (95% paired): Wq,Wv r=1, attention (Wq,Wk,Wv,Wo) r=1" in text
    by = {row["targets"]: row for row in rows}
    assert by[QV]["diff"] == pytest.approx(-0.03) and by[MLP]["diff"] is None and by[MLP]["lr"] == 1e-3


def test_select_chooses_among_the_allocation_rows():
    """Allocation rows are ordinary configurations: select weighs them as any other."""
    history = ladders(wq=(0.6, 0.6), qv=(0.7, 0.7)) + [rec(4, ALL4, 1, score=0.71), rec(5, MLP, 1, score=0.90)]
    chosen = select(aggregate(history), tolerance=0.005).chosen
    assert (chosen.targets, chosen.r) == (MLP, 1)


def test_one_seed_rows_reuse_the_pooled_seed_std():
    history = [rec(0, QV, 1, seed=0, score=0.80), rec(1, QV, 1, seed=1, score=0.82), rec(2, QV, 1, seed=2, score=0.84),
               rec(3, MLP, 1, seed=0, score=0.9), rec(4, "Wq", 1, seed=0, score=0.7), rec(5, "Wq", 1, seed=1, score=0.7)]
    # Wq,Wv: std 0.02 over 2 dof; Wq: std 0 over 1 dof -> sqrt(2 * 0.0004 / 3)
    assert allocation.seed_std(history) == pytest.approx((2 * 0.0004 / 3) ** 0.5)
    assert allocation.seed_std(history[3:4]) is None
