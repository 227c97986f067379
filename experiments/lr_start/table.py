"""The three-start comparison (issue 24): each folder of ``run.sh`` (one checkout: before or after), each study
started at lr 3e-4, 1e-3, 3e-3: the plateau rank of each ladder (as the study's summary printed it), the choice
``rank-sweep-select`` makes at the README's budget with its score and interval, and, per folder, whether the three
choices are shown different from each other by more than select.tolerance (paired intervals of the chosen trials'
scores on the same dev examples; the three studies share the data, so their dev examples are the same).

    .venv/bin/python experiments/lr_start/table.py /tmp/three/before /tmp/three/after [--out lr_start.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys

from hydra import compose, initialize_config_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from rank_sweep.cli import CONF_DIR  # noqa: E402
from rank_sweep.commands.select import read_study  # noqa: E402
from rank_sweep.config import Budget, build_config  # noqa: E402
from rank_sweep.results.finished import study_comparer, summary_comparer  # noqa: E402
from rank_sweep.results.paired import is_gain  # noqa: E402
from rank_sweep.results.selection import select  # noqa: E402

LRS = ("3e-4", "1e-3", "3e-3")
BUDGET, TOLERANCE, STEPS_PER_TRIAL = 20000, 0.005, 189  # 2,000 sentences / batch 32 = 63 steps x 3 epochs


def config(folder: str):
    stores = [f"search.storage=sqlite:///{folder}/optuna.db", f"tracking.uri=sqlite:///{folder}/mlflow.db",
              f"output_dir={folder}/out"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return build_config(compose("config", overrides=["experiment=quickstart", *stores]))


def from_log(path: str) -> dict:
    text = open(path).read() if os.path.exists(path) else ""
    ladders = {m[0]: m[1] for m in re.findall(r"^ladder (\S+): (plateau rank r=\d+[^;]*|no plateau rank[^;]*);", text, re.M)}
    verdicts = re.findall(r"^\s+across lr: (.*)$", text, re.M)
    wall = re.search(r"^wall ([\d.]+) s", text, re.M)
    return {"ladders": ladders, "across_lr": verdicts, "wall_s": float(wall[1]) if wall else None}


def folder_rows(folder: str) -> dict:
    cfg, tag = config(folder), os.path.basename(folder.rstrip("/"))
    out, chosen = {}, {}
    comparer = None
    for lr in LRS:
        name = f"qs_{tag}_{lr}"
        try:
            study = read_study(cfg, "study", name)
        except Exception as e:  # noqa: BLE001 - a study that did not run is a row that says so
            out[lr] = {"error": str(e).splitlines()[0]}
            continue
        comparer = comparer or study_comparer(cfg, study)
        sel = select(study.records, Budget(max_lora_params=BUDGET), TOLERANCE, study.direction,
                     summary_comparer(cfg, study), cfg.search.confidence)
        c = sel.chosen
        recs = [r for r in study.records if r.number in c.numbers]
        chosen[lr] = recs
        trials = [r for r in study.records if r.state in ("COMPLETE", "PRUNED", "FAIL")]
        out[lr] = {"study": name, "trials": len(trials), "steps": len(trials) * STEPS_PER_TRIAL, **from_log(
            os.path.join(folder, f"qs_{lr}.log")), "chosen": c.label, "mean": c.mean, "interval": [c.ci_low, c.ci_high],
            "seeds": c.n, "lora_params": c.lora_params, "lr_notes": sel.lr_notes}
    pairs = {}
    for a, b in itertools.combinations([lr for lr in LRS if lr in chosen], 2):
        d = comparer(chosen[a], chosen[b])
        pairs[f"{a} vs {b}"] = {"diff": [d.estimate, d.low, d.high],
                                "shown_different": is_gain(d, TOLERANCE) or is_gain(d, TOLERANCE, "minimize")}
    return {"studies": out, "pairs": pairs}


def main(folders: list[str], out_path: str | None) -> None:
    res = {os.path.basename(f.rstrip("/")): folder_rows(f) for f in folders}
    lines = ["| checkout | start lr | trials (steps) | plateau per ladder | choice (budget 20,000 LoRA params) |",
             "|---|---|---|---|---|"]
    for tag, r in res.items():
        for lr, s in r["studies"].items():
            if "error" in s:
                lines.append(f"| {tag} | {lr} | - | {s['error']} | - |")
                continue
            plateaus = "; ".join(f"{k}: {v}" for k, v in s["ladders"].items())
            lines.append(f"| {tag} | {lr} | {s['trials']} ({s['steps']:,}) | {plateaus} | {s['chosen']}: "
                         f"{s['mean']:.4f} [{s['interval'][0]:.4f}, {s['interval'][1]:.4f}] |")
    lines += ["", "| checkout | choices compared | chosen(b) - chosen(a), 95% paired | shown different by more "
              f"than tolerance {TOLERANCE:g}? |", "|---|---|---|---|"]
    for tag, r in res.items():
        for pair, p in r["pairs"].items():
            e, lo, hi = p["diff"]
            lines.append(f"| {tag} | {pair} | {e:+.4f} [{lo:+.4f}, {hi:+.4f}] | {'yes' if p['shown_different'] else 'no'} |")
    print("\n".join(lines))
    if out_path:
        with open(out_path, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--out")
    args = ap.parse_args()
    main(args.folders, args.out)
