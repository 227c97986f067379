"""Compare two configurations on the same dev examples: the paired interval of their score difference,
widened by seed noise. The one comparison the ladder's plateau rule and ``rank-sweep-select`` both use.

    compare = PairedComparer(metric="accuracy", is_regression=False, num_labels=2, direction="maximize",
                             output_dir="outputs", tracking_uri="sqlite:///mlflow.db", confidence=0.95)
    diff = compare(records_of_r4, records_of_r8)     # Interval of mean score(r8) - mean score(r4), or None

Each record's per-example outputs are read from ``<output_dir>/predictions/<run id>/val.npz``, else from
its MLflow artifact ``predictions/val.npz`` (another machine's trial), and cached. With several seeds the
statistic is the mean of the per-seed scores, resampled on the same examples for every seed; the interval
is then widened by the seed noise of both means (normal approximation, :func:`widen`). With one seed per
configuration the seed noise comes from ``seed_std`` (e.g. measured on the first rung's extra seeds).
Returns None when a record's predictions cannot be found: callers then fall back to comparing means.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

from rank_sweep.results.paired import Interval, paired_difference, widen
from rank_sweep.results.predictions import ARTIFACT, load_predictions, predictions_path
from rank_sweep.results.records import TrialRecord


def seed_variance(recs: Sequence[TrialRecord], seed_std: float | None) -> float:
    """The variance of a configuration's mean score over its seeds: s^2/k from its own seeds when it has two
    or more, else the reused estimate ``seed_std`` (None: unknown, counted as 0)."""
    scores = [r.score for r in recs]
    k = len(scores)
    if k >= 2:
        mean = sum(scores) / k
        return sum((s - mean) ** 2 for s in scores) / (k - 1) / k
    return (seed_std or 0.0) ** 2 / max(k, 1)


class PairedComparer:
    def __init__(self, metric: str, is_regression: bool, num_labels: int, direction: str, output_dir: str,
                 tracking_uri: str | None = None, confidence: float = 0.95, n_boot: int = 2000,
                 artifact: str = ARTIFACT):
        self.metric, self.is_regression, self.num_labels = metric, is_regression, num_labels
        self.direction, self.output_dir, self.uri = direction, output_dir, tracking_uri
        self.confidence, self.n_boot = confidence, n_boot
        self.artifact = artifact  # the decision split's outputs; only reports pass the held-out split's
        self._cache: dict[tuple[str, str], object] = {}

    def predictions(self, rec: TrialRecord):
        """The record's per-example predictions, or None if neither this machine nor MLflow has them."""
        if not rec.run_id:
            return None
        key = (rec.run_id, rec.outputs)
        if key not in self._cache:
            folder = os.path.join(rec.run_id, rec.outputs) if rec.outputs else rec.run_id
            path = predictions_path(self.output_dir, folder, self.artifact)
            if os.path.isfile(path):
                found = load_predictions(path)
            elif self.artifact != ARTIFACT and os.path.isfile(predictions_path(self.output_dir, folder)):
                found = None  # the trial ran here and left no held-out outputs: it had none, MLflow has none either
            else:
                found = self._download(rec.run_id, rec.outputs)
            self._cache[key] = found
        return self._cache[key]

    def _download(self, run_id: str, outputs: str = ""):
        if not self.uri:
            return None
        try:
            from mlflow.tracking import MlflowClient

            name = self.artifact  # a screened rank's outputs: predictions/r<rank>/val.npz
            artifact = f"{os.path.dirname(name)}/{outputs}/{os.path.basename(name)}" if outputs else name
            with tempfile.TemporaryDirectory() as tmp:
                return load_predictions(MlflowClient(self.uri).download_artifacts(run_id, artifact, tmp))
        except Exception:  # not logged (an older trial), or the store has no artifacts here
            return None

    def __call__(self, a: Sequence[TrialRecord], b: Sequence[TrialRecord],
                 seed_std: float | None = None) -> Interval | None:
        """Interval of mean score(b) - mean score(a) on the same dev examples, seed noise included."""
        pa, pb = [self.predictions(r) for r in a], [self.predictions(r) for r in b]
        if not pa or not pb or any(p is None for p in pa + pb):
            return None
        if len({len(p) for p in pa + pb}) != 1:
            return None  # not the same dev split
        diff = paired_difference(self.metric, [p.outputs for p in pa], [p.outputs for p in pb], pa[0].label,
                                 is_regression=self.is_regression, num_labels=self.num_labels,
                                 confidence=self.confidence, n_boot=self.n_boot)
        return widen(diff, seed_variance(a, seed_std) + seed_variance(b, seed_std), self.confidence)
