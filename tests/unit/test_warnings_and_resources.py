"""Issue #28's checks beside the catalogue's config cases (tests/unit/test_bad_inputs.py): warnings (one line,
``rank-sweep: warning:``, the run goes on) for inputs that may be meant but are likely mistakes, resources that
are not there (a GPU), a storage driver that is not installed, a resume refused with the key the user set, and
``search.budget.*`` given to rank-sweep-select. Each id is a row of docs/bad_inputs.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from rank_sweep.errors import ConfigError, RankSweepError, TrackingError
from tests.conftest import toy_overrides

SWEEP = ["search.ladder=[1,2]", "search.target_sets=[[Wq]]", "search.extend=false"]


def _distinct_data(folder: Path, labels=(0, 1), n_train: int = 64, n_dev: int = 40) -> Path:
    """Toy rows whose texts are all different (the shared toy set repeats 40 texts), so nothing overlaps."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, start in (("train.csv", n_train, 0), ("dev.csv", n_dev, 10_000)):
        rows = ["text,label", *(f"review {start + i} was {'great' if labels[i % len(labels)] else 'awful'},"
                                f"{labels[i % len(labels)]}" for i in range(n))]
        (folder / name).write_text("\n".join(rows) + "\n")
    return folder


def _cfg(model_dir: str, data_dir, tmp_path, extra: list[str]):
    from hydra import compose, initialize_config_dir

    from rank_sweep.cli import CONF_DIR
    from rank_sweep.config import build_config

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return build_config(compose("config", overrides=toy_overrides(model_dir, str(data_dir), tmp_path) + SWEEP
                                    + extra))


# id, data (train labels, "same" for a validation file equal to the training file), overrides, expected warning
WARNINGS = [
    ("warn-dev-too-small", (0, 1), ["task.max_eval_samples=1"],
     "rank-sweep: warning: the dev set has 1 example(s) (task.max_eval_samples=1): too few for a score's interval"),
    ("warn-class-missing-from-training", (1,), [],
     "rank-sweep: warning: the training data has no example of label(s) 0 of task.labels ['0', '1']: no trial can "
     "learn it"),
    ("warn-validation-is-training", "same", ["task.validation_file=train.csv"],
     "rank-sweep: warning: 64 of the 64 dev examples (100%) are also training examples (same text)"),
]


@pytest.mark.parametrize("labels, overrides, expected", [w[1:] for w in WARNINGS], ids=[w[0] for w in WARNINGS])
def test_a_likely_mistake_gets_one_warning_line_before_the_first_trial(tiny_model_dir, tmp_path, capsys, labels,
                                                                       overrides, expected):
    from rank_sweep.study.run import validate
    from rank_sweep.train.loading import WorkerCache

    data = _distinct_data(tmp_path / "data", labels if labels != "same" else (0, 1))
    validate(_cfg(tiny_model_dir, data, tmp_path, overrides), WorkerCache())
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("rank-sweep: warning:")]
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_clean_data_gets_no_warning(tiny_model_dir, tmp_path, capsys):
    from rank_sweep.study.run import validate
    from rank_sweep.train.loading import WorkerCache

    validate(_cfg(tiny_model_dir, _distinct_data(tmp_path / "data"), tmp_path, []), WorkerCache())
    assert "warning" not in capsys.readouterr().err


def test_gpu_asked_for_without_one_is_refused_before_anything_loads(tiny_model_dir, toy_data_dir, tmp_path,
                                                                     monkeypatch):
    """``trainer=gpu`` on a machine without one (case ``gpu-not-there``): one line, no trial, no MLflow run."""
    import torch

    from rank_sweep.study.run import run_study

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = _cfg(tiny_model_dir, toy_data_dir, tmp_path, ["trainer=gpu", "trainer.precision=32-true",
                                                        f"search.storage=sqlite:///{tmp_path}/optuna.db"])
    with pytest.raises(ConfigError) as err:
        run_study(cfg)
    assert str(err.value).startswith("trainer.accelerator='gpu' is not valid on this machine: torch sees no GPU"), err
    assert "use trainer=cpu" in str(err.value)
    import optuna

    assert all(s.n_trials == 0 for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/optuna.db"))


def test_a_storage_without_its_driver_names_the_package(monkeypatch):
    """Case ``storage-driver-missing``: mysql:// needs MySQLdb, which is not installed here."""
    from rank_sweep.study.storage import open_storage

    with pytest.raises(TrackingError) as err:
        open_storage("mysql://alice:s3cret@127.0.0.1:1/db")
    msg = str(err.value)
    assert msg == ("cannot open study storage 'mysql://***@127.0.0.1:1/db': its database driver is not installed "
                   "(MySQLdb): pip install pymysql and write the URL as mysql+pymysql://user@host/db"), msg


def test_a_refused_resume_names_the_key_the_user_sets():
    """Case ``resume-other-ladder``: the fingerprint's ``search.ranks`` is shown as search.ladder."""
    from rank_sweep.study.storage import _refuse

    class Study:
        study_name = "s"

    with pytest.raises(RankSweepError) as err:
        _refuse(Study(), "sqlite:///optuna.db", {"search.ranks": [1, 2, 4]}, {"search.ranks": [1, 2]})
    assert "(search.ladder=[1, 2, 4], now [1, 2]):" in str(err.value) and "ranks" not in str(err.value), err.value


def test_select_refuses_the_study_budget_naming_its_own():
    """Case ``select-study-budget``: ``rank-sweep-select search.budget.max_lora_params=1`` used to be ignored."""
    from rank_sweep.commands.overrides import check_overrides

    with pytest.raises(ConfigError) as err:
        check_overrides(["search.budget.max_lora_params=1"], "select")
    assert str(err.value) == ("search.budget.max_lora_params limits which trials a study trains, not the choice: "
                              "rank-sweep-select reads budget.max_lora_params")
    assert check_overrides(["search.budget.max_lora_params=1"], "config")[0] == ["search.budget.max_lora_params=1"]
    assert check_overrides(["budget.max_lora_params=1"], "select")[0] == ["budget.max_lora_params=1"]


CASES = [(w[0],) for w in WARNINGS] + [("gpu-not-there",), ("storage-driver-missing",), ("resume-other-ladder",),
                                       ("select-study-budget",)]
