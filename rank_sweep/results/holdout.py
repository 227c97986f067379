"""The held-out split in reports: each configuration's held-out score, its paired difference to the choice, and
the choice's optimism. Report-only: nothing here feeds a decision.

    held = held_out(summaries, records, reader, chosen)     # label -> HeldOut
    print("\n".join(selection_lines(chosen, runners_up, held, 0.95, source_line(held, [chosen], records, reader))))

Why it is kept apart: the ladder, the learning test and select read :class:`~rank_sweep.results.records.TrialRecord`
values (which carry no held-out field) and the decision split's ``predictions/val.npz``; the held-out outputs live in
``predictions/holdout.npz`` (:data:`HOLDOUT_ARTIFACT`) and are read here only, after the decisions are made. A
choice scored on the examples that chose it looks better than it is (the best of many noisy estimates); its
held-out score does not, and *optimism* is the gap: decision-split score minus held-out score (the other way
round for a metric to minimize), so a positive optimism is how much the choice's score flattered it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from rank_sweep.results.compare import PairedComparer
from rank_sweep.results.paired import Interval, metric_values, paired_difference, score_interval, widen
from rank_sweep.results.records import ConfigSummary, TrialRecord

HOLDOUT_ARTIFACT = "predictions/holdout.npz"  # the MLflow artifact path of a trial's held-out outputs
CSV_COLUMNS = ("holdout_mean", "holdout_ci_low", "holdout_ci_high", "holdout_n")  # summary.csv: report-only


@dataclass(frozen=True)
class HeldOut:
    """One configuration on the held-out split (the mean over its seeds, as the decision statistic is)."""

    score: Interval  # estimate and interval over held-out examples (and its seeds' spread)
    n: int  # held-out examples
    seeds: int
    scores: tuple[float, ...]  # per seed
    vs_choice: Interval | None = None  # paired interval of (this - the choice) on the same held-out examples
    optimism: float | None = None  # of the choice only: decision-split score minus held-out score


def holdout_reader(comparer: PairedComparer) -> PairedComparer:
    """A comparer like ``comparer`` (metric, stores, confidence) that reads the held-out outputs."""
    return PairedComparer(comparer.metric, comparer.is_regression, comparer.num_labels, comparer.direction,
                          comparer.output_dir, comparer.uri, comparer.confidence, comparer.n_boot,
                          artifact=HOLDOUT_ARTIFACT)


def _seed_variance(scores: Sequence[float]) -> float:
    return statistics.variance(scores) / len(scores) if len(scores) > 1 else 0.0


def _score(reader: PairedComparer, recs: Sequence[TrialRecord]):
    preds = [reader.predictions(r) for r in recs]
    if not preds or any(p is None for p in preds) or len({p.index.tobytes() for p in preds}) != 1:
        return None, None
    kw = {"is_regression": reader.is_regression, "num_labels": reader.num_labels}
    scores = tuple(metric_values(reader.metric, p.outputs, p.label, **kw) for p in preds)
    ci = score_interval(reader.metric, [p.outputs for p in preds], preds[0].label, confidence=reader.confidence,
                        n_boot=reader.n_boot, **kw)
    ci = widen(ci, _seed_variance(scores), reader.confidence)
    return HeldOut(ci, len(preds[0]), len(preds), scores), preds


def held_out(summaries: Sequence[ConfigSummary], records: Sequence[TrialRecord], reader: PairedComparer,
             chosen: ConfigSummary | None = None) -> dict[str, HeldOut]:
    """``label -> HeldOut`` for every configuration whose trials all scored the same held-out examples; with
    ``chosen``, each also carries the paired difference to the choice and the choice its optimism."""
    by_number = {r.number: r for r in records}
    out, preds = {}, {}
    for s in summaries:
        h, p = _score(reader, [by_number[n] for n in s.numbers if n in by_number])
        if h is not None:
            out[s.label], preds[s.label] = h, p
    if chosen is None or chosen.label not in out:
        return out
    base, kw = preds[chosen.label], {"is_regression": reader.is_regression, "num_labels": reader.num_labels}
    for label, h in list(out.items()):
        if label == chosen.label:
            sign = 1.0 if reader.direction == "maximize" else -1.0
            opt = None if chosen.mean is None else sign * (chosen.mean - h.score.estimate)
            out[label] = HeldOut(h.score, h.n, h.seeds, h.scores, None, opt)
        elif preds[label][0].index.tobytes() == base[0].index.tobytes():
            diff = paired_difference(reader.metric, [p.outputs for p in base], [p.outputs for p in preds[label]],
                                     base[0].label, confidence=reader.confidence, n_boot=reader.n_boot, **kw)
            var = _seed_variance(h.scores) + _seed_variance(out[chosen.label].scores)
            out[label] = HeldOut(h.score, h.n, h.seeds, h.scores, widen(diff, var, reader.confidence))
    return out


# HoldoutInfo.source (rank_sweep.train.holdout) in words
SOURCE_WORDS = {"train_unused": "from the training examples the subsample leaves unused",
                "dev_hash": "taken out of the dev set by a hash of each example",
                "test_file": "every row of task.test_file"}


def source_line(held: dict[str, HeldOut], summaries: Sequence[ConfigSummary], records: Sequence[TrialRecord],
                reader: PairedComparer) -> str | None:
    """Where the held-out split came from, as the trials of the first of ``summaries`` with a held-out score logged
    it (MLflow params ``holdout_*``), e.g. ``held-out: 2000 examples of sst2 from the training examples the
    subsample leaves unused (.../SST-2/train.tsv, sha256 3b6c...; example ids sha256 78a9...)``. None when no
    configuration has a held-out score (MLflow is not asked then)."""
    s = next((s for s in summaries if s.label in held), None)
    if s is None:
        return None
    n, numbers = held[s.label].n, set(s.numbers)
    run = next((r.run_id for r in records if r.number in numbers and r.run_id), None)
    try:
        from mlflow.tracking import MlflowClient

        p = MlflowClient(reader.uri).get_run(run.partition("/")[0]).data.params
    except Exception as e:  # a store that is gone, or a run without these params: say what is known
        return f"held-out: {n} examples (where from: not readable from the tracking store, {type(e).__name__})"
    if "holdout_source" not in p:
        return f"held-out: {n} examples (where from: not recorded by its trials)"
    sha = p.get("holdout_file_sha256")
    file = p.get("holdout_file") if p.get("holdout_file") not in (None, "None") else "the Hugging Face Hub"
    file += f", sha256 {sha[:12]}..." if sha and sha != "None" else ""
    return (f"held-out: {n} examples of {p.get('task', '?')} {SOURCE_WORDS.get(p['holdout_source'], p['holdout_source'])}"
            f" ({file}; example ids sha256 {p.get('holdout_ids_sha256', '?')[:12]}...)")


def interval_text(i: Interval, signed: bool = False) -> str:
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"{f.format(i.estimate)} [{f.format(i.low)}, {f.format(i.high)}]"


def _gap(chosen: ConfigSummary, c: HeldOut) -> str:
    """How the optimism was computed: decision minus held-out for a metric to maximize (:func:`held_out` gives
    exactly that difference then), held-out minus decision for one to minimize (a loss)."""
    if c.optimism == chosen.mean - c.score.estimate:
        return f"decision-split score {chosen.mean:.4f} minus held-out {c.score.estimate:.4f}"
    return f"held-out {c.score.estimate:.4f} minus decision-split score {chosen.mean:.4f}: the metric is minimized"


def selection_lines(chosen: ConfigSummary, runners_up: Sequence[ConfigSummary], held: dict[str, HeldOut],
                    confidence: float, source: str | None = None) -> list[str]:
    """What select prints under its choice: where the held-out split came from (``source``: :func:`source_line`),
    the held-out score of the choice and of each runner-up, the paired held-out difference to the choice, and the
    choice's optimism; one line saying why when there is none."""
    c = held.get(chosen.label)
    if c is None:
        return ["held-out (report only): none: the trials scored no held-out split (task.holdout=false, or a "
                "study from before it existed)"]
    lines = [*([source] if source else []),
             f"held-out (report only, never read by a decision; {c.n} examples, {confidence:.0%} intervals):",
             f"  chosen {chosen.label}: {interval_text(c.score)}; optimism {c.optimism:+.4f} ({_gap(chosen, c)})"]
    for s in runners_up:
        h = held.get(s.label)
        if h is None:
            lines.append(f"  {s.label}: no held-out outputs")
            continue
        diff = ("" if h.vs_choice is None
                else f"; {s.label} - {chosen.label} = {interval_text(h.vs_choice, True)} paired")
        lines.append(f"  {s.label}: {interval_text(h.score)}{diff}")
    return lines


def csv_values(h: HeldOut | None) -> list:
    """The summary.csv columns :data:`CSV_COLUMNS` of a row (empty when it has no held-out score)."""
    return [None] * len(CSV_COLUMNS) if h is None else [h.score.estimate, h.score.low, h.score.high, h.n]


def cell(h: HeldOut | None) -> str:
    """The markdown cell: held-out mean and interval, ``-`` when none."""
    if h is None or not math.isfinite(h.score.estimate):
        return "-"
    return f"{h.score.estimate:.4f} [{h.score.low:.4f}, {h.score.high:.4f}]"


def metrics(chosen: ConfigSummary, held: dict[str, HeldOut]) -> dict[str, float]:
    """The choice's held-out numbers as parent-run metrics (``select/holdout_score`` ...)."""
    h = held.get(chosen.label)
    if h is None:
        return {}
    return {"select/holdout_score": h.score.estimate, "select/holdout_ci_low": h.score.low,
            "select/holdout_ci_high": h.score.high, "select/optimism": h.optimism,
            "select/holdout_n": float(h.n)}


__all__ = ["HOLDOUT_ARTIFACT", "CSV_COLUMNS", "HeldOut", "held_out", "holdout_reader", "source_line", "selection_lines",
           "csv_values", "cell", "metrics"]
