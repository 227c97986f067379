"""The allocation step: one LoRA parameter budget, spread over different target sets (the LoRA paper's Table 5).

When every ladder has stopped, each budget of ``spec.allocation_budgets`` (``plateau``: the LoRA parameter count
of the best ladder's plateau configuration) is spent on each set of ``spec.allocation_sets`` at the rank whose
count is closest to it::

    closest_rank(per_rank=23_040, budget=36_864)   # 2: 46,080 is 9,216 over, 23,040 is 13,824 under

The rule: LoRA's count is linear in the rank (r (d_in + d_out) per matrix), so the candidates are the two ranks
around budget / count-at-r=1; the closer count wins, a tie goes to the lower rank, and r >= 1 (a set whose r=1
already costs more than the budget trains at r=1, and its row says by how much). Each row trains at the
ladders' seeds and at the learning rate the best ladder climbed at (the configured one, or its probe's). These
are ordinary LoRA trials: a row whose (targets, r, lr) a ladder or the extension already trained costs nothing.
The plan derives the rows from the history (:func:`rows`); :func:`report` prints them as a table with each
row's paired difference to the best row at its budget (a one-seed row reuses the study's pooled seed std, as a
ladder's one-seed rungs do).
"""

from __future__ import annotations

from dataclasses import dataclass

from rank_sweep.config.point import Point
from rank_sweep.results.records import TrialRecord, aggregate, one_per_seed, statistic
from rank_sweep.study.history import History
from rank_sweep.study.spec import LadderSpec, over_budget

PLATEAU = "plateau"
# search.allocation_sets=null: an encoder's, a causal LM's (by is_causal_lm)
DEFAULT_SETS = {False: [["Wq", "Wv"], ["attention"], ["mlp"]],
                True: [["Wq", "Wv"], ["attention"], ["mlp"], ["all_linear"]]}


@dataclass(frozen=True)
class Row:
    budget: int
    source: str  # where the budget comes from
    targets: str
    r: int
    lora_params: int
    lr: float | None  # None: the configured trainer.lr
    skipped: str | None = None  # why it is not trained (over search.budget)

    @property
    def mismatch(self) -> float:
        """The row's count relative to the budget: +0.25 is 25% over."""
        return self.lora_params / self.budget - 1.0


def closest_rank(per_rank: int, budget: int) -> int:
    """The rank r >= 1 whose LoRA count ``r * per_rank`` is closest to ``budget``; a tie goes to the lower rank."""
    low = max(1, budget // per_rank)
    return low if abs(low * per_rank - budget) <= abs((low + 1) * per_rank - budget) else low + 1


def active(spec: LadderSpec) -> bool:
    return bool(spec.allocation_sets and spec.allocation_budgets and spec.cost) and not (spec.grid or spec.tuned)


def _match(spec: LadderSpec, targets: str, budget: int) -> tuple[int, int]:
    r = closest_rank(spec.cost(targets, 1)[0], budget)
    return r, spec.cost(targets, r)[0]


def _best(spec: LadderSpec, ladders) -> tuple[str, int, float | None] | None:
    """(targets, plateau rank, lr) of the ladder whose plateau rung scores best, or None (no plateau rank)."""
    sign = 1.0 if spec.direction == "maximize" else -1.0
    found = [(sign * g.mean, lad.targets, g.r, lad.lr) for lad in ladders if lad.plateau_rank is not None
             for g in lad.rungs if g.r == lad.plateau_rank and g.mean is not None]
    if not found:
        return None
    _, targets, r, lr = max(found, key=lambda x: x[0])
    return targets, r, lr


def rows(spec: LadderSpec, ladders, hist: History | None = None, pending: list[Point] | None = None) -> list[Row]:
    """The allocation rows once every ladder has stopped (else none); their points still to run are added to
    ``pending``."""
    if not active(spec) or not ladders or not all(lad.finished for lad in ladders):
        return []
    best = _best(spec, ladders)
    lr = best[2] if best else None
    out: list[Row] = []
    for b in spec.allocation_budgets:
        if b == PLATEAU:
            if best is None:
                continue
            budget, source = spec.cost(best[0], best[1])[0], f"the plateau of {best[0]} r={best[1]}"
            sets = [best[0], *(s for s in spec.allocation_sets if s != best[0])]
        else:
            budget, source, sets = int(b), "search.allocation_budgets", spec.allocation_sets
        for ts in sets:
            r, count = _match(spec, ts, budget)
            row = Row(budget, source, ts, r, count, lr, over_budget(spec, ts, r))
            if row not in out:
                out.append(row)
    if hist is not None and pending is not None:
        for p in points(out, spec.seeds):
            if hist.status(p) == "pending" and p not in pending:
                pending.append(p)
    return out


def points(table: list[Row], seeds: list[int]) -> list[Point]:
    return [Point(row.targets, row.r, s, row.lr) for row in table if row.skipped is None for s in seeds]


def candidates(spec: LadderSpec) -> set[tuple[str, int]]:
    """Every (targets, r) an allocation row may train, known before training: the plateau budget is the count of
    some ladder set at some ladder rank, so the rows of each such count are listed (the study's parameter space)."""
    if not active(spec):
        return set()
    out = set()
    for b in spec.allocation_budgets:
        counts = ({(ts, spec.cost(ts, r)[0]) for ts in spec.target_sets for r in spec.ranks} if b == PLATEAU
                  else {(None, int(b))})
        for own, budget in counts:
            out.update((ts, _match(spec, ts, budget)[0]) for ts in ([own] if own else []) + spec.allocation_sets)
    return out


def label(spec: LadderSpec, targets: str) -> str:
    """``mlp (Wup,Wdown)`` for a set given as a group, else the set."""
    return f"{spec.labels[targets]} ({targets})" if targets in spec.labels else targets


def _records(records: list[TrialRecord], row: Row) -> list[TrialRecord]:
    return one_per_seed(rec for rec in records
                        if rec.usable and rec.point == Point(row.targets, row.r, rec.seed, row.lr))


def report(table: list[Row], records: list[TrialRecord], spec: LadderSpec) -> tuple[list[str], list[dict]]:
    """The allocation table per budget (lines for the summary) and its rows as dicts (for decisions.json)."""
    lines: list[str] = []
    out: list[dict] = []
    sign = 1.0 if spec.direction == "maximize" else -1.0
    noise = seed_std(records)
    for budget in dict.fromkeys(row.budget for row in table):
        group = [row for row in table if row.budget == budget]
        done = {row: recs for row in group if (recs := _records(records, row))}
        stats = {row: statistic(recs, spec.confidence, spec.direction) for row, recs in done.items()}
        scored = [row for row in group if row in stats and stats[row].mean is not None]
        best = max(scored, key=lambda row: sign * stats[row].mean, default=None)
        lines += [f"allocation at {budget:,} LoRA params ({group[0].source}; each set at the rank whose count is "
                  f"closest, ties to the lower rank):",
                  "| targets | r | LoRA params | vs budget | lr | mean | interval | n | diff to best | interval |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in group:
            lr = row.lr if row.lr is not None else spec.base_lr
            entry = {"budget": budget, "source": row.source, "targets": row.targets, "label": label(spec, row.targets),
                     "r": row.r, "lora_params": row.lora_params, "mismatch": row.mismatch, "lr": lr,
                     "skipped": row.skipped}
            cells = [label(spec, row.targets), str(row.r), f"{row.lora_params:,}", f"{row.mismatch:+.1%}",
                     "-" if lr is None else f"{lr:g}"]
            st = stats.get(row)
            if row.skipped or st is None or st.mean is None:
                lines.append("| " + " | ".join(cells + [row.skipped or "not trained yet", "", "", "", ""]) + " |")
                out.append(entry)
                continue
            diff = None if row is best or spec.compare is None else spec.compare(done[best], done[row], noise)
            cells += [f"{st.mean:.4f}", _ci(st.ci_low, st.ci_high), str(st.n)]
            cells += (["best", ""] if row is best else [f"{st.mean - stats[best].mean:+.4f}", "no paired interval"]
                      if diff is None else [f"{diff.estimate:+.4f}", f"[{diff.low:+.4f}, {diff.high:+.4f}]"])
            entry.update(mean=st.mean, ci_low=st.ci_low, ci_high=st.ci_high, n=st.n,
                         diff=None if diff is None else diff.estimate, diff_ci_low=None if diff is None else diff.low,
                         diff_ci_high=None if diff is None else diff.high)
            out.append(entry)
            lines.append("| " + " | ".join(cells) + " |")
        if best is not None:
            lines.append(_reading(spec, best, [e for e in out if e["budget"] == budget]))
        lines.append("")
    return lines, out


def seed_std(records: list[TrialRecord]) -> float | None:
    """The seed noise a one-seed row reuses (as a ladder's one-seed rungs do): the pooled std over every LoRA
    configuration of the study with two or more seeds, sqrt(sum((n-1) s^2) / sum(n-1)); None without one."""
    lora = [r for r in records if r.usable and r.point.method == "lora" and not r.nested]
    many = [s for s in aggregate(lora) if s.n >= 2]
    dof = sum(s.n - 1 for s in many)
    return (sum((s.n - 1) * s.std ** 2 for s in many) / dof) ** 0.5 if dof else None


def _ci(low, high) -> str:
    return "" if low is None or high is None else f"[{low:.4f}, {high:.4f}]"


def _reading(spec: LadderSpec, best: Row, entries: list[dict]) -> str:
    """One line: which rows are shown worse than the best (their paired interval excludes 0), which are not."""
    worse = [e for e in entries if e.get("diff") is not None and (e["diff_ci_high"] < 0 if spec.direction ==
                                                                  "maximize" else e["diff_ci_low"] > 0)]
    tied = [e for e in entries if e.get("diff") is not None and e not in worse]
    head = f"best: {label(spec, best.targets)} r={best.r}"
    if not worse and not tied:
        return head + " (no other row scored yet)"
    return (head + f"; shown worse ({spec.confidence:.0%} paired): "
            + (", ".join(f"{e['label']} r={e['r']}" for e in worse) or "none")
            + "; not told apart from the best: " + (", ".join(f"{e['label']} r={e['r']}" for e in tied) or "none"))
