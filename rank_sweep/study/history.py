"""The trial history indexed by point: what finished, what failed, what runs now.

A *point* is (target set, rank, seed, and the learning rate of a probe): what one trial runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rank_sweep.results.records import TrialRecord

SCREEN = ("screen", 1.0)  # the tuned value that marks a nested-rank screen trial (search=nested)
SCREENED = ("screened", 1.0)  # ... and the rows derived from it, one per truncated rank


@dataclass(frozen=True)
class Point:
    targets: str  # roles joined by commas, or "full"
    r: int
    seed: int
    lr: float | None = None  # None: the configured trainer.lr; else a probe's (search.lr_probe)
    screen: bool = False  # a nested-rank screen at r (search=nested), not an ordinary trial

    def __str__(self) -> str:
        return (f"{self.targets} r={self.r} seed={self.seed}" + ("" if self.lr is None else f" lr={self.lr:g}")
                + (" (nested screen)" if self.screen else ""))


def point_of(rec: TrialRecord) -> Point:
    """The point a record ran: a probe trial carries its learning rate as the tuned value ``lr``, a nested
    screen the tuned value ``screen``."""
    tuned = dict(rec.tuned)
    return Point(rec.targets, rec.r, rec.seed, tuned.get("lr"), tuned.get("screen") == 1.0)


def _counts_at(screen: TrialRecord, b: int) -> dict:
    """LoRA's counts are linear in the rank (r (d_in + d_out) per matrix): those of rank b, exactly."""
    if screen.lora_params is None or screen.trainable_params is None or screen.r <= 0:
        return {"lora_params": None, "trainable_params": None}
    lora = screen.lora_params * b // screen.r
    return {"lora_params": lora, "trainable_params": screen.trainable_params - screen.lora_params + lora}


def tuned_of(point: Point) -> tuple:
    """The tuned values a record of ``point`` carries: the inverse of :func:`point_of`."""
    return (SCREEN,) if point.screen else () if point.lr is None else (("lr", point.lr),)


def screened_records(screen: TrialRecord) -> list[TrialRecord]:
    """One record per rank a nested screen scored by truncation: its run id is ``<run>/r<rank>`` (where its
    per-example predictions are), its tuned value ``screened`` keeps it apart from ordinary trials."""
    out = []
    for b, (score, low, high, not_learning) in sorted((screen.nested or {}).items(), key=lambda kv: int(kv[0])):
        out.append(dataclasses.replace(
            screen, r=int(b), score=score, score_ci_low=low, score_ci_high=high, not_learning=bool(not_learning),
            run_id=None if screen.run_id is None else f"{screen.run_id}/r{b}", tuned=(SCREENED,), nested=None,
            intermediate=(), **_counts_at(screen, int(b))))
    return out


class History:
    """Records indexed by point: what finished, what failed, what runs now."""

    def __init__(self, records: list[TrialRecord], max_retries: int):
        self.by_point: dict[Point, list[TrialRecord]] = {}
        for rec in records:
            self.by_point.setdefault(point_of(rec), []).append(rec)
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
