"""Load a task's train/validation data: GLUE folders, csv/jsonl files or the Hub.

Usage::

    from rank_sweep.train.data import label_arrays, load_splits

    splits = load_splits(cfg.task)                     # DatasetDict: train, validation (+ holdout)
    train_labels, val_labels = label_arrays(splits)    # for baseline_score

(:mod:`rank_sweep.train.batches` tokenizes the splits and serves them to Lightning.)

``load_splits`` returns the task's ``text_fields`` plus ``label`` (an int index
into ``task.labels``, or a float for regression). Sources:

- ``glue``: ``train.tsv`` and ``dev.tsv`` (MNLI: ``dev_matched.tsv``) in
  ``task.data_dir`` or ``$GLUE_DIR/<glue_name>``, read with quoting off and
  ``utf-8-sig``; CoLA's headerless files get their four column names. Task
  yamls use the Hub's column names (``sentence1``, ``label``, ...); where a GLUE
  file names a column differently (MRPC ``#1 String``/``Quality``, STS-B
  ``score``, MNLI ``gold_label``, QQP ``is_duplicate``) the alias is used.
  With no folder resolved, the Hub copy (``task.hub_path``/``hub_config``) is used.
- ``csv`` / ``jsonl``: ``task.train_file`` and ``task.validation_file``
  (relative to ``task.data_dir`` when set); a ``.tsv`` file is read tab-separated
  with quoting off.
- ``hub``: ``datasets.load_dataset(task.hub_path, task.hub_config)``.

``task.holdout`` (on by default) adds a ``holdout`` split that no decision reads, taken from the unused
training rows, ``task.test_file`` or a hash of the dev examples (:mod:`rank_sweep.train.holdout`); the
DatasetDict's ``holdout_info`` says which.

Every input problem raises a one-line :class:`DataError` before training.
Files go through ``datasets.load_dataset`` so parsing, label mapping and
tokenization are cached by ``datasets``.
"""

from __future__ import annotations

import codecs
import csv
import math
import os
import re

import datasets
import numpy as np
import pandas as pd

from rank_sweep.config import TaskConfig
from rank_sweep.errors import ConfigError, DataError
from rank_sweep.train import checks, holdout

# Per-GLUE-task file layout, keyed by the normalised glue_name (or hub_config).
# aliases: configured (Hub) column name -> column name in the GLUE file.
GLUE_LAYOUTS: dict[str, dict] = {
    "cola": {"names": ["source", "label", "original_label", "sentence"]},
    "mnli": {
        "dev": "dev_matched.tsv",
        "hub_validation": "validation_matched",
        "aliases": {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
    },
    "mrpc": {"aliases": {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"}},
    "stsb": {"aliases": {"label": "score"}},
    "qqp": {"aliases": {"label": "is_duplicate"}},
}


def _layout(task: TaskConfig) -> dict:
    key = re.sub(r"[^a-z0-9]", "", (task.glue_name or task.hub_config or task.name or "").lower())
    layout = dict(GLUE_LAYOUTS.get(key, {}))
    aliases = dict(layout.get("aliases", {}))
    aliases.update({v: k for k, v in aliases.items()})  # either naming works
    layout["aliases"] = aliases
    return layout


def _load_error(exc: BaseException, where: str) -> DataError:
    """Turn a parser/loader exception into a one-line DataError."""
    seen, e = [], exc
    while e is not None and e not in seen:
        if isinstance(e, UnicodeDecodeError):
            return DataError(f"{where} is not valid UTF-8: save it as UTF-8")
        seen.append(e)
        e = e.__cause__ or e.__context__
    first = (str(seen[-1]).strip().splitlines() or [""])[0]
    return DataError(f"cannot read {where}: {type(seen[-1]).__name__}: {first}")


def _check_utf8(path: str) -> bool:
    """Raise DataError if the file is not UTF-8; return whether it has any non-blank content."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    done, content = 0, False
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                content = bool(decoder.decode(chunk).strip()) or content
            except UnicodeDecodeError as e:
                raise DataError(
                    f"data file {path!r} is not valid UTF-8 (byte {done + e.start}): save it as UTF-8"
                ) from None
            done += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataError(f"data file {path!r} is not valid UTF-8 (truncated at the end): save it as UTF-8") from None
    return content


def _read_file(path: str, fmt: str, kind: str, layout: dict, cache_dir: str | None) -> datasets.Dataset:
    """Read one file; ``fmt``: jsonl, or csv (tab-separated, quoting off, for a .tsv path)."""
    if os.path.isdir(path):
        raise DataError(f"data file {path!r} is a folder: expected the {kind} (a file; a relative name is read "
                        f"under task.data_dir)")
    if not os.path.isfile(path):
        raise DataError(f"data file {path!r} does not exist: expected the {kind}")
    if os.path.getsize(path) == 0:
        raise DataError(f"data file {path!r} is empty: expected the {kind} with a header and rows")
    try:
        if fmt == "jsonl":
            if not _check_utf8(path):  # the JSON reader lets bad bytes through
                raise DataError(f"data file {path!r} has no rows: expected the {kind} with one JSON object per line")
            ds = datasets.load_dataset("json", data_files={"train": path}, split="train", cache_dir=cache_dir)
        else:
            tsv = path.endswith(".tsv") or fmt == "glue"
            opts = {"sep": "\t" if tsv else ",", "quoting": csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL}
            opts["encoding"] = "utf-8-sig"
            if layout.get("names"):
                opts.update(header=None, names=layout["names"])
            head = pd.read_csv(path, nrows=1, **opts)
            if head.empty:
                raise DataError(f"data file {path!r} has no rows: expected the {kind} with at least one example")
            names = head.columns.tolist()
            features = datasets.Features({str(c): datasets.Value("string") for c in names})
            ds = datasets.load_dataset(
                "csv",
                data_files={"train": path},
                split="train",
                cache_dir=cache_dir,
                features=features,
                na_filter=False,
                keep_default_na=False,
                **{("delimiter" if k == "sep" else k): v for k, v in opts.items()},
            )
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"data file {path!r} is empty: expected the {kind} with a header and rows") from None
    except Exception as e:
        raise _load_error(e, f"data file {path!r}") from e
    if ds.num_rows == 0:
        raise DataError(f"data file {path!r} has no rows: expected the {kind} with at least one example")
    return ds


def data_files(task: TaskConfig) -> dict[str, str] | None:
    """The train and validation files a task reads (absolute paths), or None when it reads the Hub."""
    if task.source == "hub" or (task.source == "glue" and task.resolved_data_dir() is None):
        return None
    if task.source == "glue":
        folder = task.resolved_data_dir()
        files = {"train": "train.tsv", "validation": _layout(task).get("dev", "dev.tsv")}
        if not os.path.isdir(folder):
            raise DataError(
                f"GLUE folder {folder!r} for task {task.name} does not exist: expected a folder with "
                f"{files['train']} and {files['validation']} (set GLUE_DIR or task.data_dir)"
            )
        paths = {k: os.path.join(folder, v) for k, v in files.items()}
    else:
        base = os.path.expanduser(task.data_dir) if task.data_dir else ""
        paths = {
            "train": os.path.join(base, os.path.expanduser(task.train_file)),
            "validation": os.path.join(base, os.path.expanduser(task.validation_file)),
        }
    return {k: os.path.abspath(v) for k, v in paths.items()}


def data_digest(task: TaskConfig) -> dict[str, str]:
    """What the data a trial trains and scores on is: the sha256 of each file, or the Hub dataset's name."""
    files = data_files(task)
    if files is None:
        return {"hub": f"{task.hub_path}/{task.hub_config}"}
    if task.holdout and holdout.test_path(task):
        files["test"] = holdout.test_path(task)
    digests = {split: holdout.file_sha256(path) for split, path in files.items()}
    # a file that cannot be read is left out: load_splits reports a missing file in its own words
    return {f"{split}_sha256": d for split, d in digests.items() if d is not None}


def _file_splits(task: TaskConfig, layout: dict, cache_dir: str | None) -> tuple[dict, dict]:
    paths = data_files(task)
    kinds = {"train": f"training file of task {task.name}", "validation": f"validation file of task {task.name}"}
    layout = layout if task.source == "glue" else {}
    if task.source == "jsonl":
        for k, p in paths.items():
            checks.check_jsonl(p, kinds[k], task)
    with checks.quiet_reader():
        loaded = {k: _read_file(p, task.source, kinds[k], layout, cache_dir) for k, p in paths.items()}
    return loaded, {k: f"data file {p!r}" for k, p in paths.items()}


def _hub_splits(task: TaskConfig, layout: dict, cache_dir: str | None) -> tuple[dict, dict]:
    if not task.hub_path:
        raise ConfigError(
            f"task.hub_path={task.hub_path!r} is not valid: give a Hugging Face dataset id for task {task.name}"
        )
    name = "/".join(x for x in (task.hub_path, task.hub_config) if x)
    try:
        dd = datasets.load_dataset(task.hub_path, task.hub_config, cache_dir=cache_dir)
    except Exception as e:
        hint = ": set GLUE_DIR or task.data_dir to a folder in GLUE format" if task.source == "glue" else ""
        first = (str(e).strip().splitlines() or [""])[0]
        raise DataError(
            f"cannot download {name} from the Hugging Face Hub (offline?){hint} [{type(e).__name__}: {first}]"
        ) from e
    val = layout.get("hub_validation", "validation")
    for split in ("train", val):
        if split not in dd:
            raise DataError(f"{name} on the Hub has no split {split!r}: splits present are {', '.join(dd)}")
    return {"train": dd["train"], "validation": dd[val]}, {
        "train": f"{name} split train",
        "validation": f"{name} split {val}",
    }


def _label_key(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return v.strip() if isinstance(v, str) else str(v)


def _prepare(ds: datasets.Dataset, task: TaskConfig, aliases: dict, where: str) -> datasets.Dataset:
    """Select and rename the configured columns, validate labels, map them to ``label``."""
    cols = ds.column_names
    rename = {}
    for field, what in [*[(f, "text_fields") for f in task.text_fields], (task.label_field, "label_field")]:
        actual = field if field in cols else aliases.get(field)
        if actual not in cols:
            kind = "text" if what == "text_fields" else "label"
            raise DataError(
                f"{where} has no {kind} column {field!r} (task.{what}): columns present are {', '.join(map(str, cols))}"
            )
        rename[actual] = "label" if what == "label_field" else field
    ds = ds.select_columns(list(rename))
    ds = ds.rename_columns({a: b for a, b in rename.items() if a != b})
    feature = ds.features["label"]
    raw = ds.unique("label")
    if task.is_regression:
        for v in raw:
            try:
                ok = v is not None and not isinstance(v, bool) and math.isfinite(float(v))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise DataError(
                    f"label {v!r} in {where} is not a number: a regression task (task.labels: null) needs numeric labels"
                )
        lookup = None
    else:
        index = {lab: i for i, lab in enumerate(task.labels)}
        lookup = {}
        for v in raw:
            keys = [_label_key(v)]
            if isinstance(feature, datasets.ClassLabel) and isinstance(v, int) and 0 <= v < feature.num_classes:
                keys.insert(0, feature.int2str(v))  # Hub ClassLabel: match by name, else by index
            hit = next((k for k in keys if k in index), None)
            if hit is None:
                raise DataError(f"label {keys[-1]!r} in {where} is not one of task.labels {task.labels}")
            lookup[v] = index[hit]
    text_fields = list(task.text_fields)

    def convert(batch):
        out = {f: ["" if x is None else str(x) for x in batch[f]] for f in text_fields}
        if lookup is None:
            out["label"] = [float(v) for v in batch["label"]]
        else:
            out["label"] = [lookup[v] for v in batch["label"]]
        return out

    features = datasets.Features({f: datasets.Value("string") for f in text_fields})
    features["label"] = datasets.Value("float32" if lookup is None else "int64")
    return ds.map(convert, batched=True, features=features, desc="mapping labels")


def raw_splits(task: TaskConfig, cache_dir: str | None = None) -> tuple[dict, dict]:
    """The ``train`` and ``validation`` data as read (every column), and where each came from (for messages)."""
    layout = _layout(task)
    if task.source == "hub" or (task.source == "glue" and task.resolved_data_dir() is None):
        return _hub_splits(task, layout, cache_dir)
    return _file_splits(task, layout, cache_dir)


def prepare_labels(ds: datasets.Dataset, task: TaskConfig, where: str) -> datasets.Dataset:
    """``ds`` with the task's ``text_fields`` and its labels as ``label`` (an index into ``task.labels``)."""
    return _prepare(ds, task, _layout(task)["aliases"], where)


def subsample(ds: datasets.Dataset, n: int | None) -> datasets.Dataset:
    """A seeded random subset of ``n`` rows (the same for every trial), or ``ds`` when it has no more."""
    return ds if n is None or n >= ds.num_rows else ds.shuffle(seed=0).select(range(n))


def raw_test(task: TaskConfig, cache_dir: str | None = None) -> tuple[datasets.Dataset | None, dict]:
    """The held-out file ``task.test_file`` as read (None without one, or with ``task.holdout=false``), and the
    task's data files by split (its ``test`` too), for the held-out split's record."""
    files = dict(data_files(task) or {})
    if not (task.holdout and holdout.test_path(task)):
        return None, files
    files["test"], kind = holdout.test_path(task), f"test file of task {task.name}"
    if task.source == "jsonl":
        checks.check_jsonl(files["test"], kind, task)
    with checks.quiet_reader():
        return _read_file(files["test"], task.source, kind, _layout(task) if task.source == "glue" else {},
                          cache_dir), files


def load_splits(task: TaskConfig, cache_dir: str | None = None) -> datasets.DatasetDict:
    """The task's ``train`` and ``validation`` splits: ``text_fields`` plus ``label``."""
    if "label" in task.text_fields:
        raise ConfigError(
            f"task.text_fields={task.text_fields!r} is not valid: 'label' is reserved for the label column"
        )
    raw, where = raw_splits(task, cache_dir)
    out = {k: prepare_labels(raw[k], task, where[k]) for k in ("train", "validation")}
    test, files = raw_test(task, cache_dir)  # the held-out split's own file, if any
    test = None if test is None else prepare_labels(test, task, f"data file {files['test']!r}")
    return holdout.assemble(task, out["train"], out["validation"], test, files)


def label_arrays(splits: datasets.DatasetDict) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation labels as arrays (raw ``label`` or tokenized ``labels``)."""

    def get(ds):
        return np.asarray(ds["label" if "label" in ds.column_names else "labels"])

    return get(splits["train"]), get(splits["validation"])
