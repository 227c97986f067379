"""The docs site (issue #29): it builds with warnings as errors (a broken internal link or anchor is a warning),
its generated reference pages name every config key, trial param and summary.csv column, every name the
MLflow page lists still occurs in the code, and the README stays a landing page whose commands exist."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen():
    return _generator()


@pytest.fixture(scope="module")
def pages(gen):
    return gen.pages()


def _leaves(tree, prefix=""):
    if not isinstance(tree, dict) or not tree:
        return [prefix.rstrip(".")]
    return [k for key, v in tree.items() for k in _leaves(v, f"{prefix}{key}.")]


def test_the_config_page_names_every_key_of_every_default_option_with_its_default(pages):
    page = pages["reference/config.md"]
    conf = ROOT / "conf"
    defaults = {k: v for d in yaml.safe_load((conf / "config.yaml").read_text())["defaults"] if isinstance(d, dict)
                for k, v in d.items()}
    files = {"": conf / "config.yaml", " select": conf / "select.yaml"}
    files.update({f"{g}.": conf / g / f"{o}.yaml" for g, o in defaults.items() if o and (conf / g).is_dir()})
    for prefix, path in files.items():
        tree = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k not in ("defaults", "hydra")}
        for key in _leaves(tree):
            name = f"{prefix.strip()}{key}" if prefix.endswith(".") else key
            assert f"| `{name}` |" in page, f"{name} ({path.name}) is missing from the config reference"
    assert "| `trainer.lr` | `0.0005` |" in page
    for path in sorted(conf.glob("*/*.yaml")):  # every option of every group
        assert f"`{path.parent.name}={path.stem}`" in page, path


def test_yaml_comments_follow_their_key(gen):
    header, comments = gen.yaml_keys("# head\n# more\na: 1   # one\n       # still one\nb:\n  # above c\n  c: 2\n")
    assert header == "head more"
    assert comments == {"a": "one still one", "b": "", "b.c": "above c"}


def test_the_mlflow_page_names_every_trial_param_and_summary_column(pages, gen):
    from rank_sweep.results.records import ConfigSummary
    from rank_sweep.results.tables import summary_table

    page = pages["reference/mlflow.md"]
    for param in ("model", "task", "method", "r", "targets", "alpha", "alpha_policy", "lr", "seed", "metric"):
        assert f"`{param}`" in page
    header = summary_table([ConfigSummary("Wq", 1, 1, 0.5, 0.0, 1, 1, 1.0)], fmt="csv").splitlines()[0]
    assert all(f"`{c}`" in page for c in header.split(",")) and "`diff_ci_high`" in page


def test_every_metric_tag_and_artifact_the_page_lists_occurs_in_the_code(gen):
    source = "\n".join(p.read_text() for p in (ROOT / "rank_sweep").rglob("*.py"))
    missing = [name for name, *_ in gen.LOGGED if name.split("<")[0].rstrip("/") not in source]
    assert not missing, f"listed in docs/gen_reference.py LOGGED but not found in rank_sweep/: {missing}"


def test_the_commands_page_names_every_console_script_and_make_target(pages):
    page = pages["reference/commands.md"]
    for name in ("rank-sweep", "rank-sweep-trial", "rank-sweep-select"):
        assert f"| `{name}` |" in page
    for target in re.findall(r"^([a-z-]+):.*## ", (ROOT / "Makefile").read_text(), re.M):
        assert f"`make {target}`" in page


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (pip install .[dev])")
def test_the_site_builds_with_warnings_as_errors(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0 and "WARNING" not in out.stderr, out.stderr[-3000:]
    built = {p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("index.html")}
    assert {"reference/config/index.html", "reference/mlflow/index.html", "tutorial/index.html"} <= built


def test_the_readme_is_a_landing_page_whose_commands_and_links_exist():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 120
    assert "    make sweep" in text and "    make test" in text
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.M))
    assert {"sweep", "test", "docs"} <= targets
    for link in re.findall(r"\]\(([^)#]+)", text):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), f"README links to {link}, which does not exist"
