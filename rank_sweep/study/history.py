"""The trial history indexed by point (:class:`rank_sweep.config.point.Point`): what finished, what failed,
what runs now; and the rows a nested screen's truncated ranks add."""

from __future__ import annotations

import dataclasses

from rank_sweep.config.point import Point
from rank_sweep.results.records import TrialRecord

SCREEN = ("screen", 1.0)  # the stored value that marks a nested-rank screen trial (search=nested): Point.kind
SCREENED = ("screened", 1.0)  # ... and the rows derived from it, one per truncated rank


def _counts_at(screen: TrialRecord, b: int) -> dict:
    """LoRA's counts are linear in the rank (r (d_in + d_out) per matrix): those of rank b, exactly."""
    if screen.lora_params is None or screen.trainable_params is None or screen.r <= 0:
        return {"lora_params": None, "trainable_params": None}
    lora = screen.lora_params * b // screen.r
    return {"lora_params": lora, "trainable_params": screen.trainable_params - screen.lora_params + lora}


def screened_records(screen: TrialRecord) -> list[TrialRecord]:
    """One record per rank a nested screen scored by truncation: in the screen's run, its per-example outputs are
    under ``r<rank>`` (``outputs``); its kind ``screened`` keeps it apart from ordinary trials."""
    out = []
    for b, (score, low, high, not_learning) in sorted((screen.nested or {}).items(), key=lambda kv: int(kv[0])):
        out.append(dataclasses.replace(
            screen, r=int(b), score=score, score_ci_low=low, score_ci_high=high, not_learning=bool(not_learning),
            outputs=f"r{b}", tuned=(SCREENED,), nested=None,
            intermediate=(), **_counts_at(screen, int(b))))
    return out


class History:
    """Records indexed by point: what finished, what failed, what runs now."""

    def __init__(self, records: list[TrialRecord], max_retries: int):
        self.by_point: dict[Point, list[TrialRecord]] = {}
        for rec in records:
            self.by_point.setdefault(rec.point, []).append(rec)
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
