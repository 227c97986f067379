"""The study's storage: open it, load or create the study, refuse to pool incompatible trials.

    storage = open_storage("sqlite:///optuna.db")          # or postgresql://..., or a .journal file
    study = load_or_create_study(cfg, spec, url, storage)

The study keeps a fingerprint of the settings its trials depend on; a rerun with other
settings is refused with a message naming them (set ``search.study_name`` for a new study).
"""

from __future__ import annotations

import json
import random
import time

import optuna

from rank_sweep.config import RunConfig
from rank_sweep.errors import RankSweepError, TrackingError, first_line, redact
from rank_sweep.study import plan as ladder
from rank_sweep.study.sampler import LadderSampler


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    return {
        "none": optuna.pruners.NopPruner,
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
        "patient": lambda: optuna.pruners.PatientPruner(optuna.pruners.MedianPruner(n_startup_trials=3), patience=1),
    }[name]()


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
            f"cannot open study storage {redact(url)!r}: {first_line(e)[:160]} "
            f"(valid: sqlite:///path.db, postgresql://user@host/db, mysql://..., or a path ending in .journal)"
        ) from None


def search_fingerprint(cfg: RunConfig, spec: ladder.LadderSpec) -> dict:
    """What a resumed study must share with the stored one."""
    return {"targets": spec.target_sets, "extend": spec.extend_sets, "ranks": spec.ranks, "seeds": spec.seeds,
            "task": cfg.task.name, "model": cfg.model.name_or_path, "strategy": cfg.search.strategy,
            "alpha_policy": cfg.lora.alpha_policy, "lr": cfg.trainer.lr, "epochs": cfg.trainer.epochs,
            "max_train_samples": cfg.task.max_train_samples, "max_seq_length": cfg.task.max_seq_length}


def load_or_create_study(cfg: RunConfig, spec: ladder.LadderSpec, storage_url: str, storage=None) -> optuna.Study:
    storage = storage or open_storage(storage_url, cfg.search.heartbeat_seconds)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed) if cfg.search.strategy == "tpe" else LadderSampler(spec)
    study = optuna.create_study(study_name=cfg.study_name(), storage=storage, direction=cfg.task.direction,
                                sampler=sampler, pruner=make_pruner(cfg.search.pruner), load_if_exists=True)
    fingerprint = json.loads(json.dumps(search_fingerprint(cfg, spec)))
    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        study.set_user_attr("fingerprint", fingerprint)
    elif stored != fingerprint:
        diff = sorted(k for k in fingerprint if stored.get(k) != fingerprint[k])
        raise RankSweepError(
            f"study {study.study_name!r} in {redact(storage_url)} was run with other settings "
            f"({', '.join(f'{k}={stored.get(k)!r}' for k in diff)}): set search.study_name to start a new study"
        )
    return study
