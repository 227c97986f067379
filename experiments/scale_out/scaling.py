"""Trials per hour with 1 and with N workers on one study (tiny models): the scale-out figure.

    python experiments/scale_out/scaling.py                  # 1 and 2 workers, SQLite study + MLflow file
    eval "$(bash .ci/services start)"                        # or: PostgreSQL + an MLflow server, as on a cluster
    python experiments/scale_out/scaling.py --workers 1 2 --servers

The workload is fixed so that worker counts compare: a grid study (every rank x target set, no early
stop) of a 2-layer, 32-wide BERT on a toy task, each worker a `rank-sweep` process with one torch thread.
Two figures per worker count: trials/hour over the study's own span (first trial start to last trial end:
the workers' throughput) and over the whole wall time (process start-up included, what a user waits).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid

import optuna

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from rank_sweep.study.storage import open_storage  # noqa: E402
from tests.conftest import make_tiny_model, make_toy_data, toy_overrides  # noqa: E402

BIN = os.path.dirname(sys.executable)


def run(n_workers: int, model: str, data: str, tmp: str, servers: bool, ranks: str, epochs: int) -> dict:
    name = f"scaling-{n_workers}w-{uuid.uuid4().hex[:6]}"
    if servers:
        storage, uri = os.environ["RANK_SWEEP_PG_URL"], os.environ["RANK_SWEEP_MLFLOW_URI"]
    else:
        storage, uri = f"sqlite:///{tmp}/optuna.db", f"sqlite:///{tmp}/mlflow.db"
    args = toy_overrides(model, data, tmp) + [
        "search.strategy=grid", f"search.ladder={ranks}", "search.target_sets=[[Wq],[Wq,Wv]]",
        f"trainer.epochs={epochs}", "trainer.num_threads=1", f"search.storage={storage}",
        f"search.study_name={name}", f"tracking.uri={uri}", f"tracking.experiment={name}"]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([os.path.join(BIN, "rank-sweep"), *args], cwd=tmp, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(n_workers)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"worker failed ({p.returncode}): {err[-2000:]}")
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    busy = sum(t.duration.total_seconds() for t in done)
    return {"workers": n_workers, "trials": len(done), "span_s": round(span, 1), "wall_s": round(wall, 1),
            "trials_per_hour": round(3600 * len(done) / span), "trials_per_hour_wall": round(3600 * len(done) / wall),
            "mean_trial_s": round(busy / len(done), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--servers", action="store_true", help="PostgreSQL + MLflow server from .ci/services")
    ap.add_argument("--ranks", default="[1,2,4,8]", help="the grid's ranks (x [Wq], [Wq,Wv], [Wq,Wk,Wv,Wo])")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", default="scaling.json")
    a = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model, data = make_tiny_model(os.path.join(tmp, "tiny")), make_toy_data(os.path.join(tmp, "toy"))
        for n in a.workers:
            work = os.path.join(tmp, f"w{n}")
            os.makedirs(work)
            rows.append(run(n, model, data, work, a.servers, a.ranks, a.epochs))
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["trials_per_hour"]
    for r in rows:
        r["speedup"] = round(r["trials_per_hour"] / base, 2)
    out = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "stores": "PostgreSQL + MLflow server" if a.servers else "SQLite + MLflow SQLite file", "rows": rows}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
    print("| workers | trials | span s | trials/hour (span) | speedup | wall s | trials/hour (wall) | mean trial s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['trials']} | {r['span_s']} | {r['trials_per_hour']} | {r['speedup']} | "
              f"{r['wall_s']} | {r['trials_per_hour_wall']} | {r['mean_trial_s']} |")


if __name__ == "__main__":
    main()
