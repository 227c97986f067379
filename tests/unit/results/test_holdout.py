"""The held-out split is read by reports only: a hand-built study whose held-out outputs are scrambled makes every
decision the same (the ladder's plan, the learning test, select's choice) while the held-out report changes."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from rank_sweep.config import Budget, TaskConfig
from rank_sweep.results import holdout
from rank_sweep.results.compare import PairedComparer
from rank_sweep.results.predictions import ARTIFACT, load_predictions, predictions_path, save_predictions
from rank_sweep.results.records import ConfigSummary, TrialRecord, aggregate
from rank_sweep.results.selection import select
from rank_sweep.results.tables import summary_table
from rank_sweep.study.plan import LadderSpec, plan
from rank_sweep.train.trial import learning_test

N_DEV, N_HELD = 400, 600
# (targets, r) -> accuracy on the decision split and on the held-out split
TRUTH = {("Wq", 1): (0.60, 0.58), ("Wq", 2): (0.70, 0.69), ("Wq", 4): (0.80, 0.71), ("Wq", 8): (0.81, 0.72),
         ("Wq,Wv", 1): (0.79, 0.78), ("Wq,Wv", 2): (0.80, 0.77)}


def _logits(rng, labels, accuracy):
    """Two-class logits right on ``accuracy`` of the examples (exactly that share)."""
    right = np.zeros(len(labels), bool)
    right[rng.choice(len(labels), int(round(accuracy * len(labels))), replace=False)] = True
    pred = np.where(right, labels, 1 - labels)
    out = rng.normal(0, 0.1, (len(labels), 2)).astype(np.float32)
    out[np.arange(len(labels)), pred] += 2.0
    return out


def _study(tmp_path):
    rng = np.random.default_rng(7)
    dev_y, held_y = rng.integers(0, 2, N_DEV), rng.integers(0, 2, N_HELD)
    records = []
    for number, ((targets, r), (dev, held)) in enumerate(TRUTH.items()):
        for seed in (0, 1):
            run = f"run{number}s{seed}"
            save_predictions(predictions_path(str(tmp_path), run), _logits(rng, dev_y, dev + 0.01 * seed), dev_y)
            save_predictions(predictions_path(str(tmp_path), run, holdout.HOLDOUT_ARTIFACT),
                             _logits(rng, held_y, held), held_y, index=np.arange(1000, 1000 + N_HELD))
            records.append(TrialRecord(number=len(records), targets=targets, r=r, seed=seed, state="COMPLETE",
                                       score=dev + 0.01 * seed, lora_params=1000 * r * len(targets.split(",")),
                                       trainable_params=1000 * r * len(targets.split(",")) + 10, train_seconds=1.0,
                                       run_id=run, score_ci_low=dev - 0.04, score_ci_high=dev + 0.04))
    return records


def _scramble(tmp_path, records):
    """Every held-out file replaced: outputs shuffled across examples and logits negated."""
    rng = np.random.default_rng(99)
    for rec in records:
        path = predictions_path(str(tmp_path), rec.run_id, holdout.HOLDOUT_ARTIFACT)
        p = load_predictions(path)
        save_predictions(path, -p.outputs[rng.permutation(len(p))], p.label, index=p.index)


def _comparer(tmp_path):
    return PairedComparer("accuracy", False, 2, "maximize", str(tmp_path), None, 0.95, n_boot=300)


def _decisions(tmp_path, records):
    """Every decision the product makes from a history: the ladder's plan, the learning test, select's choice."""
    comparer = _comparer(tmp_path)
    spec = LadderSpec(target_sets=["Wq", "Wq,Wv"], ranks=[1, 2, 4, 8], seeds=[0, 1], extend=False,
                      compare=comparer)
    p = plan(records, spec)
    ladders = [(lad.targets, lad.finished, lad.reason, lad.plateau_rank,
                [(g.r, g.decision, g.detail, g.diff, g.diff_ci_low, g.diff_ci_high) for g in lad.rungs])
               for lad in p.ladders]
    task = TaskConfig(name="t", source="glue", glue_name="SST-2")
    train_labels = np.array([0, 1, 1])
    learning = []
    for rec in records:
        val = comparer.predictions(rec)
        learning.append(learning_test(task, val.outputs, val.label, train_labels, 0.95, 0.02))
    by_number = {r.number: r for r in records}

    def compare(a, b):
        return comparer([by_number[n] for n in a.numbers], [by_number[n] for n in b.numbers])

    sel = select(records, Budget(max_lora_params=2500), 0.005, "maximize", compare)
    choice = (sel.chosen, sel.best, sel.reason, [(s.label, why) for s, why in sel.runners_up], sel.vs_best)
    return (ladders, p.pending, p.done, p.extensions), learning, choice, sel


def test_scrambled_held_out_outputs_change_no_decision(tmp_path):
    records = _study(tmp_path)
    before = _decisions(tmp_path, records)
    sel = before[3]
    assert {lad[0]: lad[3] for lad in before[0][0]} == {"Wq": 4, "Wq,Wv": 1}  # real decisions, made on dev
    assert sel.chosen.label == "Wq,Wv r=1"
    reader = holdout.holdout_reader(_comparer(tmp_path))
    runners = [s for s, _ in sel.runners_up]
    held_before = holdout.held_out([sel.chosen, *runners], records, reader, sel.chosen)
    _scramble(tmp_path, records)
    after = _decisions(tmp_path, records)
    assert after[:3] == before[:3]  # plan, learning test and select's choice: all read the decision split only
    held_after = holdout.held_out([sel.chosen, *runners], records, holdout.holdout_reader(_comparer(tmp_path)),
                                  sel.chosen)
    # the scramble did reach the held-out report: every held-out score fell to about a coin toss
    for label, h in held_before.items():
        assert h.score.estimate > 0.55 and abs(held_after[label].score.estimate - h.score.estimate) > 0.05


def test_the_report_gives_each_configuration_its_held_out_score_and_the_choice_its_optimism(tmp_path):
    records = _study(tmp_path)
    summaries = aggregate(records)
    by_label = {s.label: s for s in summaries}
    chosen = by_label["Wq r=4"]
    held = holdout.held_out(summaries, records, holdout.holdout_reader(_comparer(tmp_path)), chosen)
    assert held["Wq r=4"].score.estimate == pytest.approx(0.71, abs=0.002)
    assert held["Wq r=4"].n == N_HELD and held["Wq r=4"].seeds == 2
    assert held["Wq r=4"].optimism == pytest.approx(chosen.mean - 0.71, abs=0.002)  # 0.805 - 0.71
    vs = held["Wq,Wv r=1"].vs_choice  # 0.78 - 0.71 on the same held-out examples
    assert vs.estimate == pytest.approx(0.07, abs=0.003) and vs.low < vs.estimate < vs.high
    assert held["Wq r=4"].score.low < 0.71 < held["Wq r=4"].score.high
    lines = "\n".join(holdout.selection_lines(chosen, [by_label["Wq,Wv r=1"]], held, 0.95))
    assert "chosen Wq r=4: 0.7100 [" in lines and "optimism +0.0950" in lines
    assert re.search(r"Wq,Wv r=1 - Wq r=4 = \+0\.07\d\d \[", lines)
    assert holdout.metrics(chosen, held)["select/optimism"] == pytest.approx(0.095, abs=0.002)


def test_summary_csv_gains_report_only_held_out_columns_only_when_there_is_a_held_out_split(tmp_path):
    records = _study(tmp_path)
    summaries = aggregate(records)
    held = holdout.held_out(summaries, records, holdout.holdout_reader(_comparer(tmp_path)))
    plain = summary_table(summaries, fmt="csv").splitlines()
    with_held = summary_table(summaries, fmt="csv", held=held).splitlines()
    assert plain[0].endswith(",label,lr")  # a study without held-out outputs: no held-out columns
    assert with_held[0] == plain[0] + "," + ",".join(holdout.CSV_COLUMNS)
    row = dict(zip(with_held[0].split(","), with_held[1 + [s.label for s in summaries].index("Wq r=8")].split(","),
                   strict=True))
    assert float(row["holdout_mean"]) == pytest.approx(0.72, abs=0.002) and row["holdout_n"] == str(N_HELD)
    assert "held-out (report only)" in summary_table(summaries, held=held).splitlines()[0]
    for rec in records[:2]:  # a configuration without held-out outputs: no held-out score, never a wrong one
        os.remove(predictions_path(str(tmp_path), rec.run_id, holdout.HOLDOUT_ARTIFACT))
    assert "Wq r=1" not in holdout.held_out(summaries, records, holdout.holdout_reader(_comparer(tmp_path)))


def test_no_decision_module_reads_the_held_out_split():
    """By structure: the modules the decisions live in never name the held-out split, and records carry no
    held-out field; the held-out artifact differs from the decision split's."""
    import rank_sweep

    root = os.path.dirname(rank_sweep.__file__)
    decision_modules = ["study/plan.py", "study/history.py", "study/spec.py", "study/sampler.py",
                        "results/records.py", "results/readers.py", "results/selection.py", "results/compare.py",
                        "results/paired.py"]
    for rel in decision_modules:
        with open(os.path.join(root, rel)) as f:
            assert "holdout" not in f.read().lower().replace("held-out", ""), rel
    assert not any("holdout" in f for f in TrialRecord.__dataclass_fields__)
    assert holdout.HOLDOUT_ARTIFACT != ARTIFACT


def test_the_benchmark_measures_the_ladders_regret_and_optimism_on_held_out_examples(tmp_path):
    from experiments.benchmarks.bench import holdout_regret

    records = _study(tmp_path)
    chosen = next(s for s in aggregate(records) if s.label == "Wq,Wv r=1")  # dev 0.79/0.80, held-out 0.78
    best = max(records, key=lambda r: r.score)  # Wq r=8 seed 1: dev 0.82, held-out 0.72 (a lucky dev maximum)
    res = holdout_regret(chosen, best, records, _comparer(tmp_path))
    assert res["regret_holdout"] == pytest.approx(0.72 - 0.78, abs=0.003)
    low, high = res["regret_holdout_ci"]
    assert low < res["regret_holdout"] < high < 0  # on held-out examples the grid's best is worse, not better
    assert res["choice_optimism"] == pytest.approx(0.795 - 0.78, abs=0.003)
    same = holdout_regret(chosen, next(r for r in records if r.number in chosen.numbers), records, _comparer(tmp_path))
    assert same["regret_holdout"] == 0.0
    for rec in records:
        os.remove(predictions_path(str(tmp_path), rec.run_id, holdout.HOLDOUT_ARTIFACT))
    assert holdout_regret(chosen, best, records, _comparer(tmp_path)) == {}


def test_the_optimism_of_a_minimized_metric_is_held_out_minus_decision_and_says_so():
    from rank_sweep.results.paired import Interval

    chosen = ConfigSummary(targets="Wq,Wv", r=2, n=1, mean=0.1858, std=0.0, lora_params=1, trainable_params=1,
                           train_seconds=1.0, numbers=(0,))
    better = holdout.HeldOut(Interval(0.1791, 0.1662, 0.1929), 2000, 1, (0.1791,), optimism=0.1791 - 0.1858)
    line = holdout.selection_lines(chosen, [], {chosen.label: better}, 0.95)[1]
    assert "optimism -0.0067 (held-out 0.1791 minus decision-split score 0.1858: the metric is minimized)" in line
