"""A finished study as its readers need it, whichever store it was read from: its records and direction
(:class:`StudyRecords`), read from MLflow (:func:`from_mlflow`; the Optuna storage is read by the select command,
:mod:`rank_sweep.commands.select`), and the one factory of its paired comparer (:func:`study_comparer`,
:func:`summary_comparer`), used by the select command, the study's report page and the experiments' tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from rank_sweep.config import METRIC_DIRECTIONS, RunConfig
from rank_sweep.errors import redact
from rank_sweep.results.compare import PairedComparer
from rank_sweep.results.readers import load_mlflow_study
from rank_sweep.results.records import TrialRecord


@dataclass
class StudyRecords:
    """A finished study as the select command needs it, whichever store it was read from."""

    name: str
    records: list[TrialRecord]
    direction: str
    parent_run_id: str | None  # the study's MLflow parent run, for the select artifacts
    where: str  # printed: the store it was read from


def from_mlflow(cfg: RunConfig, name: str) -> StudyRecords:
    uri = cfg.tracking.resolved_uri()
    study = load_mlflow_study(uri, name, cfg.tracking.experiment, history=True)
    # the direction the study ran with (its parent run's param), else the one its metric implies
    direction = study.params.get("direction") or METRIC_DIRECTIONS.get(study.metric, "maximize")
    return StudyRecords(study.name, study.records, direction, study.run_id,
                        f"MLflow {redact(uri)} (parent run {study.run_id})")


def study_comparer(cfg: RunConfig, study: StudyRecords) -> PairedComparer:
    """The paired comparer of a finished study's trials, on the metric they were scored with (their stored config,
    else this command's task), reading this command's output folder and tracking store."""
    task = next((r.config["task"] for r in study.records if r.config and "task" in r.config), None)
    metric = task["metric"] if task else cfg.task.metric
    regression = task["labels"] is None if task else cfg.task.is_regression
    labels = 1 if regression else (len(task["labels"]) if task else cfg.task.num_labels)
    return PairedComparer(metric, regression, labels, study.direction, cfg.output_dir, cfg.tracking.resolved_uri(),
                          cfg.search.confidence)


def summary_comparer(cfg: RunConfig, study: StudyRecords):
    """compare(summary a, summary b) -> paired Interval of b - a from the trials' per-example predictions
    (:func:`study_comparer`)."""
    by_number = {r.number: r for r in study.records}
    comparer = study_comparer(cfg, study)

    def compare(a, b):
        return comparer([by_number[n] for n in a.numbers], [by_number[n] for n in b.numbers])

    compare.comparer = comparer  # its metric and stores: the held-out report reads with the same settings
    return compare
