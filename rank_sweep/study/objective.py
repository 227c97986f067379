"""The objective: one point of the plan trained as a trial, a child MLflow run of the study.

:class:`Objective` suggests the point (the ladder's claim, or TPE's draw), runs
:func:`rank_sweep.train.trial.run_trial` and stores the trial's numbers on the Optuna
trial; :class:`PointlessCheck` prunes a speculative trial once its ladder has stopped below it.
"""

from __future__ import annotations

import json
import os
import signal
import socket

import optuna
from lightning.pytorch.callbacks import Callback
from optuna.distributions import CategoricalDistribution, FloatDistribution

from rank_sweep import interrupts
from rank_sweep.config import TRIAL_SECTIONS, RunConfig, trial_config
from rank_sweep.config.point import Point, decode, from_claim
from rank_sweep.errors import TrackingError
from rank_sweep.study import allocation
from rank_sweep.study.plan import LadderSpec, pointless
from rank_sweep.study.sampler import POINT_ATTR, trial_records
from rank_sweep.study.workers import claim_for_this_worker
from rank_sweep.train import nested
from rank_sweep.train.loading import resolve_precision
from rank_sweep.train.memory import MEMORY_ATTRS
from rank_sweep.train.trial import resolved_config, run_trial


class PointlessCheck(Callback):
    """Lightning callback for a speculative trial: after each validation, prune it when the rung under it
    has ended its ladder (:func:`~rank_sweep.study.plan.pointless`), so an idle worker's guess costs at most an
    epoch more."""

    def __init__(self, trial: optuna.Trial, spec: LadderSpec, point: Point):
        self.trial, self.spec, self.point = trial, spec, point

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        others = [r for r in trial_records(self.trial.study) if r.number != self.trial.number]
        why = pointless(others, self.spec, self.point)
        if why:
            self.trial.set_user_attr("pruned_reason", why)
            raise optuna.TrialPruned(why)


# a probe's learning rate (search.lr_probe): fixed wide bounds, so that a study resumed with other probes still fits
PROBE_LR = FloatDistribution(1e-12, 1e3, log=True)


def distributions(cfg: RunConfig, spec: LadderSpec) -> dict[str, CategoricalDistribution]:
    """The stored rows (Point.row), ranks and seeds the study's trials may take (Optuna's categorical choices)."""
    sets = spec.target_sets + [s for s in spec.extend_sets if spec.extend and s not in spec.target_sets]
    ranks = list(spec.ranks)
    extra = sorted(allocation.candidates(spec))  # the allocation step's (targets, r), known before training
    sets += [t for t in dict.fromkeys(t for t, _ in extra) if t not in sets]
    ranks += sorted({r for _, r in extra} - set(ranks))
    if spec.include_full:
        sets, ranks = sets + [Point.full(0).row], [0, *ranks]
    for method, size in spec.references:
        row = Point.reference(method, size, 0).row
        sets, ranks = sets + ([] if row in sets else [row]), ranks if size in ranks else [*ranks, size]
    if spec.head_reference:
        sets, ranks = [Point.head(0).row, *sets], ranks if 0 in ranks else [0, *ranks]
    return {"targets": CategoricalDistribution(sets), "r": CategoricalDistribution(ranks),
            "seed": CategoricalDistribution(spec.seeds + spec.noise_seeds)}


class Objective:
    """Runs one point as a trial (a child MLflow run) and stores its numbers on the Optuna trial."""

    def __init__(self, cfg, spec, cache, client, experiment_id, parent_run_id):
        self.cfg, self.spec, self.cache = cfg, spec, cache
        self.client, self.experiment_id, self.parent_run_id = client, experiment_id, parent_run_id
        self.dists = distributions(cfg, spec)
        self.fatal: TrackingError | None = None  # the tracking store failed: the study must stop, not go on

    def __call__(self, trial: optuna.Trial) -> float:
        claim = trial.study._storage.get_trial_system_attrs(trial._trial_id).get(POINT_ATTR) or {}
        if self.cfg.search.strategy == "tpe":
            claim_for_this_worker(trial.study, trial._trial_id)  # (the ladder sampler has claimed it already)
            point, overrides = self._suggest_tpe(trial)
        else:  # the ladder's claim: suggested as params (their stored form), so that the trial's record carries it
            point = from_claim(claim) if claim else None
            row = trial.suggest_categorical("targets", self.dists["targets"].choices)
            r = trial.suggest_categorical("r", self.dists["r"].choices)
            seed = trial.suggest_categorical("seed", self.dists["seed"].choices)
            if point is not None and point.lr is not None:  # a probe's lr, or a reference row's own
                trial.suggest_float("lr", PROBE_LR.low, PROBE_LR.high, log=True)
            if point is not None and point.kind == "screen":
                trial.suggest_categorical("screen", [1.0])
            point = decode(row, r, seed, (() if point is None else point.values))
            overrides = {}
        run = trial_config(self.cfg, point, **overrides)
        callbacks = [_pruning_callback(trial, f"val/{self.cfg.task.metric}")]
        screen = None
        if point.kind == "screen":  # search=nested: one training for every rank of the ladder
            s = self.cfg.search
            screen = nested.NestedRanks([x for x in self.spec.ranks if x <= point.r], run.lora, s.nested_scale,
                                        s.nested_frozen, point.seed, resolve_precision(run))
            callbacks = [screen]  # no pruning of a screen on its r_max score
        if claim.get("speculative"):
            trial.set_user_attr("speculative", True)
            callbacks.append(PointlessCheck(trial, self.spec, point))
        if point.lr is not None and self.cfg.search.strategy != "tpe":
            overrides = {"trainer.lr": point.lr}  # the MLflow tag tuned names the trial's own lr
        tuned = {k.partition(".")[2]: v for k, v in overrides.items()}
        try:
            result = run_trial(run, cache=self.cache, client=self.client, experiment_id=self.experiment_id,
                               parent_run_id=self.parent_run_id, callbacks=callbacks,
                               run_name=f"trial {trial.number}: {point}",
                               learn_margin=self.cfg.search.learn_margin,
                               tags={"optuna_trial": trial.number, "optuna_study": trial.study.study_name,
                                     "worker": f"{socket.gethostname()}:{os.getpid()}"
                                     + ("" if self.cfg.worker is None else f" ({self.cfg.worker})"),
                                     **({"tuned": json.dumps(tuned, sort_keys=True)} if tuned else {})},
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
        except BaseException as e:  # a signal (Lightning's sys.exit(1) after Ctrl-C): Optuna fails the trial on a
            if not interrupts.was_interrupted(e):  # KeyboardInterrupt (and re-raises it), but not on SystemExit
                raise
            trial.set_user_attr("fail_reason", f"interrupted by {signal.Signals(interrupts.received() or 2).name}")
            optuna.logging.set_verbosity(optuna.logging.ERROR)  # not Optuna's traceback: the command says it in one line
            raise KeyboardInterrupt from None
        if screen is not None:
            trial.set_user_attr("nested", nested.record_ranks(
                screen, run.task, self.cfg.search.confidence, self.cfg.search.learn_margin, run.output_dir,
                self.client, result.run_id))
        c = result.counts
        for key, value in {**c.as_metrics(), "train_seconds": result.train_seconds, "mlflow_run_id": result.run_id,
                           "not_learning": result.not_learning, "baseline_score": result.baseline_score,
                           "alpha": run.lora.lora_alpha, "lr": run.trainer.lr, "train_steps": result.train_steps,
                           "score_metric": result.metric, "score_epoch": result.score_epoch,
                           "score_ci_low": result.score_ci[0] if result.score_ci else None,
                           "score_ci_high": result.score_ci[1] if result.score_ci else None,
                           **{k: result.memory.get(k) for k in MEMORY_ATTRS},
                           # the trial's own resolved config: the preset rank-sweep-select writes retrains this
                           "config": {k: v for k, v in resolved_config(run).items() if k in TRIAL_SECTIONS}}.items():
            trial.set_user_attr(key, value)
        return result.score

    def _suggest_tpe(self, trial: optuna.Trial) -> tuple[Point, dict]:
        """TPE's point: target set, rank, the learning rate, and alpha_k where it acts (the ``scaled`` policy;
        under ``fixed``/``rslora`` alpha is the constant the config names). The seed is the config's, stored on
        the trial so that records and the preset carry it."""
        row = trial.suggest_categorical("targets", self.dists["targets"].choices)
        r = trial.suggest_categorical("r", self.dists["r"].choices)
        low, high = self.cfg.search.tpe_lr_range
        lr = trial.suggest_float("lr", float(low), float(high), log=True)
        overrides = {"trainer.lr": lr}
        if self.cfg.lora.alpha_policy == "scaled":
            overrides["lora.alpha_k"] = trial.suggest_float("alpha_k", 0.5, 8.0, log=True)
        trial.set_user_attr("seed", self.cfg.seed)
        values = {"lr": lr, **({"alpha_k": overrides["lora.alpha_k"]} if "lora.alpha_k" in overrides else {})}
        return decode(row, r, self.cfg.seed, values.items()), overrides


def _pruning_callback(trial, monitor):
    from optuna_integration import PyTorchLightningPruningCallback

    return PyTorchLightningPruningCallback(trial, monitor=monitor)
