"""The adaptation method of a trial: LoRA (the ``lora`` section) or a reference method (``conf/method/``).

    rank-sweep-trial method=ia3                     # one IA3 trial
    rank-sweep-trial method=adalora method.settings.target_r=4
    rank-sweep search.reference_methods=[ia3,adalora]   # reference rows beside the ladder

``settings`` are fields of the method's PEFT config (``peft.IA3Config``, ``PrefixTuningConfig``,
``PromptTuningConfig``, ``AdaLoraConfig``), checked by name against that dataclass, plus ``targets``
(roles or module names, as ``lora.targets``) where the method adapts chosen modules. The option file of
the method is the home of its defaults: settings not given are taken from ``conf/method/<name>.yaml``,
so ``MethodConfig(name="ia3")`` and ``method=ia3`` agree. Values PEFT itself rejects (and whether the
method fits the model) are checked by ``rank_sweep.train.methods`` before any run is recorded.
PEFT is imported only to check a reference method's settings, never at import time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rank_sweep.config.base import METHODS, conf_yaml, default, is_int, one_of
from rank_sweep.errors import ConfigError

PEFT_CONFIGS = {  # method -> its config class in peft
    "ia3": "IA3Config",
    "prefix_tuning": "PrefixTuningConfig",
    "prompt_tuning": "PromptTuningConfig",
    "adalora": "AdaLoraConfig",
}
# settings that are ours, not PEFT's: roles or module names, translated to PEFT's module patterns
TARGET_SETTINGS = {"ia3": ("targets", "feedforward_targets"), "adalora": ("targets",)}
# PEFT fields rank_sweep sets itself, and why a user may not
MANAGED = {
    "task_type": "rank_sweep sets it (SEQ_CLS)",
    "peft_type": "it follows method.name",
    "inference_mode": "a trial trains the adapter",
    "modules_to_save": "the classification head is always trained in full",
    "target_modules": "give method.settings.targets (roles such as Wq, Wv, or module names)",
    "feedforward_modules": "give method.settings.feedforward_targets (roles or module names)",
    "total_step": "the trial computes it from trainer.epochs, trainer.max_steps and the training set size",
    "auto_mapping": "PEFT sets it",
    "peft_version": "PEFT records its own version",
    "base_model_name_or_path": "PEFT records the model itself",
    "revision": "PEFT records the model itself",
    "num_transformer_submodules": "PEFT reads it from the model",
    "token_dim": "PEFT reads it from the model",
    "num_attention_heads": "PEFT reads it from the model",
    "num_layers": "PEFT reads it from the model",
}
SIZE_SETTING = {"prefix_tuning": "num_virtual_tokens", "prompt_tuning": "num_virtual_tokens", "adalora": "target_r"}


def option_settings(name: str) -> dict[str, Any]:
    """The settings of ``conf/method/<name>.yaml``: the defaults of that method."""
    return dict(conf_yaml(f"method/{name}.yaml").get("settings") or {})


def settings_of(method: MethodConfig) -> dict[str, Any]:
    """The method's effective settings: its option file's, overridden by those given (a config whose
    ``name`` was set after it was built still gets its method's defaults)."""
    return {**option_settings(method.name), **(method.settings or {})}


def peft_fields(name: str) -> set[str]:
    """The field names of the PEFT config dataclass of method ``name`` (imports peft)."""
    import peft

    return {f.name for f in dataclasses.fields(getattr(peft, PEFT_CONFIGS[name]))}


def valid_settings(name: str) -> list[str]:
    return sorted((peft_fields(name) - set(MANAGED) - ({"r"} if name == "adalora" else set()))
                  | set(TARGET_SETTINGS.get(name, ())))


def _roles(value: Any, key: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):  # Wq,Wv on the command line, as lora.targets takes it
        value = [t.strip() for t in value.split(",") if t.strip()]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(t, str) and t for t in value):
        raise ConfigError(f"method.settings.{key}={value!r} is not valid: give roles or module names, e.g. [Wq,Wv]")
    return list(value)


def _count(settings: dict, key: str, name: str, allow_zero: bool = False) -> None:
    value = settings.get(key)
    if value is not None and (not is_int(value) or value < (0 if allow_zero else 1)):
        bound = ">= 0" if allow_zero else ">= 1"
        raise ConfigError(f"method.settings.{key}={value!r} is not valid for {name}: it must be an integer {bound}")


def check_settings(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Refuse settings the method does not have, or ones rank_sweep sets; return them with targets as lists."""
    if not isinstance(settings, dict):
        raise ConfigError(f"method.settings={settings!r} is not valid: give a mapping of {name}'s settings")
    if name == "lora":
        if settings:
            raise ConfigError(
                f"method.settings={settings!r} is not valid for method=lora: LoRA's settings live in the lora "
                f"section (lora.r, lora.targets, lora.alpha_policy, ...)")
        return {}
    fields = peft_fields(name)
    for key in settings:
        if key in MANAGED and key in fields:
            raise ConfigError(f"method.settings.{key} cannot be set for {name}: {MANAGED[key]}")
        if name == "adalora" and key == "r":
            raise ConfigError("method.settings.r is not used by adalora: set init_r (the starting rank) and "
                              "target_r (the average rank it prunes to)")
        if key not in fields and key not in TARGET_SETTINGS.get(name, ()):
            raise ConfigError(f"method.settings.{key} is not a setting of {name}: valid settings are "
                              f"{', '.join(valid_settings(name))}")
    out = dict(settings)
    for key in TARGET_SETTINGS.get(name, ()):
        if key in out:
            out[key] = _roles(out[key], key)
    if out.get("feedforward_targets") and not out.get("targets"):
        raise ConfigError("method.settings.feedforward_targets needs method.settings.targets: the feed-forward "
                          "modules are a subset of the targets")
    missing = sorted(set(out.get("feedforward_targets") or ()) - set(out.get("targets") or ()))
    if missing:
        raise ConfigError(f"method.settings.feedforward_targets: {', '.join(missing)} is not among "
                          f"method.settings.targets={out['targets']}: the feed-forward modules are a subset of them")
    if name in ("prefix_tuning", "prompt_tuning"):
        if out.get("num_virtual_tokens") is None:
            raise ConfigError(f"method.settings.num_virtual_tokens is required for {name}: e.g. 20")
        _count(out, "num_virtual_tokens", name)
    if name == "adalora":
        for key in ("init_r", "target_r", "deltaT"):
            _count(out, key, name)
        for key in ("tinit", "tfinal"):
            _count(out, key, name, allow_zero=True)
        init_r, target_r = (peft_default(name, k) if out.get(k) is None else out[k] for k in ("init_r", "target_r"))
        if target_r >= init_r:
            raise ConfigError(f"method.settings.target_r={target_r} is not valid for adalora: it must be below "
                              f"init_r={init_r} (AdaLoRA prunes from init_r down to target_r on average)")
    return out


@dataclass
class MethodConfig:
    """``name``: ``lora`` or a reference method; ``settings``: that method's PEFT config fields."""

    name: str = default("method", "name")
    settings: dict[str, Any] = default("method", "settings")

    def __post_init__(self) -> None:
        one_of("method.name", self.name, METHODS)
        if not isinstance(self.settings, dict):
            raise ConfigError(f"method.settings={self.settings!r} is not valid: give a mapping of "
                              f"{self.name}'s settings")
        self.settings = check_settings(self.name, settings_of(self))


def method_size(method: MethodConfig) -> int:
    """The method's "r": num_virtual_tokens (prefix, prompt tuning), target_r (AdaLoRA), 0 (IA3: no size)."""
    if method.name == "lora":
        raise ValueError("method=lora has no method size: its rank is lora.r")
    key = SIZE_SETTING.get(method.name)
    if key is None:
        return 0
    value = settings_of(method).get(key)
    if value is None:  # AdaLoRA without target_r: PEFT's default
        return int(peft_default(method.name, key))
    return int(value)


def peft_default(name: str, key: str) -> Any:
    import peft

    return next(f.default for f in dataclasses.fields(getattr(peft, PEFT_CONFIGS[name])) if f.name == key)
