"""The study's ``report.html`` at its end: written beside the summary and plots, logged to the parent run
with them, and copied to ``<output_dir>/reports/<study>/report.html``::

    path = study_page(study, info, text, cfg, run_id, folder)   # info, text: study.report.summarize

The answer is what ``rank-sweep-select`` would choose without a budget (its rule, its default tolerance, the
same paired comparer), with the ladders' plateau lines; the rest of the page is the summary as printed and the
plots already drawn in ``folder`` (rank_sweep.results.html renders them; nothing is recomputed).
"""

from __future__ import annotations

import datetime
import os
import shutil

from rank_sweep import tracking
from rank_sweep.config import Budget, RunConfig, SelectConfig
from rank_sweep.errors import RankSweepError, first_line
from rank_sweep.results import html
from rank_sweep.results.finished import StudyRecords, summary_comparer
from rank_sweep.results.selection import select
from rank_sweep.results.tables import format_selection
from rank_sweep.study.storage import FINGERPRINT_ATTR

REPORT = "report.html"


def unbudgeted_choice(study, info: dict, cfg: RunConfig) -> str:
    """``format_selection`` of select's rule on the whole study, no budget, select's default tolerance and
    methods; a study it cannot choose from (nothing learned) says why in one line."""
    defaults = SelectConfig()
    records = info["records"]
    try:
        selection = select(records, Budget(), float(defaults.tolerance), cfg.task.direction,
                           summary_comparer(cfg, StudyRecords(study.study_name, records, cfg.task.direction, None, "")),
                           cfg.search.confidence, defaults.methods)
    except (RankSweepError, ValueError) as e:
        return f"no choice: {first_line(e)}"
    return format_selection(selection)


def provenance(study, cfg: RunConfig, run_id: str | None) -> dict:
    """Where the study came from: its stores and parent run, the code and versions that wrote the page, and
    the sha256 of the data files as the study's fingerprint stored them."""
    prints = study.user_attrs.get(FINGERPRINT_ATTR) or {}
    return {"study": study.study_name, "study storage": tracking.redact(cfg.storage_url()),
            "tracking uri": tracking.redact(cfg.tracking.resolved_uri()), "parent run": run_id or "(none)",
            "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            **tracking.provenance(), **{k: v for k, v in prints.items() if k.startswith("data.")}}


def study_page(study, info: dict, text: str, cfg: RunConfig, run_id: str | None, folder: str) -> str:
    """Write ``<folder>/report.html`` (the parent run's artifact once ``folder`` is logged) and its copy in the
    output folder; return the copy's path."""
    choice, rest = html.split_answer(unbudgeted_choice(study, info, cfg))
    ladders = [line for line in text.splitlines() if line.startswith(("ladder ", "extension: "))]
    answer = choice + ("\n\n" + "\n".join(ladders) if ladders else "")
    note = (f"The choice without a budget, by rank-sweep-select's rule (tolerance {SelectConfig().tolerance:g}); "
            "for a budget: rank-sweep-select ... budget.max_lora_params=N (it writes its own report.html).")
    path = html.write_report(os.path.join(folder, REPORT), f"rank_sweep study {study.study_name}", answer,
                             html.folder_images(folder),
                             [("Runners-up and Pareto front", rest), ("Summary and each ladder's verdicts", text)],
                             provenance(study, cfg, run_id), answer_note=note)
    copy = os.path.join(cfg.output_dir, "reports", study.study_name, REPORT)
    os.makedirs(os.path.dirname(copy), exist_ok=True)
    shutil.copyfile(path, copy)
    return copy
