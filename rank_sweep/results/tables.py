"""Tables of a study's configurations and of a selection, as markdown (console, ``summary.md``)
or CSV (``summary.csv``).

    print(summary_table(records))            # one row per (targets, r)
    print(format_selection(select(records, Budget(max_lora_params=50_000))))
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from rank_sweep.errors import RankSweepError
from rank_sweep.results import holdout
from rank_sweep.results.records import ConfigSummary, TrialRecord
from rank_sweep.results.selection import Selection, as_summaries, cost_text, count_text, score_text


def header(summaries: Sequence[ConfigSummary]) -> list[str]:
    """The markdown columns: ``lr`` where the trials logged it, the memory columns where measured."""
    return ([*HEADER[:2], "lr", *HEADER[2:]] if has_lr(summaries) else HEADER) + (
        MEMORY_HEADER if has_memory(summaries) else [])


def has_lr(summaries: Sequence[ConfigSummary]) -> bool:
    """Whether the trials logged their learning rate (every study does; hand-made records may not)."""
    return any(s.lr is not None for s in summaries)


def _rows(summaries: Sequence[ConfigSummary], memory: bool = False) -> list[list[str]]:
    lr = has_lr(summaries)
    return [
        [s.targets, str(s.r), *([lr_text(s.lr)] if lr else []), score_text(s.mean), interval_text(s), f"{s.std:.3g}", str(s.n), count_text(s.lora_params),
         count_text(s.trainable_params), *([mb_text(s.peak_memory_mb), mb_text(s.adapter_mb)] if memory else [])]
        for s in summaries
    ]


def lr_text(lr: float | None) -> str:
    """A learning rate as the tables write it: ``0.003``, ``?`` when not logged."""
    return "?" if lr is None else f"{lr:g}"


def mb_text(x: float | None) -> str:
    """A size in MiB as the tables write it: ``1,234``, ``0.44``, ``?`` when unknown."""
    return "?" if x is None else f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def has_memory(summaries: Sequence[ConfigSummary]) -> bool:
    """Whether any row was measured (trials from before the memory metrics have none: no column then)."""
    return any(s.peak_memory_mb is not None or s.adapter_mb is not None for s in summaries)


def interval_text(s: ConfigSummary) -> str:
    """``[low, high]`` of a configuration's mean (dev-set sampling and seed noise), ``?`` when unknown."""
    return "?" if s.ci_low is None or s.ci_high is None else f"[{s.ci_low:.4f}, {s.ci_high:.4f}]"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])

HEADER = ["targets", "r", "mean", "interval", "std", "n", "LoRA params", "trainable params"]
MEMORY_HEADER = ["peak memory MB", "adapter MB"]  # shown when measured (rank_sweep.train.memory)


def note(s: ConfigSummary) -> str:
    """What a row must say beside its numbers: seeds that did not learn, seeds that collapsed."""
    screen = {"screen": ["nested screen (its ranks: the screened rows)"],
              "screened": ["screened: truncated from the nested screen"]}.get(s.config.kind, [])
    parts = screen + ["not learning"] if s.not_learning else screen + (
        [f"{s.n_not_learning} of {s.n} seeds not learning"] if s.n_not_learning else [])
    if s.unstable:
        parts.append(f"unstable: {len(s.unstable)} of {s.n} seeds collapsed (trials {', '.join(map(str, s.unstable))})")
    return "; ".join(parts)


def summary_table(items: Sequence[TrialRecord | ConfigSummary], fmt: str = "markdown",
                  decisions: dict | None = None, held: dict | None = None) -> str:
    """One row per (targets, r): mean score and its interval, seed std, seeds, LoRA and trainable params, peak
    training memory and adapter size (MiB; the markdown shows them when any row has them);
    with ``decisions`` ((targets, r, probe lr or None) -> the ladder's rung), the CSV also carries each rung's
    verdict and the interval of its difference to the best lower rung (``diff``, ``diff_ci_low``,
    ``diff_ci_high``); its column ``label`` names the row with any tuned value (``Wq r=1 lr=0.003``). With
    ``held`` (label -> :class:`~rank_sweep.results.holdout.HeldOut`), a report-only held-out column (markdown)
    or the columns ``holdout_mean``, ``holdout_ci_low``, ``holdout_ci_high``, ``holdout_n`` after ``label`` and
    ``lr`` (the learning rate the row's trials trained at: also a markdown column when they logged it)."""
    summaries = as_summaries(items)
    decisions = decisions or {}
    if fmt == "markdown":
        notes = [note(s) for s in summaries]
        memory = has_memory(summaries)
        rows = [row + [note] for row, note in zip(_rows(summaries, memory), notes, strict=True)]
        columns = header(summaries)
        if held:
            return _markdown(columns + ["held-out (report only)", "note"],
                             [[*row[:-1], holdout.cell(held.get(s.label)), row[-1]]
                              for row, s in zip(rows, summaries, strict=True)])
        return _markdown(columns + ["note"], rows)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        extra = list(holdout.CSV_COLUMNS) if held else []
        w.writerow(["targets", "r", "mean", "std", "n", "lora_params", "trainable_params", "not_learning",
                    "ci_low", "ci_high", "decision", "vs_r", "diff", "diff_ci_low", "diff_ci_high", "peak_memory_mb",
                    "adapter_mb", "label", "lr", *extra])
        for s in summaries:
            g = decisions.get((s.targets, s.r, s.config.lr))
            verdict = [None] * 5 if g is None else [g.decision, g.vs_r, g.diff, g.diff_ci_low, g.diff_ci_high]
            w.writerow([s.targets, s.r, s.mean, s.std, s.n, s.lora_params, s.trainable_params, s.not_learning,
                        s.ci_low, s.ci_high, *verdict, s.peak_memory_mb, s.adapter_mb, s.label, s.lr,
                        *(holdout.csv_values(held.get(s.label)) if held else [])])
        return buf.getvalue()
    raise RankSweepError(f"fmt={fmt!r} is not valid: choose markdown or csv")


def format_selection(selection: Selection) -> str:
    """A text report: the choice, why, the runners-up and the Pareto front."""
    c = selection.chosen
    lines = [
        f"chosen: {c.label} ({selection.direction}, budget: {selection.budget}, tolerance {selection.tolerance:g})",
        f"  score {score_text(c.mean)} {interval_text(c)} (interval of the mean), seed std {c.std:.3g} over "
        f"{c.n} seed(s), {cost_text(c)}",
        f"why: {selection.reason}",
        selection.confidence_line,
        *selection.lr_notes,
        "",
        "runners-up:",
        _markdown(
            ["config", "mean", "interval", "std", "n", "trainable params", "why not"],
            [
                [s.label, score_text(s.mean), interval_text(s), f"{s.std:.3g}", str(s.n), count_text(s.trainable_params),
                 why]
                for s, why in selection.runners_up
            ],
        )
        if selection.runners_up
        else "  (none)",
        "",
        "Pareto front (score vs trainable params, learning configurations):",
        _markdown(header(selection.pareto),
                  _rows(selection.pareto, has_memory(selection.pareto))),
    ]
    return "\n".join(lines)
