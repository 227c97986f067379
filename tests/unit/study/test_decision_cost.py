"""What deciding costs per trial: how often a study plans and reads its whole storage, counted on a real run loop
(``study.run.optimize`` with the ladder sampler, the stopper and the console line) driven by a fake objective."""

from __future__ import annotations

import optuna
import pytest

from rank_sweep.study import sampler as study_sampler
from rank_sweep.study import state as study_state
from rank_sweep.study.report import trial_line
from rank_sweep.study.run import StopWhenDone, build_spec, optimize
from rank_sweep.study.sampler import LadderSampler
from rank_sweep.study.state import StudyState
from tests.unit.study.test_run import SCORES, WALK, FakeObjective, make_cfg

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def counted(monkeypatch):
    """Counts every plan() and every full read of the trials into records, wherever they are called from."""
    calls = {"plan": 0, "read": 0}

    def counting(name, real):
        def wrapper(*a, **k):
            calls[name] += 1
            return real(*a, **k)
        return wrapper

    for module in (study_state, study_sampler):
        monkeypatch.setattr(module, "plan", counting("plan", module.plan))
    monkeypatch.setattr(study_sampler, "records_from_study", counting("read", study_sampler.records_from_study))
    return calls


def test_one_plan_and_two_storage_reads_per_trial(tmp_path, counted, capsys):
    cfg = make_cfg()
    spec = build_spec(cfg)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/o.db", direction="maximize", sampler=LadderSampler(spec))
    state = StudyState(study, spec)
    study.sampler.state = state
    stopper = StopWhenDone(spec, cfg, trial_line(spec, "accuracy", state), state)
    objective = FakeObjective(cfg, spec, scores=SCORES)
    objective.fatal = None  # (Objective's: a failed tracking store)
    stop = optimize(study, objective, stopper, spec, cfg, tidy=lambda: [], state=state)
    n = len(study.trials)
    assert stop == "done: every ladder stopped" and objective.visited == WALK and n == len(WALK)
    # per trial: the stopper's read and plan (shared by the console line, the stop rule and the next claim), and
    # the claim's read after its write (the rival check); plus the first decision before any trial
    assert counted["plan"] == n + 1, counted
    assert counted["read"] == 2 * n + 1, counted
    assert (state.plans, state.reads) == (n + 1, n + 1)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("trial ")]
    assert len(lines) == n and "[first: first learning rung" in lines[0]  # the line's verdict came from that plan


def test_a_stale_plan_cannot_double_book_a_point(tmp_path):
    """The claim reuses the state's plan only while it is fresh; after a claim the next decision reads again."""
    cfg = make_cfg()
    spec = build_spec(cfg)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/o.db", direction="maximize", sampler=LadderSampler(spec))
    state = StudyState(study, spec).refresh()
    first = study_sampler.claim_point(study, study._storage.create_new_trial(study._study_id), 0, spec, state=state)
    assert not state.fresh
    second = study_sampler.claim_point(study, study._storage.create_new_trial(study._study_id), 1, spec, state=state)
    assert (first["targets"], first["r"]) == ("Wq", 1) and (second["targets"], second["r"]) != ("Wq", 1)
