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
from rank_sweep.errors import RankSweepError, TrackingError, first_line, is_creation_race, redact
from rank_sweep.study import allocation
from rank_sweep.study.sampler import LadderSampler
from rank_sweep.study.spec import LadderSpec
from rank_sweep.study.workers import HeartbeatStorage


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    return {
        "none": optuna.pruners.NopPruner,
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
        "patient": lambda: optuna.pruners.PatientPruner(optuna.pruners.MedianPruner(n_startup_trials=3), patience=1),
    }[name]()


# what to install for a storage URL whose driver is missing (SQLAlchemy's default driver of each scheme)
DRIVERS = {"mysql": "pip install pymysql and write the URL as mysql+pymysql://user@host/db",
           "postgresql": "pip install 'rank_sweep[postgres]' (psycopg 3; SQLAlchemy 2.1 maps postgresql:// to it)"}


def journal_file(url: str) -> str | None:
    """The file of a journal storage, or None for a database URL: the one place a storage is told by its name
    (a path ending in ``.journal`` or ``.log``, or ``journal:<path>``); once open, the storage's class says it."""
    if url.endswith((".journal", ".log")) or url.startswith("journal:"):
        return url.removeprefix("journal:")
    return None


def open_storage(url: str, heartbeat_seconds: int = 30):
    """RDB storage with a heartbeat (a killed worker's trial is failed after ``heartbeat_seconds`` and retried),
    or a journal file (no heartbeat: only a killed worker of this machine is detected)."""
    try:
        if journal_file(url) is not None:
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(journal_file(url)))
        for attempt in range(6):
            try:
                return HeartbeatStorage(url, heartbeat_interval=max(1, heartbeat_seconds // 3),
                                        grace_period=heartbeat_seconds)
            except Exception as e:  # workers starting together on a new database race to create its tables
                if attempt == 5 or not is_creation_race(e):
                    raise
                time.sleep(0.2 + random.random())
    except ImportError as e:  # SQLAlchemy found the dialect but not its driver package
        cause = e.__cause__ or e.__context__
        missing = getattr(cause, "name", None) or first_line(cause or e)
        scheme = url.split("://", 1)[0]
        raise TrackingError(f"cannot open study storage {redact(url)!r}: its database driver is not installed "
                            f"({missing}): {DRIVERS.get(scheme.split('+')[0], f'install the driver of {scheme}')}") from None
    except Exception as e:
        raise TrackingError(
            f"cannot open study storage {redact(url)!r}: {first_line(e)[:160]} "
            f"(valid: sqlite:///path.db, postgresql://user@host/db, mysql://..., or a path ending in .journal)"
        ) from None


# Keys of the resolved trial config that cannot change what a trial scores: where results are written and
# logged, how progress shows, the worker's label and thread count (float rounding only), and the point itself
# (every trial sets its own targets, rank and seed). The search section enters only through PLAN_KEYS: its
# stop rules (patience, min_delta, noise_k, budgets, ...) decide which points run, not what a point scores, so
# they may change on a resumed study.
NOT_RESULT_KEYS = ("tracking", "output_dir", "save_adapter", "worker", "trainer.progress_bar", "trainer.num_threads",
                   "search", "lora.r", "lora.targets", "lora.full_finetune", "lora.head_only", "seed")
FINGERPRINT_ATTR = "config_fingerprint"
WRITER_ATTR = "written_by"  # the version and git sha of rank_sweep that created the study (for a refusal's line)


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def study_fingerprint(cfg: RunConfig, spec: LadderSpec) -> dict:
    """Every value a trial's result depends on: the resolved trial config (precision resolved, data folder
    absolute) minus :data:`NOT_RESULT_KEYS`, the plan's shape and learning margin, and the data files'
    sha256. Two studies with the same fingerprint train the same trial the same way."""
    from rank_sweep.train.data import data_digest  # the training path only: select never computes this
    from rank_sweep.train.trial import resolved_config

    flat = _flatten(resolved_config(cfg))
    out = {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in NOT_RESULT_KEYS)}
    if not cfg.task.holdout:  # no held-out split: the fingerprint of a study from before the split existed
        out = {k: v for k, v in out.items() if k.removeprefix("task.") not in cfg.task.HOLDOUT_KEYS}
    out.update({"search.strategy": cfg.search.strategy, "search.target_sets": spec.target_sets,
                "search.extend_target_sets": spec.extend_sets if spec.extend else [], "search.ranks": spec.ranks,
                "search.seeds": spec.seeds, "search.noise_seeds": spec.noise_seeds,
                "search.learn_margin": cfg.search.learn_margin, "search.confidence": cfg.search.confidence,
                "search.pruner": cfg.search.pruner, "search.include_full_finetune": spec.include_full,
                "search.head_reference": spec.head_reference})
    if spec.references:  # only when set: the fingerprints of studies from before stay as they were
        out["search.reference_methods"] = [[m.name, m.settings] for m in cfg.search.references()]
    if allocation.active(spec):  # the same: only with an allocation step (its sets and ranks are the study's)
        out["search.allocation_sets"] = spec.allocation_sets
        out["search.allocation_budgets"] = spec.allocation_budgets
    if spec.reference_lr:  # the same: only when a reference row has its own lr
        out["search.reference_lr"] = sorted([m, size, lr] for (m, size), lr in spec.reference_lr.items())
    out.update({f"data.{k}": v for k, v in data_digest(cfg.task).items()})
    return json.loads(json.dumps(out))


def _legacy_fingerprint(cfg: RunConfig, spec: LadderSpec) -> dict:
    """What studies made before the full fingerprint stored (attr ``fingerprint``)."""
    return {"targets": spec.target_sets, "extend": spec.extend_sets, "ranks": spec.ranks, "seeds": spec.seeds,
            "task": cfg.task.name, "model": cfg.model.name_or_path, "strategy": cfg.search.strategy,
            "alpha_policy": cfg.lora.alpha_policy, "lr": cfg.trainer.lr, "epochs": cfg.trainer.epochs,
            "max_train_samples": cfg.task.max_train_samples, "max_seq_length": cfg.task.max_seq_length}


# keys a stored fingerprint lacks because the version that wrote it had no such setting: the value that version
# behaved as, so its study resumes when the user asks for that behaviour (and only then)
BEFORE_THE_KEY = {"model.pooling": "cls_frozen", "search.allocation_sets": []}
# fingerprint keys that are not config keys, shown as the key a user sets (the ranks: search.ladder, or the doubling
# from search.start_rank to search.max_rank, which search.ladder can also give)
SHOWN_AS = {"search.ranks": "search.ladder"}


def _refuse(study, storage_url: str, stored: dict, now: dict) -> None:
    stored = {**{k: v for k, v in BEFORE_THE_KEY.items() if k in now}, **stored}
    diff = sorted(k for k in set(stored) | set(now) if stored.get(k, "(unset)") != now.get(k, "(unset)"))
    if diff:
        shown = "; ".join(f"{SHOWN_AS.get(k, k)}={stored.get(k, '(unset)')!r}, now {now.get(k, '(unset)')!r}"
                          for k in diff[:6])
        more = f"; and {len(diff) - 6} more" if len(diff) > 6 else ""
        writer = getattr(study, "user_attrs", {}).get(WRITER_ATTR)
        by = (f"rank_sweep {writer.get('version', '?')} at git {str(writer.get('git.sha', '?'))[:10]}" if writer
              else "a rank_sweep from before 2026-12-05 (it kept no version)")
        raise RankSweepError(
            f"study {study.study_name!r} in {redact(storage_url)} was written by {by} with other settings "
            f"({shown}{more}): set search.study_name to start a new study, or rerun with the stored values"
        )


def load_or_create_study(cfg: RunConfig, spec: LadderSpec, storage_url: str, storage=None,
                         fingerprint: dict | None = None) -> optuna.Study:
    """The study named ``cfg.study_name()``, created if new; a stored study whose fingerprint differs from this
    config's is refused in one line that names every changed key."""
    storage = storage or open_storage(storage_url, cfg.search.heartbeat_seconds)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed) if cfg.search.strategy == "tpe" else LadderSampler(spec)
    study = optuna.create_study(study_name=cfg.study_name(), storage=storage, direction=cfg.task.direction,
                                sampler=sampler, pruner=make_pruner(cfg.search.pruner), load_if_exists=True)
    fingerprint = fingerprint if fingerprint is not None else study_fingerprint(cfg, spec)
    stored = study.user_attrs.get(FINGERPRINT_ATTR)
    if stored is not None:
        _refuse(study, storage_url, stored, fingerprint)
        return study
    legacy = study.user_attrs.get("fingerprint")  # a study from before: check what it kept, then keep it all
    if legacy is not None:
        _refuse(study, storage_url, legacy, json.loads(json.dumps(_legacy_fingerprint(cfg, spec))))
    study.set_user_attr(FINGERPRINT_ATTR, fingerprint)
    from rank_sweep import __version__, tracking

    study.set_user_attr(WRITER_ATTR, {"version": __version__,
                                      **{k: v for k, v in tracking.provenance().items() if k.startswith("git.")}})
    return study
