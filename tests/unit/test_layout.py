"""The architecture as tests: data flows one way, private names stay in their module, modules stay small."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "rank_sweep"
TRAINING_STACK = ("torch", "lightning", "pytorch_lightning", "peft", "transformers")


def _imported_after(module: str) -> set[str]:
    """Top-level packages in sys.modules after importing ``module`` in a fresh interpreter."""
    code = f"import sys, {module}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


@pytest.mark.parametrize("module", ["rank_sweep.commands.select", "rank_sweep.results.tables",
                                    "rank_sweep.analysis.plots", "rank_sweep.tracking"])
def test_the_select_command_and_results_never_import_the_training_stack(module):
    loaded = _imported_after(module)
    assert not loaded & set(TRAINING_STACK), sorted(loaded & set(TRAINING_STACK))


def test_the_planner_imports_neither_optuna_nor_mlflow():
    loaded = _imported_after("rank_sweep.study.plan")
    assert not loaded & {"optuna", "mlflow", *TRAINING_STACK}, sorted(loaded)


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text())
    return out


def test_no_module_imports_against_the_flow():
    """results and analysis read; they never import study or train (the training side)."""
    bad = []
    for name, tree in _modules().items():
        if not name.startswith(("rank_sweep.results", "rank_sweep.analysis", "rank_sweep.config",
                                "rank_sweep.tracking", "rank_sweep.errors")):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rank_sweep."):
                target = node.module
                if target.startswith(("rank_sweep.train", "rank_sweep.study")):
                    bad.append(f"{name} imports {target}")
    assert not bad, bad


def test_the_commands_sit_on_top():
    """rank_sweep.commands (the select command, the command-line check) may import anything; only cli imports it."""
    bad = [f"{name} imports {node.module}" for name, tree in _modules().items()
           if not name.startswith(("rank_sweep.commands", "rank_sweep.cli"))
           for node in ast.walk(tree)
           if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("rank_sweep.commands", "rank_sweep.cli"))]
    assert not bad, bad


def test_no_private_name_crosses_a_module():
    bad = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rank_sweep"):
                bad += [f"{name}: from {node.module} import {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, bad


def test_every_module_opens_with_a_docstring_and_stays_under_350_lines():
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        assert ast.get_docstring(ast.parse(text)), f"{path} has no module docstring"
        assert len(text.splitlines()) <= 350, f"{path} has {len(text.splitlines())} lines"


def test_the_packaging_declares_every_conf_folder_and_an_spdx_license():
    """A quiet install: setuptools warns for a data folder that is not a declared package ("absent from the
    packages configuration") and for ``project.license`` as a table (deprecated; SPDX string wanted)."""
    import tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str), project["project"]["license"]
    tools = project["tool"]["setuptools"]
    folders = {f"rank_sweep.conf.{p.name}" for p in (PACKAGE.parent / "conf").iterdir()
               if p.is_dir() and any(p.glob("*.yaml"))}
    assert folders and folders <= set(tools["packages"]), sorted(folders - set(tools["packages"]))
    assert all(tools["package-data"].get(name) == ["*.yaml"] for name in folders), tools["package-data"]
