"""The command line is checked before Hydra runs (rank_sweep.commands.overrides.check_overrides): valid Hydra syntax
passes unchanged, other tools' names (overrides.ALIASES) are read as ours with a note, and a mistyped key is one
``rank-sweep: error:`` line (exit 2) naming the closest valid key, instead of Hydra's 7-line "not in struct"."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from rank_sweep import cli
from rank_sweep.commands.overrides import ALIASES, check_overrides, flat_keys, known_keys
from rank_sweep.config import CONF_DIR
from rank_sweep.errors import ConfigError

BIN = os.path.dirname(sys.executable)

# overrides Hydra composes as they are (checked below with Hydra's compose API)
VALID_OVERRIDES = [
    ["task=mrpc"], ["experiment=quickstart"], ["trainer=gpu", "trainer.devices=2"],
    ["search=tpe", "search.n_trials=5"], ["search.n_trials=5"], ["search.budget.max_trials=3"],
    ["search.target_sets=[[Wq],[Wq,Wv]]"], ["lora.targets=[Wq,Wv]", "lora.r=4"], ["task.labels=[a,b]"],
    ["seed=1", "output_dir=out", "save_adapter=true", "worker=null"], ["model.name_or_path='/a=b'"],
    ["+search.extra=1"], ["++trainer.epochs=2"], ["++trainer.brand_new=2"], ["+search.extra={a:1}", "search.extra.a=2"], ["~search.budget"], ["~experiment"],
    ["hydra.run.dir=/tmp/x"], ["hydra/job_logging=disabled"], ["trainer.max_steps=10"], ["task.max_seq_length=64"],
]
# whole command lines: flags, sweeps and what only Hydra knows pass unchanged
VALID_ARGV = [*VALID_OVERRIDES,
    ["--cfg", "job"], ["--cfg=job", "--resolve", "seed=2"], ["-c", "job", "-p", "trainer"], ["--help"], ["-h"],
    ["--hydra-help"], ["--version"], ["-m", "worker=0,1,2"], ["--multirun", "lora.r=1,2", "trainer.lr=1e-3,2e-3"],
    ["--config-dir", "/nonexistent", "experiment=selected_x"], ["--config-dir=/nonexistent", "seed=1"],
    ["-cd", "/nonexistent", "experiment=x"], ["--config-name", "config", "seed=1"], ["--info", "defaults"], ["-i"],
    ["--info", "seed=1"], ["--config-path", "/elsewhere", "anything.goes=1"], ["-sc", "install=bash"],
    ["--experimental-rerun", "x.pickle"], ["task@x=mrpc"], ["not_an_override"], ["lora.r=range(1,4)"],
    ["--multi", "seed=0,1"], ["--config-d", "/nonexistent", "seed=1"],
]
VALID_SELECT = [["budget.max_lora_params=20000", "select.tolerance=0.005"], ["select.source=mlflow"],
                ["select.output_dir=x", "budget.max_rank=8", "task=mrpc"], ["experiment=quickstart", "-m", "seed=0,1"]]

# argv, config, the start of the message
UNKNOWN = [
    (["trainer.epoch=1"], "config", "trainer.epoch is not a known key: did you mean trainer.epochs? "
                                    "(valid keys of trainer: accelerator, accumulate_grad_batches, batch_size, "),
    (["search.max_rnak=8"], "config", "search.max_rnak is not a known key: did you mean search.max_rank? "
                                      "(valid keys of search: allocation_budgets, allocation_sets, budget, confidence, "),
    (["search.budget.max_trial=2"], "config", "search.budget.max_trial is not a known key: did you mean "
                                              "search.budget.max_trials? (valid keys of search.budget: "),
    (["trainr.epochs=1"], "config", "trainr.epochs is not a known key: did you mean trainer.epochs? "
                                    "(valid keys at the top: experiment, lora, method, model, output_dir, "),
    (["trainr=gpu"], "config", "trainr is not a known key: did you mean trainer? "),
    (["sed=3"], "config", "sed is not a known key: did you mean seed? "),
    (["trainer.max_seq_length=64"], "config", "trainer.max_seq_length is not a known key: did you mean "
                                              "task.max_seq_length? (valid keys of trainer: "),
    (["experiment.epochs=1"], "config", "experiment.epochs is not a known key: did you mean trainer.epochs? "
                                        "(experiment is chosen as a whole: experiment=<option>)"),
    (["~trainer.nope"], "config", "trainer.nope is not a known key (valid keys of trainer: "),
    (["-m", "seed=0,1", "lora.rank=1,2"], "config", "lora.rank is not a known key (valid keys of lora: alpha, "),
    (["lora.target=[Wq]"], "config", "lora.target is not a known key: did you mean lora.targets? "),
    (["select.tolerence=0.1"], "select", "select.tolerence is not a known key: did you mean select.tolerance? "
                                         "(valid keys of select: methods, output_dir, report, source, study_name, tolerance)"),
    (["budget.max_lora=1"], "select", "budget.max_lora is not a known key: did you mean budget.max_lora_params? "),
    (["select.tolerance=0.1"], "config", "select.tolerance is not a known key (valid keys at the top: "),
]


@pytest.mark.parametrize("argv", VALID_ARGV, ids=" ".join)
def test_valid_command_lines_pass_unchanged(argv):
    assert check_overrides(argv, "config") == (argv, [])


@pytest.mark.parametrize("argv", VALID_SELECT, ids=" ".join)
def test_valid_select_command_lines_pass_unchanged(argv):
    assert check_overrides(argv, "select") == (argv, [])


@pytest.mark.parametrize("overrides", VALID_OVERRIDES, ids=" ".join)
def test_the_valid_overrides_are_valid_for_hydra(overrides):
    overrides = [o for o in overrides if not o.startswith("hydra")]  # compose() refuses hydra.* overrides
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        compose("config", overrides=overrides)


@pytest.mark.parametrize("alias, key", sorted(ALIASES.items()))
def test_alias_is_rewritten_with_a_note(alias, key):
    assert check_overrides(["-m", f"{alias}=1,2", "seed=0"], "config") == (
        ["-m", f"{key}=1,2", "seed=0"], [f"{alias} read as {key}"])
    assert check_overrides([f"++{alias}=3"], "select") == ([f"++{key}=3"], [f"{alias} read as {key}"])
    assert check_overrides([f"+{alias}=3"], "config") == ([f"+{alias}=3"], [])  # + adds a key: left to Hydra


def test_aliases_map_unknown_keys_to_known_ones():
    flat = set(flat_keys(known_keys((CONF_DIR,), "config")))
    assert set(ALIASES.values()) <= flat
    assert not set(ALIASES) & flat


@pytest.mark.parametrize("argv, config, message", UNKNOWN, ids=[" ".join(c[0]) for c in UNKNOWN])
def test_unknown_key_names_the_closest_valid_one(argv, config, message):
    with pytest.raises(ConfigError) as e:
        check_overrides(argv, config)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_keys_are_the_union_over_every_option_of_a_group():
    tree = known_keys((CONF_DIR,), "config")
    assert "strategy" in tree["search"] and "max_trials" in tree["search"]["budget"]
    assert "glue_name" in tree["task"] and "eval_batch_size" in tree["trainer"]
    assert tree["experiment"] == {}  # the presets are @package _global_: their keys are the sections'
    assert {"select", "budget"} <= set(known_keys((CONF_DIR,), "select"))


def test_config_dir_adds_its_options_keys(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "selected_x.yaml").write_text("# @package _global_\ntrainer:\n  only_here: 1\n")
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "mine.yaml").write_text("name: mine\nmy_field: 1\n")
    argv = ["--config-dir", str(tmp_path), "experiment=selected_x", "trainer.only_here=2", "task.my_field=3"]
    assert check_overrides(argv, "config") == (argv, [])
    with pytest.raises(ConfigError, match="trainer.only_here is not a known key"):
        check_overrides(["trainer.only_here=2"], "config")


def test_pre_parse_exits_2_on_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["rank-sweep", "trainer.epoch=1"])
    with pytest.raises(SystemExit) as e:
        cli._pre_parse("config")
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("rank-sweep: error: trainer.epoch is not a known key: did you mean "
                                               "trainer.epochs?"), err


def test_pre_parse_rewrites_sys_argv(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["rank-sweep", "trainer.learning_rate=1e-3", "--cfg", "job"])
    cli._pre_parse("config")
    assert sys.argv == ["rank-sweep", "trainer.lr=1e-3", "--cfg", "job"]
    assert capsys.readouterr().err == "rank-sweep: note: trainer.learning_rate read as trainer.lr\n"


def test_the_check_imports_no_training_library():
    code = ("import sys; from rank_sweep.cli import check_overrides; check_overrides(['trainer.max_epochs=1'], "
            "'config'); assert not {'torch', 'lightning', 'transformers'} & set(sys.modules), 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _run(cmd: str, args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, cmd), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HYDRA_FULL_ERROR": "0"})


@pytest.mark.parametrize("cmd", ["rank-sweep", "rank-sweep-trial", "rank-sweep-select"])
def test_command_reads_an_alias_and_refuses_a_mistyped_key(cmd, tmp_path):
    ok = _run(cmd, ["trainer.max_epochs=1", "--cfg", "job"], tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "rank-sweep: note: trainer.max_epochs read as trainer.epochs" in ok.stderr.splitlines(), ok.stderr
    assert "  epochs: 1" in ok.stdout.splitlines(), ok.stdout
    bad = _run(cmd, ["trainer.epoch=1"], tmp_path)
    assert bad.returncode == 2, bad.stderr[-3000:]
    lines = bad.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "rank-sweep: error: trainer.epoch is not a known key: did you mean trainer.epochs?"), bad.stderr
    assert bad.stdout == "" and not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("cmd, example", [("rank-sweep", "search.ladder=[1,4,16]"),
                                          ("rank-sweep-trial", "task=sst2 lora.r=4 lora.targets=[Wq,Wv]"),
                                          ("rank-sweep-select", "budget.max_lora_params=20000")])
def test_help_says_what_the_command_does_with_examples_that_are_valid_keys(cmd, example, tmp_path):
    from rank_sweep.usage import HELP

    res = _run(cmd, ["--help"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert out.startswith(f"{cmd}: ") and f"usage: {cmd} [key=value ...]" in out and example in out, out[:2000]
    assert "Full reference: README.md" in out and "docs/bad_inputs.md" in out
    assert "search: grid, ladder, nested, tpe" in out and out.index("usage:") < out.index("== Configuration groups")
    assert "== Config ==" not in out  # the whole composed config is --cfg job's
    # every example line's overrides are keys the command knows (the help cannot drift from conf/)
    lines = [x.split("  ")[1].strip() for x in HELP[cmd].splitlines() if x.startswith("  ")]
    args = [a for line in lines for a in line.split()]
    assert len(args) >= 5
    check_overrides(args, "select" if cmd == "rank-sweep-select" else "config")


def test_a_config_error_comes_before_the_training_stack_is_imported():
    """lora.r=abc took 9 s on 2 cores when torch, Lightning and transformers were imported first; now the config
    is built first, so the error needs none of them."""
    code = ("import sys; sys.argv = ['rank-sweep', 'lora.r=abc']; from rank_sweep.cli import sweep\n"
            "try:\n    sweep()\nexcept SystemExit as e:\n    assert e.code == 2, e.code\n"
            "heavy = {'torch', 'lightning', 'transformers', 'peft'} & set(sys.modules)\n"
            "assert not heavy, sorted(heavy)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.splitlines() == ["rank-sweep: error: lora.r='abc' is not valid: the rank must be a positive "
                                       "integer (1, 2, 4, 8, ...)"], res.stderr
