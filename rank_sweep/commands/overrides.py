"""The command line checked before Hydra runs: aliases read as ours, a mistyped key refused in one line.

    check_overrides(["trainer.max_epochs=1"], "config")   # -> (["trainer.epochs=1"], ["trainer.max_epochs read as ..."])
    check_overrides(["trainer.epoch=1"], "config")        # ConfigError: ... did you mean trainer.epochs? (valid keys ...)

Built on Hydra's own pieces, not a copy of them: the argument parser ``hydra.main`` uses (its flags, their
abbreviations and values), Hydra's override grammar (:class:`OverridesParser`: ``+``, ``++``, ``~``, sweeps,
``group@package``), and the compose API for the keys: the primary config composed with its default options,
plus, under each config group, the keys of every option of that group in the config search path (a key only
some options have is valid: choosing the option is Hydra's business), and the keys of a ``_global_`` option
(an experiment preset) at the top. What Hydra alone can judge (values, group options, ``hydra.*``, what
``+``/``++`` add, anything it cannot parse) is left to it, unchanged.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import io
import warnings

from rank_sweep.config import CONF_DIR
from rank_sweep.errors import ConfigError

# Other tools' names for our keys, rewritten (with a note on stderr) before Hydra parses the command line.
ALIASES = {
    "trainer.max_epochs": "trainer.epochs",  # Lightning Trainer
    "trainer.num_train_epochs": "trainer.epochs",  # Hugging Face TrainingArguments
    "trainer.learning_rate": "trainer.lr",  # Hugging Face TrainingArguments
    "trainer.per_device_train_batch_size": "trainer.batch_size",  # Hugging Face TrainingArguments
    "trainer.per_device_eval_batch_size": "trainer.eval_batch_size",  # Hugging Face TrainingArguments
    "lora.lora_dropout": "lora.dropout",  # PEFT LoraConfig
    "lora.target_modules": "lora.targets",  # PEFT LoraConfig (module names are valid targets)
}
# The older spellings of a method group option: ``lora.full_finetune=true`` is read as ``method=full`` (with a note)
METHOD_FLAGS = {"lora.full_finetune": "method=full", "lora.head_only": "method=head"}
# Sections whose keys are not listed in YAML: ``method.settings`` holds fields of the method's PEFT config, checked
# by name against that config (rank_sweep.config.method). A plain override below one is passed to Hydra as ``++``
# (add or override), so ``method.settings.beta1=0.9`` works though adalora.yaml does not list beta1.
OPEN_SECTIONS = ("method.settings",)
PREFIX = {"CHANGE": "", "ADD": "+", "FORCE_ADD": "++", "DEL": "~"}  # Hydra's OverrideType -> its prefix


def parse_argv(args: list[str]):
    """``args`` (sys.argv[1:]) as Hydra's own argument parser reads them (flags, ``overrides``), or None where it
    refuses them (Hydra then says why itself). ``hydra._internal.utils.get_args_parser`` is the parser
    ``hydra.main`` uses; Hydra has no public name for it."""
    from hydra._internal.utils import get_args_parser

    with contextlib.redirect_stderr(io.StringIO()):
        try:
            return get_args_parser().parse_args(args)
        except SystemExit:
            return None


def _merge_keys(dst: dict, src: dict) -> None:
    """Add the keys of ``src`` (recursively) to ``dst``; a mapping wins over a leaf of the same name."""
    for k, v in src.items():
        if isinstance(v, dict):
            if not isinstance(dst.get(k), dict):
                dst[k] = {}
            _merge_keys(dst[k], v)
        else:
            dst.setdefault(k, None)


def _options(folder: str) -> list[tuple[str, str | None, dict]]:
    """(group, package, content) of every option of every config group in ``folder``, read by Hydra's config
    source for that folder (which parses each file's ``# @package`` header)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    out = []
    with initialize_config_dir(config_dir=folder, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        source = next((s for s in loader.get_sources() if s.path == folder), None)
        for group in loader.list_groups("") if source is not None else []:
            for option in loader.get_group_options(group) if group != "hydra" else []:
                path = f"{group}/{option}.yaml"
                if not source.exists(path):
                    continue
                try:
                    loaded = source.load_config(path)
                except Exception:  # a broken file: Hydra reports it when it composes
                    continue
                data = OmegaConf.to_container(loaded.config, resolve=False) if loaded.config is not None else {}
                out.append((group, loaded.header.get("package"), data if isinstance(data, dict) else {}))
    return out


@functools.cache
def known_keys(dirs: tuple[str, ...], name: str) -> dict | None:
    """Every key the config ``name`` can have, as a tree (leaves None): the config composed by Hydra with its
    default options and, under each config group, the union of the keys of all that group's options in ``dirs``;
    the keys of a ``_global_`` option (an experiment preset) at the top. None when Hydra cannot compose ``name``
    from ``dirs`` (then Hydra says why)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    extra = [f"hydra.searchpath=[{','.join('file://' + d for d in dirs[1:])}]"] if dirs[1:] else []
    try:
        with initialize_config_dir(config_dir=dirs[0], version_base="1.3"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a --config-dir that is not there: Hydra warns when it runs
            composed = OmegaConf.to_container(compose(name, overrides=extra), resolve=False)
    except Exception:  # no such config, or one Hydra refuses: its own error says why
        return None
    tree: dict = {}
    _merge_keys(tree, composed)
    for folder in dirs:
        for group, package, data in _options(folder):
            if not isinstance(tree.get(group), dict):
                tree[group] = {}
            node = tree[group]
            where = tree if package == "_global_" else node if package in (None, "_group_", group) else None
            if where is not None:
                _merge_keys(where, {k: v for k, v in data.items() if k != "defaults"})
    return tree


def unknown(tree: dict, key: str) -> tuple[str, dict] | None:
    """Where ``key`` leaves the known keys (the section above it and its keys), or None if it is known
    (or reaches into a value: a list or a leaf, which Hydra itself checks)."""
    node, parts = tree, key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict):
            return None
        if part not in node:
            return ".".join(parts[:i]), node
        node = node[part]
    return None


def flat_keys(tree: dict, prefix: str = "") -> list[str]:
    """Every dotted key of ``tree``, sections included."""
    out = []
    for k, v in sorted(tree.items()):
        out.append(prefix + k)
        out += flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else []
    return out


def _closest(word: str, words, cutoff: float = 0.6) -> str | None:
    """The word that ``word`` begins (the shortest), else the closest by difflib, else None."""
    words = sorted(words, key=lambda w: (len(w), w))
    near = difflib.get_close_matches(word, words, n=1, cutoff=cutoff)
    return next((w for w in words if w.startswith(word)), near[0] if near else None)


def _unknown_key_error(tree: dict, key: str, section: str, keys: dict) -> ConfigError:
    """``key is not a known key: did you mean <the closest>? (valid keys of <section>: ...)``: the closest is
    a key of the same section, else (``trainer.max_seq_length``: ``task.max_seq_length``) one of about that name
    anywhere."""
    parts, depth, flat = key.split("."), len(section.split(".")) if section else 0, flat_keys(tree)
    head, rest = f"{section}." if section else "", ".".join(parts[depth + 1:])
    guess = _closest(parts[depth], keys)
    guess = guess and head + guess + (f".{rest}" if rest else "")
    if guess not in flat:
        name = _closest(parts[-1], {k.rsplit(".", 1)[-1] for k in flat}, cutoff=0.8)  # elsewhere: a near-exact name
        guess = next((k for k in sorted(flat, key=len) if k.rsplit(".", 1)[-1] == name), None)
    msg = f"{key} is not a known key" + (f": did you mean {guess}?" if guess else "")
    if not keys:
        return ConfigError(f"{msg} ({section} is chosen as a whole: {section}=<option>)")
    return ConfigError(f"{msg} (valid keys {'of ' + section if section else 'at the top'}: {', '.join(sorted(keys))})")


def _parsed(args: list[str], overrides: list[str]) -> dict[int, tuple[str, str, str]]:
    """Position in ``args`` -> (prefix, key, the rest of the text) of each override Hydra's grammar reads as a plain
    dotted key; group options with a package (``task@x=mrpc``), group paths (``a/b``) and what it cannot parse are
    left out (left to Hydra)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, out, start = OverridesParser.create(), {}, 0
    for text in overrides:
        i = args.index(text, start)  # the overrides come in the order of the command line
        start = i + 1
        try:
            o = parser.parse_override(text)
        except Exception:  # not an override Hydra can read: its own message says so
            continue
        prefix = PREFIX[o.type.name]
        if o.package is None and "/" not in o.key_or_group:
            out[i] = (prefix, o.key_or_group, text[len(prefix) + len(o.key_or_group):])
    return out


def check_overrides(args: list[str], config_name: str) -> tuple[list[str], list[str]]:
    """The command line ``args`` (sys.argv[1:]) with the :data:`ALIASES` rewritten, and a note for each; raises
    ConfigError for a plain or ``~`` override of a key the composed config ``config_name`` cannot have; a plain
    override under :data:`OPEN_SECTIONS` is passed as ``++`` (its keys are checked when the config is built). Left to
    Hydra: ``+key`` / ``++key`` (they add keys), ``hydra.*``, group options, values, and everything under
    ``--config-path``, ``--shell-completion`` or ``--experimental-rerun``."""
    argv = parse_argv(args)
    if argv is None or argv.config_path or argv.shell_completion or argv.experimental_rerun:
        return list(args), []
    dirs = (CONF_DIR, *([argv.config_dir.removeprefix("file://")] if argv.config_dir else []))
    tree = known_keys(dirs, argv.config_name or config_name)
    if tree is None:
        return list(args), []
    out, notes, parsed = list(args), [], _parsed(args, argv.overrides)
    added = tuple(f"{key}." for prefix, key, _ in parsed.values() if prefix in ("+", "++"))  # known once added
    for i, (prefix, key, rest) in parsed.items():
        if key.split(".")[0] == "hydra" or prefix == "+":
            continue
        if not prefix and key.startswith(tuple(f"{section}." for section in OPEN_SECTIONS)):
            out[i] = "++" + args[i]
            continue
        if (not prefix and key in METHOD_FLAGS and rest.lower() in ("=true", "=yes", "=1")
                and not any(k == "method" for _, k, _ in parsed.values())):  # with method=<name>: refused later
            out[i] = METHOD_FLAGS[key]
            notes.append(f"{key}{rest} read as {METHOD_FLAGS[key]}")
            continue
        alias = ALIASES.get(key) if prefix != "~" else None
        if alias and unknown(tree, key) and not unknown(tree, alias):  # never shadow a key that exists
            out[i] = prefix + alias + rest
            notes.append(f"{key} read as {alias}")
            key = alias
        where = unknown(tree, key) if prefix != "++" and not f"{key}.".startswith(added) else None
        if where:
            raise _unknown_key_error(tree, key, *where)
        if config_name == "select" and key.startswith("search.budget."):  # known, but select would ignore it
            raise ConfigError(f"{key} limits which trials a study trains, not the choice: rank-sweep-select reads "
                              f"{key.removeprefix('search.')}")
    return out, notes
