"""The head measurement (issue 23): the same configurations under each ``model.pooling``, side by side, each with
its interval, and each pooling's paired difference to ``cls_frozen`` (the head every trial had before) on the same
dev examples.

    .venv/bin/python experiments/pooling/table.py --prefix pool_ experiment=quickstart \
        search.storage=sqlite:////tmp/exp/optuna.db tracking.uri=sqlite:////tmp/exp/mlflow.db output_dir=/tmp/exp/out

One study per pooling, named ``<prefix><pooling>`` (``run.sh`` makes them). Prints a markdown table and writes
``<prefix>table.json`` beside this file. Intervals: 95% over dev examples with seed noise (the study's own
statistic, :func:`rank_sweep.results.records.aggregate`); differences: paired on the same examples, seeds pooled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from hydra import compose, initialize_config_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from rank_sweep.cli import CONF_DIR  # noqa: E402
from rank_sweep.config import build_config  # noqa: E402
from rank_sweep.errors import RankSweepError  # noqa: E402
from rank_sweep.results.command import read_study  # noqa: E402
from rank_sweep.results.compare import PairedComparer  # noqa: E402
from rank_sweep.results.records import aggregate  # noqa: E402
from rank_sweep.results.tables import interval_text  # noqa: E402

POOLINGS = ("cls_frozen", "cls", "mean")


def main(prefix: str, overrides: list[str]) -> tuple[str, dict]:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = build_config(compose("config", overrides=overrides))
    studies, rows = {}, {}
    for pooling in POOLINGS:
        try:
            studies[pooling] = read_study(cfg, "study", f"{prefix}{pooling}")
        except RankSweepError as e:
            print(f"({pooling}: {e})", file=sys.stderr)
            continue
        study = studies[pooling]
        for s in aggregate([r for r in study.records if r.usable], cfg.search.confidence, study.direction):
            rows.setdefault((s.targets, s.r), {})[pooling] = s
    base = next(iter(studies.values()))
    by_number = {}  # trial numbers repeat across studies: compare records, not numbers
    for pooling, study in studies.items():
        by_number[pooling] = {r.number: r for r in study.records}
    out, lines = {}, [
        f"{cfg.task.name} ({cfg.task.metric}); 95% intervals over dev examples with seed noise; "
        f"diff = pooling - cls_frozen on the same dev examples (paired, seeds pooled)", "",
        "| targets | r | pooling | mean | interval | seeds | diff to cls_frozen | trainable params |",
        "|---|---|---|---|---|---|---|---|"]
    task = next((r.config["task"] for r in base.records if r.config and "task" in r.config), None)
    pc = PairedComparer(cfg.task.metric if not task else task["metric"],
                        (task["labels"] is None) if task else cfg.task.is_regression,
                        1 if task and task["labels"] is None else (len(task["labels"]) if task else cfg.task.num_labels),
                        base.direction, cfg.output_dir, cfg.tracking.resolved_uri(), cfg.search.confidence)
    for (targets, r), per in sorted(rows.items(), key=lambda kv: (kv[0][0] in ("full", "head only"), kv[0])):
        ref = per.get("cls_frozen")
        for pooling in POOLINGS:
            s = per.get(pooling)
            if s is None:
                continue
            recs = [by_number[pooling][n] for n in s.numbers]
            d = None
            if ref is not None and pooling != "cls_frozen":
                d = pc([by_number["cls_frozen"][n] for n in ref.numbers], recs)
            diff = "" if d is None else f"{d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"
            nl = f" ({s.n_not_learning} not learning)" if s.n_not_learning else ""
            lines.append(f"| {targets} | {r} | {pooling} | {s.mean:.4f} | {interval_text(s)} | {s.n}{nl} | {diff} | "
                         f"{s.trainable_params:,} |")
            out[f"{targets}|{r}|{pooling}"] = {
                "mean": s.mean, "interval": interval_text(s), "seeds": s.n, "not_learning": s.n_not_learning,
                "scores": [by_number[pooling][n].score for n in s.numbers],
                "diff_to_cls_frozen": None if d is None else [d.estimate, d.low, d.high],
                "trainable_params": s.trainable_params, "lora_params": s.lora_params}
    return "\n".join(lines), out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix", default="pool_")
    args, overrides = ap.parse_known_args()
    text, data = main(args.prefix, overrides)
    print(text)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{args.prefix}table.json"), "w") as f:
        json.dump(data, f, indent=1)
