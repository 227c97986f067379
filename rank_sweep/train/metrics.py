"""Task metrics from scikit-learn / scipy, and the trivial-predictor baseline.

``compute_metrics(task, outputs, labels)`` returns every metric in
``task.metrics``; ``outputs`` are logits (classification: ``loss`` is their
cross-entropy), class indices, or floats (regression: ``loss`` is the MSE).
``baseline_score`` is the primary metric of the predictor that ignores its input
(majority training class with the training class frequencies as probabilities,
or the training mean). Degenerate inputs (constant predictions or labels) score
0.0, never nan.

A causal LM task (:func:`causal_metrics`) scores ``loss`` per completion token (the sum of the dev set's
completion-token negative log-likelihoods over their count), ``perplexity`` = exp(loss) and, with choices,
``accuracy`` / ``f1`` / ``mcc`` of the most likely choice, ``exact_match`` of the greedy generation's answer
(:mod:`rank_sweep.train.answers`). Its reference is a :class:`Reference`: the base
model before training on the same dev set, in place of the trivial predictor. :func:`causal_outputs` turns its
per-example values into the outputs that :mod:`rank_sweep.results.paired` compares (``predictions/val.npz``):
for ``loss``, each example's share ``c_i = nll_i / mean tokens per example`` (their mean is the loss) as the
pair ``(sqrt(c), sqrt(c) + log(expm1(c)))`` with label 0, whose cross-entropy (labels given) and squared value
(no labels) are both ``c``; for a choice metric, the choices' log-likelihoods with the gold choice as label.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from rank_sweep.config import TaskConfig
from rank_sweep.errors import ConfigError

CLASSIFICATION_ONLY = ("accuracy", "f1", "mcc")


def _correlation(fn, preds: np.ndarray, labels: np.ndarray) -> float:
    if len(preds) < 2 or np.ptp(preds) == 0 or np.ptp(labels) == 0:
        return 0.0  # correlation with a constant is undefined: count it as none
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(fn(preds, labels)[0])
    return 0.0 if math.isnan(value) else value


def _as_arrays(task: TaskConfig, preds, labels) -> tuple[np.ndarray, np.ndarray]:
    preds, labels = np.asarray(preds), np.asarray(labels)
    if task.is_regression:
        return preds.reshape(len(preds), -1)[:, 0].astype(float), labels.astype(float)
    if preds.ndim == 2:  # logits: take the class
        preds = preds.argmax(axis=-1)
    return preds.astype(int), labels.astype(int)


def _loss(task: TaskConfig, outputs, labels) -> float:
    """Cross-entropy of logits (mean over examples), or the MSE of regression outputs."""
    outputs, labels = np.asarray(outputs, dtype=float), np.asarray(labels)
    if task.is_regression:
        return float(np.mean((outputs.reshape(len(outputs), -1)[:, 0] - labels.astype(float)) ** 2))
    if outputs.ndim != 2:
        raise ValueError("the loss needs logits (one row of class scores per example), not class indices")
    shifted = outputs - outputs.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-np.mean(log_probs[np.arange(len(labels)), labels.astype(int)]))


def compute_metrics(task: TaskConfig, preds, labels) -> dict[str, float]:
    """Every metric in ``task.metrics``; ``preds`` are logits, class indices or floats."""
    raw = preds
    preds, labels = _as_arrays(task, preds, labels)
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    out: dict[str, float] = {}
    for name in task.metrics:
        if task.is_regression and name in CLASSIFICATION_ONLY:
            raise ConfigError(
                f"task.metrics={name!r} is not valid for regression task {task.name}: use pearson or spearman"
            )
        if name == "accuracy":
            out[name] = float(accuracy_score(labels, preds))
        elif name == "f1":
            binary = task.num_labels == 2
            out[name] = float(
                f1_score(
                    labels,
                    preds,
                    average="binary" if binary else "macro",
                    pos_label=1,
                    labels=None if binary else list(range(task.num_labels)),
                    zero_division=0,
                )
            )
        elif name == "mcc":
            value = float(matthews_corrcoef(labels, preds))
            out[name] = 0.0 if math.isnan(value) else value
        elif name == "pearson":
            out[name] = _correlation(pearsonr, preds.astype(float), labels.astype(float))
        elif name == "spearman":
            out[name] = _correlation(spearmanr, preds.astype(float), labels.astype(float))
        elif name == "loss":
            out[name] = _loss(task, raw, labels)
        else:  # pragma: no cover - TaskConfig rejects unknown names
            raise ConfigError(f"task.metric={name!r} is not valid")
    return out


@dataclass(frozen=True)
class Reference:
    """A causal LM task's "not learning" reference: the base model before training, scored on the dev set
    (its outputs as :func:`causal_outputs` encodes them, their labels, its metrics, its per-example values)."""

    outputs: np.ndarray
    labels: np.ndarray
    metrics: dict[str, float]
    details: dict[str, np.ndarray] = field(default_factory=dict)


def per_token_loss(nll, tokens) -> float:
    return float(np.sum(nll) / max(int(np.sum(tokens)), 1))


def causal_metrics(task: TaskConfig, nll, tokens, choice_ll=None, choice=None, exact=None) -> dict[str, float]:
    """Every metric in ``task.metrics`` from per-example completion NLL sums and token counts, the choices'
    log-likelihoods ``(n, K)`` with the gold choice indices, and each example's exact match (0/1) of its
    generated answer."""
    loss = per_token_loss(nll, tokens)
    out: dict[str, float] = {}
    for name in task.metrics:
        if name == "loss":
            out[name] = loss
        elif name == "perplexity":
            out[name] = float(math.exp(min(loss, 700.0)))
        elif name == "exact_match":
            out[name] = float(np.mean(exact)) if len(exact) else 0.0
        else:  # accuracy, f1, mcc of the most likely choice, as a classifier's over task.labels
            out.update(compute_metrics(_choice_task(task, name), np.asarray(choice_ll), np.asarray(choice)))
    return out


def _choice_task(task: TaskConfig, metric: str) -> TaskConfig:
    return TaskConfig(name=task.name, source=task.source, text_fields=list(task.text_fields), labels=list(task.labels),
                      metric=metric, metrics=[metric], train_file="-", validation_file="-")


def causal_outputs(task: TaskConfig, nll, tokens, choice_ll=None, choice=None,
                   exact=None) -> tuple[np.ndarray, np.ndarray]:
    """(outputs, labels) for the paired comparison of the primary metric (see the module doc); for
    ``exact_match`` the logits ``(1 - e, e)`` with label 1: their accuracy is the mean exact match."""
    if task.metric == "exact_match":
        e = np.asarray(exact, dtype=float)
        return np.stack([1.0 - e, e], axis=1), np.ones(len(e), dtype=np.int64)
    if task.metric == "loss":
        tokens = np.asarray(tokens, dtype=float)
        share = np.maximum(np.asarray(nll, dtype=float) / max(tokens.mean(), 1e-12), 1e-12)
        root = np.sqrt(share)
        return np.stack([root, root + share + np.log(-np.expm1(-share))], axis=1), np.zeros(len(share), dtype=np.int64)
    return np.asarray(choice_ll, dtype=float), np.asarray(choice, dtype=np.int64)


def example_losses(outputs) -> np.ndarray:
    """The per-example loss shares ``c_i`` back from :func:`causal_outputs` for ``loss``: softplus(o1 - o0)."""
    outputs = np.asarray(outputs, dtype=float)
    return np.logaddexp(0.0, outputs[:, 1] - outputs[:, 0])


def baseline_outputs(task: TaskConfig, train_labels, n: int) -> np.ndarray:
    """What the trivial predictor outputs for ``n`` examples: the training mean (regression), or the log
    training class frequencies as logits (argmax: the majority class; their loss: its cross-entropy). For a
    causal LM task ``train_labels`` is its :class:`Reference`, the base model's outputs."""
    if isinstance(train_labels, Reference):
        return train_labels.outputs
    train_labels = np.asarray(train_labels)
    if task.is_regression:
        return np.full(n, float(np.mean(train_labels)))
    counts = np.bincount(train_labels.astype(int), minlength=task.num_labels).astype(float)
    return np.tile(np.log(np.maximum(counts / counts.sum(), 1e-12)), (n, 1))


def baseline_score(task: TaskConfig, train_labels, val_labels) -> float:
    """Primary metric of the trivial predictor: majority training class, or training mean (a causal LM task:
    its :class:`Reference`'s, the base model before training)."""
    if isinstance(train_labels, Reference):
        return train_labels.metrics[task.metric]
    val_labels = np.asarray(val_labels)
    return compute_metrics(task, baseline_outputs(task, train_labels, len(val_labels)), val_labels)[task.metric]
