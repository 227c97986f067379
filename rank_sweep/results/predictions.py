"""A trial's per-example validation predictions: one ``.npz`` file, so that any two trials scored on the
same dev split can be compared example by example, later and from another machine.

    save_predictions(path, outputs, labels)      # outputs: logits (n x C) or regression values (n,)
    p = load_predictions(path)                   # p.index, p.label, p.outputs, p.prediction

Each trial writes ``<output_dir>/predictions/<run id>/val.npz`` and logs the same file as its MLflow
artifact ``predictions/val.npz``. Rows are in dev-set order; ``index`` is the row's position in the
(possibly subsampled) dev split, ``label`` its label index (or value). The held-out split's outputs go to
``predictions/holdout.npz`` alike (``index``: the row in its source file), read by reports only
(:mod:`rank_sweep.results.holdout`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

ARTIFACT = "predictions/val.npz"  # the MLflow artifact path: a contract other parts rely on


@dataclass(frozen=True)
class Predictions:
    index: np.ndarray  # (n,) int: row of the dev split
    label: np.ndarray  # (n,) int class index, or float value
    outputs: np.ndarray  # (n, C) float32 logits, or (n,) float32 regression values
    prediction: np.ndarray  # (n,) predicted class, or the value

    def __len__(self) -> int:
        return len(self.index)


def predictions_path(output_dir: str, run_id: str, artifact: str = ARTIFACT) -> str:
    return os.path.join(output_dir, "predictions", run_id, os.path.basename(artifact))


def save_predictions(path: str, outputs, labels, index=None) -> str:
    """``index``: each row's number in its source (default: its position, 0..n-1)."""
    outputs = np.asarray(outputs, dtype=np.float32)
    labels = np.asarray(labels)
    prediction = outputs.argmax(-1) if outputs.ndim == 2 else outputs
    index = np.arange(len(labels)) if index is None else np.asarray(index, dtype=np.int64)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.savez_compressed(path, index=index, label=labels, outputs=outputs, prediction=prediction)
    return path


def load_predictions(path: str) -> Predictions:
    with np.load(path) as data:
        return Predictions(data["index"], data["label"], data["outputs"], data["prediction"])
