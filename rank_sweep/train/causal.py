"""Causal-LM trials: the LightningModule, the zero-shot reference, and what a causal trial records.

    rank-sweep-trial task=sst2_lm model=smollm2_135m lora.r=4 lora.targets=[Wq,Wv]
    rank-sweep experiment=quickstart_lm

:class:`CausalLM` trains on completion tokens only (``labels`` hold -100 on the prompt, see
:mod:`rank_sweep.train.lm_data`) and runs the LM head on the last positions of each left-padded batch only
(``logits_to_keep``: the completion's), so a short answer costs one head projection per answer token, not per
prompt token. Validation gathers each example's completion NLL sum and token count and, with
``task.choices``, the log-likelihood of every choice after the prompt (lm-eval's multiple choice: the sum over
the choice's tokens; one-token choices are read off the same forward pass, longer ones get one more pass per
choice); :mod:`rank_sweep.train.metrics` scores them. :func:`zero_shot` scores the base model the same way
once per worker: that is a causal task's baseline (``baseline_score``, ``zero_shot/<metric>``) and what
"not learning" is tested against.
"""

from __future__ import annotations

import json
import os
import tempfile

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F

from rank_sweep.config import RunConfig
from rank_sweep.config.lm_task import CHOICE_METRICS, EXACT_MATCH
from rank_sweep.errors import ConfigError
from rank_sweep.train import answers
from rank_sweep.train.lm_data import IGNORE, CausalDataModule
from rank_sweep.train.metrics import Reference, causal_metrics, causal_outputs
from rank_sweep.train.model import FineTuning

# MLflow artifact: per-example nll, tokens, choice_ll, choice of the scored epoch; with exact_match also the
# generated text, the answer read from it, the gold completion and the 0/1 match (strings: np.load reads them
# without pickle)
DETAILS = "predictions/val_lm.npz"
ANSWERS = "predictions/answers.jsonl"  # exact_match: the same answers, one JSON line per dev example


def check_causal_run(cfg: RunConfig) -> None:
    """What a causal LM task cannot be combined with, refused before anything loads."""
    if cfg.lora.head_only or cfg.search.head_reference:  # (None, the default, is off for a causal LM)
        key = "lora.head_only" if cfg.lora.head_only else "search.head_reference"
        raise ConfigError(f"{key}=true is not valid for causal LM task {cfg.task.name}: its head is the (tied) LM "
                          f"head, and its reference is the base model before training (baseline_score)")
    if cfg.search.strategy == "nested":
        raise ConfigError(f"search=nested is not supported on causal LM task {cfg.task.name} yet: use search=ladder "
                          f"(the screen scores a classifier's truncated ranks)")
    if cfg.method.name != "lora" or cfg.search.reference_methods:
        raise ConfigError(f"method={cfg.method.name} / search.reference_methods are not supported on causal LM task "
                          f"{cfg.task.name} yet: use method=lora (lora.full_finetune=true for full fine-tuning)")


def _logits(model, batch: dict, keep: int) -> torch.Tensor:
    """Logits of the last ``keep`` positions (all of them for a model whose forward has no logits_to_keep)."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    try:
        return model(**inputs, logits_to_keep=keep, use_cache=False).logits[:, -keep:]
    except TypeError:
        return model(**inputs, use_cache=False).logits[:, -keep:]


def completion_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-probs of every vocabulary token at the completion positions ``(B, L, V)``, the target ids
    ``(B, L)`` with -100 where a row's completion is shorter, the log-prob of each target ``(B, L)``, 0 there)."""
    labels = batch["labels"]
    width = int((labels != IGNORE).sum(1).max())
    logp = _logits(model, batch, width + 1)[:, :-1].float().log_softmax(-1)
    targets = labels[:, labels.shape[1] - width:]
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (targets != IGNORE)
    return logp, targets, picked


class CausalLM(FineTuning):
    """A causal LM (with or without a PEFT adapter) trained on completions; ``val/<metric>`` per epoch. A sibling
    of :class:`~rank_sweep.train.model.SequenceClassifier`: the optimizer and the per-epoch record are
    :class:`~rank_sweep.train.model.FineTuning`'s."""

    def __init__(self, model: torch.nn.Module, task, trainer_cfg):
        super().__init__(model, task, trainer_cfg)
        self._parts: list[tuple] = []
        self._texts: list[list[tuple]] = []  # exact_match: (generated, answer, gold, same) per dev example
        self.choice_ids: list[list[int]] | None = None
        self.val_choice: np.ndarray | None = None
        self.pad_id = 0
        self.details: dict[int, dict[str, np.ndarray]] = {}  # epoch -> per-example values, for the record

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        self.choice_ids, self.val_choice, self.pad_id = dm.choice_ids, dm.val_choice, dm.pad_id

    def training_step(self, batch, batch_idx):
        labels = batch["labels"]
        width = int((labels != IGNORE).sum(1).max())
        logits = _logits(self.model, batch, width + 1)[:, :-1]
        targets = labels[:, labels.shape[1] - width:]
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        return self.checked_loss(loss, labels.shape[0])

    def validation_step(self, batch, batch_idx):
        logp, targets, picked = completion_logprobs(self.model, batch)
        lengths = (targets != IGNORE).sum(1)
        scores = None
        if self.choice_ids is not None:
            if all(len(c) == 1 for c in self.choice_ids):  # read off this pass: the first completion position
                first = logp[torch.arange(len(lengths)), targets.shape[1] - lengths]
                scores = first[:, [c[0] for c in self.choice_ids]]
            else:
                scores = self._choice_scores(batch)
        self._parts.append(tuple(x.detach().cpu().numpy() if x is not None else None
                                 for x in (-picked.sum(1), lengths, scores)))
        if EXACT_MATCH in self.task.metrics:
            self._texts.append(self._generate_answers(batch))

    def _prompts_and_golds(self, batch) -> tuple[dict, list[list[int]]]:
        """Each row's prompt (left-padded, as a batch) and its completion's token ids."""
        real = batch["attention_mask"].bool()
        completion = (batch["labels"] != IGNORE).sum(1)
        prompts, golds = [], []
        for i in range(len(real)):
            ids = batch["input_ids"][i][real[i]].tolist()
            cut = len(ids) - int(completion[i])
            prompts.append({"input_ids": ids[:cut]})
            golds.append(ids[cut:])
        sub = self.trainer.datamodule.collator(prompts)
        return {k: v.to(batch["input_ids"].device) for k, v in sub.items()}, golds

    @torch.no_grad()
    def _generate_answers(self, batch) -> list[tuple[str, str, str, bool]]:
        """Greedy generation after each prompt: (generated text, its answer, the gold completion, exact match)."""
        tok = self.trainer.datamodule.tokenizer
        prompts, golds = self._prompts_and_golds(batch)
        new = generate(self.model, prompts, self.task.max_new_tokens, self.pad_id, tok.eos_token_id)
        out = []
        for ids, gold_ids in zip(new.tolist(), golds, strict=True):
            text = tok.decode(ids, skip_special_tokens=True)
            gold = tok.decode(gold_ids, skip_special_tokens=True)
            answer, same = answers.exact_match(text, gold, self.task.answer_pattern)
            out.append((text, answer, gold, same))
        return out

    @torch.no_grad()
    def _choice_scores(self, batch) -> torch.Tensor:
        """Log-likelihood of every choice after each row's prompt: one more forward of B x K rows."""
        real = batch["attention_mask"].bool()
        completion = (batch["labels"] != IGNORE).sum(1)
        rows = []
        for i in range(len(real)):
            prompt = batch["input_ids"][i][real[i]][: int(real[i].sum() - completion[i])].tolist()
            rows += [{"input_ids": prompt + c, "labels": [IGNORE] * len(prompt) + c} for c in self.choice_ids]
        sub = self.trainer.datamodule.collator(rows)
        sub = {k: v.to(batch["input_ids"].device) for k, v in sub.items()}
        return completion_logprobs(self.model, sub)[2].sum(1).view(len(real), len(self.choice_ids))

    def _collect(self, choice: np.ndarray | None) -> tuple[dict, np.ndarray, np.ndarray, dict]:
        """The pass gathered by :meth:`validation_step` (then emptied), scored against the gold ``choice`` of its
        examples: (metrics, outputs and labels for the paired statistics, per-example details)."""
        nll, tokens, scores = (np.concatenate(p) if p[0] is not None else None for p in zip(*self._parts, strict=True))
        texts = [row for part in self._texts for row in part]
        self._parts, self._texts = [], []
        choice = choice if scores is not None else None
        exact = np.asarray([same for *_, same in texts], dtype=np.float64) if texts else None
        metrics = causal_metrics(self.task, nll, tokens, scores, choice, exact)
        outputs, labels = causal_outputs(self.task, nll, tokens, scores, choice, exact)
        details = {"nll": nll, "tokens": tokens}
        if scores is not None:
            details.update(choice_ll=scores, choice=choice)
        if texts:  # what was judged, readable: the generation, the answer read from it, the gold completion
            generated, answer, gold, _ = (np.asarray(col, dtype=str) for col in zip(*texts, strict=True))
            details.update(generated=generated, answer=answer, gold=gold, exact_match=exact)
        return metrics, outputs, labels, details

    def score(self, loader, choice: np.ndarray, precision: str) -> tuple[dict, np.ndarray, np.ndarray]:
        """Another split (the held-out one, :mod:`rank_sweep.train.holdout`) scored as the dev set is, after the
        fit: (metrics, outputs, labels). The validation record (history, last outputs, details) stays as it was."""
        from rank_sweep.train.holdout import evaluation

        with evaluation(self.model, precision) as device:
            for i, batch in enumerate(loader):
                self.validation_step({k: v.to(device) for k, v in batch.items()}, i)
        return self._collect(choice)[:3]

    def on_validation_epoch_end(self):
        if not self._parts:
            return
        metrics, outputs, labels, details = self._collect(self.val_choice)
        self.details[self.current_epoch] = details
        self.record_epoch(metrics, outputs, labels)

    def is_constant(self, outputs) -> bool:
        """A choice metric scores constant answers as constant; a loss has no such degenerate output."""
        if self.task.metric not in CHOICE_METRICS or outputs is None or len(outputs) == 0:
            return False
        answers = np.asarray(outputs).argmax(-1)
        return bool(np.all(answers == answers[0]))


def fit_parts(cfg: RunConfig, model, tok, tokenized) -> tuple[CausalDataModule, CausalLM]:
    """The data module and LightningModule of a causal LM trial."""
    dm = CausalDataModule(tokenized, tok, cfg.task, batch_size=cfg.trainer.batch_size,
                          eval_batch_size=cfg.trainer.eval_batch_size, group_by_length=cfg.trainer.group_by_length,
                          seed=cfg.seed)
    return dm, CausalLM(model, cfg.task, cfg.trainer)


def zero_shot(cfg: RunConfig, tok, base, tokenized, precision: str) -> Reference:
    """The base model before training, scored on the dev set as a trial scores it (same batches, precision)."""
    dm, module = fit_parts(cfg, base, tok, tokenized)
    trainer = pl.Trainer(accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices, precision=precision,
                         logger=False, enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=False)
    trainer.validate(module, datamodule=dm, verbose=False)
    base.eval()
    return Reference(module.last_outputs, module.last_labels, dict(module.last_metrics),
                     module.details[max(module.details)])


@torch.no_grad()
def generate(model, batch: dict, max_new_tokens: int, pad_id: int, eos_id: int | None = None) -> torch.Tensor:
    """Greedy continuation tokens of a left-padded prompt batch (no sampling; stops at ``eos_id`` if given)."""
    was = model.training
    model.eval()
    stop = {} if eos_id is None else {"eos_token_id": eos_id}
    out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=False,
                         max_new_tokens=max_new_tokens, pad_token_id=pad_id, **stop)
    model.train(was)
    return out[:, batch["input_ids"].shape[1]:]


def same_generation(peft_model, merged_dir: str, batch: dict, pad_id: int, max_new_tokens: int = 8) -> dict:
    """Whether the exported merged model generates the same greedy tokens as the trained (unmerged) one."""
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    a = generate(peft_model, batch, max_new_tokens, pad_id)
    b = generate(merged, batch, max_new_tokens, pad_id)
    same = a.shape == b.shape and bool((a == b).all())
    return {"export/merge_same_generation": float(same), "export/generated_tokens": float(a.numel())}


def record(cfg: RunConfig, fit, model, reference, client, run_id: str) -> dict[str, float]:
    """A causal trial's own record: the zero-shot metrics, the scored epoch's per-example values
    (:data:`DETAILS`), and with ``save_adapter`` the merged model's generation check."""
    final = {f"zero_shot/{k}": v for k, v in reference.metrics.items()} if isinstance(reference, Reference) else {}
    details = fit.module.details.get(fit.score_epoch) or fit.module.details.get(max(fit.module.details, default=0))
    if details:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, os.path.basename(DETAILS))
            np.savez_compressed(path, **details)
            client.log_artifact(run_id, path, os.path.dirname(DETAILS))
            if "generated" in details:  # the same answers as one JSON line per dev example, to read
                rows = os.path.join(tmp, os.path.basename(ANSWERS))
                with open(rows, "w") as f:
                    for i, (text, answer, gold, same) in enumerate(zip(
                            details["generated"], details["answer"], details["gold"], details["exact_match"],
                            strict=True)):
                        f.write(json.dumps({"index": i, "generated": str(text), "answer": str(answer),
                                            "gold": str(gold), "exact_match": bool(same)}) + "\n")
                client.log_artifact(run_id, rows, os.path.dirname(ANSWERS))
    merged = os.path.join(cfg.output_dir, "adapters", run_id, "merged")
    if cfg.save_adapter and os.path.isdir(merged):
        final.update(same_generation(model, merged, fit.datamodule.prompt_batch(), fit.datamodule.pad_id))
    return final
