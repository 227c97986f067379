"""Lightning callbacks of a trial that are not the study's: the per-epoch MLflow logger.

(The study's own callbacks, pruning a speculative trial, live in :mod:`rank_sweep.study.objective`.)
"""

from __future__ import annotations

import lightning.pytorch as pl
from mlflow.tracking import MlflowClient

from rank_sweep.tracking import log


class EpochLogger(pl.Callback):
    """Logs Lightning's epoch-level metrics (``val/*``, ``train/loss``) to one MLflow run."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id

    def on_train_epoch_end(self, trainer, pl_module):
        # validation of this epoch has already run (callbacks see it before the module's hook does)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
        if metrics:
            log(self.client, self.run_id, metrics=metrics, step=trainer.current_epoch)
