"""The checks of a causal LM task's config (``task.type=causal_lm``), apart from ``sections.py`` to keep
each module short: formats, metrics (loss, perplexity, the choices' accuracy, exact match), choices and labels,
and the held-out split's keys (as a classifier's).

    check_causal_task(task)      # called by TaskConfig.__post_init__; raises a one-line ConfigError
"""

from __future__ import annotations

from rank_sweep.config.base import (
    LM_FORMATS,
    TASK_SOURCES,
    TRUNCATIONS,
    boolean,
    check_generation,
    check_holdout,
    one_of,
    positive,
)
from rank_sweep.errors import ConfigError

CHOICE_METRICS = ("accuracy", "f1", "mcc")  # of a causal LM task: on the most likely of task.choices
EXACT_MATCH = "exact_match"  # of a causal LM task: the greedy generation's answer equals the completion's


def check_causal_task(self) -> None:
    """The checks of a causal LM task (``task.type=causal_lm``): ``self`` is the :class:`TaskConfig`, whose
    ``metrics``, ``choices`` and ``labels`` are normalised in place."""
    one_of("task.source", self.source, TASK_SOURCES)
    one_of("task.format", self.format, LM_FORMATS)
    one_of("task.truncation", self.truncation, TRUNCATIONS)
    boolean("task.append_eos", self.append_eos)
    for m in [self.metric, *self.metrics]:
        one_of("task.metric", m, ("loss", "perplexity", *CHOICE_METRICS, EXACT_MATCH))
    if self.metric == "perplexity":
        raise ConfigError("task.metric='perplexity' is not valid as the primary metric: it is exp(loss) and ranks "
                          "trials the same; use task.metric=loss (perplexity is logged as val/perplexity)")
    self.metrics = list(dict.fromkeys([self.metric, *self.metrics]))
    if self.choices is not None:
        self.choices = [str(c) for c in self.choices]
        if len(self.choices) < 2 or len(set(self.choices)) < len(self.choices) or not all(c.strip() for c in self.choices):
            raise ConfigError(f"task.choices={self.choices!r} is not valid: give two or more distinct, non-empty answers")
        if self.format == "text":
            raise ConfigError("task.choices is not valid with task.format=text: a text task has no prompt to answer")
        self.labels = [str(x) for x in (self.labels if self.labels is not None else self.choices)]
        if len(self.labels) != len(self.choices):
            raise ConfigError(f"task.labels={self.labels!r} is not valid: give one label value per task.choices "
                              f"entry ({len(self.choices)}), in the same order")
    elif self.labels is not None:
        raise ConfigError("task.labels is set but task.choices is not: a causal LM task's labels name the "
                          "label values of its choices; set task.choices (or task.labels=null)")
    if EXACT_MATCH in self.metrics:
        check_generation(self.format, self.max_new_tokens, self.answer_pattern)
    needs = [m for m in self.metrics if m in CHOICE_METRICS]
    if needs and self.choices is None:
        raise ConfigError(f"task.metrics contains {needs[0]!r}, which scores the most likely of task.choices: "
                          f"set task.choices (e.g. [' yes',' no']) or use loss and perplexity")
    if self.prompt_template is not None:
        try:
            self.prompt_template.format(**{f: "" for f in self.text_fields})
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"task.prompt_template={self.prompt_template!r} is not valid: {type(e).__name__} "
                              f"{e}; it may name only task.text_fields {list(self.text_fields)} as {{field}}") from None
    positive("task.max_seq_length", self.max_seq_length, integer=True)
    for name in ("max_train_samples", "max_eval_samples"):
        if getattr(self, name) is not None:
            positive(f"task.{name}", getattr(self, name), integer=True)
    if self.source in ("csv", "jsonl") and not (self.train_file and self.validation_file):
        raise ConfigError(f"task.source={self.source} needs task.train_file and task.validation_file "
                          f"(got {self.train_file!r}, {self.validation_file!r})")
    check_holdout(self.holdout, self.holdout_size, self.holdout_dev_fraction, self.test_file)
