"""Pick one configuration from a sweep: the cheapest that scores as well as the best.

Pure functions, no I/O: records (or summaries) and a budget in, a
:class:`Selection` with its reasons out::

    sel = select(records_from_study(study), Budget(max_lora_params=300_000), tolerance=0.005)
    print(format_selection(sel))

The rule: among configurations that fit the budget, learn, and have their
metrics, *best* has the best mean score (ties: fewer trainable params, then
lower r). Every configuration whose mean is within ``tolerance`` of the best is
a candidate, and the cheapest candidate by trainable params is chosen (ties:
lower r, then better score). Set ``tolerance`` to the seed noise: the LoRA paper
reports seed stds of 0.2-1.2 points on GLUE, and a difference below that is no
reason to pay for a larger rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from rank_sweep.config import DIRECTIONS, Budget
from rank_sweep.config.budget import count_text
from rank_sweep.errors import RankSweepError
from rank_sweep.results.paired import is_gain, not_worse
from rank_sweep.results.records import ConfigSummary, TrialRecord, aggregate

__all__ = ["Budget", "Selection", "select", "pareto_front", "count_text", "score_text"]


def score_text(x: float | None) -> str:
    return "?" if x is None else f"{x:.4g}"


@dataclass
class Selection:
    chosen: ConfigSummary
    best: ConfigSummary
    reason: str
    runners_up: list[tuple[ConfigSummary, str]] = field(default_factory=list)
    pareto: list[ConfigSummary] = field(default_factory=list)
    tolerance: float = 0.0
    direction: str = "maximize"
    budget: Budget = field(default_factory=Budget)
    # label -> Interval of (score - best's score) on the same dev examples (with ``compare``), and the level
    vs_best: dict = field(default_factory=dict)
    confidence: float | None = None
    # the choice's rank at the other learning rates its target set trained at (:func:`lr_lines`)
    lr_notes: list[str] = field(default_factory=list)
    lr_dependent: bool = False  # a higher rank of the choice's target set, at another lr, beats the choice

    @property
    def confidence_line(self) -> str:
        """How sure the choice is: the paired interval of chosen - best against the tolerance."""
        if self.confidence is None:
            return ("confidence: no per-example predictions were found, so the choice rests on mean scores only "
                    f"(tolerance {self.tolerance:g})")
        if self.chosen is self.best:
            nearest = [(lbl, d) for lbl, d in self.vs_best.items() if lbl != self.best.label]
            tail = "" if not nearest else "; runners-up vs it: " + ", ".join(
                f"{lbl} {d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}]" for lbl, d in nearest[:3])
            return f"confidence: {self.chosen.label} has the best mean in budget ({self.confidence:.0%} paired intervals{tail})"
        d = self.vs_best.get(self.chosen.label)
        if d is None:
            return f"confidence: no paired interval for {self.chosen.label} against {self.best.label}"
        return (f"confidence: {self.chosen.label} - {self.best.label} = {d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}] "
                f"({self.confidence:.0%} paired interval on the same dev examples): not shown worse than the best by "
                f"more than the tolerance {self.tolerance:g}")


def _has_metrics(s: ConfigSummary) -> bool:
    return s.mean is not None and math.isfinite(s.mean) and s.trainable_params is not None


def _key(direction: str):
    sign = -1.0 if direction == "maximize" else 1.0
    return lambda s: sign * s.mean  # smaller is better


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise RankSweepError(f"direction={direction!r} is not valid: choose maximize or minimize")


def pareto_front(summaries: Sequence[ConfigSummary], direction: str = "maximize",
                 cost: str = "trainable_params") -> list[ConfigSummary]:
    """Configurations no other beats on both score and ``cost`` (trainable params, or e.g. ``peak_memory_mb``),
    cheapest first."""
    _check_direction(direction)
    bad = _key(direction)
    pts = [s for s in summaries if _has_metrics(s) and getattr(s, cost) is not None]
    c = {id(s): getattr(s, cost) for s in pts}
    front = [
        s
        for s in pts
        if not any(
            bad(o) <= bad(s)
            and c[id(o)] <= c[id(s)]
            and (bad(o) < bad(s) or c[id(o)] < c[id(s)])
            for o in pts
        )
    ]
    return sorted(front, key=lambda s: (c[id(s)], bad(s), s.r))


def as_summaries(items: Sequence[TrialRecord | ConfigSummary]) -> list[ConfigSummary]:
    items = list(items)
    if not items or not isinstance(items[0], TrialRecord):
        return items
    summaries = aggregate(items)
    if not summaries:
        states = sorted({r.state for r in items})
        if set(states) <= {"FAIL", "PRUNED"}:
            raise RankSweepError(f"all {len(items)} trials failed or were pruned")
        counts = ", ".join(f"{sum(r.state == s for r in items)} {s}" for s in states)
        raise RankSweepError(f"none of the {len(items)} trials completed with a finite score ({counts})")
    return summaries


def _no_fit_error(budget: Budget, pool: list[ConfigSummary]) -> RankSweepError:
    for name, unit, attr in [
        ("max_lora_params", "LoRA params", "lora_params"),
        ("max_trainable_params", "trainable params", "trainable_params"),
        ("max_train_seconds", "s of training", "train_seconds"),
        ("max_memory_mb", "MB peak memory", "peak_memory_mb"),
        ("max_rank", "", "r"),
    ]:
        limit = getattr(budget, name)
        known = [s for s in pool if getattr(s, attr) is not None and not (attr == "r" and s.r <= 0)]
        if limit is None or not known:
            continue
        cheap = min(known, key=lambda s: (getattr(s, attr), s.r))
        if getattr(cheap, attr) > limit and attr == "r":
            return RankSweepError(f"the budget max_rank={limit} is below the lowest rank tried: {cheap.label}")
        if getattr(cheap, attr) > limit:
            what = f"{cheap.label} with {count_text(getattr(cheap, attr))} {unit}"
            return RankSweepError(f"the budget {name}={count_text(limit)} is below the cheapest trial: {what}")
    return RankSweepError(f"no configuration fits the budget {budget}")


def select(
    records_or_summaries: Sequence[TrialRecord | ConfigSummary],
    budget: Budget | None = None,
    tolerance: float = 0.0,
    direction: str = "maximize",
    compare=None,
    confidence: float = 0.95,
    methods: Sequence[str] = ("lora",),
) -> Selection:
    """Choose a configuration; see the module docstring for the rule. ``compare(a, b)``: the paired
    Interval of score(b) - score(a) for two summaries on the same dev examples (or None); with it, a
    configuration is as good as the best unless it is shown worse by more than ``tolerance``."""
    _check_direction(direction)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise RankSweepError(f"tolerance={tolerance!r} is not valid: give a score difference >= 0")
    budget = budget or Budget()
    if not records_or_summaries:
        raise RankSweepError("the study has no trials")
    summaries = as_summaries(records_or_summaries)
    with_metrics, eligible, excluded = _eligible(summaries, budget, methods)
    bad = _key(direction)
    best = min(eligible, key=lambda s: (bad(s), s.trainable_params, s.r))
    slack = tolerance + 1e-9 * max(1.0, abs(best.mean))  # a tie in print is a tie
    vs_best = {s.label: d for s in eligible if compare is not None and (d := compare(best, s)) is not None}
    paired = compare is not None and len(vs_best) == len(eligible)
    if paired:  # "within tolerance": the difference to the best is not significantly larger than the tolerance
        candidates = [s for s in eligible if not_worse(vs_best[s.label], slack, direction)]
    else:
        candidates = [s for s in eligible if bad(s) <= bad(best) + slack]
    chosen = min(candidates, key=lambda s: (s.trainable_params, s.r, bad(s)))
    excluded = [(cat, s, _against(s, chosen, compare) if why.startswith("reference: ") and s.method != "head" else why)
                for cat, s, why in excluded]
    return Selection(
        chosen=chosen,
        best=best,
        reason=_reason(chosen, best, tolerance, paired),
        runners_up=_runners_up(eligible, candidates, chosen, excluded, bad, tolerance, direction,
                               vs_best if paired else {}),
        pareto=pareto_front([s for s in with_metrics if not s.not_learning], direction),
        tolerance=tolerance,
        direction=direction,
        budget=budget,
        vs_best=vs_best if paired else {},
        confidence=confidence if paired else None,
        **dict(zip(("lr_notes", "lr_dependent"), lr_lines(chosen, summaries, compare, tolerance, direction),
                   strict=True)),
    )


def lr_lines(chosen: ConfigSummary, summaries: Sequence[ConfigSummary], compare, tolerance: float,
             direction: str) -> tuple[list[str], bool]:
    """Does the choice's rank hold at the other learning rates its target set trained at (the ladder's bracket and
    its check across lr)? For each other lr b: the lowest rank above the choice's trained at b (q) against the choice
    itself (paired), and against the choice's rank at b where that ran. The choice *depends on the learning rate*
    when such a q beats it by more than ``tolerance`` (it was out of the budget, or select would have chosen it);
    a gain of q over the choice's rank at b alone is speed at that lr, not a need for rank. (lines, dependent)."""
    if chosen.method != "lora" or chosen.lr is None:
        return [], False
    same = [s for s in summaries if s.method == "lora" and s.targets == chosen.targets and not s.screened
            and s.lr is not None and s.mean is not None and not s.not_learning]
    others = sorted({s.lr for s in same if not math.isclose(s.lr, chosen.lr, rel_tol=1e-9)})
    lines, dependent = [], False
    bad = _key(direction)

    def gain(a, b):  # (b beats a by more than the tolerance, the paired interval of b - a or None)
        d = compare(a, b) if compare is not None else None
        return (is_gain(d, tolerance, direction) if d is not None else bad(a) - bad(b) > tolerance), d

    for b in others:
        at_b = {s.r: s for s in same if math.isclose(s.lr, b, rel_tol=1e-9)}
        above = sorted(r for r in at_b if r > chosen.r)
        if not above:
            continue
        q, low = at_b[above[0]], at_b.get(chosen.r)
        beats, d = gain(chosen, q)
        gains, d_low = gain(low, q) if low is not None else (False, None)
        vs = _diff_text(d, q, chosen)
        if beats:
            dependent = True
            lines.append(f"at lr {b:g} r={q.r} beats the choice ({vs}) but is not eligible (outside the budget): at "
                         f"this budget the choice stands, yet it is no plateau of the task, only of lr {chosen.lr:g}")
        elif gains:
            lines.append(f"at lr {b:g} r={q.r} gains over r={chosen.r} ({_diff_text(d_low, q, low)}) but not over the "
                         f"choice ({vs}): speed at that lr, not a need for rank")
        else:
            lines.append(f"at lr {b:g} r={q.r} gains over neither r={chosen.r} there nor the choice ({vs})")
    if lines:
        head = (f"learning rate: the choice trained at lr {chosen.lr:g} (its preset keeps it); "
                + ("its rank depends on the learning rate" if dependent else "its rank holds at the other lrs tried"))
        lines = [head] + ["  " + x for x in lines]
    return lines, dependent


def _diff_text(d, b: ConfigSummary, a: ConfigSummary) -> str:
    if d is not None:
        return f"{d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"
    return f"{b.mean - a.mean:+.4f}, means"


def _eligible(summaries: list[ConfigSummary], budget: Budget, methods: Sequence[str] = ("lora",)):
    """(with metrics, eligible, excluded): eligible ones have metrics, are of one of ``methods`` (``all``: any),
    fit the budget and learn; each excluded one is (category, summary, why), the category ordering the
    runners-up after the eligible ones."""
    excluded: list[tuple[int, ConfigSummary, str]] = []
    with_metrics = [s for s in summaries if _has_metrics(s)]
    excluded += [(4, s, "missing metrics") for s in summaries if not _has_metrics(s)]
    if not with_metrics:
        raise RankSweepError(f"none of the {len(summaries)} configurations has a score and a trainable-parameter count")
    fitting = []
    for s in with_metrics:
        ok, why = budget.fits(s)
        if ok:
            fitting.append(s)
        else:
            excluded.append((2, s, why))
    if not fitting:
        raise _no_fit_error(budget, with_metrics)
    # the head-only reference is what an adapter must beat, not a configuration to choose
    excluded += [(3, s, "reference: the head alone, no adapter") for s in fitting if s.method == "head"]
    excluded += [(3, s, "screened (search=nested): the confirmed trials are chosen from") for s in fitting
                 if s.screened]
    fitting = [s for s in fitting if s.method != "head" and not s.screened]
    chosen_from = set(methods)
    if "all" not in chosen_from:
        excluded += [(3, s, f"reference: {s.method}, not chosen (select.methods={list(methods)})")
                     for s in fitting if s.method not in chosen_from]
        fitting = [s for s in fitting if s.method in chosen_from]
        if not fitting:
            raise RankSweepError(f"no configuration of select.methods={list(methods)} is within the budget: the "
                                 f"study has {', '.join(sorted({s.method for s in with_metrics}))}")
    eligible = [s for s in fitting if not s.not_learning]
    excluded += [(3, s, "not learning") for s in fitting if s.not_learning]
    if not eligible:
        raise RankSweepError(f"no configuration within the budget is learning: all {len(fitting)} stay at the baseline")
    return with_metrics, eligible, excluded


def _runners_up(eligible, candidates, chosen, excluded, bad, tolerance: float, direction: str, vs_best: dict):
    """Every configuration but the chosen one with why it lost: cheaper-or-equal candidates first, then the
    ones scoring outside the tolerance, then the excluded ones."""
    side = "below" if direction == "maximize" else "above"
    ranked: list[tuple[int, float, ConfigSummary, str]] = []
    for s in eligible:
        if s is chosen:
            continue
        if any(s is c for c in candidates):
            if s.trainable_params > chosen.trainable_params:
                why = (f"costs {count_text(s.trainable_params)} trainable params, more than the chosen "
                       f"{count_text(chosen.trainable_params)}")
            elif s.r > chosen.r:
                why = f"same cost, higher rank r={s.r} than the chosen r={chosen.r}"
            else:
                why = f"same cost and rank, scores {score_text(s.mean)} against the chosen {score_text(chosen.mean)}"
            ranked.append((0, bad(s), s, why))
        elif s.label in vs_best:
            d = vs_best[s.label]
            ranked.append((1, bad(s), s, f"shown worse than the best by more than {tolerance:g}: "
                                         f"{d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"))
        else:
            ranked.append((1, bad(s), s, f"scores {score_text(s.mean)}, more than {tolerance:g} {side} the best"))
    ranked += [(cat, bad(s) if _has_metrics(s) else math.inf, s, why) for cat, s, why in excluded]
    ranked.sort(key=lambda t: (t[0], t[1], t[2].trainable_params or 0, t[2].r))
    return [(s, why) for _, _, s, why in ranked]


def _against(s: ConfigSummary, chosen: ConfigSummary, compare) -> str:
    """How a reference row compares to the choice: the paired interval of its score minus the choice's."""
    head = f"reference method {s.method}, not chosen: {cost_text(s)}"
    d = compare(chosen, s) if compare is not None and s.mean is not None else None
    if d is not None:
        return f"{head}; vs the choice {d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}] (paired)"
    return f"{head}; scores {score_text(s.mean)} against the choice's {score_text(chosen.mean)}"


def cost_text(s: ConfigSummary) -> str:
    if s.lora_params is None or s.method == "full":
        return f"{count_text(s.trainable_params)} trainable params"
    if s.method != "lora":  # a reference method: its adapter's params, then with the head
        return f"{count_text(s.lora_params)} {s.targets} params ({count_text(s.trainable_params)} trainable)"
    extra = "" if s.trainable_params == s.lora_params else f" ({count_text(s.trainable_params)} trainable)"
    return f"{count_text(s.lora_params)} LoRA params{extra}"


def _reason(chosen: ConfigSummary, best: ConfigSummary, tolerance: float, paired: bool = False) -> str:
    within = f"not shown worse than the best by more than {tolerance:g}" if paired else f"within {tolerance:g} of the best"
    if chosen is best:
        tail = (f" (nothing cheaper {within})" if paired else f" (nothing cheaper within {tolerance:g})") if (
            tolerance > 0 or paired) else ""
        return f"best score in budget: {chosen.label} scores {score_text(chosen.mean)} with {cost_text(chosen)}{tail}"
    return (
        f"cheapest configuration {within} in budget ({best.label}: {score_text(best.mean)}): "
        f"{chosen.label} scores {score_text(chosen.mean)} with {cost_text(chosen)}"
    )
