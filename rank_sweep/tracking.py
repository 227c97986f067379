"""MLflow records: one parent run per study, one child run per trial, provenance.

Everything goes through an explicit ``MlflowClient`` and run ids (no global
"active run"), so a trial in another process can attach to the study's parent
run by id. Metrics are logged once per epoch with ``log_batch``
(:class:`rank_sweep.train.callbacks.EpochLogger`); nothing talks to the
tracking store inside the training step. Imports neither torch nor Lightning.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import time
from functools import lru_cache
from importlib import metadata
from urllib.parse import urlsplit

from filelock import FileLock
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from rank_sweep.config import sqlite_path
from rank_sweep.errors import TrackingError, first_line, is_creation_race, redact
from rank_sweep.errors import redact_text as _redact_text

PACKAGES = ("rank_sweep", "torch", "transformers", "peft", "lightning", "optuna", "mlflow", "hydra-core", "datasets")


@contextlib.contextmanager
def _init_lock(uri: str):
    """Serialize opening a sqlite store across processes: two workers starting together on a new file
    would otherwise both run MLflow's schema migrations and one would fail."""
    path = sqlite_path(uri)
    lock = FileLock(path + ".lock") if path else None
    try:
        if lock is not None:
            lock.acquire()
    except OSError:  # an unwritable or missing folder: the store itself will say so
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def connect(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """Open the tracking store and the experiment, failing fast with one line if unreachable.

    Two workers starting together on a new sqlite store may both create its tables or the experiment:
    the loser of that race retries instead of failing."""
    if uri.startswith(("http://", "https://")):
        # fail in seconds, not after MLflow's default minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    for attempt in range(6):
        try:
            with _init_lock(uri):
                client = MlflowClient(tracking_uri=uri)
                exp = client.get_experiment_by_name(experiment)
                if exp is None:
                    try:
                        return client, client.create_experiment(experiment)
                    except Exception:  # another worker created it in the meantime
                        exp = client.get_experiment_by_name(experiment)
                        if exp is None:
                            raise
                return client, exp.experiment_id
        except Exception as e:  # any backend error: bad scheme, unreachable server, unwritable file
            if attempt < 5 and not uri.startswith(("http://", "https://")) and is_creation_race(e):
                time.sleep(0.5 * (attempt + 1))
                continue
            raise TrackingError(
                f"cannot use the MLflow tracking store {redact(uri)!r}: {_connect_reason(e)[:200]} "
                f"(set tracking.uri or MLFLOW_TRACKING_URI to a reachable store, e.g. sqlite:///mlflow.db)"
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _connect_reason(e: BaseException) -> str:
    """The useful part of MLflow's error: the scheme it does not know, or why a server did not answer."""
    text = str(e)
    schemes = re.search(r"unsupported URI '([^']*)'.*Supported URI schemes are: (\[[^\]]*\])", text, re.S)
    if schemes:
        return f"unsupported URI scheme {urlsplit(schemes.group(1)).scheme!r} (MLflow knows {schemes.group(2)})"
    refused = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if refused and "API request to" in text:
        return f"no tracking server answers there ({refused.group(1).strip()})"
    return first_line(e)


def store_failed(uri: str, doing: str, error: BaseException) -> TrackingError:
    """The one-line error for a tracking store that stops answering in the middle of a study or trial."""
    return TrackingError(
        f"the MLflow tracking store {redact(uri)!r} failed while {doing}: {type(error).__name__}: "
        f"{first_line(error)[:200]}"
    )


@lru_cache(maxsize=1)
def provenance() -> dict[str, str]:
    """Tags that say where a result came from: git sha, dirty flag, versions."""
    tags = {"python": platform.python_version(), "host.platform": platform.platform()}
    for pkg in PACKAGES:
        try:
            tags[f"version.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    root = os.path.dirname(os.path.abspath(__file__))  # git finds the checkout above an editable install
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
    # strings only: a tracking server's REST API rejects other types (a local SQL store would take them)
    run = client.create_run(experiment_id, run_name=name, tags={k: str(v) for k, v in all_tags.items()})
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


def _children_with_trials(client: MlflowClient, experiment_id: str, parent_run_id: str, status: str, trials: dict):
    """(run, Optuna trial) for each child run of ``parent_run_id`` in ``status`` whose tag ``optuna_trial`` names a
    trial in ``trials`` (number -> FrozenTrial)."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = '{status}'"
    )
    for run in runs:
        number = run.data.tags.get("optuna_trial")
        trial = trials.get(int(number)) if number is not None and number.isdigit() else None
        if trial is not None:
            yield run, trial


def close_orphan_runs(client: MlflowClient, experiment_id: str, parent_run_id: str, trials: dict) -> list[str]:
    """Mark FAILED the RUNNING child runs of ``parent_run_id`` whose Optuna trial (tag ``optuna_trial``) is
    finished: their worker died (or lost the store) before it could close them. ``trials``: number -> FrozenTrial.

    A live worker always closes its MLflow run before it tells Optuna the trial's state, so the run is
    re-read after the trial state: a run still RUNNING then is an orphan, never a trial in progress."""
    closed = []
    for run, trial in _children_with_trials(client, experiment_id, parent_run_id, "RUNNING", trials):
        if not trial.state.is_finished():
            continue
        if client.get_run(run.info.run_id).info.status != "RUNNING":
            continue
        reason = trial.user_attrs.get("fail_reason") or (
            f"the Optuna trial is {trial.state.name} but its worker never closed this run (killed, or the tracking "
            f"store was unreachable)")
        end_run(client, run.info.run_id, "FAILED", reason)
        closed.append(run.info.run_id)
    return closed


def reconcile_runs(client: MlflowClient, experiment_id: str, parent_run_id: str, trials: dict) -> list[str]:
    """Mark FAILED the FINISHED child runs of ``parent_run_id`` whose Optuna trial is FAIL. The study is the commit
    point of a trial and MLflow follows it (rank_sweep.interrupts); a signal between the two writes, before that
    module, left such pairs, and then the two select sources read different trials. ``trials``: number ->
    FrozenTrial."""
    fixed = []
    for run, trial in _children_with_trials(client, experiment_id, parent_run_id, "FINISHED", trials):
        if trial.state.name != "FAIL" or trial.user_attrs.get("mlflow_run_id") not in (None, run.info.run_id):
            continue
        end_run(client, run.info.run_id, "FAILED", f"the Optuna trial {trial.number} is FAIL "
                f"({trial.user_attrs.get('fail_reason') or 'interrupted while it was recorded'}): the study's state wins")
        fixed.append(run.info.run_id)
    return fixed


def end_run(client: MlflowClient, run_id: str, status: str, reason: str | None = None) -> None:
    """status: FINISHED, FAILED or KILLED (pruned); the reason goes in a tag."""
    if reason:
        client.set_tag(run_id, "failure_reason" if status == "FAILED" else "status_reason", _redact_text(reason)[:4000])
    client.set_terminated(run_id, status=status)
