"""The select command: read a finished study, choose for a budget, explain, reproduce.

    rank-sweep-select task=mrpc budget.max_lora_params=50000 select.tolerance=0.005
    rank-sweep-select task=mrpc select.source=mlflow    # only the MLflow store is at hand

Reads the study from its Optuna storage (``select.source=study``, the default; the
same storage as ``rank-sweep``), from the MLflow tracking store it logged to
(``select.source=mlflow``: the parent run tagged ``kind=study`` and its child runs,
e.g. a store copied from a cluster without the Optuna database), or from the
storage if the study is there and else from MLflow (``select.source=auto``). The
output does not depend on the source: it prints the choice with its reasons, the
runners-up and the Pareto front, draws the plots, writes a Hydra experiment preset
that retrains the choice (``rank-sweep-trial --config-dir <printed dir>
experiment=<printed name>``), and copies the chosen trial's adapter next to it if
the study kept it (``save_adapter=true``), else says how to get it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field

import optuna

from rank_sweep import tracking
from rank_sweep.analysis import plots
from rank_sweep.config import (
    SOURCES,
    TRIAL_SECTIONS,
    RunConfig,
    SelectConfig,
    build,
    build_budget,
    one_of,
    sqlite_path,
    trial_config,
)
from rank_sweep.errors import RankSweepError, first_line
from rank_sweep.results import holdout
from rank_sweep.results.finished import StudyRecords, from_mlflow, summary_comparer
from rank_sweep.results.readers import records_from_study
from rank_sweep.results.records import TrialRecord, config_key
from rank_sweep.results.select_page import select_page
from rank_sweep.results.selection import Selection, select
from rank_sweep.results.tables import format_selection
from rank_sweep.study.storage import open_storage

__all__ = ["SOURCES", "choose", "read_study", "adapter_dir", "Choice"]


class StudyNotFound(RankSweepError):
    """The study storage has no such study (or no storage file at all): ``auto`` then tries MLflow."""


@dataclass
class Choice:
    """What :func:`choose` printed and wrote."""

    study: StudyRecords
    selection: Selection
    trial: TrialRecord  # the chosen configuration's best seed: what the preset retrains
    output_dir: str
    preset: str  # the written experiment file
    plots: list[str]
    adapter: str | None  # <output_dir>/adapter when the trial's adapter was kept, else None
    report: str  # the printed text
    held: dict = field(default_factory=dict)  # label -> HeldOut of the choice and the runners-up (report only)


def load_study(cfg: RunConfig, name: str | None = None) -> optuna.Study:
    """The study from its Optuna storage; :class:`StudyNotFound` if it is not there (a missing
    sqlite file is not created)."""
    url = cfg.storage_url()
    name = name or cfg.study_name()
    db = sqlite_path(url)
    if db is not None and not os.path.exists(db):
        raise StudyNotFound(f"no study named {name!r}: no study storage at {os.path.abspath(db)} "
                            f"(from {tracking.redact(url)!r})")
    storage = open_storage(url)
    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        raise StudyNotFound(
            f"no study named {name!r} in {tracking.redact(url)}: studies there are {', '.join(names) or '(none)'}"
        )
    return optuna.load_study(study_name=name, storage=storage)


def from_storage(cfg: RunConfig, name: str) -> StudyRecords:
    study = load_study(cfg, name)
    return StudyRecords(study.study_name, records_from_study(study), study.direction.name.lower(),
                        study.user_attrs.get("mlflow_parent_run_id"),
                        f"study storage {tracking.redact(cfg.storage_url())}")


def read_study(cfg: RunConfig, source: str, name: str | None = None) -> StudyRecords:
    """The study's records from ``source`` (one of :data:`SOURCES`); one-line errors if it is absent or empty."""
    one_of("select.source", source, SOURCES)
    name = name or cfg.study_name()
    if source == "mlflow":
        study = from_mlflow(cfg, name)
    else:
        try:
            study = from_storage(cfg, name)
        except StudyNotFound as e:
            if source == "study":
                raise StudyNotFound(f"{e} (to read it from the MLflow store instead: select.source=mlflow)") from None
            try:
                study = from_mlflow(cfg, name)
            except RankSweepError as e2:
                raise RankSweepError(f"{e}; nor in MLflow: {e2}") from None
    if not study.records:
        raise RankSweepError(f"the study {study.name!r} has no trials ({study.where})")
    return study


def trial_config_of(cfg: RunConfig, rec: TrialRecord) -> tuple[dict, str]:
    """The chosen trial's own resolved config (its :data:`TRIAL_SECTIONS`) and where it was read: the study
    storage, else the trial's MLflow artifact ``config.json``; for a study older than both, rebuilt from this
    command's config with the trial's point and lr (said so in the preset)."""
    if rec.config:
        return {k: rec.config[k] for k in TRIAL_SECTIONS if k in rec.config}, "the trial's stored config"
    why = "the trial has no MLflow run"
    if rec.run_id:
        from mlflow.tracking import MlflowClient

        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = MlflowClient(cfg.tracking.resolved_uri()).download_artifacts(rec.run_id, "config.json", tmp)
                with open(path) as f:
                    data = json.load(f)
            # the same config as the storage's copy (both written by the trial): said alike, so either source reads
            return {k: data[k] for k in TRIAL_SECTIONS if k in data}, "the trial's stored config"
        except Exception as e:  # an old run without it, or a store whose artifacts are not here
            why = f"its config.json could not be read ({first_line(e)[:120]})"
    run = trial_config(cfg, rec.point)
    if rec.lr is not None:
        run.trainer.lr = rec.lr
    tree = {k: v for k, v in asdict(run).items() if k in TRIAL_SECTIONS}
    return tree, f"this command's config with the trial's point and lr ({why})"


def experiment_yaml(cfg: RunConfig, rec: TrialRecord) -> tuple[str, str]:
    """A ``# @package _global_`` preset that retrains the chosen trial as it ran, and where its values came from."""
    from omegaconf import OmegaConf

    tree, source = trial_config_of(cfg, rec)
    head = (f"# @package _global_\n# written by rank-sweep-select: trial {rec.number} ({rec.targets} r={rec.r}), "
            f"from {source}\n")
    return head + OmegaConf.to_yaml(OmegaConf.create(tree)), source


def adapter_dir(output_dir: str, run_id: str) -> str:
    """Where ``save_adapter=true`` leaves a trial's PEFT adapter (rank_sweep.train.trial.run_trial)."""
    return os.path.join(output_dir, "adapters", run_id, "adapter")


def _mlflow_adapter(cfg: RunConfig, run_id: str, dest: str) -> tuple[bool, bool | None, str | None]:
    """Download the run's ``adapter/`` artifact to ``dest``: ``(copied, logged, error)``. ``logged`` says the
    run recorded an export (None: the store could not say); ``error`` is the first line of what failed, so a
    store that does not answer is not reported as a study that kept no adapter."""
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = None
    try:
        client = MlflowClient(tracking_uri=cfg.tracking.resolved_uri())
        if client.list_artifacts(run_id, "adapter"):
            with tempfile.TemporaryDirectory(dir=os.path.dirname(dest)) as tmp:
                shutil.move(client.download_artifacts(run_id, "adapter", tmp), dest)
            return True, True, None
        return False, any(k.startswith("export/") for k in client.get_run(run_id).data.metrics), None
    except Exception as e:
        try:
            logged = any(k.startswith("export/") for k in client.get_run(run_id).data.metrics) if client else None
        except Exception:
            logged = None
        return False, logged, first_line(e)[:200]


def save_chosen_adapter(cfg: RunConfig, rec: TrialRecord, out: str, retrain: str) -> tuple[str | None, str]:
    """Copy the trial's adapter to ``<out>/adapter`` from ``<output_dir>/adapters/<run id>/`` or its MLflow
    artifact ``adapter/``; return the copy (None if the study did not keep it) and the line to print."""
    dest = os.path.join(out, "adapter")
    if os.path.isdir(dest):  # a previous choice's adapter must not pass for this one
        shutil.rmtree(dest)
    if rec.run_id:
        local = adapter_dir(cfg.output_dir, rec.run_id)
        if os.path.isfile(os.path.join(local, "adapter_config.json")):
            shutil.copytree(local, dest)
            return dest, f"adapter of trial {rec.number}: {os.path.abspath(dest)} (copied from {local})"
        copied, logged, error = _mlflow_adapter(cfg, rec.run_id, dest)
        if copied:
            return dest, (f"adapter of trial {rec.number}: {os.path.abspath(dest)} "
                          f"(from MLflow run {rec.run_id}, artifact adapter/)")
        if logged:
            why = (f"trial {rec.number} saved an adapter, but neither {local} nor the MLflow artifact adapter/ of "
                   f"run {rec.run_id} is readable here (copy the study's output_dir or its MLflow artifacts here)"
                   + (f"; the store said: {error}" if error else ""))
        elif error is not None:
            why = (f"the MLflow store could not be read about trial {rec.number}'s adapter ({error}); if the study "
                   f"kept it, it is in {local} or the artifact adapter/ of run {rec.run_id}")
        else:
            why = f"trial {rec.number} kept no adapter (the study ran with save_adapter=false)"
    else:
        why = f"trial {rec.number} has no MLflow run, so no adapter"
    return None, f"adapter: {why}; to get it: {retrain} save_adapter=true"


def choose(cfg: RunConfig, select_cfg: SelectConfig | dict | None = None, budget_cfg=None) -> Choice:
    """The select command (``rank-sweep-select``): read, choose, print, plot, write the preset, copy the adapter.
    ``select_cfg``/``budget_cfg``: the ``select.*`` and ``budget.*`` config (dataclasses or mappings)."""
    if not isinstance(select_cfg, SelectConfig):
        select_cfg = build(SelectConfig, {k: v for k, v in dict(select_cfg or {}).items() if v is not None}, "select")
    budget = budget_cfg if not isinstance(budget_cfg, dict | None) else build_budget(budget_cfg, "budget")
    study = read_study(cfg, select_cfg.source, select_cfg.study_name)
    records, direction = study.records, study.direction
    compare = summary_comparer(cfg, study)
    selection = select(records, budget, float(select_cfg.tolerance), direction, compare,
                       cfg.search.confidence, select_cfg.methods)
    # the choice is made: only now are the held-out outputs read, for the report
    runners = [s for s, _ in selection.runners_up]
    held = holdout.held_out([selection.chosen, *runners], records, holdout.holdout_reader(compare.comparer),
                            selection.chosen)
    chosen_text = "\n".join([format_selection(selection), "",
                             *holdout.selection_lines(selection.chosen, runners, held, cfg.search.confidence,
                                                      holdout.source_line(held, [selection.chosen], records,
                                                                          compare.comparer))])
    report = [f"study {study.name}: {len(records)} trials read from {study.where}", "", chosen_text]
    print("\n".join(report), flush=True)
    out = os.path.join(select_cfg.output_dir or cfg.output_dir, "select", study.name)
    os.makedirs(out, exist_ok=True)
    summaries = [s for s, _ in selection.runners_up] + [selection.chosen]
    paths = [plots.plot_rank_curves(summaries, os.path.join(out, "rank_curves.png"), cfg.task.metric, held),
             plots.plot_pareto(summaries, os.path.join(out, "pareto.png"), cfg.task.metric, front=selection.pareto,
                               direction=direction),
             plots.plot_learning_curves(records, os.path.join(out, "learning_curves.png"), cfg.task.metric)]
    chosen = selection.chosen
    best_trial = max((r for r in records if r.usable and config_key(r) == chosen.config),
                     key=lambda r: r.score if direction == "maximize" else -r.score)
    # the preset goes in <out>/experiment/, a config group Hydra finds through --config-dir
    name = f"selected_{study.name}".replace("/", "_")
    os.makedirs(os.path.join(out, "experiment"), exist_ok=True)
    preset = os.path.join(out, "experiment", name + ".yaml")
    with open(preset, "w") as f:
        text, source = experiment_yaml(cfg, best_trial)
        f.write(text)
    retrain = f"rank-sweep-trial --config-dir {os.path.abspath(out)} experiment={name}"
    retrain_note = f"preset {preset}: trial {best_trial.number} as it ran, from {source}"
    adapter, adapter_line = save_chosen_adapter(cfg, best_trial, out, retrain)
    tail = [f"plots: {', '.join(str(p) for p in paths)}", retrain_note, f"retrain the choice: {retrain}", adapter_line]
    page = None
    if select_cfg.report:
        page = select_page(cfg, study.name, study.parent_run_id, study.where, chosen_text, paths, out, retrain)
        tail.insert(1, f"report: {page}")
    print("\n" + "\n".join(tail), flush=True)
    report += [""] + tail
    if study.parent_run_id:
        try:
            client, _ = tracking.connect(cfg.tracking.resolved_uri(), cfg.tracking.experiment)
            for p in paths + ([page] if page else []):
                client.log_artifact(study.parent_run_id, str(p), "select")
            client.set_tag(study.parent_run_id, "selected", f"{chosen.label} (trial {best_trial.number})")
            tracking.log(client, study.parent_run_id, metrics=holdout.metrics(chosen, held))
        except Exception as e:  # e.g. a store copied from a cluster, whose artifact folder is not here
            note = f"note: plots not logged to MLflow: {first_line(e)[:200]}"
            print(note)
            report.append(note)
    return Choice(study, selection, best_trial, out, preset, [str(p) for p in paths], adapter, "\n".join(report),
                  held)
