"""Lightning callbacks of a trial that are not the study's: the per-epoch MLflow logger and the best-epoch
keeper. (The study's own callback, pruning a speculative trial, lives in :mod:`rank_sweep.study.objective`.)
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
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


class BestEpoch(pl.Callback):
    """Keeps the epoch with the best primary metric: its number, metrics, dev-set outputs and the trainable
    weights (the LoRA factors and the head: small), so :meth:`restore` can put the model back to it.

    Early stopping ends ``patience`` epochs after the best one; scoring the last epoch would score a
    different epoch for every rank. With early stopping the trial restores and scores the best epoch."""

    def __init__(self, metric: str, direction: str = "maximize"):
        self.metric, self.sign = metric, 1.0 if direction == "maximize" else -1.0
        self.epoch: int | None = None
        self.metrics: dict[str, float] = {}
        self.outputs: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self._weights: dict | None = None

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not pl_module.last_metrics:
            return
        value = pl_module.last_metrics[self.metric]
        if self.epoch is None or self.sign * value > self.sign * self.metrics[self.metric]:
            self.epoch, self.metrics = trainer.current_epoch, dict(pl_module.last_metrics)
            self.outputs, self.labels = pl_module.last_outputs, pl_module.last_labels
            self._weights = {n: p.detach().clone() for n, p in pl_module.model.named_parameters() if p.requires_grad}

    def restore(self, pl_module) -> None:
        """Load the best epoch's trainable weights back into the module's model."""
        if self._weights is None:
            return
        params = dict(pl_module.model.named_parameters())
        for name, value in self._weights.items():
            params[name].data.copy_(value)
        pl_module.last_metrics, pl_module.last_outputs, pl_module.last_labels = (
            dict(self.metrics), self.outputs, self.labels)
