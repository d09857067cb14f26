"""Scale-out throughput: trials per minute with 1, 2, 3 workers on one PostgreSQL study,
logging to one `doomnet server` (metadata in PostgreSQL).

    python -m benchmarks.scale_out --pg postgresql://postgres@127.0.0.1:5432/postgres

Each worker is `train.py -m ... hydra.sweeper.storage=postgresql://...` in a copy of the
project (digits, 600 updates, val/acc every 20: the scale-out test's trials). Reported: the
wall time from starting the workers to the last one exiting, and the steady rate from the
first trial's start to the last trial's end (without process start-up). Databases are
created for the run and dropped afterwards. Not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(pg: str, workers: int, trials: int) -> dict:
    import optuna
    import sqlalchemy

    sys.path.insert(0, str(REPO))
    from tests.test_scale_out import STUDY, SWEEP, Server, clean_env

    base = sqlalchemy.engine.make_url(pg)
    name = f"doomnet_bench_{uuid.uuid4().hex[:10]}"
    storage = base.set(database=name).render_as_string(hide_password=False)
    backend = base.set(database=f"{name}_mlflow").render_as_string(hide_password=False)
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        shutil.copy(REPO / "train.py", project / "train.py")
        shutil.copytree(REPO / "conf", project / "conf")
        shutil.copytree(REPO / "sweeps", project / "sweeps")
        server = Server(project, backend)
        server.start()
        try:
            env = clean_env(DOOMNET_TRACKING_SERVER=server.url)
            args = [f"hydra.sweeper.n_trials={trials}", "iterations=600", "eval_every=20"]
            start = time.time()
            procs = [
                subprocess.Popen(
                    [sys.executable, "train.py", *SWEEP, f"hydra.sweeper.storage='{storage}'"]
                    + [*args, f"hydra.sweep.dir=multirun/worker-{i}"],
                    cwd=project,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for i in range(workers)
            ]
            codes = [p.wait() for p in procs]
            wall = time.time() - start
            study = optuna.load_study(study_name=STUDY, storage=storage)
            done = [t for t in study.trials if t.state.name == "COMPLETE"]
            first = min(t.datetime_start for t in study.trials)
            last = max(t.datetime_complete for t in done)
            steady = (last - first).total_seconds()
        finally:
            server.stop()
            with admin.connect() as conn:
                for db in (name, f"{name}_mlflow"):
                    conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
            admin.dispose()
    return {
        "workers": workers,
        "exit_codes": codes,
        "complete": len(done),
        "wall_s": round(wall, 1),
        "trials_per_min_wall": round(len(done) / wall * 60, 1),
        "steady_s": round(steady, 1),
        "trials_per_min_steady": round(len(done) / steady * 60, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", required=True, help="PostgreSQL server URL (admin database)")
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--trials", type=int, default=24)
    args = parser.parse_args()
    for n in (int(x) for x in args.workers.split(",")):
        print(json.dumps(run(args.pg, n, args.trials)), flush=True)


if __name__ == "__main__":
    main()
