"""Interrupts and resumes that agree everywhere (issue 22): {Ctrl-C, kill -9 of a worker,
kill -9 of the driver} x {early, mid-start-up, after start-up}, each followed by a resume.

After each: exactly n_trials finished, no configuration tried twice, Optuna and MLflow agree on
every trial's outcome, status and steps, no trial or run left RUNNING, no process left behind.
Real CLI processes, real Ray, MLflow on SQLite: minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sweeps.common import Outcome, keys
from tests.sweep_helpers import FIXTURE_MODULE, cli_env, load, small_spec, write_spec

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")]

N_TRIALS, STARTUP = 8, 4
WHEN = {"early": 0, "mid_startup": 2, "after_startup": STARTUP + 1}
"""finished trials when the fault strikes (a trial is running then, in every case)."""


def _env(workdir: Path) -> dict[str, str]:
    return {**cli_env(workdir), "STABSWEEP_UPLOADER_IDLE_S": "1"}


def _run(workdir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sweeps.cli", "run", "s.yaml", "--workers",
                             "2"], cwd=workdir, env=_env(workdir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def _stat(pid: int) -> tuple[int, str] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[1]), fields[19]) if fields[0] not in ("Z", "X") else None


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class Processes:
    """Every process descended from the drivers, noted while they run (pid -> start time)."""

    def __init__(self) -> None:
        self.seen: dict[int, str] = {}

    def note(self, root: int) -> None:
        children: dict[int, list[tuple[int, str]]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
                children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
        todo = [root]
        while todo:
            for pid, start in children.get(todo.pop(), ()):
                if pid not in self.seen:
                    self.seen[pid] = start
                    todo.append(pid)

    def alive(self, workdir: Path) -> list[bytes]:
        ours = [p for p, start in self.seen.items() if (s := _stat(p)) and s[1] == start]
        uploaders = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()
                     and str(workdir).encode() in _cmdline(int(e.name))]
        return [_cmdline(p)[:80] for p in {*ours, *uploaders} if _stat(p) is not None]


def _wait(condition: Any, what: str, limit_s: float = 180.0, every: Any = None) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {limit_s:.0f} s for {what}")
        if every is not None:
            every()
        time.sleep(0.2)


def _trials(workdir: Path) -> list[Any]:
    try:
        return load(workdir, "t").get_trials(deepcopy=False)
    except Exception:  # no study yet, or the driver is still creating its tables
        return []


def _finished(trials: list[Any]) -> list[Any]:
    return [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]


def _runs(workdir: Path) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("t")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def _disagreements(workdir: Path) -> list[str]:
    """Ended trials whose MLflow run says another outcome, status or number of steps."""
    runs = {r.info.run_id: r for r in _runs(workdir)}
    found = []
    for t in _trials(workdir):
        run_id = t.user_attrs.get(keys.MLFLOW_RUN)
        if t.state.name in ("RUNNING", "WAITING") or not run_id:
            continue
        run, outcome = runs.get(run_id), Outcome(t.user_attrs[keys.OUTCOME])
        have = None if run is None else (run.data.tags.get("stabsweep.state"), run.info.status,
                                         run.data.tags.get("stabsweep.steps_run"))
        want = (str(outcome), outcome.look.mlflow_status, str(t.user_attrs[keys.STEPS_RUN]))
        if have != want:
            found.append(f"trial {t.number}: Optuna {want}, MLflow {have}")
    return found


def _kill_a_trial_worker(record: Path) -> bool:
    """kill -9 the worker that started a trial last (the workload notes its pid there)."""
    for path in sorted(record.iterdir(), key=lambda p: int(p.name.split("-")[1]), reverse=True):
        pid = int(path.name.split("-")[0])
        if _cmdline(pid).startswith(b"ray::TrialWorker") and _stat(pid) is not None:
            os.kill(pid, signal.SIGKILL)
            return True
    return False


@pytest.mark.parametrize("when", list(WHEN))
@pytest.mark.parametrize("fault", ["sigint", "kill_worker", "kill_driver"])
def test_fault_then_resume_agrees_everywhere(tmp_path: Path, fault: str, when: str) -> None:
    (tmp_path / "faulty_wl.py").write_text(FIXTURE_MODULE)
    record = tmp_path / "record"
    record.mkdir()
    spec = small_spec(n_trials=N_TRIALS, steps=60, workload={
        "name": "faulty_wl:make", "args": {"delay": 0.02, "record": str(record)}},
        sampler={"name": "tpe", "n_startup_trials": STARTUP})
    write_spec(tmp_path / "s.yaml", spec)
    processes = Processes()
    proc = _run(tmp_path)
    try:
        _wait(lambda: len(_finished(trials := _trials(tmp_path))) >= WHEN[when]
              and any(t.state.name == "RUNNING" for t in trials),
              f"{WHEN[when]} finished trials and one running", every=lambda: processes.note(
                  proc.pid))
        processes.note(proc.pid)
        if fault == "sigint":
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 130, out
            assert _disagreements(tmp_path) == []
        elif fault == "kill_worker":
            _wait(lambda: _kill_a_trial_worker(record), "a trial worker to kill",
                  every=lambda: processes.note(proc.pid))
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, out
        else:
            os.kill(proc.pid, signal.SIGKILL)  # the driver only: its watchdog stays
            proc.wait(timeout=30)
            _wait(lambda: [r.info.status for r in _runs(tmp_path)
                           if r.data.tags.get("stabsweep.kind") == "study"] == ["KILLED"],
                  "the study's run KILLED by the driver's watchdog")
        resumed = _run(tmp_path)
        _wait(lambda: resumed.poll() is not None, "the resumed sweep",
              limit_s=600, every=lambda: processes.note(resumed.pid))
        out = resumed.stdout.read() if resumed.stdout else ""
        assert resumed.returncode == 0, out
    finally:
        for p in (proc, locals().get("resumed")):
            if p is not None and p.poll() is None:
                p.kill()
    trials = _trials(tmp_path)
    finished = _finished(trials)
    assert len(finished) == N_TRIALS
    configs = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(configs)) == len(configs), "a configuration was tried twice"
    assert not [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")]
    assert _disagreements(tmp_path) == []
    assert [r.info.run_name for r in _runs(tmp_path) if r.info.status == "RUNNING"] == []
    _wait(lambda: processes.alive(tmp_path) == [], "every process of the sweep to end",
          limit_s=60)
