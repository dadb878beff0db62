"""A Ray cluster as users run it: `ray start --head` and `ray start --address` (tests/conftest.py),
a sweep given `--ray-address`, and the worker node's raylet killed mid-sweep."""

from __future__ import annotations

import os
import signal
import time

import pytest

from sweeps.common import Outcome, keys
from tests.sweep_helpers import FIXTURE_MODULE, cli_popen, load, small_spec, write_spec

pytestmark = pytest.mark.slow


def test_sweep_across_ray_start_nodes_survives_a_killed_raylet(ray_start_cluster, tmp_path,
                                                              monkeypatch):
    cluster = ray_start_cluster
    for key, value in cluster.client_env().items():  # the cluster's auth token, as users export
        monkeypatch.setenv(key, value)
    (tmp_path / "faulty_wl.py").write_text(FIXTURE_MODULE)
    spec = small_spec(n_trials=8, workload={"name": "faulty_wl:make", "args": {"delay": 0.2}})
    spec["space"]["lr"]["high"] = 0.01  # stable: every trial runs its 40 steps
    write_spec(tmp_path / "s.yaml", spec)
    proc = cli_popen(tmp_path, "run", "s.yaml", "--ray-address", cluster.address,
                     "--workers", "4", "--cpus-per-trial", "1", "--no-tracking")
    worker_node = cluster.workers[0]
    killed = None
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if _finished(tmp_path) >= 1:  # 4 actors on 2 + 2 CPUs: 2 run on the worker node
                raylet = worker_node.raylet()
                assert raylet is not None
                killed = raylet.pid  # type: ignore[attr-defined]
                raylet.kill()  # type: ignore[attr-defined]
                break
            time.sleep(0.3)
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out
    assert killed, "the sweep finished before the raylet could be killed"
    study = load(tmp_path, "t")
    assert all(t.state.name not in ("RUNNING", "WAITING") for t in study.trials)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 8
    lost = [t for t in study.trials if t.user_attrs.get(keys.OUTCOME) == Outcome.WORKER_LOST]
    nodes = {t.user_attrs[keys.WORKER]["node_id"][:8] for t in finished}
    assert lost, f"killing the raylet under running trials must lose them; ran on {nodes}: {out}"
    for t in lost:
        assert t.state.name == "FAIL"
        retried = [r for r in study.trials if r.user_attrs.get(keys.RETRY_OF) == t.number]
        assert len(retried) == 1 and retried[0].params == t.params
        assert retried[0].state.name in ("COMPLETE", "PRUNED")  # finished once, on the head


def _finished(workdir) -> int:  # type: ignore[no-untyped-def]
    if not (workdir / "stabsweep.db").exists():
        return 0
    try:
        return sum(t.state.name in ("COMPLETE", "PRUNED") for t in load(workdir, "t").trials)
    except Exception:  # no study yet, or the driver is still creating the tables
        return 0
