"""The whole config of a run (:class:`RunConfig`), the study's search settings, and building both from a
composed Hydra tree with unknown keys refused by name."""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from rank_sweep.config.base import (
    FULL,
    METHODS,
    PRUNERS,
    STRATEGIES,
    boolean,
    check_rank,
    default,
    distinct_roles,
    is_int,
    one_of,
    option_defaults,
    positive,
    refuse_unknown,
    sqlite_path,
    targets_key,
)
from rank_sweep.config.budget import Budget, build_budget
from rank_sweep.config.method import MethodConfig, method_size
from rank_sweep.config.point import Point
from rank_sweep.config.sections import LoraConfig, ModelConfig, TaskConfig, TrackingConfig, TrainerConfig
from rank_sweep.errors import ConfigError


@dataclass
class SearchConfig:
    """How the study walks the recipe (see :mod:`rank_sweep.study.plan`)."""

    strategy: str = default("search", "strategy")
    study_name: str | None = default("search", "study_name")  # None: derived from model, task and strategy
    storage: str | None = default("search", "storage")  # None: sqlite file beside mlflow.db
    target_sets: list[list[str]] = default("search", "target_sets")
    start_rank: int = default("search", "start_rank")
    max_rank: int = default("search", "max_rank")
    ladder: list[int] | None = default("search", "ladder")  # explicit ranks; None: doubling from start_rank
    seeds: int = default("search", "seeds")
    noise_seeds: int = default("search", "noise_seeds")  # extra seeds on each ladder's first rung
    confidence: float = default("search", "confidence")  # of every interval and every verdict
    patience: int = default("search", "patience")
    min_delta: float = default("search", "min_delta")
    noise_k: float = default("search", "noise_k")
    learn_margin: float = default("search", "learn_margin")  # score must beat the trivial baseline by this to count as learning
    lr_bracket: list[float] = default("search", "lr_bracket")  # multiples of trainer.lr the first rung trains (with 1)
    lr_check: bool | str = default("search", "lr_check")  # the plateau rechecked at the bracket's neighbouring lr(s)
    lr_shared: bool = default("search", "lr_shared")  # later ladders climb at the first ladder's calibrated lr
    lr_probe: list[float] = default("search", "lr_probe")  # multiples of trainer.lr tried when a first rung does not learn
    extend: bool = default("search", "extend")
    extend_target_sets: list[list[str]] = default("search", "extend_target_sets")
    extend_max_rank: int = default("search", "extend_max_rank")  # "a low rank": plateau ranks up to this trigger the extension step
    # the allocation step's target sets (None: by the model, see conf/search/ladder.yaml; []: no step) and budgets
    allocation_sets: list[list[str]] | None = default("search", "allocation_sets")
    allocation_budgets: list = default("search", "allocation_budgets")  # LoRA param counts, or "plateau"
    include_full_finetune: bool = default("search", "include_full_finetune")
    # one head-only trial the adapters must beat; None (the default): on for classifiers, off for causal LMs
    head_reference: bool | None = default("search", "head_reference")
    reference_methods: list = default("search", "reference_methods")  # names or {name: ..., <setting>: ...}
    pruner: str = default("search", "pruner")
    n_trials: int | None = default("search", "n_trials")  # tpe only: trials to sample
    tpe_lr_range: list[float] = default("search", "tpe_lr_range")  # tpe only: [low, high] of the lr it draws
    max_retries: int = default("search", "max_retries")
    max_consecutive_failures: int = default("search", "max_consecutive_failures")
    # a RUNNING trial whose worker sent no heartbeat for this long is failed and retried (RDB storage only)
    heartbeat_seconds: int = default("search", "heartbeat_seconds")
    # with several workers on one study: how many rungs above a running rung an idle worker may start ahead
    # of its decision (0: idle workers wait); the decisions stay those of one worker
    speculate: int = default("search", "speculate")
    nested_scale: str = default("search", "nested_scale")  # search=nested: policy | dylora
    nested_frozen: bool = default("search", "nested_frozen")  # search=nested: DyLoRA's frozen mode
    budget: Budget = field(default_factory=lambda: Budget(where="search.budget", **option_defaults("search")["budget"]))

    def __post_init__(self) -> None:
        one_of("search.strategy", self.strategy, STRATEGIES)
        one_of("search.pruner", self.pruner, PRUNERS)
        one_of("search.nested_scale", self.nested_scale, ("policy", "dylora"))
        if not isinstance(self.nested_frozen, bool):
            raise ConfigError(f"search.nested_frozen={self.nested_frozen!r} is not valid: give true or false")
        if isinstance(self.budget, dict):
            self.budget = build_budget(self.budget, "search.budget")
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
        for name in ("target_sets", "extend_target_sets", "allocation_sets"):
            if any(isinstance(ts, str) for ts in getattr(self, name) or []):
                raise ConfigError(
                    f"search.{name}={getattr(self, name)!r} is not valid: give a list of target sets, "
                    f"e.g. [[Wq],[Wq,Wv]]"
                )
            seen: dict[frozenset, list] = {}
            for ts in getattr(self, name) or []:
                distinct_roles(f"search.{name}: target set", ts)
                key = frozenset(map(str, ts))
                if key in seen:
                    raise ConfigError(f"search.{name}={getattr(self, name)!r} is not valid: {seen[key]!r} and "
                                      f"{list(ts)!r} are the same set of matrices (two ladders of one adapter); give "
                                      f"each set once")
                seen[key] = list(ts)
        if self.lr_check not in (True, False, "lower", "both"):
            raise ConfigError(f"search.lr_check={self.lr_check!r} is not valid: give lower (the neighbouring lr below "
                              f"the ladder's), both, or false (true reads as lower)")
        for name in ("extend", "include_full_finetune", "lr_shared"):
            boolean(f"search.{name}", getattr(self, name))
        if self.head_reference is not None:
            boolean("search.head_reference", self.head_reference)
        positive("search.seeds", self.seeds, integer=True)
        positive("search.noise_seeds", self.noise_seeds, allow_zero=True, integer=True)
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, (int, float)) or not 0.5 <= self.confidence < 1:
            raise ConfigError(f"search.confidence={self.confidence!r} is not valid: give a level in [0.5, 1), e.g. 0.95")
        positive("search.patience", self.patience, integer=True)
        positive("search.min_delta", self.min_delta, allow_zero=True)
        positive("search.noise_k", self.noise_k, allow_zero=True)
        positive("search.learn_margin", self.learn_margin, allow_zero=True)
        probe = self.lr_probe
        if (not isinstance(probe, (list, tuple)) or any(isinstance(m, bool) or not isinstance(m, (int, float))
                                                         or not 0 < m != 1 for m in probe)
                or len(set(probe)) != len(probe)):
            raise ConfigError(f"search.lr_probe={probe!r} is not valid: give distinct multiples of trainer.lr other "
                              f"than 1, e.g. [3, 10] (or [] for no probe)")
        bracket = self.lr_bracket
        if (not isinstance(bracket, (list, tuple)) or any(isinstance(m, bool) or not isinstance(m, (int, float))
                                                           or not m > 0 for m in bracket)
                or len(set(bracket)) != len(bracket) or (bracket and 1 not in bracket)):
            raise ConfigError(f"search.lr_bracket={bracket!r} is not valid: give distinct positive multiples of "
                              f"trainer.lr that include 1, e.g. [0.3, 1, 3] (or [] for the configured lr throughout)")
        positive("search.max_retries", self.max_retries, allow_zero=True, integer=True)
        positive("search.max_consecutive_failures", self.max_consecutive_failures, integer=True)
        positive("search.heartbeat_seconds", self.heartbeat_seconds, integer=True)
        positive("search.speculate", self.speculate, allow_zero=True, integer=True)
        if self.heartbeat_seconds < 2:
            raise ConfigError(
                f"search.heartbeat_seconds={self.heartbeat_seconds} is not valid: it must be >= 2 (a live worker "
                f"beats every heartbeat_seconds/3 s, at least every second)"
            )
        check_rank(self.extend_max_rank, "search.extend_max_rank")
        budgets = self.allocation_budgets
        if (not isinstance(budgets, (list, tuple)) or len(set(map(str, budgets))) != len(budgets)
                or any(b != "plateau" and (isinstance(b, bool) or not is_int(b) or b < 1) for b in budgets)):
            raise ConfigError(f"search.allocation_budgets={budgets!r} is not valid: give distinct LoRA parameter "
                              f"counts (integers >= 1) or plateau, e.g. [plateau, 36864]")
        self.references()
        lr = self.tpe_lr_range
        if (not isinstance(lr, (list, tuple)) or len(lr) != 2 or not all(isinstance(x, (int, float)) for x in lr)
                or not 0 < lr[0] < lr[1]):
            raise ConfigError(f"search.tpe_lr_range={lr!r} is not valid: give [low, high] with 0 < low < high")

    def references(self) -> list[MethodConfig]:
        """The reference methods other than ``full`` (that one is :data:`FULL`, as include_full_finetune), each
        with its settings; refuses an unknown method, a setting it does not have, or the same row twice."""
        return [m for m, _ in self._reference_entries() if m is not None]

    def reference_lrs(self) -> dict[tuple[str, int], float]:
        """(method, size) -> the learning rate a reference row trains at, for the rows given ``lr``
        (``{name: full, lr: 5e-5}``; ``full`` is ``(full, 0)``); the others train at ``trainer.lr``."""
        return {(FULL, 0) if m is None else (m.name, method_size(m)): lr
                for m, lr in self._reference_entries() if lr is not None}

    def _reference_entries(self) -> list[tuple[MethodConfig | None, float | None]]:
        """(method, lr) per entry of reference_methods; method None for ``full``."""
        if not isinstance(self.reference_methods, (list, tuple)):
            raise ConfigError(f"search.reference_methods={self.reference_methods!r} is not valid: give a list, "
                              f"e.g. [ia3, adalora, full]")
        out, seen = [], set()
        valid = [FULL, *(m for m in METHODS if m != "lora")]
        for entry in self.reference_methods:
            data = dict(entry) if isinstance(entry, dict) else {"name": entry}
            name = data.pop("name", None)
            if name not in valid:
                raise ConfigError(f"search.reference_methods: {name!r} is not a reference method: valid are "
                                  f"{', '.join(valid)} (LoRA is what the ladders train)")
            lr = data.pop("lr", None)
            if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
                raise ConfigError(f"search.reference_methods: {name} lr={lr!r} is not valid: give a positive "
                                  f"learning rate, e.g. {{name: {name}, lr: 5.0e-5}}")
            lr = None if lr is None else float(lr)
            if name == FULL:
                if data:
                    raise ConfigError(f"search.reference_methods: full takes no settings but lr, got {sorted(data)}")
                if (FULL, 0) in seen:
                    raise ConfigError("search.reference_methods: full is listed twice: give it once")
                seen.add((FULL, 0))
                out.append((None, lr))
                continue
            method = MethodConfig(name=name, settings=data)
            key = (name, method_size(method))
            if key in seen:
                raise ConfigError(f"search.reference_methods: {name} of size {key[1]} is listed twice: give each "
                                  f"a different size (e.g. num_virtual_tokens) or drop one")
            seen.add(key)
            out.append((method, lr))
        return out

    def full_reference(self) -> bool:
        """Full fine-tuning as a reference row: ``include_full_finetune`` or ``full`` in reference_methods."""
        return self.include_full_finetune or any(m is None for m, _ in self._reference_entries())

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
    method: MethodConfig = field(default_factory=MethodConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    seed: int = default(None, "seed")
    output_dir: str = default(None, "output_dir")
    save_adapter: bool = default(None, "save_adapter")
    worker: Any = default(None, "worker")  # a label only: launchers that start N copies of one sweep sweep over it (worker=0,1,2,3)

    def __post_init__(self) -> None:
        if not is_int(self.seed) or not 0 <= self.seed < 2**32 - 1000:
            raise ConfigError(f"seed={self.seed!r} is not valid: give an integer from 0 to {2**32 - 1001} (numpy's "
                              f"range, less room for the seeds a rung adds)")
        boolean("save_adapter", self.save_adapter)
        boolean("tracking.log_config_artifact", self.tracking.log_config_artifact)

    def storage_url(self) -> str:
        """The Optuna storage: ``search.storage``, else ``optuna.db`` beside a sqlite ``mlflow.db``."""
        if self.search.storage:
            return self.search.storage
        db = sqlite_path(self.tracking.resolved_uri())
        folder = os.path.dirname(db) if db and db.endswith(".db") else ""
        return f"sqlite:///{folder + '/' if folder else ''}optuna.db"

    def study_name(self) -> str:
        return self.search.study_name or f"{self.model.name}-{self.task.name}-{self.search.strategy}"


TRIAL_SECTIONS = ("model", "task", "lora", "method", "trainer", "seed")  # what retrains one trial: a preset sets these


def trial_config(cfg: RunConfig, point: Point, **overrides) -> RunConfig:
    """``cfg`` for one :class:`~rank_sweep.config.point.Point` (its method, targets, rank or size, seed and own
    learning rate), then ``section.key`` overrides."""
    run = copy.deepcopy(cfg)
    run.seed = point.seed
    methods = {(m.name, method_size(m)): m for m in cfg.search.references()}
    if point.method == "full":
        run.lora.full_finetune = True
    elif point.method == "head":
        run.lora.head_only = True
    elif point.method != "lora":  # a reference method, of its size
        run.method = copy.deepcopy(methods.get((point.method, point.r)) or MethodConfig(name=point.method))
    else:
        run.lora.targets, run.lora.r = point.targets.split(","), point.r
    if point.lr is not None:
        run.trainer.lr = point.lr
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        setattr(getattr(run, section), name, value)
    return run


def run_point(cfg: RunConfig) -> Point:
    """The point a run config trains (the inverse of :func:`trial_config`; its lr stays the config's)."""
    if cfg.method.name != "lora":
        return Point.reference(cfg.method.name, method_size(cfg.method), cfg.seed)
    if cfg.lora.head_only:
        return Point.head(cfg.seed)
    if cfg.lora.full_finetune:
        return Point.full(cfg.seed)
    return Point(targets_key(cfg.lora.targets), cfg.lora.r, cfg.seed)


def build(cls: type, data: dict | None, where: str) -> Any:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys by name."""
    data = dict(data or {})
    refuse_unknown(data, {f.name for f in dataclasses.fields(cls)}, where)
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
        "method": MethodConfig,
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
