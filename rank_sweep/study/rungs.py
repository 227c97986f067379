"""One rung of a ladder at one learning rate, and the learning rate a ladder climbs at: the bracket and the probe.

Before a ladder climbs, its first (cheapest) rung trains a bracket of learning rates around ``trainer.lr``
(``search.lr_bracket``, multiples; the configured one with every seed of the rung, the others with the first seed).
The best by the paired statistic on the same dev examples becomes the ladder's learning rate; a tie (the best not
shown better than the configured one by more than ``min_delta``) keeps the configured one; a best at the bracket's
edge is tried one step further that way, once. When nothing in the bracket learns, ``search.lr_probe`` retries the
rung at larger multiples in turn (the bracket's own points are not trained twice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rank_sweep.config.point import Point
from rank_sweep.results.paired import is_gain
from rank_sweep.results.records import TrialRecord, statistic
from rank_sweep.study.history import History
from rank_sweep.study.spec import LadderSpec, over_budget, rung_seeds


@dataclass
class Calibration:
    """What the bracket found: (multiple, lr, mean, interval or None, kind) per lr tried, the one kept and why."""

    tried: list[tuple[float, float, float | None, tuple[float, float] | None, str]] = field(default_factory=list)
    kept: float | None = None  # the multiple the ladder climbs at
    why: str = ""
    seed_spread: tuple[int, float] | None = None  # (seeds, std) of the configured lr's rung: the seed noise


def rung(spec: LadderSpec, hist: History, targets: str, r: int, lr: float | None, pending: list[Point],
         speculative: list[Point] | None, seeds: list[int] | None = None):
    """One rung at one learning rate: None while any of its seeds is to run (those pending are added to
    ``pending``, and rungs above a running one to ``speculative``), else (its usable records, its kind:
    learning | not learning | failed | pruned)."""
    points = [Point(targets, r, s, lr) for s in (rung_seeds(spec, r) if seeds is None else seeds)]
    statuses = [hist.status(p) for p in points]
    todo = [p for p, s in zip(points, statuses, strict=False) if s in ("pending", "running")]
    if todo:
        pending.extend(p for p in todo if hist.status(p) == "pending" and p not in pending)
        if speculative is not None and "running" in statuses:
            for x in [x for x in spec.ranks if x > r][:spec.speculate]:
                if over_budget(spec, targets, x):
                    break
                speculative.extend(q for q in (Point(targets, x, s, lr) for s in rung_seeds(spec, x))
                                   if hist.status(q) == "pending")
        return None
    done = [rec for rec in (hist.completed(p) for p in points) if rec is not None]
    if done and not statistic(done, spec.confidence, spec.direction).not_learning:
        return done, "learning"
    kind = "failed" if all(s == "failed" for s in statuses) else (
        "pruned" if all(s == "pruned" for s in statuses) else "not learning")
    return done, kind


def probe(spec: LadderSpec, hist: History, targets: str, r: int, state, pending: list[Point]):
    """The first rung did not learn at the configured lr: retry it at each ``lr_probe`` multiple in turn. The
    ladder climbs at the first that learns (``state.lr``); when none does, at the configured lr as before.
    None while a probe is to run; else the first rung's (records, kind) at the lr the ladder keeps."""
    state.probes = [f"r={r} at lr {spec.base_lr:g} (configured): not learning"]
    for m in spec.lr_probe:
        lr = spec.base_lr * m
        outcome = rung(spec, hist, targets, r, lr, pending, None, spec.seeds[:1] if spec.lr_bracket else None)
        if outcome is None:
            return None
        done, kind = outcome
        state.probes.append(f"r={r} at lr {lr:g} ({m:g}x): {kind}")
        if kind == "learning":
            state.lr = lr
            return done, kind
    return rung(spec, hist, targets, r, None, [], None)


def _lr(spec: LadderSpec, m: float) -> float | None:
    return None if m == 1 else spec.base_lr * m


def _gain(spec: LadderSpec, a: list[TrialRecord], b: list[TrialRecord], seed_std: float | None):
    """(b beats a by more than min_delta, the paired interval of b - a or None): the interval decides (seed noise
    included); without predictions, the means."""
    diff = spec.compare(a, b, seed_std) if spec.compare is not None else None
    if diff is not None:
        return is_gain(diff, spec.min_delta, spec.direction), diff
    sa = statistic(a, spec.confidence, spec.direction).mean
    sb = statistic(b, spec.confidence, spec.direction).mean
    return (sb - sa if spec.direction == "maximize" else sa - sb) > spec.min_delta, None


def _better(spec: LadderSpec, a: list[TrialRecord], b: list[TrialRecord], seed_std: float | None) -> bool:
    """b beats a by more than min_delta (:func:`_gain`)."""
    return _gain(spec, a, b, seed_std)[0]


def calibrate(spec: LadderSpec, hist: History, targets: str, r: int, state, pending: list[Point]):
    """The bracket on the first rung (see the module doc). None while a point of it is to run; else the first
    rung's (records, kind) at the learning rate the ladder climbs at (``state.lr``; None: the configured one),
    with ``state.calibration`` saying what was tried."""
    cal = Calibration()
    state.calibration = cal
    multiples = sorted(spec.lr_bracket)
    outcomes = {m: rung(spec, hist, targets, r, _lr(spec, m), pending, None, None if m == 1 else spec.seeds[:1])
                for m in multiples}
    if any(o is None for o in outcomes.values()):
        return None
    sign = 1.0 if spec.direction == "maximize" else -1.0

    def note(m, done, kind):
        s = statistic(done, spec.confidence, spec.direction) if done else None
        ci = (s.ci_low, s.ci_high) if s is not None and s.ci_low is not None else None
        cal.tried.append((m, spec.base_lr * m, None if s is None else s.mean, ci, kind))

    for m in multiples:
        note(m, *outcomes[m])
    learning = {m: done for m, (done, kind) in outcomes.items() if kind == "learning"}
    if 1 in learning and len(learning[1]) > 1:
        s1 = statistic(learning[1], spec.confidence, spec.direction)
        cal.seed_spread = (s1.n, s1.std)
    seed_std = cal.seed_spread[1] if cal.seed_spread else None
    if not learning:
        cal.why = "no learning rate of the bracket learns"
        return outcomes[1]

    def mean(m):
        return sign * statistic(learning[m], spec.confidence, spec.direction).mean

    best = max(learning, key=mean)
    if best != 1 and 1 in learning and not _better(spec, learning[1], learning[best], seed_std):
        cal.why = (f"{spec.base_lr * best:g} scored best but is not shown better than the configured "
                   f"{spec.base_lr:g} by more than min_delta {spec.min_delta:g}: the configured one is kept")
        best = 1
    elif best in (multiples[0], multiples[-1]) and best != 1 and len(multiples) > 1:
        step = multiples[-1] / multiples[-2] if best == multiples[-1] else multiples[0] / multiples[1]
        further = best * step  # one step beyond the edge, once
        out = rung(spec, hist, targets, r, _lr(spec, further), pending, None, spec.seeds[:1])
        if out is None:
            return None
        note(further, *out)
        if out[1] == "learning" and _better(spec, learning[best], out[0], seed_std):
            learning[further] = out[0]
            best = further
        cal.why = f"the best, {spec.base_lr * best:g}, at the bracket's edge: tried {spec.base_lr * further:g} too"
    else:
        cal.why = f"{spec.base_lr * best:g} scored best" + (" (the configured one)" if best == 1 else "")
    cal.kept = best
    state.lr = _lr(spec, best)
    return learning[best], "learning"


def calibration_lines(cal: Calibration, r: int) -> list[str]:
    """The bracket as the summary prints it: each lr with its score and interval, then the one kept."""
    cells = []
    for m, lr, mean, ci, kind in cal.tried:
        score = "-" if mean is None else f"{mean:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
        cells.append(f"lr {lr:g} ({m:g}x): {score}" + ("" if kind == "learning" else f" ({kind})"))
    kept = "" if cal.kept is None else f" -> climbs at lr {cal.tried[0][1] / cal.tried[0][0] * cal.kept:g}"
    return [f"lr bracket on r={r}: " + "; ".join(cells) + kept, f"    ({cal.why})"]


def check_across_lr(spec: LadderSpec, hist: History, targets: str, state, by_rank: dict, seed_std: float | None,
                    pending: list[Point], cal: Calibration, kept: float, shared: str | None = None) -> None:
    """The verdict checked across the learning rate (see the module doc of :mod:`rank_sweep.study.plan` and
    docs/concepts/lr_probe.md). ``cal``: the bracket whose lrs are the neighbours (the ladder's own, or with
    ``search.lr_shared`` the first ladder's, named by ``shared``); ``kept``: the multiple the ladder climbed at.

    At each neighbouring lr b of the bracket (the one below the ladder's lr a; with ``lr_check=both`` the one above
    too) that learned there, the rank above the plateau (q) and the plateau rank (p) are trained with the first seed
    (p at b is often the bracket's own trial). The plateau *depends on the learning rate* when q at b beats the
    plateau row itself (p at a, every seed) by more than min_delta, or, on a ladder that shares another ladder's lr,
    when p at b beats p at a (the lr did not transfer). A gain of q over p at b alone, with q at b not shown better
    than p at a, is speed at that lr, not a need for rank: the plateau holds, and the verdict says so. Sets
    ``state.lr_verdict`` and ``state.lr_dependent``."""
    p = state.plateau_rank
    above = sorted(r for r in by_rank if r > p)
    learned = sorted(m for m, _, _, _, kind in cal.tried if kind == "learning")
    if not above or kept not in learned:
        state.lr_verdict = f"plateau r={p}: no rank above it was trained, so nothing to check across lr"
        return
    q, i = above[0], learned.index(kept)
    sides = (i - 1, i + 1) if spec.lr_check == "both" else (i - 1,)
    neighbours = [learned[j] for j in sides if 0 <= j < len(learned)]
    if not neighbours:
        state.lr_verdict = (f"plateau r={p}: no {'other' if spec.lr_check == 'both' else 'lower'} lr of the bracket "
                            f"learned, so nothing to check across lr")
        return
    found, waiting, idle = [], False, []
    for m in neighbours:
        low, high = (rung(spec, hist, targets, x, _lr(spec, m), pending, None, spec.seeds[:1]) for x in (p, q))
        if low is None or high is None:
            waiting = True
        elif low[1] == "learning" and high[1] == "learning":
            found.append((m, low[0], high[0]))
        else:
            idle.append(m)
    if waiting:
        state.lr_verdict = f"plateau r={p}: checking it at lr {', '.join(f'{spec.base_lr * m:g}' for m in neighbours)}"
        return
    a = spec.base_lr * kept
    plateau = by_rank[p]
    beats, moved, speed = [], [], []
    for m, low, high in found:
        b = spec.base_lr * m
        over_plateau, d_plateau = _gain(spec, plateau, high, seed_std)
        if over_plateau:
            beats.append(f"r={q} at lr {b:g} beats the plateau r={p} at lr {a:g}{_by(d_plateau)}")
            continue
        moved_here, d_moved = _gain(spec, plateau, low, seed_std) if shared else (False, None)
        if moved_here:
            moved.append(f"lr {a:g} (the lr {shared}'s bracket chose) does not transfer: r={p} scores better at lr "
                         f"{b:g}{_by(d_moved)}")
            continue
        over_low, d_low = _gain(spec, low, high, seed_std)
        if over_low:
            why = "speed at a slower lr" if b < a else "a gain only where both overshoot"
            speed.append(f"at lr {b:g} r={q} gains over r={p}{_by(d_low)} but is not shown better than r={p} at lr "
                         f"{a:g}{_by(d_plateau)}: {why}, not a need for rank")
    lrs = [a, *(spec.base_lr * m for m, _, _ in found)]
    state.lr_dependent = bool(beats or moved)
    if state.lr_dependent:
        state.lr_verdict = "depends on the learning rate: " + "; ".join(beats + moved)
    elif not found:
        state.lr_verdict = (f"plateau r={p}: r={p} or r={q} does not learn at lr "
                            f"{', '.join(f'{spec.base_lr * m:g}' for m in idle)}, so nothing to compare there")
    else:
        state.lr_verdict = (f"plateau r={p} holds across lr [{min(lrs):g}, {max(lrs):g}]"
                            + (f": {'; '.join(speed)}" if speed else f" (r={q} beats it at none of them)"))


def _by(d) -> str:
    """ (+d [lo, hi]): a paired interval as the verdicts print it, or "" without predictions."""
    return "" if d is None else f" ({d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}])"


def reference_row(spec: LadderSpec, hist: History, method: str, size: int, base: float | None,
                  pending: list[Point]) -> tuple[list[Point], str | None]:
    """A reference row (full fine-tuning, a reference method) at its own calibrated learning rate: with a bracket,
    its first seed at each multiple of its customary lr (``base``: the lr its entry gives, else trainer.lr), the best
    (by more than min_delta; a tie keeps the customary one) for its other seeds. (The points of its seeds at the lr
    kept, or [] while the bracket runs; a line saying what the bracket found, or None without a bracket.)"""
    def point(seed, lr):
        return Point.full(seed, lr) if method == "full" else Point.reference(method, size, seed, lr)

    if not spec.lr_bracket or spec.base_lr is None:
        return [point(s, base) for s in spec.seeds], None
    customary = base if base is not None else spec.base_lr
    lrs = {m: (base if m == 1 else float(f"{customary * m:.12g}")) for m in sorted(spec.lr_bracket)}
    first = {m: point(spec.seeds[0], lr) for m, lr in lrs.items()}
    todo = [p for p in first.values() if hist.status(p) in ("pending", "running")]
    if todo:
        pending.extend(p for p in todo if hist.status(p) == "pending" and p not in pending)
        return [], None
    done = {m: hist.completed(p) for m, p in first.items()}
    learning = {m: rec for m, rec in done.items() if rec is not None and not rec.not_learning}
    sign = 1.0 if spec.direction == "maximize" else -1.0
    kept = 1.0
    if learning:
        best = max(learning, key=lambda m: sign * learning[m].score)
        if best == 1 or 1 not in learning or _better(spec, [learning[1]], [learning[best]], None):
            kept = best
    cells = "; ".join(f"lr {customary * m:g}: " + ("-" if rec is None else f"{rec.score:.4f}"
                                                     + ("" if m in learning else " (not learning)"))
                      for m, rec in done.items())
    return [point(s, lrs[kept]) for s in spec.seeds], f"{cells} -> lr {customary * kept:g}"
