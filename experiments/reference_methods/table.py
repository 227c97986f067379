"""The reference-methods table of a finished study: each method's score with its interval, the paired difference
to the LoRA configuration, trainable parameters and training seconds (mean over seeds).

    .venv/bin/python experiments/reference_methods/table.py experiment=reference_methods
    .venv/bin/python experiments/reference_methods/table.py experiment=reference_methods task=mrpc \
        search.study_name=reference_methods_mrpc

Takes the sweep's own overrides (so it finds the study where ``rank-sweep`` wrote it) and prints a markdown
table; the difference is method - LoRA on the same dev examples, seeds pooled (95%, the study's confidence).
"""

from __future__ import annotations

import os
import statistics
import sys

from hydra import compose, initialize_config_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from rank_sweep.cli import CONF_DIR  # noqa: E402
from rank_sweep.commands.select import read_study  # noqa: E402
from rank_sweep.config import build_config  # noqa: E402
from rank_sweep.results.finished import summary_comparer  # noqa: E402
from rank_sweep.results.records import aggregate  # noqa: E402
from rank_sweep.results.selection import score_text  # noqa: E402
from rank_sweep.results.tables import interval_text  # noqa: E402


def main(overrides: list[str]) -> str:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = build_config(compose("config", overrides=overrides))
    study = read_study(cfg, "study")
    compare = summary_comparer(cfg, study)
    rows = aggregate([r for r in study.records if r.usable], cfg.search.confidence, study.direction)
    lora = [s for s in rows if s.method == "lora"]
    ref = max(lora, key=lambda s: s.mean if study.direction == "maximize" else -s.mean)
    seconds = {}
    for rec in study.records:
        if rec.usable and rec.train_seconds is not None:
            seconds.setdefault((rec.targets, rec.r), []).append(rec.train_seconds)
    lines = [f"{study.name}: {cfg.task.name} ({cfg.task.metric}), {len(study.records)} trials; differences are "
             f"method - {ref.label} on the same dev examples ({cfg.search.confidence:.0%}, seeds pooled)", "",
             "| method | size | mean | interval | seeds | diff to LoRA | trainable params | train s (mean) |",
             "|---|---|---|---|---|---|---|---|"]
    for s in rows:
        d = None if s is ref else compare(ref, s)
        diff = "(the LoRA row)" if s is ref else "?" if d is None else \
            f"{d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"
        secs = seconds.get((s.targets, s.r))
        name = f"LoRA {s.targets}" if s in lora else s.targets
        not_learning = f" ({s.n_not_learning} not learning)" if s.n_not_learning else ""
        lines.append(f"| {name} | {s.r} | {score_text(s.mean)} | {interval_text(s)} | {s.n}{not_learning} | {diff} | "
                     f"{s.trainable_params:,} | {f'{statistics.fmean(secs):.1f}' if secs else '?'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
