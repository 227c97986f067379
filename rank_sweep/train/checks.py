"""What a run needs from this machine and its data, checked before the first trial is recorded, and the
warnings for inputs that may be meant but are likely mistakes.

    check_device("gpu")                  # ConfigError when torch sees no GPU
    check_model_folder(name, path)       # ConfigError for an empty or half-copied model folder
    for line in data_warnings(task, splits): warn(line)

A warning is one line on stderr, ``rank-sweep: warning: ...``; the run goes on.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

from rank_sweep.config import TaskConfig
from rank_sweep.errors import ConfigError

MIN_DEV_EXAMPLES = 30  # below this a dev score's 95% interval says little (and at 1 example it is a point)
MAX_DEV_OVERLAP = 0.1  # a larger share of dev examples also in the training data is likely a mistake


def warn(message: str) -> None:
    print(f"rank-sweep: warning: {message}", file=sys.stderr, flush=True)


def check_device(accelerator: str) -> None:
    """A GPU asked for (``trainer=gpu``) must be there before anything loads or a trial is recorded."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        build = "a CPU build" if torch.version.cuda is None else "no CUDA device visible"
        raise ConfigError(f"trainer.accelerator={accelerator!r} is not valid on this machine: torch sees no GPU "
                          f"(torch {torch.__version__}, {build}); use trainer=cpu, or install a CUDA build "
                          f"(make install TORCH=...)")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator='mps' is not valid on this machine: torch sees no Apple GPU; "
                          "use trainer=cpu")


def check_model_folder(name: str, path: str) -> None:
    """A local model folder holds a Hugging Face checkpoint (config.json at least): an empty or half-copied one
    would otherwise fail deep inside a tokenizer's conversion code."""
    folder = os.path.expanduser(path)
    if not os.path.isdir(folder):
        return
    files = sorted(os.listdir(folder))
    if "config.json" not in files:
        shown = "found " + ", ".join(files[:6]) + (", ..." if len(files) > 6 else "") if files else "it is empty"
        raise ConfigError(f"model.name_or_path={name!r} is not valid: folder {path!r} has no config.json ({shown}): "
                          f"give a folder saved by save_pretrained (config.json, weights, tokenizer files)")


def data_warnings(task: TaskConfig, splits) -> list[str]:
    """Lines about a classification or regression task's loaded ``train`` / ``validation`` splits: a dev set too
    small for an interval, a class the training data lacks, dev examples that are also training examples."""
    train, dev = splits["train"], splits["validation"]
    out = []
    if dev.num_rows < MIN_DEV_EXAMPLES:
        out.append(f"the dev set has {dev.num_rows} example(s) (task.max_eval_samples={task.max_eval_samples}): "
                   f"too few for a score's interval to mean much; give >= {MIN_DEV_EXAMPLES} (a few hundred to "
                   f"tell ranks apart)")
    if task.labels is not None:
        present = set(np.asarray(train["label"]).tolist())
        missing = [lab for i, lab in enumerate(task.labels) if i not in present]
        if missing:
            out.append(f"the training data has no example of label(s) {', '.join(missing)} of task.labels "
                       f"{task.labels}: no trial can learn {'it' if len(missing) == 1 else 'them'}, so every trial "
                       f"may be flagged not learning")
    seen = set(zip(*(train[f] for f in task.text_fields), strict=True))
    shared = sum(row in seen for row in zip(*(dev[f] for f in task.text_fields), strict=True))
    if dev.num_rows and shared / dev.num_rows > MAX_DEV_OVERLAP:
        out.append(f"{shared} of the {dev.num_rows} dev examples ({shared / dev.num_rows:.0%}) are also training "
                   f"examples (same text): the dev score overstates what the model learned; is "
                   f"task.validation_file the training file?")
    return out
