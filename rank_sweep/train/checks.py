"""What a run needs from this machine and its data, checked before the first trial is recorded, and the
warnings for inputs that may be meant but are likely mistakes.

    check_device("gpu")                  # ConfigError when torch sees no GPU
    check_model_folder(name, path)       # ConfigError for an empty or half-copied model folder
    check_jsonl(path, kind, task)        # DataError naming the line of a malformed JSON row or a non-text field
    for line in data_warnings(task, splits): warn(line)

A warning is one line on stderr, ``rank-sweep: warning: ...``; the run goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys

import numpy as np
import torch

from rank_sweep.config import TaskConfig
from rank_sweep.errors import ConfigError, DataError

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


def text_keys(task: TaskConfig) -> list[str]:
    """The fields of a row that must hold text: the text fields, and a causal LM task's prompt, completion, text."""
    return list(task.text_fields) + ([task.prompt_field, task.completion_field, task.text_field] if task.is_causal else [])


def check_jsonl(path: str, kind: str, task: TaskConfig) -> None:
    """Each non-blank line of a jsonl file is a JSON object whose text fields are strings; the first that is not
    is named by its line (the JSON reader says "Trailing data at position 63", and a number in a completion
    fails later as "'int' object has no attribute 'strip'")."""
    if not os.path.isfile(path):
        return  # the reader says what is wrong with the path
    keys = text_keys(task)
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise DataError(f"data file {path!r} line {n} is not valid JSON ({e.msg}, column {e.colno}): the "
                                f"{kind} needs one JSON object per line") from None
            if not isinstance(row, dict):
                raise DataError(f"data file {path!r} line {n} is a JSON {type(row).__name__}, not an object: the "
                                f"{kind} needs one JSON object per line")
            bad = next((k for k in keys if k in row and not isinstance(row[k], str)), None)
            if bad is not None:
                raise DataError(f"data file {path!r} line {n}: {bad}={row[bad]!r} is not text: write it as a "
                                f"JSON string")


@contextlib.contextmanager
def quiet_reader():
    """The datasets library logs its own copy of a reading error (one line per attempt) before raising it; the
    DataError that follows says it once."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
