"""Service mode: `stabsweep run --detach` submits the sweep as a Ray Job to a `ray start` head
(tests/conftest.py); `logs --follow`, `status` and `stop` work from other shells (processes,
other folders); a stopped sweep's running trials end interrupted and the next submit resumes."""

from __future__ import annotations

import re
import time

import pytest

from sweeps.common import Outcome, keys
from tests.sweep_helpers import FIXTURE_MODULE, cli, small_spec, write_spec

pytestmark = pytest.mark.slow


def _study(db):  # type: ignore[no-untyped-def]
    import optuna

    return optuna.load_study(study_name="t", storage=f"sqlite:///{db}")


def _finished(db) -> int:  # type: ignore[no-untyped-def]
    try:
        return sum(t.state.name in ("COMPLETE", "PRUNED") for t in _study(db).trials)
    except Exception:  # not created yet
        return 0


def test_detached_sweep_followed_stopped_and_resumed(ray_head, tmp_path, monkeypatch):
    for key, value in ray_head.client_env().items():  # the cluster's token, as users export
        monkeypatch.setenv(key, value)
    project, shell2, state = tmp_path / "project", tmp_path / "elsewhere", tmp_path / "state"
    for folder in (project, shell2, state):
        folder.mkdir()
    (project / "faulty_wl.py").write_text(FIXTURE_MODULE)  # travels with the job
    spec = small_spec(n_trials=6, workload={"name": "faulty_wl:make", "args": {"delay": 0.1}})
    spec["space"]["lr"]["high"] = 0.01  # stable: every trial runs its 40 steps (~4 s)
    write_spec(project / "s.yaml", spec)
    db = state / "stabsweep.db"
    storage = f"sqlite:///{db}"
    dash = ray_head.dashboard_url
    submit = ("run", "s.yaml", "--detach", "--ray-address", dash, "--storage", storage,
              "--no-tracking", "--workers", "2")

    refused = cli(project, "run", "s.yaml", "--detach", "--ray-address", dash, "--no-tracking")
    assert refused.returncode != 0 and "--storage" in refused.stderr  # the job dir is temporary

    first = cli(project, *submit)
    assert first.returncode == 0, first.stdout + first.stderr
    job = re.search(r"submitted job (\S+)", first.stdout).group(1)
    deadline = time.time() + 240
    while time.time() < deadline and _finished(db) < 1:
        time.sleep(0.5)
    assert _finished(db) >= 1, cli(shell2, "logs", job, "--ray-address", dash).stdout

    stopped = cli(shell2, "stop", job, "--ray-address", dash)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "STOPPED" in stopped.stdout
    study = _study(db)
    assert all(t.state.name != "RUNNING" for t in study.trials)
    interrupted = [t for t in study.trials
                   if t.user_attrs.get(keys.OUTCOME) == Outcome.INTERRUPTED]
    assert interrupted and all(t.state.name == "FAIL" for t in interrupted)
    status = cli(shell2, "status", "t", "--storage", storage)
    assert status.returncode == 0, status.stdout + status.stderr

    second = cli(project, *submit)
    assert second.returncode == 0, second.stdout + second.stderr
    job2 = re.search(r"submitted job (\S+)", second.stdout).group(1)
    followed = cli(shell2, "logs", job2, "--follow", "--ray-address", dash, timeout=400)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert "SUCCEEDED" in followed.stderr
    study = _study(db)
    counts = [t.state.name for t in study.trials]
    assert "RUNNING" not in counts and "WAITING" not in counts
    assert sum(s in ("COMPLETE", "PRUNED") for s in counts) == 6
    for t in interrupted:  # resumed: each closed trial ran again once, with its params
        retries = [r for r in study.trials if r.user_attrs.get(keys.RETRY_OF) == t.number]
        assert len(retries) == 1 and retries[0].params == t.params
    earlier = cli(shell2, "logs", job, "--ray-address", dash)  # a finished job's logs, later
    assert earlier.returncode == 0
