"""The bad-input catalogue (docs/bad_inputs.md), in-process: each bad config value, data file or store URI
makes ``run_study`` raise one RankSweepError whose one-line message names the problem, before any training,
with no Optuna trial and no MLflow run left behind. The CLI prints that message as ``rank-sweep: error: ...``
with exit status 2 (tests/e2e/test_bad_inputs.py runs the command for the cases only the CLI shows)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import lightning.pytorch as pl
import optuna
import pytest
from mlflow.tracking import MlflowClient

from rank_sweep.errors import RankSweepError
from rank_sweep.study import objective as study_objective
from tests.conftest import toy_overrides

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

SWEEP = ["search.ladder=[1,2]", "search.target_sets=[[Wq]]", "search.extend=false"]


def _write(name: str, content: bytes | str):
    def setup(data: Path, tmp: Path):
        path = data / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def _label_out_of_range(data: Path, tmp: Path):
    with open(data / "train.csv", "a") as f:
        f.write("a strange film,2\n")


def _regular_file(data: Path, tmp: Path):
    (tmp / "a_file").write_text("not a folder\n")


def _jsonl(train: str):
    def setup(data: Path, tmp: Path):
        (data / "train.jsonl").write_text(train)
        (data / "dev.jsonl").write_text('{"text": "a great film", "label": 1}\n{"text": "awful", "label": 0}\n')
    return setup


JSONL = ["task.source=jsonl", "task.train_file=train.jsonl", "task.validation_file=dev.jsonl"]


def _folder(name: str, files: dict[str, str] | None = None):
    def setup(data: Path, tmp: Path):
        (tmp / name).mkdir()
        for file, text in (files or {}).items():
            (tmp / name / file).write_text(text)
    return setup


# id, overrides ({tmp} and {data} are filled in), data setup, expected part of the message
CASES = [
    # ranks and the ladder
    ("rank-not-integer", ["search.ladder=[1,2.5]"], None,
     "search.ladder=2.5 is not valid: the rank must be a positive integer"),
    ("rank-zero", ["search.ladder=[0,1]"], None, "search.ladder=0 is not valid: the rank must be a positive integer"),
    ("rank-negative", ["search.ladder=null", "search.start_rank=-2"], None,
     "search.start_rank=-2 is not valid: the rank must be a positive integer"),
    ("lora-r-negative", ["lora.r=-1"], None, "lora.r=-1 is not valid: the rank must be a positive integer"),
    ("rank-too-large", ["search.ladder=[1,64]"], None,
     "search.max_rank/ladder: lora.r=64 is too large: "),
    ("ladder-not-increasing", ["search.ladder=[4,2]"], None,
     "search.ladder=[4, 2] is not valid: ranks must be strictly increasing"),
    ("ladder-empty", ["search.ladder=[]"], None, "search.ladder=[] is not valid: give increasing ranks"),
    # target sets
    ("target-set-empty", ["search.target_sets=[[]]"], None,
     "search.target_sets=[[]] is not valid: each target set needs >= 1 role"),
    ("no-target-sets", ["search.target_sets=[]"], None,
     "search.target_sets=[] is not valid: each target set needs >= 1 role"),
    ("unknown-role", ["search.target_sets=[[Wz]]"], None, "lora.targets: unknown role 'Wz': valid roles are Wq"),
    ("unknown-role-in-extension", ["search.extend=true", "search.extend_target_sets=[[Wq,Wz]]"], None,
     "lora.targets: unknown role 'Wz'"),
    ("module-matches-nothing", ["search.target_sets=[[nonexistent]]"], None,
     "lora.targets: 'nonexistent' matches no linear module of this model"),
    ("group-twice", ["search.target_sets=[[attention],[Wq,Wk,Wv,Wo]]"], None,
     "two of them are the same matrices on this model (Wq,Wk,Wv,Wo, Wq,Wk,Wv,Wo)"),
    ("allocation-budget-not-a-count", ["search.allocation_sets=[[mlp]]", "search.allocation_budgets=[0]"], None,
     "search.allocation_budgets=[0] is not valid: give distinct LoRA parameter counts"),
    ("allocation-set-unknown-role", ["search.allocation_sets=[[Wq,Wz]]"], None, "lora.targets: unknown role 'Wz'"),
    ("lr-bracket-without-one", ["search.lr_bracket=[0.3,3]"], None,
     "search.lr_bracket=[0.3, 3] is not valid: give distinct positive multiples of trainer.lr that include 1"),
    ("head-reference-not-boolean", ["search.head_reference=maybe"], None, "search.head_reference='maybe' is not valid"),
    ("lr-check-unknown-side", ["search.lr_check=above"], None,
     "search.lr_check='above' is not valid: give lower (the neighbouring lr below the ladder's), both, or false"),
    ("lr-shared-not-boolean", ["search.lr_shared=first"], None, "search.lr_shared='first' is not valid: give true or false"),
    # stopping rule, budget, retries
    ("negative-min-delta", ["search.min_delta=-1"], None, "search.min_delta=-1 is not valid: it must be >= 0"),
    ("zero-seeds", ["search.seeds=0"], None, "search.seeds=0 is not valid: it must be > 0"),
    ("budget-below-cheapest-trial", ["search.budget.max_lora_params=1"], None,
     "the budget is below the cheapest trial: Wq r=1 needs 128 LoRA params"),
    ("heartbeat-too-short", ["search.heartbeat_seconds=1"], None, "search.heartbeat_seconds=1 is not valid"),
    ("unknown-search-key", ["+search.max_rnak=8"], None,
     "search.max_rnak is not a known key: valid keys are allocation_budgets, allocation_sets, budget"),
    ("negative-lr", ["trainer.lr=-1"], None, "trainer.lr=-1 is not valid: it must be > 0"),
    # issue #13: inputs that used to get through or fail with a traceback
    ("init-changes-the-base", ["lora.init=pissa"], None,
     "lora.init='pissa' is not supported: it rewrites the base weights"),
    ("init-needs-quantized-base", ["lora.init=loftq"], None, "lora.init='loftq' is not supported"),
    ("several-devices", ["trainer.devices=2"], None,
     "trainer.devices=2 is not valid: a trial runs on one device"),
    ("seq-length-over-the-model", ["task.max_seq_length=100000"], None,
     "task.max_seq_length=100000 is not valid: model {model} takes at most 64 tokens"),
    ("fused-role-alone", ["model.family=phi3", "search.target_sets=[[Wq]]"], None,
     "lora.targets: role Wq cannot be adapted alone on phi3: it fuses Wq, Wk and Wv into one matrix 'qkv_proj'"),
    ("rank-budget-below-the-first-rung", ["search.budget.max_rank=1", "search.ladder=[2,4]"], None,
     "search.budget.max_rank=1 is below the first rung r=2"),
    # model
    ("model-folder-missing", ["model.name_or_path={tmp}/no_model"], None, "model.name_or_path='{tmp}/no_model' is not valid: folder '{tmp}/no_model' does not exist"),
    # data files
    ("train-file-missing", ["task.train_file=missing.csv"], None,
     "data file '{data}/missing.csv' does not exist: expected the training file of task toy"),
    ("train-file-empty", [], _write("train.csv", b""), "data file '{data}/train.csv' is empty"),
    ("train-file-header-only", [], _write("train.csv", "text,label\n"), "data file '{data}/train.csv' has no rows"),
    ("wrong-text-column", ["task.text_fields=[sentence]"], None,
     "data file '{data}/train.csv' has no text column 'sentence' (task.text_fields): columns present are text, label"),
    ("wrong-label-column", ["task.label_field=y"], None,
     "data file '{data}/train.csv' has no label column 'y' (task.label_field)"),
    ("label-out-of-range", [], _label_out_of_range,
     "label '2' in data file '{data}/train.csv' is not one of task.labels ['0', '1']"),
    ("not-utf8", [], _write("dev.csv", "text,label\ncaf\xe9 cr\xe8me,1\n".encode("latin-1")),
     "data file '{data}/dev.csv' is not valid UTF-8: save it as UTF-8"),
    # stores and folders
    ("storage-url-malformed", ["search.storage=notascheme://x"], None,
     "cannot open study storage 'notascheme://x': "),
    ("storage-folder-missing", ["search.storage=sqlite:///{tmp}/no/such/dir/optuna.db"], None,
     "cannot open study storage 'sqlite:///{tmp}/no/such/dir/optuna.db': (sqlite3.OperationalError) unable to open "
     "database file"),
    ("journal-folder-missing", ["search.storage={tmp}/no/such/dir/study.journal"], None,
     "cannot open study storage '{tmp}/no/such/dir/study.journal': [Errno 2] No such file or directory"),
    ("tracking-uri-unknown-scheme", ["tracking.uri=nosuch://x"], None,
     "cannot use the MLflow tracking store 'nosuch://x': unsupported URI scheme 'nosuch' (MLflow knows"),
    ("tracking-uri-unreachable", ["tracking.uri=http://127.0.0.1:9"], None,
     "cannot use the MLflow tracking store 'http://127.0.0.1:9': no tracking server answers there "
     "(Connection refused)"),
    ("tracking-uri-credentials", ["tracking.uri=http://alice:s3cret@127.0.0.1:9"], None,
     "cannot use the MLflow tracking store 'http://***@127.0.0.1:9': no tracking server answers there"),
    ("output-dir-under-a-file", ["output_dir={tmp}/a_file/outputs"], _regular_file,
     "output_dir='{tmp}/a_file/outputs' is not writable (Not a directory): set output_dir to a folder you can write"),
    ("output-dir-in-proc", ["output_dir=/proc/forbidden"], None,
     "output_dir='/proc/forbidden' is not writable (No such file or directory)"),
    # issue #28: inputs that got a traceback, were accepted silently, or got a message pointing the wrong way
    ("seed-not-integer", ["seed=abc"], None, "seed='abc' is not valid: give an integer from 0 to"),
    ("seed-negative", ["seed=-1"], None, "seed=-1 is not valid: give an integer from 0 to"),
    ("num-threads-negative", ["trainer.num_threads=-2"], None,
     "trainer.num_threads=-2 is not valid: give a positive integer (torch threads) or null (all cores)"),
    ("patience-negative", ["trainer.early_stopping_patience=-1"], None,
     "trainer.early_stopping_patience=-1 is not valid: give a positive integer (epochs) or null (no early stopping)"),
    ("max-steps-zero", ["trainer.max_steps=0"], None,
     "trainer.max_steps=0 is not valid: a positive integer, or -1 (epochs decide)"),
    ("switch-not-boolean", ["save_adapter=no"], None, "save_adapter='no' is not valid: give true or false"),
    ("lora-target-twice", ["lora.targets=[Wq,Wq]"], None,
     "lora.targets=['Wq', 'Wq'] is not valid: Wq is named twice; name each role once"),
    ("target-set-role-twice", ["search.target_sets=[[Wq,Wq]]"], None,
     "search.target_sets: target set=['Wq', 'Wq'] is not valid: Wq is named twice"),
    ("target-sets-same-set", ["search.target_sets=[[Wq,Wv],[Wv,Wq]]"], None,
     "['Wq', 'Wv'] and ['Wv', 'Wq'] are the same set of matrices (two ladders of one adapter)"),
    ("labels-repeated", ["task.labels=[0,1,1]"], None,
     "task.labels=['0', '1', '1'] is not valid: each label once"),
    ("correlation-on-classes", ["task.metric=pearson"], None,
     "task.metric contains 'pearson', not valid for a classification task (task.labels is set)"),
    ("seq-length-too-short", ["task.max_seq_length=1"], None,
     "task.max_seq_length=1 is not valid: it must be >= 8"),
    ("output-dir-is-a-file", ["output_dir={tmp}/a_file"], _regular_file,
     "output_dir='{tmp}/a_file' is a file, not a folder"),
    ("jsonl-line-malformed", JSONL, _jsonl('{"text": "great", "label": 1}\n{"text": "bad", "label": 0\n'),
     "data file '{data}/train.jsonl' line 2 is not valid JSON (Expecting ',' delimiter, column 27): the training "
     "file of task toy needs one JSON object per line"),
    ("jsonl-text-not-text", JSONL, _jsonl('{"text": 5, "label": 1}\n'),
     "data file '{data}/train.jsonl' line 1: text=5 is not text: write it as a JSON string"),
    ("data-file-is-a-folder", ["task.train_file=sub"], lambda data, tmp: (data / "sub").mkdir(),
     "data file '{data}/sub' is a folder: expected the training file of task toy"),
    ("model-folder-empty", ["model.name_or_path={tmp}/empty_model"], _folder("empty_model"),
     "model.name_or_path='{tmp}/empty_model' is not valid: folder '{tmp}/empty_model' has no config.json (it is "
     "empty)"),
    ("model-folder-without-weights", ["model.name_or_path={tmp}/half_model"],
     _folder("half_model", {"config.json": '{"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, '
                                           '"num_attention_heads": 2, "intermediate_size": 37}'}),
     "model.name_or_path='{tmp}/half_model': cannot load the model from folder '{tmp}/half_model': Error no file "
     "named model.safetensors"),
]


def _merge(base: list[str], extra: list[str]) -> list[str]:
    """Overrides by key, later ones winning (Hydra rejects a key given twice)."""
    out: dict[str, str] = {}
    for item in [*base, *extra]:
        out[item.split("=", 1)[0].lstrip("+")] = item
    return list(out.values())


@pytest.fixture
def data_dir(toy_data_dir, tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("train.csv", "dev.csv"):
        (folder / name).write_bytes((Path(toy_data_dir) / name).read_bytes())
    return folder


@pytest.mark.parametrize("overrides, setup, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_in_one_line_before_training(tiny_model_dir, data_dir, tmp_path, monkeypatch, overrides,
                                                      setup, message):
    from hydra import compose, initialize_config_dir

    from rank_sweep.cli import CONF_DIR
    from rank_sweep.config import build_config
    from rank_sweep.study.run import run_study

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.chdir(tmp_path)
    if setup:
        setup(data_dir, tmp_path)

    def no_training(*args, **kwargs):
        pytest.fail("training started")  # a BaseException: Optuna does not catch it

    monkeypatch.setattr(pl.Trainer, "fit", no_training)
    monkeypatch.setattr(study_objective, "run_trial", no_training)
    fill = {"tmp": str(tmp_path), "data": str(data_dir), "model": tiny_model_dir}
    base = toy_overrides(tiny_model_dir, str(data_dir), tmp_path) + SWEEP + [
        f"search.storage=sqlite:///{tmp_path}/optuna.db"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        tree = compose("config", overrides=_merge(base, [o.format(**fill) for o in overrides]))
    with pytest.raises(RankSweepError) as err:
        run_study(build_config(tree))
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg
    assert message.format(**fill) in msg, msg
    assert "s3cret" not in msg and "Traceback" not in msg

    db = tmp_path / "mlflow.db"  # no MLflow run, RUNNING or not
    if db.exists():
        client = MlflowClient(f"sqlite:///{db}")
        exp = client.get_experiment_by_name("rank_sweep")
        assert exp is None or client.search_runs([exp.experiment_id]) == []
    store = tmp_path / "optuna.db"  # no Optuna trial
    if store.exists():
        storage = f"sqlite:///{store}"
        assert all(s.n_trials == 0 for s in optuna.get_all_study_summaries(storage))
    assert not (tmp_path / "outputs" / "factors").exists()


def test_catalogue_documents_every_case():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "bad_inputs.md").read_text()
    rows = [line for line in doc.splitlines() if re.match(r"\| *`?[a-z0-9-]+`? *\|", line)]
    documented = {re.match(r"\| *`?([a-z0-9-]+)`? *\|", row).group(1) for row in rows}
    from tests.e2e import test_bad_inputs as cli_cases
    from tests.unit import test_warnings_and_resources as more_cases

    ids = {c[0] for c in CASES} | {c[0] for c in cli_cases.CASES} | {c[0] for c in more_cases.CASES}
    assert ids <= documented, sorted(ids - documented)
    assert len(ids) >= 20
    assert os.path.basename(__file__) in doc and os.path.basename(more_cases.__file__) in doc
