"""The select command: read a finished study, choose for a budget, explain, reproduce.

    rank-sweep-select task=mrpc budget.max_lora_params=50000 select.tolerance=0.005

Reads the study from its Optuna storage (the same default as ``rank-sweep``),
prints the choice with its reasons, the runners-up and the Pareto front, draws
the plots, and writes a Hydra experiment preset that retrains the choice:
``rank-sweep-trial --config-dir <printed dir> experiment=<printed name>``.
"""

from __future__ import annotations

import os

import optuna

from rank_sweep import plots, tracking
from rank_sweep.config import RunConfig
from rank_sweep.errors import RankSweepError
from rank_sweep.records import records_from_study
from rank_sweep.search import default_storage, open_storage, study_name
from rank_sweep.select import Budget, format_selection, select


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
    from dataclasses import asdict

    from omegaconf import OmegaConf

    from rank_sweep.search import trial_config

    run = trial_config(cfg, rec.targets, rec.r, rec.seed)
    if rec.lr is not None:
        run.trainer.lr = rec.lr
    tree = {k: v for k, v in asdict(run).items() if k in ("model", "task", "lora", "trainer", "seed")}
    head = f"# @package _global_\n# written by rank-sweep-select: trial {rec.number} ({rec.targets} r={rec.r})\n"
    return head + OmegaConf.to_yaml(OmegaConf.create(tree))


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
    # the preset goes in <out>/experiment/, a config group Hydra finds through --config-dir
    name = f"selected_{study.study_name}".replace("/", "_")
    os.makedirs(os.path.join(out, "experiment"), exist_ok=True)
    with open(os.path.join(out, "experiment", name + ".yaml"), "w") as f:
        f.write(experiment_yaml(cfg, best_trial))
    print(f"\nplots: {', '.join(str(p) for p in paths)}\n"
          f"retrain the choice: rank-sweep-trial --config-dir {os.path.abspath(out)} experiment={name}")
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if parent:
        try:
            client, _ = tracking.connect(cfg.tracking.resolved_uri(), cfg.tracking.experiment)
            for p in paths:
                client.log_artifact(parent, str(p), "select")
            client.set_tag(parent, "selected", f"{chosen.label} (trial {best_trial.number})")
        except RankSweepError as e:
            print(f"note: plots not logged to MLflow: {e}")
