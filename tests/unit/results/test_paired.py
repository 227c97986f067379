"""results.paired, calibrated by simulation (issue #14: a plateau call that holds). No training: synthetic pairs
of models on synthetic dev sets, decided by ``is_gain(paired_difference(...), min_delta=0)`` as the plateau
rule will. ``pytest -s`` prints the calibration table (markdown) and the timing.

Simulation designs: each simulation draws a fresh dev set of N = 400 examples and both models' outputs on it.

* accuracy, f1: example i has a correctness probability q_i in {0.55, 0.85} (half each), the same for both
  models (hard and easy examples: why pairing pays); a is right with probability q_i, b with q_i + delta,
  independently given q_i; labels are Bernoulli(PI = 0.4) and a wrong answer is the other class. Accuracy's
  true difference is delta, and the SE of the paired difference is analytic: the per-example variance of
  c_b - c_a is E[q(1-q)] + E[(q+delta)(1-q-delta)] (the shared q cancels), so SE = sqrt(that / N).
  f1 (class 1) has the population value F1(p) = 2 PI p / (2 PI p + 1 - p) at mean correctness p.
* pearson: labels N(0, 1), outputs label + sigma * noise, independent for a and b; sigma_a = 1, so at a true
  difference of 0 both have noise of the same scale; the population value is 1 / sqrt(1 + sigma^2).

For f1 and pearson the SE is the std of the paired difference over a big Monte Carlo (M_SE = 2000 dev sets,
common random numbers); the accuracy design checks that this Monte Carlo matches the analytic SE. A true
difference of k SE solves delta = k * SE(delta) at the design point itself (fixed-point iteration).
n_boot is 500 here, not the default 2000, to keep the file fast; the 2.5% tails still hold ~12 resamples.
"""

from __future__ import annotations

import ast
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from rank_sweep.config import TaskConfig
from rank_sweep.results import paired
from rank_sweep.results.paired import (
    Interval,
    combine_seed_noise,
    is_gain,
    metric_values,
    paired_difference,
    score_interval,
)
from rank_sweep.train.metrics import compute_metrics

N, N_SIMS, N_BOOT, M_SE, CONFIDENCE = 400, 400, 500, 2000, 0.95
Q, PI = (0.55, 0.85), 0.4
MARGIN = 3 * math.sqrt(0.05 * 0.95 / N_SIMS)  # simulation sampling margin on a rate of 0.05
MULTIPLES = (0, 1, 3)  # true differences, in SEs of the paired difference


# --- metric_values agrees with train.metrics.compute_metrics ------------------------------------------------

def _cases():
    rng = np.random.default_rng(7)
    y2, y3, yr = rng.integers(0, 2, 300), rng.integers(0, 3, 300), rng.normal(size=300)
    tied = np.round(yr + rng.normal(size=300), 1)  # ties: spearman's average ranks
    every = ("accuracy", "f1", "mcc", "loss")  # a classification task refuses pearson and spearman (#28)
    return [
        ("binary logits", rng.normal(size=(300, 2)) + np.eye(2)[y2], y2, ["0", "1"], every),
        ("binary indices", np.where(rng.random(300) < 0.7, y2, 1 - y2), y2, ["0", "1"], every[:3]),
        ("3-class logits", rng.normal(size=(300, 3)) + np.eye(3)[y3], y3, ["0", "1", "2"], every),
        ("regression", yr + rng.normal(size=300), yr, None, ("pearson", "spearman", "loss")),
        ("regression, ties", tied, np.round(yr, 1), None, ("pearson", "spearman", "loss")),
        ("constant predictions", np.zeros(300, int), y2, ["0", "1"], every[:3]),
        ("constant labels", yr, np.full(300, 2.5), None, ("pearson", "spearman", "loss")),
    ]


@pytest.mark.parametrize("name,outputs,labels,names,metrics", _cases(), ids=[c[0] for c in _cases()])
def test_metric_values_agrees_with_compute_metrics(name, outputs, labels, names, metrics):
    for metric in metrics:
        task = TaskConfig(metric=metric, metrics=[metric], labels=names)
        want = compute_metrics(task, outputs, labels)[metric]
        got = metric_values(metric, outputs, labels, task.is_regression, task.num_labels)
        assert got == pytest.approx(want, abs=1e-9), (name, metric)


def test_the_module_imports_only_numpy_scipy_and_the_standard_library():
    tree = ast.parse(Path(paired.__file__).read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert roots <= {"__future__", "math", "collections", "dataclasses", "numpy", "scipy"}, roots
    code = "import sys, rank_sweep.results.paired; print(' '.join({m.split('.')[0] for m in sys.modules}))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert not loaded & {"torch", "lightning", "peft", "transformers", "optuna", "mlflow", "sklearn"}


# --- the bootstrap itself --------------------------------------------------------------------------------------

def test_degenerate_resamples_score_zero_never_nan():
    labels = np.array([0, 0, 0, 0, 0, 1])  # most resamples lack the positive class: f1, mcc, correlations 0.0
    flat, some = np.zeros(6, int), np.array([0, 0, 0, 1, 0, 1])
    for metric in ("accuracy", "f1", "mcc", "pearson", "spearman"):
        for iv in (score_interval(metric, flat, labels, is_regression=False, num_labels=2, n_boot=200),
                   paired_difference(metric, flat, some, labels, is_regression=False, num_labels=2, n_boot=200)):
            assert all(math.isfinite(v) for v in (iv.estimate, iv.low, iv.high)), (metric, iv)
    assert score_interval("f1", flat, labels, is_regression=False, num_labels=2) == Interval(0.0, 0.0, 0.0)
    y = np.array([1.0, 1.0, 1.0, 2.0])
    for metric in ("pearson", "spearman", "loss"):
        iv = paired_difference(metric, np.full(4, 3.0), y + 0.1, y, is_regression=True, num_labels=1, n_boot=200)
        assert all(math.isfinite(v) for v in (iv.estimate, iv.low, iv.high)), (metric, iv)


def test_the_bootstrap_is_deterministic_and_paired():
    rng = np.random.default_rng(1)
    y = rng.normal(size=300)
    shared = rng.normal(size=300)  # an error both models make: the pairing cancels it
    a, b = y + shared + 0.5 * rng.normal(size=300), y + shared + 0.5 * rng.normal(size=300)
    kw = dict(is_regression=True, num_labels=1, n_boot=500)
    first = paired_difference("pearson", a, b, y, seed=3, **kw)
    assert first == paired_difference("pearson", a, b, y, seed=3, **kw)
    assert first != paired_difference("pearson", a, b, y, seed=4, **kw)
    assert first.estimate == pytest.approx(metric_values("pearson", b, y, True, 1) - metric_values("pearson", a, y, True, 1))
    wa, wb = (score_interval("pearson", o, y, seed=3, **kw).width for o in (a, b))
    assert first.width < 0.6 * math.hypot(wa, wb)  # much narrower than two separate intervals


def test_a_list_of_seed_arrays_is_the_mean_score():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    seeds_a = [rng.normal(size=(200, 2)) + np.eye(2)[y] for _ in range(3)]
    seeds_b = [rng.normal(size=(200, 2)) + 1.3 * np.eye(2)[y] for _ in range(2)]
    kw = dict(is_regression=False, num_labels=2, n_boot=300)
    diff = paired_difference("mcc", seeds_a, seeds_b, y, **kw)
    mean = [np.mean([metric_values("mcc", o, y, False, 2) for o in s]) for s in (seeds_a, seeds_b)]
    assert diff.estimate == pytest.approx(mean[1] - mean[0])
    assert paired_difference("mcc", [seeds_a[0]], seeds_b[0], y, **kw) == paired_difference("mcc", seeds_a[0], seeds_b[0], y, **kw)
    # plain nested lists are one output (logits read from JSON), not seeds
    assert paired_difference("mcc", seeds_a[0].tolist(), seeds_b[0], y, **kw) == paired_difference("mcc", seeds_a[0], seeds_b[0], y, **kw)


def test_bad_inputs_are_refused():
    y = np.array([0, 1, 1])
    with pytest.raises(ValueError, match="regression"):
        metric_values("f1", np.ones(3), y, True, 1)
    with pytest.raises(ValueError, match="logits"):
        metric_values("loss", y, y, False, 2)
    with pytest.raises(ValueError, match="outputs for"):
        metric_values("accuracy", y[:2], y, False, 2)
    with pytest.raises(ValueError, match="confidence"):
        score_interval("accuracy", y, y, is_regression=False, num_labels=2, confidence=95)
    with pytest.raises(ValueError, match="metric"):
        metric_values("auc", y, y, False, 2)


def test_a_decision_on_sst2_size_costs_well_under_a_second():
    rng = np.random.default_rng(3)
    n, y, yr = 872, rng.integers(0, 2, 872), rng.normal(size=872)
    logits_a = rng.normal(size=(n, 2)) + np.eye(2)[y]
    logits_b = logits_a + 0.3 * rng.normal(size=(n, 2))
    times = {}
    for metric in ("accuracy", "f1", "mcc", "pearson", "spearman", "loss"):
        regression = metric in ("pearson", "spearman")
        a, b, labels = (yr + rng.normal(size=n), yr + rng.normal(size=n), yr) if regression else (logits_a, logits_b, y)
        start = time.perf_counter()
        is_gain(paired_difference(metric, a, b, labels, is_regression=regression, num_labels=2, n_boot=2000), 0.0)
        times[metric] = time.perf_counter() - start
    print("\ndecision time, n=872, n_boot=2000: " + ", ".join(f"{m} {t * 1000:.0f} ms" for m, t in times.items()))
    assert max(times.values()) < 2.0, times


# --- combine_seed_noise, is_gain ---------------------------------------------------------------------------------

def test_combine_seed_noise_adds_the_between_seed_variance_of_the_mean():
    diff = Interval(0.02, 0.005, 0.04)  # asymmetric, as a percentile interval may be
    assert combine_seed_noise(diff, [0.01, 0.01, 0.01]) == diff  # no spread: the dev-set interval
    assert combine_seed_noise(diff, [0.03]) == diff  # one seed: no estimate of the spread
    seeds = [0.0, 0.02, 0.04, 0.06]
    s, k, z = float(np.std(seeds, ddof=1)), len(seeds), norm.ppf(0.975)
    wide = combine_seed_noise(diff, seeds)
    assert wide.estimate == diff.estimate
    assert wide.low == pytest.approx(0.02 - math.sqrt(0.015 ** 2 + z * z * s * s / k))
    assert wide.high == pytest.approx(0.02 + math.sqrt(0.02 ** 2 + z * z * s * s / k))
    symmetric = Interval(0.0, -0.03, 0.03)  # half-width h = z * sigma_dev: half' = z * sqrt((h/z)^2 + s^2/k)
    assert combine_seed_noise(symmetric, seeds).high == pytest.approx(z * math.sqrt((0.03 / z) ** 2 + s * s / k))
    assert combine_seed_noise(diff, seed_std=s, n_seeds=k) == wide
    z90 = norm.ppf(0.95)
    assert combine_seed_noise(symmetric, seeds, confidence=0.9).high == pytest.approx(
        z90 * math.sqrt((0.03 / z90) ** 2 + s * s / k))
    with pytest.raises(ValueError):
        combine_seed_noise(diff)


def test_is_gain_reads_the_direction():
    assert is_gain(Interval(0.01, 0.002, 0.02), 0.0) and not is_gain(Interval(0.01, 0.002, 0.02), 0.005)
    lower = Interval(-0.05, -0.08, -0.02)  # b's loss is lower than a's
    assert is_gain(lower, 0.0, "minimize") and is_gain(lower, 0.01, "minimize")
    assert not is_gain(lower, 0.03, "minimize") and not is_gain(lower, 0.0, "maximize")
    assert not is_gain(Interval(0.05, 0.02, 0.08), 0.0, "minimize")
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 300)
    noise = rng.normal(size=(300, 3))
    diff = paired_difference("loss", noise + np.eye(3)[y], noise + 2 * np.eye(3)[y], y, is_regression=False, num_labels=3)
    assert is_gain(diff, 0.0, "minimize") and not is_gain(diff, 0.0, "maximize")
    with pytest.raises(ValueError, match="direction"):
        is_gain(diff, 0.0, "lower")


# --- calibration by simulation -----------------------------------------------------------------------------------

def _draw_classification(rng, delta, m):
    assert max(Q) + delta <= 1, "delta too large for the design"
    q = np.where(rng.random((m, N)) < 0.5, Q[0], Q[1])
    y = (rng.random((m, N)) < PI).astype(int)
    right_a, right_b = rng.random((m, N)) < q, rng.random((m, N)) < q + delta
    return np.where(right_a, y, 1 - y), np.where(right_b, y, 1 - y), y


def _draw_regression(rng, sigma_b, m):
    y = rng.normal(size=(m, N))
    return y + rng.normal(size=(m, N)), y + sigma_b * rng.normal(size=(m, N)), y


def _f1_rows(pred, y):
    tp, fp, fn = ((pred == 1) & (y == 1)).sum(1), ((pred == 1) & (y == 0)).sum(1), ((pred == 0) & (y == 1)).sum(1)
    return 2 * tp / (2 * tp + fp + fn)


def _pearson_rows(x, y):
    x, y = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    return (x * y).sum(1) / np.sqrt((x * x).sum(1) * (y * y).sum(1))


def _f1(p):
    return 2 * PI * p / (2 * PI * p + 1 - p)


def _rho(sigma):
    return 1 / math.sqrt(1 + sigma * sigma)


MEAN_Q, VAR_Q = float(np.mean(Q)), float(np.mean([q * (1 - q) for q in Q]))


@dataclass
class Design:
    metric: str
    null: float  # the parameter at a true difference of 0
    truth: Callable[[float], float]  # parameter -> true (population) difference b - a
    param_for: Callable[[float], float]  # true difference -> parameter
    draw: Callable  # (rng, parameter, m) -> outputs_a, outputs_b, labels, each (m, N)
    rows: Callable  # (outputs, labels) of m dev sets -> the metric of each
    analytic_se: Callable[[float], float] | None = None

    def mc_se(self, param: float) -> float:
        a, b, y = self.draw(np.random.default_rng(99), param, M_SE)  # common random numbers across params
        return float(np.std(self.rows(b, y) - self.rows(a, y), ddof=1))

    def se(self, param: float) -> float:
        return self.analytic_se(param) if self.analytic_se else self.mc_se(param)

    def at(self, multiple: float) -> tuple[float, float, float]:
        """(parameter, true difference, SE at that point) for a true difference of ``multiple`` SEs."""
        param = self.null
        for _ in range(4):  # the SE moves a little with the difference: solve delta = k * SE(delta)
            param = self.param_for(multiple * self.se(param))
        return param, self.truth(param), self.se(param)


DESIGNS = [
    Design("accuracy", 0.0, lambda d: d, lambda t: t, _draw_classification, lambda p, y: (p == y).mean(1),
           lambda d: math.sqrt((VAR_Q + VAR_Q + d * (1 - 2 * MEAN_Q) - d * d) / N)),
    Design("f1", 0.0, lambda d: _f1(MEAN_Q + d) - _f1(MEAN_Q),
           lambda t: (_f1(MEAN_Q) + t) / (2 * PI - (_f1(MEAN_Q) + t) * (2 * PI - 1)) - MEAN_Q,
           _draw_classification, _f1_rows),
    Design("pearson", 1.0, lambda s: _rho(s) - _rho(1.0), lambda t: math.sqrt(1 / (_rho(1.0) + t) ** 2 - 1),
           _draw_regression, _pearson_rows),
]


def _gain_rate(design: Design, param: float, seed: int) -> float:
    a, b, y = design.draw(np.random.default_rng(seed), param, N_SIMS)
    regression = design.metric == "pearson"
    gains = [is_gain(paired_difference(design.metric, a[i], b[i], y[i], is_regression=regression, num_labels=2,
                                       confidence=CONFIDENCE, n_boot=N_BOOT, seed=i), 0.0) for i in range(N_SIMS)]
    return float(np.mean(gains))


@pytest.fixture(scope="module")
def table() -> dict[str, list[tuple[float, float, float]]]:
    """metric -> [(true difference, its SE, gain rate) for 0, 1 and 3 SEs]."""
    out = {}
    for d, design in enumerate(DESIGNS):
        cells = []
        for k, multiple in enumerate(MULTIPLES):
            param, truth, se = design.at(multiple)
            cells.append((truth, se, _gain_rate(design, param, seed=1000 * d + k)))
        out[design.metric] = cells
    return out


def test_the_monte_carlo_se_matches_the_analytic_one():
    accuracy = DESIGNS[0]
    for delta in (0.0, 0.09):
        assert accuracy.mc_se(delta) == pytest.approx(accuracy.analytic_se(delta), rel=0.05)
    assert DESIGNS[1].param_for(DESIGNS[1].truth(0.07)) == pytest.approx(0.07)
    assert DESIGNS[2].param_for(DESIGNS[2].truth(0.8)) == pytest.approx(0.8)


@pytest.mark.parametrize("metric", [d.metric for d in DESIGNS])
def test_no_more_false_gains_than_the_confidence_allows(table, metric):
    (truth, _, rate) = table[metric][0]
    assert truth == 0.0
    assert rate <= 0.05 + MARGIN, (metric, rate)


@pytest.mark.parametrize("metric", [d.metric for d in DESIGNS])
def test_a_gain_of_three_standard_errors_is_found(table, metric):
    rates = [rate for _, _, rate in table[metric]]
    assert rates[2] >= 0.8, (metric, rates)
    assert rates[0] <= rates[1] <= rates[2], (metric, rates)


def test_print_the_calibration_table(table, capsys):
    """The table printed (run with -s to read it) holds one row per metric, each cell the gain rate the other tests
    check, at the true difference and SE it was simulated at, and the bounds they hold the rates to."""
    print(f"\n\nGain rate of is_gain(paired_difference(...), min_delta=0), confidence {CONFIDENCE}: "
          f"n = {N} dev examples, {N_SIMS} simulations per cell, n_boot = {N_BOOT}; "
          "SE = standard error of the paired difference at that design point\n")
    print("| metric | true diff 0 | 1 SE | 3 SE |")
    print("|---|---|---|---|")
    for metric, cells in table.items():
        row = [f"{rate:.3f} (diff {truth:+.4f}, SE {se:.4f})" for truth, se, rate in cells]
        print(f"| {metric} | " + " | ".join(row) + " |")
    print(f"\nfalse-gain bound: 0.05 + 3 * sqrt(0.05 * 0.95 / {N_SIMS}) = {0.05 + MARGIN:.3f}; power bound: 0.8")
    out = capsys.readouterr().out
    with capsys.disabled():  # still shown with -s
        print(out)
    lines = out.splitlines()
    start = lines.index("| metric | true diff 0 | 1 SE | 3 SE |")
    rows = [line.strip("|").split("|") for line in lines[start + 2:start + 2 + len(table)]]
    assert [cells[0].strip() for cells in rows] == [d.metric for d in DESIGNS] == list(table)
    for cells, (metric, expected) in zip(rows, table.items(), strict=True):
        shown = [re.fullmatch(r"(\d\.\d{3}) \(diff ([+-]\d\.\d{4}), SE (\d\.\d{4})\)", c.strip()) for c in cells[1:]]
        assert all(shown) and len(shown) == len(MULTIPLES), (metric, cells)
        for m, (truth, se, rate) in zip(shown, expected, strict=True):
            assert (float(m[1]), float(m[2]), float(m[3])) == pytest.approx((rate, truth, se), abs=6e-4)
        assert float(shown[0][2]) == 0.0 and float(shown[0][1]) <= 0.05 + MARGIN and float(shown[2][1]) >= 0.8
    assert f"= {0.05 + MARGIN:.3f}; power bound: 0.8" in out


def test_score_interval_covers_a_known_accuracy():
    p, sims = 0.78125, 400  # off the 1/n grid: an endpoint cannot land exactly on p and inflate the coverage
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, (sims, N))
    pred = np.where(rng.random((sims, N)) < p, y, 1 - y)
    covered = [score_interval("accuracy", pred[i], y[i], is_regression=False, num_labels=2, n_boot=N_BOOT, seed=i)
               for i in range(sims)]
    rate = float(np.mean([iv.low <= p <= iv.high for iv in covered]))
    print(f"\nscore_interval coverage, accuracy p={p}, n={N}, {sims} simulations, n_boot={N_BOOT}: {rate:.3f}")
    assert 0.90 <= rate <= 0.99


def test_its_metrics_and_directions_are_the_config_table():
    """paired keeps its own lists (it imports nothing of rank_sweep): they are config's one table, less perplexity
    (exp of a mean: no per-example difference)."""
    from rank_sweep.config import DIRECTIONS, METRIC_DIRECTIONS

    assert paired.METRICS == tuple(m for m in METRIC_DIRECTIONS if m != "perplexity")
    assert paired.DIRECTIONS == DIRECTIONS == tuple(dict.fromkeys(METRIC_DIRECTIONS.values()))
