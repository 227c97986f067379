"""What the learning-rate machinery costs in trials and optimizer steps (issue 24), for a preset, by walking the
study's real planner (:func:`rank_sweep.study.plan.plan`) on scripted outcomes, no training:

    .venv/bin/python experiments/lr_start/cost.py experiment=quickstart_lm
    .venv/bin/python experiments/lr_start/cost.py experiment=quickstart search.max_rank=16

Three studies per scenario: *before* (no bracket, no check: what the ladder cost before issue 24), *after* (the
defaults: the bracket on the first ladder, later ladders at its lr, the check below), *bracket per ladder*
(``search.lr_shared=false``, ``search.lr_check=both``: last session's design); and *grid*: every ladder rank of every
target set at the bracket's three lrs. Scenarios (the score of a configuration = its target set's base + its rank's
gain + its lr's effect): ``flat`` (the bracket ties: the configured lr is kept), ``faster`` (3x is best by +0.03, 9x
is tried and is not better, 0.3x is far worse), each with the plateau at ``--plateau`` (1: quick start, 2:
quickstart_lm as measured). These are planned counts for those outcomes, not measurements; the quick start's real
counts are in experiments/lr_start/README.md to check them against.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from hydra import compose, initialize_config_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from rank_sweep.cli import CONF_DIR  # noqa: E402
from rank_sweep.config import build_config  # noqa: E402
from rank_sweep.results.records import TrialRecord  # noqa: E402
from rank_sweep.study.plan import plan  # noqa: E402
from rank_sweep.study.run import validate  # noqa: E402
from rank_sweep.train.loading import WorkerCache  # noqa: E402

SCENARIOS = {"flat": {0.3: -0.01, 1: 0.0, 3: 0.002, 9: -0.01, 10: -0.02},
             "faster": {0.1: -0.2, 0.3: -0.1, 1: 0.0, 3: 0.03, 9: 0.01, 10: 0.005}}


def walk(spec, base_lr: float, scenario: dict, plateau: int, sign: float) -> int:
    """Trials the planner asks for before it says done."""
    records: list[TrialRecord] = []
    for _ in range(500):
        p = plan(records, spec)
        if p.done or not p.pending:
            return len(records)
        pt = p.pending[0]
        m = round((pt.lr or base_lr) / base_lr, 6)
        effect = scenario.get(m, scenario[min(scenario, key=lambda k: abs(math.log(k / m)))])
        gain = 0.0 if pt.method != "lora" else 0.03 * min(math.log2(max(pt.r, 1)), math.log2(plateau))
        base = {"head": 0.70, "lora": 0.80}.get(pt.method, 0.78) + 0.005 * pt.targets.count(",")
        score = sign * (base + gain + effect + 0.0005 * pt.seed)
        lora, tp = spec.cost(pt.targets, pt.r) if pt.method == "lora" and spec.cost else (None, None)
        records.append(TrialRecord(len(records), pt.row, pt.r, pt.seed, "COMPLETE", score, lora, tp, 1.0,
                                   tuned=pt.values))
    raise RuntimeError("the planner did not stop in 500 trials")


def main(overrides: list[str], plateau: int) -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = build_config(compose("config", overrides=overrides))
    spec = validate(cfg, WorkerCache())
    spec.compare = None  # scripted means: the rule compares means (noise_k, min_delta)
    from dataclasses import replace

    variants = {"before": replace(spec, lr_bracket=[], lr_check="", lr_shared=False),
                "after": spec,
                "bracket per ladder": replace(spec, lr_shared=False, lr_check="both")}
    sets = spec.target_sets + [s for s in spec.extend_sets if spec.extend and s not in spec.target_sets]
    grid = 3 * len(spec.target_sets) * len(spec.ranks) * len(spec.seeds)
    steps = cfg.trainer.epochs * math.ceil(cfg.task.max_train_samples / cfg.trainer.batch_size)
    sign = 1.0 if spec.direction == "maximize" else -1.0
    print(f"{' '.join(overrides)}: {steps} optimizer steps a trial; ranks {spec.ranks}, target sets "
          f"{spec.target_sets} (+ extension {sets[len(spec.target_sets):]}); grid: 3 lrs x {len(spec.ranks)} ranks x "
          f"{len(spec.target_sets)} ladders x {len(spec.seeds)} seed = {grid} trials ({grid * steps:,} steps)")
    print("| scenario | before | after | after / before | after / grid | bracket per ladder |")
    print("|---|---|---|---|---|---|")
    for name, sc in SCENARIOS.items():
        n = {k: walk(v, cfg.trainer.lr, sc, plateau, sign) for k, v in variants.items()}
        print(f"| {name} | {n['before']} | {n['after']} | {n['after'] / n['before']:.2f} | {n['after'] / grid:.2f} | "
              f"{n['bracket per ladder']} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plateau", type=int, default=None, help="the rank where gains stop (default: 2 for a causal LM)")
    args, overrides = ap.parse_known_args()
    main(overrides, args.plateau or (2 if any("_lm" in o for o in overrides) else 1))
