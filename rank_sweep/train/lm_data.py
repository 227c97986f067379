"""Causal-LM data: rows -> (prompt, completion, choice) -> token ids with the prompt masked, served left-padded.

    rows = load_lm_splits(cfg.task)                     # DatasetDict: prompt, completion (chat: messages), choice
                                                        # (+ a holdout split: rank_sweep.train.holdout)
    tokenized = tokenize_lm(rows, tokenizer, cfg.task)  # input_ids, labels (-100 on prompt tokens), length, choice
    dm = CausalDataModule(tokenized, tokenizer, cfg.task, batch_size=16, eval_batch_size=64)

An example is ``prompt_ids + completion_ids`` (+ eos with ``task.append_eos``), the two tokenized apart so
the boundary is exact; ``labels`` copy the completion and hold -100 on every prompt token, so only completion
tokens reach the loss. A text task (``format: text``) trains on all of its text but the first token, which
nothing predicts. Chat rows are rendered by the tokenizer's chat template: the prompt is every turn but the
last, with the generation prompt; the completion is the rest of the rendered conversation (the last
assistant turn and its end-of-turn marker). Batches are left-padded (the completion ends every row, so
the LM head runs on the last positions only) with explicit position ids; training batches are grouped by
length as the classifier's are. Every problem with the data is one line, before training: a missing
field, an empty completion, examples longer than ``task.max_seq_length`` (counted; ``task.truncation=left``
cuts prompts from the left instead, never the completion), choices that share a first token, chat data
for a tokenizer without a chat template.
"""

from __future__ import annotations

import json
import sys

import datasets
import numpy as np
import torch

from rank_sweep.config import TaskConfig
from rank_sweep.errors import ConfigError, DataError
from rank_sweep.train import data as data_mod
from rank_sweep.train import holdout
from rank_sweep.train.batches import GlueDataModule

IGNORE = -100  # the label of a token the loss does not count (PyTorch's cross-entropy ignore_index)
SPLIT_NAMES = {"train": "training", "validation": "validation", "holdout": "held-out"}


def _need(ds: datasets.Dataset, column: str, key: str, where: str) -> None:
    if column not in ds.column_names:
        raise DataError(f"{where} has no column {column!r} (task.{key}): columns present are "
                        f"{', '.join(map(str, ds.column_names))}")


def _choice_of(task: TaskConfig, answer: str, where: str) -> int:
    if task.choices is None:
        return -1
    stripped = [c.strip() for c in task.choices]
    if answer.strip() not in stripped:
        raise DataError(f"completion {answer!r} in {where} is not one of task.choices {task.choices}")
    return stripped.index(answer.strip())


def _rows(ds: datasets.Dataset, task: TaskConfig, where: str) -> datasets.Dataset:
    """One split in the uniform schema: prompt, completion, choice (and messages for chat, as JSON)."""
    if task.prompt_template is not None and task.choices is not None:  # GLUE as text: the answer is the label
        ds = data_mod.prepare_labels(ds, task, where)

        def build(b):
            prompts = [task.prompt_template.format(**{f: b[f][i].strip() for f in task.text_fields})
                       for i in range(len(b["label"]))]
            return {"prompt": prompts, "completion": [task.choices[y] for y in b["label"]], "choice": b["label"]}
    elif task.format == "chat":
        _need(ds, task.messages_field, "messages_field", where)

        def build(b):
            out = {"messages": [], "completion": [], "choice": []}
            for msgs in b[task.messages_field]:
                if (not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs)
                        or msgs[-1].get("role") != "assistant"):
                    raise DataError(f"a row of {where} has {task.messages_field!r} that is not a list of "
                                    f"{{role, content}} turns ending with an assistant turn")
                answer = str(msgs[-1].get("content") or "")
                out["messages"].append(json.dumps(msgs))
                out["completion"].append(answer)
                out["choice"].append(_choice_of(task, answer, where) if answer.strip() else -1)
            return out
    elif task.format == "text":
        _need(ds, task.text_field, "text_field", where)

        def build(b):
            texts = ["" if t is None else str(t) for t in b[task.text_field]]
            return {"prompt": [""] * len(texts), "completion": texts, "choice": [-1] * len(texts)}
    else:
        if task.prompt_template is None:
            _need(ds, task.prompt_field, "prompt_field", where)
        else:
            for f in task.text_fields:
                _need(ds, f, "text_fields", where)
        _need(ds, task.completion_field, "completion_field", where)

        def build(b):
            n = len(b[task.completion_field])
            if task.prompt_template is None:
                prompts = ["" if p is None else str(p) for p in b[task.prompt_field]]
            else:
                prompts = [task.prompt_template.format(**{f: str(b[f][i] or "").strip() for f in task.text_fields})
                           for i in range(n)]
            answers = ["" if c is None else str(c) for c in b[task.completion_field]]
            return {"prompt": prompts, "completion": answers,
                    "choice": [_choice_of(task, a, where) if a.strip() else -1 for a in answers]}
    keep = hash_fields(task) if task.prompt_template is not None else []  # for the held-out split; dropped after
    out = ds.map(build, batched=True, remove_columns=[c for c in ds.column_names if c not in keep],
                 desc="building prompts")
    empty = sum(1 for c in out["completion"] if not c.strip())
    if empty:
        what = {"chat": "last assistant turn", "text": f"text ({task.text_field!r})"}.get(
            task.format, f"completion ({task.completion_field!r})")
        raise DataError(f"{empty} of {out.num_rows} rows of {where} have an empty {what}: the loss would count no "
                        f"token there; drop those rows or fill them")
    return out


def hash_fields(task: TaskConfig) -> list[str]:
    """What the held-out split's dev hash reads of a row: its input, so that the same question falls on the same
    side whatever its answer. With ``task.prompt_template``, the ``text_fields`` it is built from (a GLUE-as-text
    task then holds out the dev examples its classifier task holds out); else the prompt, a text task's text, a
    chat's turns."""
    if task.prompt_template is not None:
        return list(task.text_fields)
    return {"chat": ["messages"], "text": ["completion"]}.get(task.format, ["prompt"])


def load_lm_splits(task: TaskConfig, cache_dir: str | None = None) -> datasets.DatasetDict:
    """The task's ``train`` and ``validation`` rows as prompt, completion (chat: messages) and choice index
    (-1 without ``task.choices``), subsampled as ``task.max_train_samples`` / ``max_eval_samples`` say; with
    ``task.holdout``, a ``holdout`` split of the same rows, chosen as a classifier's is (``holdout_info``)."""
    raw, where = data_mod.raw_splits(task, cache_dir)
    out = {k: _rows(raw[k], task, where[k]) for k in ("train", "validation")}
    test, files = data_mod.raw_test(task, cache_dir)  # task.test_file, if any
    test = None if test is None else _rows(test, task, f"data file {files['test']!r}")
    dd = holdout.assemble(task, out["train"], out["validation"], test, files, hash_fields(task))
    inputs = [c for c in dd["train"].column_names if c not in ("prompt", "completion", "messages", "choice")]
    rows = dd.remove_columns(inputs) if inputs else dd  # the text fields the dev hash read
    rows.holdout_info = dd.holdout_info
    return rows


def choice_token_ids(tokenizer, task: TaskConfig) -> list[list[int]] | None:
    """The token ids of each of ``task.choices`` (as continuations: no special tokens), or None. Choices whose
    first tokens are the same are refused: the first answer token is where the model commits to an answer."""
    if task.choices is None:
        return None
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in task.choices]
    for i, a in enumerate(ids):
        if not a:
            raise ConfigError(f"task.choices entry {task.choices[i]!r} tokenizes to no token: give a non-empty answer")
        for j in range(i):
            if ids[j][0] == a[0]:
                tok = tokenizer.convert_ids_to_tokens(a[0])
                raise ConfigError(f"task.choices {task.choices[j]!r} and {task.choices[i]!r} start with the same token "
                                  f"{tok!r} (id {a[0]}) for this tokenizer: give choices whose first tokens differ "
                                  f"(e.g. ' yes', ' no')")
    return ids


def _encode(tokenizer, task: TaskConfig, rows: datasets.Dataset) -> tuple[list, list]:
    """Prompt and completion token ids of every row."""
    if task.format == "chat":
        prompts, completions = [], []
        for m in rows["messages"]:
            msgs = json.loads(m)
            prompt = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(msgs, tokenize=False)
            if not full.startswith(prompt):
                raise ConfigError("the tokenizer's chat template renders a conversation so that its prompt is not a "
                                  "prefix of the whole: task.format=chat cannot mask the prompt; use prompt_completion")
            prompts.append(prompt)
            completions.append(full[len(prompt):])
        enc = {"add_special_tokens": False}
        return (tokenizer(prompts, **enc)["input_ids"], tokenizer(completions, **enc)["input_ids"])
    p = tokenizer(list(rows["prompt"]), add_special_tokens=True)["input_ids"]
    c = tokenizer(list(rows["completion"]), add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if task.append_eos and tokenizer.eos_token_id is not None else []
    c = [ids + eos for ids in c]
    out_p, out_c = [], []
    for pi, ci in zip(p, c, strict=True):
        if not pi:  # nothing precedes the first token (a text task, no bos): it is context, not a target
            pi, ci = ci[:1], ci[1:]
        out_p.append(pi)
        out_c.append(ci)
    return out_p, out_c


def tokenize_lm(rows: datasets.DatasetDict, tokenizer, task: TaskConfig) -> datasets.DatasetDict:
    """``input_ids``, ``labels`` (-100 on the prompt), ``length``, ``choice``, ``prompt_length`` of every row."""
    if task.format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"task.format=chat needs a chat template, and the tokenizer of this model has none "
                          f"({type(tokenizer).__name__}): use a chat model (e.g. model=smollm2_135m) or "
                          f"task.format=prompt_completion")
    choices = choice_token_ids(tokenizer, task)
    limit, bos = task.max_seq_length, tokenizer.bos_token_id
    encoded = {k: _encode(tokenizer, task, ds) for k, ds in rows.items()}
    over = {k: [i for i, (p, c) in enumerate(zip(*e, strict=True)) if len(p) + len(c) > limit]
            for k, e in encoded.items()}
    counts = " and ".join(f"{len(over[k])} of {rows[k].num_rows} {SPLIT_NAMES[k]}" for k in rows)
    if any(over.values()):
        longest = max(len(p) + len(c) for k, e in encoded.items() for p, c in zip(*e, strict=True))
        if task.truncation == "error":
            raise ConfigError(f"{counts} examples are longer than task.max_seq_length={limit} tokens (prompt + "
                              f"completion; the longest {longest}): raise task.max_seq_length, or set "
                              f"task.truncation=left to cut their prompts from the left (never the completion)")
        cut = [len(c) for e in encoded.values() for c in e[1] if len(c) > limit - 1]
        if cut:
            raise ConfigError(f"{len(cut)} examples have a completion of more than task.max_seq_length - 1 = "
                              f"{limit - 1} tokens (the longest {max(cut)}), which task.truncation=left cannot fit "
                              f"(it cuts prompts only): raise task.max_seq_length")
        print(f"rank-sweep: note: cut the prompts of {counts} examples from the left to fit task.max_seq_length="
              f"{limit} (task.truncation=left)", file=sys.stderr, flush=True)
    out = {}
    for k, (prompts, completions) in encoded.items():
        if choices is not None and task.format != "chat":
            for i, (c, y) in enumerate(zip(completions, rows[k]["choice"], strict=True)):
                if y >= 0 and c[: len(choices[y])] != choices[y]:
                    raise ConfigError(f"task.choices {task.choices[y]!r} tokenizes differently inside the completion "
                                      f"of {SPLIT_NAMES[k]} example {i}: choice scoring and training would disagree")
        ids, labels, plen = [], [], []
        for p, c in zip(prompts, completions, strict=True):
            keep = limit - len(c)
            if len(p) > keep:
                p = p[:1] + p[len(p) - keep + 1:] if p[0] == bos and keep > 1 else p[len(p) - keep:]
            ids.append(p + c)
            labels.append([IGNORE] * len(p) + c)
            plen.append(len(p))
        out[k] = datasets.Dataset.from_dict({"input_ids": ids, "labels": labels, "length": [len(x) for x in ids],
                                             "choice": list(rows[k]["choice"]), "prompt_length": plen})
    out = datasets.DatasetDict(out)
    out.holdout_info = getattr(rows, "holdout_info", None)  # where the holdout split came from (train.holdout)
    return out


class LeftPadCollator:
    """Left-pads ``input_ids`` (``pad_id``) and ``labels`` (-100); ``position_ids`` count real tokens only."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, width - n:] = torch.as_tensor(f["input_ids"])
            mask[i, width - n:] = 1
            if "labels" in f:
                labels[i, width - n:] = torch.as_tensor(f["labels"])
        batch = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        if any("labels" in f for f in features):
            batch["labels"] = labels
        return batch


class CausalDataModule(GlueDataModule):
    """The classifier's data module (seeded, length-grouped training order; validation in dev-set order) with
    left padding, the choices' token ids and the dev set's gold choices (-1: none)."""

    def __init__(self, tokenized: datasets.DatasetDict, tokenizer, task: TaskConfig, **kw):
        super().__init__(tokenized, tokenizer, **kw)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.collator = LeftPadCollator(self.pad_id)
        self.choice_ids = choice_token_ids(tokenizer, task)
        self.val_choice = np.asarray(tokenized["validation"]["choice"], dtype=np.int64)

    def _model_columns(self, ds: datasets.Dataset) -> datasets.Dataset:
        return ds.select_columns(["input_ids", "labels"])

    def prompt_batch(self, n: int = 8) -> dict[str, torch.Tensor]:
        """The prompts of the first ``n`` dev examples, left-padded: what generation continues."""
        val = self.tokenized["validation"].select(range(min(n, self.tokenized["validation"].num_rows)))
        return self.collator([{"input_ids": ids[:k]} for ids, k in zip(val["input_ids"], val["prompt_length"],
                                                                        strict=True)])
