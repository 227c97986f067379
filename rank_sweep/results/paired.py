"""Paired bootstrap statistics: is configuration b better than a on the SAME dev examples?

Pure numpy/scipy (never torch, Optuna, MLflow or scikit-learn), so the ladder's plateau rule and select can
call it on per-example validation outputs in dev-set order: logits ``(n, C)`` or class indices ``(n,)`` for
classification, floats ``(n,)`` for regression; labels ``(n,)``. Example::

    from rank_sweep.results.paired import combine_seed_noise, is_gain, paired_difference

    diff = paired_difference("accuracy", logits_r4, logits_r8, labels, is_regression=False, num_labels=2)
    diff = combine_seed_noise(diff, acc_r8_per_seed - acc_r4_per_seed)   # optional: add the seed noise
    if not is_gain(diff, min_delta=0.0):    # r8 is not surely better than r4: the ladder has plateaued
        ...

``outputs`` may also be a list of numpy arrays, one per seed: the statistic is then the mean of the per-seed
metrics (the configuration's mean score), resampled on the same examples for every seed.

Metrics are those of :mod:`rank_sweep.train.metrics` (accuracy, f1: binary on class 1 or macro, mcc, pearson,
spearman, loss: cross-entropy of logits or MSE), with its convention that degenerate inputs (constant
predictions or labels) score 0.0, never nan. All resamples are scored at once from an ``(n_boot, n)`` matrix of
how often each resample draws each example (a resample's statistic is a weighted one on the dev set):
per-example quantities (accuracy, loss) are one matrix-vector product, confusion counts (f1, mcc) one
matrix product with the examples' one-hot cells, pearson from weighted moments (matrix-vector products), spearman
on the average ranks within each resample, from cumulative counts in value order (no per-resample sort).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman", "loss")
CLASSIFICATION_ONLY = ("accuracy", "f1", "mcc")
DIRECTIONS = ("maximize", "minimize")
_CORRELATIONS = ("pearson", "spearman")
_BLOCK = 2_000_000  # draws per block of resamples: bounds memory on large dev sets (MNLI: 9815 x 2000)


@dataclass(frozen=True)
class Interval:
    """A point estimate and a two-sided interval around it."""

    estimate: float
    low: float
    high: float

    @property
    def width(self) -> float:
        return self.high - self.low


# A prepared output: (x, y, classes). y is None for per-example means (accuracy: 0/1 correct, loss: per-example
# loss), so a resample only averages x; else x is the predicted class (f1, mcc: ``classes`` counted) or the
# prediction as a float (pearson, spearman), and y the label.
_Prepared = tuple[np.ndarray, "np.ndarray | None", int]


def _prepare(metric: str, outputs, labels, is_regression: bool, num_labels: int) -> _Prepared:
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not valid: choose one of {', '.join(METRICS)}")
    out, y = np.asarray(outputs), np.asarray(labels)
    if len(out) != len(y) or len(y) == 0:
        raise ValueError(f"{len(out)} outputs for {len(y)} labels: give one output per dev example (n >= 1)")
    if is_regression:
        if metric in CLASSIFICATION_ONLY:
            raise ValueError(f"metric={metric!r} is not valid for regression: use pearson, spearman or loss")
        pred, y = out.reshape(len(out), -1)[:, 0].astype(float), y.astype(float)
        return ((pred - y) ** 2, None, 0) if metric == "loss" else (pred, y, 0)
    y = y.astype(int)
    if metric == "loss":
        if out.ndim != 2:
            raise ValueError("the loss needs logits (one row of class scores per example), not class indices")
        shifted = out.astype(float) - out.max(axis=1, keepdims=True)  # stable log-softmax, as train.metrics
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return -log_probs[np.arange(len(y)), y], None, 0
    pred = (out.argmax(axis=-1) if out.ndim == 2 else out).astype(int)
    if metric == "accuracy":
        return (pred == y).astype(float), None, 0
    if metric in _CORRELATIONS:
        return pred.astype(float), y.astype(float), 0
    return pred, y, max(num_labels, int(pred.max()) + 1, int(y.max()) + 1)


def _constant(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Which resamples draw a single value: their correlation is 0.0 (exact, on the raw values)."""
    present = weights > 0
    return np.where(present, values, np.inf).min(axis=1) == np.where(present, values, -np.inf).max(axis=1)


def _moments(weights: np.ndarray, values: np.ndarray) -> tuple:
    """Per-resample weighted mean and variance by matrix-vector products (no (n_boot, n) temporaries), on
    values centered over the dev set first so that the one-pass variance keeps its digits."""
    v = values - values.mean()
    total = weights.sum(axis=1)
    mean = weights @ v / total
    var = weights @ (v * v) / total - mean * mean
    # a constant resample leaves only rounding (about n * eps * max v^2) in var: confirm those candidates exactly
    flat = var <= 1e-9 * float(np.max(v * v))
    rows = np.flatnonzero(flat)
    flat[rows] = _constant(weights[rows], values)
    return v, mean, var, flat, total


def _pearson(weights: np.ndarray, a: tuple, b: tuple) -> np.ndarray:
    (va, ma, sa, flat_a, total), (vb, mb, sb, flat_b, _) = a, b
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (weights @ (va * vb) / total - ma * mb) / np.sqrt(sa * sb)
    return np.where(flat_a | flat_b | ~np.isfinite(r), 0.0, np.clip(r, -1.0, 1.0))


def _ranks(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each resample's average ranks (as scipy.stats.rankdata, ties included: a resample repeats examples),
    minus their mean, from cumulative counts in value order: no per-resample sort. A constant resample gives
    all-zero rows exactly (ranks are half-integers), hence 0/0 in :func:`_spearman`, counted as 0.0."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    new = np.r_[True, ordered[1:] != ordered[:-1]]  # where a run of tied values starts
    starts = np.flatnonzero(new)
    group = np.empty(len(values), dtype=int)
    group[order] = np.cumsum(new) - 1
    cum = np.zeros((len(weights), len(values) + 1))
    np.cumsum(weights[:, order], axis=1, out=cum[:, 1:])
    # a run of c tied copies after b smaller ones holds ranks b+1..b+c: their average is (b + (b+c) + 1) / 2
    ranks = ((cum[:, starts] + cum[:, np.r_[starts[1:], len(values)]] + 1) / 2)[:, group]
    return ranks - (cum[:, -1:] + 1) / 2  # the mean rank of N draws is (N + 1) / 2


def _spearman(weights: np.ndarray, ra: np.ndarray, rb: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (weights * ra * rb).sum(axis=1) / np.sqrt((weights * ra * ra).sum(axis=1) * (weights * rb * rb).sum(axis=1))
    return np.where(np.isfinite(r), np.clip(r, -1.0, 1.0), 0.0)


def _from_counts(metric: str, weights: np.ndarray, pred: np.ndarray, y: np.ndarray, classes: int,
                 num_labels: int) -> np.ndarray:
    """f1 or mcc of each resample from its confusion counts [true, predicted]: one product of the resample
    counts with the one-hot cell of every example."""
    cells = np.zeros((len(y), classes * classes))
    cells[np.arange(len(y)), y * classes + pred] = 1.0
    cm = (weights @ cells).reshape(len(weights), classes, classes)
    tp, true, predicted = np.diagonal(cm, axis1=1, axis2=2), cm.sum(axis=2), cm.sum(axis=1)
    if metric == "f1":  # 2tp / (2tp + fp + fn), 0.0 when a class is neither present nor predicted (zero_division=0)
        denom = true + predicted
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
        return f1[:, 1] if num_labels == 2 else f1[:, :num_labels].mean(axis=1)
    # multiclass MCC (Gorodkin), as sklearn.metrics.matthews_corrcoef; 0.0 when predictions or labels are constant
    n = cm.sum(axis=(1, 2))
    cov_tp = tp.sum(axis=1) * n - (true * predicted).sum(axis=1)
    denom = (n * n - (predicted * predicted).sum(axis=1)) * (n * n - (true * true).sum(axis=1))
    return np.divide(cov_tp, np.sqrt(np.maximum(denom, 0)), out=np.zeros_like(n), where=denom > 0)


def _block(metric: str, preps: list[_Prepared], weights: np.ndarray, num_labels: int) -> np.ndarray:
    """The metric of every prepared output (rows) on every resample (columns). A resample is a row of
    ``weights``: how many times it draws each example, so a statistic of the resample is a weighted one on
    the original examples. The label side is centered (and ranked) once and shared: the comparison is paired."""
    y = preps[0][1]
    if y is None:
        return np.stack([weights @ x for x, _, _ in preps]) / weights.sum(axis=1)
    if metric in _CORRELATIONS:
        side, corr = (_moments, _pearson) if metric == "pearson" else (_ranks, _spearman)
        label_side = side(weights, y)
        return np.stack([corr(weights, side(weights, x), label_side) for x, _, _ in preps])
    classes = max(c for _, _, c in preps)
    return np.stack([_from_counts(metric, weights, x, y, classes, num_labels) for x, _, _ in preps])


def _resample_counts(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """``rows`` bootstrap resamples of n examples as counts (rows, n): each row's draws offset into its own
    block of n cells of one bincount."""
    codes = rng.integers(0, n, size=(rows, n)) + (np.arange(rows) * n)[:, None]
    return np.bincount(codes.ravel(), minlength=rows * n).reshape(rows, n).astype(float)


def _seeds(outputs) -> list:
    """A list of numpy arrays is one output per seed; anything else is one output (nested lists included)."""
    if isinstance(outputs, (list, tuple)) and outputs and all(isinstance(o, np.ndarray) for o in outputs):
        return list(outputs)
    return [outputs]


def _bootstrap(metric: str, preps: list[_Prepared], num_labels: int, n_boot: int, seed: int,
               confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """(metric on all examples, metric on each resample) per prepared output; one Generator for determinism."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} is not valid: give a number in (0, 1)")
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot={n_boot!r} is not valid: give a positive integer")
    n = len(preps[0][0])
    if any(len(p[0]) != n for p in preps):
        raise ValueError("every output must have one row per dev example, in the same order")
    rng = np.random.default_rng(seed)
    step = max(1, _BLOCK // n)
    boot = [_block(metric, preps, _resample_counts(rng, min(step, n_boot - start), n), num_labels)
            for start in range(0, n_boot, step)]
    return _block(metric, preps, np.ones((1, n)), num_labels)[:, 0], np.concatenate(boot, axis=1)


def _percentile(estimate: float, values: np.ndarray, confidence: float) -> Interval:
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return Interval(float(estimate), float(low), float(high))


# a metric scored as another one on its encoded outputs: exact match on generation travels as one 0/1 per
# example, encoded as logits whose argmax is the label where the answer was right (train.metrics.causal_outputs)
ALIASES = {"exact_match": "accuracy"}


def metric_values(metric: str, outputs, labels, is_regression: bool, num_labels: int) -> float:
    """The metric on all examples; agrees with :func:`rank_sweep.train.metrics.compute_metrics`."""
    metric = ALIASES.get(metric, metric)
    prep = _prepare(metric, outputs, labels, is_regression, num_labels)
    return float(_block(metric, [prep], np.ones((1, len(prep[0]))), num_labels)[0, 0])


def score_interval(metric: str, outputs, labels, *, is_regression: bool, num_labels: int,
                   confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of one configuration's score, resampling dev examples."""
    metric = ALIASES.get(metric, metric)
    preps = [_prepare(metric, o, labels, is_regression, num_labels) for o in _seeds(outputs)]
    full, boot = _bootstrap(metric, preps, num_labels, n_boot, seed, confidence)
    return _percentile(full.mean(), boot.mean(axis=0), confidence)


def paired_difference(metric: str, outputs_a, outputs_b, labels, *, is_regression: bool, num_labels: int,
                      confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Interval:
    """Percentile interval of metric(b) - metric(a). Both are scored on the SAME resampled examples, so the
    per-example difficulty they share cancels: the interval is much narrower than from two separate ones."""
    metric = ALIASES.get(metric, metric)
    preps_a = [_prepare(metric, o, labels, is_regression, num_labels) for o in _seeds(outputs_a)]
    preps_b = [_prepare(metric, o, labels, is_regression, num_labels) for o in _seeds(outputs_b)]
    full, boot = _bootstrap(metric, preps_a + preps_b, num_labels, n_boot, seed, confidence)
    k = len(preps_a)
    diffs = boot[k:].mean(axis=0) - boot[:k].mean(axis=0)
    return _percentile(full[k:].mean() - full[:k].mean(), diffs, confidence)


def combine_seed_noise(diff: Interval, seed_diffs: Sequence[float] | None = None, *, seed_std: float | None = None,
                       n_seeds: int | None = None, confidence: float = 0.95) -> Interval:
    """Widen the paired dev-set interval ``diff`` (of the difference of the two configurations' mean scores) by
    the seed-to-seed noise of that mean, under a normal approximation.

    The dev-set interval's half-width h is z * sigma_dev, z = Phi^-1((1 + confidence) / 2), so its sampling
    variance is (h / z)^2. The k per-seed score differences d_j (b's score minus a's, seed j) have sample std
    s (ddof=1), so their mean carries a between-seed variance s^2 / k. The two sources add as variances::

        half_width = z * sqrt((h / z)^2 + s^2 / k) = sqrt(h^2 + z^2 * s^2 / k)

    applied to each side of the (maybe asymmetric) percentile interval around ``diff.estimate``. Instead of
    ``seed_diffs`` you may pass ``seed_std=s`` and ``n_seeds=k`` (with unpaired seeds, s^2 = s_a^2 + s_b^2).
    ``confidence`` must be the one ``diff`` was built with. s = 0 returns ``diff`` unchanged, and so do fewer
    than 2 seeds: one seed carries no estimate of s (the rule then sees only dev-set noise).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} is not valid: give a number in (0, 1)")
    if seed_diffs is not None:
        d = np.asarray(seed_diffs, dtype=float)
        k, s = len(d), float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
    elif seed_std is not None and n_seeds is not None:
        k, s = int(n_seeds), float(seed_std)
    else:
        raise ValueError("give seed_diffs, or seed_std and n_seeds")
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"the between-seed std {s!r} is not valid: give finite seed differences")
    if k < 2 or s == 0:
        return diff
    return widen(diff, s * s / k, confidence)


def widen(diff: Interval, extra_variance: float, confidence: float) -> Interval:
    """The one widening by seed noise: each side of ``diff`` widened by an independent noise of variance
    ``extra_variance``: half = sqrt(half_dev^2 + z^2 * extra_variance), z = Phi^-1((1 + confidence) / 2)."""
    if extra_variance <= 0:
        return diff
    extra = norm.ppf((1 + confidence) / 2) ** 2 * extra_variance
    return Interval(diff.estimate, diff.estimate - math.sqrt((diff.estimate - diff.low) ** 2 + extra),
                    diff.estimate + math.sqrt((diff.high - diff.estimate) ** 2 + extra))


def not_worse(diff: Interval, delta: float, direction: str = "maximize") -> bool:
    """b is not shown worse than a by more than ``delta``: the upper bound of b - a is not below -delta (for
    ``minimize``, the lower bound not above delta). The plateau rank and select's tolerance both use it."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r} is not valid: choose maximize or minimize")
    return not (diff.high < -delta if direction == "maximize" else diff.low > delta)


def is_gain(diff: Interval, min_delta: float, direction: str = "maximize") -> bool:
    """b is surely better than a by more than ``min_delta``: the lower bound of b - a exceeds min_delta, or for
    ``minimize`` (a loss, lower is better) the upper bound of b - a is below -min_delta."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r} is not valid: choose maximize or minimize")
    return diff.low > min_delta if direction == "maximize" else diff.high < -min_delta
