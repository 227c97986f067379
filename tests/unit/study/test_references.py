"""search.reference_methods (issue #17): other adaptation methods as reference rows of the study, one trial per
seed after the ladders, each trained with its method's settings; the config refuses bad entries in one line."""

from __future__ import annotations

import optuna
import pytest

from rank_sweep.config import FULL, Point, RunConfig, SearchConfig, trial_config
from rank_sweep.errors import ConfigError
from rank_sweep.results.records import TrialRecord
from rank_sweep.study import objective as study_objective
from rank_sweep.study.plan import plan
from rank_sweep.study.run import StopWhenDone, build_spec
from rank_sweep.study.sampler import LadderSampler
from rank_sweep.study.storage import study_fingerprint
from rank_sweep.train.lora import ParamCounts
from rank_sweep.train.trial import TrialResult

optuna.logging.set_verbosity(optuna.logging.WARNING)


def cfg_with(**search) -> RunConfig:
    cfg = RunConfig()
    cfg.search = SearchConfig(**{"ladder": [1, 2], "target_sets": [["Wq"]], "extend": False, "lr_bracket": [], "head_reference": False, **search})
    return cfg


def test_each_reference_method_is_one_trial_per_seed_after_the_ladders():
    cfg = cfg_with(seeds=2, reference_methods=["ia3", {"name": "prefix_tuning", "num_virtual_tokens": 8}, "full"])
    spec = build_spec(cfg)
    assert spec.references == [("ia3", 0), ("prefix_tuning", 8)] and spec.include_full
    ladder = [TrialRecord(i, "Wq", r, s, "COMPLETE", 0.7, 10, 12, 1.0) for i, (r, s) in
              enumerate([(1, 0), (1, 1), (2, 0), (2, 1)])]
    p = plan(ladder, spec)
    assert p.pending == [Point.full(0), Point.full(1), Point.reference("ia3", 0, 0), Point.reference("ia3", 0, 1),
                         Point.reference("prefix_tuning", 8, 0), Point.reference("prefix_tuning", 8, 1)]
    assert not p.done


def test_a_reference_point_trains_its_method_with_its_settings():
    cfg = cfg_with(reference_methods=[{"name": "adalora", "init_r": 6, "target_r": 3}, "ia3"])
    run = trial_config(cfg, Point.reference("adalora", 3, 1))
    assert run.method.name == "adalora" and run.method.settings["init_r"] == 6 and run.seed == 1
    assert trial_config(cfg, Point.reference("ia3", 0, 0)).method.name == "ia3"
    assert trial_config(cfg, Point("Wq", 2, 0)).method.name == "lora"  # the ladder's points stay LoRA


@pytest.mark.parametrize("entries, message", [
    (["ia4"], "search.reference_methods: 'ia4' is not a reference method: valid are full, ia3, prefix_tuning, "
              "prompt_tuning, adalora (LoRA is what the ladders train)"),
    (["lora"], "search.reference_methods: 'lora' is not a reference method"),
    ([{"name": "ia3", "num_virtual_tokens": 4}], "method.settings.num_virtual_tokens is not a setting of ia3"),
    (["ia3", "ia3"], "search.reference_methods: ia3 of size 0 is listed twice"),
    ([{"name": "full", "r": 1}], "search.reference_methods: full takes no settings but lr, got ['r']"),
    ([{"name": "full", "lr": 0}], "search.reference_methods: full lr=0 is not valid: give a positive learning rate"),
    ([{"name": "ia3", "lr": "fast"}], "search.reference_methods: ia3 lr='fast' is not valid"),
    (["full", {"name": "full", "lr": 5e-5}], "search.reference_methods: full is listed twice"),
    ("ia3", "search.reference_methods='ia3' is not valid: give a list"),
])
def test_bad_reference_methods_are_refused_in_one_line(entries, message):
    with pytest.raises(ConfigError) as e:
        SearchConfig(reference_methods=entries)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_the_fingerprint_names_the_references_only_when_there_are_some():
    plain = cfg_with()
    assert "search.reference_methods" not in study_fingerprint(plain, build_spec(plain))
    ref = cfg_with(reference_methods=["ia3"])
    assert study_fingerprint(ref, build_spec(ref))["search.reference_methods"][0][0] == "ia3"


def run_faked(cfg, monkeypatch, tmp_path, seen) -> tuple[list, optuna.Study]:
    """A whole study through the real sampler and objective, each trial faked: ``seen(run)`` is what it trained."""
    cfg.output_dir = str(tmp_path)
    trained = []

    def fake_run_trial(run, **kwargs):
        trained.append(seen(run))
        return TrialResult(0.7, "accuracy", {}, ParamCounts(10, 2, 12, 100), 1.0, 0.1, 0.5, False, False)

    monkeypatch.setattr(study_objective, "run_trial", fake_run_trial)
    spec = build_spec(cfg)
    study = optuna.create_study(direction="maximize", sampler=LadderSampler(spec))
    study.optimize(study_objective.Objective(cfg, spec, None, None, None, None), n_trials=10,
                   callbacks=[StopWhenDone(spec, cfg, printer=lambda *a: None)])
    return trained, study


def test_a_whole_study_runs_its_reference_rows_through_the_real_sampler_and_objective(monkeypatch, tmp_path):
    cfg = cfg_with(reference_methods=["ia3", {"name": "prompt_tuning", "num_virtual_tokens": 4}])
    trained, study = run_faked(cfg, monkeypatch, tmp_path,
                               lambda run: (run.method.name, run.lora.r if run.method.name == "lora" else None))
    assert trained == [("lora", 1), ("lora", 2), ("ia3", None), ("prompt_tuning", None)]
    assert [(t.params["targets"], t.params["r"]) for t in study.trials] == [("Wq", 1), ("Wq", 2), ("ia3", 0),
                                                                          ("prompt_tuning", 4)]


def test_a_reference_row_with_its_own_lr_trains_at_that_lr_and_keeps_it_apart():
    """Full fine-tuning does not learn at a LoRA learning rate (measured: experiments/reference_methods): a row
    may carry its own lr, which its points, the trial, the record and the fingerprint carry."""
    cfg = cfg_with(reference_methods=[{"name": "full", "lr": 5e-5}, {"name": "ia3", "lr": 3e-3}, "prompt_tuning"])
    spec = build_spec(cfg)
    assert spec.include_full and spec.reference_lr == {(FULL, 0): 5e-5, ("ia3", 0): 3e-3}
    ladder = [TrialRecord(i, "Wq", r, 0, "COMPLETE", 0.7, 10, 12, 1.0) for i, r in enumerate([1, 2])]
    pending = plan(ladder, spec).pending
    assert pending == [Point.full(0, 5e-5), Point.reference("ia3", 0, 0, 3e-3), Point.reference("prompt_tuning", 20, 0)]
    done = ladder + [TrialRecord(2, FULL, 0, 0, "COMPLETE", 0.8, 0, 99, 1.0, tuned=(("lr", 5e-5),))]
    assert plan(done, spec).pending[0] == Point.reference("ia3", 0, 0, 3e-3)  # the full row with its lr is done
    at_base = ladder + [TrialRecord(2, FULL, 0, 0, "COMPLETE", 0.5, 0, 99, 1.0)]  # full at trainer.lr: another row
    assert plan(at_base, spec).pending[0] == Point.full(0, 5e-5)
    assert study_fingerprint(cfg, spec)["search.reference_lr"] == [["full", 0, 5e-5], ["ia3", 0, 3e-3]]
    assert "search.reference_lr" not in study_fingerprint(cfg_with(reference_methods=["full"]),
                                                          build_spec(cfg_with(reference_methods=["full"])))


def test_the_objective_trains_a_reference_row_at_its_own_lr(monkeypatch, tmp_path):
    cfg = cfg_with(reference_methods=[{"name": "full", "lr": 5e-5}, "ia3"])
    trained, study = run_faked(cfg, monkeypatch, tmp_path,
                               lambda run: (run.lora.full_finetune, run.method.name, run.trainer.lr))
    base = cfg.trainer.lr
    assert trained == [(False, "lora", base), (False, "lora", base), (True, "lora", 5e-5), (False, "ia3", base)]
    assert study.trials[2].params == {"targets": FULL, "r": 0, "seed": 0, "lr": 5e-5}
