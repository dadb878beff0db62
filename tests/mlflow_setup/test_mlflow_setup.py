"""mlflow_setup: URI resolution, redaction, and a real `mlflow server` on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlflow_setup import (
    PIDFILE_NAME,
    ServerStartError,
    TrackingServer,
    artifact_root_for,
    is_local_store,
    redact,
    resolve_tracking_uri,
    running_server,
    start_server,
    stop_process_group,
)
from mlflow_setup.server import network_warning

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90.0


# --- URI resolution ---------------------------------------------------------------------------


def test_flag_wins_over_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env-host:5000")
    assert resolve_tracking_uri("http://flag-host:5000", tmp_path) == "http://flag-host:5000"


def test_env_wins_over_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env-host:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://env-host:5000"
    assert resolve_tracking_uri("", tmp_path) == "http://env-host:5000"


def test_default_is_absolute_sqlite_in_workdir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = resolve_tracking_uri(None, tmp_path / "work")
    assert uri == f"sqlite:///{tmp_path}/work/mlflow.db"
    # Same default as MLflow's own, when MLflow runs in that directory.
    import mlflow.tracking._tracking_service.utils as tracking_utils

    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    assert tracking_utils.get_tracking_uri() == uri
    assert resolve_tracking_uri() == uri  # workdir defaults to the current directory


def test_empty_env_counts_as_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"


def test_relative_local_uris_become_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs/mlflow.db?timeout=30")
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path}/runs/mlflow.db?timeout=30"
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert resolve_tracking_uri("./mlruns") == f"file://{tmp_path}/mlruns"


def test_file_store_refused_without_opt_in(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ValueError, match=r"--tracking-uri.*MLFLOW_ALLOW_FILE_STORE=true"):
        resolve_tracking_uri("file:///data/mlruns", tmp_path)


@pytest.mark.parametrize(
    ("uri", "local"),
    [
        ("sqlite:////tmp/mlflow.db", True),
        ("sqlite://", False),
        ("file:///tmp/mlruns", True),
        ("./mlruns", True),
        ("http://127.0.0.1:5000", False),
        ("postgresql+psycopg2://u:p@db:5432/mlflow", False),
        ("databricks", False),
    ],
)
def test_is_local_store(uri: str, local: bool) -> None:
    assert is_local_store(uri) is local


def test_artifact_root_for() -> None:
    assert artifact_root_for("sqlite:////srv/runs/mlflow.db") == "file:///srv/runs/mlruns"
    assert artifact_root_for("http://127.0.0.1:5000") is None
    assert artifact_root_for("sqlite://") is None


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("postgresql://mlflow:s3cret@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        ("postgresql://mlflow:p@ss@db/mlflow", "postgresql://mlflow:***@db/mlflow"),
        ("https://s3cret@mlflow.example.com/", "https://***@mlflow.example.com/"),
        (
            "mysql://u@h/db?password=s3cret&charset=utf8",
            "mysql://***@h/db?password=***&charset=utf8",
        ),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ],
)
def test_redact_hides_credentials(uri: str, expected: str) -> None:
    assert redact(uri) == expected
    assert "s3cret" not in redact(uri)


def test_network_warning_only_off_loopback() -> None:
    assert network_warning("127.0.0.1") is None
    assert network_warning("localhost") is None
    assert network_warning("::1") is None
    message = network_warning("0.0.0.0")
    assert message is not None
    assert "reachable from the network" in message and "--allowed-hosts" in message


# --- a real server ----------------------------------------------------------------------------


def _health(url: str) -> int:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
        return int(response.status)


def _port_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _group_gone(pgid: int, wait: float = 5.0) -> bool:
    """True once os.killpg(pgid, 0) raises ProcessLookupError.

    Members whose parent died are reaped by PID 1, asynchronously: allow it a moment.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _capture_popen(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[Any]]:
    started: list[subprocess.Popen[Any]] = []
    real_popen = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        proc = real_popen(*args, **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(subprocess, "Popen", popen)
    return started


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingServer]:
    handle = start_server(workdir=tmp_path_factory.mktemp("mlflow"), timeout=START_TIMEOUT)
    yield handle
    handle.stop()


@pytest.mark.e2e
def test_server_is_healthy_on_loopback(server: TrackingServer) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.alive()
    assert _health(server.url) == 200
    assert server.startup_s > 0


@pytest.mark.e2e
def test_metrics_round_trip(server: TrackingServer) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server.url)
    experiment_id = client.create_experiment("metrics-round-trip")
    run_id = client.create_run(experiment_id).info.run_id
    for step, value in [(0, 2.5), (1, 1.25), (2, 0.625)]:
        client.log_metric(run_id, "grad_norm/global", value, step=step)
    history = client.get_metric_history(run_id, "grad_norm/global")
    assert [(m.step, m.value) for m in history] == [(0, 2.5), (1, 1.25), (2, 0.625)]
    assert server.artifacts_dir is not None
    assert (server.artifacts_dir.parent / "mlflow.db").is_file()


@pytest.mark.e2e
def test_artifacts_are_served(server: TrackingServer, tmp_path: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server.url)
    run = client.create_run(client.create_experiment("artifacts-round-trip"))
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied, no storage creds
    source = tmp_path / "diagnosis.json"
    source.write_text('{"onset_step": 412}')
    client.log_artifact(run.info.run_id, str(source), artifact_path="diagnosis")
    downloaded = client.download_artifacts(run.info.run_id, "diagnosis/diagnosis.json", str(
        tmp_path / "down"))  # fmt: skip
    assert Path(downloaded).read_text() == '{"onset_step": 412}'
    assert server.artifacts_dir is not None
    stored = list(server.artifacts_dir.rglob("diagnosis.json"))
    assert len(stored) == 1 and run.info.run_id in str(stored[0])


@pytest.mark.e2e
def test_stop_closes_port_and_leaves_no_process(server: TrackingServer) -> None:
    # Runs after the other server tests (file order); the fixture's stop is then a no-op.
    server.stop()
    assert not server.alive()
    assert _port_closed(server.port)
    assert _group_gone(server.pgid)
    server.stop()  # idempotent


@pytest.mark.e2e
def test_port_in_use_fails_with_clear_message(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ServerStartError, match=rf"port {port} on 127.0.0.1 is already in use"):
            start_server(port=port, workdir=tmp_path, timeout=30.0)
        assert time.monotonic() - started < 30.0


@pytest.mark.e2e
def test_server_that_exits_reports_its_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started = _capture_popen(monkeypatch)
    (tmp_path / "not-a-dir").write_text("")
    with pytest.raises(ServerStartError, match=r"exited with code 1") as error:
        start_server(
            workdir=tmp_path,
            backend_store_uri=f"sqlite:///{tmp_path}/not-a-dir/mlflow.db",
            timeout=START_TIMEOUT,
        )
    assert "last lines of" in str(error.value) and "not-a-dir" in str(error.value)
    assert len(started) == 1 and _group_gone(started[0].pid)


@pytest.mark.e2e
def test_startup_timeout_stops_the_group(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    started = _capture_popen(monkeypatch)
    with pytest.raises(ServerStartError, match=r"did not answer .*/health within timeout=0.5"):
        start_server(workdir=tmp_path, timeout=0.5)
    assert len(started) == 1 and _group_gone(started[0].pid)


# --- CLI --------------------------------------------------------------------------------------


def _cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlflow_setup", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.e2e
def test_cli_detach_then_stop(tmp_path: Path) -> None:
    started = _cli("start", "--detach", "--port", "0", "--workdir", str(tmp_path))
    assert started.returncode == 0, started.stderr
    record = json.loads((tmp_path / PIDFILE_NAME).read_text())
    url = f"http://127.0.0.1:{record['port']}"
    assert f"export MLFLOW_TRACKING_URI={url}" in started.stdout
    try:
        assert _health(url) == 200
        again = _cli("start", "--detach", "--port", "0", "--workdir", str(tmp_path))
        assert again.returncode == 1 and "already runs at" in again.stderr
    finally:
        stopped = _cli("stop", "--workdir", str(tmp_path))
    assert stopped.returncode == 0, stopped.stderr
    assert "Stopped the MLflow server" in stopped.stdout
    assert _port_closed(record["port"]) and _group_gone(record["pgid"])
    assert not (tmp_path / PIDFILE_NAME).exists()
    assert "No MLflow server is running" in _cli("stop", "--workdir", str(tmp_path)).stdout


@pytest.mark.e2e
def test_cli_foreground_stops_group_on_sigint(tmp_path: Path) -> None:
    cli = subprocess.Popen(
        [sys.executable, "-m", "mlflow_setup", "start", "--port", "0", "--workdir", str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pidfile = tmp_path / PIDFILE_NAME
    deadline = time.monotonic() + START_TIMEOUT
    while not pidfile.exists() and cli.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pidfile.exists(), cli.communicate(timeout=10)
    record = json.loads(pidfile.read_text())
    assert _health(record["url"]) == 200
    cli.send_signal(signal.SIGINT)
    stdout, stderr = cli.communicate(timeout=30)
    assert cli.returncode == 0, stderr
    assert "Stopping the MLflow server" in stdout
    assert _port_closed(record["port"]) and _group_gone(record["pgid"])
    assert not pidfile.exists()


def test_stop_process_group_kills_a_group_that_ignores_sigterm() -> None:
    # A leader that ignores SIGTERM, with a child: both must go.
    script = (
        "import signal, subprocess, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    leader = subprocess.Popen(
        [sys.executable, "-c", script], start_new_session=True, stdout=subprocess.PIPE, text=True
    )
    assert leader.stdout is not None
    child_pid = int(leader.stdout.readline())
    assert stop_process_group(leader.pid, timeout=0.5, proc=leader) is True
    assert leader.returncode == -signal.SIGKILL
    assert _group_gone(leader.pid)
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)


def test_stale_pidfile_never_kills_a_stranger(tmp_path: Path) -> None:
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        record = {"pid": stranger.pid, "pgid": stranger.pid, "host": "127.0.0.1",
                  "port": 1, "url": "http://127.0.0.1:1"}  # fmt: skip
        (tmp_path / PIDFILE_NAME).write_text(json.dumps(record))
        assert running_server(tmp_path) is None
        assert not (tmp_path / PIDFILE_NAME).exists()
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_cli_uri_prints_resolved_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mlflow_setup.__main__ import app

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["uri", "--workdir", str(tmp_path)])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"sqlite:///{tmp_path}/mlflow.db"
    result = runner.invoke(app, ["uri", "--tracking-uri", "postgresql://u:s3cret@db/mlflow"])
    assert result.stdout.strip() == "postgresql://u:***@db/mlflow"
