"""The figures the README and the tutorial quote from the quick start match the files the run wrote
(experiments/quickstart/results/): a rerun that updates those files makes a stale quote fail here."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "quickstart" / "results"


def summary() -> dict[tuple[str, int, str], dict]:
    """The run's rows by (targets, r, lr): one configuration may be trained at several learning rates."""
    with open(RESULTS / "summary.csv") as f:
        return {(row["targets"], int(row["r"]), f"{float(row['lr']):g}" if row.get("lr") else ""): row
                for row in csv.DictReader(f)}


def quoted_rows(path: Path) -> list[list[str]]:
    """The rows of the first markdown table whose header starts with 'targets | r | lr | accuracy'."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\| targets \| r \| lr \| accuracy \|", line))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def interval(low: str, high: str) -> str:
    return f"[{float(low):.4f}, {float(high):.4f}]"


@pytest.mark.parametrize("page", ["README.md", "docs/tutorial.md"])
def test_the_quick_start_figures_quoted_are_the_runs_own(page):
    rows, stored = quoted_rows(ROOT / page), summary()
    assert len(rows) == len(stored), f"{page} quotes {len(rows)} configurations, the run had {len(stored)}"
    for targets, r, lr, accuracy, ci, *rest in rows:
        key = (targets, 0 if r in ("0", "-") else int(r), lr)
        row = stored[key]
        assert accuracy == f"{float(row['mean']):.4f}", f"{page}: {key} mean {accuracy}, the run's {row['mean']}"
        assert ci == interval(row["ci_low"], row["ci_high"]), f"{page}: {key} interval {ci}"
        held = next((c for c in rest if c.count("[") == 1 and c.startswith("0.")), None)
        if held is not None:
            assert held == f"{float(row['holdout_mean']):.4f} " + interval(row["holdout_ci_low"],
                                                                           row["holdout_ci_high"]), f"{page}: {key}"


def test_the_choice_quoted_is_what_select_printed():
    printed = (RESULTS / "select.txt").read_text()
    choice = re.search(r"chosen: (.+?) \((?:maximize|minimize).*\n\s+score (\S+ \[\S+, \S+\])", printed)
    assert choice is not None, "select.txt has no chosen line"
    for page in ("README.md", "docs/tutorial.md"):
        text = " ".join((ROOT / page).read_text().split()).replace("**", "")
        assert f"{choice[1]}, {choice[2]}" in text or f"score {choice[2]}" in text, (page, choice.groups())
