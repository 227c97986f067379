"""``rank-sweep-select``'s ``report.html`` (``select.report=true``, the default): the choice for the budget
first, then select's plots, the runners-up and the Pareto front, the study's own summary with each ladder's
verdicts (its parent run's ``summary.md``, when the store has it) and the provenance of both::

    path = select_page(cfg, "quickstart", parent_run_id, "study storage ...", selection_text, paths, out)

Rendered by :mod:`rank_sweep.results.html`; nothing is recomputed.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from collections.abc import Sequence

from rank_sweep import tracking
from rank_sweep.config import RunConfig
from rank_sweep.errors import first_line
from rank_sweep.results import html

PROVENANCE_TAGS = ("git.sha", "git.dirty", "python", "host.platform")


def parent_summary(cfg: RunConfig, run_id: str | None) -> tuple[str, dict[str, str]]:
    """The study's ``summary.md`` and provenance tags from its MLflow parent run; a store that cannot say
    gives a one-line note instead of the text and no tags."""
    if not run_id:
        return "(the study has no MLflow parent run: no summary.md to show)", {}
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=cfg.tracking.resolved_uri())
        tags = client.get_run(run_id).data.tags
        found = {k: v for k, v in tags.items() if k in PROVENANCE_TAGS or k.startswith("version.")}
        with tempfile.TemporaryDirectory() as tmp:
            with open(client.download_artifacts(run_id, "summary.md", tmp)) as f:
                return f.read(), found
    except Exception as e:  # no summary logged yet, or a store whose artifacts are not here
        return f"(summary.md of parent run {run_id} could not be read: {first_line(e)[:200]})", {}


def select_page(cfg: RunConfig, study_name: str, parent_run_id: str | None, where: str, selection_text: str,
                plots: Sequence[str], out: str, retrain: str = "") -> str:
    """Write ``<out>/report.html`` and return its path."""
    answer, rest = html.split_answer(selection_text)
    summary, study_tags = parent_summary(cfg, parent_run_id)
    captions = dict(html.PLOTS)
    images = [(captions.get(os.path.basename(p), os.path.basename(p)), p) for p in plots]
    prov = {"study": study_name, "read from": where, "parent run": parent_run_id or "(none)",
            **{f"study {k}": v for k, v in study_tags.items()},
            "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            **{f"select {k}": v for k, v in tracking.provenance().items()}}
    path = html.write_report(os.path.join(out, "report.html"), f"rank_sweep study {study_name}: the choice",
                             answer, images,
                             [("Runners-up and Pareto front", rest), ("The study's summary and each ladder's verdicts",
                                                                      summary)],
                             prov, answer_note=f"Retrain the choice: {retrain}" if retrain else "")
    return str(path)
