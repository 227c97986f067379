"""A trial as plain data, and one configuration's statistic over its seeds.

Everything downstream of a study (the ladder, ``select``, plots, notebooks) works on
these records, never on Optuna or MLflow objects, so it can be tested on hand-made
lists. :mod:`rank_sweep.results.readers` builds them from a study's storage or its
MLflow runs::

    summaries = aggregate(records_from_study(study))

A trial that failed before its parameters were set (Optuna FAIL trials often
have none) keeps ``targets=""``, ``r=-1``, ``seed=-1``: it is still counted, so
"all N trials failed" can say how many.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from rank_sweep.config import FULL, HEAD
from rank_sweep.config.point import UNKNOWN, Point, decode
from rank_sweep.results.paired import Interval, widen

__all__ = ["FULL", "HEAD", "UNKNOWN", "Point", "TrialRecord", "ConfigSummary", "aggregate", "statistic",
           "one_per_seed", "config_key"]


@dataclass(frozen=True)
class TrialRecord:
    """One trial: its configuration, outcome and cost, as the study stored them."""

    number: int
    targets: str  # the stored row: roles joined by commas ("Wq,Wv"), "full", "head only" or a method (see .point)
    r: int  # the stored rank (0 for full fine-tuning and the head; a reference method's size)
    seed: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING (or WAITING)
    score: float | None
    lora_params: int | None
    trainable_params: int | None
    train_seconds: float | None
    not_learning: bool = False
    baseline_score: float | None = None
    alpha: float | None = None
    lr: float | None = None
    run_id: str | None = None
    outputs: str = ""  # where in its run its per-example outputs are: "" (the run's own), "r4" (a screened rank)
    intermediate: tuple[float, ...] = ()  # validation score per epoch
    tuned: tuple[tuple[str, float], ...] = ()  # the other values stored with the point (Point.values): its own lr, ...
    config: dict | None = field(default=None, compare=False, repr=False)  # the trial's resolved config, if stored
    score_ci_low: float | None = None  # the score's interval over dev examples (bootstrap, search.confidence)
    score_ci_high: float | None = None
    # a nested-rank screen (search=nested): rank -> [score, ci_low, ci_high, not_learning] of each truncation
    nested: dict | None = field(default=None, compare=False, repr=False)
    peak_memory_mb: float | None = None  # peak training memory (CUDA allocator, or peak RSS on CPU: train.memory)
    adapter_mb: float | None = None  # the adapter's size on disk

    @property
    def usable(self) -> bool:
        """COMPLETE with a finite score: the only trials that count in a summary."""
        return self.state == "COMPLETE" and self.score is not None and math.isfinite(self.score)

    @cached_property
    def point(self) -> Point:
        """What the trial ran, typed (decoded once from the stored row, rank, seed and values)."""
        return decode(self.targets, self.r, self.seed, self.tuned)


@dataclass(frozen=True)
class ConfigSummary:
    """The seeds of one (targets, r) pooled: mean and sample std of the score."""

    targets: str
    r: int
    n: int  # completed seeds with a finite score
    mean: float | None
    std: float  # sample std over seeds; 0.0 for one seed
    lora_params: int | None
    trainable_params: int | None
    train_seconds: float | None  # mean over seeds that logged it
    not_learning: bool = False  # every completed seed stayed at the trivial baseline
    numbers: tuple[int, ...] = ()  # trial numbers, in record order
    n_not_learning: int = 0  # seeds among n that did not learn
    tuned: tuple[tuple[str, float], ...] = ()  # the values stored with their point (Point.values), else ()
    ci_low: float | None = None  # interval of the mean: dev-set sampling and seed noise (see statistic)
    ci_high: float | None = None
    unstable: tuple[int, ...] = ()  # trial numbers of seeds that collapsed while their siblings learned
    peak_memory_mb: float | None = None  # the largest over seeds (what a memory budget must respect)
    adapter_mb: float | None = None
    lr: float | None = None  # the learning rate its trials trained at (as logged)

    @cached_property
    def config(self) -> Point:
        """The configuration, typed (a point without a seed)."""
        return decode(self.targets, self.r, UNKNOWN, self.tuned)

    @property
    def label(self) -> str:
        """How plots and reports name a configuration: ``Wq,Wv r=4``, ``full``, ``Wq r=4 lr=0.0012``."""
        return self.config.label

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def screened(self) -> bool:
        """A nested screen, or a rank scored by truncating one: shown beside the trials, never chosen."""
        return self.config.screened


def _first(values: Iterable[Any]) -> Any:
    # Seeds of one configuration have the same parameter counts; if a log
    # disagrees, the largest is the one a budget must respect.
    present = [v for v in values if v is not None]
    return max(present) if present else None


def config_key(rec: TrialRecord) -> Point:
    """What makes trials the same configuration: their point without the seed."""
    return rec.point.config


def _interval(recs: list[TrialRecord], mean: float, std: float, confidence: float) -> tuple[float | None, ...]:
    """The mean's interval: each seed's dev-set interval (its half-widths averaged: the seeds share the dev
    examples, so that error does not shrink with seeds) widened by the seed noise std^2/k (:func:`widen`)."""
    if any(r.score_ci_low is None or r.score_ci_high is None for r in recs):
        return None, None
    below = statistics.fmean(r.score - r.score_ci_low for r in recs)
    above = statistics.fmean(r.score_ci_high - r.score for r in recs)
    iv = widen(Interval(mean, mean - below, mean + above), std * std / len(recs), confidence)
    return iv.low, iv.high


def unstable_seeds(recs: list[TrialRecord], direction: str = "maximize") -> tuple[int, ...]:
    """Seeds that collapsed while their siblings learned: worse than the median of the other seeds by more
    than max(3 robust stds of the others (1.4826 MAD), twice the dev-set half-width, 0.02). Needs >= 3 seeds.
    Such a seed is a finding (a stability limit of the configuration at its lr), not noise: it stays in the
    mean (the configuration is charged for it) and is named in the summary and the rung's verdict."""
    if len(recs) < 3:
        return ()
    sign = 1.0 if direction == "maximize" else -1.0
    halves = [(r.score_ci_high - r.score_ci_low) / 2 for r in recs
              if r.score_ci_low is not None and r.score_ci_high is not None]
    half = statistics.fmean(halves) if halves else 0.0  # the seeds share the dev set: one half-width for all
    out = []
    for rec in recs:
        others = [r.score for r in recs if r is not rec]
        mid = statistics.median(others)
        mad = 1.4826 * statistics.median(abs(x - mid) for x in others)
        if sign * (mid - rec.score) > max(3 * mad, 2 * half, 0.02):
            out.append(rec.number)
    return tuple(out)


def statistic(recs: list[TrialRecord], confidence: float = 0.95, direction: str = "maximize") -> ConfigSummary:
    """The one statistic of a configuration, from its usable trials (one per seed): mean and sample std of
    the score over every seed, how many seeds did not learn. A seed that did not learn is a real outcome
    of the configuration and is counted in the mean (a rung where 2 of 3 seeds stay at the baseline is
    not judged by its one lucky seed); the configuration is *not learning* only when no seed learned.
    The ladder, the summary table and ``rank-sweep-select`` all score a configuration with this."""
    if not recs or not all(rec.usable for rec in recs):
        raise ValueError("statistic() takes usable records (COMPLETE with a finite score), at least one")
    scores = [rec.score for rec in recs]
    seconds = [rec.train_seconds for rec in recs if rec.train_seconds is not None]
    n_bad = sum(rec.not_learning for rec in recs)
    mean, std = statistics.fmean(scores), statistics.stdev(scores) if len(scores) > 1 else 0.0
    low, high = _interval(recs, mean, std, confidence)
    return ConfigSummary(
        targets=recs[0].targets,
        r=recs[0].r,
        n=len(recs),
        mean=mean,
        std=std,
        ci_low=low,
        ci_high=high,
        unstable=unstable_seeds(recs, direction),
        lora_params=_first(rec.lora_params for rec in recs),
        trainable_params=_first(rec.trainable_params for rec in recs),
        train_seconds=statistics.fmean(seconds) if seconds else None,
        not_learning=n_bad == len(recs),
        numbers=tuple(rec.number for rec in recs),
        n_not_learning=n_bad,
        tuned=recs[0].tuned,
        peak_memory_mb=_first(rec.peak_memory_mb for rec in recs),
        adapter_mb=_first(rec.adapter_mb for rec in recs),
        lr=_first(rec.lr for rec in recs),
    )


def one_per_seed(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """The usable records, the first (in record order: by trial number from the readers) of each
    configuration and seed: a point that two workers happened to both finish counts once, as in the ladder."""
    seen, out = set(), []
    for rec in records:
        key = rec.point
        if rec.usable and key not in seen:
            seen.add(key)
            out.append(rec)
    return out


def aggregate(records: Iterable[TrialRecord], confidence: float = 0.95,
              direction: str = "maximize") -> list[ConfigSummary]:
    """:func:`statistic` of each configuration, sorted by targets, rank, then tuned values."""
    groups: dict[tuple, list[TrialRecord]] = {}
    for rec in one_per_seed(records):
        groups.setdefault(config_key(rec), []).append(rec)
    order = sorted(groups, key=lambda p: (p.row, p.r, p.values))
    return [statistic(groups[p], confidence, direction) for p in order]
