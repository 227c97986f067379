"""The sections of a trial's config: model, task, LoRA adapter, trainer, tracking.

Each ``__post_init__`` rejects a bad value with a one-line :class:`~rank_sweep.errors.ConfigError` that
names it and what is valid; defaults come from ``conf/`` (:func:`rank_sweep.config.base.default`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from rank_sweep.config.base import (
    ALPHA_POLICIES,
    INITS,
    METRIC_DIRECTIONS,
    METRICS,
    POOLINGS,
    PRECISIONS,
    TASK_SOURCES,
    TASK_TYPES,
    boolean,
    check_classes,
    check_holdout,
    check_quantization,
    check_rank,
    conf_yaml,
    default,
    distinct_roles,
    is_int,
    lm_default,
    one_of,
    option_defaults,
    optional_count,
    positive,
)
from rank_sweep.config.lm_task import EXACT_MATCH, check_causal_task
from rank_sweep.errors import ConfigError


@dataclass
class ModelConfig:
    """Which pretrained model to adapt. ``name_or_path``: hub id or local folder;
    ``pkg:<module>/<subdir>`` points inside an installed Python package."""

    name: str = default("model", "name")
    name_or_path: str = default("model", "name_or_path")
    family: str | None = default("model", "family")  # auto-detected from config.model_type when None
    trust_remote_code: bool = default("model", "trust_remote_code")
    pooling: str = default("model", "pooling")  # how a classifier reads the encoder: rank_sweep.train.head
    # none, or the base loaded by bitsandbytes: nf4/fp4 (4 bits, QLoRA), int8 (rank_sweep.train.loading)
    quantization: str = field(default_factory=lambda: option_defaults("model").get("quantization", "none"))

    def __post_init__(self) -> None:
        if not self.name_or_path or not isinstance(self.name_or_path, str):
            raise ConfigError(f"model.name_or_path={self.name_or_path!r} is not valid: give a hub id or a local folder")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"model.pooling={self.pooling!r} is not valid: use one of {', '.join(POOLINGS)}")
        boolean("model.trust_remote_code", self.trust_remote_code)
        self.quantization = check_quantization(self.quantization)

    quantized = property(lambda self: self.quantization != "none", doc="The base's linear layers are bitsandbytes'")

    @property
    def label(self) -> str:
        """The model trained, as runs name it (MLflow param ``model``): the preset's name when its
        ``name_or_path`` is the preset's own, else the hub id or the folder's name, so two different
        models never look the same in the MLflow UI."""
        try:
            preset = conf_yaml(f"model/{self.name}.yaml").get("name_or_path")
        except OSError:  # no such preset: a name given on the command line
            preset = None
        if preset == self.name_or_path:
            return self.name
        path = self.name_or_path.rstrip("/")
        if path.startswith("pkg:"):
            return path[4:]
        if os.path.isabs(path) or path.startswith((".", "~")) or os.path.isdir(path):
            return os.path.basename(os.path.expanduser(path))
        return path  # a hub id: org/name


MIN_SEQ_LENGTH = (8, "the special tokens alone take 2-3 of them")  # task.max_seq_length's lower bound, and why


@dataclass
class TaskConfig:
    """A classification or regression task, or a causal LM task (``type: causal_lm``), and where its data lives.

    A causal LM task trains on completions (the loss counts completion tokens only): ``format`` says where
    they come from: ``prompt_completion`` (``prompt_field`` and ``completion_field``, or a prompt built from
    ``text_fields`` by ``prompt_template`` and the completion ``choices[label]``), ``chat`` (``messages_field``
    rendered by the tokenizer's chat template, the last assistant turn the completion) or ``text`` (all of
    ``text_field``). With ``choices``, the answer is also scored as the most likely choice (``accuracy``);
    ``labels`` then name the label values of ``choices`` in order (default: the choices themselves)."""

    name: str = default("task", "name")
    source: str = default("task", "source")  # glue | csv | jsonl | hub
    glue_name: str | None = default("task", "glue_name")  # folder under GLUE_DIR
    hub_path: str | None = default("task", "hub_path")
    hub_config: str | None = default("task", "hub_config")
    data_dir: str | None = default("task", "data_dir")  # GLUE folder (else $GLUE_DIR), or folder of csv/jsonl files
    train_file: str | None = default("task", "train_file")
    validation_file: str | None = default("task", "validation_file")
    text_fields: list[str] = default("task", "text_fields")
    label_field: str = default("task", "label_field")
    labels: list[str] | None = default("task", "labels")  # None: regression
    metric: str = default("task", "metric")  # the primary metric: the study's objective
    metrics: list[str] = default("task", "metrics")
    max_seq_length: int = default("task", "max_seq_length")
    max_train_samples: int | None = default("task", "max_train_samples")
    max_eval_samples: int | None = default("task", "max_eval_samples")
    holdout: bool = default("task", "holdout")  # a held-out split, scored and never read by a decision
    holdout_size: int = default("task", "holdout_size")  # from the training rows a subsample leaves unused
    holdout_dev_fraction: float = default("task", "holdout_dev_fraction")  # else this share of dev, by hash
    test_file: str | None = default("task", "test_file")  # else this file, held out whole
    type: str = field(default_factory=lambda: option_defaults("task").get("type", TASK_TYPES[0]))
    format: str = lm_default("format")
    prompt_field: str = lm_default("prompt_field")
    completion_field: str = lm_default("completion_field")
    messages_field: str = lm_default("messages_field")
    text_field: str = lm_default("text_field")
    prompt_template: str | None = lm_default("prompt_template")  # str.format over text_fields
    choices: list[str] | None = lm_default("choices")
    truncation: str = lm_default("truncation")  # error | left (cut the prompt's start; never the completion)
    append_eos: bool = lm_default("append_eos")  # end each completion with the tokenizer's eos token
    max_new_tokens: int = lm_default("max_new_tokens")  # exact_match: greedy tokens generated per dev prompt
    answer_pattern: str | None = lm_default("answer_pattern")  # exact_match: regex of the answer (None: first line)

    # the keys only a causal LM task reads (left out of a classification task's recorded config)
    LM_KEYS = ("type", "format", "prompt_field", "completion_field", "messages_field", "text_field",
               "prompt_template", "choices", "truncation", "append_eos", "max_new_tokens", "answer_pattern")
    # LM keys added later, with the value causal trials had before (left out of the record at that value)
    LM_KEYS_ADDED = {"max_new_tokens": 16, "answer_pattern": None}
    # the keys of the held-out split (every task type: rank_sweep.train.holdout)
    HOLDOUT_KEYS = ("holdout", "holdout_size", "holdout_dev_fraction", "test_file")

    def __post_init__(self) -> None:
        one_of("task.type", self.type, TASK_TYPES)
        if self.is_causal:
            check_causal_task(self)  # rank_sweep.config.lm_task
            return
        one_of("task.source", self.source, TASK_SOURCES)
        if not self.text_fields or len(self.text_fields) > 2:
            raise ConfigError(
                f"task.text_fields={self.text_fields!r} is not valid: give one or two column names"
            )
        for m in [self.metric, *self.metrics]:
            one_of("task.metric", m, tuple(x for x in METRICS if x != "perplexity"))  # perplexity: causal LM only
        if self.metric not in self.metrics:
            self.metrics = [self.metric, *self.metrics]
        if self.labels is not None:
            self.labels = check_classes(self.labels, self.metric, self.metrics)
        else:
            for m in self.metrics:
                if m not in ("pearson", "spearman", "loss"):
                    key = "task.metric" if m == self.metric else "task.metrics"
                    raise ConfigError(f"{key} contains {m!r}, not valid for a regression task: use pearson or spearman")
        positive("task.max_seq_length", self.max_seq_length, integer=True, minimum=MIN_SEQ_LENGTH)
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None:
                positive(f"task.{name}", getattr(self, name), integer=True)
        if self.source in ("csv", "jsonl") and not (self.train_file and self.validation_file):
            raise ConfigError(
                f"task.source={self.source} needs task.train_file and task.validation_file "
                f"(got {self.train_file!r}, {self.validation_file!r})"
            )
        check_holdout(self.holdout, self.holdout_size, self.holdout_dev_fraction, self.test_file)

    @property
    def is_causal(self) -> bool:
        """A causal LM task: completions trained and scored by a model's LM head."""
        return self.type == "causal_lm"

    @property
    def is_regression(self) -> bool:
        """No labels: a regression task, or a causal LM task without choices (its per-example losses then
        travel as one value per example, as regression outputs do); not ``exact_match`` (one right/wrong each)."""
        return self.labels is None and self.metric != EXACT_MATCH

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def direction(self) -> str:
        """``maximize``, or ``minimize`` for a metric that is better when lower (``loss``): the study's
        direction, and the direction of every comparison the ladder, select and the plots make."""
        return METRIC_DIRECTIONS.get(self.metric, "maximize")  # exact_match, a choice metric: higher is better

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

    r: int = default("lora", "r")
    targets: list[str] = default("lora", "targets")
    alpha_policy: str = default("lora", "alpha_policy")
    alpha: float = default("lora", "alpha")  # used by fixed and rslora
    alpha_k: float = default("lora", "alpha_k")  # used by scaled
    dropout: float = default("lora", "dropout")
    init: str = default("lora", "init")
    full_finetune: bool = default("lora", "full_finetune")  # reference row: train every weight, no adapter
    head_only: bool = default("lora", "head_only")  # reference row: the head alone on the frozen base, no adapter

    # PEFT inits a user may reach for, and why each would break what a trial records (not a field: no annotation)
    _REFUSED_INITS = {
        **dict.fromkeys(("pissa", "olora"), "it rewrites the base weights, so the saved adapter would not "
                                            "reproduce the trained model on a fresh base"),
        "loftq": "it needs a quantized base model and a loftq_config, which rank_sweep does not pass",
    }

    def __post_init__(self) -> None:
        if not (self.full_finetune or self.head_only):
            check_rank(self.r)
        one_of("lora.alpha_policy", self.alpha_policy, ALPHA_POLICIES)
        if self.init in self._REFUSED_INITS:
            raise ConfigError(f"lora.init={self.init!r} is not supported: {self._REFUSED_INITS[self.init]}; "
                              f"choose {' or '.join(INITS)}")
        one_of("lora.init", self.init, INITS)
        positive("lora.alpha", self.alpha)
        positive("lora.alpha_k", self.alpha_k)
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout={self.dropout!r} is not valid: it must be in [0, 1)")
        boolean("lora.full_finetune", self.full_finetune)
        boolean("lora.head_only", self.head_only)
        if not (self.full_finetune or self.head_only):
            if isinstance(self.targets, str):
                self.targets = [t for t in self.targets.split(",") if t]
            if not self.targets:
                raise ConfigError("lora.targets=[] is not valid: name at least one role (Wq, Wk, Wv, Wo, Wup, Wdown) or module name")
            distinct_roles("lora.targets", self.targets)

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
    epochs: int = default("trainer", "epochs")
    lr: float = default("trainer", "lr")
    batch_size: int = default("trainer", "batch_size")
    eval_batch_size: int = default("trainer", "eval_batch_size")
    weight_decay: float = default("trainer", "weight_decay")
    warmup_ratio: float = default("trainer", "warmup_ratio")
    precision: str = default("trainer", "precision")  # auto: bf16-mixed where the hardware has it, else 32-true
    accelerator: str = default("trainer", "accelerator")
    devices: Any = default("trainer", "devices")
    strategy: str = default("trainer", "strategy")  # Lightning's strategy name, passed through (one device: see devices)
    num_threads: int | None = default("trainer", "num_threads")  # torch intra-op threads; None: all cores
    early_stopping_patience: int | None = default("trainer", "early_stopping_patience")
    group_by_length: bool = default("trainer", "group_by_length")
    progress_bar: bool = default("trainer", "progress_bar")
    max_steps: int = default("trainer", "max_steps")  # for benchmarks; -1 means epochs decide
    accumulate_grad_batches: int = default("trainer", "accumulate_grad_batches")  # optimizer step every N batches
    gradient_checkpointing: bool = default("trainer", "gradient_checkpointing")  # recompute activations: less memory

    def __post_init__(self) -> None:
        positive("trainer.epochs", self.epochs, integer=True)
        positive("trainer.lr", self.lr)
        positive("trainer.batch_size", self.batch_size, integer=True)
        positive("trainer.eval_batch_size", self.eval_batch_size, integer=True)
        positive("trainer.weight_decay", self.weight_decay, allow_zero=True)
        if not isinstance(self.warmup_ratio, (int, float)) or not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"trainer.warmup_ratio={self.warmup_ratio!r} is not valid: it must be in [0, 1)")
        positive("trainer.accumulate_grad_batches", self.accumulate_grad_batches, integer=True)
        if not isinstance(self.gradient_checkpointing, bool):
            raise ConfigError(f"trainer.gradient_checkpointing={self.gradient_checkpointing!r} is not valid: true or false")
        for name in ("group_by_length", "progress_bar"):
            boolean(f"trainer.{name}", getattr(self, name))
        optional_count("trainer.num_threads", self.num_threads, "torch threads", "all cores")
        optional_count("trainer.early_stopping_patience", self.early_stopping_patience, "epochs", "no early stopping")
        if not is_int(self.max_steps) or (self.max_steps < 1 and self.max_steps != -1):
            raise ConfigError(f"trainer.max_steps={self.max_steps!r} is not valid: a positive integer, or -1 (epochs decide)")
        one_of("trainer.precision", self.precision, PRECISIONS)
        one_of("trainer.accelerator", self.accelerator, ("cpu", "gpu", "cuda", "mps", "auto"))
        # Under DDP each process would score only its shard of the dev set (predictions are not gathered), so
        # a trial gets exactly one device: 1, "1" or one index ([0]). "auto" and -1 are refused as well: on a
        # host with several GPUs Lightning resolves them to all of them.
        d = self.devices
        one = (is_int(d) and d == 1) or d == "1" or (
            isinstance(d, (list, tuple)) and len(d) == 1 and is_int(d[0]) and d[0] >= 0)
        if not one:
            raise ConfigError(
                f"trainer.devices={self.devices!r} is not valid: a trial runs on one device (its dev-set "
                f"predictions are scored in one process); run several workers on one study to use several "
                f"devices (docs/scale_out.md)"
            )
        if self.strategy != "auto":  # Lightning's names; imported only when one is asked for
            from lightning.pytorch.strategies import StrategyRegistry

            names = [n for n in StrategyRegistry.available_strategies() if "xla" not in n and "tpu" not in n]
            if self.strategy not in names:
                short = ("auto", "ddp", "ddp_spawn", "fsdp", "deepspeed_stage_2", "single_device")
                raise ConfigError(f"trainer.strategy={self.strategy!r} is not valid: choose one of "
                                  f"{', '.join(short)} (or another of Lightning's {len(names)} strategy names)")


@dataclass
class TrackingConfig:
    uri: str | None = default("tracking", "uri")  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = default("tracking", "experiment")
    log_config_artifact: bool = default("tracking", "log_config_artifact")

    def resolved_uri(self) -> str:
        return self.uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
