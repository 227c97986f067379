"""The recipe as a pure function of the trial history: which points to run next,
and why each ladder stopped.

A *point* is (target set, rank, seed). :func:`plan` reads only the records of
the trials in storage (never an object's memory), so a resumed or shared study
continues exactly where the storage says it is:

    p = plan(records, spec)      # p.pending: points to run now; p.done; p.ladders

Per target set the ladder climbs ``spec.ranks``. A rung is decided when all its
seeds are finished. Its score is :func:`rank_sweep.results.records.statistic`
of its seeds, the statistic the summary and ``rank-sweep-select`` report: a
seed that did not learn counts in the mean. A rung none of whose seeds learned
(or that was pruned, or failed) is neither a gain nor a plateau signal. A
learning rung is a *gain* when its mean beats the best lower learning rung by more than
``max(min_delta, noise_k * pooled seed std)``; ``patience`` rungs in a row
without a gain stop the ladder (plateau). Ladders also stop at the last rank
or when the next rung would break the parameter budget. When a ladder's
plateau rank is low (``<= extend_max_rank``), the extension step adapts more
matrices at that rank.

With several workers, ``p.speculative`` lists the next ``spec.speculate`` rungs
of every ladder whose current rung is still running: an idle worker runs them
ahead of the decision. A speculative result only counts once the ladder
reaches its rung, so the decisions are those of a single worker; when the
ladder stops below it, :func:`pointless` says so and the trial is pruned.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from rank_sweep.results.paired import is_gain
from rank_sweep.results.records import FULL, HEAD, TrialRecord, statistic


@dataclass(frozen=True)
class Point:
    targets: str  # roles joined by commas, or "full"
    r: int
    seed: int

    def __str__(self) -> str:
        return f"{self.targets} r={self.r} seed={self.seed}"


@dataclass
class LadderSpec:
    target_sets: list[str]
    ranks: list[int]
    seeds: list[int]
    patience: int = 1
    min_delta: float = 0.005
    noise_k: float = 1.0
    direction: str = "maximize"
    extend: bool = True
    extend_sets: list[str] = field(default_factory=list)
    extend_max_rank: int = 4
    include_full: bool = False
    head_reference: bool = False  # one trial of the head alone (seed spec.seeds[0]): what the adapters must beat
    max_retries: int = 2
    # (targets, r) -> (lora_params, trainable_params); None: no parameter budget
    cost: Callable[[str, int], tuple[int, int]] | None = None
    max_lora_params: int | None = None
    max_trainable_params: int | None = None
    rank_limit: int | None = None  # search.budget.max_rank
    grid: bool = False
    tuned: bool = False  # TPE: the sampler draws points (and other values); the plan neither proposes nor judges
    speculate: int = 1  # rungs above a running rung that idle workers may start ahead of its decision
    noise_seeds: list[int] = field(default_factory=list)  # extra seeds on each ladder's first rung (seed noise)
    # (records of a, records of b, reused seed std) -> Interval of mean score(b) - mean score(a) on the same dev
    # examples, or None when their predictions are not at hand: then the rule compares means (noise_k, min_delta)
    compare: Callable | None = None
    confidence: float = 0.95


def rung_seeds(spec: LadderSpec, r: int) -> list[int]:
    """The seeds a rung runs: the first rung of a ladder adds the noise seeds (it is the cheapest)."""
    return spec.seeds + spec.noise_seeds if r == spec.ranks[0] else list(spec.seeds)


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


@dataclass
class LadderState:
    targets: str
    rungs: list[Rung] = field(default_factory=list)
    finished: bool = False
    reason: str = "running"
    plateau_rank: int | None = None
    threshold: float = 0.0


@dataclass
class Plan:
    pending: list[Point]
    done: bool
    ladders: list[LadderState]
    extensions: list[str]
    speculative: list[Point] = field(default_factory=list)  # only for idle workers: see the module doc


def _better(a: float, b: float, direction: str) -> float:
    """How much a beats b (positive = better) under the study direction."""
    return a - b if direction == "maximize" else b - a


def over_budget(spec: LadderSpec, targets: str, r: int) -> str | None:
    if targets in (FULL, HEAD):
        return None
    if spec.rank_limit is not None and r > spec.rank_limit:
        return f"r={r} > budget max_rank {spec.rank_limit}"
    if spec.cost is None:
        return None
    lora_params, trainable = spec.cost(targets, r)
    if spec.max_lora_params is not None and lora_params > spec.max_lora_params:
        return f"r={r} needs {lora_params:,} LoRA params > budget {spec.max_lora_params:,}"
    if spec.max_trainable_params is not None and trainable > spec.max_trainable_params:
        return f"r={r} needs {trainable:,} trainable params > budget {spec.max_trainable_params:,}"
    return None


class _History:
    """Records indexed by point: what finished, what failed, what runs now."""

    def __init__(self, records: list[TrialRecord], max_retries: int):
        self.by_point: dict[Point, list[TrialRecord]] = {}
        for rec in records:
            self.by_point.setdefault(Point(rec.targets, rec.r, rec.seed), []).append(rec)
        self.max_retries = max_retries

    def status(self, p: Point) -> str:
        recs = self.by_point.get(p, [])
        states = [r.state for r in recs]
        if "COMPLETE" in states:
            return "complete"
        if "PRUNED" in states:
            return "pruned"
        if "RUNNING" in states:
            return "running"
        if states.count("FAIL") > self.max_retries:
            return "failed"
        return "pending"

    def completed(self, p: Point) -> TrialRecord | None:
        """The point's first usable record (COMPLETE, finite score), or None."""
        return next((rec for rec in self.by_point.get(p, []) if rec.usable), None)


def _pooled_std(rungs: list[tuple[int, float]]) -> float:
    """sqrt(sum((n_i-1) s_i^2) / sum(n_i-1)) over rungs with >= 2 seeds."""
    dof = sum(n - 1 for n, _ in rungs if n >= 2)
    if dof == 0:
        return 0.0
    return math.sqrt(sum((n - 1) * s * s for n, s in rungs if n >= 2) / dof)


def walk_ladder(targets: str, spec: LadderSpec, hist: _History, pending: list[Point],
                speculative: list[Point] | None = None, head: list[TrialRecord] | None = None) -> LadderState:
    state = LadderState(targets)
    best: float | None = None
    best_r: int | None = None
    stale = 0
    spread: list[tuple[int, float]] = []
    by_rank: dict[int, list[TrialRecord]] = {}
    for r in spec.ranks:
        why = over_budget(spec, targets, r)
        if why:
            state.finished, state.reason = True, f"budget: next rung {why}"
            break
        points = [Point(targets, r, s) for s in rung_seeds(spec, r)]
        statuses = [hist.status(p) for p in points]
        todo = [p for p, s in zip(points, statuses, strict=False) if s in ("pending", "running")]
        if todo:
            pending.extend(p for p in todo if hist.status(p) == "pending")
            if speculative is not None and "running" in statuses:
                above = [x for x in spec.ranks if x > r][:spec.speculate]
                for x in above:
                    if over_budget(spec, targets, x):
                        break
                    speculative.extend(q for q in (Point(targets, x, s) for s in rung_seeds(spec, x))
                                       if hist.status(q) == "pending")
            break
        done = [rec for rec in (hist.completed(p) for p in points) if rec is not None]
        if not done or statistic(done, spec.confidence, spec.direction).not_learning:
            kind = "failed" if all(s == "failed" for s in statuses) else (
                "pruned" if all(s == "pruned" for s in statuses) else "not learning")
            state.rungs.append(Rung(r, 0, None, 0.0, kind, "no learning seed: not a plateau signal"))
            continue
        rung = statistic(done, spec.confidence, spec.direction)  # as the summary and select: every seed counts
        mean, std, n = rung.mean, rung.std, rung.n
        shaky = (f"; r={r} is unstable at lr {done[0].lr:g}: {len(rung.unstable)} of {n} seeds collapsed"
                 if rung.unstable and done[0].lr is not None else
                 f"; unstable: {len(rung.unstable)} of {n} seeds collapsed" if rung.unstable else "")
        by_rank[r] = done
        spread.append((n, std))
        threshold = max(spec.min_delta, spec.noise_k * _pooled_std(spread))
        state.threshold = threshold
        if best is None:
            state.rungs.append(Rung(r, n, mean, std, "first", f"first learning rung: {mean:.4f}{shaky}"))
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
                                **({"diff": mean - best} | extra)))
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
        )
        return
    if not learned or best is None:
        return
    near = []
    for g in learned:
        diff = None if g.r == best_r else _compare(spec, by_rank[best_r], by_rank[g.r], spread)
        if diff is not None:  # g - best: g is "as good" unless surely worse by more than min_delta
            worse = diff.high < -spec.min_delta if spec.direction == "maximize" else diff.low > spec.min_delta
            if not worse:
                near.append(g.r)
        elif _better(g.mean, best, spec.direction) >= -state.threshold - 1e-12:
            near.append(g.r)
    state.plateau_rank = min(near)


def plan(records: list[TrialRecord], spec: LadderSpec) -> Plan:
    hist = _History([r for r in records if r.targets], spec.max_retries)
    pending: list[Point] = []
    speculative: list[Point] = []
    head = None
    if spec.head_reference:  # first: it is the cheapest trial, and every ladder's verdict needs it
        point = Point(HEAD, 0, spec.seeds[0])
        if hist.status(point) == "pending":
            pending.append(point)
        done = hist.completed(point)
        head = [done] if done is not None else None
    ladders = [walk_ladder(ts, spec, hist, pending, speculative, head) for ts in spec.target_sets]
    extensions: list[str] = []
    if spec.grid:  # every rank of every target set, and of the extension sets only when extend is on
        sets = spec.target_sets + [s for s in spec.extend_sets if spec.extend and s not in spec.target_sets]
        pending = [p for p in pending if p.targets == HEAD] + [
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
                        p = Point(ext, lad.plateau_rank, s)
                        if hist.status(p) == "pending" and p not in pending:
                            pending.append(p)
    if spec.include_full:
        pending.extend(p for p in (Point(FULL, 0, s) for s in spec.seeds) if hist.status(p) == "pending")
    running = any(s == "RUNNING" for recs in hist.by_point.values() for s in (r.state for r in recs))
    done = not pending and not running and all(lad.finished for lad in ladders)
    return Plan(pending, done, ladders, extensions, speculative)


def pointless(records: list[TrialRecord], spec: LadderSpec, point: Point) -> str | None:
    """Why running ``point`` no longer helps the study (its ladder stopped below its rung), or None.

    A speculative rung becomes pointless when the rung under it ends its ladder; points of a ladder that
    is still climbing, of the grid, of an extension or of full fine-tuning are never pointless."""
    if spec.grid or point.targets not in spec.target_sets:
        return None
    hist = _History([r for r in records if r.targets], spec.max_retries)
    state = walk_ladder(point.targets, spec, hist, [])
    if not state.finished:
        return None
    decided = max((g.r for g in state.rungs), default=0)
    if point.r <= decided:
        return None
    return f"speculative rung no longer needed: {point.targets} stopped below r={point.r} ({state.reason})"
