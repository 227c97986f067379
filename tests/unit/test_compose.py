"""conf/: every option of every config group composes with Hydra and passes
rank_sweep.config.build_config; overrides land in the RunConfig. The options
are found by globbing conf/, so a new preset is covered without editing this."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rank_sweep.config import RunConfig, build_config
from rank_sweep.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("model", "task", "lora", "trainer", "search", "tracking", "experiment")
# method=full and method=head set the lora section too (full fine-tuning, the head alone): `# @package _global_`
GLOBAL_OPTIONS = {("method", "full"), ("method", "head")}
FILE_TASK_OVERRIDES = ["task.train_file=train.csv", "task.validation_file=dev.csv"]

OPTIONS = sorted((p.parent.name, p.stem) for p in CONF.glob("*/*.yaml"))


def compose_tree(name: str = "config", overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides or []))


def compose_plain(name: str = "config", overrides: list[str] | None = None) -> tuple[dict, dict]:
    """The composed tree as plain containers, and the same with files for a file-based task."""
    tree = OmegaConf.to_container(compose_tree(name, overrides), resolve=True)
    buildable = tree
    if tree["task"]["source"] in ("csv", "jsonl") and not tree["task"]["train_file"]:
        buildable = OmegaConf.to_container(
            compose_tree(name, [*(overrides or []), *FILE_TASK_OVERRIDES]), resolve=True
        )
    return tree, buildable


def assert_subset(expected, actual, where: str) -> None:
    """Every value the option file sets appears in the composed tree."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} missing"
            assert_subset(value, actual[key], f"{where}.{key}")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def file_values(group: str, option: str) -> dict:
    data = yaml.safe_load((CONF / group / f"{option}.yaml").read_text()) or {}
    data.pop("defaults", None)
    return data


def test_conf_has_every_group_and_options_in_each():
    groups = {g for g, _ in OPTIONS}
    assert set(GROUPS) <= groups, f"missing config groups: {set(GROUPS) - groups}"
    assert (CONF / "config.yaml").is_file() and (CONF / "select.yaml").is_file()


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_builds(group, option):
    tree, buildable = compose_plain("config", [f"{group}={option}"])
    cfg = build_config(buildable)
    assert isinstance(cfg, RunConfig)
    values = file_values(group, option)
    if group == "experiment" or (group, option) in GLOBAL_OPTIONS:  # these are `# @package _global_`
        assert "# @package _global_" in (CONF / group / f"{option}.yaml").read_text()
        assert_subset(values, tree, "<root>")
    else:
        assert_subset(values, tree[group], group)
    if group in ("model", "task"):
        assert getattr(cfg, group).name == values.get("name", option)


def test_default_config_matches_the_dataclass_defaults():
    # the dataclasses read their defaults from conf/: composing with Hydra and building in Python agree
    assert build_config(compose_tree("config")) == RunConfig()


def test_a_default_has_one_home_the_yaml(tmp_path, monkeypatch):
    """Edit a default in a copy of conf/ and every dataclass follows: no second copy to drift."""
    import shutil

    from rank_sweep.config import LoraConfig, SearchConfig, SelectConfig, base

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    lora = conf / "lora" / "default.yaml"
    lora.write_text(lora.read_text().replace("r: 8", "r: 5"))
    (conf / "config.yaml").write_text((conf / "config.yaml").read_text().replace("search: ladder", "search: grid"))
    sel = conf / "select.yaml"
    sel.write_text(sel.read_text().replace("tolerance: 0.005", "tolerance: 0.02"))
    monkeypatch.setattr(base, "CONF_DIR", str(conf))
    for cached in (base.conf_yaml, base.option_defaults):
        cached.cache_clear()
    monkeypatch.setattr(base, "conf_yaml", base.conf_yaml)  # cleared again below, after the monkeypatch is undone
    try:
        assert LoraConfig().r == 5
        assert LoraConfig().lora_alpha == 10.0  # alpha_k (2) * r: derived from the YAML default
        assert SearchConfig().strategy == "grid"  # the option config.yaml picks for the group
        assert SelectConfig().tolerance == 0.02
    finally:
        monkeypatch.undo()
        base.conf_yaml.cache_clear()
        base.option_defaults.cache_clear()
    assert LoraConfig().r == 8


@pytest.mark.parametrize("source", ["csv", "jsonl"])
def test_file_tasks_need_their_files(source):
    with pytest.raises(ConfigError) as err:
        build_config(compose_tree("config", [f"task={source}"]))
    assert "task.train_file" in str(err.value) and "\n" not in str(err.value)
    cfg = build_config(compose_tree("config", [f"task={source}", *FILE_TASK_OVERRIDES]))
    assert cfg.task.source == source and cfg.task.train_file == "train.csv"


def test_select_config_composes_and_builds_without_its_own_keys():
    tree = OmegaConf.to_container(compose_tree("select"), resolve=True)
    assert {"select", "budget"} <= set(tree)
    assert "tolerance" in tree["select"] and "max_lora_params" in tree["budget"]
    with pytest.raises(ConfigError):  # not RunConfig keys: the select CLI must strip them
        build_config(tree)
    sweep_part = {k: v for k, v in tree.items() if k not in ("select", "budget")}
    assert build_config(sweep_part) == build_config(compose_tree("config"))


def test_select_config_takes_sweep_overrides():
    tree = OmegaConf.to_container(
        compose_tree("select", ["task=mrpc", "search=grid", "select.tolerance=0.01", "budget.max_rank=8"]),
        resolve=True,
    )
    assert tree["select"]["tolerance"] == 0.01 and tree["budget"]["max_rank"] == 8
    cfg = build_config({k: v for k, v in tree.items() if k not in ("select", "budget")})
    assert cfg.task.name == "mrpc" and cfg.search.strategy == "grid"


@pytest.mark.parametrize("targets", [["Wq", "Wv"], ["Wq", "Wk", "Wv", "Wo"], ["query"]])
def test_lora_overrides_land(targets):
    cfg = build_config(compose_tree("config", ["lora.r=4", f"lora.targets=[{','.join(targets)}]"]))
    assert cfg.lora.r == 4
    assert cfg.lora.targets == targets


def test_other_overrides_land():
    cfg = build_config(
        compose_tree(
            "config",
            ["task=mrpc", "model=roberta_base", "lora.alpha_policy=rslora", "search.ladder=[1,4,16]",
             "search.target_sets=[[Wq],[Wq,Wv],[Wq,Wk,Wv,Wo]]", "trainer.epochs=1", "seed=3",
             "search.budget.max_trials=5"],
        )
    )
    assert cfg.task.name == "mrpc" and cfg.task.metric == "f1"
    assert cfg.model.name_or_path == "FacebookAI/roberta-base"
    assert cfg.lora.alpha_policy == "rslora"
    assert cfg.search.ranks == [1, 4, 16]
    assert cfg.search.target_sets == [["Wq"], ["Wq", "Wv"], ["Wq", "Wk", "Wv", "Wo"]]
    assert cfg.trainer.epochs == 1 and cfg.seed == 3
    assert cfg.search.budget.max_trials == 5


def test_experiment_preset_overrides_the_defaults_and_the_command_line_wins():
    cfg = build_config(compose_tree("config", ["experiment=quickstart", "search.max_rank=8"]))
    assert cfg.search.study_name == "quickstart"
    assert cfg.search.max_rank == 8
    assert cfg.task.max_train_samples == 2000


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["lora.r=0"], "lora.r=0"),
        (["lora.r=four"], "lora.r='four'"),
        (["lora.targets=[]"], "lora.targets=[]"),
        (["search.ladder=[1,4,2]"], "search.ladder=[1, 4, 2]"),
        (["search.target_sets=[Wq,Wv]"], "search.target_sets="),
        (["+lora.rank=4"], "lora.rank"),
        (["task=stsb", "task.metric=accuracy"], "'accuracy'"),
    ],
)
def test_bad_overrides_give_one_line_config_errors(overrides, named):
    with pytest.raises(ConfigError) as err:
        build_config(compose_tree("config", overrides))
    msg = str(err.value)
    assert named in msg and "\n" not in msg
