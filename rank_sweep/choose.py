"""The select command: read a finished study, choose for a budget, explain, reproduce.

    rank-sweep-select task=mrpc budget.max_lora_params=50000 select.tolerance=0.005

Reads the study from its Optuna storage (the same default as ``rank-sweep``),
prints the choice with its reasons, the runners-up and the Pareto front, draws
the plots, and writes a Hydra experiment preset that retrains the choice:
``rank-sweep-trial experiment=<printed name>``.
"""

from __future__ import annotations

import os

import optuna

from rank_sweep import plots, tracking
from rank_sweep.config import RunConfig
from rank_sweep.errors import RankSweepError
from rank_sweep.records import FULL, records_from_study
from rank_sweep.search import default_storage, open_storage, study_name
from rank_sweep.select import Budget, format_selection, select

EXPERIMENT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", "experiment")


def load_study(cfg: RunConfig, name: str | None = None) -> optuna.Study:
    url = cfg.search.storage or default_storage(cfg)
    name = name or study_name(cfg)
    storage = open_storage(url)
    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        raise RankSweepError(
            f"no study named {name!r} in {tracking.redact(url)}: studies there are {', '.join(names) or '(none)'}"
        )
    return optuna.load_study(study_name=name, storage=storage)


def experiment_yaml(cfg: RunConfig, rec) -> str:
    """A ``# @package _global_`` preset that sets everything the chosen trial depended on."""
    lines = ["# @package _global_", f"# written by rank-sweep-select: trial {rec.number} of the study", "defaults:",
             f"  - override /task: {cfg.task.name}", "", f"seed: {rec.seed}", "model:",
             f"  name: {cfg.model.name}", f"  name_or_path: {cfg.model.name_or_path}", "lora:"]
    if rec.targets == FULL:
        lines.append("  full_finetune: true")
    else:
        lines += [f"  r: {rec.r}", f"  targets: [{rec.targets}]", f"  alpha_policy: {cfg.lora.alpha_policy}",
                  f"  alpha: {cfg.lora.alpha}", f"  alpha_k: {cfg.lora.alpha_k}", f"  dropout: {cfg.lora.dropout}"]
    lr = rec.lr if rec.lr is not None else cfg.trainer.lr
    lines += ["trainer:", f"  lr: {lr}", f"  epochs: {cfg.trainer.epochs}", f"  batch_size: {cfg.trainer.batch_size}",
              "task:", f"  max_seq_length: {cfg.task.max_seq_length}",
              f"  max_train_samples: {'null' if cfg.task.max_train_samples is None else cfg.task.max_train_samples}"]
    return "\n".join(lines) + "\n"


def choose(cfg: RunConfig, select_cfg, budget_cfg) -> None:
    select_cfg = dict(select_cfg or {})
    budget = Budget(**{k: v for k, v in dict(budget_cfg or {}).items() if v is not None})
    study = load_study(cfg, select_cfg.get("study_name"))
    records = records_from_study(study)
    direction = study.direction.name.lower()
    selection = select(records, budget, float(select_cfg.get("tolerance", 0.005)), direction)
    print(format_selection(selection))
    out = os.path.join(select_cfg.get("output_dir") or cfg.output_dir, "select", study.study_name)
    os.makedirs(out, exist_ok=True)
    summaries = [s for s, _ in selection.runners_up] + [selection.chosen]
    paths = [plots.plot_rank_curves(summaries, os.path.join(out, "rank_curves.png"), cfg.task.metric),
             plots.plot_pareto(summaries, os.path.join(out, "pareto.png"), cfg.task.metric, front=selection.pareto,
                               direction=direction),
             plots.plot_learning_curves(records, os.path.join(out, "learning_curves.png"), cfg.task.metric)]
    chosen = selection.chosen
    best_trial = max((r for r in records if r.usable and r.targets == chosen.targets and r.r == chosen.r),
                     key=lambda r: r.score if direction == "maximize" else -r.score)
    name = f"selected_{study.study_name}".replace("/", "_")
    os.makedirs(EXPERIMENT_DIR, exist_ok=True)
    with open(os.path.join(EXPERIMENT_DIR, name + ".yaml"), "w") as f:
        f.write(experiment_yaml(cfg, best_trial))
    print(f"\nplots: {', '.join(str(p) for p in paths)}\nretrain the choice: rank-sweep-trial experiment={name}")
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if parent:
        try:
            client, _ = tracking.connect(cfg.tracking.resolved_uri(), cfg.tracking.experiment)
            for p in paths:
                client.log_artifact(parent, str(p), "select")
            client.set_tag(parent, "selected", f"{chosen.label} (trial {best_trial.number})")
        except RankSweepError as e:
            print(f"note: plots not logged to MLflow: {e}")
