"""The recipe as a pure function of the trial history: which points to run next, and why each ladder stopped.

A *point* is (target set, rank, seed, probe lr): :mod:`rank_sweep.study.history`. :func:`plan` reads only
the records in storage, so a resumed or shared study continues where the storage says it is::

    p = plan(records, spec)      # p.pending: points to run now; p.done; p.ladders

Per target set the ladder climbs ``spec.ranks``; a rung is decided when all its seeds are finished and is
scored by :func:`rank_sweep.results.records.statistic` (as the summary and ``rank-sweep-select``). A rung is
a *gain* when the lower bound of the paired interval of (rung - best lower rung) on the same dev examples
clears ``min_delta`` (``spec.compare``; without predictions: its mean beats the best by more than
``max(min_delta, noise_k * pooled seed std)``). ``patience`` rungs without a gain stop the ladder (plateau);
so do the last rank and the budget. A rung where no seed learned is no plateau signal; when it is the first,
``spec.lr_probe`` retries it at larger learning rates and the ladder climbs at the first that learns. A
ladder that never beats the head-only reference reports no plateau rank. A low plateau rank
(``<= extend_max_rank``) triggers the extension step: more matrices at that rank. When every ladder has
stopped, the allocation step (:mod:`rank_sweep.study.allocation`) spends one LoRA parameter budget on
other target sets (``p.allocation``).

With several workers, ``p.speculative`` lists the next ``spec.speculate`` rungs above a running rung: an
idle worker runs them ahead of the decision, which stays that of one worker; :func:`pointless` prunes them
once their ladder stopped below them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from rank_sweep.config.point import Point
from rank_sweep.results.paired import is_gain, not_worse
from rank_sweep.results.records import TrialRecord, statistic
from rank_sweep.study import allocation
from rank_sweep.study.history import History, screened_records
from rank_sweep.study.rungs import Calibration, calibrate, check_across_lr, probe, reference_row, rung
from rank_sweep.study.spec import LadderSpec, over_budget, over_memory, rung_seeds

__all__ = ["LadderSpec", "Plan", "Point", "Rung", "LadderState", "plan", "pointless", "over_budget",
           "rung_seeds", "walk_ladder"]


@dataclass
class Rung:
    r: int
    n: int
    mean: float | None
    std: float
    decision: str  # first | gain | no gain | not learning | failed | pruned
    detail: str
    diff: float | None = None  # mean(this rung) - mean(the best lower rung), on the same dev examples
    diff_ci_low: float | None = None
    diff_ci_high: float | None = None
    vs_r: int | None = None  # the best lower rung it was compared with
    lr: float | None = None  # the probe's learning rate it trained at; None: the configured one


@dataclass
class LadderState:
    targets: str
    rungs: list[Rung] = field(default_factory=list)
    finished: bool = False
    reason: str = "running"
    plateau_rank: int | None = None
    threshold: float = 0.0
    screen: LadderState | None = None  # search=nested: the ladder's rule on the screen's truncated ranks
    lr: float | None = None  # the learning rate it climbs at: None, the configured one; else the probe's that learned
    probes: list[str] = field(default_factory=list)  # what each learning-rate probe found
    calibration: Calibration | None = None  # what the lr bracket on the first rung found (search.lr_bracket)
    lr_verdict: str | None = None  # the plateau checked across the bracket's neighbouring lrs (search.lr_check)
    lr_dependent: bool = False  # ... a rank above the plateau beats it at a neighbouring lr (or a shared lr did not transfer)
    lr_from: str | None = None  # search.lr_shared: the ladder whose bracket chose the lr this one climbs at


@dataclass
class Plan:
    pending: list[Point]
    done: bool
    ladders: list[LadderState]
    extensions: list[str]
    speculative: list[Point] = field(default_factory=list)  # only for idle workers: see the module doc
    references: dict[str, str] = field(default_factory=dict)  # reference row -> what its lr bracket found
    allocation: list[allocation.Row] = field(default_factory=list)  # the allocation step's rows, once ladders stop


def _better(a: float, b: float, direction: str) -> float:
    """How much a beats b (positive = better) under the study direction."""
    return a - b if direction == "maximize" else b - a


def _pooled_std(rungs: list[tuple[int, float]]) -> float:
    """sqrt(sum((n_i-1) s_i^2) / sum(n_i-1)) over rungs with >= 2 seeds."""
    dof = sum(n - 1 for n, _ in rungs if n >= 2)
    if dof == 0:
        return 0.0
    return math.sqrt(sum((n - 1) * s * s for n, s in rungs if n >= 2) / dof)


def walk_ladder(targets: str, spec: LadderSpec, hist: History, pending: list[Point],
                speculative: list[Point] | None = None, head: list[TrialRecord] | None = None,
                lead: LadderState | None = None) -> LadderState:
    """One ladder's walk. ``lead``: with ``search.lr_shared``, the first ladder's state, whose bracket's lr this
    ladder climbs at (it waits while that bracket runs; it runs its own when that bracket kept no lr)."""
    state = LadderState(targets)
    best: float | None = None
    best_r: int | None = None
    stale = 0
    spread: list[tuple[int, float]] = []
    by_rank: dict[int, list[TrialRecord]] = {}
    measured: dict[int, float] = {}  # rank -> peak memory (MiB, the largest over its seeds): search.budget.max_memory_mb
    for r in spec.ranks:
        why = over_budget(spec, targets, r) or over_memory(spec, targets, r, measured)
        if why:
            state.finished, state.reason = True, f"budget: next rung {why}"
            break
        shared = _shared_lr(lead) if r == spec.ranks[0] and spec.lr_bracket and spec.base_lr else None
        if shared == "wait":
            break  # the first ladder's bracket is still running
        if shared:  # the first ladder's calibrated lr, every seed of the rung (the seed noise is measured there)
            state.lr, state.lr_from = lead.lr, lead.targets
            outcome = rung(spec, hist, targets, r, state.lr, pending, speculative)
        elif r == spec.ranks[0] and spec.lr_bracket and spec.base_lr:  # the ladder's learning rate first
            outcome = calibrate(spec, hist, targets, r, state, pending)
            if outcome is not None and state.calibration.seed_spread and state.lr is not None:
                spread.append(state.calibration.seed_spread)  # the seed noise measured at the configured lr
        else:
            outcome = rung(spec, hist, targets, r, state.lr, pending, speculative)
        if outcome is None:
            break
        done, kind = outcome
        if kind == "not learning" and r == spec.ranks[0] and spec.lr_probe and spec.base_lr:
            probed = probe(spec, hist, targets, r, state, pending)
            if probed is None:
                break  # a probe is running
            done, kind = probed
        peaks = [rec.peak_memory_mb for rec in done if rec.peak_memory_mb is not None]
        if peaks:
            measured[r] = max(peaks)
        if kind != "learning":
            state.rungs.append(Rung(r, 0, None, 0.0, kind, "no learning seed: not a plateau signal", lr=state.lr))
            continue
        stat = statistic(done, spec.confidence, spec.direction)  # as the summary and select: every seed counts
        mean, std, n = stat.mean, stat.std, stat.n
        shaky = (f"; r={r} is unstable at lr {done[0].lr:g}: {len(stat.unstable)} of {n} seeds collapsed"
                 if stat.unstable and done[0].lr is not None else
                 f"; unstable: {len(stat.unstable)} of {n} seeds collapsed" if stat.unstable else "")
        by_rank[r] = done
        spread.append((n, std))
        threshold = max(spec.min_delta, spec.noise_k * _pooled_std(spread))
        state.threshold = threshold
        if best is None:
            state.rungs.append(Rung(r, n, mean, std, "first", f"first learning rung: {mean:.4f}{shaky}", lr=state.lr))
            best, best_r = mean, r
            continue
        gain = _better(mean, best, spec.direction)
        diff = _compare(spec, by_rank[best_r], done, spread)
        if diff is not None:  # the paired interval decides: a gain when it clears min_delta
            won = is_gain(diff, spec.min_delta, spec.direction)
            detail = (f"mean {mean:.4f} vs best lower r={best_r} {best:.4f}: diff {diff.estimate:+.4f} "
                      f"[{diff.low:+.4f}, {diff.high:+.4f}] at {spec.confidence:.0%}, "
                      f"{'clears' if won else 'does not clear'} min_delta {spec.min_delta:g}")
        else:
            won = gain > threshold + 1e-12  # a float difference equal to the threshold is no gain
            detail = f"mean {mean:.4f} vs best lower {best:.4f}: gain {gain:+.4f}, threshold {threshold:.4f}"
        extra = {} if diff is None else {"diff": diff.estimate, "diff_ci_low": diff.low, "diff_ci_high": diff.high}
        stale = 0 if won else stale + 1
        state.rungs.append(Rung(r, n, mean, std, "gain" if won else "no gain", detail + shaky, vs_r=best_r,
                                lr=state.lr, **({"diff": mean - best} | extra)))
        if gain > 0:
            best, best_r = mean, r
        if stale >= spec.patience and not spec.grid:
            state.finished = True
            rule = (f"min_delta {spec.min_delta:g} at {spec.confidence:.0%}" if diff is not None
                    else f"{threshold:.4f}")
            state.reason = f"plateau: {stale} rung(s) without a gain above {rule} (last r={r})"
            break
    else:
        state.finished = True
        state.reason = f"max_rank reached (r={spec.ranks[-1]})"
    _plateau(state, spec, best, best_r, by_rank, spread)
    if state.finished and state.plateau_rank is not None and head:
        _against_the_head(state, spec, head, by_rank, spread)
    if state.finished and state.plateau_rank is not None and spec.lr_check:
        if state.calibration is not None and state.calibration.kept is not None:
            check_across_lr(spec, hist, targets, state, by_rank, _pooled_std(spread) or None, pending,
                            state.calibration, state.calibration.kept)
        elif state.lr_from is not None and state.lr == lead.lr:  # (not when a probe moved it)
            check_across_lr(spec, hist, targets, state, by_rank, _pooled_std(spread) or None, pending,
                            lead.calibration, lead.calibration.kept, shared=lead.targets)
    return state


def _shared_lr(lead: LadderState | None) -> str | None:
    """With ``search.lr_shared``: "wait" while the first ladder's bracket runs, "use" once it kept an lr, None when
    this ladder runs its own bracket (it is the first, or the first's bracket kept none or never ran)."""
    if lead is None or lead.calibration is None:
        return None
    if lead.calibration.kept is not None:
        return "use"
    return None if lead.calibration.why else "wait"


def walk_nested(targets: str, spec: LadderSpec, hist: History, pending: list[Point],
                speculative: list[Point] | None = None, head: list[TrialRecord] | None = None,
                lead: LadderState | None = None) -> LadderState:
    """search=nested: one screen at the top rank, the ladder's rule on its truncated ranks, then ordinary trials
    from the screened plateau rank up: its rung and the one above confirm it, or the ladder climbs on from there
    (the ordinary rule decides). A screen that finds no plateau rank hands over to the ordinary ladder."""
    point = Point(targets, spec.ranks[-1], spec.seeds[0], kind="screen")
    screen = hist.completed(point)
    if screen is None:
        if hist.status(point) == "pending":
            pending.append(point)
        state = LadderState(targets)
        if hist.status(point) == "failed":  # the screen cannot run: the ordinary ladder instead
            return walk_ladder(targets, spec, hist, pending, speculative, head, lead)
        return state
    quick = replace(spec, seeds=spec.seeds[:1], noise_seeds=[], lr_probe=[], lr_bracket=[], lr_check="",
                    nested=False)
    as_trials = [replace(x, tuned=()) for x in screened_records(screen)]  # judged as trials at those ranks would be
    screened = walk_ladder(targets, quick, History(as_trials, spec.max_retries), [], None, head)
    start = screened.plateau_rank
    state = walk_ladder(targets, spec if start is None else replace(spec, ranks=[r for r in spec.ranks if r >= start],
                                                                      noise_seeds=[]),
                        hist, pending, speculative, head, lead)
    state.screen = screened
    return state


def _against_the_head(state: LadderState, spec: LadderSpec, head: list[TrialRecord], by_rank, spread) -> None:
    """A ladder none of whose rungs beats the head alone (with confidence, on the same dev examples) found no
    rank: its adapters add nothing yet, so it reports no plateau rank."""
    diffs = {r: _compare(spec, head, recs, spread) for r, recs in by_rank.items()}
    if any(d is None for d in diffs.values()):
        return  # predictions missing: no verdict against the head
    if not any(is_gain(d, 0.0, spec.direction) for d in diffs.values()):
        r, d = max(diffs.items(), key=lambda kv: kv[1].estimate * (1 if spec.direction == "maximize" else -1))
        state.plateau_rank = None
        state.reason = (f"the adapters add nothing yet: no rung beats the head alone (best r={r}: "
                        f"{d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}] at {spec.confidence:.0%}); train longer "
                        f"or raise the lr before comparing ranks")


def _compare(spec: LadderSpec, a: list[TrialRecord], b: list[TrialRecord], spread):
    if spec.compare is None:
        return None
    dof = sum(n - 1 for n, _ in spread if n >= 2)
    return spec.compare(a, b, _pooled_std(spread) if dof else None)


def _plateau(state: LadderState, spec: LadderSpec, best, best_r, by_rank, spread) -> None:
    """The plateau rank: the lowest learning rank not shown to be worse than the best by more than min_delta
    (with paired intervals), or within the threshold of the best mean (without)."""
    learned = [g for g in state.rungs if g.mean is not None]
    if state.finished and not learned and any(g.decision != "failed" for g in state.rungs):
        state.reason = (
            "not learning: no rung beat the trivial baseline; training is too short or the learning rate "
            "too low for this target set (raise trainer.epochs or trainer.lr), so no plateau rank is reported"
            + (f"; lr probes: {'; '.join(state.probes)}" if state.probes else "")
        )
        return
    if not learned or best is None:
        return
    near = []
    for g in learned:
        diff = None if g.r == best_r else _compare(spec, by_rank[best_r], by_rank[g.r], spread)
        if diff is not None:  # g - best: g is "as good" unless surely worse by more than min_delta
            if not_worse(diff, spec.min_delta, spec.direction):
                near.append(g.r)
        elif _better(g.mean, best, spec.direction) >= -state.threshold - 1e-12:
            near.append(g.r)
    state.plateau_rank = min(near)


def plan(records: list[TrialRecord], spec: LadderSpec) -> Plan:
    hist = History([r for r in records if r.targets], spec.max_retries)
    pending: list[Point] = []
    speculative: list[Point] = []
    head = None
    if spec.head_reference:  # first: it is the cheapest trial, and every ladder's verdict needs it
        point = Point.head(spec.seeds[0])
        if hist.status(point) == "pending":
            pending.append(point)
        done = hist.completed(point)
        head = [done] if done is not None else None
    walk = walk_nested if spec.nested else walk_ladder
    ladders: list[LadderState] = []
    for ts in spec.target_sets:  # with lr_shared, the ladders after the first climb at the first's calibrated lr
        ladders.append(walk(ts, spec, hist, pending, speculative, head, _lead(spec, ladders)))
    extensions: list[str] = []
    if spec.grid:  # every rank of every target set, and of the extension sets only when extend is on
        sets = spec.target_sets + [s for s in spec.extend_sets if spec.extend and s not in spec.target_sets]
        pending = [p for p in pending if p.method == "head"] + [
            Point(ts, r, s) for ts in sets for r in spec.ranks for s in spec.seeds
            if not over_budget(spec, ts, r) and hist.status(Point(ts, r, s)) == "pending"]
        ladders = [walk_ladder(ts, spec, hist, []) for ts in sets]
        speculative = []
    elif spec.extend:
        for lad in ladders:
            if lad.finished and lad.plateau_rank is not None and lad.plateau_rank <= spec.extend_max_rank:
                for ext in spec.extend_sets:
                    if ext in spec.target_sets or over_budget(spec, ext, lad.plateau_rank):
                        continue
                    note = (f"{ext} at r={lad.plateau_rank} ({lad.targets} was already within the threshold of its best "
                            f"at r={lad.plateau_rank})")
                    if note not in extensions:
                        extensions.append(note)
                    for s in spec.seeds:
                        p = Point(ext, lad.plateau_rank, s, lad.lr)
                        if hist.status(p) == "pending" and p not in pending:
                            pending.append(p)
    rows = allocation.rows(spec, ladders, hist, pending)  # one budget over other target sets: after the ladders
    references = {}  # reference rows after the ladders: one trial per seed, at the row's own calibrated lr
    for method, size in [("full", 0)] * spec.include_full + spec.references:
        lr = spec.reference_lr.get((method, size))  # its own lr where given (search.reference_methods), else None
        points, references[f"{method}" + (f" {size}" if size else "")] = reference_row(spec, hist, method, size, lr,
                                                                                         pending)
        pending.extend(p for p in points if hist.status(p) == "pending" and p not in pending)
    running = any(s == "RUNNING" for recs in hist.by_point.values() for s in (r.state for r in recs))
    done = not pending and not running and all(lad.finished for lad in ladders)
    return Plan(pending, done, ladders, extensions, speculative, {k: v for k, v in references.items() if v}, rows)


def _lead(spec: LadderSpec, walked: list[LadderState]) -> LadderState | None:
    """The ladder whose calibrated lr the next ladder climbs at (``search.lr_shared``), or None."""
    return walked[0] if spec.lr_shared and spec.lr_bracket and walked else None


def pointless(records: list[TrialRecord], spec: LadderSpec, point: Point) -> str | None:
    """Why running ``point`` no longer helps the study (its ladder stopped below its rung), or None.

    A speculative rung becomes pointless when the rung under it ends its ladder, or when its ladder learned at
    another lr (a probe's); other points of a ladder that is still climbing, of the grid, of an extension or
    of full fine-tuning are never pointless."""
    if spec.grid or point.method != "lora" or point.targets not in spec.target_sets or point.screened:
        return None
    hist = History([r for r in records if r.targets], spec.max_retries)
    walk = walk_nested if spec.nested else walk_ladder
    first = [walk(spec.target_sets[0], spec, hist, [])] if point.targets != spec.target_sets[0] else []
    state = walk(point.targets, spec, hist, [], lead=_lead(spec, first))
    if state.finished and point in allocation.points(plan(records, spec).allocation, spec.seeds):
        return None  # an allocation row of this set, not a rung of its ladder
    if point.lr != state.lr and point.r != spec.ranks[0] and any(g.mean is not None for g in state.rungs):
        return f"speculative rung no longer needed: {point.targets} climbs at lr {state.lr or spec.base_lr:g}"
    if not state.finished:
        return None
    decided = max((g.r for g in state.rungs), default=0)
    if point.r <= decided:
        return None
    return f"speculative rung no longer needed: {point.targets} stopped below r={point.r} ({state.reason})"
