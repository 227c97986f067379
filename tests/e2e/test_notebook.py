"""notebooks/rank_curves.ipynb: executed with nbclient on a study logged to a
temporary MLflow store, and kept without outputs in git.

The study the notebook reads is written directly with MlflowClient
(tests/unit/test_records_mlflow.log_study: no training, seconds); a real sweep on
the tiny model checks that the names it writes are those rank-sweep logs, and that
reading a study back from MLflow gives the records the Optuna storage gives."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from mlflow.tracking import MlflowClient
from nbclient import NotebookClient

from rank_sweep.results.readers import records_from_mlflow, records_from_study
from tests.unit.results.test_readers_mlflow import STUDY, log_study, trial

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "rank_curves.ipynb"
FALLBACK_KERNEL = "rank_sweep_test"


def _runs_this_python(argv0: str) -> bool:
    # jupyter_client starts a kernelspec whose argv[0] is a bare "python"/"python3"/"python3.X"
    # with sys.executable, as the venv's own python3 spec (share/jupyter/kernels/python3) has it
    bare = {"python", f"python{sys.version_info[0]}", f"python{sys.version_info[0]}.{sys.version_info[1]}"}
    return argv0 in bare or os.path.abspath(argv0) == os.path.abspath(sys.executable)


def fallback_kernel(folder: Path) -> str:
    """A kernelspec that starts this interpreter, in ``folder`` (put it on JUPYTER_PATH); its name."""
    spec = folder / "kernels" / FALLBACK_KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "rank_sweep tests", "language": "python"}))
    return FALLBACK_KERNEL


def kernel_name(tmp_path: Path, monkeypatch) -> str:
    """"python3" if it runs this interpreter (it does in the project's .venv); otherwise (a user-wide
    python3 kernelspec pointing elsewhere) a kernelspec on a temporary JUPYTER_PATH, leaving ~ alone."""
    try:
        if _runs_this_python(KernelSpecManager().get_kernel_spec("python3").argv[0]):
            return "python3"
    except NoSuchKernel:
        pass
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return fallback_kernel(tmp_path / "jupyter")


def test_fallback_kernelspec_starts_this_python(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    spec = KernelSpecManager().get_kernel_spec(fallback_kernel(tmp_path))
    assert spec.argv[0] == sys.executable and _runs_this_python(spec.argv[0])


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"cell {cell.get('id')} keeps outputs: strip them"
    assert nb.metadata.kernelspec.name == "python3"
    assert "widgets" not in nb.metadata
    assert all("rank_sweep.trial" not in c.source and "run_study" not in c.source for c in code), "it never trains"
    # figures and tables come from rank_sweep.plots / select / records, not from code kept in the notebook
    assert all("matplotlib" not in c.source and "statistics" not in c.source for c in code)


def _outputs(nb, cell_id: str) -> list:
    return next(c.outputs for c in nb.cells if c.get("id") == cell_id)


def _text(outputs) -> str:
    return "".join(o.get("text", "") for o in outputs if o.output_type == "stream")


def _images(outputs) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs if o.output_type == "display_data")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow store (creating one costs seconds) with the studies the notebook tests read."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('nb_store')}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("rank_sweep")
    log_study(client, exp, "nb_study", STUDY)
    log_study(client, exp, "stuck", [trial("Wq", r, 0, 0.51, not_learning=True) for r in (1, 2)])
    log_study(client, exp, "later", [trial("Wq", 1, 0, 0.7)])  # the latest: RANK_SWEEP_STUDY must win over it
    return uri


def test_notebook_runs_on_a_study_and_draws_its_figures(store, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK_SWEEP_TRACKING_URI", store)
    monkeypatch.setenv("RANK_SWEEP_STUDY", "nb_study")
    monkeypatch.setenv("RANK_SWEEP_TOLERANCE", "0.03")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))  # connection files: not in ~
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # the kernel's profile and history: not in ~

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name=kernel_name(tmp_path, monkeypatch),
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises CellExecutionError

    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    head = _text(_outputs(nb, "load"))
    assert head.startswith("study 'nb_study': parent run ") and "10 trials" in head, head
    assert "1 FAIL" in head and "1 PRUNED" in head and "metric accuracy" in head and "decision: Wq: r=2" in head
    table = _text(_outputs(nb, "summary"))
    # every row with its learning rate (issue 24): the lr column, since the runs logged it
    assert "| targets | r | lr | mean | interval | std | n | LoRA params | trainable params | note |" in table, table
    assert "| Wq | 1 | 0.001 | 0.66 |" in table and "1 of 2 seeds not learning" in table
    assert "| Wq,Wv | 2 | 0.001 | 0.88 | ? | 0 | 1 | 18,432 |" in table
    pareto = _text(_outputs(nb, "pareto"))
    assert "chosen: Wq,Wv r=1" in pareto and "Pareto front (score vs trainable params" in pareto, pareto
    for cell in ("rank-curves", "pareto", "learning-curves"):
        assert _images(_outputs(nb, cell)) == 1, f"cell {cell} drew no figure"
    assert not NOTEBOOK.with_suffix(".nbconvert.ipynb").exists()


def test_notebook_code_on_a_study_that_never_learns(store, tmp_path, monkeypatch, capsys):
    """The cells' code run in this process (no kernel, a second): a study where no configuration learns
    still gives its table and figures, and says why there is no choice."""
    monkeypatch.setenv("RANK_SWEEP_TRACKING_URI", store)
    monkeypatch.setenv("RANK_SWEEP_STUDY", "stuck")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for cell in nbformat.read(NOTEBOOK, as_version=4).cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, f"<cell {cell.get('id')}>", "exec"), namespace)
    out = capsys.readouterr().out
    assert "study 'stuck'" in out and "| Wq | 2 | 0.001 | 0.51 | ? | 0 | 1 |" in out and "| not learning |" in out, out
    assert "no choice: no configuration within the budget is learning" in out, out
    assert "Pareto front, cheapest first:\n(empty)" in out, out
    assert {p.name for p in namespace["FIGURES"].iterdir()} == {"rank_curves.png", "pareto.png",
                                                                "learning_curves.png"}


def test_mlflow_records_are_the_optuna_records_of_a_real_sweep(toy_cfg, tmp_path, monkeypatch):
    """A real two-trial study on the tiny model (seconds): records read from MLflow equal those
    read from Optuna, and the hand-built study above uses the names the sweep logs."""
    from rank_sweep.study.run import run_study

    monkeypatch.chdir(tmp_path)  # a new experiment's artifacts go to ./mlruns: keep them out of the checkout
    cfg = toy_cfg
    cfg.trainer.epochs = 2
    cfg.search.ladder, cfg.search.target_sets, cfg.search.extend = [1, 2], [["Wq", "Wv"]], False
    cfg.search.lr_probe = []  # the points this test counts: no learning-rate probe
    cfg.search.study_name = "contract"
    cfg.search.budget.max_trials, cfg.search.max_consecutive_failures = 4, 2  # a broken sweep stops, never loops
    study = run_study(cfg)
    uri = cfg.tracking.resolved_uri()
    from_optuna = [r for r in records_from_study(study) if r.run_id]
    assert len(from_optuna) == 2 and all(r.state == "COMPLETE" for r in from_optuna)
    from_mlflow = records_from_mlflow(uri, "contract")
    assert from_mlflow == from_optuna
    assert all(len(r.intermediate) == 2 for r in from_mlflow)

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    log_study(client, exp, "hand_built", [trial("Wq,Wv", 1, 0, 0.9)], metric=cfg.task.metric)
    runs = client.search_runs([exp])

    def one(study_name: str, kind: str):
        parent = next(r for r in runs if r.data.tags.get("study_name") == study_name)
        if kind == "study":
            return parent
        return next(r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)

    for kind in ("study", "trial"):
        real, fake = one("contract", kind), one("hand_built", kind)
        assert real.data.tags["kind"] == fake.data.tags["kind"] == kind
        assert set(fake.data.params) <= set(real.data.params), set(fake.data.params) - set(real.data.params)
        assert set(fake.data.metrics) <= set(real.data.metrics), set(fake.data.metrics) - set(real.data.metrics)
        assert set(fake.data.tags) <= set(real.data.tags), set(fake.data.tags) - set(real.data.tags)
        if kind == "study":
            assert (real.info.run_name, fake.info.run_name) == ("study contract", "study hand_built")
        else:
            for run in (real, fake):
                assert re.fullmatch(r"trial \d+: Wq,Wv r=[12] seed=0", run.info.run_name), run.info.run_name

