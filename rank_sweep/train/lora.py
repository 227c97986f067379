"""Semantic roles -> module names, PEFT wrapping, exact parameter counts.

Users name matrices by role (Wq, Wk, Wv, Wo, Wup, Wdown, Wgate); each model
family names them differently, so a role maps to one regular expression per
family, matched against full module names. Anything that is not a role is an
explicit module name, matched as a dotted suffix; a group name (attention, qv, mlp,
all_linear: :mod:`rank_sweep.train.groups`) stands for its roles. Every pattern must match at
least one linear module, and the rank must fit every matched matrix, or a
one-line ConfigError says what the model does have.

    model = wrap(base_model, lora_cfg)          # PEFT LoRA, head trained in full
    counts = count_parameters(model, base_total)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from rank_sweep.config import LoraConfig
from rank_sweep.errors import ConfigError
from rank_sweep.train import groups

ROLES = ("Wq", "Wk", "Wv", "Wo", "Wup", "Wdown", "Wgate", "Wqkv")

_L = r"(?:.*\.)?"  # any prefix of dotted names
FAMILY_ROLES: dict[str, dict[str, str]] = {
    "bert": {
        "Wq": _L + r"attention\.self\.query",
        "Wk": _L + r"attention\.self\.key",
        "Wv": _L + r"attention\.self\.value",
        "Wo": _L + r"attention\.output\.dense",
        "Wup": _L + r"intermediate\.dense",
        "Wdown": _L + r"layer\.\d+\.output\.dense",
    },
    "deberta": {  # DeBERTa v1: q, k, v are one fused in_proj
        "Wqkv": _L + r"attention\.self\.in_proj",
        "Wo": _L + r"attention\.output\.dense",
        "Wup": _L + r"intermediate\.dense",
        "Wdown": _L + r"layer\.\d+\.output\.dense",
    },
    "deberta-v2": {
        "Wq": _L + r"attention\.self\.query_proj",
        "Wk": _L + r"attention\.self\.key_proj",
        "Wv": _L + r"attention\.self\.value_proj",
        "Wo": _L + r"attention\.output\.dense",
        "Wup": _L + r"intermediate\.dense",
        "Wdown": _L + r"layer\.\d+\.output\.dense",
    },
    "llama": {
        "Wq": _L + r"self_attn\.q_proj",
        "Wk": _L + r"self_attn\.k_proj",
        "Wv": _L + r"self_attn\.v_proj",
        "Wo": _L + r"self_attn\.o_proj",
        "Wup": _L + r"mlp\.up_proj",
        "Wdown": _L + r"mlp\.down_proj",
        "Wgate": _L + r"mlp\.gate_proj",
    },
    "distilbert": {
        "Wq": _L + r"attention\.q_lin",
        "Wk": _L + r"attention\.k_lin",
        "Wv": _L + r"attention\.v_lin",
        "Wo": _L + r"attention\.out_lin",
        "Wup": _L + r"ffn\.lin1",
        "Wdown": _L + r"ffn\.lin2",
    },
    "phi3": {  # q, k, v fused in qkv_proj; gate and up fused in gate_up_proj
        "Wqkv": _L + r"self_attn\.qkv_proj",
        "Wo": _L + r"self_attn\.o_proj",
        "Wdown": _L + r"mlp\.down_proj",
    },
    "mixtral": {  # attention only: the MLP lives in mlp.experts (see _NOT_LINEAR)
        "Wq": _L + r"self_attn\.q_proj",
        "Wk": _L + r"self_attn\.k_proj",
        "Wv": _L + r"self_attn\.v_proj",
        "Wo": _L + r"self_attn\.o_proj",
    },
    "gpt2": {
        "Wqkv": _L + r"attn\.c_attn",
        "Wo": _L + r"attn\.c_proj",
        "Wup": _L + r"mlp\.c_fc",
        "Wdown": _L + r"mlp\.c_proj",
    },
}
# model_type -> family whose module names it shares
FAMILY_OF = {
    "bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "electra": "bert", "camembert": "bert",
    "deberta-v2": "deberta-v2", "deberta": "deberta",
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "gemma": "llama",
    "gemma2": "llama", "phi3": "phi3", "mixtral": "mixtral",
    "distilbert": "distilbert",
    "gpt2": "gpt2",
}
_QKV = ("Wq", "Wk", "Wv")
# family -> role -> the one matrix that role shares with others: adapting it adapts them all, so a role
# alone is refused rather than silently widened to its neighbours
_FUSED: dict[str, dict[str, str]] = {
    "gpt2": dict.fromkeys(_QKV, "c_attn"),
    "deberta": dict.fromkeys(_QKV, "in_proj"),
    "phi3": {**dict.fromkeys(_QKV, "qkv_proj"), **dict.fromkeys(("Wgate", "Wup"), "gate_up_proj")},
}
# family -> role -> the module holding it as 3-D parameters (one slice per expert): transformers 5 stores
# Mixtral's experts this way, not as nn.Linear, so PEFT's target_modules cannot wrap them, and the counts
# (r * (d_in + d_out)) and spectra here assume one 2-D matrix per adapted module
_NOT_LINEAR: dict[str, dict[str, str]] = {
    "mixtral": dict.fromkeys(("Wup", "Wdown", "Wgate"), "mlp.experts"),
}


def _missing_role(fam: str, target: str) -> ConfigError:
    """Why ``target`` has no module of its own in family ``fam``, and what to name instead."""
    roles = FAMILY_ROLES[fam]
    fused = _FUSED.get(fam, {}).get(target)
    if fused is not None:
        parts = [r for r, m in _FUSED[fam].items() if m == fused]
        together = f"{', '.join(parts[:-1])} and {parts[-1]}"
        use = f"the module name {fused}"
        if target in _QKV and "Wqkv" in roles:
            use = f"the role Wqkv (or {use})"
        return ConfigError(
            f"lora.targets: role {target} cannot be adapted alone on {fam}: it fuses {together} "
            f"into one matrix '{fused}'; use {use}"
        )
    holder = _NOT_LINEAR.get(fam, {}).get(target)
    if holder is not None:
        return ConfigError(
            f"lora.targets: role {target} cannot be adapted on {fam}: its MLP weights are per-expert 3-D "
            f"parameters of '{holder}' (transformers 5), not linear modules LoRA can wrap; adapt the attention "
            f"roles {', '.join(roles)}"
        )
    return ConfigError(
        f"lora.targets: role {target} does not exist in model family {fam}: valid roles are {', '.join(roles)}"
    )


def family_of(model: nn.Module, override: str | None = None) -> str:
    model_type = override or getattr(getattr(model, "config", None), "model_type", None)
    if model_type in FAMILY_ROLES:
        return model_type
    family = FAMILY_OF.get(model_type or "")
    if family is None:
        raise ConfigError(
            f"model family {model_type!r} has no role map: name modules explicitly (lora.targets=[query,value]) "
            f"or set model.family to one of {', '.join(FAMILY_ROLES)}"
        )
    return family


def _linear_modules(model: nn.Module) -> dict[str, tuple[int, int]]:
    """name -> (d_in, d_out) of every linear layer (nn.Linear and GPT-2's Conv1D)."""
    out: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            out[name] = (module.in_features, module.out_features)
        elif type(module).__name__ == "Conv1D" and hasattr(module, "weight"):
            d_in, d_out = module.weight.shape  # Conv1D stores (in, out)
            out[name] = (int(d_in), int(d_out))
    return out


def _short(names) -> str:
    """Distinct linear module names with layer indices folded, for error messages."""
    folded = sorted({re.sub(r"\.\d+\.", ".N.", n) for n in names})
    return ", ".join(folded)


@dataclass(frozen=True)
class TargetPlan:
    """Which modules a target set adapts, with their shapes."""

    pattern: str  # one regex for PEFT's target_modules (full match)
    modules: dict[str, tuple[int, int]]  # name -> (d_in, d_out)
    role_of: dict[str, str]  # module name -> role or explicit name
    targets: tuple[str, ...] = ()  # the target set with its groups (mlp, attention, ...) resolved to roles
    notes: tuple[str, ...] = ()  # one line per group that lost a role this family lacks

    def lora_params(self, r: int) -> int:
        """The closed form: sum of r * (d_in + d_out) over adapted matrices."""
        return sum(r * (d_in + d_out) for d_in, d_out in self.modules.values())


def plan_targets(model: nn.Module, targets: list[str], family: str | None = None) -> TargetPlan:
    """Resolve roles / module names to the model's linear modules, or explain why not."""
    linear = _linear_modules(model)
    head = head_names(model)
    linear = {n: s for n, s in linear.items() if not any(n == h or n.startswith(h + ".") for h in head)}
    fam = None
    notes: list[str] = []
    if any(groups.is_group(t) for t in targets):  # attention, mlp, all_linear, qv: the roles this family has
        fam = family_of(model, family)
        targets, notes = groups.expand(list(targets), FAMILY_ROLES[fam], fam)
    patterns: dict[str, str] = {}
    for target in targets:
        if not isinstance(target, str) or not target:
            raise ConfigError(f"lora.targets contains {target!r}: give roles ({', '.join(ROLES)}), groups "
                              f"({', '.join(groups.GROUPS)}) or module names")
        if target in ROLES:
            fam = fam or family_of(model, family)
            roles = FAMILY_ROLES[fam]
            if target not in roles:
                raise _missing_role(fam, target)
            patterns[target] = roles[target]
        elif re.fullmatch(r"W[a-z]+", target):
            raise ConfigError(f"lora.targets: unknown role {target!r}: valid roles are {', '.join(ROLES)}")
        else:
            patterns[target] = _L + re.escape(target)
    role_of: dict[str, str] = {}
    for target, pattern in patterns.items():
        matched = [n for n in linear if re.fullmatch(pattern, n)]
        if not matched:
            raise ConfigError(
                f"lora.targets: {target!r} matches no linear module of this model; its linear modules are "
                f"{_short(linear)}"
            )
        for n in matched:
            role_of[n] = target
    modules = {n: linear[n] for n in role_of}
    return TargetPlan(pattern="|".join(f"(?:{p})" for p in patterns.values()), modules=modules, role_of=role_of,
                      targets=tuple(patterns), notes=tuple(notes))


def check_rank_fits(plan: TargetPlan, r: int) -> None:
    limit_name, (d_in, d_out) = min(plan.modules.items(), key=lambda kv: min(kv[1]))
    if r > min(d_in, d_out):
        raise ConfigError(
            f"lora.r={r} is too large: {limit_name} is {d_out}x{d_in}, so the rank can be at most {min(d_in, d_out)}"
        )


def head_names(model: nn.Module) -> list[str]:
    """Top-level classification head modules (trained in full, not LoRA targets)."""
    return [n for n in ("classifier", "score", "pre_classifier") if hasattr(model, n)]


def is_causal_lm(model: nn.Module) -> bool:
    """A model with a causal LM head (``*ForCausalLM``, GPT-2's ``*LMHeadModel``): PEFT's ``CAUSAL_LM`` task."""
    return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def wrap(model: nn.Module, cfg: LoraConfig, family: str | None = None, plan: TargetPlan | None = None,
         heads: list[str] | None = None):
    """Wrap ``model`` with a PEFT LoRA adapter; the classification head (``heads``: by default
    :func:`head_names`; with a trained pooler, :func:`rank_sweep.train.head.trained_names`) is trained in full
    (a causal LM gets PEFT's ``CAUSAL_LM`` model, whose tied LM head stays frozen)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    plan = plan or plan_targets(model, cfg.targets, family)
    check_rank_fits(plan, cfg.r)
    init = {"default": True, "gaussian": "gaussian"}[cfg.init]  # LoraConfig refuses the rest
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.dropout,
        target_modules=plan.pattern,
        use_rslora=cfg.alpha_policy == "rslora",
        init_lora_weights=init,
        modules_to_save=head_names(model) if heads is None else heads,
        fan_in_fan_out=any(type(m).__name__ == "Conv1D" for m in model.modules()),
        task_type="CAUSAL_LM" if is_causal_lm(model) else None,
    )
    return get_peft_model(model, peft_cfg)


def head_alone(model: nn.Module, heads: list[str] | None = None) -> nn.Module:
    """The reference without an adapter: every base weight frozen, the classification head (``heads``, as
    :func:`wrap` trains it) trained alone."""
    heads = head_names(model) if heads is None else heads
    for name, p in model.named_parameters():
        p.requires_grad_(any(name == h or name.startswith(h + ".") for h in heads))
    return model


def freeze_for_full_finetune(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


@dataclass(frozen=True)
class ParamCounts:
    lora_params: int
    head_params: int
    trainable_params: int
    total_params: int  # parameters of the base model (what full fine-tuning trains)

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable_params / self.total_params

    def as_metrics(self) -> dict[str, float]:
        return {
            "lora_params": self.lora_params,
            "head_params": self.head_params,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "trainable_pct": self.trainable_pct,
        }


# what PEFT names an adapter's own tensors: LoRA and AdaLoRA (lora_A, lora_B, lora_E), IA3 (ia3_l), prefix and
# prompt tuning (prompt_encoder.<adapter>.embedding / .transform)
ADAPTER_MARKERS = ("lora_", "ia3_", "prompt_encoder.")


def count_parameters(model: nn.Module, total_params: int) -> ParamCounts:
    """Exact counts from the wrapped model: ``lora_params`` are the adapter's tensors (LoRA's, or a reference
    method's: :data:`ADAPTER_MARKERS`), the other trainable ones the head. PEFT keeps a frozen copy of the head
    (``original_module``) beside the trained one; only trainable tensors count."""
    lora = head = trainable = 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        trainable += p.numel()
        if any(marker in name for marker in ADAPTER_MARKERS):
            lora += p.numel()
        else:
            head += p.numel()
    return ParamCounts(lora, head, trainable, total_params)


def num_params(model: nn.Module) -> int:
    """Parameters of ``model`` as the unquantized model has them: a bitsandbytes 4-bit weight stores two values
    per byte, so it counts the shape it was quantized from."""
    total = 0
    for p in model.parameters():
        shape = getattr(getattr(p, "quant_state", None), "shape", None)
        total += int(torch.Size(shape).numel()) if shape is not None else p.numel()
    return total


def merged_copy(peft_model) -> nn.Module:
    """A merged, adapter-free model; ``merge_and_unload`` is not in place."""
    import copy

    return copy.deepcopy(peft_model).merge_and_unload()
