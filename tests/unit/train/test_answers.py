"""Exact match on generation: the answer read from a text, its normalisation, the task keys' checks, and the
0/1-per-example encoding the paired statistics read."""

from __future__ import annotations

import numpy as np
import pytest

from rank_sweep.config import TaskConfig
from rank_sweep.errors import ConfigError
from rank_sweep.results.paired import paired_difference, score_interval
from rank_sweep.train.answers import exact_match, extract, normalize
from rank_sweep.train.metrics import causal_metrics, causal_outputs

GSM8K = r"#### (-?[0-9.,]+)"


@pytest.mark.parametrize("generated, completion, pattern, expected", [
    (" positive\nReview: next", " positive", None, ("positive", True)),  # the first line
    ("\n\n Positive.", " positive", None, ("Positive.", True)),  # case and a final period do not count
    (" negative", " positive", None, ("negative", False)),
    ("so 3 * 4 = 12\n#### 1,200", "She pays ... #### 1200", GSM8K, ("1,200", True)),  # gold read by the pattern
    ("the answer is 1200", "#### 1200", GSM8K, ("", False)),  # no match: judged wrong
    ("#### $72", "72", r"#### \$?(-?[0-9.,]+)", ("72", True)),  # a bare gold answer is taken whole
    ("Answer: yes", " yes", r"Answer: (\w+)", ("yes", True)),
])
def test_exact_match_reads_normalises_and_compares(generated, completion, pattern, expected):
    assert exact_match(generated, completion, pattern) == expected


def test_extract_and_normalize():
    assert extract("a #### 5 and #### 6", GSM8K) == "5"  # the first match
    assert extract("xx", r"\d+") is None
    assert extract("   \n", None) == ""
    assert normalize("  The  $1,000 Answer. ") == "the 1000 answer"


def _task(**kw):
    base = dict(name="qa", type="causal_lm", source="jsonl", train_file="t.jsonl", validation_file="d.jsonl",
                metric="exact_match", metrics=["exact_match", "loss"], labels=None, choices=None)
    return TaskConfig(**{**base, **kw})


@pytest.mark.parametrize("kw, message", [
    ({"format": "text"}, "task.metric=exact_match is not valid with task.format=text: a text task has no prompt"),
    ({"max_new_tokens": 0}, "task.max_new_tokens=0 is not valid"),
    ({"answer_pattern": "#### ("}, r"task.answer_pattern='#### \(' is not a valid regular expression"),
    ({"type": "classification", "source": "csv", "metrics": ["exact_match"]}, "task.metric='exact_match' is not valid"),
])
def test_bad_exact_match_settings_are_one_line(kw, message):
    with pytest.raises(ConfigError, match=message) as e:
        _task(**kw)
    assert "\n" not in str(e.value)


def test_exact_match_is_maximized_and_travels_as_one_0_1_per_example():
    task = _task()
    assert task.direction == "maximize"
    exact = np.array([1, 0, 1, 1], dtype=float)
    nll, tokens = np.ones(4), np.ones(4)
    assert causal_metrics(task, nll, tokens, exact=exact)["exact_match"] == 0.75
    outputs, labels = causal_outputs(task, nll, tokens, exact=exact)
    assert score_interval("exact_match", outputs, labels, is_regression=False, num_labels=2).estimate == 0.75
    other, _ = causal_outputs(task, nll, tokens, exact=np.array([0, 0, 1, 1.0]))
    diff = paired_difference("exact_match", other, outputs, labels, is_regression=False, num_labels=2)
    assert diff.estimate == pytest.approx(0.25)
