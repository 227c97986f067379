"""Tokenize a task's splits and serve them to Lightning with dynamic padding.

    tokenized = tokenize_splits(splits, tokenizer, cfg.task)
    dm = GlueDataModule(tokenized, tokenizer, batch_size=32, eval_batch_size=128, group_by_length=True, seed=0)

Training batches are drawn in a seeded order, grouped by length (``trainer.group_by_length``);
validation keeps the original order, so predictions line up with ``label_arrays``; so does the held-out
split (``holdout_dataloader``), which no Lightning hook reads.
"""

from __future__ import annotations

import math

import datasets
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from rank_sweep.config import TaskConfig

try:
    from transformers.trainer_pt_utils import LengthGroupedSampler
except ImportError:  # pragma: no cover - older/newer transformers without it
    LengthGroupedSampler = None


def tokenize_splits(splits: datasets.DatasetDict, tokenizer, task: TaskConfig) -> datasets.DatasetDict:
    """Tokenize without padding: ``input_ids``, ``attention_mask`` (``token_type_ids``), ``labels``, ``length``."""
    fields = list(task.text_fields)
    max_len = task.max_seq_length

    def encode(batch):
        enc = tokenizer(*[batch[f] for f in fields], truncation=True, max_length=max_len, padding=False)
        out = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        out["labels"] = batch["label"]
        out["length"] = [len(ids) for ids in enc["input_ids"]]
        return out

    out = datasets.DatasetDict(
        {
            name: ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"tokenizing {name}")
            for name, ds in splits.items()
        }
    )
    out.holdout_info = getattr(splits, "holdout_info", None)  # where the holdout split came from (train.holdout)
    return out


class _LengthGroupedSampler(torch.utils.data.Sampler):
    """Fallback: shuffle with the generator, sort megabatches of 50*batch_size by length."""

    def __init__(self, batch_size: int, lengths: list[int], generator: torch.Generator):
        self.batch_size, self.lengths, self.generator = batch_size, lengths, generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        idx = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        size = 50 * self.batch_size
        for i in range(0, len(idx), size):
            yield from sorted(idx[i : i + size], key=lambda j: self.lengths[j], reverse=True)


class GlueDataModule(pl.LightningDataModule):
    """Serves tokenized splits with dynamic padding; training order is seeded."""

    def __init__(
        self,
        tokenized: datasets.DatasetDict,
        tokenizer,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        group_by_length: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        self.tokenized = tokenized
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.group_by_length = group_by_length
        self.seed = seed
        self.collator = DataCollatorWithPadding(tokenizer)

    def _model_columns(self, ds: datasets.Dataset) -> datasets.Dataset:
        return ds.select_columns([c for c in ds.column_names if c != "length"])

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.tokenized["train"].num_rows / self.batch_size)

    def train_dataloader(self) -> DataLoader:
        ds = self.tokenized["train"]
        generator = torch.Generator().manual_seed(self.seed)
        if self.group_by_length:
            lengths = list(ds["length"])
            if LengthGroupedSampler is not None:
                sampler = LengthGroupedSampler(self.batch_size, lengths=lengths, generator=generator)
            else:  # pragma: no cover - depends on the installed transformers
                sampler = _LengthGroupedSampler(self.batch_size, lengths, generator)
            return DataLoader(
                self._model_columns(ds),
                batch_size=self.batch_size,
                sampler=sampler,
                collate_fn=self.collator,
                num_workers=0,
            )
        return DataLoader(
            self._model_columns(ds),
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=self.collator,
            num_workers=0,
        )

    def val_dataloader(self) -> DataLoader:
        # Original order (predictions line up with label_arrays); padding is per batch.
        return self._eval_loader("validation")

    def holdout_dataloader(self) -> DataLoader | None:
        """The held-out split in its order (``rank_sweep.train.holdout``), or None when there is none.
        Not a Lightning hook: only the trial's one pass after the fit reads it."""
        return self._eval_loader("holdout") if "holdout" in self.tokenized else None

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(
            self._model_columns(self.tokenized[split]),
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self.collator,
            num_workers=0,
        )
