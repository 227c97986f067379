"""The nested-rank screen (search=nested) measured against separately trained ranks: used by the benchmark
(``experiments/benchmarks/bench.py``) and by ``experiments/nested_rank/compare.py``.

    res = screen_vs_separate(screened, separate, compare)    # per target set: curve agreement
    res = nested_vs_grid(ncfg, grid, ladder_spec, ladder_steps, cache, compare, tolerance)   # a whole study
"""

from __future__ import annotations

import copy
import statistics

from scipy.stats import spearmanr

from rank_sweep.config import Budget
from rank_sweep.errors import RankSweepError
from rank_sweep.results.readers import records_from_study
from rank_sweep.results.selection import select
from rank_sweep.study.history import screened_records
from rank_sweep.study.plan import plan


def screen_vs_separate(screened: dict[int, object], separate: dict[int, list], compare) -> dict:
    """One target set: the screen's truncated ranks (rank -> record) beside the separately trained ones (rank ->
    records, one per seed). Spearman correlation of the two curves over the ranks, and per rank the paired
    interval of screened - separate on the same dev examples (seed noise of the separate side included)."""
    ranks = sorted(set(screened) & set(separate))
    sep_means = [statistics.fmean(r.score for r in separate[b]) for b in ranks]
    rho = float(spearmanr([screened[b].score for b in ranks], sep_means).statistic) if len(ranks) > 2 else None
    rows, worst = [], None
    for b, mean in zip(ranks, sep_means, strict=True):
        d = compare(separate[b], [screened[b]])
        rows.append({"r": b, "screened": round(screened[b].score, 4), "separate": round(mean, 4),
                     "n_separate": len(separate[b]),
                     "diff": None if d is None else [round(d.estimate, 4), round(d.low, 4), round(d.high, 4)]})
        if d is not None and (worst is None or abs(d.estimate) > abs(worst[0])):
            worst = [round(d.estimate, 4), round(d.low, 4), round(d.high, 4), b]
    return {"ranks": ranks, "spearman": rho, "max_abs_diff": worst, "rows": rows}


def plateaus_agree(screened: int | None, ladder: int | None, separate: dict[int, list], compare) -> tuple[bool, list | None]:
    """Whether the screen's plateau rank is the ordinary ladder's, or one the separately trained ranks do not tell
    apart from it (their paired interval at the two ranks holds 0); with that interval, [estimate, low, high]."""
    if screened == ladder:
        return True, None
    if screened not in separate or ladder not in separate:
        return False, None
    d = compare(separate[ladder], separate[screened])
    if d is None:
        return False, None
    return d.low <= 0 <= d.high, [d.estimate, d.low, d.high]


def train_steps(records, steps_of) -> int:
    return sum(steps_of(r) for r in records)


def nested_vs_grid(ncfg, grid: list, ladder_spec, ladder_visited: list, ladder_steps: int, per_trial: float,
                   cache, compare, tolerance: float) -> dict:
    """Run ``ncfg`` (search=nested) as a real study; compare its verdict with the ladder replayed on ``grid``
    (one seed, the same points) and with the grid itself."""
    from rank_sweep.study.run import build_spec, run_study

    study = run_study(ncfg, cache=cache)
    steps = {t.number: t.user_attrs.get("train_steps", 0) for t in study.trials}
    recs = [r for r in records_from_study(study) if r.usable]
    nspec = build_spec(ncfg, compare=compare)
    nplan = plan(recs, nspec)
    lplan = plan(ladder_visited, ladder_spec)
    out: dict = {"nested_trials": len(recs), "nested_train_steps": sum(steps.values())}
    out["nested_vs_ladder_compute"] = out["nested_train_steps"] / ladder_steps
    grid_sets = {r.targets for r in grid}
    out["verdict_vs_grid3_compute"] = out["nested_train_steps"] / (3 * len(grid) * per_trial)
    out["verdict_vs_grid3_is"] = (f"counted: 3 seeds x {len(grid)} grid points ({len(grid_sets)} target sets) x "
                                  f"{per_trial:.0f} steps")
    agree, curves, plateaus = [], {}, {}
    for nl, ll in zip(nplan.ladders, lplan.ladders, strict=True):
        screen = next(r for r in recs if r.nested and r.targets == nl.targets)
        screened = {r.r: r for r in screened_records(screen)}
        separate = {g.r: [g] for g in grid if g.targets == nl.targets}
        curves[nl.targets] = screen_vs_separate(screened, separate, compare)
        plateaus[nl.targets] = {"nested": nl.plateau_rank, "screened": nl.screen.plateau_rank if nl.screen else None,
                                "ladder": ll.plateau_rank}
        same, gap = plateaus_agree(nl.plateau_rank, ll.plateau_rank, separate, compare)  # grid scores at the two
        if nl.plateau_rank != ll.plateau_rank and nl.plateau_rank in separate and ll.plateau_rank in separate:
            plateaus[nl.targets]["grid_diff_at_the_two_ranks"] = gap
        agree.append(same)
    out["nested_plateau_agreement"] = sum(agree) / len(agree)
    rhos = [c["spearman"] for c in curves.values() if c["spearman"] is not None]
    out["nested_curve_rank_correlation"] = statistics.fmean(rhos) if rhos else None
    out["nested_curves"], out["nested_plateaus"] = curves, plateaus
    by_number = {r.number: r for r in recs}
    best = max(grid, key=lambda r: r.score)
    try:
        chosen = select(recs, Budget(), tolerance=tolerance,
                        compare=lambda a, b: compare([by_number[n] for n in a.numbers],
                                                     [by_number[n] for n in b.numbers])).chosen
        gap = compare([by_number[n] for n in chosen.numbers], [best])
        out["nested_chosen"] = chosen.label
        if gap is not None:
            out["verdict_vs_grid_best_gap_ci"] = [round(gap.low, 4), round(gap.high, 4)]
            out["verdict_agrees_with_grid3"] = gap.low <= tolerance  # the grid's best is not shown better
    except RankSweepError as e:
        out["nested_chosen"] = f"none: {e}"
    return out


def nested_cfg(lcfg, study_name: str):
    ncfg = copy.deepcopy(lcfg)
    ncfg.search.strategy, ncfg.search.study_name = "nested", study_name
    return ncfg
