"""MLflow records: one parent run per study, one child run per trial, provenance.

Everything goes through an explicit ``MlflowClient`` and run ids (no global
"active run"), so a trial in another process can attach to the study's parent
run by id. Metrics are logged once per epoch with ``log_batch``; nothing
talks to the tracking store inside the training step.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from functools import lru_cache
from importlib import metadata
from urllib.parse import urlsplit, urlunsplit

import lightning.pytorch as pl
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from rank_sweep.errors import TrackingError

PACKAGES = ("rank_sweep", "torch", "transformers", "peft", "lightning", "optuna", "mlflow", "hydra-core", "datasets")


def redact(uri: str | None) -> str | None:
    """Hide credentials in a URL: ``postgresql://user:pw@host/db`` -> ``postgresql://***@host/db``."""
    if not uri or "://" not in uri:
        return uri
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def _redact_text(text: str) -> str:
    return re.sub(r"(\w[\w+.-]*://)[^/@\s]+@", r"\1***@", text)


def connect(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """Open the tracking store and the experiment, failing fast with one line if unreachable."""
    if uri.startswith(("http://", "https://")):
        # fail in seconds, not after MLflow's default minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        experiment_id = exp.experiment_id if exp else client.create_experiment(experiment)
    except Exception as e:  # any backend error: bad scheme, unreachable server, unwritable file
        first = _redact_text(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        raise TrackingError(
            f"cannot use the MLflow tracking store {redact(uri)!r}: {first[:200]} "
            f"(set tracking.uri or MLFLOW_TRACKING_URI to a reachable store, e.g. sqlite:///mlflow.db)"
        ) from None
    return client, experiment_id


@lru_cache(maxsize=1)
def provenance() -> dict[str, str]:
    """Tags that say where a result came from: git sha, dirty flag, versions."""
    tags = {"python": platform.python_version(), "host.platform": platform.platform()}
    for pkg in PACKAGES:
        try:
            tags[f"version.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            tags["git.sha"] = sha.stdout.strip()
            tags["git.dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def start_run(client: MlflowClient, experiment_id: str, name: str, params: dict, tags: dict | None = None,
              parent_run_id: str | None = None) -> str:
    all_tags = {**provenance(), **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=name, tags=all_tags)
    log(client, run.info.run_id, params=params)
    return run.info.run_id


def log(client: MlflowClient, run_id: str, metrics: dict | None = None, params: dict | None = None,
        tags: dict | None = None, step: int = 0) -> None:
    """One batched call for any mix of metrics, params and tags."""
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items() if v is not None],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
    )


def end_run(client: MlflowClient, run_id: str, status: str, reason: str | None = None) -> None:
    """status: FINISHED, FAILED or KILLED (pruned); the reason goes in a tag."""
    if reason:
        client.set_tag(run_id, "failure_reason" if status == "FAILED" else "status_reason", _redact_text(reason)[:4000])
    client.set_terminated(run_id, status=status)


class EpochLogger(pl.Callback):
    """Logs Lightning's epoch-level metrics (``val/*``, ``train/loss``) to one MLflow run."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id

    def on_train_epoch_end(self, trainer, pl_module):
        # validation of this epoch has already run (callbacks see it before the module's hook does)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
        if metrics:
            log(self.client, self.run_id, metrics=metrics, step=trainer.current_epoch)
