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

N_TRIALS, STARTUP = 10, 4
WHEN = {"early": 0, "mid_startup": 2, "after_startup": STARTUP + 1}
"""finished trials before the fault. Then the file ``release`` goes: a trial that starts
after that waits at its 30th loss call, and the fault strikes while it waits."""


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


def _wait(condition: Any, what: str, limit_s: float = 180.0, every: Any = None,
          driver: subprocess.Popen[str] | None = None, workdir: Path | None = None) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if driver is not None and driver.poll() is not None:
            out = driver.stdout.read() if driver.stdout else ""
            pytest.fail(f"the driver exited ({driver.returncode}) before {what}:\n{out}")
        if time.monotonic() > deadline:
            pytest.fail(f"waited {limit_s:.0f} s for {what}; trials: "
                        f"{[(t.number, t.state.name) for t in _trials_of(workdir)]}")
        if every is not None:
            every()
        time.sleep(0.2)


def _trials_of(workdir: Path | None) -> list[Any]:
    return [] if workdir is None else _trials(workdir)


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


def _waiting(release: Path) -> list[int]:
    """Pids of the workers whose trial waits for ``release`` (the workload says so)."""
    return [int(p.name.rpartition("-")[2]) for p in release.parent.glob(release.name
                                                                          + ".waiting-*")]


@pytest.mark.parametrize("when", list(WHEN))
@pytest.mark.parametrize("fault", ["sigint", "kill_worker", "kill_driver"])
def test_fault_then_resume_agrees_everywhere(tmp_path: Path, fault: str, when: str) -> None:
    (tmp_path / "faulty_wl.py").write_text(FIXTURE_MODULE)
    release = tmp_path / "release"
    spec = small_spec(n_trials=N_TRIALS, steps=60, workload={
        "name": "faulty_wl:make", "args": {"delay": 0.02, "wait_at": 30,
                                           "release": str(release)}},
        sampler={"name": "tpe", "n_startup_trials": STARTUP})
    write_spec(tmp_path / "s.yaml", spec)
    if WHEN[when]:
        release.touch()
    processes = Processes()
    proc = _run(tmp_path)
    try:
        _wait(lambda: len(_finished(_trials(tmp_path))) >= WHEN[when],
              f"{WHEN[when]} finished trials", every=lambda: processes.note(proc.pid),
              driver=proc, workdir=tmp_path)
        release.unlink(missing_ok=True)  # a trial that reaches its 30th loss call now waits
        _wait(lambda: _waiting(release), "a trial that waits",
              every=lambda: processes.note(proc.pid), driver=proc,
              workdir=tmp_path)
        processes.note(proc.pid)
        if fault == "sigint":
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 130, out
            assert _disagreements(tmp_path) == []
        elif fault == "kill_worker":
            os.kill(_waiting(release)[0], signal.SIGKILL)
            release.touch()
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, out
        else:
            os.kill(proc.pid, signal.SIGKILL)  # the driver only: its watchdog stays
            proc.wait(timeout=30)
            _wait(lambda: [r.info.status for r in _runs(tmp_path)
                           if r.data.tags.get("stabsweep.kind") == "study"] == ["KILLED"],
                  "the study's run KILLED by the driver's watchdog")
        release.touch()
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
