"""Command-line entry points, one function per command (Hydra composes ``conf/``).

    rank-sweep experiment=quickstart          # the recipe as an Optuna study
    rank-sweep-trial task=sst2 lora.r=4 lora.targets=[Wq,Wv]
    rank-sweep-trial task=sst2 method=adalora method.settings.target_r=4   # a reference method (conf/method/)
    rank-sweep-select task=mrpc budget.max_lora_params=50000 select.tolerance=0.005

User errors (bad config values, data, targets, stores) print one line on
stderr and exit with status 2, before any training starts. The command line is checked before Hydra
parses it (:func:`check_overrides`): a mistyped key is such an error, naming the closest valid key, and
the common Lightning / Hugging Face / PEFT names in :data:`ALIASES` are read as ours.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import os
import re
import sys
import warnings

import hydra
from omegaconf import DictConfig, OmegaConf

from rank_sweep import interrupts
from rank_sweep.config import CONF_DIR, build_config  # conf/ in the wheel, or at the top of an editable checkout
from rank_sweep.errors import ConfigError, RankSweepError, TrialsFailed, redact_text
from rank_sweep.usage import usage

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
# Sections whose keys are not listed in YAML: ``method.settings`` holds fields of the method's PEFT config, checked
# by name against that config (rank_sweep.config.method). A plain override below one is passed to Hydra as ``++``
# (add or override), so ``method.settings.beta1=0.9`` works though adalora.yaml does not list beta1.
OPEN_SECTIONS = ("method.settings",)


@contextlib.contextmanager
def user_errors():
    """Turn a RankSweepError into one line on stderr and exit status 2 (1: a study whose trials kept failing)."""
    try:
        yield
    except RankSweepError as e:
        print(f"rank-sweep: error: {redact_text(str(e))}", file=sys.stderr, flush=True)
        sys.exit(1 if isinstance(e, TrialsFailed) else 2)


# Hydra's own flags (hydra/_internal/utils.py get_args_parser): short forms, and those that take a value.
_SHORT = {"-h": "--help", "-c": "--cfg", "-p": "--package", "-r": "--run", "-m": "--multirun",
          "-sc": "--shell-completion", "-cp": "--config-path", "-cn": "--config-name", "-cd": "--config-dir",
          "-i": "--info"}
_LONG = (*_SHORT.values(), "--hydra-help", "--version", "--resolve", "--experimental-rerun")
_VALUED = {"--cfg", "--package", "--config-path", "--config-name", "--config-dir", "--experimental-rerun"}
_INFO = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}  # --info's optional value
_OVERRIDE = re.compile(r"(~|\+\+|\+)?([^=]*)(=.*)?", re.S)
_KEY = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*")  # a plain dotted key; others (a/b, x@pkg) are left to Hydra


def _split_argv(args: list[str]) -> tuple[dict[str, str | None], list[int]]:
    """Hydra's flags in ``args`` (long name -> value, the last one given), and the positions of the overrides."""
    flags: dict[str, str | None] = {}
    overrides, i, positional = [], 0, False
    while i < len(args):
        tok = args[i]
        if positional or not tok.startswith("-") or tok == "-":
            overrides.append(i)
        elif tok == "--":
            positional = True
        else:
            name, eq, value = tok.partition("=")
            prefixed = [o for o in _LONG if o.startswith(name)] if name.startswith("--") else []
            name = _SHORT.get(name, name if name in _LONG or len(prefixed) != 1 else prefixed[0])  # argparse abbrevs
            if not eq and i + 1 < len(args) and (name in _VALUED or (name == "--info" and args[i + 1] in _INFO)):
                i, value = i + 1, args[i + 1]
            flags[name] = value if eq or name in _VALUED or name == "--info" else None
        i += 1
    return flags, overrides


def _yaml(path: str) -> tuple[str | None, dict]:
    """A config file's ``# @package`` (from its header comments) and its content."""
    import yaml

    try:
        with open(path) as f:
            text = f.read()
        data = yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError):  # Hydra reports a broken file itself
        return None, {}
    package = None
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            break
        m = re.match(r"\s*#\s*@package\s+(\S+)", line)
        package = m.group(1) if m else package
    return package, data if isinstance(data, dict) else {}


def _merge_keys(dst: dict, src: dict) -> None:
    """Add the keys of ``src`` (recursively) to ``dst``; a mapping wins over a leaf of the same name."""
    for k, v in src.items():
        if isinstance(v, dict):
            if not isinstance(dst.get(k), dict):
                dst[k] = {}
            _merge_keys(dst[k], v)
        else:
            dst.setdefault(k, None)


@functools.cache
def known_keys(dirs: tuple[str, ...], name: str) -> dict | None:
    """Every key the config ``name`` can have, as a tree (leaves None): its own keys and, under each config group,
    the union of the keys of all that group's options in ``dirs`` (a key only some options have is valid); the keys
    of a ``_global_`` option (an experiment preset) at the top. None when ``name`` is not in ``dirs``."""
    tree: dict = {}
    groups = {g for d in dirs if os.path.isdir(d) for g in os.listdir(d) if g != "hydra"
              and os.path.isdir(os.path.join(d, g)) and any(f.endswith(".yaml") for f in os.listdir(os.path.join(d, g)))}

    def primary(config: str, seen: tuple[str, ...]) -> bool:
        path = next((p for p in (os.path.join(d, f"{config}.yaml") for d in dirs) if os.path.isfile(p)), None)
        if path is None or config in seen:
            return False
        _, data = _yaml(path)
        for entry in data.get("defaults") or []:
            if isinstance(entry, str) and "/" in entry:  # group/option
                groups.add(entry.lstrip("/").split("/")[0])
            elif isinstance(entry, str) and entry != "_self_":  # another primary config (select.yaml: config)
                primary(entry, (*seen, config))
            elif isinstance(entry, dict):
                groups.update(k.split()[-1].lstrip("/").split("/")[0] for k in entry)  # "optional experiment"
        _merge_keys(tree, {k: v for k, v in data.items() if k not in ("defaults", "hydra")})
        return True

    if not primary(name, ()):
        return None
    for group in sorted(groups):
        node = tree.setdefault(group, {})
        for d in dirs:
            folder = os.path.join(d, group)
            for f in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
                if f.endswith((".yaml", ".yml")):
                    package, data = _yaml(os.path.join(folder, f))
                    where = tree if package == "_global_" else node if package in (None, "_group_", group) else None
                    if where is not None:
                        _merge_keys(where, {k: v for k, v in data.items() if k != "defaults"})
    return tree


def _unknown(tree: dict, key: str) -> tuple[str, dict] | None:
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


def _flat(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in sorted(tree.items()):
        out.append(prefix + k)
        out += _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else []
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
    parts, depth, flat = key.split("."), len(section.split(".")) if section else 0, _flat(tree)
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


def check_overrides(args: list[str], config_name: str) -> tuple[list[str], list[str]]:
    """The command line ``args`` (sys.argv[1:]) with the :data:`ALIASES` rewritten, and a note for each; raises
    ConfigError for a plain or ``~`` override of a key the composed config ``config_name`` cannot have; a plain
    override under :data:`OPEN_SECTIONS` is passed as ``++`` (its keys are checked when the config is built). Left to
    Hydra: ``+key`` / ``++key`` (they add keys), ``hydra.*``, group options, values, and everything under
    ``--config-path``, ``--shell-completion`` or ``--experimental-rerun``."""
    flags, positions = _split_argv(args)
    if flags.keys() & {"--config-path", "--shell-completion", "--experimental-rerun"}:
        return list(args), []
    dirs = (CONF_DIR, *([flags["--config-dir"].removeprefix("file://")] if flags.get("--config-dir") else []))
    tree = known_keys(dirs, flags.get("--config-name") or config_name)
    if tree is None:
        return list(args), []
    out, notes, parsed = list(args), [], {i: _OVERRIDE.fullmatch(args[i]).groups(default="") for i in positions}
    added = tuple(f"{key}." for prefix, key, _ in parsed.values() if prefix in ("+", "++"))  # known once added
    for i, (prefix, key, rest) in parsed.items():
        if (not rest and prefix != "~") or not _KEY.fullmatch(key) or key.split(".")[0] == "hydra" or prefix == "+":
            continue
        if not prefix and key.startswith(tuple(f"{section}." for section in OPEN_SECTIONS)):
            out[i] = "++" + args[i]
            continue
        alias = ALIASES.get(key) if prefix != "~" else None
        if alias and _unknown(tree, key) and not _unknown(tree, alias):  # never shadow a key that exists
            out[i] = prefix + alias + rest
            notes.append(f"{key} read as {alias}")
            key = alias
        where = _unknown(tree, key) if prefix != "++" and not f"{key}.".startswith(added) else None
        if where:
            raise _unknown_key_error(tree, key, *where)
        if config_name == "select" and key.startswith("search.budget."):  # known, but select would ignore it
            raise ConfigError(f"{key} limits which trials a study trains, not the choice: rank-sweep-select reads "
                              f"{key.removeprefix('search.')}")
    return out, notes


def _pre_parse(config_name: str, command: str = "rank-sweep") -> None:
    """Check sys.argv before Hydra parses it: rewrite aliases (a note each), exit 2 on an unknown key; with
    ``--help``, print the command's own text first (Hydra's list of groups follows)."""
    if _split_argv(sys.argv[1:])[0].keys() & {"--help"}:
        print(usage(command), flush=True)
    with user_errors():
        args, notes = check_overrides(sys.argv[1:], config_name)
    for note in notes:
        print(f"rank-sweep: note: {note}", file=sys.stderr, flush=True)
    sys.argv[1:] = args


def quiet_libraries(training: bool = True) -> None:
    """Keep the console to Lightning's bar and our lines; the rest goes to logs. ``training=False`` (the
    select command) quiets only what it imports: no torch, Lightning or transformers is loaded for it."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*(is an experimental feature|does not have many workers).*")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # at import it warns that a CPU kernel is not on the hub
    warnings.filterwarnings("ignore", message=".*Precision bf16-mixed is not supported.*")
    try:
        import mlflow  # noqa: F401
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if training:
            import datasets
            import lightning.pytorch  # noqa: F401  (sets its loggers to INFO on import: import first, then quiet)
            import transformers

            transformers.logging.set_verbosity_error()
            datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "optuna", "alembic", "datasets", "peft",
                 "mlflow", "mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _trial(cfg: DictConfig) -> float:
    """Train and record one trial (LoRA, or a reference method: ``method=ia3``); print its score and counts."""
    with interrupts.handled("rank-sweep-trial", "its MLflow run is closed as FAILED"), user_errors():
        run = build_config(cfg)  # the config is checked before the training stack is imported: an error in ~1 s
        quiet_libraries()
        from rank_sweep.train.trial import run_trial

        result = run_trial(run, learn_margin=run.search.learn_margin)
        c = result.counts
        print(f"score ({result.metric}) = {result.score:.4f}"
            + (f" [{result.score_ci[0]:.4f}, {result.score_ci[1]:.4f}] ({run.search.confidence:.0%} over dev examples)"
               if result.score_ci else "")
            + f"  baseline {result.baseline_score:.4f}"
            f"{'  NOT LEARNING' if result.not_learning else ''}\n"
            + (f"held-out ({result.metric}, report only) = {result.holdout['holdout_score']:.4f} "
               f"[{result.holdout['holdout_ci_low']:.4f}, {result.holdout['holdout_ci_high']:.4f}] on "
               f"{result.holdout['holdout_size']:.0f} examples\n" if result.holdout else "")
            + f"lora_params {c.lora_params:,}  head_params {c.head_params:,}  trainable_params "
            f"{c.trainable_params:,}  total_params {c.total_params:,}  trainable {c.trainable_pct:.3f}%\n"
            f"train {result.train_seconds:.1f}s  mlflow run {result.run_id}",
            flush=True,
        )
        interrupts.release()  # a signal while the trial was recorded: it is recorded, now exit 130 / 143
        return result.score


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _sweep(cfg: DictConfig) -> None:
    """Run (or resume) the study that walks the rank ladder."""
    with interrupts.handled("rank-sweep", "finished trials are kept, the one training is FAIL in the study and FAILED "
                            "in MLflow; rerun the same command to resume"), user_errors():
        run = build_config(cfg)  # checked before the training stack is imported
        quiet_libraries()
        from rank_sweep.study.run import run_study

        run_study(run)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="select")
def _select(cfg: DictConfig) -> None:
    """Pick the best configuration of a finished study for a budget."""
    with user_errors():
        from rank_sweep.config import SelectConfig, build, build_budget
        tree = OmegaConf.to_container(cfg, resolve=True)
        sweep = {k: v for k, v in tree.items() if k not in ("select", "budget")}  # the sweep's config finds the study
        run, how, budget = build_config(sweep), build(SelectConfig, tree.get("select"), "select"), build_budget(tree.get("budget"), "budget")
        quiet_libraries(training=False)
        from rank_sweep.results.command import choose

        choose(run, how, budget)


# The console scripts (pyproject.toml [project.scripts]): check the command line, then let Hydra compose.
def trial() -> None:
    """``rank-sweep-trial``: train and record one LoRA trial."""
    _pre_parse("config", "rank-sweep-trial")
    _trial()


def sweep() -> None:
    """``rank-sweep``: run (or resume) the study."""
    _pre_parse("config", "rank-sweep")
    _sweep()


def select() -> None:
    """``rank-sweep-select``: pick a configuration of a finished study for a budget."""
    _pre_parse("select", "rank-sweep-select")
    _select()
