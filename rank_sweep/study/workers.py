"""Which process runs a trial, and failing the trials of workers that are gone.

A trial records its worker (host, boot id, pid namespace, pid and the process's start
time). A RUNNING trial whose worker was on this machine and no longer exists (killed,
``kill -9``) is failed at once; one on another machine is judged by the RDB storage's
heartbeat (no heartbeat for ``search.heartbeat_seconds``). The ladder then retries
the point.
"""

from __future__ import annotations

import os
import socket
from functools import cache

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

WORKER_ATTR = "rank_sweep:worker"  # which process runs a trial: a killed local worker's trial is failed at once


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), or None if there is no such process:
    a pid reused by another process has another start time."""
    stat = _read(f"/proc/{pid}/stat")
    try:
        return stat.rsplit(")", 1)[1].split()[19] if stat else None
    except IndexError:
        return None


@cache
def _worker(pid: int) -> dict:
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = None
    return {"host": socket.gethostname(), "boot": _read("/proc/sys/kernel/random/boot_id"), "pidns": pidns,
            "pid": pid, "start": _process_start(pid)}


def this_worker() -> dict:
    return _worker(os.getpid())


def worker_is_gone(worker) -> bool:
    """True only when ``worker`` ran on this machine (same host, boot and pid namespace) and its process is gone.
    A worker on another machine is never judged here: the storage heartbeat does that."""
    me = this_worker()
    if not isinstance(worker, dict) or worker.get("start") is None or me["boot"] is None:
        return False
    if any(worker.get(k) != me[k] for k in ("host", "boot", "pidns")):
        return False
    return _process_start(int(worker["pid"])) != worker["start"]


def claim_for_this_worker(study: optuna.Study, trial_id: int) -> None:
    study._storage.set_trial_system_attr(trial_id, WORKER_ATTR, this_worker())


def fail_stale_trials(study: optuna.Study, heartbeat_seconds: int) -> list[FrozenTrial]:
    """Fail the RUNNING trials whose worker is gone, with the reason in user attr ``fail_reason``; return them.

    Gone: no heartbeat for ``heartbeat_seconds`` (RDB storage), or a process of this machine that no longer
    exists (any storage; a journal file has no heartbeat). The ladder then retries their points."""
    storage = study._storage
    reasons: dict[int, str] = {}
    if is_heartbeat_enabled(storage) and hasattr(storage, "_get_stale_trial_ids"):
        for trial_id in storage._get_stale_trial_ids(study._study_id):
            reasons[trial_id] = (f"worker lost: no heartbeat for more than {heartbeat_seconds}s (killed, or its "
                                 f"machine went away); the point is retried")
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.system_attrs.get(WORKER_ATTR)
        if t._trial_id not in reasons and worker_is_gone(w):
            reasons[t._trial_id] = f"worker lost: process {w['pid']} on {w['host']} is gone (killed); the point is retried"
    failed = []
    for trial_id, reason in reasons.items():
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:  # another worker failed it first
            continue
        failed.append(storage.get_trial(trial_id))
    return failed
