"""The learning-rate bench keys (issue 24), read from the studies of ``experiments/lr_start`` (``run.sh``: the quick
start started at lr 3e-4, 1e-3 and 3e-3; ``grid.sh``: every ladder rank at those three lrs), all in one folder:

    python experiments/benchmarks/lr_cost.py /tmp/three/after [--before /tmp/three/before]
    python experiments/benchmarks/bench.py --only lr --lr-start /tmp/three/after    # the same, as a bench section

- ``lr_sensitivity``: the spread (max - min) of the chosen configuration's dev score across the three starts
  (``lr_sensitivity_holdout``: of its held-out score), the choice made by ``rank-sweep-select`` at the README's budget.
- ``lr_fair_vs_grid_compute``: the optimizer steps of the study started at the preset's lr over the grid's (every trial
  of both is 189 steps: 2,000 sentences x 3 epochs); without grid.sh's studies, the grid's size by construction (30
  trials; ``lr_grid_ran`` false). ``lr_fair_vs_before_compute``: over the same study without the bracket
  (``--before``: the checkout before issue 24).
- ``lr_choice_vs_grid_best``: held-out score of that study's choice minus the grid's best configuration in the same
  budget (the best dev mean), with its 95% paired interval on the same held-out examples.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from experiments.lr_start.table import BUDGET, LRS, STEPS_PER_TRIAL, TOLERANCE, config  # noqa: E402
from rank_sweep.commands.select import read_study  # noqa: E402
from rank_sweep.config import Budget  # noqa: E402
from rank_sweep.errors import RankSweepError  # noqa: E402
from rank_sweep.results import holdout  # noqa: E402
from rank_sweep.results.finished import study_comparer, summary_comparer  # noqa: E402
from rank_sweep.results.paired import paired_difference  # noqa: E402
from rank_sweep.results.records import aggregate  # noqa: E402
from rank_sweep.results.selection import select  # noqa: E402

GRID_TRIALS = 3 * 5 * 2  # grid.sh: 3 lrs x r = 1, 2, 4, 8, 16 x 2 ladders, one seed


def _trials(study) -> int:
    return sum(r.state in ("COMPLETE", "PRUNED", "FAIL") for r in study.records)


def _held(reader, recs):
    """(held-out Interval, its per-example outputs) of one configuration's trials, or (None, None)."""
    h, p = holdout._score(reader, recs)
    return (None, None) if h is None else (h.score, p)


def measure(folder: str, before: str | None = None) -> dict:
    cfg, tag = config(folder), os.path.basename(folder.rstrip("/"))
    studies = {lr: read_study(cfg, "study", f"qs_{tag}_{lr}") for lr in LRS}
    comparer = study_comparer(cfg, studies["1e-3"])
    reader = holdout.holdout_reader(comparer)
    chosen = {}
    for lr, st in studies.items():
        c = select(st.records, Budget(max_lora_params=BUDGET), TOLERANCE, st.direction, summary_comparer(cfg, st),
                   cfg.search.confidence).chosen
        chosen[lr] = (c, [r for r in st.records if r.number in c.numbers])
    dev = [c.mean for c, _ in chosen.values()]
    held = {lr: _held(reader, recs) for lr, (_, recs) in chosen.items()}
    out = {"lr_sensitivity": max(dev) - min(dev),
           "lr_start_choices": {lr: {"chosen": c.label, "dev": [c.mean, c.ci_low, c.ci_high],
                                     "holdout": None if held[lr][0] is None else
                                     [held[lr][0].estimate, held[lr][0].low, held[lr][0].high]}
                                for lr, (c, _) in chosen.items()}}
    if all(h is not None for h, _ in held.values()):
        out["lr_sensitivity_holdout"] = max(h.estimate for h, _ in held.values()) - min(h.estimate for h, _ in held.values())
    try:
        grids = {lr: read_study(cfg, "study", f"grid_{lr}") for lr in LRS}
    except RankSweepError:  # grid.sh did not run: its size is known (every rank of both ladders at 3 lrs, one seed)
        grids = {}
    grid_trials = sum(_trials(g) for g in grids.values()) if grids else GRID_TRIALS
    steps = _trials(studies["1e-3"]) * STEPS_PER_TRIAL
    out.update({"lr_fair_steps": steps, "lr_grid_steps": grid_trials * STEPS_PER_TRIAL, "lr_grid_ran": bool(grids),
                "lr_fair_vs_grid_compute": steps / (grid_trials * STEPS_PER_TRIAL)})
    if before:
        b = read_study(config(before), "study", f"qs_{os.path.basename(before.rstrip('/'))}_1e-3")
        out.update({"lr_before_steps": _trials(b) * STEPS_PER_TRIAL,
                    "lr_fair_vs_before_compute": steps / (_trials(b) * STEPS_PER_TRIAL)})
    if not grids:
        return out
    rows = []  # the grid's configurations in budget: (summary, its records), every lr
    for g in grids.values():
        for s in aggregate([r for r in g.records if r.usable], cfg.search.confidence, g.direction):
            if s.lora_params is not None and s.lora_params <= BUDGET and not s.not_learning:
                rows.append((s, [r for r in g.records if r.number in s.numbers]))
    best, best_recs = max(rows, key=lambda x: x[0].mean)
    c, c_recs = chosen["1e-3"]
    hc, pc = held["1e-3"]
    hb, pb = _held(reader, best_recs)
    out["lr_grid_best"] = {"config": best.label, "lr": best.lr, "dev": [best.mean, best.ci_low, best.ci_high],
                           "holdout": None if hb is None else [hb.estimate, hb.low, hb.high]}
    if hc is not None and hb is not None:
        d = paired_difference(reader.metric, [p.outputs for p in pb], [p.outputs for p in pc], pc[0].label,
                              confidence=reader.confidence, n_boot=reader.n_boot, is_regression=reader.is_regression,
                              num_labels=reader.num_labels)
        out["lr_choice_vs_grid_best"] = d.estimate
        out["lr_choice_vs_grid_best_interval"] = [d.low, d.high]
    d = comparer(best_recs, c_recs)
    out["lr_choice_vs_grid_best_dev"] = [d.estimate, d.low, d.high]
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--before")
    args = ap.parse_args()
    print(json.dumps(measure(args.folder, args.before), indent=1))
