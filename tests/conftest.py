"""Shared real-server fixtures: a PostgreSQL server and a Ray cluster started with `ray start`.

Each server is started once per session on 127.0.0.1, in its own temp dir and on ports chosen
here, and always stopped by its own PIDs (never ``ray stop``, which would stop every Ray on
the machine). Tests that need none of them pay nothing: the fixtures start lazily.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PG_USER = "stabsweep"
PG_PASSWORD = "pg-" + uuid.uuid4().hex[:12]
"""A password per session: tests check it never reaches output or stored attributes."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------- PostgreSQL
def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _as_pg_owner() -> list[str]:
    """initdb refuses root: run the server as the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and no `postgres` user: cannot start PostgreSQL")
    return [runuser, "-u", "postgres", "--"]


@dataclass
class PgServer:
    host: str
    port: int
    user: str
    password: str
    root: Path
    databases: list[str] = field(default_factory=list)

    def url(self, database: str) -> str:
        return (f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/"
                f"{database}")

    def create_database(self, prefix: str = "db") -> str:
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(host=self.host, port=self.port, user=self.user,
                             password=self.password, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        self.databases.append(name)
        return name


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL server (Debian's `postgresql` packages): initdb + pg_ctl in a temp
    dir, bound to 127.0.0.1 on a free port, a password (scram) user; stopped after."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg")
    prefix = _as_pg_owner()
    root = Path(tempfile.mkdtemp(prefix="stabsweep-pg-"))
    os.chmod(root, 0o755)
    if prefix:
        shutil.chown(root, user="postgres")
    pwfile = root / "pw"
    pwfile.write_text(PG_PASSWORD + "\n")
    if prefix:
        shutil.chown(pwfile, user="postgres")
    port = free_port()
    data = root / "data"
    subprocess.run([*prefix, initdb, "-D", str(data), "-U", PG_USER, "-A", "scram-sha-256",
                    f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True, cwd=root)
    pwfile.unlink()
    options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c max_connections=200 "
               "-c fsync=off")
    started = subprocess.run([*prefix, pg_ctl, "-D", str(data), "-l", str(root / "log"),
                              "-o", options, "-w", "-t", "60", "start"],
                             capture_output=True, text=True, cwd=root)
    server = PgServer("127.0.0.1", port, PG_USER, PG_PASSWORD, root)
    try:
        if started.returncode != 0:
            log = (root / "log").read_text() if (root / "log").exists() else ""
            pytest.fail(f"pg_ctl start failed: {started.stderr}\n{log[-2000:]}")
        yield server
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, cwd=root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh database on the session's server, as a URL with the password in it."""
    return pg_server.url(pg_server.create_database("study"))


# ---------------------------------------------------------------------------- ray start
def _psutil():  # type: ignore[no-untyped-def]
    """psutil as Ray ships it (ray/thirdparty_files, put on sys.path by `import ray`)."""
    import importlib

    importlib.import_module("ray")
    return importlib.import_module("psutil")


@dataclass
class RayNode:
    proc: subprocess.Popen[bytes]
    temp_dir: Path
    log: Path

    def descendants(self) -> list[object]:
        psutil = _psutil()

        try:
            return list(psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            return []

    def raylet(self) -> object | None:
        for child in self.descendants():
            with contextlib.suppress(Exception):
                if child.name() == "raylet":  # type: ignore[attr-defined]
                    return child
        return None

    def stop(self) -> None:
        """Stop this node's processes by PID: `ray start --block` and everything under it,
        then anything still running from this node's own temp dir."""
        psutil = _psutil()

        procs = [*self.descendants()]
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(self.proc.pid))
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
        _, alive = psutil.wait_procs(procs, timeout=10)  # type: ignore[arg-type]
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for p in _procs_using(self.temp_dir):
            with contextlib.suppress(psutil.Error):
                p.kill()


def _procs_using(temp_dir: Path) -> list[object]:
    psutil = _psutil()

    found = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(str(temp_dir) in part for part in (p.info["cmdline"] or [])):
                found.append(p)
    return found


@dataclass
class RayCluster:
    address: str
    dashboard_url: str
    head: RayNode | None
    workers: list[RayNode]
    root: Path
    env: dict[str, str]
    """What a client needs: RAY_AUTH_MODE/RAY_AUTH_TOKEN (see :meth:`client_env`)."""

    def client_env(self) -> dict[str, str]:
        return {k: self.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _start_node(args: list[str], temp_dir: Path, env: dict[str, str]) -> RayNode:
    temp_dir.mkdir(parents=True, exist_ok=True)
    log = temp_dir.parent / f"{temp_dir.name}.out"
    out = open(log, "wb")  # noqa: SIM115 - the child holds it
    proc = subprocess.Popen([_ray_bin(), "start", "--block", *args], stdout=out,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            stdin=subprocess.DEVNULL)
    out.close()
    return RayNode(proc, temp_dir, log)


def _wait_nodes(address: str, n: int, nodes: list[RayNode], env: dict[str, str],
                timeout: float = 120) -> None:
    script = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
              "print(sum(1 for n in ray.nodes() if n['Alive']))")
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for node in nodes:
            if node.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {node.log.read_text()[-3000:]}")
        got = subprocess.run([sys.executable, "-c", script, address], capture_output=True,
                             text=True, timeout=60, env=env)
        last = got.stdout.strip() + got.stderr[-500:]
        if got.returncode == 0 and got.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        time.sleep(1)
    raise RuntimeError(f"{n} Ray nodes did not come up: {last}")


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayCluster]:
    """`ray start --head` on loopback, as users start a cluster: explicit ports, its own temp
    dir, 2 CPUs declared. Worker nodes come from :func:`ray_start_cluster`."""
    pytest.importorskip("ray")
    root = Path(tempfile.mkdtemp(prefix="stabsweep-ray-"))
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray 2.60 turns token auth on for `ray start`; our own token, not ~/.ray/auth_token.
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = uuid.uuid4().hex + uuid.uuid4().hex
    # Ray started from the environment stabsweep is installed in (jobs run `python -m ...`),
    # and a stopped job's driver given time to close its trials (Ray's default is 3 s).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["RAY_JOB_STOP_WAIT_TIME_S"] = "60"
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [repo, env.get("PYTHONPATH", "")] if p)
    port, dash = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    cluster = RayCluster(address, f"http://127.0.0.1:{dash}", None, [], root, env)
    try:
        cluster.head = _start_node(
            ["--head", "--port", str(port),
             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
             "--ray-client-server-port", str(free_port()),
             "--dashboard-agent-listen-port", str(free_port()),
             "--num-cpus", "2", "--num-gpus", "0", "--resources", '{"head": 1}',
             "--temp-dir", str(root / "head")], root / "head", env)
        _wait_nodes(address, 1, [cluster.head], env)
        yield cluster
    finally:
        for node in reversed([n for n in [cluster.head, *cluster.workers] if n]):
            node.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def ray_start_cluster(ray_head: RayCluster) -> Iterator[RayCluster]:
    """The session's head plus a fresh `ray start --address` worker node (2 CPUs, its own
    temp dir), stopped after the test: a test may kill it."""
    name = f"worker-{uuid.uuid4().hex[:6]}"
    alive_before = 1  # the head; earlier tests' worker nodes are stopped (dead) by now
    worker = _start_node(
        ["--address", ray_head.address,
         "--dashboard-agent-listen-port", str(free_port()),
         "--num-cpus", "2", "--num-gpus", "0", "--resources", '{"worker": 1}',
         "--temp-dir", str(ray_head.root / name)], ray_head.root / name, ray_head.env)
    ray_head.workers.append(worker)
    try:
        _wait_nodes(ray_head.address, alive_before + 1, [ray_head.head, worker], ray_head.env)
        yield ray_head
    finally:
        worker.stop()
        ray_head.workers.remove(worker)
        _wait_nodes(ray_head.address, alive_before, [ray_head.head], ray_head.env)
