"""A GGUF checkpoint as a Hugging Face folder: converted once, cached, then loaded offline like any folder.

    folder = converted_folder("/path/to/SmolLM2-135M-Instruct.Q4_1.gguf")   # converts on the first call only
    AutoModelForCausalLM.from_pretrained(folder)

transformers reads GGUF (``from_pretrained(dir, gguf_file=name)``, with the ``gguf`` package) and dequantizes
it; that takes ~20 s for SmolLM2-135M, so the result (float32 safetensors, the tokenizer and its chat template)
is saved once under :func:`cache_dir` ``/gguf/<file stem>-<first 16 hex of the file's sha256>/``. The cache is
``$RANK_SWEEP_CACHE``, else ``$XDG_CACHE_HOME/rank_sweep``, else ``~/.cache/rank_sweep``; delete the folder to
convert again. Several workers converting at once each write a temporary folder and rename it into place: the
first to finish wins, the others use its folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

from rank_sweep.errors import ConfigError, first_line

DONE = "rank_sweep_converted"  # written last: a folder without it is an interrupted conversion


def cache_dir() -> str:
    """Where rank_sweep keeps what it derives from installed files (converted GGUF checkpoints)."""
    root = os.environ.get("RANK_SWEEP_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rank_sweep")
    return root


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def converted_folder(gguf_path: str) -> str:
    """The Hugging Face folder of ``gguf_path``, converting it first if the cache has none."""
    gguf_path = os.path.abspath(os.path.expanduser(gguf_path))
    if not os.path.isfile(gguf_path):
        raise ConfigError(f"GGUF file {gguf_path!r} does not exist: give the path of a .gguf checkpoint")
    stem = os.path.basename(gguf_path)[: -len(".gguf")]
    target = os.path.join(cache_dir(), "gguf", f"{stem}-{_digest(gguf_path)}")
    if os.path.isfile(os.path.join(target, DONE)):
        return target
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{stem}-", dir=os.path.dirname(target))
    except OSError as e:
        raise ConfigError(f"cannot write the GGUF cache {cache_dir()!r} ({e.strerror or type(e).__name__}): set "
                          f"RANK_SWEEP_CACHE to a folder you can write") from None
    print(f"rank-sweep: converting {os.path.basename(gguf_path)} to a Hugging Face folder once (cached in "
          f"{target})", flush=True)
    try:
        _convert(gguf_path, tmp)
        open(os.path.join(tmp, DONE), "w").close()
        if os.path.isdir(target):  # an interrupted conversion, or another worker finished first
            if os.path.isfile(os.path.join(target, DONE)):
                return target
            shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except OSError as e:
        if os.path.isfile(os.path.join(target, DONE)):  # lost the race to another worker: use its folder
            return target
        raise ConfigError(f"cannot write the GGUF cache {target!r} ({e.strerror or type(e).__name__}): set "
                          f"RANK_SWEEP_CACHE to a folder you can write") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf_path: str, out: str) -> None:
    """Dequantize to float32 and save model and tokenizer as a plain (unquantized) Hugging Face folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.dirname(gguf_path), os.path.basename(gguf_path)
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except ImportError as e:
        raise ConfigError(f"cannot read GGUF file {name}: {first_line(e)[:160]} (pip install gguf)") from None
    except Exception as e:
        raise ConfigError(f"cannot convert GGUF file {gguf_path!r}: {type(e).__name__}: {first_line(e)[:160]}") from None
    # saved as plain weights: the folder must not ask for GGUF again when it is loaded
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out)
    tok.save_pretrained(out)
