"""Command-line entry points, one function per command (Hydra composes ``conf/``).

    rank-sweep experiment=quickstart          # the recipe as an Optuna study
    rank-sweep-trial task=sst2 lora.r=4 lora.targets=[Wq,Wv]
    rank-sweep-trial task=sst2 method=adalora method.settings.target_r=4   # a reference method (conf/method/)
    rank-sweep-select task=mrpc budget.max_lora_params=50000 select.tolerance=0.005

User errors (bad config values, data, targets, stores) print one line on
stderr and exit with status 2, before any training starts. The command line is checked before Hydra
runs (:func:`rank_sweep.commands.overrides.check_overrides`): a mistyped key is such an error, naming the
closest valid key, and the common Lightning / Hugging Face / PEFT names in
:data:`rank_sweep.commands.overrides.ALIASES` are read as ours.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

import hydra
from omegaconf import DictConfig, OmegaConf

from rank_sweep import interrupts
from rank_sweep.commands.overrides import check_overrides, parse_argv
from rank_sweep.config import CONF_DIR, build_config  # conf/ in the wheel, or at the top of an editable checkout
from rank_sweep.errors import RankSweepError, TrialsFailed, redact_text
from rank_sweep.usage import usage


@contextlib.contextmanager
def user_errors():
    """Turn a RankSweepError into one line on stderr and exit status 2 (1: a study whose trials kept failing)."""
    try:
        yield
    except RankSweepError as e:
        print(f"rank-sweep: error: {redact_text(str(e))}", file=sys.stderr, flush=True)
        sys.exit(1 if isinstance(e, TrialsFailed) else 2)


def _pre_parse(config_name: str, command: str = "rank-sweep") -> None:
    """Check sys.argv before Hydra parses it: rewrite aliases (a note each), exit 2 on an unknown key; with
    ``--help``, print the command's own text first (Hydra's list of groups follows)."""
    argv = parse_argv(sys.argv[1:])
    if argv is not None and argv.help:
        print(usage(command), flush=True)
    with user_errors():
        args, notes = check_overrides(sys.argv[1:], config_name)
    for note in notes:
        print(f"rank-sweep: note: {note}", file=sys.stderr, flush=True)
    sys.argv[1:] = args


def quiet_libraries(training: bool = True) -> None:
    """Keep the console to Lightning's bar and our lines; the rest goes to logs. ``training=False`` (the
    select command) quiets only what it imports: no torch, Lightning or transformers is loaded for it."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*(is an experimental feature|does not have many workers).*")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # at import it warns that a CPU kernel is not on the hub
    warnings.filterwarnings("ignore", message=".*Precision bf16-mixed is not supported.*")
    try:
        import mlflow  # noqa: F401
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if training:
            import datasets
            import lightning.pytorch  # noqa: F401  (sets its loggers to INFO on import: import first, then quiet)
            import transformers

            transformers.logging.set_verbosity_error()
            datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "optuna", "alembic", "datasets", "peft",
                 "mlflow", "mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _trial(cfg: DictConfig) -> float:
    """Train and record one trial (LoRA, or a reference method: ``method=ia3``); print its score and counts."""
    with interrupts.handled("rank-sweep-trial", "its MLflow run is closed as FAILED"), user_errors():
        run = build_config(cfg)  # the config is checked before the training stack is imported: an error in ~1 s
        quiet_libraries()
        from rank_sweep.train.trial import run_trial

        result = run_trial(run, learn_margin=run.search.learn_margin)
        c = result.counts
        print(f"score ({result.metric}) = {result.score:.4f}"
            + (f" [{result.score_ci[0]:.4f}, {result.score_ci[1]:.4f}] ({run.search.confidence:.0%} over dev examples)"
               if result.score_ci else "")
            + f"  baseline {result.baseline_score:.4f}"
            f"{'  NOT LEARNING' if result.not_learning else ''}\n"
            + (f"held-out ({result.metric}, report only) = {result.holdout['holdout_score']:.4f} "
               f"[{result.holdout['holdout_ci_low']:.4f}, {result.holdout['holdout_ci_high']:.4f}] on "
               f"{result.holdout['holdout_size']:.0f} examples\n" if result.holdout else "")
            + f"lora_params {c.lora_params:,}  head_params {c.head_params:,}  trainable_params "
            f"{c.trainable_params:,}  total_params {c.total_params:,}  trainable {c.trainable_pct:.3f}%\n"
            f"train {result.train_seconds:.1f}s  mlflow run {result.run_id}",
            flush=True,
        )
        interrupts.release()  # a signal while the trial was recorded: it is recorded, now exit 130 / 143
        return result.score


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _sweep(cfg: DictConfig) -> None:
    """Run (or resume) the study that walks the rank ladder."""
    with interrupts.handled("rank-sweep", "finished trials are kept, the one training is FAIL in the study and FAILED "
                            "in MLflow; rerun the same command to resume"), user_errors():
        run = build_config(cfg)  # checked before the training stack is imported
        quiet_libraries()
        from rank_sweep.study.run import run_study

        run_study(run)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="select")
def _select(cfg: DictConfig) -> None:
    """Pick the best configuration of a finished study for a budget."""
    with user_errors():
        from rank_sweep.config import SelectConfig, build, build_budget
        tree = OmegaConf.to_container(cfg, resolve=True)
        sweep = {k: v for k, v in tree.items() if k not in ("select", "budget")}  # the sweep's config finds the study
        run, how, budget = build_config(sweep), build(SelectConfig, tree.get("select"), "select"), build_budget(tree.get("budget"), "budget")
        quiet_libraries(training=False)
        from rank_sweep.commands.select import choose

        choose(run, how, budget)


# The console scripts (pyproject.toml [project.scripts]): check the command line, then let Hydra compose.
def trial() -> None:
    """``rank-sweep-trial``: train and record one LoRA trial."""
    _pre_parse("config", "rank-sweep-trial")
    _trial()


def sweep() -> None:
    """``rank-sweep``: run (or resume) the study."""
    _pre_parse("config", "rank-sweep")
    _sweep()


def select() -> None:
    """``rank-sweep-select``: pick a configuration of a finished study for a budget."""
    _pre_parse("select", "rank-sweep-select")
    _select()
