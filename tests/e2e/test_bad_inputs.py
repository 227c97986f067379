"""The bad-input catalogue cases the command shows best (docs/bad_inputs.md): Hydra's own errors for an
unknown config group or key, and what ``rank-sweep`` prints for a bad value or an unusable store with
credentials in its URL. The commands run concurrently (one Python start-up each is ~10 s on 2 cores)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import toy_overrides
from tests.e2e.test_cli import run

SWEEP = ["search.ladder=[1,2]", "search.target_sets=[[Wq]]", "search.extend=false"]

# id, overrides, exit status, expected lines (each must appear), the one-line `rank-sweep: error:` form?
CASES = [
    ("unknown-task-group", ["task=nope"], 1,
     ["In 'config': Could not find 'task/nope'", "Available options in 'task':", "\tsst2"], False),
    ("unknown-model-group", ["model=nope"], 1,
     ["In 'config': Could not find 'model/nope'", "Available options in 'model':", "\tminilm_l6"], False),
    ("misspelled-key-without-plus", ["search.max_rnak=8"], 2,
     ["rank-sweep: error: search.max_rnak is not a known key: did you mean search.max_rank?"], True),
    ("lightning-name-for-a-key", ["trainer.max_epochs=1", "task=nope"], 1,  # the alias is read, then Hydra speaks
     ["rank-sweep: note: trainer.max_epochs read as trainer.epochs", "In 'config': Could not find 'task/nope'"], False),
    ("cli-ladder-not-increasing", ["search.ladder=[4,2]"], 2,
     ["rank-sweep: error: search.ladder=[4, 2] is not valid: ranks must be strictly increasing"], True),
    ("storage-credentials", ["search.storage=postgresql://alice:s3cret@127.0.0.1:1/db"], 2,
     ["rank-sweep: error: cannot open study storage 'postgresql://***@127.0.0.1:1/db': "], True),
    ("cli-tracking-credentials", ["tracking.uri=http://alice:s3cret@127.0.0.1:9"], 2,
     ["rank-sweep: error: cannot use the MLflow tracking store 'http://***@127.0.0.1:9': "], True),
]


@pytest.fixture(scope="module")
def results(tiny_model_dir, toy_data_dir, tmp_path_factory) -> dict:
    def one(case):
        name, overrides = case[0], case[1]
        tmp = tmp_path_factory.mktemp(name)
        args = toy_overrides(tiny_model_dir, toy_data_dir, tmp) + SWEEP + overrides
        return name, (tmp, run("rank-sweep", args, tmp, timeout=300))

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(one, CASES))


@pytest.mark.parametrize("status, expected, one_line", [c[2:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_on_the_command_line(results, request, status, expected, one_line):
    tmp, res = results[request.node.callspec.id]
    assert res.returncode == status, res.stderr[-3000:]
    assert "Traceback" not in res.stderr + res.stdout
    assert "s3cret" not in res.stderr + res.stdout
    for line in expected:
        assert line in res.stderr.splitlines() or any(line in x for x in res.stderr.splitlines()), res.stderr
    if one_line:
        errors = [x for x in res.stderr.splitlines() if x.startswith("rank-sweep: error:")]
        assert len(errors) == 1 and errors[0].startswith(expected[0]), res.stderr
    assert "trial " not in res.stdout  # nothing trained
    db = tmp / "mlflow.db"
    if db.exists():
        client = MlflowClient(f"sqlite:///{db}")
        exp = client.get_experiment_by_name("rank_sweep")
        assert exp is None or client.search_runs([exp.experiment_id]) == []
    assert not os.path.exists(tmp / "outputs" / "factors")
