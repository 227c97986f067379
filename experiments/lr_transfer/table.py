"""Which alpha policy makes one learning rate fair across ranks (issue 24): the table of ``run.sh``'s studies.

    .venv/bin/python experiments/lr_transfer/table.py search.storage=sqlite:////tmp/lrt/optuna.db \
        tracking.uri=sqlite:////tmp/lrt/mlflow.db output_dir=/tmp/lrt/out [--policies scaled fixed rslora]

For each policy and rank: every learning rate's score with its 95% interval over dev examples (one seed), the best
learning rate, and the *lr plateau*: the learning rates not shown worse than the best by more than min_delta
(0.005) on the same dev examples (paired). Then how far the best lr moves from the lowest rank to the highest
(a ratio: 1 = the same lr is best at both), and whether their plateaus overlap (one lr fair to both). Writes
``sst2_table.json`` beside this file (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from hydra import compose, initialize_config_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from rank_sweep.cli import CONF_DIR  # noqa: E402
from rank_sweep.commands.select import read_study  # noqa: E402
from rank_sweep.config import build_config  # noqa: E402
from rank_sweep.errors import RankSweepError  # noqa: E402
from rank_sweep.results.finished import study_comparer  # noqa: E402
from rank_sweep.results.paired import not_worse  # noqa: E402
from rank_sweep.results.records import aggregate  # noqa: E402
from rank_sweep.results.tables import interval_text  # noqa: E402

LRS = ("3e-4", "1e-3", "3e-3", "1e-2", "3e-2")
# the same adapter under two policies (same rank, same scale alpha/r): run.sh trains it once, the table fills the twin
TWINS = {("fixed", 8): ("scaled", 8), ("rslora", 64): ("scaled", 64), ("rslora", 1): ("fixed", 1)}
SCALE = {"scaled": "alpha = 2r (scale 2)", "fixed": "alpha 16 (scale 16/r)", "rslora": "alpha 16 (scale 16/sqrt(r))"}


def main(policies: list[str], lrs: list[str], overrides: list[str], min_delta: float = 0.005) -> tuple[str, dict]:
    """The table (markdown) and its data; a cell run.sh trained once fills its twin (TWINS)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = build_config(compose("config", overrides=["experiment=quickstart", *overrides]))
    cells: dict[tuple[str, int], list] = {}
    comparer = None
    for policy in policies:
        for lr in lrs:
            try:
                study = read_study(cfg, "study", f"lrt_{policy}_{lr}")
            except RankSweepError as e:
                print(f"(lrt_{policy}_{lr}: {e})", file=sys.stderr)
                continue
            comparer = comparer or study_comparer(cfg, study)
            recs = [r for r in study.records if r.usable]
            for s in aggregate(recs, cfg.search.confidence, "maximize"):
                cells.setdefault((policy, s.r), []).append((float(lr), s, [r for r in recs if r.number in s.numbers]))
    for (policy, r), twin in TWINS.items():
        if policy in policies and twin in cells:
            have = {lr for lr, _, _ in cells.get((policy, r), [])}
            cells.setdefault((policy, r), []).extend(x for x in cells[twin] if x[0] not in have)
    lines = [f"SST-2 (accuracy), MiniLM-L6, LoRA on Wq, 2,000 sentences x 3 epochs, one seed; 95% intervals over dev "
             f"examples; plateau = the lrs not shown worse than the best by more than {min_delta:g} (paired)", "",
             "| policy | r | " + " | ".join(f"lr {x}" for x in lrs) + " | best lr | lr plateau |",
             "|---|---|" + "---|" * len(lrs) + "---|---|"]
    out: dict = {}
    for (policy, r), rows in sorted(cells.items()):
        best_lr, best, best_recs = max(rows, key=lambda x: x[1].mean)
        plateau = []
        by_lr = {}
        for lr, s, recs in rows:
            d = None if s is best else comparer(best_recs, recs)
            if s is best or (d is not None and not_worse(d, min_delta)):
                plateau.append(lr)
            by_lr[lr] = {"mean": s.mean, "interval": [s.ci_low, s.ci_high], "not_learning": s.not_learning,
                         "diff_to_best": None if d is None else [d.estimate, d.low, d.high]}
        text = {f"{lr:g}": f"{v['mean']:.4f} {interval_text(next(s for x, s, _ in rows if x == lr))}"
                for lr, v in by_lr.items()}
        lines.append(f"| {policy} | {r} | " + " | ".join(text.get(f"{float(x):g}", "-") for x in lrs)
                     + f" | {best_lr:g} | {min(plateau):g} to {max(plateau):g} |")
        out.setdefault(policy, {})[str(r)] = {"by_lr": {f"{k:g}": v for k, v in by_lr.items()}, "best_lr": best_lr,
                                              "plateau": [min(plateau), max(plateau)]}
    lines += ["", "| policy | scale | best lr at the lowest rank -> highest | ratio | plateaus overlap |",
              "|---|---|---|---|---|"]
    for policy, ranks in out.items():
        lo, hi = ranks[min(ranks, key=int)], ranks[max(ranks, key=int)]
        ratio = hi["best_lr"] / lo["best_lr"]
        overlap = max(lo["plateau"][0], hi["plateau"][0]) <= min(lo["plateau"][1], hi["plateau"][1])
        ranks["moves"] = {"ratio": ratio, "decades": abs(math.log10(ratio)), "plateaus_overlap": overlap}
        lines.append(f"| {policy} | {SCALE.get(policy, '')} | {lo['best_lr']:g} -> {hi['best_lr']:g} | {ratio:g} | "
                     f"{'yes' if overlap else 'no'} |")
    return "\n".join(lines), out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", nargs="+", default=["scaled", "fixed", "rslora"])
    ap.add_argument("--lrs", nargs="+", default=list(LRS))
    ap.add_argument("--out", default="sst2")
    args, rest = ap.parse_known_args()
    text, data = main(args.policies, args.lrs, rest)
    print(text)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{args.out}_table.json"), "w") as f:
        json.dump(data, f, indent=1)
