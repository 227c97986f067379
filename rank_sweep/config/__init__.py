"""Typed, validated configs: one dataclass per concern of ``conf/``.

Hydra composes plain YAML; :func:`build_config` turns the composed tree into
these dataclasses, and each ``__post_init__`` rejects bad values with a
one-line :class:`ConfigError` that names the value and what is valid, so a bad
input fails before any model is loaded or any run is recorded.

The package: ``base`` (where defaults come from, shared checks), ``sections`` (model, task, lora,
trainer, tracking), ``method`` (LoRA or a reference method: IA3, prefix/prompt tuning, AdaLoRA),
``budget`` (the one budget type, select's settings), ``point`` (a trial's typed identity), ``run`` (search, the whole run, building from a
Hydra tree).

Every default lives in one place, the YAML of ``conf/``: a dataclass field
takes its default from the option that ``conf/config.yaml`` picks for its group
(``default("lora", "r")`` reads ``conf/lora/default.yaml``), so building a
config in Python (``LoraConfig(r=4)``) and composing it with Hydra agree by
construction. The dataclasses are the schema: names, types, validation.

    from rank_sweep.config import build_config, LoraConfig
    LoraConfig(r=4).lora_alpha      # 8.0: alpha_k (2.0, from conf/lora/default.yaml) * r
"""

from rank_sweep.config.base import (
    ALPHA_POLICIES,
    CONF_DIR,
    DIRECTIONS,
    FULL,
    HEAD,
    INITS,
    METHODS,
    METRIC_DIRECTIONS,
    METRICS,
    MINIMIZED,
    PRECISIONS,
    PRUNERS,
    SOURCES,
    STRATEGIES,
    TASK_SOURCES,
    check_rank,
    default,
    one_of,
    option_defaults,
    sqlite_path,
    targets_key,
)
from rank_sweep.config.budget import Budget, SelectConfig, build_budget
from rank_sweep.config.method import PEFT_CONFIGS, MethodConfig, check_settings, method_size, settings_of
from rank_sweep.config.point import Point
from rank_sweep.config.run import TRIAL_SECTIONS, RunConfig, SearchConfig, build, build_config, run_point, trial_config
from rank_sweep.config.sections import LoraConfig, ModelConfig, TaskConfig, TrackingConfig, TrainerConfig

__all__ = [
    "ALPHA_POLICIES", "CONF_DIR", "DIRECTIONS", "FULL", "HEAD", "INITS", "METHODS", "METRIC_DIRECTIONS", "METRICS",
    "MINIMIZED", "PEFT_CONFIGS", "PRECISIONS", "PRUNERS", "SOURCES", "STRATEGIES",
    "TASK_SOURCES", "Point", "TRIAL_SECTIONS", "Budget", "LoraConfig", "MethodConfig", "ModelConfig", "RunConfig", "SearchConfig", "SelectConfig", "TaskConfig",
    "TrackingConfig", "TrainerConfig", "build", "build_budget", "build_config", "check_rank", "check_settings", "default", "method_size",
    "one_of", "option_defaults", "settings_of", "sqlite_path", "targets_key", "trial_config", "run_point",
]
