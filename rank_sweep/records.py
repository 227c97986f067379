"""Read a finished (or running) Optuna study into plain records, one per trial.

Everything downstream (``select``, ``plots``, the CLI) works on these records,
never on Optuna objects, so it can be tested on hand-made lists::

    study = optuna.load_study(study_name="...", storage="sqlite:///optuna.db")
    summaries = aggregate(records_from_study(study))

A trial that failed before its parameters were set (Optuna FAIL trials often
have none) keeps ``targets=""``, ``r=-1``, ``seed=-1``: it is still counted, so
"all N trials failed" can say how many.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import optuna

from rank_sweep.errors import RankSweepError

UNKNOWN = -1  # r or seed of a trial that never got its parameters
FULL = "full"  # the targets of a full fine-tuning trial (r=0)


@dataclass(frozen=True)
class TrialRecord:
    """One trial: its configuration, outcome and cost, as the study stored them."""

    number: int
    targets: str  # roles joined by commas ("Wq,Wv"), or "full" for full fine-tuning
    r: int  # 0 for full fine-tuning
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
    intermediate: tuple[float, ...] = ()  # validation score per epoch

    @property
    def usable(self) -> bool:
        """COMPLETE with a finite score: the only trials that count in a summary."""
        return self.state == "COMPLETE" and self.score is not None and math.isfinite(self.score)


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

    @property
    def label(self) -> str:
        """How plots and reports name a configuration: ``Wq,Wv r=4`` or ``full``."""
        return self.targets if self.targets == FULL or self.r == 0 else f"{self.targets} r={self.r}"


def _get(trial: optuna.trial.FrozenTrial, key: str) -> Any:
    return trial.params[key] if key in trial.params else trial.user_attrs.get(key)


def _opt(value: Any, kind: type) -> Any:
    return None if value is None else kind(value)


def records_from_study(study: optuna.Study) -> list[TrialRecord]:
    """One record per trial of ``study``, by trial number."""
    if len(study.directions) != 1:
        raise RankSweepError(
            f"the study has {len(study.directions)} objectives; rank_sweep reads single-objective studies"
        )
    records = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        targets = _get(t, "targets")
        if isinstance(targets, (list, tuple)):
            targets = ",".join(targets)
        attrs = t.user_attrs
        r, seed = _get(t, "r"), _get(t, "seed")
        records.append(
            TrialRecord(
                number=t.number,
                targets="" if targets is None else str(targets),
                r=UNKNOWN if r is None else int(r),
                seed=UNKNOWN if seed is None else int(seed),
                state=t.state.name,
                score=_opt(t.values[0] if t.values else None, float),
                lora_params=_opt(attrs.get("lora_params"), int),
                trainable_params=_opt(attrs.get("trainable_params"), int),
                train_seconds=_opt(attrs.get("train_seconds"), float),
                not_learning=bool(attrs.get("not_learning", False)),
                baseline_score=_opt(attrs.get("baseline_score"), float),
                alpha=_opt(attrs.get("alpha"), float),
                lr=_opt(attrs.get("lr"), float),
                run_id=_opt(attrs.get("mlflow_run_id"), str),
                intermediate=tuple(float(v) for _, v in sorted(t.intermediate_values.items())),
            )
        )
    return records


def _first(values: Iterable[Any]) -> Any:
    # Seeds of one configuration have the same parameter counts; if a log
    # disagrees, the largest is the one a budget must respect.
    present = [v for v in values if v is not None]
    return max(present) if present else None


def aggregate(records: Iterable[TrialRecord]) -> list[ConfigSummary]:
    """Pool the usable seeds of each (targets, r), sorted by targets then rank."""
    groups: dict[tuple[str, int], list[TrialRecord]] = {}
    for rec in records:
        if rec.usable:
            groups.setdefault((rec.targets, rec.r), []).append(rec)
    out = []
    for (targets, r), recs in sorted(groups.items()):
        scores = [rec.score for rec in recs]
        seconds = [rec.train_seconds for rec in recs if rec.train_seconds is not None]
        n_bad = sum(rec.not_learning for rec in recs)
        out.append(
            ConfigSummary(
                targets=targets,
                r=r,
                n=len(recs),
                mean=statistics.fmean(scores),
                std=statistics.stdev(scores) if len(scores) > 1 else 0.0,
                lora_params=_first(rec.lora_params for rec in recs),
                trainable_params=_first(rec.trainable_params for rec in recs),
                train_seconds=statistics.fmean(seconds) if seconds else None,
                not_learning=n_bad == len(recs),
                numbers=tuple(rec.number for rec in recs),
                n_not_learning=n_bad,
            )
        )
    return out
