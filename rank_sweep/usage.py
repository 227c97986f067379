"""What each command's ``--help`` prints before Hydra's list of config groups (``rank_sweep.cli`` prints it):
what the command does, its usage, the most used keys with an example each, and where the full reference is.

    rank-sweep --help
    rank-sweep-trial --help
    rank-sweep-select --help

tests/unit/test_cli_overrides.py checks that every example line's overrides are keys the command knows.
"""

_REFERENCE = ("Full reference: README.md (Commands, the ladder and its stopping rule), the YAML of conf/ (every key "
              "and its default), docs/bad_inputs.md (what each bad input gets).")
# Each command's --help: what it does, its usage, the most used keys with an example each; Hydra's groups follow.
HELP = {
    "rank-sweep": """\
rank-sweep: run (or resume) a LoRA rank sweep as an Optuna study. For each target set it trains rank 1, 2, 4, ...
while the dev score gains more than seed noise, stops at the plateau, then tries more matrices at a low rank, then
spends the plateau's parameter budget on other target sets (the allocation table); every trial is a Lightning run
logged to MLflow. Rerun the same command to resume: finished trials are not rerun.

usage: rank-sweep [key=value ...] [group=option ...]

  experiment=quickstart                    the whole recipe on SST-2 with MiniLM-L6 (about 11 min on 2 cores)
  task=mrpc                                the task (GLUE presets, or task=csv / task=jsonl with your files)
  model=roberta_base                       the model (or model.name_or_path=<hub id or folder>)
  search.target_sets=[[Wq],[Wq,Wv]]        one ladder per target set (roles Wq Wk Wv Wo Wup Wdown Wgate;
                                           groups attention qv mlp all_linear)
  search.allocation_budgets=[plateau,36864]  the allocation step's LoRA budgets (search.allocation_sets=[]: off)
  search.ladder=[1,4,16]                   the ranks (default: search.start_rank doubling to search.max_rank)
  search.seeds=3                           seeds per rung
  search=grid                              every rank x every target set (also: tpe, nested)
  search.budget.max_lora_params=50000      do not train rungs over this size
  trainer.epochs=3 trainer.lr=1e-3         training settings (trainer=gpu on a GPU)
  tracking.uri=sqlite:///mlflow.db         where runs are logged (then rank-sweep-select picks a configuration)
""",
    "rank-sweep-trial": """\
rank-sweep-trial: train one configuration (LoRA at one rank and target set, or a reference method) and log it
to MLflow; prints its dev score with its interval, the baseline, and its parameter counts.

usage: rank-sweep-trial [key=value ...] [group=option ...]

  task=sst2 lora.r=4 lora.targets=[Wq,Wv]  one LoRA trial
  lora.alpha_policy=rslora                 how alpha follows r: scaled (alpha = alpha_k * r), fixed, rslora
  method=ia3                               a reference method instead of LoRA (ia3, prompt_tuning, adalora, ...)
  task.max_train_samples=2000              subsample the training data
  trainer.epochs=3 trainer.lr=1e-3         training settings (trainer=gpu on a GPU)
  save_adapter=true                        keep the adapter under output_dir/adapters/<run id>/
  seed=1                                   the seed
""",
    "rank-sweep-select": """\
rank-sweep-select: pick the cheapest configuration of a finished study that is not shown worse than the best by
more than select.tolerance, within a budget; prints why, the runners-up and the Pareto front, and writes a preset
that retrains the choice (rank-sweep-trial --config-dir <out> experiment=selected_<study>).

usage: rank-sweep-select [key=value ...] [group=option ...]   (the same task/model/search keys as the sweep)

  experiment=quickstart                    find the study the quick start ran
  budget.max_lora_params=20000             the most LoRA parameters the choice may have (also max_rank, ...)
  select.tolerance=0.005                   how much worse than the best still counts as as good
  select.source=mlflow                     read the study from the MLflow store instead of its Optuna storage
  select.methods=[all]                     let reference methods be chosen too
""",
}



def usage(command: str) -> str:
    """The text ``command --help`` prints first."""
    return HELP[command] + "\n" + _REFERENCE + "\n"
