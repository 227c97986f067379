"""issue #13.3: the preset rank-sweep-select writes retrains the chosen trial as it ran, in another shell."""

from __future__ import annotations

import csv
import os
import re
import subprocess
from pathlib import Path

import optuna

from tests.e2e.test_cli import BIN


def _glue_folder(toy_data_dir: str, root: Path) -> Path:
    """The toy task laid out as a GLUE SST-2 folder (sentence<TAB>label), so the study reads it via GLUE_DIR."""
    folder = root / "SST-2"
    folder.mkdir(parents=True)
    for src, dst in (("train.csv", "train.tsv"), ("dev.csv", "dev.tsv")):
        with open(Path(toy_data_dir) / src) as f:
            rows = list(csv.DictReader(f))
        lines = ["sentence\tlabel"] + [f"{r['text']}\t{r['label']}" for r in rows]
        (folder / dst).write_text("\n".join(lines) + "\n")
    return root


def _run(cmd: str, args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    out = subprocess.run([os.path.join(BIN, cmd), *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                         env=env)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


def test_preset_retrains_the_chosen_trial_without_the_studys_overrides_or_glue_dir(tiny_model_dir, toy_data_dir,
                                                                                  tmp_path):
    glue = _glue_folder(toy_data_dir, tmp_path / "glue")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("GLUE_DIR", "MLFLOW_TRACKING_URI")}
    overrides = [  # none of these is a default: the preset must carry every one of them
        f"model.name_or_path={tiny_model_dir}", "model.name=tiny_bert", "task=sst2", "task.max_seq_length=16",
        "task.max_eval_samples=60", "trainer.epochs=3", "trainer.lr=2e-2", "trainer.batch_size=16",
        "trainer.progress_bar=false", "lora.alpha_k=4.0", "lora.dropout=0.0", "seed=3",
        "search.ladder=[1,2]", "search.target_sets=[[Wq,Wv]]", "search.extend=false", "search.study_name=repro",
        "search.lr_probe=[]", "search.lr_bracket=[]", "search.head_reference=false", "search.allocation_sets=[]",
        "model.pooling=cls_frozen",  # the toy learns with the classifier alone (conftest)
    ]
    _run("rank-sweep", overrides, work, {**env, "GLUE_DIR": str(glue)})
    chosen = _run("rank-sweep-select", ["select.study_name=repro"], work, env)  # no override, no GLUE_DIR
    retrain = re.search(r"retrain the choice: (rank-sweep-trial .+)", chosen.stdout).group(1).split()[1:]
    preset = Path(retrain[1]) / "experiment" / (retrain[2].split("=", 1)[1] + ".yaml")
    text = preset.read_text()
    number = int(re.search(r"trial (\d+) ", text).group(1))
    assert "from the trial's stored config" in text
    assert f"data_dir: {glue / 'SST-2'}" in text and "precision: auto" not in text
    assert "epochs: 3" in text and "max_eval_samples: 60" in text and "alpha_k: 4.0" in text

    elsewhere = tmp_path / "elsewhere"  # a new shell: another folder, no GLUE_DIR, default stores
    elsewhere.mkdir()
    again = _run("rank-sweep-trial", [*retrain, "trainer.progress_bar=false"], elsewhere, env)
    retrained = float(re.search(r"score \(accuracy\) = ([0-9.]+)", again.stdout).group(1))
    study = optuna.load_study(study_name="repro", storage=f"sqlite:///{work}/optuna.db")
    score = study.trials[number].value
    print(f"trial {number} score {score:.4f}, retrained from the preset {retrained:.4f}")
    assert abs(retrained - score) < 5e-5  # printed with 4 decimals; CPU training is deterministic here
