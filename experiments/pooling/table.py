"""The head measurement (issue 23): the same configurations under each ``model.pooling``, side by side, each with
its interval, and each pooling's paired difference to ``cls_frozen`` (the head every trial had before) on the same
dev examples.

    .venv/bin/python experiments/pooling/table.py --out sst2 cls_frozen=pool1_cls_frozen cls=pool1_cls \
        mean=qs_auto,pool1_mean search.storage=sqlite:////tmp/exp/optuna.db tracking.uri=sqlite:////tmp/exp/mlflow.db \
        output_dir=/tmp/exp/out

``<pooling>=<study>[,<study>...]``: the studies whose trials ran under that pooling (``run.sh`` makes them; a
configuration found in several is pooled over its seeds). The rest are the sweep's overrides, so the stores are
found. Prints a markdown table and writes ``<out>_table.json`` beside this file. Intervals: 95% over dev examples
with seed noise (the study's own statistic, :func:`rank_sweep.results.records.aggregate`); differences: paired on the
same examples, seeds pooled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

from hydra import compose, initialize_config_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from rank_sweep.cli import CONF_DIR  # noqa: E402
from rank_sweep.commands.select import read_study  # noqa: E402
from rank_sweep.config import build_config  # noqa: E402
from rank_sweep.errors import RankSweepError  # noqa: E402
from rank_sweep.results.finished import study_comparer  # noqa: E402
from rank_sweep.results.records import aggregate  # noqa: E402
from rank_sweep.results.tables import interval_text  # noqa: E402

POOLINGS = ("cls_frozen", "cls", "mean")


def main(sources: dict[str, list[str]], overrides: list[str]) -> tuple[str, dict]:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = build_config(compose("config", overrides=overrides))
    studies, rows, by_number = {}, {}, {}
    for pooling in POOLINGS:
        records = []
        for k, name in enumerate(sources.get(pooling, [])):
            try:
                study = read_study(cfg, "study", name)
            except RankSweepError as e:
                print(f"({pooling}: {e})", file=sys.stderr)
                continue
            studies.setdefault(pooling, study)  # trial numbers repeat across studies: make them unique
            records += [replace(r, number=100_000 * k + r.number) for r in study.records]
        if not records:
            continue
        by_number[pooling] = {r.number: r for r in records}
        for s in aggregate([r for r in records if r.usable], cfg.search.confidence, studies[pooling].direction):
            rows.setdefault((s.targets, s.r), {})[pooling] = s
    base = next(iter(studies.values()))
    out, lines = {}, [
        f"{cfg.task.name} ({cfg.task.metric}); 95% intervals over dev examples with seed noise; "
        f"diffs = pooling - cls_frozen, and mean - cls, on the same dev examples (paired, seeds pooled)", "",
        "| targets | r | pooling | mean | interval | seeds | diff to cls_frozen | mean - cls | trainable params |",
        "|---|---|---|---|---|---|---|---|---|"]
    pc = study_comparer(cfg, base)  # records are compared across the studies: same dev examples, same metric
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
            d_cls = None
            if pooling == "mean" and per.get("cls") is not None:
                d_cls = pc([by_number["cls"][n] for n in per["cls"].numbers], recs)
            diff, vs_cls = ("" if x is None else f"{x.estimate:+.4f} [{x.low:+.4f}, {x.high:+.4f}]" for x in (d, d_cls))
            nl = f" ({s.n_not_learning} not learning)" if s.n_not_learning else ""
            lines.append(f"| {targets} | {r} | {pooling} | {s.mean:.4f} | {interval_text(s)} | {s.n}{nl} | {diff} | {vs_cls} | "
                         f"{s.trainable_params:,} |")
            out[f"{targets}|{r}|{pooling}"] = {
                "mean": s.mean, "interval": interval_text(s), "seeds": s.n, "not_learning": s.n_not_learning,
                "scores": [by_number[pooling][n].score for n in s.numbers],
                "diff_to_cls_frozen": None if d is None else [d.estimate, d.low, d.high],
                "mean_minus_cls": None if d_cls is None else [d_cls.estimate, d_cls.low, d_cls.high],
                "trainable_params": s.trainable_params, "lora_params": s.lora_params}
    return "\n".join(lines), out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="sst2")
    args, rest = ap.parse_known_args()
    sources = {a.split("=", 1)[0]: a.split("=", 1)[1].split(",") for a in rest if a.split("=", 1)[0] in POOLINGS}
    text, data = main(sources, [a for a in rest if a.split("=", 1)[0] not in POOLINGS])
    print(text)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{args.out}_table.json"), "w") as f:
        json.dump(data, f, indent=1)
