"""The select command's sources (``select.source``) and its adapter line, on hand-built MLflow stores
(no training): tests/unit/test_records_mlflow.log_study writes a study the way ``rank-sweep`` logs it
with ``save_adapter=false``. tests/integration/test_select_sources.py checks the same on a real study
(the two sources agree, and a kept adapter is copied)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from rank_sweep.cli import CONF_DIR
from rank_sweep.commands.select import choose, read_study
from rank_sweep.config import SOURCES, build_config
from rank_sweep.errors import ConfigError, RankSweepError
from tests.unit.results.test_readers_mlflow import log_study, trial

TRIALS = [
    trial("Wq", 1, 0, 0.80),
    trial("Wq", 2, 0, 0.857),
    trial("Wq", 4, 0, 0.86),
    trial("Wq,Wv", 2, 0, None, "FAILED", curve=(0.6,)),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """An MLflow store with study ``quickstart`` (4 trial runs) and study ``empty`` (a parent run, no trials);
    no Optuna storage."""
    folder = tmp_path_factory.mktemp("select_store")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("rank_sweep", artifact_location=str(folder / "artifacts"))
    log_study(client, exp, "quickstart", TRIALS)
    log_study(client, exp, "empty", [])
    return {"uri": uri, "folder": folder}


def make_cfg(store, tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        tree = compose("config", overrides=[f"tracking.uri={store['uri']}", f"output_dir={tmp_path}/outputs",
                                            f"search.storage=sqlite:///{tmp_path}/optuna.db", *overrides])
    return build_config(tree)


def test_the_select_config_sets_the_default_source():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        tree = compose("select")
    assert tree.select.source == "study" and tree.select.source in SOURCES


@pytest.mark.parametrize("bad", ["optuna", "", "MLflow"])
def test_a_bad_source_is_a_one_line_config_error_before_anything_is_read(store, tmp_path, bad):
    cfg = make_cfg(store, tmp_path)
    with pytest.raises(ConfigError) as err:
        choose(cfg, {"source": bad, "study_name": "quickstart"}, {})
    assert str(err.value) == f"select.source={bad!r} is not valid: choose one of study, mlflow, auto"
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "outputs").exists()


def test_mlflow_source_chooses_and_says_how_to_get_an_adapter_the_study_did_not_keep(store, tmp_path, capsys):
    cfg = make_cfg(store, tmp_path)
    out = tmp_path / "outputs/select/quickstart"
    (out / "adapter").mkdir(parents=True)  # a previous choice's adapter must not stay next to this preset
    (out / "adapter/adapter_config.json").write_text("{}")
    choice = choose(cfg, {"source": "mlflow", "study_name": "quickstart", "tolerance": 0.005}, {})
    printed = capsys.readouterr().out
    assert printed.startswith(f"study quickstart: 4 trials read from MLflow {store['uri']} (parent run ")
    assert "chosen: Wq r=2 " in printed  # 0.857, within 0.005 of r=4's 0.86 and cheaper
    assert (choice.selection.chosen.label, choice.trial.number) == ("Wq r=2", 1)
    assert [s.label for s in choice.selection.pareto] == ["Wq r=1", "Wq r=2", "Wq r=4"]
    preset = (out / "experiment/selected_quickstart.yaml").read_text()
    assert "trial 1 (Wq r=2)" in preset and "seed: 0" in preset
    assert all((out / f"{p}.png").stat().st_size > 0 for p in ("rank_curves", "pareto", "learning_curves"))
    assert choice.adapter is None and not (out / "adapter").exists()
    line = printed.strip().splitlines()[-1]
    assert line == ("adapter: trial 1 kept no adapter (the study ran with save_adapter=false); to get it: "
                    f"rank-sweep-trial --config-dir {out} experiment=selected_quickstart save_adapter=true")
    assert line in choice.report.splitlines()


def test_study_source_without_storage_points_at_mlflow_and_creates_no_storage(store, tmp_path):
    cfg = make_cfg(store, tmp_path)
    with pytest.raises(RankSweepError) as err:
        choose(cfg, {"study_name": "quickstart"}, {})  # the default source: the Optuna storage
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("no study named 'quickstart': no study storage at ")
    assert msg.endswith("(to read it from the MLflow store instead: select.source=mlflow)")
    assert not (tmp_path / "optuna.db").exists()


def test_auto_falls_back_to_mlflow_when_the_storage_lacks_the_study(store, tmp_path):
    cfg = make_cfg(store, tmp_path)
    study = read_study(cfg, "auto", "quickstart")
    assert study.where.startswith("MLflow ") and len(study.records) == 4 and study.direction == "maximize"
    assert not (tmp_path / "optuna.db").exists()


def test_auto_names_both_stores_when_neither_has_the_study(store, tmp_path):
    cfg = make_cfg(store, tmp_path)
    with pytest.raises(RankSweepError) as err:
        read_study(cfg, "auto", "nope")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("no study named 'nope': no study storage at ")
    assert "; nor in MLflow: no study named 'nope' in experiment 'rank_sweep'" in msg
    assert msg.endswith("studies there are quickstart, empty")


def test_mlflow_source_unknown_and_empty_studies_are_one_line_errors(store, tmp_path):
    cfg = make_cfg(store, tmp_path)
    with pytest.raises(RankSweepError, match=r"^no study named 'nope' in experiment 'rank_sweep' of sqlite:///.*"
                                             r"studies there are quickstart, empty$"):
        choose(cfg, {"source": "mlflow", "study_name": "nope"}, {})
    with pytest.raises(RankSweepError, match=r"^the study 'empty' has no trials \(MLflow sqlite:///.*\)$"):
        choose(cfg, {"source": "mlflow", "study_name": "empty"}, {})
    missing = make_cfg(store, tmp_path, f"tracking.uri=sqlite:///{tmp_path}/none/mlflow.db")
    with pytest.raises(RankSweepError, match="^no MLflow tracking store at .*none/mlflow.db"):
        choose(missing, {"source": "mlflow", "study_name": "quickstart"}, {})


def test_mlflow_source_default_name_is_the_sweeps(store, tmp_path):
    cfg = make_cfg(store, tmp_path, "search.study_name=quickstart")  # the name rank-sweep gave the study
    assert read_study(cfg, "mlflow").name == "quickstart"
