"""Which process runs a trial, and failing the trials of workers that are gone.

A trial records its worker (host, boot id, pid namespace, pid and the process's start
time). A RUNNING trial whose worker was on this machine and no longer exists (killed,
``kill -9``) is failed at once; one on another machine is judged by the RDB storage's
heartbeat (no heartbeat for ``search.heartbeat_seconds``), through Optuna's public
:func:`optuna.storages.fail_stale_trials`. The ladder then retries the point.

Optuna names still used here, none of them public API: ``study._storage`` and
``FrozenTrial._trial_id`` (Optuna's own samplers use both), to write the worker of a
trial and to fail a trial of a dead local process with its reason. Optuna's public API
has no call that writes an attribute on, or fails, a trial another process runs.
"""

from __future__ import annotations

import os
import socket
import threading
import warnings
from functools import cache

import optuna
from optuna.exceptions import UpdateFinishedTrialError
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


class HeartbeatStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage that writes why a trial failed when :func:`optuna.storages.fail_stale_trials`
    fails it for a stale heartbeat: Optuna fails the trial before any callback sees it, and a finished trial
    takes no attributes, so the reason (user attr ``fail_reason``) is written in the same step, just before
    the state. Only while :func:`fail_stale_trials` runs in this thread; every other write is Optuna's own."""

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        reason = getattr(_stale, "reason", None)
        if not reason or state != TrialState.FAIL:
            return super().set_trial_state_values(trial_id, state, values)
        self.set_trial_user_attr(trial_id, "fail_reason", reason)
        done = super().set_trial_state_values(trial_id, state, values)
        _stale.failed.append(trial_id)
        return done


_stale = threading.local()  # the reason HeartbeatStorage writes and the trials it failed, while fail_stale_trials runs


def has_heartbeat(storage) -> bool:
    """Whether ``storage`` fails the trials of lost workers by itself: an RDB storage with a heartbeat (a journal
    file has none: there only a dead worker of this machine is noticed)."""
    return isinstance(storage, optuna.storages.RDBStorage) and storage.heartbeat_interval is not None


def fail_stale_trials(study: optuna.Study, heartbeat_seconds: int) -> list[FrozenTrial]:
    """Fail the RUNNING trials whose worker is gone, with the reason in user attr ``fail_reason``; return them.

    Gone: no heartbeat for ``heartbeat_seconds`` (RDB storage, judged by Optuna), or a process of this machine
    that no longer exists (any storage; a journal file has no heartbeat). The ladder then retries their points."""
    _stale.failed, _stale.reason = [], (f"worker lost: no heartbeat for more than {heartbeat_seconds}s (killed, or "
                                        f"its machine went away); the point is retried")
    try:
        with warnings.catch_warnings():  # experimental since Optuna 2.9 and unchanged since: said once, by the storage
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a no-op on a storage without a heartbeat
    finally:
        _stale.reason = None
    failed = _stale.failed
    storage = study._storage  # see the module doc: no public call fails another process's trial with a reason
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.system_attrs.get(WORKER_ATTR)
        if not worker_is_gone(w):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "fail_reason",
                                        f"worker lost: process {w['pid']} on {w['host']} is gone (killed); the point "
                                        f"is retried")
            storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:  # another worker failed it first
            continue
        failed.append(t._trial_id)
    return [storage.get_trial(trial_id) for trial_id in failed]
