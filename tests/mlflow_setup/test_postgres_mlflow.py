"""MLflow on PostgreSQL: `python -m mlflow_setup start --backend postgresql://...` on the real
server of tests/conftest.py, served artifacts; a 2-worker sweep (its study on the same
PostgreSQL) logs over HTTP; the parent run, nested trial runs and grad-norm histories read back."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import PG_PASSWORD
from tests.sweep_helpers import cli, cli_env, small_spec, write_spec

pytestmark = pytest.mark.e2e


def _mlflow_setup(workdir, *args: str, env=None) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "mlflow_setup", *args], cwd=workdir,
                          env=env or cli_env(workdir), capture_output=True, text=True,
                          timeout=240, stdin=subprocess.DEVNULL)


def test_sweep_logs_to_mlflow_server_on_postgres(tmp_path, pg_server):
    from mlflow import MlflowClient

    mlflow_db = pg_server.url(pg_server.create_database("mlflow"))
    study_db = pg_server.url(pg_server.create_database("study"))
    server_dir = tmp_path / "server"
    env = cli_env(tmp_path)
    env["MLFLOW_BACKEND_STORE_URI"] = mlflow_db  # the password through the environment
    started = _mlflow_setup(tmp_path, "start", "--port", "0", "--workdir", str(server_dir),
                            "--detach", "--timeout", "180", env=env)
    try:
        out = started.stdout + started.stderr
        assert started.returncode == 0, out
        assert PG_PASSWORD not in out
        assert "postgresql://stabsweep:***@127.0.0.1" in out  # the backend, redacted
        url = re.search(r"MLflow tracking server: (http://127\.0\.0\.1:\d+)", out).group(1)

        spec = small_spec(n_trials=4, eval_every=20)
        spec["space"]["lr"]["high"] = 0.01  # stable: every trial logs its 40 steps
        write_spec(tmp_path / "s.yaml", spec)
        done = cli(tmp_path, "run", "s.yaml", "--workers", "2", "--tracking-uri", url,
                   "--storage", study_db)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        assert PG_PASSWORD not in out

        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("t")
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1
        parent = parents[0]
        assert parent.info.status == "FINISHED"
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")
                    == parent.info.run_id]
        assert len(children) == 4
        workers = set()
        for child in children:
            grad = client.get_metric_history(child.info.run_id, "grad_norm/global")
            assert len(grad) >= 1 and all(m.value > 0 for m in grad)
            workers.add(child.data.params.get("lr"))
        assert len(workers) == 4  # four distinct trials
        # served artifacts: the study's report landed through the server, on disk under it
        assert client.list_artifacts(parent.info.run_id)
        assert (server_dir / "mlartifacts").is_dir()
        log = (server_dir / "mlflow-server.log")
        assert not log.exists() or PG_PASSWORD not in log.read_text(errors="replace")
    finally:
        stopped = _mlflow_setup(tmp_path, "stop", "--workdir", str(server_dir))
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
