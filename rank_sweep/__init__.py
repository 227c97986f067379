"""rank_sweep: choose a LoRA rank and target matrices for a task and a budget.

The flow, one package per step (data flows one way; ``results`` never imports the training stack):

    conf/ (Hydra)  ->  study/    ->  train/      ->  tracking.py
                       plan the      one trial:      MLflow runs,
                       ladder, run   data, PEFT      provenance
                       the Optuna    LoRA, fit
                       study
    results/   read a study (Optuna storage or MLflow), the statistic, the selection rule, rank-sweep-select
    analysis/  adapter spectra, subspace similarity, plots

Commands: ``rank-sweep`` (cli.sweep), ``rank-sweep-trial`` (cli.trial), ``rank-sweep-select`` (cli.select).
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("rank_sweep")
except _metadata.PackageNotFoundError:  # pragma: no cover - a checkout on sys.path, not installed
    __version__ = "0+unknown"
