"""The study: Optuna parts that run the recipe, resume-safe.

    rank-sweep experiment=quickstart        # or: rank-sweep task=mrpc seeds...

:class:`LadderSampler` proposes the next point from the trials in storage
(like ``GridSampler``), :class:`StopWhenDone` calls ``study.stop()`` when the
plan is complete or a budget is spent, and the objective runs one trial as a
child MLflow run of the study's parent run. Running the same command again
loads the same study: finished points are skipped, failed ones retried.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import socket
import time
from dataclasses import asdict
from functools import cache

import optuna
from lightning.pytorch.callbacks import Callback
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.samplers import BaseSampler
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from rank_sweep import ladder, tracking
from rank_sweep.config import RunConfig, targets_key
from rank_sweep.errors import RankSweepError, TrackingError
from rank_sweep.records import records_from_study
from rank_sweep.trial import run_trial

POINT_ATTR = "rank_sweep:point"
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


def _records(study: optuna.Study) -> list:
    """Records with a point; a running trial counts as running the point it claimed, also before (or while) it
    suggests it as parameters, so a second worker does not pick the same point in that gap."""
    snapshot = study.get_trials(deepcopy=False)  # one read: other workers add trials meanwhile
    trials = {t.number: t for t in snapshot}
    out = []
    for rec in records_from_study(study, trials=snapshot):
        claimed = trials[rec.number].system_attrs.get(POINT_ATTR)
        if rec.state == "RUNNING" and claimed:  # claimed, and maybe part-way through suggesting it
            rec = dataclasses.replace(rec, targets=claimed["targets"], r=claimed["r"], seed=claimed["seed"])
        if rec.targets:
            out.append(rec)
    return out


def next_point(records: list, spec: ladder.LadderSpec) -> tuple[ladder.Point | None, bool]:
    """The point to run next and whether it is speculative: the plan's first pending point, else (a worker
    that would otherwise idle) the first rung above a running one."""
    p = ladder.plan(records, spec)
    if p.pending:
        return p.pending[0], False
    if p.speculative:
        return p.speculative[0], True
    return None, False


def claim_point(study: optuna.Study, trial_id: int, number: int, spec: ladder.LadderSpec, sleep=time.sleep,
                attempts: int = 20) -> dict | None:
    """Claim the next point for trial ``trial_id`` so that no other trial runs it: through the storage only.

    Write the claim, then read every other trial: if another live (not failed) trial holds the same point,
    withdraw and try again after a random pause. Of two workers that claim one point, the one that reads
    second sees the other's claim (each writes before it reads), so at most one keeps it; if both see
    each other both withdraw, and the random pauses let one win the next round."""
    storage = study._storage
    for attempt in range(attempts):
        others = [r for r in _records(study) if r.number != number]
        point, speculative = next_point(others, spec)
        if point is None:
            storage.set_trial_system_attr(trial_id, POINT_ATTR, None)
            return None
        claim = {**asdict(point), "speculative": speculative}
        storage.set_trial_system_attr(trial_id, POINT_ATTR, claim)
        rivals = [r.number for r in _records(study)  # read again, after the write
                  if r.number != number and r.state != "FAIL" and ladder.Point(r.targets, r.r, r.seed) == point]
        if not rivals:
            return claim
        storage.set_trial_system_attr(trial_id, POINT_ATTR, None)  # withdraw, then look again
        sleep(random.uniform(0.05, 0.25) * (1 + attempt))
    return None


class LadderSampler(BaseSampler):
    """Proposes the point that :func:`claim_point` claims for the trial, derived from storage only."""

    def __init__(self, spec: ladder.LadderSpec):
        self.spec = spec

    def before_trial(self, study, trial):
        if POINT_ATTR in trial.system_attrs or "fixed_params" in trial.system_attrs:
            return
        claim_for_this_worker(study, trial._trial_id)
        claim_point(study, trial._trial_id, trial.number, self.spec)

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        point = trial.system_attrs.get(POINT_ATTR)
        if point is None:
            raise optuna.TrialPruned("nothing left to run")
        return point[param_name]


class PointlessCheck(Callback):
    """Lightning callback for a speculative trial: after each validation, prune it when the rung under it
    has ended its ladder (:func:`ladder.pointless`), so an idle worker's guess costs at most an epoch more."""

    def __init__(self, trial: optuna.Trial, spec: ladder.LadderSpec, point: ladder.Point):
        self.trial, self.spec, self.point = trial, spec, point

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        others = [r for r in _records(self.trial.study) if r.number != self.trial.number]
        why = ladder.pointless(others, self.spec, self.point)
        if why:
            self.trial.set_user_attr("pruned_reason", why)
            raise optuna.TrialPruned(why)


class StopWhenDone:
    """Callback: stop the study when the plan is complete, a budget is spent, or trials keep failing."""

    def __init__(self, spec: ladder.LadderSpec, cfg: RunConfig, printer):
        self.spec, self.cfg, self.printer = spec, cfg, printer
        self.reason: str | None = None

    def __call__(self, study, trial):
        self.printer(study, trial)
        reason = stop_reason(study, self.spec, self.cfg)
        if reason:
            self.reason = reason
            study.stop()


def stop_reason(study: optuna.Study, spec: ladder.LadderSpec, cfg: RunConfig) -> str | None:
    all_trials = study.get_trials(deepcopy=False)
    trials = [t for t in all_trials if t.params]
    finished = [t for t in trials if t.state.is_finished()]
    budget = cfg.search.budget
    k = cfg.search.max_consecutive_failures
    # a trial that failed before it got its parameters counts too (else such failures would loop for ever);
    # a trial pruned for having no point to run does not
    last = sorted((t for t in all_trials if t.state.is_finished() and (t.params or t.state == TrialState.FAIL)),
                  key=lambda t: t.number)[-k:]
    if len(last) == k and all(t.state == TrialState.FAIL for t in last):
        why = last[-1].user_attrs.get("fail_reason", "see the MLflow runs")
        return f"stopped: the last {k} trials failed (search.max_consecutive_failures={k}); last error: {why}"
    if budget.max_trials is not None and len(finished) >= budget.max_trials:
        return f"budget: search.budget.max_trials={budget.max_trials} trials run"
    spent = sum((t.duration.total_seconds() for t in finished if t.duration), 0.0)
    if budget.max_seconds is not None and spent >= budget.max_seconds:
        return f"budget: search.budget.max_seconds={budget.max_seconds:g} spent ({spent:.0f}s of trials)"
    if cfg.search.strategy == "tpe":
        n = cfg.search.n_trials or 20
        return f"tpe: {n} trials run" if len(finished) >= n else None
    if ladder.plan(_records(study), spec).done:
        return "done: every ladder stopped"
    return None


def trial_config(cfg: RunConfig, targets: str, r: int, seed: int, **overrides) -> RunConfig:
    run = copy.deepcopy(cfg)
    run.seed = seed
    if targets == ladder.FULL:
        run.lora.full_finetune = True
    else:
        run.lora.targets, run.lora.r = targets.split(","), r
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        setattr(getattr(run, section), name, value)
    return run


def distributions(cfg: RunConfig, spec: ladder.LadderSpec) -> dict[str, CategoricalDistribution]:
    sets = spec.target_sets + [s for s in spec.extend_sets if s not in spec.target_sets]
    ranks = list(spec.ranks)
    if spec.include_full:
        sets, ranks = sets + [ladder.FULL], [0, *ranks]
    return {"targets": CategoricalDistribution(sets), "r": CategoricalDistribution(ranks),
            "seed": CategoricalDistribution(spec.seeds)}


class Objective:
    """Runs one point as a trial (a child MLflow run) and stores its numbers on the Optuna trial."""

    def __init__(self, cfg, spec, cache, client, experiment_id, parent_run_id):
        self.cfg, self.spec, self.cache = cfg, spec, cache
        self.client, self.experiment_id, self.parent_run_id = client, experiment_id, parent_run_id
        self.dists = distributions(cfg, spec)
        self.fatal: TrackingError | None = None  # the tracking store failed: the study must stop, not go on

    def __call__(self, trial: optuna.Trial) -> float:
        if self.cfg.search.strategy == "tpe":  # the ladder sampler has claimed the trial already
            claim_for_this_worker(trial.study, trial._trial_id)
        overrides = {}
        if self.cfg.search.strategy == "tpe":
            targets = trial.suggest_categorical("targets", self.dists["targets"].choices)
            r = trial.suggest_categorical("r", self.dists["r"].choices)
            seed = self.cfg.seed
            overrides = {"trainer.lr": trial.suggest_float("lr", 1e-4, 3e-3, log=True),
                         "lora.alpha_k": trial.suggest_float("alpha_k", 0.5, 8.0, log=True)}
        else:
            targets = trial.suggest_categorical("targets", self.dists["targets"].choices)
            r = trial.suggest_categorical("r", self.dists["r"].choices)
            seed = trial.suggest_categorical("seed", self.dists["seed"].choices)
        run = trial_config(self.cfg, targets, r, seed, **overrides)
        callbacks = [_pruning_callback(trial, f"val/{self.cfg.task.metric}")]
        claim = trial.study._storage.get_trial_system_attrs(trial._trial_id).get(POINT_ATTR) or {}
        if claim.get("speculative"):
            trial.set_user_attr("speculative", True)
            callbacks.append(PointlessCheck(trial, self.spec, ladder.Point(targets, r, seed)))
        try:
            result = run_trial(run, cache=self.cache, client=self.client, experiment_id=self.experiment_id,
                               parent_run_id=self.parent_run_id, callbacks=callbacks,
                               run_name=f"trial {trial.number}: {targets} r={r} seed={seed}",
                               learn_margin=self.cfg.search.learn_margin,
                               tags={"optuna_trial": trial.number, "optuna_study": trial.study.study_name,
                                     "worker": f"{socket.gethostname()}:{os.getpid()}"
                                     + ("" if self.cfg.worker is None else f" ({self.cfg.worker})")},
                               on_run=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id))
        except optuna.TrialPruned:
            raise
        except TrackingError as e:
            self.fatal = e
            trial.set_user_attr("fail_reason", str(e)[:500])
            raise
        except Exception as e:
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:500])
            raise
        c = result.counts
        for key, value in {**c.as_metrics(), "train_seconds": result.train_seconds, "mlflow_run_id": result.run_id,
                           "not_learning": result.not_learning, "baseline_score": result.baseline_score,
                           "alpha": run.lora.lora_alpha, "lr": run.trainer.lr, "train_steps": result.train_steps,
                           "score_metric": result.metric}.items():
            trial.set_user_attr(key, value)
        return result.score


def _pruning_callback(trial, monitor):
    from optuna_integration import PyTorchLightningPruningCallback

    return PyTorchLightningPruningCallback(trial, monitor=monitor)


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    return {
        "none": optuna.pruners.NopPruner,
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
        "patient": lambda: optuna.pruners.PatientPruner(optuna.pruners.MedianPruner(n_startup_trials=3), patience=1),
    }[name]()


def default_storage(cfg: RunConfig) -> str:
    uri = cfg.tracking.resolved_uri()
    if uri.startswith("sqlite:///") and uri.endswith(".db"):
        folder = uri[len("sqlite:///"):].rsplit("/", 1)[0] if "/" in uri[len("sqlite:///"):] else ""
        return f"sqlite:///{folder + '/' if folder else ''}optuna.db"
    return "sqlite:///optuna.db"


def open_storage(url: str, heartbeat_seconds: int = 30):
    """RDB storage with a heartbeat (a killed worker's trial is failed after ``heartbeat_seconds`` and retried),
    or a journal file (no heartbeat: only a killed worker of this machine is detected)."""
    try:
        if url.endswith((".journal", ".log")) or url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
        for attempt in range(6):
            try:
                return optuna.storages.RDBStorage(url, heartbeat_interval=max(1, heartbeat_seconds // 3),
                                                  grace_period=heartbeat_seconds)
            except Exception as e:  # workers starting together on a new database race to create its tables
                if attempt == 5 or not any(k in str(e) for k in ("already exists", "duplicate key", "UniqueViolation")):
                    raise
                time.sleep(0.2 + random.random())
    except Exception as e:
        raise TrackingError(
            f"cannot open study storage {tracking.redact(url)!r}: {tracking.first_line(e)[:160]} "
            f"(valid: sqlite:///path.db, postgresql://user@host/db, mysql://..., or a path ending in .journal)"
        ) from None


def study_name(cfg: RunConfig) -> str:
    return cfg.search.study_name or f"{cfg.model.name}-{cfg.task.name}-{cfg.search.strategy}"


def search_fingerprint(cfg: RunConfig, spec: ladder.LadderSpec) -> dict:
    """What a resumed study must share with the stored one."""
    return {"targets": spec.target_sets, "extend": spec.extend_sets, "ranks": spec.ranks, "seeds": spec.seeds,
            "task": cfg.task.name, "model": cfg.model.name_or_path, "strategy": cfg.search.strategy,
            "alpha_policy": cfg.lora.alpha_policy, "lr": cfg.trainer.lr, "epochs": cfg.trainer.epochs,
            "max_train_samples": cfg.task.max_train_samples, "max_seq_length": cfg.task.max_seq_length}


def build_spec(cfg: RunConfig, cost=None) -> ladder.LadderSpec:
    s = cfg.search
    return ladder.LadderSpec(
        target_sets=[targets_key(t) for t in s.target_sets], ranks=s.ranks,
        seeds=[cfg.seed + i for i in range(s.seeds)], patience=s.patience, min_delta=s.min_delta,
        noise_k=s.noise_k, direction=cfg.task.direction, extend=s.extend,
        extend_sets=[targets_key(t) for t in s.extend_target_sets], extend_max_rank=s.extend_max_rank,
        include_full=s.include_full_finetune, max_retries=s.max_retries, cost=cost,
        max_lora_params=s.budget.max_lora_params, max_trainable_params=s.budget.max_trainable_params,
        grid=s.strategy == "grid", speculate=s.speculate,
    )


def load_or_create_study(cfg: RunConfig, spec: ladder.LadderSpec, storage_url: str, storage=None) -> optuna.Study:
    storage = storage or open_storage(storage_url, cfg.search.heartbeat_seconds)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed) if cfg.search.strategy == "tpe" else LadderSampler(spec)
    study = optuna.create_study(study_name=study_name(cfg), storage=storage, direction=cfg.task.direction,
                                sampler=sampler, pruner=make_pruner(cfg.search.pruner), load_if_exists=True)
    fingerprint = json.loads(json.dumps(search_fingerprint(cfg, spec)))
    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        study.set_user_attr("fingerprint", fingerprint)
    elif stored != fingerprint:
        diff = sorted(k for k in fingerprint if stored.get(k) != fingerprint[k])
        raise RankSweepError(
            f"study {study.study_name!r} in {tracking.redact(storage_url)} was run with other settings "
            f"({', '.join(f'{k}={stored.get(k)!r}' for k in diff)}): set search.study_name to start a new study"
        )
    return study

