"""Study storage throughput: trials per minute and per-report latency, side by side.

Three ways a sweep's study is stored (sweeps/storage.py):

* ``sqlite-driver``: the embedded SQLite file, written by the driver only (no pruner: workers
  never touch the study; the driver records each trial's intermediate values at ``tell``);
* ``sqlite-grpc``: the same file served by the driver over Optuna's gRPC storage proxy (a pruner
  is on, so workers report every evaluation and ask ``should_prune`` through it);
* ``postgresql``: a real PostgreSQL server (started here in a temp dir, as tests/conftest.py
  does, unless ``--postgres URL`` names one); workers report to it directly.

For each, at 1 and 2 workers: a real sweep (``run_sweep``, tiny deep_mlp, 40 steps, an
evaluation every 10 steps, so 4 reports per trial) gives trials per minute; a report loop
(``trial.report`` + ``should_prune`` against the storage a worker gets, 1 or 2 concurrent
reporters) gives the per-report latency. Numbers on a shared 2-core machine are noisy: compare
the rows of one run, not runs.

    .venv/bin/python benchmarks/storage_throughput.py [--trials 16] [--reports 100]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def start_postgres() -> tuple[str, Callable[[], None]]:
    """A throwaway PostgreSQL server on 127.0.0.1; returns (URL, stop)."""
    import socket

    def pg_bin(name: str) -> str:
        found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
        if not found:
            sys.exit("PostgreSQL binaries not found (apt-get install postgresql), or pass "
                     "--postgres URL")
        return found[-1]

    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="stabsweep-bench-pg-"))
    os.chmod(root, 0o755)
    password = uuid.uuid4().hex
    (root / "pw").write_text(password + "\n")
    if prefix:
        shutil.chown(root, user="postgres")
        shutil.chown(root / "pw", user="postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = root / "data"
    subprocess.run([*prefix, pg_bin("initdb"), "-D", str(data), "-U", "bench", "-A",
                    "scram-sha-256", f"--pwfile={root / 'pw'}", "--no-sync"],
                   check=True, capture_output=True, cwd=root)
    subprocess.run([*prefix, pg_bin("pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o",
                    f"-c listen_addresses=127.0.0.1 -p {port} -k {root}", "-w", "start"],
                   check=True, capture_output=True, cwd=root)

    def stop() -> None:
        subprocess.run([*prefix, pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, cwd=root)
        shutil.rmtree(root, ignore_errors=True)

    return f"postgresql://bench:{password}@127.0.0.1:{port}/postgres", stop


def fresh_pg_database(base: str) -> str:
    import psycopg

    name = "bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    return base.rsplit("/", 1)[0] + "/" + name


def spec(study: str, n_trials: int, pruner: bool):  # type: ignore[no-untyped-def]
    from sweeps.spec import parse_spec

    return parse_spec({
        "study": study,
        "workload": {"name": "deep_mlp", "args": {"depth": 2, "width": 8, "batch_size": 16}},
        "steps": 40, "eval_every": 10, "report_every": 10,
        "objective": {"metric": "eval_loss", "direction": "minimize"},
        "n_trials": n_trials, "seed": 0, "sampler": {"name": "random"},
        "pruner": {"name": "median", "n_startup_trials": 10**6} if pruner else {"name": "none"},
        "fixed": {"optimizer": "sgd"},
        "space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
    })


def sweep_rate(kind: str, workers: int, n_trials: int, pg: str | None) -> float:
    """Trials per minute of a real sweep with this storage."""
    from sweeps.driver import RunOptions, run_sweep

    workdir = Path(tempfile.mkdtemp(prefix="stabsweep-bench-"))
    try:
        storage = fresh_pg_database(pg) if kind == "postgresql" and pg else None
        options = RunOptions(workers=workers, tracking=False, workdir=workdir, storage=storage)
        summary = run_sweep(spec(f"{kind}-{workers}", n_trials, kind != "sqlite-driver"),
                            options)
        return 60.0 * summary.trials_this_run / summary.wall_time_s
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def report_latency(kind: str, reporters: int, n: int, pg: str | None) -> float:
    """Median seconds of one trial.report + should_prune, with `reporters` concurrent ones."""
    import optuna

    from sweeps.store import StudyStorage

    workdir = Path(tempfile.mkdtemp(prefix="stabsweep-bench-"))
    url = fresh_pg_database(pg) if kind == "postgresql" and pg else None
    storage = StudyStorage(url, workdir=workdir)
    try:
        study = optuna.create_study(study_name="lat", storage=storage.backend,
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=10**6))
        if kind == "sqlite-driver":
            worker_storage = storage.backend
        else:
            worker_storage = storage.worker_storage()
            if isinstance(worker_storage, str):
                worker_storage = optuna.storages.get_storage(worker_storage)
        times: list[float] = []
        lock = threading.Lock()

        def reporter() -> None:
            view = optuna.load_study(study_name="lat", storage=worker_storage,
                                     pruner=study.pruner)
            trial = optuna.trial.Trial(view, study.ask()._trial_id)
            mine = []
            for step in range(n):
                start = time.perf_counter()
                trial.report(1.0 / (step + 1), step)
                trial.should_prune()
                mine.append(time.perf_counter() - start)
            with lock:
                times.extend(mine)

        threads = [threading.Thread(target=reporter) for _ in range(reporters)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return statistics.median(times)
    finally:
        storage.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16, help="trials per sweep")
    parser.add_argument("--reports", type=int, default=100, help="reports per reporter")
    parser.add_argument("--postgres", help="a PostgreSQL URL (default: start a temp server)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import logging

    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stop = None
    pg = args.postgres
    if pg is None:
        pg, stop = start_postgres()
    env = {"PYTHONPATH": os.pathsep.join(p for p in [os.getcwd(), *sys.path] if p)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, runtime_env={"env_vars": env})
    rows = []
    try:
        for kind in ("sqlite-driver", "sqlite-grpc", "postgresql"):
            for workers in (1, 2):
                rate = sweep_rate(kind, workers, args.trials, pg)
                latency = report_latency(kind, workers, args.reports, pg)
                rows.append((kind, workers, rate, latency))
                print(f"{kind:14s} {workers} worker(s): {rate:6.1f} trials/min, "
                      f"report {1000 * latency:6.2f} ms", flush=True)
    finally:
        ray.shutdown()
        if stop is not None:
            stop()
    print("\n| storage | workers | trials/min | per-report latency (median, ms) |")
    print("|---|---|---|---|")
    for kind, workers, rate, latency in rows:
        print(f"| {kind} | {workers} | {rate:.1f} | {1000 * latency:.2f} |")


if __name__ == "__main__":
    main()
