"""What a trial costs in memory: measured over the fit, and computed from the tensors it trained.

    with PeakMemory(accelerator) as peak:      # around trainer.fit
        trainer.fit(...)
    metrics = {**peak.metrics(), **state_memory(model, optimizer), "adapter_mb": adapter_mb(model)}

Metrics (MiB, 2**20 bytes; a trial logs them all, the summary shows ``peak_memory_mb`` and ``adapter_mb``):

- ``peak_memory_mb``: on CUDA ``torch.cuda.max_memory_allocated`` over the fit (its counter is reset when the
  fit starts): the tensors the model, its gradients, the optimizer and the activations held at the worst
  step. On CPU the process's peak resident memory (RSS) over the fit, sampled from ``/proc/self/statm``
  every 20 ms by a thread (the kernel's ``ru_maxrss`` is the peak over the whole process life, so a second
  trial in the same worker would report the first one's peak: it is logged as ``process_peak_rss_mb`` and
  not used). The RSS counts everything the process holds (Python, the libraries, the tokenized data, the
  cached pristine base), so on CPU compare it between trials of one worker and configuration, and read
  ``fit_memory_mb`` (peak minus the RSS before the fit) for what the fit added.
- ``weights_mb``: every parameter and buffer of the model as stored (a 4-bit weight counts its packed bytes
  and its quantization constants), ``gradient_mb``: the trainable parameters' bytes (one gradient each, in
  their dtype), ``optimizer_state_mb``: the tensors in the optimizer's state after the fit (AdamW: two per
  trainable parameter), all computed exactly.
- ``adapter_mb``: the adapter's size on disk (PEFT's ``save_pretrained`` into a temporary folder, every file
  counted); without an adapter (full fine-tuning, the head alone) the bytes of the trainable tensors, what a
  checkpoint of the trained part holds.
"""

from __future__ import annotations

import os
import resource
import tempfile
import threading

import torch

MB = float(2 ** 20)
# what a study stores on each Optuna trial (user attrs), for the summary, select and the memory budget
MEMORY_ATTRS = ("peak_memory_mb", "fit_memory_mb", "optimizer_state_mb", "adapter_mb")
INTERVAL_S = 0.02


def rss_bytes() -> int | None:
    """This process's resident memory now (Linux ``/proc/self/statm``), else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def uses_cuda(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()


class PeakMemory:
    """Peak memory over a ``with`` block: CUDA's allocator peak, else the sampled peak RSS of the process."""

    def __init__(self, accelerator: str = "cpu", interval: float = INTERVAL_S):
        self.cuda = uses_cuda(accelerator)
        self.interval = interval
        self.before = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            now = rss_bytes() or 0
            self.peak = max(self.peak, now)

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = self.peak = torch.cuda.memory_allocated()
        else:
            self.before = self.peak = rss_bytes() or 0
            self._thread = threading.Thread(target=self._sample, name="rank-sweep-peak-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = max(self.peak, torch.cuda.max_memory_allocated())
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, rss_bytes() or 0)

    def metrics(self) -> dict[str, float]:
        out = {"peak_memory_mb": self.peak / MB, "fit_memory_mb": (self.peak - self.before) / MB,
               "memory_is_cuda": float(self.cuda)}
        if not self.cuda:  # the kernel's peak over the process life (kB on Linux): for reference only
            out["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB
        return out


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _quant_state_bytes(p) -> int:
    """The constants a bitsandbytes 4-bit weight keeps beside its packed bytes (absmax and its own state)."""
    state = getattr(p, "quant_state", None)
    if state is None:
        return 0
    total = 0
    for value in vars(state).values():
        if isinstance(value, torch.Tensor):
            total += tensor_bytes(value)
        elif hasattr(value, "absmax"):  # the nested state of double quantization
            total += sum(tensor_bytes(v) for v in vars(value).values() if isinstance(v, torch.Tensor))
    return total


def state_memory(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
    """``weights_mb``, ``gradient_mb`` and ``optimizer_state_mb`` computed from the tensors (module doc)."""
    seen: set[int] = set()
    weights = grads = 0
    for p in model.parameters():
        if id(p) in seen:  # tied weights count once
            continue
        seen.add(id(p))
        weights += tensor_bytes(p) + _quant_state_bytes(p)
        if p.requires_grad:
            grads += tensor_bytes(p)
    weights += sum(tensor_bytes(b) for b in model.buffers())
    state = 0
    if optimizer is not None:
        for values in optimizer.state.values():
            state += sum(tensor_bytes(v) for v in values.values() if isinstance(v, torch.Tensor))
    return {"weights_mb": weights / MB, "gradient_mb": grads / MB, "optimizer_state_mb": state / MB}


def adapter_mb(model: torch.nn.Module) -> float:
    """The adapter's size on disk (PEFT's own files), or the trainable tensors' bytes without an adapter."""
    if hasattr(model, "peft_config") and hasattr(model, "save_pretrained"):
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(tmp) for f in files) / MB
    return sum(tensor_bytes(p) for p in model.parameters() if p.requires_grad) / MB
