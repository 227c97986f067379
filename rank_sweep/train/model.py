"""The LightningModules: what every trial's module shares (:class:`FineTuning`: AdamW with linear
warm-up/decay, the loss check, one history entry and ``val/<metric>`` per epoch) and the HF sequence
classifier (:class:`SequenceClassifier`, with or without a PEFT adapter); the causal LM is its sibling,
:class:`rank_sweep.train.causal.CausalLM`.

Validation outputs (logits, or regression values) are gathered over the epoch and
scored once with :mod:`rank_sweep.train.metrics` (scikit-learn / scipy), so every
metric is exact on the whole dev split rather than a mean of per-batch values; the
last epoch's outputs stay on the module (``last_outputs``, ``last_labels``) in dev-set
order, for the trial's per-example predictions.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from rank_sweep.config import TaskConfig, TrainerConfig
from rank_sweep.train.metrics import compute_metrics


def constant_outputs(outputs: np.ndarray | None, is_regression: bool) -> bool:
    """Whether every dev example got the same prediction (one class, or one value): a model that ignores its input."""
    if outputs is None or len(outputs) == 0:
        return False
    if is_regression:
        return bool(np.std(outputs) < 1e-8)
    classes = outputs.argmax(-1)
    return bool(np.all(classes == classes[0]))


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class FineTuning(pl.LightningModule):
    """The part of a trial's module that does not depend on the head: the wrapped model, the optimizer and
    schedule, the loss check, and the per-epoch record (``last_metrics``, ``history``, ``val/<metric>``).
    Subclasses compute the loss and the validation outputs."""

    def __init__(self, model: torch.nn.Module, task: TaskConfig, trainer_cfg: TrainerConfig):
        super().__init__()
        self.model = model.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes
        self.task = task
        self.cfg = trainer_cfg
        self.last_metrics: dict[str, float] = {}
        self.last_outputs: np.ndarray | None = None  # the dev-set outputs the trial's predictions come from
        self.last_labels: np.ndarray | None = None
        self.history: list[dict[str, float]] = []  # one entry per validation epoch
        self.constant_predictions = False

    def forward(self, **batch):
        return self.model(**batch)

    def on_fit_start(self) -> None:
        if self.cfg.gradient_checkpointing:  # during fit only: validation and the cached base stay as they are
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def is_constant(self, outputs) -> bool:
        """Whether ``outputs`` (this module's dev-set outputs) give every example the same answer."""
        raise NotImplementedError

    def checked_loss(self, loss: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``loss``, logged as ``train/loss``; :class:`NonFiniteLossError` if it is NaN or infinite."""
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"training loss is {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch_size)
        return loss

    def record_epoch(self, metrics: dict[str, float], outputs, labels) -> None:
        """One validation epoch's metrics and outputs: kept on the module, in its history and logged."""
        self.last_metrics, self.last_outputs, self.last_labels = metrics, outputs, labels
        self.constant_predictions = self.is_constant(outputs)
        if not self.trainer.sanity_checking:
            self.history.append({"epoch": self.current_epoch, **metrics})
        for name, value in metrics.items():
            self.log(f"val/{name}", value, prog_bar=name == self.task.metric)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "LayerNorm" in name or "bias" in name else decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.cfg.lr,
        )
        total = self.trainer.estimated_stepping_batches
        if not total or math.isinf(total):
            total = max(1, self.cfg.max_steps)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.cfg.warmup_ratio * total), int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class SequenceClassifier(FineTuning):
    """An HF sequence classifier (or regressor): logits (N x C) or values (N,) per dev example, in dev-set order."""

    def __init__(self, model: torch.nn.Module, task: TaskConfig, trainer_cfg: TrainerConfig):
        super().__init__(model, task, trainer_cfg)
        self._preds: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def is_constant(self, outputs) -> bool:
        """Whether ``outputs`` (this module's dev-set outputs) are one class or one value for every example."""
        return constant_outputs(outputs, self.task.is_regression)

    def training_step(self, batch, batch_idx):
        batch = {k: v for k, v in batch.items() if k != "length"}
        return self.checked_loss(self.model(**batch).loss, batch["labels"].shape[0])

    def validation_step(self, batch, batch_idx):
        batch = {k: v for k, v in batch.items() if k != "length"}
        labels = batch.pop("labels")
        logits = self.model(**batch).logits.float()
        outputs = logits.squeeze(-1) if self.task.is_regression else logits
        self._preds.append(outputs.detach().cpu().numpy())
        self._labels.append(labels.detach().cpu().numpy())

    def on_validation_epoch_end(self):
        if not self._preds:
            return
        outputs, labels = np.concatenate(self._preds), np.concatenate(self._labels)
        self._preds, self._labels = [], []
        self.record_epoch(compute_metrics(self.task, outputs, labels), outputs, labels)
