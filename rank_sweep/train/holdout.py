"""The held-out split: examples every trial scores once after its fit, and no decision reads (docs/holdout.md).

    validation, holdout, info = split_holdout(task, train, validation, test)   # load_splits does this
    metrics = score_holdout(cfg, model, fit.datamodule, client, run_id)   # run_trial does this, after the record

Where the held-out examples come from, the first rule that applies:

1. ``task.test_file`` (any source): every row of that file;
2. a training subsample (``task.max_train_samples``) that leaves at least ``task.holdout_size`` training rows
   unused: the next ``holdout_size`` rows of the same seeded permutation that drew the subsample, so they are
   disjoint from it and the same for every trial and every worker (free: no decision loses an example);
3. else the dev examples whose text hashes (sha256) below ``task.holdout_dev_fraction``: taken out of the
   decision split, the same ones on every machine whatever the row order; none when that would hold out fewer
   than :data:`MIN_HELD_OUT` examples (a tiny dev set stays whole, and the trial has no held-out score).

The decision split (``validation``) is what the ladder, the learning test and select read; the held-out
outputs go to ``predictions/holdout.npz`` and ``holdout_*`` metrics, which only reports read
(:mod:`rank_sweep.results.holdout`). A causal LM task's rows (:mod:`rank_sweep.train.lm_data`) are split by the
same rules, its dev hash reading each row's input (:func:`~rank_sweep.train.lm_data.hash_fields`), and scored as its
dev set is (:meth:`rank_sweep.train.causal.CausalLM.score`: loss per answer token, the choices, exact match).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass

import datasets
import numpy as np

from rank_sweep.config import TaskConfig

SOURCES = ("test_file", "train_unused", "dev_hash")  # HoldoutInfo.source
MIN_HELD_OUT = 50  # a dev hash split that would hold out fewer examples is not made: the dev set stays whole


@dataclass(frozen=True)
class HoldoutInfo:
    """Where a held-out split came from: logged with every trial that scores it."""

    source: str  # one of SOURCES
    file: str | None  # the file its rows index (None: the Hub)
    rule: str  # how the rows were chosen, in words
    rows: tuple[int, ...]  # row numbers in ``file`` (data rows, from 0), in the order they are scored

    @property
    def ids_sha256(self) -> str:
        """sha256 of ``<source>:<row>`` lines: two trials scored the same held-out examples iff these match."""
        return hashlib.sha256("\n".join(f"{self.source}:{r}" for r in self.rows).encode()).hexdigest()

    def params(self) -> dict:
        """MLflow params of every trial that scores it (``rank-sweep-select`` prints them back)."""
        return {"holdout_source": self.source, "holdout_file": self.file, "holdout_rule": self.rule,
                "holdout_ids_sha256": self.ids_sha256, "holdout_file_sha256": file_sha256(self.file)}


def file_sha256(path: str | None) -> str | None:
    """The sha256 of a file's bytes; None for no file, or one that cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except (OSError, TypeError):
        return None
    return h.hexdigest()


def permutation(n: int) -> np.ndarray:
    """The permutation ``Dataset.shuffle(seed=0)`` draws (``rank_sweep.train.data.subsample`` takes its head)."""
    return np.random.default_rng(0).permutation(n)


def text_hash(values: list[str]) -> float:
    """An example's place in [0, 1): the first 8 bytes of the sha256 of its text fields joined by US (0x1f)."""
    digest = hashlib.sha256("\x1f".join(values).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def dev_hash_rows(ds: datasets.Dataset, fields: list[str], fraction: float) -> np.ndarray:
    """Rows of ``ds`` whose text hashes below ``fraction``: identical examples fall on the same side."""
    columns = [ds[f] for f in fields]
    return np.array([i for i, values in enumerate(zip(*columns, strict=True))
                     if text_hash(["" if v is None else str(v) for v in values]) < fraction], dtype=np.int64)


def split_holdout(task: TaskConfig, train: datasets.Dataset, validation: datasets.Dataset,
                  test: datasets.Dataset | None = None, files: dict | None = None, fields: list[str] | None = None):
    """``(validation, holdout, info)``: the decision split and the held-out split with its provenance
    (``validation, None, None`` with ``task.holdout=false``). ``train`` and ``validation`` come in full (labels
    prepared, not subsampled); ``files``: split -> path, for the record; ``fields``: the columns the dev hash
    reads (default ``task.text_fields``)."""
    files, fields = files or {}, list(fields or task.text_fields)
    n_train, n_sub = train.num_rows, task.max_train_samples
    if not task.holdout:
        return validation, None, None
    if test is not None:
        rows = tuple(range(test.num_rows))
        return validation, test, HoldoutInfo("test_file", files.get("test"), "every row of task.test_file", rows)
    if n_sub is not None and n_train - n_sub >= task.holdout_size:
        rows = permutation(n_train)[n_sub:n_sub + task.holdout_size]
        rule = (f"rows {n_sub}..{n_sub + task.holdout_size - 1} of the seed-0 permutation of the {n_train} training "
                f"rows, whose first {n_sub} are the training subsample")
        return validation, train.select(rows), HoldoutInfo("train_unused", files.get("train"), rule,
                                                           tuple(int(r) for r in rows))
    rows = dev_hash_rows(validation, fields, task.holdout_dev_fraction)
    keep = np.setdiff1d(np.arange(validation.num_rows), rows)
    if len(rows) < MIN_HELD_OUT or not len(keep):  # a tiny dev set: a few held-out examples say nothing
        return validation, None, None
    rule = (f"dev examples whose sha256 of {'+'.join(fields)} falls below {task.holdout_dev_fraction:g}: "
            f"{len(rows)} of {validation.num_rows}, taken out of the decision split")
    return (validation.select(keep), validation.select(rows),
            HoldoutInfo("dev_hash", files.get("validation"), rule, tuple(int(r) for r in rows)))


def assemble(task: TaskConfig, train: datasets.Dataset, validation: datasets.Dataset,
             test: datasets.Dataset | None = None, files: dict | None = None,
             fields: list[str] | None = None) -> datasets.DatasetDict:
    """The splits a trial reads, from the full ``train`` and ``validation`` rows: the held-out split taken out
    first (:func:`split_holdout`), then the training and decision splits subsampled (``task.max_train_samples``,
    ``max_eval_samples``); ``holdout_info`` says where the held-out split came from (None: there is none)."""
    from rank_sweep.train.data import subsample

    validation, held, info = split_holdout(task, train, validation, test, files, fields)
    out = {"train": subsample(train, task.max_train_samples), "validation": subsample(validation, task.max_eval_samples)}
    if held is not None:
        out["holdout"] = held
    dd = datasets.DatasetDict(out)
    dd.holdout_info = info  # provenance, carried to the tokenized splits (rank_sweep.train.batches, lm_data)
    return dd


def test_path(task: TaskConfig) -> str | None:
    """``task.test_file`` as an absolute path (relative to the task's data folder), or None."""
    if not task.test_file:
        return None
    base = task.resolved_data_dir() if task.source == "glue" else task.data_dir
    return os.path.abspath(os.path.join(os.path.expanduser(base or ""), os.path.expanduser(task.test_file)))


# ---------------------------------------------------------------------------
# Scoring it: one extra evaluation pass after the fit
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def evaluation(model, precision: str):
    """Eval mode, no gradients, autocast at the trial's precision; yields the model's device. The model's
    train/eval mode is restored after."""
    import torch

    device = next(model.parameters()).device
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), (torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()):
            yield device
    finally:
        model.train(was_training)


def holdout_outputs(model, loader, precision: str, is_regression: bool) -> tuple[np.ndarray, np.ndarray]:
    """The model's outputs (logits, or regression values) and labels on ``loader``, in its order, in eval mode
    at the trial's precision."""
    outs, labels = [], []
    with evaluation(model, precision) as device:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items() if k != "length"}
            labels.append(batch.pop("labels").cpu().numpy())
            logits = model(**batch).logits.float()
            outs.append((logits.squeeze(-1) if is_regression else logits).cpu().numpy())
    return np.concatenate(outs), np.concatenate(labels)


def score_holdout(cfg, module, datamodule, client, run_id: str) -> dict[str, float]:
    """Score the held-out split once with the trained LightningModule ``module``, save ``predictions/holdout.npz``
    (local and MLflow: what the paired statistics read, as ``predictions/val.npz``), log its provenance as params;
    return its metrics (``holdout/<metric>``, ``holdout_score``, ``holdout_ci_low``/``high``,
    ``holdout_size``, ``holdout_seconds``: the pass's time), for the trial's final metrics. Nothing when the
    trial has no held-out split."""
    from rank_sweep import tracking
    from rank_sweep.results.holdout import HOLDOUT_ARTIFACT
    from rank_sweep.results.paired import score_interval
    from rank_sweep.results.predictions import predictions_path, save_predictions
    from rank_sweep.train.loading import resolve_precision
    from rank_sweep.train.metrics import compute_metrics

    info = getattr(datamodule.tokenized, "holdout_info", None)
    loader = datamodule.holdout_dataloader()
    if info is None or loader is None:
        return {}
    task, t0 = cfg.task, time.perf_counter()
    if task.is_causal:  # scored as its dev set is: outputs for the paired statistics, metrics of the answers
        choice = np.asarray(datamodule.tokenized["holdout"]["choice"], dtype=np.int64)
        metrics, outputs, labels = module.score(loader, choice, resolve_precision(cfg))
    else:
        outputs, labels = holdout_outputs(module.model, loader, resolve_precision(cfg), task.is_regression)
        metrics = compute_metrics(task, outputs, labels)
    seconds = time.perf_counter() - t0  # what the extra pass costs
    ci = score_interval(task.metric, outputs, labels, is_regression=task.is_regression, num_labels=task.num_labels,
                        confidence=cfg.search.confidence)
    path = save_predictions(predictions_path(cfg.output_dir, run_id, HOLDOUT_ARTIFACT), outputs, labels,
                            index=np.asarray(info.rows))
    client.log_artifact(run_id, path, os.path.dirname(HOLDOUT_ARTIFACT))
    tracking.log(client, run_id, params=info.params())
    return {**{f"holdout/{k}": v for k, v in metrics.items()}, "holdout_score": metrics[task.metric],
            "holdout_ci_low": ci.low, "holdout_ci_high": ci.high, "holdout_size": len(labels),
            "holdout_seconds": seconds}
