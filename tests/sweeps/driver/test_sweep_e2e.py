"""End to end through the CLI, with a real local Ray and a real SQLite storage (small budgets)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import yaml

from stability.config import StabilityConfig
from sweeps.common import Outcome, keys
from tests.sweep_helpers import (
    FIXTURE_MODULE,
    cli,
    cli_popen,
    load,
    small_spec,
    states,
    write_spec,
)

# Real Ray and real CLI processes (SIGINT, resume): minutes, not seconds.
pytestmark = pytest.mark.slow


def test_run_status_export_then_resume(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", small_spec(n_trials=6))
    done = cli(tmp_path, "run", str(spec), "--workers", "2", "--no-tracking")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 finished" in done.stdout
    study = load(tmp_path, "t")
    counts = states(study)
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 6
    assert "RUNNING" not in counts
    for t in study.trials:
        assert t.user_attrs[keys.OUTCOME] in (Outcome.COMPLETE, Outcome.EXPLODED)
        assert t.user_attrs[keys.STEPS_RUN] >= 1
        if t.state.name == "PRUNED":  # exploded: verdict recorded, ranked below stable trials
            assert t.user_attrs[keys.VERDICT]["kind"]
            assert t.user_attrs[keys.REASON].startswith("exploded")
            assert t.intermediate_values[max(t.intermediate_values)] >= 1e12
            assert t.user_attrs[keys.STEPS_RUN] < 40
        else:
            assert t.user_attrs[keys.STEPS_RUN] == 40

    status = cli(tmp_path, "status", "t", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert len(data["trials"]) == 6

    out = tmp_path / "best.yaml"
    exported = cli(tmp_path, "export", "t", "-o", str(out))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    doc = yaml.safe_load(out.read_text())
    assert doc["provenance"]["study"] == "t"
    config = StabilityConfig.from_yaml(out)
    best = study.best_trial
    assert config.lr == pytest.approx(best.params["lr"])

    values = {t.number: t.value for t in study.trials}
    again = cli(tmp_path, "run", str(spec), "--workers", "2", "--no-tracking", "--n-trials", "8")
    assert again.returncode == 0, again.stdout + again.stderr
    study = load(tmp_path, "t")
    assert len(study.trials) == 8  # resumed: 6 kept, 2 new; nothing re-run
    assert {t.number: t.value for t in study.trials if t.number < 6} == values


def test_changed_search_space_is_refused(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", small_spec(n_trials=2))
    assert cli(tmp_path, "run", str(spec), "--workers", "1", "--no-tracking").returncode == 0
    changed = small_spec(n_trials=2)
    changed["space"]["lr"]["high"] = 1.0
    write_spec(spec, changed)
    refused = cli(tmp_path, "run", str(spec), "--workers", "1", "--no-tracking")
    assert refused.returncode == 2
    assert "different search space" in refused.stderr and "--study NEW_NAME" in refused.stderr
    renamed = cli(tmp_path, "run", str(spec), "--workers", "1", "--no-tracking",
                  "--study", "t2", "--n-trials", "1")
    assert renamed.returncode == 0, renamed.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": -5}, "steps: must be an integer >= 1"),
        ({"workload": {"name": "rnn_addng"}}, "workload.name: unknown workload 'rnn_addng'"),
        ({"workload": {"name": "nosuchpkg.mod:make"}}, "nosuchpkg.mod:make"),
        ({"objective": {"metric": "eval_acc", "direction": "minimize"}},
         "objective.metric: 'eval_acc' is not a metric workload 'deep_mlp' reports"),
    ],
)
def test_bad_spec_exits_2_and_writes_nothing(tmp_path, change, message):
    spec = write_spec(tmp_path / "s.yaml", small_spec() | change)
    done = cli(tmp_path, "run", str(spec), "--no-tracking")
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "stabsweep.db").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_workload_that_raises_fails_its_trial_not_the_sweep(tmp_path):
    (tmp_path / "faulty_wl.py").write_text(FIXTURE_MODULE)
    spec = small_spec(n_trials=6, seed=1, workload={"name": "faulty_wl:make", "args": {}})
    # fail == 1 raises: one draw in three
    spec["space"]["workload.fail"] = {"type": "categorical", "choices": [0, 1, 2]}
    write_spec(tmp_path / "s.yaml", spec)
    done = cli(tmp_path, "run", "s.yaml", "--workers", "2", "--no-tracking")
    assert done.returncode == 0, done.stdout + done.stderr
    study = load(tmp_path, "t")
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6
    assert failed, "the seeded random sampler draws fail=1 at least once"
    for t in failed:
        assert t.params["workload.fail"] == 1
        assert "boom from the faulty workload" in t.user_attrs[keys.ERROR]
        assert "Traceback" in t.user_attrs[keys.ERROR]
        assert t.user_attrs[keys.OUTCOME] == Outcome.FAILED


def test_killed_worker_is_retried_and_study_completes(tmp_path):
    (tmp_path / "faulty_wl.py").write_text(FIXTURE_MODULE)
    marker = tmp_path / "died"
    spec = small_spec(n_trials=3, workload={"name": "faulty_wl:make",
                                            "args": {"die_once": str(marker)}})
    write_spec(tmp_path / "s.yaml", spec)
    done = cli(tmp_path, "run", "s.yaml", "--workers", "2", "--no-tracking")
    assert done.returncode == 0, done.stdout + done.stderr
    assert marker.exists()
    study = load(tmp_path, "t")
    lost = [t for t in study.trials if t.user_attrs.get(keys.OUTCOME) == Outcome.WORKER_LOST]
    assert len(lost) == 1 and lost[0].state.name == "FAIL"
    retries = [t for t in study.trials if t.user_attrs.get(keys.RETRY_OF) == lost[0].number]
    assert len(retries) == 1
    assert retries[0].params == lost[0].params
    assert retries[0].state.name in ("COMPLETE", "PRUNED")
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 3


def _wait_for_finished(workdir, study, n, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (workdir / "stabsweep.db").exists():
            try:
                s = load(workdir, study)
                if sum(t.state.name in ("COMPLETE", "PRUNED") for t in s.trials) >= n:
                    return
            except Exception:  # no study yet, or the driver is still creating the tables
                pass
        time.sleep(0.5)
    raise AssertionError(f"{n} trials did not finish in {timeout} s")


def _slow_spec(tmp_path, n_trials):
    (tmp_path / "faulty_wl.py").write_text(FIXTURE_MODULE)
    spec = small_spec(n_trials=n_trials, workload={"name": "faulty_wl:make",
                                                   "args": {"delay": 0.02}})
    spec["space"]["lr"]["high"] = 0.01  # stable: every trial runs its 40 steps (~1 s)
    return write_spec(tmp_path / "s.yaml", spec)


def test_sigint_exits_130_closes_running_trials_and_resume_works(tmp_path):
    _slow_spec(tmp_path, 6)
    proc = cli_popen(tmp_path, "run", "s.yaml", "--workers", "2", "--no-tracking")
    _wait_for_finished(tmp_path, "t", 1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "Resume with: stabsweep run s.yaml" in out
    study = load(tmp_path, "t")
    assert "RUNNING" not in states(study)
    interrupted = [t for t in study.trials
                   if t.user_attrs.get(keys.OUTCOME) == Outcome.INTERRUPTED]
    assert interrupted and all(t.state.name == "FAIL" for t in interrupted)
    resumed = cli(tmp_path, "run", "s.yaml", "--workers", "2", "--no-tracking")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    study = load(tmp_path, "t")
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 6
    assert "RUNNING" not in states(study) and "WAITING" not in states(study)


def test_driver_killed_then_rerun_resumes_without_duplicates(tmp_path):
    _slow_spec(tmp_path, 5)
    proc = cli_popen(tmp_path, "run", "s.yaml", "--workers", "2", "--no-tracking")
    _wait_for_finished(tmp_path, "t", 2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait(timeout=30)
    before = load(tmp_path, "t")
    finished_before = {t.number: t.params for t in before.trials
                       if t.state.name in ("COMPLETE", "PRUNED")}
    resumed = cli(tmp_path, "run", "s.yaml", "--workers", "2", "--no-tracking")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    study = load(tmp_path, "t")
    counts = states(study)
    assert "RUNNING" not in counts and "WAITING" not in counts
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 5
    for number, params in finished_before.items():  # kept, not re-run
        assert study.trials[number].params == params
    # every trial the dead driver left running was closed and retried exactly once
    for t in study.trials:
        if t.user_attrs.get(keys.OUTCOME) == Outcome.INTERRUPTED:
            retries = [r for r in study.trials if r.user_attrs.get(keys.RETRY_OF) == t.number]
            assert len(retries) == 1 and retries[0].params == t.params
