"""`--storage postgresql://...` against a real PostgreSQL server (tests/conftest.py: pg_server).

Workers report to the database directly (an Optuna pruner is on); a worker killed -9 is retried;
a driver killed -9 leaves trials whose heartbeat goes stale, and the next driver closes and
retries them; the password never reaches the output or the study.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from sweeps.common import Outcome, keys
from tests.conftest import PG_PASSWORD
from tests.sweep_helpers import FIXTURE_MODULE, cli, cli_popen, small_spec, write_spec

pytestmark = pytest.mark.slow


def _load(url: str, name: str = "t"):  # type: ignore[no-untyped-def]
    import optuna

    return optuna.load_study(study_name=name, storage=url)


def _counts(study) -> dict[str, int]:  # type: ignore[no-untyped-def]
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def _no_secret_stored(study) -> None:  # type: ignore[no-untyped-def]
    stored = json.dumps([study.user_attrs, study._storage.get_study_system_attrs(study._study_id),
                         [(t.user_attrs, t.system_attrs) for t in study.trials]], default=str)
    assert PG_PASSWORD not in stored


def _spec(tmp_path, n_trials, **args):  # type: ignore[no-untyped-def]
    (tmp_path / "faulty_wl.py").write_text(FIXTURE_MODULE)
    spec = small_spec(n_trials=n_trials, workload={"name": "faulty_wl:make", "args": args},
                      pruner={"name": "median", "n_startup_trials": 1}, eval_every=10)
    spec["space"]["lr"]["high"] = 0.01  # stable: every trial runs its 40 steps
    return write_spec(tmp_path / "s.yaml", spec)


def test_workers_report_to_postgres_and_a_killed_worker_is_retried(tmp_path, pg_url):
    marker = tmp_path / "died"
    _spec(tmp_path, 4, die_once=str(marker))
    done = cli(tmp_path, "run", "s.yaml", "--workers", "2", "--no-tracking",
               "--storage", pg_url)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert PG_PASSWORD not in out
    assert "postgresql://stabsweep:***@127.0.0.1" in out  # the storage, redacted
    assert marker.exists()
    study = _load(pg_url)
    counts = _counts(study)
    assert "RUNNING" not in counts and "WAITING" not in counts
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 4
    lost = [t for t in study.trials if t.user_attrs.get(keys.OUTCOME) == Outcome.WORKER_LOST]
    assert len(lost) == 1 and lost[0].state.name == "FAIL"
    retries = [t for t in study.trials if t.user_attrs.get(keys.RETRY_OF) == lost[0].number]
    assert len(retries) == 1 and retries[0].params == lost[0].params
    # the workers reported every 10 steps to the database themselves (the pruner reads them)
    for t in study.trials:
        if t.state.name == "COMPLETE":
            assert t.intermediate_values and all(s % 10 == 0 for s in t.intermediate_values)
    _no_secret_stored(study)
    status = cli(tmp_path, "status", "t", "--storage", pg_url)
    assert status.returncode == 0, status.stdout + status.stderr
    assert PG_PASSWORD not in status.stdout + status.stderr


def test_killed_driver_trials_are_recovered_by_heartbeat(tmp_path, pg_url, monkeypatch):
    monkeypatch.setenv("STABSWEEP_HEARTBEAT_S", "1")  # stale after 3 s
    _spec(tmp_path, 5, delay=0.02)
    proc = cli_popen(tmp_path, "run", "s.yaml", "--workers", "2", "--no-tracking",
                     "--storage", pg_url)
    deadline = time.time() + 180
    running = 0
    while time.time() < deadline:
        try:
            counts = _counts(_load(pg_url))
        except Exception:  # no study yet
            counts = {}
        running = counts.get("RUNNING", 0)
        if counts.get("COMPLETE", 0) >= 1 and running:
            break
        time.sleep(0.3)
    assert running, "the driver finished no trial in time"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait(timeout=30)
    assert "RUNNING" in _counts(_load(pg_url))  # a dead driver closes nothing
    time.sleep(4)  # past the grace period: the dead driver's heartbeats are stale
    resumed = cli(tmp_path, "run", "s.yaml", "--workers", "2", "--no-tracking",
                  "--storage", pg_url)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert PG_PASSWORD not in resumed.stdout + resumed.stderr
    study = _load(pg_url)
    counts = _counts(study)
    assert "RUNNING" not in counts and "WAITING" not in counts
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 5
    interrupted = [t for t in study.trials
                   if t.user_attrs.get(keys.OUTCOME) == Outcome.INTERRUPTED]
    assert interrupted
    for t in interrupted:
        retries = [r for r in study.trials if r.user_attrs.get(keys.RETRY_OF) == t.number]
        assert len(retries) == 1 and retries[0].params == t.params
    _no_secret_stored(study)


def test_a_live_drivers_trial_is_left_alone_a_stale_one_retried_once(tmp_path, pg_url):
    import optuna
    from sqlalchemy import text

    from sweeps.driver import RunOptions, TrialRecovered
    from sweeps.driver.dispatch import recover
    from sweeps.spec import parse_spec
    from sweeps.store import StudyStorage
    from sweeps.tracking import NullTracker

    spec = parse_spec(small_spec())
    with StudyStorage(pg_url) as storage:
        assert storage.shared and PG_PASSWORD not in storage.display_url
        study = optuna.create_study(study_name="t", storage=storage.backend)
        live, dead = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1.0)}), \
            study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1.0)})
        storage.heartbeat([live._trial_id, dead._trial_id])
        rdb = storage.backend._backend
        with rdb.engine.begin() as conn:  # the dead driver's last beat, an hour ago
            conn.execute(text("UPDATE trial_heartbeats SET heartbeat = heartbeat - "
                              "interval '1 hour' WHERE trial_id = :t"), {"t": dead._trial_id})
        events: list = []
        options = RunOptions(workdir=tmp_path, tracking=False)
        for _ in range(2):  # two drivers find it stale; one closes and retries it
            recover(study, storage, spec, options, events.append, NullTracker())
        trials = study.get_trials(deepcopy=False)
        assert trials[live.number].state.name == "RUNNING"
        assert trials[dead.number].state.name == "FAIL"
        assert trials[dead.number].user_attrs[keys.OUTCOME] == Outcome.INTERRUPTED
        assert events == [TrialRecovered(dead.number)]
        assert len([t for t in trials if t.state.name == "WAITING"]) == 1


def test_password_from_pgpassword_not_the_url(pg_url, monkeypatch):
    """The README's way: a URL without the password, libpq reads PGPASSWORD (or ~/.pgpass)."""
    import optuna

    from sweeps.store import StudyStorage

    bare = pg_url.replace(f":{PG_PASSWORD}@", "@")
    assert PG_PASSWORD not in bare
    monkeypatch.setenv("PGPASSWORD", PG_PASSWORD)
    with StudyStorage(bare) as storage:
        optuna.create_study(study_name="p", storage=storage.backend)
        assert optuna.get_all_study_names(storage.backend) == ["p"]
