"""The one budget type (``search.budget.*`` for the study, ``budget.*`` for ``rank-sweep-select``) and the
select command's own settings (``select.*``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from rank_sweep.config.base import FULL, METHODS, SOURCES, default, one_of, positive, refuse_unknown
from rank_sweep.errors import ConfigError


@dataclass
class Budget:
    """Upper limits; ``None`` means no limit. The one budget type, under two config paths:

    - ``search.budget.*`` limits the study: a rung over ``max_lora_params``, ``max_trainable_params`` or
      ``max_rank`` is not trained (its cost is known before training), nor one whose peak memory, predicted from
      the highest measured rung below it (:func:`rank_sweep.study.spec.predicted_memory`), is over
      ``max_memory_mb``; the study stops after ``max_trials`` trials or ``max_seconds`` of training;
    - ``budget.*`` (``rank-sweep-select``) limits the choice: a configuration over any per-configuration
      limit (the three above, ``max_train_seconds``, its mean training time, and ``max_memory_mb``, its peak
      training memory, the largest over seeds) is not chosen.
    """

    max_lora_params: int | None = None
    max_trainable_params: int | None = None
    max_rank: int | None = None
    max_train_seconds: float | None = None
    max_memory_mb: float | None = None  # peak training memory (train.memory: CUDA allocator, or peak RSS on CPU)
    max_trials: int | None = None
    max_seconds: float | None = None
    where: str = field(default="budget", repr=False, compare=False)  # the config path, for messages

    def __post_init__(self) -> None:
        for f in self.limits():
            v = getattr(self, f)
            if v is not None:
                positive(f"{self.where}.{f}", v, integer=not f.endswith(("seconds", "_mb")))

    @classmethod
    def limits(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "where"]

    def fits(self, summary) -> tuple[bool, str | None]:
        """``(True, None)``, or ``(False, "over budget: ...")`` naming the first per-configuration limit that
        ``summary`` (anything with ``targets``, ``r``, ``lora_params``, ``trainable_params``,
        ``train_seconds``, ``peak_memory_mb``; ``None`` = unknown) breaks."""
        if self.max_rank is not None:
            if summary.targets == "full" or summary.r == 0:
                return False, f"over budget: full fine-tuning has no rank <= max {self.max_rank}"
            if summary.r > self.max_rank:
                return False, f"over budget: r={summary.r} > max {self.max_rank}"
        for name, value, unit in (("max_lora_params", summary.lora_params, "LoRA params"),
                                  ("max_trainable_params", summary.trainable_params, "trainable params"),
                                  ("max_train_seconds", summary.train_seconds, "s of training"),
                                  ("max_memory_mb", getattr(summary, "peak_memory_mb", None), "MB peak memory")):
            limit = getattr(self, name)
            if limit is None:
                continue
            if value is None:
                return False, f"over budget: {unit} unknown, {name}={count_text(limit)}"
            if value > limit:
                return False, f"over budget: {count_text(value)} {unit} > max {count_text(limit)}"
        return True, None

    def __str__(self) -> str:
        set_ = [f"{f}={getattr(self, f):,}" for f in self.limits() if getattr(self, f) is not None]
        return ", ".join(set_) or "no limits"

# a limit one command cannot act on: the study knows a trial's time only after training it; select
# chooses among configurations, not how long a study runs
_NOT_USED = {"search.budget": ("max_train_seconds", "set budget.max_train_seconds for rank-sweep-select, or "
                                                    "search.budget.max_seconds to stop the study"),
             "budget": ("max_trials", "max_seconds", "these limit the study: set them under search.budget")}


def build_budget(data: dict | None, where: str) -> Budget:
    """A :class:`Budget` from a config mapping at ``where`` (``search.budget`` or ``budget``): unknown keys and
    limits that command cannot act on are refused by name."""
    data = {k: v for k, v in dict(data or {}).items()}
    refuse_unknown(data, Budget.limits(), where)
    *unused, hint = _NOT_USED.get(where, ("",))
    for key in unused:
        if data.get(key) is not None:
            raise ConfigError(f"{where}.{key}={data[key]!r} is not used here: {hint}")
    return Budget(where=where, **data)


def count_text(x: float | None) -> str:
    """How budgets and reports write a count or a limit: ``1,234``, ``0.5``, ``?`` when unknown."""
    if x is None:
        return "?"
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"


@dataclass
class SelectConfig:
    """``rank-sweep-select``: which study to read, from where, and how close to the best is as good."""

    tolerance: float = default("select", "tolerance")
    study_name: str | None = default("select", "study_name")
    source: str = default("select", "source")
    output_dir: str | None = default("select", "output_dir")
    methods: list[str] = default("select", "methods")
    report: bool = default("select", "report")

    def __post_init__(self) -> None:
        one_of("select.source", self.source, SOURCES)
        if not isinstance(self.report, bool):
            raise ConfigError(f"select.report={self.report!r} is not valid: give true or false")
        if isinstance(self.methods, str):
            self.methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        valid = (*METHODS, FULL, "all")
        if not isinstance(self.methods, (list, tuple)) or not self.methods:
            raise ConfigError(f"select.methods={self.methods!r} is not valid: give a list of {', '.join(valid)}")
        for m in self.methods:
            one_of("select.methods", m, valid)
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float)) or not self.tolerance >= 0:
            raise ConfigError(f"tolerance={self.tolerance!r} is not valid: give a score difference >= 0")
