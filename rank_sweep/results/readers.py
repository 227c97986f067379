"""Read a study into :class:`~rank_sweep.results.records.TrialRecord` lists: from its Optuna
storage, or from the MLflow store it logged to (the parent run and its child runs).

    study = optuna.load_study(study_name="...", storage="sqlite:///optuna.db")
    records = records_from_study(study)
    study = load_mlflow_study("sqlite:///mlflow.db", "quickstart")  # or records_from_mlflow(...)

Both read only; neither imports the training stack.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import optuna

from rank_sweep.config import sqlite_path
from rank_sweep.config.point import Point, decode
from rank_sweep.errors import RankSweepError, first_line, redact_text
from rank_sweep.results.records import UNKNOWN, TrialRecord

POINT_PARAMS = ("targets", "r", "seed")  # the point's row, rank, seed; any other Optuna param is Point.values


def _get(trial: optuna.trial.FrozenTrial, key: str) -> Any:
    return trial.params[key] if key in trial.params else trial.user_attrs.get(key)


def _opt(value: Any, kind: type) -> Any:
    return None if value is None else kind(value)


def _stored(trial: optuna.trial.FrozenTrial) -> tuple:
    """(row, r, seed, values) as an Optuna trial stores its point."""
    targets = _get(trial, "targets")
    if isinstance(targets, (list, tuple)):
        targets = ",".join(targets)
    r, seed = _get(trial, "r"), _get(trial, "seed")
    return ("" if targets is None else str(targets), UNKNOWN if r is None else int(r),
            UNKNOWN if seed is None else int(seed),
            tuple(sorted((k, float(v)) for k, v in trial.params.items() if k not in POINT_PARAMS)))


def decode_trial(trial: optuna.trial.FrozenTrial) -> Point:
    """The point an Optuna trial ran (:func:`rank_sweep.config.point.decode` of its stored form)."""
    return decode(*_stored(trial))


def records_from_study(study: optuna.Study, trials: list | None = None) -> list[TrialRecord]:
    """One record per trial of ``study`` (or of ``trials``, a snapshot of them), by trial number."""
    if len(study.directions) != 1:
        raise RankSweepError(
            f"the study has {len(study.directions)} objectives; rank_sweep reads single-objective studies"
        )
    records = []
    for t in sorted(study.get_trials(deepcopy=False) if trials is None else trials, key=lambda t: t.number):
        targets, r, seed, values = _stored(t)
        attrs = t.user_attrs
        records.append(
            TrialRecord(
                number=t.number,
                targets=targets,
                r=r,
                seed=seed,
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
                tuned=values,
                config=attrs.get("config"),
                score_ci_low=_opt(attrs.get("score_ci_low"), float),
                score_ci_high=_opt(attrs.get("score_ci_high"), float),
                nested=attrs.get("nested"),
                peak_memory_mb=_opt(attrs.get("peak_memory_mb"), float),
                adapter_mb=_opt(attrs.get("adapter_mb"), float),
            )
        )
    return records


# ---------------------------------------------------------------------------
# The same records read back from MLflow (a study's parent run and its child runs)
# ---------------------------------------------------------------------------

# MLflow run status -> the Optuna state name a record carries. A trial pruned by
# Optuna ends its run KILLED (rank_sweep.train.trial.run_trial); a killed worker's run
# stays RUNNING until the study runs again and closes it FAILED.
RUN_STATES = {"FINISHED": "COMPLETE", "FAILED": "FAIL", "KILLED": "PRUNED", "RUNNING": "RUNNING",
              "SCHEDULED": "WAITING"}

_TRIAL_NUMBER = re.compile(r"^trial (\d+):")  # run names the study gives: "trial 3: Wq,Wv r=4 seed=0"


@dataclass(frozen=True)
class MlflowStudy:
    """A study as the tracking store holds it: the parent run (tag ``kind=study``) and
    its child runs (tag ``kind=trial``) as records."""

    name: str  # the parent run's tag study_name
    run_id: str  # the parent run
    metric: str | None  # the name of ``score`` (the trials' tag score_metric / param metric)
    params: dict[str, str]  # the parent run's params (ladder, target_sets, seeds, budget, ...)
    tags: dict[str, str]  # the parent run's tags (decision, stop_reason, ...)
    records: list[TrialRecord]
    start_time: int | None = None  # the parent run's start, ms since the epoch


def _text(value: str | None) -> str | None:
    return None if value in (None, "", "None", "null") else value


def _num(value: Any, kind: type) -> Any:
    value = _text(value) if isinstance(value, str) else value
    if value is None:
        return None
    try:
        return kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        return None


def record_from_run(run: Any, number: int, intermediate: Iterable[float] = ()) -> TrialRecord:
    """One trial's record from its MLflow child run (an ``mlflow.entities.Run``): params
    ``targets``, ``r``, ``seed``, ``alpha``, ``lr``; metrics ``score``, ``lora_params``,
    ``trainable_params``, ``train_seconds``, ``baseline_score``, ``not_learning``; the
    run status as the state. ``intermediate``: the validation score per epoch."""
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    r, seed = _num(params.get("r"), int), _num(params.get("seed"), int)
    not_learning = metrics.get("not_learning")
    return TrialRecord(
        number=number,
        targets=_text(params.get("targets")) or "",
        r=UNKNOWN if r is None else r,
        seed=UNKNOWN if seed is None else seed,
        state=RUN_STATES.get(run.info.status, run.info.status),
        score=_num(metrics.get("score"), float),
        lora_params=_num(metrics.get("lora_params"), int),
        trainable_params=_num(metrics.get("trainable_params"), int),
        train_seconds=_num(metrics.get("train_seconds"), float),
        not_learning=bool(not_learning) if not_learning is not None else tags.get("not_learning") == "true",
        baseline_score=_num(metrics.get("baseline_score"), float),
        alpha=_num(params.get("alpha"), float),
        lr=_num(params.get("lr"), float),
        run_id=run.info.run_id,
        intermediate=tuple(float(v) for v in intermediate),
        tuned=tuple(sorted((k, float(v)) for k, v in json.loads(tags.get("tuned") or "{}").items())),
        score_ci_low=_num(metrics.get("score_ci_low"), float),
        score_ci_high=_num(metrics.get("score_ci_high"), float),
        nested=_nested(metrics),
        peak_memory_mb=_num(metrics.get("peak_memory_mb"), float),
        adapter_mb=_num(metrics.get("adapter_mb"), float),
    )


_NESTED = re.compile(r"^nested/r(\d+)/score$")


def _nested(metrics: dict) -> dict | None:
    """A nested-rank screen's per-rank scores from its run's metrics ``nested/r<rank>/score`` (and intervals)."""
    out = {}
    for key, value in metrics.items():
        m = _NESTED.match(key)
        if m:
            b = m.group(1)
            out[b] = [value, metrics.get(f"nested/r{b}/score_ci_low"), metrics.get(f"nested/r{b}/score_ci_high"),
                      bool(metrics.get(f"nested/r{b}/not_learning", 0.0))]
    return out or None


def trial_number(run: Any) -> int | None:
    """The Optuna trial number of a child run: its tag ``optuna_trial``, else read from the run
    name the study gives (``trial 3: Wq,Wv r=4 seed=0``); None for a run named otherwise."""
    tag = run.data.tags.get("optuna_trial")
    if tag is not None and str(tag).isdigit():
        return int(tag)
    m = _TRIAL_NUMBER.match(run.info.run_name or "")
    return int(m.group(1)) if m else None


def _search_all(client: Any, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def load_mlflow_study(tracking_uri: str, study_name: str | None = None, experiment: str = "rank_sweep",
                      history: bool = True) -> MlflowStudy:
    """Read one study from an MLflow tracking store, never writing to it.

    ``study_name``: the parent run's tag ``study_name``; ``None`` takes the study whose
    parent run started last. If several parent runs carry the name (the Optuna storage
    was deleted and the study run again), the latest one is read. ``history``: also read
    each trial's validation score per epoch (``val/<metric>``, one query per trial), for
    :func:`rank_sweep.analysis.plots.plot_learning_curves`.
    """
    from mlflow.tracking import MlflowClient

    db = sqlite_path(tracking_uri)
    if db is not None and not os.path.exists(db):
        raise RankSweepError(f"no MLflow tracking store at {os.path.abspath(db)} (from {redact_text(tracking_uri)!r}): "
                             f"run rank-sweep first, or give the URI of the store it logged to")
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        exp = client.get_experiment_by_name(experiment)
    except Exception as e:  # bad scheme, unreachable server, unreadable file
        raise RankSweepError(
            f"cannot read the MLflow tracking store {redact_text(tracking_uri)!r}: {first_line(e)[:200]}"
        ) from None
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise RankSweepError(f"no experiment {experiment!r} in {redact_text(tracking_uri)}: experiments there are "
                             f"{', '.join(names) or '(none)'}")
    parents = _search_all(client, exp.experiment_id, "tags.kind = 'study'")
    names = list(dict.fromkeys(p.data.tags.get("study_name", "") for p in parents))
    if study_name is not None:
        parents = [p for p in parents if p.data.tags.get("study_name") == study_name]
    if not parents:
        which = "" if study_name is None else f" named {study_name!r}"
        raise RankSweepError(f"no study{which} in experiment {experiment!r} of {redact_text(tracking_uri)}: "
                             f"studies there are {', '.join(names) or '(none): run rank-sweep first'}")
    parent = max(parents, key=lambda p: p.info.start_time or 0)
    metric, records = _child_records(client, exp.experiment_id, parent.info.run_id, history)
    return MlflowStudy(
        name=parent.data.tags.get("study_name", ""),
        run_id=parent.info.run_id,
        metric=metric,
        params=dict(parent.data.params),
        tags={k: v for k, v in parent.data.tags.items() if not k.startswith("mlflow.")},
        records=sorted(records, key=lambda rec: rec.number),
        start_time=parent.info.start_time,
    )


def _child_records(client: Any, experiment_id: str, parent_run_id: str, history: bool) -> tuple[str | None, list]:
    """The score metric's name and one record per child trial run of ``parent_run_id``."""
    children = _search_all(client, experiment_id,
                           f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.kind = 'trial'")
    metric = next((c.data.tags.get("score_metric") or c.data.params.get("metric") for c in children
                   if c.data.tags.get("score_metric") or c.data.params.get("metric")), None)
    numbered = [(trial_number(c), c) for c in children]
    taken = {n for n, _ in numbered if n is not None}
    spare = (n for n in range(max(taken, default=-1) + 1, 10**9))  # no number: after the study's, by start
    records = []
    for number, run in numbered:
        curve: list[float] = []
        key = f"val/{run.data.tags.get('score_metric') or run.data.params.get('metric') or metric}"
        if history and key in run.data.metrics:
            curve = [h.value for h in sorted(client.get_metric_history(run.info.run_id, key), key=lambda h: h.step)]
        records.append(record_from_run(run, next(spare) if number is None else number, curve))
    return metric, records


def records_from_mlflow(tracking_uri: str, study_name: str | None = None,
                        experiment: str = "rank_sweep", history: bool = True) -> list[TrialRecord]:
    """The records of one study read from MLflow, by trial number: what
    :func:`records_from_study` gives from the Optuna storage, for every trial that
    started its run. See :func:`load_mlflow_study`."""
    return load_mlflow_study(tracking_uri, study_name, experiment, history).records
