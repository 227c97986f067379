"""The planner's cost: the time a worker takes to decide the next point of a study with n finished trials.

    python experiments/benchmarks/plan_cost.py                       # plan_seconds_100, plan_seconds_1000
    python experiments/benchmarks/bench.py --only plan_seconds       # the same, as a section of bench.json

No training and no data: a ladder study with n finished trials is written to a temporary SQLite file
(``optuna.trial.create_trial`` + ``study.add_trials``, each trial with the params, user attrs and system
attrs a trained trial carries), then timed: what a worker does at each trial event to decide its next
point, one storage read of every record and one plan (:class:`rank_sweep.study.state.StudyState`, shared
by the console line, the stop rule and the claim), then the point (:func:`rank_sweep.study.sampler.next_point`).
``plan_seconds_<n>``: a worker in the middle of a study (Optuna's storage cache holds the finished
trials it has read before), wall time; ``plan_cpu_seconds_<n>``: the same in this process's CPU time (what
other jobs on a shared machine do not inflate); ``plan_cold_seconds_<n>``: a worker that has just opened
the storage.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import sys
import tempfile
import time

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from rank_sweep.config import LoraConfig, RunConfig, TaskConfig, TrainerConfig  # noqa: E402
from rank_sweep.study.plan import LadderSpec  # noqa: E402
from rank_sweep.study.sampler import POINT_ATTR, next_point, trial_records  # noqa: E402
from rank_sweep.study.state import StudyState  # noqa: E402
from rank_sweep.study.storage import open_storage  # noqa: E402
from rank_sweep.study.workers import WORKER_ATTR, this_worker  # noqa: E402

SETS = ["Wq", "Wq,Wv", "Wq,Wk,Wv,Wo", "Wq,Wk,Wv,Wo,up,down"]
SEEDS = [0, 1, 2, 3, 4]
SIZES = {100: (2, 10), 1000: (4, 50)}  # n -> (target sets, rungs): sets x rungs x 5 seeds = n trials
REPEATS = 5


def study_spec(n: int) -> LadderSpec:
    """A ladder whose every rung is a gain (one point over the last, seed noise 0.002), so the plan walks every
    one of the n trials; 5 seeds per rung."""
    sets, rungs = SIZES[n]
    return LadderSpec(target_sets=SETS[:sets], ranks=list(range(1, rungs + 1)), seeds=SEEDS, extend=False)


def fake_trials(spec: LadderSpec, lr: float = 3e-3) -> list:
    """The finished trials of ``spec``: params, user attrs and system attrs as :class:`Objective` and the
    sampler write them (the resolved config of a default run stands in for each trial's own)."""
    rng = random.Random(0)
    dists = {"targets": CategoricalDistribution(spec.target_sets), "r": CategoricalDistribution(spec.ranks),
             "seed": CategoricalDistribution(spec.seeds)}
    config = RunConfig(task=TaskConfig(), trainer=TrainerConfig(lr=lr), lora=LoraConfig()).__dict__
    config = {k: dict(getattr(v, "__dict__", {})) for k, v in config.items() if k in ("model", "task", "lora",
                                                                                       "trainer")}
    trials = []
    for targets in spec.target_sets:
        for r in spec.ranks:
            for seed in spec.seeds:
                score = 0.5 + 0.01 * r + rng.gauss(0, 0.002)
                n_matrices = targets.count(",") + 1
                attrs = {"lora_params": 768 * r * n_matrices * 6, "trainable_params": 768 * r * n_matrices * 6 + 592,
                         "train_seconds": 40.0 + r, "mlflow_run_id": f"{rng.getrandbits(128):032x}",
                         "not_learning": False, "baseline_score": 0.509, "alpha": 2.0 * r, "lr": lr,
                         "train_steps": 63, "score_metric": "accuracy", "score_epoch": 1,
                         "score_ci_low": score - 0.03, "score_ci_high": score + 0.03, "peak_memory_mb": 900.0 + r,
                         "adapter_mb": 0.01 * r, "config": config}
                trials.append(create_trial(
                    state=TrialState.COMPLETE, value=score, params={"targets": targets, "r": r, "seed": seed},
                    distributions=dists, user_attrs=attrs, intermediate_values={0: score - 0.01},
                    system_attrs={POINT_ATTR: {"targets": targets, "r": r, "seed": seed},
                                  WORKER_ATTR: this_worker()}))
    return trials


def decide(study: optuna.Study, spec: LadderSpec):
    """What a worker does to decide its next point: read every record once, plan once, take the point."""
    state = StudyState(study, spec).refresh()
    return next_point(state.records, spec, state.plan)


def plan_seconds(n: int, folder: str) -> dict:
    """``plan_seconds_<n>`` and ``plan_cpu_seconds_<n>`` (medians of :data:`REPEATS`, one storage handle: its
    cache warm) and ``plan_cold_seconds_<n>`` (a new storage handle each time)."""
    spec = study_spec(n)
    url = f"sqlite:///{folder}/plan_{n}.db"
    study = optuna.create_study(study_name="plan", storage=open_storage(url), direction="maximize")
    study.add_trials(fake_trials(spec))
    assert len(trial_records(study)) == n
    cold, warm, cpu = [], [], []
    for _ in range(REPEATS):
        study = optuna.load_study(study_name="plan", storage=open_storage(url))
        t = time.perf_counter()
        decide(study, spec)
        cold.append(time.perf_counter() - t)
        t, c = time.perf_counter(), time.process_time()
        decide(study, spec)
        warm.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {f"plan_seconds_{n}": statistics.median(warm), f"plan_cpu_seconds_{n}": statistics.median(cpu),
            f"plan_cold_seconds_{n}": statistics.median(cold)}


def measure() -> dict:
    """Both sizes; prints one line each."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="rank_sweep_plan_") as folder:
        for n in SIZES:
            res = plan_seconds(n, folder)
            out.update(res)
            print(f"plan with {n} finished trials (SQLite): {res[f'plan_seconds_{n}']:.4f} s in a running worker "
                  f"({res[f'plan_cpu_seconds_{n}']:.4f} s CPU), {res[f'plan_cold_seconds_{n}']:.4f} s in a worker that "
                  f"has just opened the storage (medians of {REPEATS})", flush=True)
    out["plan_growth_100_to_1000"] = out["plan_seconds_1000"] / out["plan_seconds_100"]
    assert math.isfinite(out["plan_growth_100_to_1000"])
    return out


if __name__ == "__main__":
    measure()
