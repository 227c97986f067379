"""The study as its storage says, read once per trial event: the one stop rule, and the plan it rests on.

:class:`StudyState` reads the storage (one ``get_trials``) and plans once after each trial event; the console
line, the stop rule and the next claim share that plan, and a claim or a failed stale trial makes it stale::

    state = StudyState(study, spec)
    step = state.next_step(cfg)      # Step("run"), Step("wait", running=[3]) or Step("stop", reason=...)

:func:`stop_reason` is the whole stop rule: failures in a row, the trial and time budgets, TPE's count, and
"every ladder stopped". A worker with nothing to run while trials run elsewhere waits (``wait``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from rank_sweep.study.plan import LadderSpec, Plan, plan
from rank_sweep.study.sampler import trial_records


@dataclass
class Step:
    action: str  # run | wait | stop
    reason: str | None = None
    running: list[int] = field(default_factory=list)


class StudyState:
    """The trials, their records and the plan of them, as of the last read; ``reads`` and ``plans`` count the
    storage reads and plans made (the cost per trial the counter test checks)."""

    def __init__(self, study: optuna.Study, spec: LadderSpec):
        self.study, self.spec = study, spec
        self.trials: list = []
        self.records: list = []
        self._plan: Plan | None = None
        self.fresh = False
        self.reads = self.plans = 0

    def refresh(self) -> StudyState:
        self.trials = self.study.get_trials(deepcopy=False)
        self.records = trial_records(self.study, self.trials)
        self._plan, self.fresh = None, True
        self.reads += 1
        return self

    def current(self) -> StudyState:
        return self if self.fresh else self.refresh()

    def invalidate(self) -> None:
        self.fresh = False

    @property
    def plan(self) -> Plan | None:
        """The plan of the records read (None under TPE: its sampler draws, nothing is planned)."""
        if self.spec.tuned:
            return None
        if self._plan is None:
            self._plan = plan(self.records, self.spec)
            self.plans += 1
        return self._plan

    def next_step(self, cfg) -> Step:
        """Run a trial, wait for running ones, or stop (with the reason): the one place a study decides it."""
        reason = stop_reason(self.study, self.spec, cfg, self)
        if reason:
            return Step("stop", reason)
        if self.spec.tuned or self.plan.pending or self.plan.speculative:
            return Step("run")
        running = sorted(r.number for r in self.records if r.state == "RUNNING")
        if not running:  # nothing to run and nothing running: every ladder has stopped
            return Step("stop", "done: every ladder stopped")
        return Step("wait", running=running)


def stop_reason(study: optuna.Study, spec: LadderSpec, cfg, state: StudyState | None = None) -> str | None:
    """Why the study stops now, or None: the last ``max_consecutive_failures`` trials failed, a budget is spent,
    TPE drew its trials, or the plan is done. ``state``: the study's state (else it is read now)."""
    state = (state or StudyState(study, spec)).current()
    all_trials = state.trials
    finished = [t for t in all_trials if t.params and t.state.is_finished()]
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
    if spec.tuned:
        n = cfg.search.n_trials or 20
        return f"tpe: {n} trials run" if len(finished) >= n else None
    if state.plan.done:
        return "done: every ladder stopped"
    return None
