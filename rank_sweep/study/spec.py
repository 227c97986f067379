"""What a study was asked to do (:class:`LadderSpec`, built from the config by ``study.run.build_spec``) and
what keeps a point from running (:func:`over_budget`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LadderSpec:
    target_sets: list[str]
    ranks: list[int]
    seeds: list[int]
    patience: int = 1
    min_delta: float = 0.005
    noise_k: float = 1.0
    direction: str = "maximize"
    extend: bool = True
    extend_sets: list[str] = field(default_factory=list)
    extend_max_rank: int = 4
    include_full: bool = False
    references: list[tuple[str, int]] = field(default_factory=list)  # (method, size): one trial per seed
    # (method, size) -> the lr a reference row trains at ((full, 0) for full fine-tuning); absent: trainer.lr
    reference_lr: dict[tuple[str, int], float] = field(default_factory=dict)
    head_reference: bool = False  # one trial of the head alone (seed spec.seeds[0]): what the adapters must beat
    max_retries: int = 2
    # (targets, r) -> (lora_params, trainable_params); None: no parameter budget
    cost: Callable[[str, int], tuple[int, int]] | None = None
    max_lora_params: int | None = None
    max_trainable_params: int | None = None
    rank_limit: int | None = None  # search.budget.max_rank
    max_memory_mb: float | None = None  # search.budget.max_memory_mb: a rung predicted over it is not trained
    grid: bool = False
    nested: bool = False  # search=nested: one nested-rank screen per target set, then confirmations
    tuned: bool = False  # TPE: the sampler draws points (and other values); the plan neither proposes nor judges
    speculate: int = 1  # rungs above a running rung that idle workers may start ahead of its decision
    noise_seeds: list[int] = field(default_factory=list)  # extra seeds on each ladder's first rung (seed noise)
    # (records of a, records of b, reused seed std) -> Interval of mean score(b) - mean score(a) on the same dev
    # examples, or None when their predictions are not at hand: then the rule compares means (noise_k, min_delta)
    compare: Callable | None = None
    confidence: float = 0.95
    # multiples of base_lr: a first rung that does not learn is retried at each in turn, and the ladder climbs at
    # the first that learns (search.lr_probe); empty: no probe
    lr_probe: list[float] = field(default_factory=list)
    base_lr: float | None = None
    # multiples of base_lr the first rung of each ladder trains before the ladder climbs (search.lr_bracket): the
    # best by the paired statistic is the ladder's lr (study.rungs.calibrate); empty: the configured lr throughout
    lr_bracket: list[float] = field(default_factory=list)
    # with a bracket: the plateau rechecked at the bracket's lower neighbouring lr ("lower"), at both ("both"), or not
    # ("") (search.lr_check; study.rungs.check_across_lr)
    lr_check: str = ""
    # with a bracket: ladders after the first climb at the lr the first ladder's bracket chose, instead of running
    # their own bracket (search.lr_shared; their check across lr then also tests that the lr transfers)
    lr_shared: bool = False
    # the allocation step (rank_sweep.study.allocation): its target sets, its budgets (LoRA param counts, or
    # "plateau": the best ladder's plateau configuration's), and how the summary names a set given as a group
    allocation_sets: list[str] = field(default_factory=list)
    allocation_budgets: list[int | str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # e.g. "Wup,Wdown" -> "mlp"


def rung_seeds(spec: LadderSpec, r: int) -> list[int]:
    """The seeds a rung runs: the first rung of a ladder adds the noise seeds (it is the cheapest)."""
    return spec.seeds + spec.noise_seeds if r == spec.ranks[0] else list(spec.seeds)


def over_budget(spec: LadderSpec, targets: str, r: int) -> str | None:
    """Why LoRA on ``targets`` at rank ``r`` is over the study's budget, or None (reference rows are not bound)."""
    if spec.rank_limit is not None and r > spec.rank_limit:
        return f"r={r} > budget max_rank {spec.rank_limit}"
    if spec.cost is None:
        return None
    lora_params, trainable = spec.cost(targets, r)
    if spec.max_lora_params is not None and lora_params > spec.max_lora_params:
        return f"r={r} needs {lora_params:,} LoRA params > budget {spec.max_lora_params:,}"
    if spec.max_trainable_params is not None and trainable > spec.max_trainable_params:
        return f"r={r} needs {trainable:,} trainable params > budget {spec.max_trainable_params:,}"
    return None


# the bytes one more trainable parameter adds to a trial's peak: its float32 weight, its gradient and AdamW's two
# moments (the activations of the LoRA factors, r values per token and adapted matrix, are left out)
BYTES_PER_TRAINABLE = 16


def predicted_memory(spec: LadderSpec, targets: str, r: int, measured: dict[int, float]) -> tuple[float, int] | None:
    """(the peak memory in MiB predicted for rung ``r``, the rung it is predicted from), or None without a measured
    rung below it: the highest measured rung's peak (the largest over its seeds) plus
    :data:`BYTES_PER_TRAINABLE` for every trainable parameter rung ``r`` adds to it."""
    below = [x for x in measured if x < r]
    if not below or spec.cost is None:
        return None
    r0 = max(below)
    extra = spec.cost(targets, r)[1] - spec.cost(targets, r0)[1]
    return measured[r0] + extra * BYTES_PER_TRAINABLE / 2 ** 20, r0


def over_memory(spec: LadderSpec, targets: str, r: int, measured: dict[int, float]) -> str | None:
    """Why rung ``r`` is not trained under ``search.budget.max_memory_mb``, or None (no budget, no measured rung
    below it, or predicted within it)."""
    if spec.max_memory_mb is None:
        return None
    guess = predicted_memory(spec, targets, r, measured)
    if guess is None or guess[0] <= spec.max_memory_mb:
        return None
    mb, r0 = guess
    return (f"r={r} is predicted to need {mb:,.0f} MB peak memory > budget {spec.max_memory_mb:,.0f} "
            f"(r={r0} measured {measured[r0]:,.0f} MB + {BYTES_PER_TRAINABLE} bytes per added trainable param)")
