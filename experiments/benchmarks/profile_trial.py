"""Where a trial's time goes on CPU: the numbers behind the README's "Profile" section.

    python experiments/benchmarks/profile_trial.py [--out profile.json]

1. Phases of one quick-mode trial (LoRA r=8 on Wq,Wv), timed by Lightning hooks: forward (training_step),
   backward, optimizer, the gap between steps (data loading + loop), validation, set-up, and after fit
   (spectra + MLflow); plus the train dataloader alone.
2. torch.profiler over LoRA and full fine-tuning steps at the bench's fixed batch (32 x 64, bf16 autocast):
   self time per op category and phase (forward / backward / optimizer); in backward, matmuls that make
   weight gradients (LoRA skips them for frozen weights) apart from those that make activation gradients.
3. Step times of variants (dropout off, LoRA dropout off, embeddings frozen), interleaved rounds.
4. bf16 matmul FLOP/s at the model's shapes against the square products the bench calls the peak.

CPU only; other processes on the machine distort it: the load averages are recorded.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict

import lightning.pytorch as pl
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from experiments.benchmarks.bench import MODES, base_cfg, fixed_batch, median_time, step_time  # noqa: E402
from rank_sweep.config import ModelConfig  # noqa: E402
from rank_sweep.train import batches  # noqa: E402
from rank_sweep.train.loading import WorkerCache  # noqa: E402
from rank_sweep.train.trial import prepare, run_trial  # noqa: E402

NO_KERNEL = {f"aten::{n}" for n in ("view", "reshape", "_reshape_alias", "t", "transpose", "expand", "as_strided",
                                      "slice", "select", "unsqueeze", "squeeze", "permute", "detach", "alias",
                                      "empty", "empty_like", "empty_strided", "_unsafe_view", "split", "chunk",
                                      "narrow", "resize_", "lift_fresh", "result_type", "is_nonzero", "item",
                                      "_local_scalar_dense", "set_", "contiguous", "unbind", "split_with_sizes")}


class PhaseTimer(pl.Callback):
    def __init__(self):
        self.t = defaultdict(float)
        self.last_end = None
        self.steps = 0

    def _now(self):
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        self.last_end = self._now()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = self._now()
        if self.last_end is not None:
            self.t["between steps (data loading + loop)"] += now - self.last_end
        self.t0 = now

    def on_before_backward(self, trainer, pl_module, loss):
        now = self._now()
        self.t["forward (training_step)"] += now - self.t0
        self.t1 = now

    def on_after_backward(self, trainer, pl_module):
        now = self._now()
        self.t["backward"] += now - self.t1
        self.t2 = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = self._now()
        self.t["optimizer step + zero_grad"] += now - self.t2
        self.last_end = now
        self.steps += 1

    def on_validation_start(self, trainer, pl_module):
        self.tv = self._now()
        self.last_end = None

    def on_validation_end(self, trainer, pl_module):
        self.t["validation"] += self._now() - self.tv


def phases(args, out: dict) -> None:
    tmp = tempfile.mkdtemp(prefix="rank_sweep_profile_")
    cache = WorkerCache()
    cfg = base_cfg(args, tmp, precision="bf16-mixed")
    run_trial(cfg, cache=cache)  # warm the cache, as the bench's timed trials are
    rows = []
    for _ in range(args.repeats):
        timer = PhaseTimer()
        t = time.perf_counter()
        r = run_trial(cfg, cache=cache, callbacks=[timer])
        total = time.perf_counter() - t
        row = {"total": total, "set-up (before fit)": r.setup_seconds, **timer.t}
        row["after fit (spectra, MLflow)"] = total - r.setup_seconds - r.train_seconds
        row["fit: other (Lightning start/end, epoch hooks)"] = r.train_seconds - sum(timer.t.values())
        rows.append(row)
    med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    out["trial_phases_seconds"] = med
    out["trial_phases_share"] = {k: v / med["total"] for k, v in med.items() if k != "total"}
    out["train_steps"] = r.train_steps

    tok, _, tokenized, *_ = prepare(cfg, cache)
    dm = batches.GlueDataModule(tokenized, tok, batch_size=cfg.trainer.batch_size, seed=cfg.seed)

    def load():
        for _ in dm.train_dataloader():
            pass

    out["train_dataloader_epoch_seconds"] = median_time(load, 3)
    lengths = [int(b["input_ids"].shape[1]) for b in dm.train_dataloader()]
    out["train_padded_length_mean"] = statistics.mean(lengths)


MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation"}
KEYWORDS = (("dropout", "dropout (incl. its RNG, bernoulli_)"), ("bernoulli", "dropout (incl. its RNG, bernoulli_)"),
            ("softmax", "softmax"), ("layer_norm", "layer_norm"), ("gelu", "gelu"), ("embedding", "embedding"),
            ("cross_entropy", "loss"), ("nll_loss", "loss"))


def category(ev) -> str:
    """An op's category: matmuls by name; else the first of its own name and its callers' names that names
    dropout, softmax, LayerNorm, GELU, embedding or the loss; else casts (autocast's bf16 copies) or other."""
    if ev.name in MATMUL:
        return "matmul"
    node = ev
    while node is not None:
        n = node.name.lower()
        for key, cat in KEYWORDS:
            if key in n:
                return cat
        node = node.cpu_parent
    if ev.name in ("aten::copy_", "aten::_to_copy", "aten::to"):
        return "dtype casts (autocast)"
    if ev.name.startswith("aten::_foreach") or ev.name.startswith("aten::_fused_adam"):
        return "optimizer math"
    return "other ops" if ev.name.startswith("aten::") else "autograd/python glue"


def op_profile(model, batch, steps: int, tokens: int) -> dict:
    """Self CPU time per step by phase/category and the top ops by name, over ``steps`` profiled steps."""
    from torch.profiler import ProfilerActivity, profile, record_function

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()

    def step():
        with record_function("phase:forward"), torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        with record_function("phase:backward"):
            loss.backward()
        with record_function("phase:optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)

    step()
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - t) / steps
    by_cat: dict = defaultdict(float)
    by_phase: dict = defaultdict(float)
    kernels = 0  # leaf ops that compute (a GPU would launch a kernel for each): the launch-bound floor
    for ev in prof.events():
        if ev.name.startswith("phase:"):
            continue
        if ev.name.startswith("aten::") and not ev.cpu_children and ev.name not in NO_KERNEL:
            kernels += 1
        p, anc, back = "forward", ev.cpu_parent, "Backward" in ev.name or "backward" in ev.name
        while anc is not None:
            if anc.name.startswith("phase:"):
                p = anc.name[6:]
                break
            back = back or "Backward" in anc.name or "backward" in anc.name
            anc = anc.cpu_parent
        if back and p == "forward":
            p = "backward"
        cat = category(ev)
        if cat == "matmul" and p == "backward" and ev.name == "aten::mm" and len(ev.input_shapes) >= 2:
            a, b = ev.input_shapes[0], ev.input_shapes[1]
            if len(a) == 2 and len(b) == 2 and a[1] == b[0] == tokens:
                cat = "matmul (weight gradients)"
        t_self = ev.self_cpu_time_total / 1e6 / steps
        by_cat[cat] += t_self
        by_phase[p] += t_self
    total = sum(by_cat.values())
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
    return {"wall_per_step": wall, "self_per_step": total, "compute_ops_per_step": kernels / steps,
            "phase_share": {k: v / total for k, v in by_phase.items()},
            "category_share": {k: v / total for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
            "top_ops_share": {e.key: e.self_cpu_time_total / 1e6 / steps / total for e in top}}


def variants(cache, cfg, batch, rounds: int) -> dict:
    """Step times (median over interleaved rounds, so a load change hits all alike) of LoRA and full
    fine-tuning with and without dropout, and of full fine-tuning with the embeddings frozen."""
    _, lora_model, *_ = prepare(cfg, cache)
    full_cfg = copy.deepcopy(cfg)
    full_cfg.lora.full_finetune = True
    _, full_model, *_ = prepare(full_cfg, cache)

    def no_dropout(model, only_lora=False):
        model = copy.deepcopy(model)
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Dropout) and (not only_lora or "lora_dropout" in name):
                mod.p = 0.0
        return model

    frozen_emb = copy.deepcopy(full_model)
    for name, p in frozen_emb.named_parameters():
        if "embeddings" in name:
            p.requires_grad_(False)
    models = {"lora": lora_model, "full": full_model, "lora, no dropout": no_dropout(lora_model),
              "lora, no LoRA dropout": no_dropout(lora_model, only_lora=True),
              "full, no dropout": no_dropout(full_model), "full, embeddings frozen": frozen_emb}
    times: dict = defaultdict(list)
    for _ in range(rounds):
        for name, model in models.items():
            times[name].append(step_time(model, batch, True, 3)[0])
    return {k: statistics.median(v) for k, v in times.items()}


def matmul_rates(out: dict) -> None:
    def rate(m, k, n, reps=20):
        a, b = torch.randn(m, k, dtype=torch.bfloat16), torch.randn(k, n, dtype=torch.bfloat16)
        a @ b
        return 2 * m * k * n / median_time(lambda: a @ b, reps) / 1e12

    out["matmul_tflops_bf16"] = {
        "2048^3 (the bench's peak)": rate(2048, 2048, 2048, 5),
        "4096^3": rate(4096, 4096, 4096, 3),
        "2048x384 @ 384x384 (Wq/Wk/Wv/Wo)": rate(2048, 384, 384),
        "2048x384 @ 384x1536 (FFN up)": rate(2048, 384, 1536),
        "2048x1536 @ 1536x384 (FFN down)": rate(2048, 1536, 384),
        "384x2048 @ 2048x384 (weight gradient)": rate(384, 2048, 384),
        "2048x384 @ 384x8 (LoRA A)": rate(2048, 384, 8),
        "12x64x64 @ 12x64x64 per sequence (attention, bmm)": 0.0,
    }
    q = torch.randn(32 * 12, 64, 32, dtype=torch.bfloat16)
    k = torch.randn(32 * 12, 32, 64, dtype=torch.bfloat16)
    out["matmul_tflops_bf16"]["12x64x64 @ 12x64x64 per sequence (attention, bmm)"] = \
        2 * 32 * 12 * 64 * 32 * 64 / median_time(lambda: torch.bmm(q, k), 20) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="profile.json")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"))
    args = ap.parse_args()
    m = MODES["quick"]
    args.train_samples, args.eval_samples, args.epochs, args.lr = m["train"], m["eval"], m["epochs"], m["lr"]
    args.device, args.model = "cpu", ModelConfig().name_or_path
    out: dict = {"load_average_at_start": os.getloadavg()[0], "threads": torch.get_num_threads()}
    phases(args, out)
    print(json.dumps(out, indent=1), flush=True)

    cache = WorkerCache()
    cfg = base_cfg(args, tempfile.mkdtemp(), precision="bf16-mixed")
    tok, lora_model, *_ = prepare(cfg, cache)
    full_cfg = copy.deepcopy(cfg)
    full_cfg.lora.full_finetune = True
    _, full_model, *_ = prepare(full_cfg, cache)
    batch = fixed_batch(tok)
    tokens = batch["input_ids"].numel()
    out["ops_lora"] = op_profile(lora_model, batch, args.steps, tokens)
    out["ops_full"] = op_profile(full_model, batch, args.steps, tokens)
    out["step_seconds_variants"] = variants(cache, cfg, batch, args.rounds)
    matmul_rates(out)
    out["load_average_at_end"] = os.getloadavg()[0]
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k.startswith(("ops", "matmul", "load"))}, indent=1))


if __name__ == "__main__":
    main()
