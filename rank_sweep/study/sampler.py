"""The ladder's sampler: each trial claims the next point of the plan, through the storage only.

:class:`LadderSampler` proposes the point that :func:`claim_point` claims for a trial,
derived from the trials in storage (like ``GridSampler``): nothing is remembered in the
object, so a resumed or shared study continues where the storage says it is.
"""

from __future__ import annotations

import dataclasses
import random
import time

import optuna
from optuna.samplers import BaseSampler

from rank_sweep.config.point import Point, encode, from_claim, to_claim
from rank_sweep.results.readers import records_from_study
from rank_sweep.study.plan import LadderSpec, Plan, plan
from rank_sweep.study.workers import claim_for_this_worker

POINT_ATTR = "rank_sweep:point"


def trial_records(study: optuna.Study, snapshot: list | None = None) -> list:
    """Records with a point; a running trial counts as running the point it claimed, also before (or while) it
    suggests it as parameters, so a second worker does not pick the same point in that gap. ``snapshot``: the
    trials already read (else one read of the storage: other workers add trials meanwhile)."""
    snapshot = study.get_trials(deepcopy=False) if snapshot is None else snapshot
    trials = {t.number: t for t in snapshot}
    out = []
    for rec in records_from_study(study, trials=snapshot):
        claimed = trials[rec.number].system_attrs.get(POINT_ATTR)
        if rec.state == "RUNNING" and claimed:  # claimed, and maybe part-way through suggesting it
            stored = encode(from_claim(claimed))
            rec = dataclasses.replace(rec, targets=stored["targets"], r=stored["r"], seed=stored["seed"],
                                      tuned=stored["values"] or rec.tuned)
        if rec.targets:
            out.append(rec)
    return out


def next_point(records: list, spec: LadderSpec, planned: Plan | None = None) -> tuple[Point | None, bool]:
    """The point to run next and whether it is speculative: the plan's first pending point, else (a worker
    that would otherwise idle) the first rung above a running one. ``planned``: the plan of ``records``."""
    p = plan(records, spec) if planned is None else planned
    if p.pending:
        return p.pending[0], False
    if p.speculative:
        return p.speculative[0], True
    return None, False


def claim_point(study: optuna.Study, trial_id: int, number: int, spec: LadderSpec, sleep=time.sleep,
                attempts: int = 20, state=None) -> dict | None:
    """Claim the next point for trial ``trial_id`` so that no other trial runs it: through the storage only.

    Write the claim, then read every other trial: if another live (not failed) trial holds the same point,
    withdraw and try again after a random pause. Of two workers that claim one point, the one that reads
    second sees the other's claim (each writes before it reads), so at most one keeps it; if both see
    each other both withdraw, and the random pauses let one win the next round.

    ``state``: the study's :class:`~rank_sweep.study.state.StudyState`; while it is fresh (nothing has happened
    since the last trial event) the first attempt takes its plan rather than reading and planning again. A stale
    plan cannot double-book a point: the read after the write finds any rival."""
    storage = study._storage
    for attempt in range(attempts):
        if attempt == 0 and state is not None and state.fresh:
            point, speculative = next_point(state.records, spec, state.plan)
        else:
            point, speculative = next_point([r for r in trial_records(study) if r.number != number], spec)
        if state is not None:
            state.invalidate()  # a claim is written: the next decision reads the storage again
        if point is None:
            storage.set_trial_system_attr(trial_id, POINT_ATTR, None)
            return None
        claim = to_claim(point, speculative)
        storage.set_trial_system_attr(trial_id, POINT_ATTR, claim)
        rivals = [r.number for r in trial_records(study)  # read again, after the write
                  if r.number != number and r.state != "FAIL" and r.point == point]
        if not rivals:
            return claim
        storage.set_trial_system_attr(trial_id, POINT_ATTR, None)  # withdraw, then look again
        sleep(random.uniform(0.05, 0.25) * (1 + attempt))
    return None


class LadderSampler(BaseSampler):
    """Proposes the point that :func:`claim_point` claims for the trial, derived from storage only."""

    def __init__(self, spec: LadderSpec, state=None):
        self.spec = spec
        self.state = state  # the study's StudyState, when a run shares its plan with the sampler

    def before_trial(self, study, trial):
        if POINT_ATTR in trial.system_attrs or "fixed_params" in trial.system_attrs:
            return
        claim_for_this_worker(study, trial._trial_id)
        claim_point(study, trial._trial_id, trial.number, self.spec, state=self.state)

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        point = trial.system_attrs.get(POINT_ATTR)
        if point is None:
            raise optuna.TrialPruned("nothing left to run")
        return point[param_name]
