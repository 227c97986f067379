"""Command-line entry points, one function per command (Hydra composes ``conf/``).

    rank-sweep experiment=quickstart          # the recipe as an Optuna study
    rank-sweep-trial task=sst2 lora.r=4 lora.targets=[Wq,Wv]
    rank-sweep-select task=mrpc budget.max_lora_params=50000 select.tolerance=0.005

User errors (bad config values, data, targets, stores) print one line on
stderr and exit with status 2, before any training starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

import hydra
from omegaconf import DictConfig, OmegaConf

from rank_sweep.config import CONF_DIR  # conf/ in the wheel, or at the top of an editable checkout
from rank_sweep.errors import RankSweepError, redact_text


@contextlib.contextmanager
def user_errors():
    """Turn a RankSweepError into one line on stderr and exit status 2."""
    try:
        yield
    except RankSweepError as e:
        print(f"rank-sweep: error: {redact_text(str(e))}", file=sys.stderr, flush=True)
        sys.exit(2)


def quiet_libraries(training: bool = True) -> None:
    """Keep the console to Lightning's bar and our lines; the rest goes to logs. ``training=False`` (the
    select command) quiets only what it imports: no torch, Lightning or transformers is loaded for it."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*is an experimental feature.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
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


def _config(cfg: DictConfig):
    from rank_sweep.config import build_config

    return build_config(cfg)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def trial(cfg: DictConfig) -> float:
    """Train and record one LoRA trial; print its score and parameter counts."""
    quiet_libraries()
    with user_errors():
        from rank_sweep.train.trial import run_trial

        run = _config(cfg)
        result = run_trial(run, learn_margin=run.search.learn_margin)
        c = result.counts
        print(
            f"score ({result.metric}) = {result.score:.4f}  baseline {result.baseline_score:.4f}"
            f"{'  NOT LEARNING' if result.not_learning else ''}\n"
            f"lora_params {c.lora_params:,}  head_params {c.head_params:,}  trainable_params "
            f"{c.trainable_params:,}  total_params {c.total_params:,}  trainable {c.trainable_pct:.3f}%\n"
            f"train {result.train_seconds:.1f}s  mlflow run {result.run_id}",
            flush=True,
        )
        return result.score


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def sweep(cfg: DictConfig) -> None:
    """Run (or resume) the study that walks the rank ladder."""
    quiet_libraries()
    with user_errors():
        from rank_sweep.study.run import run_study

        run_study(_config(cfg))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="select")
def select(cfg: DictConfig) -> None:
    """Pick the best configuration of a finished study for a budget."""
    quiet_libraries(training=False)
    with user_errors():
        from rank_sweep.config import SelectConfig, build, build_budget
        from rank_sweep.results.command import choose

        tree = OmegaConf.to_container(cfg, resolve=True)
        sweep = {k: v for k, v in tree.items() if k not in ("select", "budget")}  # the sweep's config finds the study
        choose(_config(sweep), build(SelectConfig, tree.get("select"), "select"), build_budget(tree.get("budget"), "budget"))
