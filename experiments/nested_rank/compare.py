"""Does one nested-rank training (search=nested's screen) give the rank curve that separate trainings give?

    GLUE_DIR=../shared/glue .venv/bin/python experiments/nested_rank/compare.py --task sst2
    GLUE_DIR=../shared/glue .venv/bin/python experiments/nested_rank/compare.py --task mrpc --train 1000

Trains LoRA on one target set at every rank of the ladder separately (``--seeds`` seeds each), and the nested
screen at the top rank with each ``--variants`` scale (and ``--frozen``), one per seed; then, per variant: the
Spearman correlation of the screened curve with the separate one, the largest paired difference (screened -
separate at a rank, on the same dev examples, with its 95% interval), the plateau rank the ladder's rule finds
on each, and the training steps (screen + the two confirmations) against the ordinary ladder's. Writes
``<out>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from experiments.nested_rank.measure import plateaus_agree, screen_vs_separate  # noqa: E402
from rank_sweep import tracking  # noqa: E402
from rank_sweep.config import Point, RunConfig, SearchConfig, TaskConfig, TrainerConfig, trial_config  # noqa: E402
from rank_sweep.config.base import conf_yaml  # noqa: E402
from rank_sweep.results.records import TrialRecord  # noqa: E402
from rank_sweep.study.history import SCREEN, screened_records  # noqa: E402
from rank_sweep.study.plan import plan  # noqa: E402
from rank_sweep.study.run import build_spec, comparer  # noqa: E402
from rank_sweep.train import nested  # noqa: E402
from rank_sweep.train.loading import WorkerCache, resolve_precision  # noqa: E402
from rank_sweep.train.trial import run_trial  # noqa: E402

TASKS = {"sst2": ("SST-2", 64), "mrpc": ("MRPC", 128), "rte": ("RTE", 128)}


def record(number, targets, r, seed, result, tuned=(), nested_scores=None) -> TrialRecord:
    c = result.counts
    low, high = result.score_ci or (None, None)
    return TrialRecord(number, targets, r, seed, "COMPLETE", result.score, c.lora_params, c.trainable_params,
                       result.train_seconds, result.not_learning, result.baseline_score, run_id=result.run_id,
                       tuned=tuned, score_ci_low=low, score_ci_high=high, nested=nested_scores)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="sst2")
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--targets", default="Wq,Wv")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=["policy", "dylora"])
    ap.add_argument("--frozen", action="store_true", help="also each variant in DyLoRA's frozen mode")
    ap.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"))
    ap.add_argument("--precision", default="auto", help="trainer.precision (32-true where bf16 is slow)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    glue, length = TASKS[args.task]
    tmp = tempfile.mkdtemp(prefix="rank_sweep_nested_")
    cfg = RunConfig()
    cfg.task = TaskConfig(**{**conf_yaml(f"task/{args.task}.yaml"), "data_dir": os.path.join(args.glue_dir, glue),
                             "max_train_samples": args.train, "max_seq_length": length})
    cfg.trainer = TrainerConfig(epochs=args.epochs, lr=args.lr, progress_bar=False, precision=args.precision)
    cfg.tracking.uri, cfg.output_dir = f"sqlite:///{tmp}/mlflow.db", f"{tmp}/outputs"
    cfg.search = SearchConfig(ladder=args.ranks, target_sets=[args.targets.split(",")], extend=False, lr_probe=[])
    client, experiment = tracking.connect(cfg.tracking.resolved_uri(), "nested_rank")
    cache, t0, n = WorkerCache(), time.perf_counter(), 0
    steps: dict[str, int] = {}
    separate: dict[int, list] = {}
    for r in args.ranks:
        for seed in range(args.seeds):
            res = run_trial(trial_config(cfg, Point(args.targets, r, seed)), cache=cache, client=client, experiment_id=experiment)
            separate.setdefault(r, []).append(record(n, args.targets, r, seed, res))
            steps[res.run_id] = res.train_steps
            n += 1
            print(f"separate r={r} seed={seed}: {res.score:.4f} {res.score_ci}", flush=True)
    compare = comparer(cfg)
    spec = build_spec(cfg, compare=compare)
    flat = [x for recs in separate.values() for x in recs]
    walk = plan([], spec)
    visited: list = []
    while walk.pending:  # the ordinary ladder on the separate trials: the points it would have trained
        more = [x for x in flat if (x.r, x.seed) in {(p.r, p.seed) for p in walk.pending}]
        if not more:
            break
        visited += more
        walk = plan(visited, spec)
    ladder_steps = sum(steps[x.run_id] for x in visited)
    out = {"task": args.task, "train": args.train, "epochs": args.epochs, "lr": args.lr, "targets": args.targets,
           "ranks": args.ranks, "seeds": args.seeds, "ladder_plateau": walk.ladders[0].plateau_rank,
           "ladder_trials": len(visited), "ladder_steps": ladder_steps, "variants": {},
           "ladder_rungs": [{"r": g.r, "decision": g.decision, "vs_r": g.vs_r, "diff": g.diff,
                             "diff_ci": [g.diff_ci_low, g.diff_ci_high]} for g in walk.ladders[0].rungs],
           "separate_runs": {r: [x.run_id for x in recs] for r, recs in separate.items()}, "folder": tmp}
    lp = out["ladder_plateau"]
    variants = [(v, False) for v in args.variants] + ([(v, True) for v in args.variants] if args.frozen else [])
    for scale, frozen in variants:
        name = scale + (" frozen" if frozen else "")
        rows = []
        for seed in range(args.seeds):
            run = trial_config(cfg, Point(args.targets, max(args.ranks), seed))
            cb = nested.NestedRanks(args.ranks, run.lora, scale, frozen, seed, resolve_precision(run))
            res = run_trial(run, cache=cache, client=client, experiment_id=experiment, callbacks=[cb])
            scores = nested.record_ranks(cb, run.task, 0.95, 0.02, run.output_dir, client, res.run_id)
            screen = record(n, args.targets, max(args.ranks), seed, res, (SCREEN,), scores)
            n += 1
            screened = {x.r: x for x in screened_records(screen)}
            curve = screen_vs_separate(screened, separate, compare)
            sspec = copy.deepcopy(spec)
            sspec.seeds, sspec.noise_seeds = [seed], []
            plateau = plan(list(screened.values()), sspec).ladders[0].plateau_rank
            confirm = 2 * statistics.median(steps.values())  # the plateau rank and the one above, as trained
            agrees, gap = plateaus_agree(plateau, lp, separate, compare)
            gap = gap and [round(x, 4) for x in gap]
            rows.append({"seed": seed, "screen_steps": res.train_steps, "plateau": plateau, "plateau_agrees": agrees,
                         "plateau_gap": gap, **curve,
                         "compute_vs_ladder": (res.train_steps + confirm) / ladder_steps})
            print(f"{name} seed={seed}: spearman {curve['spearman']}, max diff {curve['max_abs_diff']}, plateau r={plateau}",
                  flush=True)
        out["variants"][name] = rows
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    path = args.out or os.path.join(os.path.dirname(__file__), f"{args.task}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(table(out))


def table(out: dict) -> str:
    lines = [f"{out['task']}: {out['targets']}, ranks {out['ranks']}, {out['seeds']} seeds; ladder on separate "
             f"trials: plateau r={out['ladder_plateau']}, {out['ladder_trials']} trials, {out['ladder_steps']} steps",
             "", "| variant | seed | Spearman | largest diff (screened - separate) [95%] at r | mean abs diff | "
             "ranks outside [95%] | screened plateau | compute vs ladder |", "|---|---|---|---|---|---|---|---|"]
    agree = {True: "agrees", False: "DISAGREES", None: ""}
    for name, rows in out["variants"].items():
        for row in rows:
            d = row["max_abs_diff"]
            diff = "?" if d is None else f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}] at r={d[3]}"
            rho = "?" if row["spearman"] is None else f"{row['spearman']:.2f}"
            mad = statistics.fmean(abs(x["screened"] - x["separate"]) for x in row["rows"])
            off = sum(1 for x in row["rows"] if x["diff"] and not x["diff"][1] <= 0 <= x["diff"][2])
            lines.append(f"| {name} | {row['seed']} | {rho} | {diff} | {mad:.4f} | {off} of {len(row['rows'])} | "
                         f"r={row['plateau']} {agree[row.get('plateau_agrees')]} | {row['compute_vs_ladder']:.2f} |")
    lines += ["", "| r | separate (mean of seeds) | " + " | ".join(f"{n} seed {r['seed']}" for n, rs in
                                                              out["variants"].items() for r in rs) + " |"]
    lines.append("|---|---|" + "---|" * sum(len(rs) for rs in out["variants"].values()))
    for i, r in enumerate(out["ranks"]):
        cells = [f"{rs_row['rows'][i]['screened']:.4f}" for rs in out["variants"].values() for rs_row in rs]
        sep = next(rs_row["rows"][i]["separate"] for rs in out["variants"].values() for rs_row in rs)
        lines.append(f"| {r} | {sep:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--table":  # re-print the table of a finished run's json
        with open(sys.argv[2]) as f:
            print(table(json.load(f)))
    else:
        main()
