"""The ladder's sampler: each trial claims the next point of the plan, through the storage only.

:class:`LadderSampler` proposes the point that :func:`claim_point` claims for a trial,
derived from the trials in storage (like ``GridSampler``): nothing is remembered in the
object, so a resumed or shared study continues where the storage says it is.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import asdict

import optuna
from optuna.samplers import BaseSampler

from rank_sweep.results.readers import records_from_study
from rank_sweep.study import plan as ladder
from rank_sweep.study.history import tuned_of
from rank_sweep.study.workers import claim_for_this_worker

POINT_ATTR = "rank_sweep:point"


def trial_records(study: optuna.Study) -> list:
    """Records with a point; a running trial counts as running the point it claimed, also before (or while) it
    suggests it as parameters, so a second worker does not pick the same point in that gap."""
    snapshot = study.get_trials(deepcopy=False)  # one read: other workers add trials meanwhile
    trials = {t.number: t for t in snapshot}
    out = []
    for rec in records_from_study(study, trials=snapshot):
        claimed = trials[rec.number].system_attrs.get(POINT_ATTR)
        if rec.state == "RUNNING" and claimed:  # claimed, and maybe part-way through suggesting it
            point = ladder.Point(claimed["targets"], claimed["r"], claimed["seed"], claimed.get("lr"),
                                 bool(claimed.get("screen")))
            rec = dataclasses.replace(rec, targets=point.targets, r=point.r, seed=point.seed,
                                      tuned=tuned_of(point) or rec.tuned)
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
        others = [r for r in trial_records(study) if r.number != number]
        point, speculative = next_point(others, spec)
        if point is None:
            storage.set_trial_system_attr(trial_id, POINT_ATTR, None)
            return None
        claim = {**{k: v for k, v in asdict(point).items() if v is not None and v is not False},
                 "speculative": speculative}
        storage.set_trial_system_attr(trial_id, POINT_ATTR, claim)
        rivals = [r.number for r in trial_records(study)  # read again, after the write
                  if r.number != number and r.state != "FAIL" and ladder.point_of(r) == point]
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
