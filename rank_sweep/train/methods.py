"""Reference methods beside LoRA, wrapped with PEFT for sequence classification: IA3, prefix tuning,
prompt tuning, AdaLoRA (``conf/method/``). As in a LoRA trial, the classification head is trained in
full (``modules_to_save``) and counted once, and every misfit is a one-line ConfigError before training.

    rank-sweep-trial method=ia3 task=sst2
    rank-sweep-trial method=adalora method.settings.targets=[Wq,Wk,Wv,Wo]

    check_method_fits(model, cfg.method, family, max_seq_length=128)    # raises ConfigError if not
    model = wrap_method(model, cfg.method, family, total_steps(cfg.trainer, n_train))
    callbacks = method_callbacks(model, cfg.method)     # AdaLoRA: its rank allocator after every step

Roles (Wq, Wv, ...) in ``method.settings.targets`` map to module names as for LoRA
(:func:`rank_sweep.train.lora.plan_targets`); without targets, PEFT's own default modules for the model
type are used (IA3, AdaLoRA), and a model type PEFT has none for is refused by name.
"""

from __future__ import annotations

import inspect
import math
import re

import lightning.pytorch as pl
from torch import nn

from rank_sweep.config import PEFT_CONFIGS, MethodConfig, TrainerConfig, check_settings, settings_of
from rank_sweep.errors import ConfigError, first_line
from rank_sweep.train import lora
from rank_sweep.train.loading import max_tokens

MERGEABLE = ("lora", "ia3", "adalora")  # methods whose adapter merges into the weights (prompts cannot)
OURS = ("targets", "feedforward_targets")  # settings translated here, not passed to PEFT


def total_steps(trainer: TrainerConfig, n_train: int) -> int:
    """The optimizer steps a trial will take: epochs x ceil(n_train / batch_size), capped by max_steps
    (as Lightning stops at whichever comes first); AdaLoRA's pruning schedule runs over these."""
    steps = trainer.epochs * math.ceil(n_train / trainer.batch_size)
    return min(steps, trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else steps


def can_merge(method: MethodConfig) -> bool:
    return method.name in MERGEABLE


def _plan(model: nn.Module, targets: list[str], family: str | None, key: str) -> lora.TargetPlan:
    """Roles / module names -> a LoRA-style target plan, with errors naming ``method.settings.<key>``."""
    try:
        return lora.plan_targets(model, targets, family)
    except ConfigError as e:
        raise ConfigError(str(e).replace("lora.targets", f"method.settings.{key}")) from None


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def takes_past_key_values(model: nn.Module) -> bool:
    """What PEFT's prefix tuning needs (peft_model.py, ``_prefix_tuning_forward``): a ``past_key_values``
    argument of the model's forward, or of its transformer backbone's (its first PreTrainedModel child)."""
    from transformers import PreTrainedModel

    backbone = next((m for _, m in model.named_children() if isinstance(m, PreTrainedModel)), model)
    return any("past_key_values" in inspect.signature(m.forward).parameters for m in (model, backbone))


def check_method_fits(model: nn.Module, method: MethodConfig, family: str | None = None,
                      max_seq_length: int | None = None) -> None:
    """Refuse, in one line, a method this model cannot take: prefix tuning without ``past_key_values``,
    IA3 / AdaLoRA on a model type PEFT has no default modules for (and no targets given), targets that match
    nothing, an AdaLoRA init_r above a matrix's size, soft prompts that push inputs past the position table."""
    if method.name == "lora":
        return
    settings = check_settings(method.name, settings_of(method))
    name, model_type = method.name, _model_type(model)
    if name == "prefix_tuning" and not takes_past_key_values(model):
        import transformers

        raise ConfigError(
            f"method=prefix_tuning does not fit {type(model).__name__} (model type {model_type}): PEFT prefixes "
            f"through past_key_values, and its forward takes none in transformers {transformers.__version__}; "
            f"use method=prompt_tuning (soft tokens at the input)")
    if name == "prompt_tuning" and max_seq_length is not None:
        limit, n = max_tokens(None, model), settings["num_virtual_tokens"]
        if limit is not None and max_seq_length + n > limit:
            raise ConfigError(
                f"method.settings.num_virtual_tokens={n} does not fit: with task.max_seq_length={max_seq_length} "
                f"inputs reach {max_seq_length + n} positions, and the model takes {limit}; lower either")
    if name in ("ia3", "adalora") and not settings.get("targets"):
        from peft.utils import (
            TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING,
            TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
            TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
        )

        maps = ((TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING, TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING)
                if name == "ia3" else (TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING,))
        if not all(model_type in m for m in maps):
            raise ConfigError(
                f"method={name}: PEFT has no default target modules for model type {model_type!r}: give "
                f"method.settings.targets (roles, e.g. [Wk,Wv,Wdown], or module names)")
    if settings.get("targets"):
        plan = _plan(model, settings["targets"], family, "targets")
        if settings.get("feedforward_targets"):
            _plan(model, settings["feedforward_targets"], family, "feedforward_targets")
        init_r = settings.get("init_r")
        if name == "adalora" and init_r is not None:
            limit_name, (d_in, d_out) = min(plan.modules.items(), key=lambda kv: min(kv[1]))
            if init_r > min(d_in, d_out):
                raise ConfigError(f"method.settings.init_r={init_r} is too large: {limit_name} is {d_out}x{d_in}, "
                                  f"so the rank can be at most {min(d_in, d_out)}")


def peft_config(model: nn.Module, method: MethodConfig, family: str | None, steps: int,
                heads: list[str] | None = None):
    """The PEFT config of a reference method for ``model`` (SEQ_CLS, the head in ``modules_to_save``: ``heads``,
    by default :func:`rank_sweep.train.lora.head_names`)."""
    import peft

    settings = check_settings(method.name, settings_of(method))
    kwargs = {k: v for k, v in settings.items() if k not in OURS and v is not None}  # None: PEFT's default
    if settings.get("targets"):
        kwargs["target_modules"] = _plan(model, settings["targets"], family, "targets").pattern
        if method.name == "ia3":  # explicit: none is feed-forward unless named (PEFT would apply its default)
            ff = settings.get("feedforward_targets")
            kwargs["feedforward_modules"] = _plan(model, ff, family, "feedforward_targets").pattern if ff else []
    if method.name in ("ia3", "adalora") and "fan_in_fan_out" not in kwargs:
        kwargs["fan_in_fan_out"] = any(type(m).__name__ == "Conv1D" for m in model.modules())
    if method.name == "adalora":
        tinit, tfinal = kwargs.get("tinit", 0), kwargs.get("tfinal", 0)
        if tinit >= steps - tfinal:
            raise ConfigError(
                f"method.settings.tinit={tinit} and tfinal={tfinal} leave AdaLoRA no pruning phase in this "
                f"trial's {steps} optimizer steps: need tinit < {steps} - tfinal (or train longer)")
        kwargs["total_step"] = steps
    cls = getattr(peft, PEFT_CONFIGS[method.name])
    try:
        heads = lora.head_names(model) if heads is None else heads
        return cls(task_type="SEQ_CLS", modules_to_save=heads, **kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"method={method.name}: peft.{cls.__name__} refuses method.settings: "
                          f"{first_line(e)}") from None


def wrap_method(model: nn.Module, method: MethodConfig, family: str | None, total_steps: int,
                heads: list[str] | None = None):
    """Wrap ``model`` with the reference method's PEFT adapter; the classification head is trained in full."""
    from peft import get_peft_model

    config = peft_config(model, method, family, total_steps, heads)
    try:
        return get_peft_model(model, config)
    except ValueError as e:  # e.g. target modules PEFT cannot wrap
        raise ConfigError(f"method={method.name} cannot wrap this model: {first_line(e)}") from None


class AdaLoraAllocator(pl.Callback):
    """AdaLoRA's rank allocation, ``update_and_allocate(step)`` after every optimizer step: it scores each
    triplet by |weight x gradient| and masks the least important to the step's budget. Lightning zeroes the
    gradients inside the next step's closure, before backward, so at ``on_train_batch_end`` they are still
    those of the step just taken; PEFT counts steps from 0 (its loop calls it with the step's index)."""

    def __init__(self, peft_model):
        self.tuner = peft_model.base_model  # the AdaLoraModel, which owns the RankAllocator
        self.steps: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step - 1
        if step < 0 or (self.steps and self.steps[-1] == step):  # no optimizer step this batch
            return
        self.tuner.update_and_allocate(step)
        self.steps.append(step)


def method_callbacks(model, method: MethodConfig) -> list[pl.Callback]:
    """The Lightning callbacks a method needs during training (AdaLoRA's allocator; none for the others)."""
    return [AdaLoraAllocator(model)] if method.name == "adalora" else []


def rank_pattern(peft_model) -> dict[str, int]:
    """AdaLoRA's allocated rank per adapted module (its last allocation); {} before the first one."""
    pattern = getattr(peft_model.peft_config["default"], "rank_pattern", None) or {}
    # keys are lora_E parameter names, with the adapter name until save_pretrained strips it
    return {re.sub(r"\.lora_E(\.[^.]+)?$", "", k): int(sum(bool(x) for x in v)) for k, v in pattern.items()}


def record_method(peft_model, method: MethodConfig, client, run_id: str) -> dict[str, float]:
    """Log what a method decided in training: AdaLoRA's rank pattern (``adalora/rank_pattern.json``) and its
    summary as metrics. Nothing for methods without such a decision."""
    if method.name != "adalora":
        return {}
    ranks = rank_pattern(peft_model)
    config = peft_model.peft_config["default"]
    client.log_dict(run_id, {"init_r": config.init_r, "target_r": config.target_r, "total_step": config.total_step,
                             "budget": config.target_r * len(ranks), "ranks": ranks}, "adalora/rank_pattern.json")
    if not ranks:
        return {"adalora/allocated": 0.0}
    values = list(ranks.values())
    return {"adalora/allocated": 1.0, "adalora/total_rank": float(sum(values)),
            "adalora/mean_rank": sum(values) / len(values), "adalora/min_rank": float(min(values)),
            "adalora/max_rank": float(max(values))}
