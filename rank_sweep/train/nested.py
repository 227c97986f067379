"""Nested-rank training (DyLoRA, Valipour et al. 2023): one PEFT LoRA adapter at r_max whose every step uses
only its first b components (rows of A, columns of B) for a rank b drawn at random, so that every rank of the
ladder can afterwards be scored by truncating that one adapter.

Built on PEFT's own LoRA layers: a :mod:`torch.nn.utils.parametrize` mask on each ``lora_A``/``lora_B``
weight (no LoRA layer written here), the rank of each step set by the Lightning callback
:class:`NestedRanks`::

    callback = NestedRanks(ranks=[1, 2, 4, 8], scale="policy", lora_cfg=cfg.lora, seed=0)
    run_trial(cfg_at_r_max, callbacks=[callback])        # attaches the masks in setup, trains
    callback.outputs[4]                                   # dev outputs of the adapter truncated to r=4

Choices (``search.nested_*``, measured in ``experiments/nested_rank``):

* the rank of a step is drawn uniformly from the ladder's ranks, not from 1..r_max: each rank that is
  scored gets the same share of the steps (uniform over 1..64 would train r=1 on 1/64 of them);
* the scale of a truncated rank b: ``policy`` (default) uses what an ordinary trial at rank b would use
  under ``lora.alpha_policy`` (alpha_k under ``scaled``), so a screened rank is the adapter an ordinary
  trial of rank b trains; ``dylora`` scales by r_max / b on top of the r_max scale, as DyLoRA does;
* ``frozen``: when b is drawn, components below b - 1 get no gradient (DyLoRA's frozen mode).

After training the adapter is at r_max with its masks removed; :func:`truncated_state` gives the weights of an
ordinary rank-b PEFT adapter (its ``lora_alpha`` set so that PEFT's scaling equals the scale it trained at).
"""

from __future__ import annotations

import math
import random

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

SCALES = ("policy", "dylora")


def scale_at(lora_cfg, r: int) -> float:
    """PEFT's scaling of an ordinary adapter of rank ``r`` under the config's alpha policy."""
    alpha = lora_cfg.alpha_k * r if lora_cfg.alpha_policy == "scaled" else lora_cfg.alpha
    return alpha / math.sqrt(r) if lora_cfg.alpha_policy == "rslora" else alpha / r


class _State:
    """The rank in use, shared by every mask of one model."""

    def __init__(self, r_max: int, factor, frozen: bool):
        self.r_max, self.b, self.factor, self.frozen = r_max, r_max, factor, frozen
        self.training = True


class _Mask(nn.Module):
    """Keep the first ``b`` components of a LoRA factor (rows of A: dim 0; columns of B: dim 1); B's are scaled by
    the rank's factor. In frozen mode the components below b - 1 pass no gradient."""

    def __init__(self, state: _State, dim: int):
        super().__init__()
        self.state, self.dim = state, dim

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = self.state
        shape = [1, 1]
        shape[self.dim] = -1
        idx = torch.arange(w.shape[self.dim], device=w.device).view(shape)
        keep = (idx < s.b).to(w.dtype)
        if s.frozen and s.training and s.b > 1:
            old = (idx < s.b - 1).to(w.dtype)
            w = w.detach() * old + w * (1 - old)
        out = w * keep
        return out * s.factor(s.b) if self.dim == 1 else out


def lora_layers(model: nn.Module) -> list[nn.Module]:
    """PEFT's LoRA layers of ``model`` holding the adapter ``default`` (as ``analysis.spectra`` finds them)."""
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer) and "default" in m.lora_A]


def attach(model: nn.Module, r_max: int, factor, frozen: bool = False) -> _State:
    """Mask every LoRA factor of ``model`` (adapter ``default``) by the rank in use; returns the shared state."""
    state = _State(r_max, factor, frozen)
    layers = lora_layers(model)
    if not layers:
        raise ValueError("nested-rank training needs a PEFT LoRA adapter: the model has no LoRA layer")
    for layer in layers:
        parametrize.register_parametrization(layer.lora_A["default"], "weight", _Mask(state, 0))
        parametrize.register_parametrization(layer.lora_B["default"], "weight", _Mask(state, 1))
    return state


def detach(model: nn.Module) -> None:
    """Remove the masks, leaving the r_max weights as trained (not truncated)."""
    for layer in lora_layers(model):
        for factor in (layer.lora_A["default"], layer.lora_B["default"]):
            if parametrize.is_parametrized(factor, "weight"):
                parametrize.remove_parametrizations(factor, "weight", leave_parametrized=False)


class NestedRanks(pl.Callback):
    """Draws the rank of every training step from ``ranks`` (seeded), validates at r_max, and after training
    scores every rank by truncation on the dev set: ``outputs[b]`` (dev-set order) and ``labels``."""

    def __init__(self, ranks: list[int], lora_cfg, scale: str = "policy", frozen: bool = False, seed: int = 0,
                 precision: str = "32-true"):
        if scale not in SCALES:
            raise ValueError(f"scale={scale!r}: choose one of {', '.join(SCALES)}")
        self.ranks, self.r_max, self.lora_cfg = sorted(ranks), max(ranks), lora_cfg
        self.scale, self.frozen, self.precision = scale, frozen, precision
        self.rng = random.Random(seed)
        self.drawn: list[int] = []
        self.outputs: dict[int, np.ndarray] = {}
        self.labels: np.ndarray | None = None
        self.train_labels: np.ndarray | None = None
        self.state: _State | None = None

    def factor(self, b: int) -> float:
        """The scale of rank b relative to PEFT's scaling of the r_max adapter."""
        if self.scale == "dylora":
            return self.r_max / b
        return scale_at(self.lora_cfg, b) / scale_at(self.lora_cfg, self.r_max)

    def setup(self, trainer, pl_module, stage):
        if self.state is None:
            self.state = attach(pl_module.model, self.r_max, self.factor, self.frozen)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.state.training = True
        self.state.b = self.rng.choice(self.ranks)
        self.drawn.append(self.state.b)

    def on_validation_start(self, trainer, pl_module):
        self.state.training, self.state.b = False, self.r_max

    def on_fit_end(self, trainer, pl_module):
        self.train_labels = np.asarray(trainer.datamodule.tokenized["train"]["labels"])
        loader = trainer.datamodule.val_dataloader()
        for b in self.ranks:
            self.outputs[b], self.labels = self.evaluate(pl_module, loader, b)
        self.state.b = self.r_max
        detach(pl_module.model)  # from here on an ordinary r_max adapter: spectra, export

    @torch.no_grad()
    def evaluate(self, pl_module, loader, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Dev outputs of the adapter truncated to rank ``b`` (logits, or regression values)."""
        self.state.training, self.state.b = False, b
        model = pl_module.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        bf16 = self.precision.startswith("bf16")
        outs, labels = [], []
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items() if k != "length"}
            y = batch.pop("labels")
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(**batch).logits.float()
            outs.append((logits.squeeze(-1) if logits.shape[-1] == 1 else logits).cpu().numpy())
            labels.append(y.cpu().numpy())
        model.train(was_training)
        return np.concatenate(outs), np.concatenate(labels)


def _raw(factor: nn.Module) -> torch.Tensor:
    """A factor's trained weight, without its mask."""
    if parametrize.is_parametrized(factor, "weight"):
        return factor.parametrizations.weight.original.detach()
    return factor.weight.detach()


def truncated_state(model: nn.Module, b: int, factor: float) -> dict[str, torch.Tensor]:
    """The LoRA weights of the rank-``b`` truncation, B scaled by ``factor`` (:meth:`NestedRanks.factor`): load
    them into an ordinary PEFT adapter of rank b whose scaling equals the r_max adapter's."""
    out = {}
    layers = lora_layers(model)
    for name, module in model.named_modules():
        if any(module is m for m in layers):
            a = _raw(module.lora_A["default"])[:b].clone()
            bb = _raw(module.lora_B["default"])[:, :b].clone() * factor
            out[f"{name}.lora_A.default.weight"], out[f"{name}.lora_B.default.weight"] = a, bb
    return out


def record_ranks(callback: NestedRanks, task, confidence: float, learn_margin: float, output_dir: str, client,
                 run_id: str) -> dict[str, list]:
    """Score every truncated rank of a finished screen: its metric, interval over dev examples, and the paired
    learning test against the trivial predictor (as a trial's); keep its per-example predictions
    (``<output_dir>/predictions/<run>/r<rank>/val.npz``, artifact ``predictions/r<rank>/val.npz``) and log
    ``nested/r<rank>/score``, ``..._ci_low``, ``..._ci_high``, ``.../not_learning``. Returns
    rank -> [score, ci_low, ci_high, not_learning] (the trial's user attr ``nested``)."""
    from rank_sweep import tracking
    from rank_sweep.results.predictions import predictions_path, save_predictions
    from rank_sweep.train.metrics import compute_metrics
    from rank_sweep.train.trial import learning_test

    out, metrics = {}, {}
    for b, outputs in sorted(callback.outputs.items()):
        labels = callback.labels
        score = compute_metrics(task, outputs, labels)[task.metric]
        ci, _, learning = learning_test(task, outputs, labels, callback.train_labels, confidence, learn_margin)
        not_learning = not learning
        path = save_predictions(predictions_path(output_dir, f"{run_id}/r{b}"), outputs, labels)
        client.log_artifact(run_id, path, f"predictions/r{b}")
        out[str(b)] = [float(score), float(ci.low), float(ci.high), bool(not_learning)]
        metrics.update({f"nested/r{b}/score": score, f"nested/r{b}/score_ci_low": ci.low,
                        f"nested/r{b}/score_ci_high": ci.high, f"nested/r{b}/not_learning": float(not_learning)})
    drawn = np.bincount(callback.drawn, minlength=callback.r_max + 1) if callback.drawn else np.zeros(1)
    metrics.update({f"nested/r{b}/steps": float(drawn[b]) for b in callback.ranks if b < len(drawn)})
    tracking.log(client, run_id, metrics=metrics, tags={"nested_scale": callback.scale,
                                                       "nested_frozen": str(callback.frozen).lower()})
    return out
