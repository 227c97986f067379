"""The trial history indexed by point: what finished, what failed, what runs now.

A *point* is (target set, rank, seed, and the learning rate of a probe): what one trial runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from rank_sweep.results.records import TrialRecord


@dataclass(frozen=True)
class Point:
    targets: str  # roles joined by commas, or "full"
    r: int
    seed: int
    lr: float | None = None  # None: the configured trainer.lr; else a probe's (search.lr_probe)

    def __str__(self) -> str:
        return f"{self.targets} r={self.r} seed={self.seed}" + ("" if self.lr is None else f" lr={self.lr:g}")


def point_of(rec: TrialRecord) -> Point:
    """The point a record ran: a probe trial carries its learning rate as the tuned value ``lr``."""
    return Point(rec.targets, rec.r, rec.seed, dict(rec.tuned).get("lr"))


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
