"""rank_sweep.train.memory: the peak over a block, the computed weights / gradients / optimizer state, the
adapter's size on disk."""

from __future__ import annotations

import torch

from rank_sweep.train.memory import MB, PeakMemory, adapter_mb, rss_bytes, state_memory


def test_peak_rss_sees_a_tensor_allocated_and_freed_inside_the_block():
    size = 200 * 2 ** 20
    with PeakMemory("cpu", interval=0.005) as peak:
        x = torch.ones(size // 4)  # touched: resident
        del x
    m = peak.metrics()
    assert m["memory_is_cuda"] == 0.0
    assert m["fit_memory_mb"] > 150  # the 200 MiB were seen although freed before the block ended
    assert m["peak_memory_mb"] >= m["fit_memory_mb"]
    assert rss_bytes() / MB < m["peak_memory_mb"]


def test_state_memory_counts_adamw_state_and_gradients_of_trainable_tensors():
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    model(torch.randn(3, 8)).sum().backward()
    opt.step()
    m = state_memory(model, opt)
    trainable = (4 * 2 + 2) * 4  # bytes of model[1]: weight and bias, float32
    assert m["gradient_mb"] * MB == trainable
    assert m["weights_mb"] * MB == (8 * 4 + 4 + 4 * 2 + 2) * 4
    assert m["optimizer_state_mb"] * MB == 2 * trainable + 2 * 4  # exp_avg, exp_avg_sq; one step counter each


def test_adapter_size_on_disk_grows_with_rank():
    from peft import LoraConfig, get_peft_model

    def size(r):
        base = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 2))
        return adapter_mb(get_peft_model(base, LoraConfig(r=r, target_modules=["0"])))

    small, large = size(2), size(16)
    assert large > small > 0
    # safetensors: the A and B factors (r x 64 and 64 x r floats) plus a header and the config file
    assert (large - small) * MB >= (16 - 2) * 2 * 64 * 4
