"""How a classifier reads the encoder (``model.pooling``): the part of the head between the last hidden
states and the classification layer.

    rank-sweep-trial model.pooling=mean       # as a sentence-transformers checkpoint was trained
    rank-sweep-trial model.pooling=cls        # [CLS] through the model's pooler, the pooler trained too

BERT-family classifiers read [CLS] through a pooler (dense + tanh) that sits outside the classification
layer. Left frozen (what every trial did before ``model.pooling`` existed, ``cls_frozen``), it is a layer
nobody trained for this use on a checkpoint pretrained with mean pooling (all-MiniLM-L6-v2), and every
score goes through it. The options:

    auto        mean when the checkpoint says so (a sentence-transformers ``1_Pooling/config.json`` with
                ``pooling_mode_mean_tokens``), else cls
    cls         the model's own head; a pooler (BERT's ``bert.pooler``, DeBERTa's ``pooler``) is trained
                with the classification layer (PEFT ``modules_to_save``); a model without one (RoBERTa,
                DistilBERT, a causal-LM classifier reading the last token) is unchanged
    cls_frozen  the model's own head with its pooler frozen (results from before 2026-12-05)
    mean        the mean of the last hidden states over the real tokens, in place of the pooler (no parameters)

The resolved value (never ``auto``) is the trial's MLflow param ``pooling``.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from rank_sweep.errors import ConfigError


def pooler_name(model: nn.Module) -> str | None:
    """The dotted name of the pooler the classification layer reads (``bert.pooler``, ``pooler``), or None."""
    for name, _ in model.named_modules():
        if name.split(".")[-1] == "pooler" and name.count(".") <= 1:
            return name
    return None


def checkpoint_pooling(path: str) -> str | None:
    """What a sentence-transformers checkpoint in folder ``path`` was trained with ("mean", "cls", ...), read
    from its ``modules.json`` and pooling config; None when the folder says nothing (not a local folder, or
    not a sentence-transformers checkpoint)."""
    try:
        with open(os.path.join(path, "modules.json")) as f:
            modules = json.load(f)
        pooling_dir = next(m["path"] for m in modules if m.get("type", "").endswith("Pooling"))
        with open(os.path.join(path, pooling_dir, "config.json")) as f:
            conf = json.load(f)
    except (OSError, ValueError, StopIteration, KeyError, TypeError, AttributeError):
        return None
    for mode in ("mean", "cls", "max"):
        if conf.get(f"pooling_mode_{mode}_tokens" if mode != "cls" else "pooling_mode_cls_token"):
            return mode
    return None


def resolve_pooling(requested: str, path: str, model: nn.Module) -> str:
    """``requested`` with ``auto`` decided for this checkpoint; refuses ``mean`` where nothing can be replaced."""
    if requested == "auto":
        return "mean" if checkpoint_pooling(path) == "mean" and pooler_name(model) else "cls"
    if requested == "mean" and pooler_name(model) is None:
        raise ConfigError(
            f"model.pooling=mean is not available for {type(model).__name__}: its classification head reads the "
            f"hidden states itself (no pooler to replace); use model.pooling=cls"
        )
    return requested


class MeanPooler(nn.Module):
    """The masked mean of the last hidden states: sentence-transformers' mean pooling, in the pooler's place.
    The attention mask is the one the encoder was called with: :meth:`remember` is a pre-hook on the encoder
    (a bound method, so a deep copy of the model hooks the copy's pooler, not this one)."""

    def __init__(self):
        super().__init__()
        self.mask: torch.Tensor | None = None

    def remember(self, module, args, kwargs) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
            mask = args[1]
        self.mask = mask

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        mask = self.mask
        if mask is None or mask.shape != hidden_states.shape[:2]:
            return hidden_states.mean(dim=1)
        weights = mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def apply_pooling(model: nn.Module, pooling: str) -> nn.Module:
    """Put ``pooling`` (resolved) on a fresh copy of the base: ``mean`` replaces the pooler by :class:`MeanPooler`
    and hands it each call's attention mask; ``cls`` and ``cls_frozen`` leave the model as it is (which modules
    train is :func:`trained_names`'s answer)."""
    if pooling != "mean":
        return model
    name = pooler_name(model)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    pooler = MeanPooler()
    setattr(parent, attr, pooler)
    model.base_model.register_forward_pre_hook(pooler.remember, with_kwargs=True)
    model.config.rank_sweep_pooling = "mean"  # saved with an exported model: readers must mean-pool too
    return model


def trained_names(model: nn.Module, heads: list[str], pooling: str) -> list[str]:
    """The modules trained in full beside an adapter: the classification head, and under ``cls`` the pooler's
    linear layers (``bert.pooler.dense``: its only parameters; named as layers, not as the pooler, because PEFT's
    ``merge_and_unload`` puts a saved module back by its ``weight``)."""
    name = pooler_name(model)
    if pooling != "cls" or name is None or any(name == h or name.startswith(h + ".") for h in heads):
        return list(heads)
    pooler = model.get_submodule(name)
    return [*heads, *(f"{name}.{sub}" for sub, m in pooler.named_modules() if isinstance(m, nn.Linear))]
