"""Each plot writes one real PNG and refuses empty input with a RankSweepError."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from rank_sweep.analysis.plots import plot_learning_curves, plot_pareto, plot_rank_curves
from rank_sweep.errors import RankSweepError
from rank_sweep.results.records import ConfigSummary, TrialRecord
from rank_sweep.results.selection import pareto_front

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def S(targets, r, mean, tp, std=0.0, not_learning=False):
    return ConfigSummary(targets, r, 2, mean, std, tp, tp, 10.0, not_learning)


SUMMARIES = [
    S("Wq", 1, 0.81, 10, 0.01, not_learning=True),
    S("Wq", 2, 0.83, 20, 0.02),
    S("Wq", 4, 0.85, 40, 0.01),
    S("Wq,Wv", 1, 0.84, 20, 0.005),
    S("Wq,Wv", 4, 0.86, 80, 0.01),
    S("full", 0, 0.87, 10_000),
    S("Wk", 8, None, 80),  # no score: skipped, not an error
]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_rank_curves_png(tmp_path):
    out = plot_rank_curves(SUMMARIES, tmp_path / "sub" / "rank.png", "mcc")
    assert out == tmp_path / "sub" / "rank.png"  # parent folder created
    assert out.stat().st_size > 1000
    width, height = _png_size(out)
    assert width > 300 and height > 200


def test_rank_curves_can_show_the_held_out_scores_beside_the_decision_split(tmp_path):
    from rank_sweep.results.holdout import HeldOut
    from rank_sweep.results.paired import Interval

    held = {s.label: HeldOut(Interval(s.mean - 0.05, s.mean - 0.08, s.mean - 0.02), 500, 2, ())
            for s in SUMMARIES if s.targets == "Wq"}
    plain = plot_rank_curves(SUMMARIES, tmp_path / "plain.png", "mcc")
    both = plot_rank_curves(SUMMARIES, tmp_path / "both.png", "mcc", held)
    assert both.read_bytes()[:8] == PNG_MAGIC and both.read_bytes() != plain.read_bytes()
    assert plot_rank_curves(SUMMARIES, tmp_path / "none.png", "mcc", {}).read_bytes() == plain.read_bytes()


def test_rank_curves_single_rank_and_str_path(tmp_path):
    out = plot_rank_curves([S("Wq", 8, 0.9, 80)], str(tmp_path / "one.png"), "accuracy")
    assert isinstance(out, Path) and out.read_bytes()[:8] == PNG_MAGIC


def test_pareto_png_default_and_given_front(tmp_path):
    a = plot_pareto(SUMMARIES, tmp_path / "a.png", "mcc")
    b = plot_pareto(SUMMARIES, tmp_path / "b.png", "mcc", front=[SUMMARIES[3], SUMMARIES[1]])
    for out in (a, b):
        assert out.read_bytes()[:8] == PNG_MAGIC
    assert a.read_bytes() != b.read_bytes()  # the front drawn is the one given
    # by default the front is that of the learning configurations (Wq r=1 does not learn)
    learning = [s for s in SUMMARIES if s.mean is not None and not s.not_learning]
    c = plot_pareto(SUMMARIES, tmp_path / "c.png", "mcc", front=pareto_front(learning))
    assert a.read_bytes() == c.read_bytes()


def test_pareto_against_peak_memory(tmp_path):
    """The memory axis draws the front on memory: the cheapest in memory, not in params, starts it."""
    from dataclasses import replace

    mem = [replace(s, peak_memory_mb=mb) for s, mb in zip(SUMMARIES[1:5], (900.0, 1200.0, 800.0, 1500.0), strict=True)]
    assert [s.label for s in pareto_front(mem, cost="peak_memory_mb")] == ["Wq,Wv r=1", "Wq r=4", "Wq,Wv r=4"]
    out = plot_pareto(mem + [SUMMARIES[5]], tmp_path / "m.png", "mcc", x="peak_memory_mb")  # full: no memory, left out
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert out.read_bytes() != plot_pareto(mem, tmp_path / "p.png", "mcc").read_bytes()
    with pytest.raises(RankSweepError, match="no configuration with a score and a peak training memory"):
        plot_pareto(SUMMARIES, tmp_path / "none.png", "mcc", x="peak_memory_mb")


def test_learning_curves_png(tmp_path):
    records = [
        TrialRecord(0, "Wq", 4, 0, "COMPLETE", 0.85, 40, 40, 9.0, intermediate=(0.7, 0.8, 0.85)),
        TrialRecord(1, "Wq", 4, 1, "COMPLETE", 0.84, 40, 40, 9.0, intermediate=(0.72, 0.8, 0.84)),
        TrialRecord(2, "Wq,Wv", 1, 0, "PRUNED", None, 20, 20, 3.0, intermediate=(0.5,)),
        TrialRecord(3, "", -1, -1, "FAIL", None, None, None, None),
    ]
    out = plot_learning_curves(records, tmp_path / "curves.png", "f1")
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 1000


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda p: plot_rank_curves([], p, "mcc"), "no LoRA configuration"),
        (lambda p: plot_rank_curves([S("full", 0, 0.9, 10)], p, "mcc"), "no LoRA configuration"),
        (lambda p: plot_rank_curves([S("Wq", 2, None, 10)], p, "mcc"), "no LoRA configuration"),
        (lambda p: plot_pareto([], p, "mcc"), "no configuration with a score"),
        (lambda p: plot_learning_curves([], p, "mcc"), "no trial reported"),
        (
            lambda p: plot_learning_curves([TrialRecord(0, "Wq", 1, 0, "FAIL", None, None, None, None)], p, "mcc"),
            "no trial reported",
        ),
    ],
)
def test_empty_input_is_an_error_and_writes_nothing(tmp_path, call, match):
    path = tmp_path / "x.png"
    with pytest.raises(RankSweepError, match=match):
        call(path)
    assert not path.exists()


def test_rank_curves_draw_the_interval_of_each_mean(tmp_path):
    """issue #14: the rank-curve plot shows each configuration's interval, not only a seed std."""
    from matplotlib.image import imread

    summaries = [ConfigSummary("Wq", r, 1, 0.7 + 0.01 * r, 0.0, 10 * r, 20 * r, 1.0, ci_low=0.65 + 0.01 * r,
                               ci_high=0.74 + 0.01 * r) for r in (1, 2, 4)]
    path = plot_rank_curves(summaries, tmp_path / "rank.png", "accuracy")
    assert imread(path).shape[0] > 100
