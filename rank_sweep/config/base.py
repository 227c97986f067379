"""Where every default comes from (the YAML of ``conf/``) and the checks every config section uses.

``default("lora", "r")`` is a dataclass field whose default is ``r`` of the option that
``conf/config.yaml`` picks for the ``lora`` group (``conf/lora/default.yaml``): one home per default.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import field
from functools import cache
from typing import Any

from rank_sweep.errors import ConfigError

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # rank_sweep/


def _find_conf_dir() -> str:
    """``conf/`` inside the installed wheel (package data), else at the top of the checkout (editable)."""
    for candidate in (os.path.join(_PACKAGE, "conf"), os.path.join(os.path.dirname(_PACKAGE), "conf")):
        if os.path.isfile(os.path.join(candidate, "config.yaml")):
            return candidate
    raise ConfigError(f"rank_sweep's configs are missing: no conf/config.yaml in {_PACKAGE} or beside it "
                      f"(reinstall rank_sweep)")


CONF_DIR = _find_conf_dir()

ALPHA_POLICIES = ("fixed", "scaled", "rslora")

TASK_SOURCES = ("glue", "csv", "jsonl", "hub")

METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman", "loss", "perplexity")  # loss: validation cross-entropy
# (MSE: regression; per completion token: a causal LM task); perplexity: exp(loss), causal LM tasks only
MINIMIZED = ("loss", "perplexity")  # better when lower: the study's direction follows the primary metric

# task.type: a task yaml without it is a classification (or regression) task, as every GLUE preset is
TASK_TYPES = ("classification", "causal_lm")
LM_FORMATS = ("prompt_completion", "chat", "text")  # task.format of a causal_lm task
TRUNCATIONS = ("error", "left")  # task.truncation: refuse over-long examples, or cut their prompts from the left
LM_TASK_DEFAULTS = "task/jsonl_lm.yaml"  # the home of the causal-LM keys' defaults: the generic LM preset

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "auto")

STRATEGIES = ("ladder", "grid", "tpe", "nested")

PRUNERS = ("none", "median", "hyperband", "patient")

INITS = ("default", "gaussian")  # PEFT's others are refused by name in LoraConfig (sections.py)

METHODS = ("lora", "ia3", "prefix_tuning", "prompt_tuning", "adalora")  # method.name: LoRA or a reference (conf/method/)

SOURCES = ("study", "mlflow", "auto")  # select.source: where rank-sweep-select reads a finished study

FULL = "full"  # the targets of a full fine-tuning trial (r=0): the one definition
HEAD = "head only"  # the targets of the head-only reference trial (r=0): frozen base, the head trained alone


@cache
def conf_yaml(relpath: str) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(os.path.join(CONF_DIR, relpath)), resolve=False)


def _option(group: str, option: str) -> dict:
    """One option file of a group, with the same-group options its defaults list names merged under it
    (``search/grid.yaml`` starts from ``ladder``), as Hydra composes it."""
    from omegaconf import OmegaConf

    data = conf_yaml(f"{group}/{option}.yaml")
    merged = OmegaConf.create({})
    for entry in data.get("defaults", []):
        if isinstance(entry, str) and entry != "_self_":
            merged = OmegaConf.merge(merged, _option(group, entry))
    own = {k: v for k, v in data.items() if k != "defaults"}
    return OmegaConf.to_container(OmegaConf.merge(merged, own), resolve=False)


@cache
def option_defaults(group: str | None) -> dict:
    """The values of the option ``conf/config.yaml`` picks for ``group`` (its root keys for None;
    ``select``: the ``select`` node of ``conf/select.yaml``)."""
    root = conf_yaml("config.yaml")
    if group is None:
        return {k: v for k, v in root.items() if k not in ("defaults", "hydra")}
    if group == "select":
        return conf_yaml("select.yaml")["select"]
    option = next(e[group] for e in root["defaults"] if isinstance(e, dict) and group in e)
    return _option(group, option)


def default(group: str | None, key: str) -> Any:
    """A dataclass field whose default is ``key`` of the group's default option (see the module doc)."""
    def value():
        return copy.deepcopy(option_defaults(group)[key])

    return field(default_factory=value)


def lm_default(key: str) -> Any:
    """A dataclass field for a causal-LM key of the task: its default is that of :data:`LM_TASK_DEFAULTS`
    (classification presets do not list these keys)."""
    return field(default_factory=lambda: copy.deepcopy(conf_yaml(LM_TASK_DEFAULTS)[key]))


def sqlite_path(uri: str | None) -> str | None:
    """The database file of a ``sqlite:///`` URI; None for any other store or an in-memory one.
    The one parser of sqlite URIs: tracking's lock, the default storage and the readers use it."""
    if not uri or not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else path


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_rank(r: Any, where: str = "lora.r") -> int:
    """A LoRA rank is a positive integer; say so, naming the value, if not."""
    if not is_int(r) or r <= 0:
        raise ConfigError(f"{where}={r!r} is not valid: the rank must be a positive integer (1, 2, 4, 8, ...)")
    return r


def check_holdout(holdout: Any, size: Any, fraction: Any, test_file: Any) -> None:
    """The held-out split's task keys (``task.holdout``, ``holdout_size``, ``holdout_dev_fraction``, ``test_file``)."""
    if not isinstance(holdout, bool):
        raise ConfigError(f"task.holdout={holdout!r} is not valid: give true or false")
    positive("task.holdout_size", size, integer=True)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"task.holdout_dev_fraction={fraction!r} is not valid: give a share of the dev set in "
                          f"(0, 1), e.g. 0.2")
    if test_file is not None and (not isinstance(test_file, str) or not test_file.strip()):
        raise ConfigError(f"task.test_file={test_file!r} is not valid: give a file of labelled examples (or null)")


def one_of(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{name}={value!r} is not valid: choose one of {', '.join(valid)}")


def positive(name: str, value: Any, allow_zero: bool = False, integer: bool = False) -> None:
    ok_type = is_int(value) if integer else (isinstance(value, (int, float)) and not isinstance(value, bool))
    if not ok_type or (math.isnan(value) if isinstance(value, float) else False):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name}={value!r} is not valid: it must be {kind}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}={value!r} is not valid: it must be {bound}")


def targets_key(targets: list[str] | tuple[str, ...]) -> str:
    """The logged form of a target set: roles joined by commas, e.g. ``Wq,Wv``."""
    return ",".join(targets)
