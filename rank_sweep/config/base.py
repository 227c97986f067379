"""Where every default comes from (the YAML of ``conf/``) and the checks every config section uses.

``default("lora", "r")`` is a dataclass field whose default is ``r`` of the option that
``conf/config.yaml`` picks for the ``lora`` group (``conf/lora/default.yaml``): one home per default.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import re
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

# The one table of the metrics a task scores by and their direction (the study's direction follows the primary
# metric). loss: validation cross-entropy (MSE: regression; per completion token: a causal LM task); perplexity:
# exp(loss), causal LM tasks only, and not a mean over examples, so it has no paired per-example statistic.
# rank_sweep.results.paired imports only numpy and scipy (a test holds it to that), so it keeps its own list of
# the metrics it compares example by example and of the directions: tests/unit/results/test_paired.py checks that
# they are this table's.
METRIC_DIRECTIONS = {"accuracy": "maximize", "f1": "maximize", "mcc": "maximize", "pearson": "maximize",
                     "spearman": "maximize", "loss": "minimize", "perplexity": "minimize"}
DIRECTIONS = ("maximize", "minimize")
METRICS = tuple(METRIC_DIRECTIONS)
MINIMIZED = tuple(m for m, d in METRIC_DIRECTIONS.items() if d == "minimize")  # better when lower
# model.quantization: the base as loaded (bitsandbytes): nf4 and fp4 are 4-bit (QLoRA), int8 LLM.int8()
QUANTIZATIONS = ("none", "nf4", "fp4", "int8")

# task.type: a task yaml without it is a classification (or regression) task, as every GLUE preset is
TASK_TYPES = ("classification", "causal_lm")
LM_FORMATS = ("prompt_completion", "chat", "text")  # task.format of a causal_lm task
TRUNCATIONS = ("error", "left")  # task.truncation: refuse over-long examples, or cut their prompts from the left
LM_TASK_DEFAULTS = "task/jsonl_lm.yaml"  # the home of the causal-LM keys' defaults: the generic LM preset

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "auto")

STRATEGIES = ("ladder", "grid", "tpe", "nested")

PRUNERS = ("none", "median", "hyperband", "patient")

POOLINGS = ("auto", "cls", "cls_frozen", "mean")  # model.pooling: how a classifier reads the encoder (train/head.py)

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
    The one reader of sqlite URIs (SQLAlchemy's parser): tracking's lock, the default storage and the readers
    use it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(uri) if uri else None
    except ArgumentError:  # not a URL at all (a journal file's path, say)
        return None
    if url is None or url.get_backend_name() != "sqlite":
        return None
    return None if url.database in (None, "", ":memory:") else url.database


def refuse_unknown(data: dict, names, where: str) -> None:
    """The one refusal of a key no config section has, in a mapping built into a config (what Hydra accepted:
    ``+``/``++`` additions, presets, dicts given to the API); a plain override of an unknown key on the command line
    is refused before Hydra composes (rank_sweep.commands.overrides), with the closest valid key."""
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]} is not a known key: valid keys are {', '.join(sorted(names))}")


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


def positive(name: str, value: Any, allow_zero: bool = False, integer: bool = False,
             minimum: tuple[int, str] | None = None) -> None:
    """``value`` is a number (an integer with ``integer``) > 0 (>= 0 with ``allow_zero``; >= ``minimum[0]``,
    for the reason ``minimum[1]``, with ``minimum``)."""
    ok_type = is_int(value) if integer else (isinstance(value, (int, float)) and not isinstance(value, bool))
    if not ok_type or (math.isnan(value) if isinstance(value, float) else False):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name}={value!r} is not valid: it must be {kind}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}={value!r} is not valid: it must be {bound}")
    if minimum is not None and value < minimum[0]:
        raise ConfigError(f"{name}={value!r} is not valid: it must be >= {minimum[0]} ({minimum[1]})")


def boolean(name: str, value: Any) -> None:
    """A switch is true or false; ``save_adapter=no`` arrives as the string 'no', which Python reads as true."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is not valid: give true or false")


def optional_count(name: str, value: Any, what: str, off: str) -> None:
    """None (``off``) or a positive integer (``trainer.num_threads``, ``trainer.early_stopping_patience``)."""
    if value is not None and (not is_int(value) or value < 1):
        raise ConfigError(f"{name}={value!r} is not valid: give a positive integer ({what}) or null ({off})")


def check_classes(labels: list, metric: str, metrics: list[str]) -> list[str]:
    """A classification task's ``task.labels`` as strings: two or more, each once, and no correlation metric."""
    labels = [str(x) for x in labels]
    if len(labels) < 2:
        raise ConfigError(f"task.labels={labels!r} is not valid: a classification task needs >= 2 labels")
    if len(set(labels)) < len(labels):
        raise ConfigError(f"task.labels={labels!r} is not valid: each label once (a repeated label adds a class no "
                          f"example can have)")
    for m in metrics:
        if m in ("pearson", "spearman"):
            raise ConfigError(f"{'task.metric' if m == metric else 'task.metrics'} contains {m!r}, not valid for a "
                              f"classification task (task.labels is set): it correlates numbers; use mcc, accuracy "
                              f"or f1 (or task.labels=null for a regression task)")
    return labels


def distinct_roles(name: str, targets: list) -> None:
    """A target set names each role once: ``[Wq,Wq]`` trains Wq but is logged (and selected) as another set."""
    twice = sorted({str(t) for t in targets if list(targets).count(t) > 1})
    if twice:
        raise ConfigError(f"{name}={list(targets)!r} is not valid: {', '.join(twice)} is named twice; name each "
                          f"role once")


def targets_key(targets: list[str] | tuple[str, ...]) -> str:
    """The logged form of a target set: roles joined by commas, e.g. ``Wq,Wv``."""
    return ",".join(targets)


def check_quantization(value: str | None) -> str:
    """``model.quantization`` checked (None reads as ``none``): a known value, and bitsandbytes installed for it."""
    value = "none" if value is None else value
    one_of("model.quantization", value, QUANTIZATIONS)
    if value != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"model.quantization={value} needs the bitsandbytes package, which is not installed: "
                          f"pip install 'rank-sweep[quant]' (or bitsandbytes), or set model.quantization=none")
    return value


def check_generation(fmt: str, max_new_tokens: Any, answer_pattern: Any) -> None:
    """``task.metric=exact_match``: a prompt to answer, a number of tokens to generate, a pattern that compiles."""
    if fmt == "text":
        raise ConfigError("task.metric=exact_match is not valid with task.format=text: a text task has no prompt "
                          "to answer; use task.format=prompt_completion or chat")
    positive("task.max_new_tokens", max_new_tokens, integer=True)
    if answer_pattern is not None:
        try:
            re.compile(answer_pattern)
        except (re.error, TypeError) as e:
            raise ConfigError(f"task.answer_pattern={answer_pattern!r} is not a valid regular expression ({e}): give "
                              f"one whose group 1 (or whole match) is the answer, e.g. '#### (-?[0-9.,]+)'") from None
