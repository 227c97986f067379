"""The wheel as a user installs it: ``conf/`` ships inside it, and the commands compose configs from an
empty folder where the editable checkout cannot be seen."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _sh(args: list[str], cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_wheel_ships_conf_and_the_commands_run_from_an_empty_folder(tmp_path):
    src = tmp_path / "src"  # build from a copy: setuptools writes build/ and egg-info beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("rank_sweep", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = _sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                 "-w", str(tmp_path / "dist")], tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "Warning" not in built.stdout + built.stderr, (built.stdout + built.stderr)[:3000]  # a quiet install
    wheel = next((tmp_path / "dist").glob("rank_sweep-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"rank_sweep/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert shipped and shipped <= names, sorted(shipped - names)

    site = tmp_path / "site"
    installed = _sh([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                    tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HYDRA_FULL_ERROR": "0"}
    where = _sh([sys.executable, "-c", "import rank_sweep.config as c; print(c.__file__); print(c.CONF_DIR)"],
                empty, env)
    assert where.returncode == 0, where.stderr
    module, conf = where.stdout.split()
    assert module.startswith(str(site)) and conf == str(site / "rank_sweep" / "conf"), where.stdout

    help_ = _sh([sys.executable, str(site / "bin" / "rank-sweep"), "--help"], empty, env)
    assert help_.returncode == 0, help_.stderr[-3000:]
    assert "model: bert_base, deberta_v3_base" in help_.stdout and "search: grid, ladder, nested, tpe" in help_.stdout
    job = _sh([sys.executable, str(site / "bin" / "rank-sweep-trial"), "--cfg", "job", "task=mrpc"], empty, env)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "name: mrpc" in job.stdout and "glue_name: MRPC" in job.stdout, job.stdout
    print(f"wheel {wheel.name}: {len(names)} files, {len(shipped)} configs; rank-sweep --help and "
          f"rank-sweep-trial --cfg job task=mrpc ran from {empty} with rank_sweep from {site}")
    assert not list(empty.iterdir())  # nothing written where the user stood
