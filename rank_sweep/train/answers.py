"""Exact match on generation: the answer read out of a generated text, normalised, compared with the gold one.

    answer = extract(generated, task.answer_pattern)   # None when the pattern does not match
    same = normalize(answer) == normalize(gold answer)

As lm-eval's filters for GSM8K: ``answer_pattern`` (``#### (-?[0-9.,]+)`` strict) takes the first match,
its group 1 if it has one; without a pattern the answer is the first non-empty line generated. The gold answer
is extracted from the completion by the same pattern (the whole completion when it does not match: a bare
answer). :func:`normalize` ignores case, commas, dollar signs, a final period and runs of spaces.
"""

from __future__ import annotations

import re


def extract(text: str, pattern: str | None) -> str | None:
    """The answer in ``text``: the first match of ``pattern`` (group 1 if any), else the first non-empty line."""
    if pattern is None:
        return next((line.strip() for line in text.splitlines() if line.strip()), "")
    m = re.search(pattern, text)
    if m is None:
        return None
    return m.group(1) if m.groups() else m.group(0)


def normalize(answer: str) -> str:
    """Case, commas, dollar signs, a final period and runs of spaces do not count."""
    s = " ".join(answer.casefold().replace(",", "").replace("$", "").split())
    return s[:-1].rstrip() if s.endswith(".") else s


def gold_answer(completion: str, pattern: str | None) -> str:
    answer = extract(completion, pattern)
    return completion.strip() if answer is None else answer


def exact_match(generated: str, completion: str, pattern: str | None) -> tuple[str, bool]:
    """(the answer read from ``generated`` ("" when the pattern does not match), whether it matches the gold)."""
    answer = extract(generated, pattern)
    if answer is None:
        return "", False
    return answer, normalize(answer) == normalize(gold_answer(completion, pattern))
