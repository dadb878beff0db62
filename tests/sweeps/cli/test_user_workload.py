"""What a user with their own workload meets (issue 14): one-line errors on every command path
that loads a workload, specs checked in full before anything is created, honest accounting,
plain output when it is not a terminal, no Ray processes left behind."""

from __future__ import annotations

import fcntl
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

from sweeps.cli import app
from sweeps.common import Outcome, keys
from sweeps.spec import SpecError, config_from_params, load_spec, parse_spec
from tests.sweep_helpers import small_spec, write_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)
runner = CliRunner()

MISSING = "nosuch_user_mod_i14:make"
USER_MODULE = textwrap.dedent('''
    """A GRU classifier on synthetic sequences: a workload the project has never seen."""
    import torch
    import torch.nn.functional as F
    from torch import nn


    class GRUSeq:
        name = "gru_seq"

        def __init__(self, seed, device, hidden, cell):
            if cell not in ("gru", "lstm"):
                raise ValueError(f"cell must be gru or lstm; got {cell!r}")
            self.seed, self.hidden = seed, hidden
            gen = torch.Generator().manual_seed(99)
            self.x_eval = torch.randn(64, 8, 3, generator=gen)
            self.y_eval = (self.x_eval.sum((1, 2)) > 0).long()

        def model(self):
            torch.manual_seed(self.seed)
            return nn.Sequential(nn.Flatten(), nn.Linear(24, self.hidden), nn.Tanh(),
                                 nn.Linear(self.hidden, 2))

        def batches(self):
            gen = torch.Generator().manual_seed(self.seed + 1)
            while True:
                x = torch.randn(16, 8, 3, generator=gen)
                yield x, (x.sum((1, 2)) > 0).long()

        def loss(self, model, batch):
            x, y = batch
            return F.cross_entropy(model(x), y)

        def evaluate(self, model):
            with torch.no_grad():
                return {"eval_loss": F.cross_entropy(model(self.x_eval), self.y_eval).item()}


    def make(seed=0, device="cpu", hidden=8, cell="gru"):
        return GRUSeq(seed, device, hidden, cell)
''')


def one_line_error(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: "), output
    return lines[0]


def user_spec(workload: str = MISSING, **overrides: Any) -> dict[str, Any]:
    spec = small_spec(study="user", n_trials=2, steps=6, report_every=3)
    spec["workload"] = {"name": workload, "args": {}}
    spec["eval_every"] = 3
    spec["space"] = {"lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}}
    spec.update(overrides)
    return spec


def nothing_written(folder: Path, *keep: str) -> None:
    left = sorted(p.name for p in folder.iterdir() if p.name not in keep)
    assert left == [], left


@pytest.fixture
def clean_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """sys.path restored after the test (the CLI adds the working directory), and the test's
    user modules forgotten."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    yield
    for name in [m for m in sys.modules if m.startswith("gru_")]:
        del sys.modules[name]


# ------------------------------------------------------------------ 1. one-line errors
def _study_file(tmp_path: Path, workload: str) -> str:
    url = f"sqlite:///{tmp_path / 'stabsweep.db'}"
    spec = parse_spec(user_spec(workload))
    study = optuna.create_study(study_name="user", storage=url)
    study.set_user_attr(keys.STUDY_SPEC, spec.to_dict())
    for lr, value in ((1e-2, 0.3), (2e-2, 0.2), (3e-2, 0.25)):
        config, args = config_from_params({"lr": lr}, spec)
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, value=value, params={"lr": lr},
            distributions={"lr": FloatDistribution(1e-3, 0.1, log=True)},
            user_attrs={keys.OUTCOME: Outcome.COMPLETE, keys.CONFIG: config.to_dict(),
                        keys.WORKLOAD_ARGS: args}))
    return url


def test_export_confirm_with_unimportable_workload_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _study_file(tmp_path, MISSING)
    result = runner.invoke(app, ["export", "user", "-o", "best.yaml", "--top", "3",
                                 "--confirm-seeds", "2"])
    assert result.exit_code == 2, result.output
    line = one_line_error(result.output)
    assert "could not be imported" in line and "PYTHONPATH" in line
    assert not (tmp_path / "best.yaml").exists()


def test_run_and_train_with_unimportable_workload_are_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path / "s.yaml", user_spec())
    result = runner.invoke(app, ["run", str(spec), "--no-tracking"])
    assert result.exit_code == 2, result.output
    assert "could not be imported" in one_line_error(result.output)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"lr": 0.01}))
    result = runner.invoke(app, ["train", str(config), "-w", MISSING, "--steps", "2"])
    assert result.exit_code == 2, result.output
    assert "could not be imported" in one_line_error(result.output)
    nothing_written(tmp_path, "s.yaml", "c.yaml")


# ------------------------------------------------------------------ 2. searched workload args
def test_invalid_searched_choice_refused_before_anything_is_created(tmp_path, monkeypatch):
    import sweeps.driver.runner

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweeps.driver.runner, "init_ray",
                        lambda *a, **k: pytest.fail("Ray started"))
    data = small_spec(study="act", n_trials=1, steps=10)
    data["space"]["workload.activation"] = {"type": "categorical", "choices": ["relu", "swish"]}
    spec = write_spec(tmp_path / "s.yaml", data)
    result = runner.invoke(app, ["run", str(spec)])  # tracking on: no MLflow store either
    assert result.exit_code == 2, result.output
    line = one_line_error(result.output)
    assert "space.workload.activation.choices" in line and "activation='swish'" in line
    assert "relu, tanh, gelu" in line
    nothing_written(tmp_path, "s.yaml")


def test_every_searched_value_is_built_first_and_last(tmp_path):
    from sweeps.driver.preflight import preflight, workload_arg_values

    data = small_spec(study="act", n_trials=1, steps=10)
    data["workload"]["args"].pop("depth")
    data["space"]["workload.depth"] = {"type": "int", "low": 1, "high": 4}
    spec = parse_spec(data)
    base, variants = workload_arg_values(spec)
    assert base["depth"] == 1 and variants == [("space.workload.depth.high", "depth", 4)]
    with pytest.raises(SpecError, match=r"space\.workload\.depth\.low: workload 'deep_mlp' "
                       r"rejects depth=1 .*depth must be >= 2"):
        preflight(spec)
    data["space"]["workload.depth"] = {"type": "int", "low": 2, "high": 4}
    data["space"]["workload.loss"] = {"type": "categorical", "choices": ["mse", "l1"]}
    with pytest.raises(SpecError, match=r"space\.workload\.loss\.choices: .*loss='l1'"):
        preflight(parse_spec(data))


def test_user_factory_rejecting_a_searched_value(tmp_path, monkeypatch, clean_path):
    from sweeps.driver.preflight import preflight

    (tmp_path / "gru_user_i14.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = user_spec("gru_user_i14:make")
    data["space"]["workload.cell"] = {"type": "categorical", "choices": ["gru", "rnn"]}
    with pytest.raises(SpecError, match=r"space\.workload\.cell\.choices: workload "
                       r"'gru_user_i14:make' rejects cell='rnn' .*cell must be gru or lstm"):
        preflight(parse_spec(data))


# ------------------------------------------------------------------ 3. duplicate keys
def test_duplicate_keys_refused_with_key_and_both_lines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "dup.yaml"
    spec.write_text(textwrap.dedent("""\
        study: dup
        workload: deep_mlp
        steps: 20
        space:
          lr: {type: float, low: 0.001, high: 0.1, log: true}
          lr: {type: float, low: 0.01, high: 0.1, log: true}
        """))
    with pytest.raises(SpecError, match=r"space\.lr: given twice \(lines 5 and 6\)"):
        load_spec(spec)
    result = runner.invoke(app, ["run", str(spec), "--no-tracking"])
    assert result.exit_code == 2
    assert "space.lr: given twice (lines 5 and 6)" in one_line_error(result.output)
    nothing_written(tmp_path, "dup.yaml")
    nested = tmp_path / "nested.yaml"
    nested.write_text("study: a\nstudy: b\n")
    with pytest.raises(SpecError, match=r"^study: given twice \(lines 1 and 2\)"):
        load_spec(nested)
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("study: a\nworkload: !!python/object:os.system {}\n")
    with pytest.raises(SpecError, match=r"the tag !!python/object:os.system \(line 2, column "
                                        r"11\) is not allowed"):
        load_spec(tagged)


# ------------------------------------------------------------------ 4. how a module is found
def test_cli_finds_a_workload_module_in_the_working_directory(tmp_path, monkeypatch,
                                                               clean_path):
    (tmp_path / "gru_cwd_i14.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"lr": 0.01}))
    result = runner.invoke(app, ["train", str(config), "-w", "gru_cwd_i14:make", "--steps", "3"])
    assert result.exit_code == 0, result.output
    assert "gru_seq" in result.output


def test_import_error_says_how_the_module_is_found():
    from stability.workloads import WorkloadError, load_workload

    with pytest.raises(WorkloadError) as info:
        load_workload(MISSING)
    message = str(info.value)
    assert "\n" not in message
    assert "nosuch_user_mod_i14.py" in message and "PYTHONPATH" in message


def test_readme_says_how_a_workload_module_is_found():
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme[readme.index("Built-in workloads (`stabsweep workloads`)"):]
    section = section[:section.index("\n## ")]
    assert "PYTHONPATH" in section and "working directory" in section


# ------------------------------------------------------------------ 5. busy study, at once
def test_busy_study_refused_before_the_preflight(tmp_path, monkeypatch):
    import sweeps.driver.runner
    from sweeps.common import SweepError
    from sweeps.driver import RunOptions, run_sweep

    monkeypatch.setattr(sweeps.driver.runner, "preflight",
                        lambda *a, **k: pytest.fail("preflight ran before the lock check"))
    holder = open(tmp_path / "stabsweep.db.lock", "a+")  # noqa: SIM115
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.write("pid 4242 on elsewhere")
    holder.flush()
    try:
        with pytest.raises(SweepError, match=r"in use by a running sweep \(pid 4242 on "):
            run_sweep(parse_spec(small_spec()), RunOptions(workdir=tmp_path, tracking=False))
    finally:
        holder.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stabsweep.db.lock"]


def test_busy_check_creates_nothing(tmp_path):
    from sweeps.store import check_not_busy

    check_not_busy(None, workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 7. plain output
def test_ray_colours_off_when_output_is_not_a_terminal(monkeypatch):
    from sweeps.worker import plain_ray_output

    class Stream:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    plain_ray_output((Stream(True), Stream(True)))
    assert "RAY_COLOR_PREFIX" not in __import__("os").environ
    plain_ray_output((Stream(True), Stream(False)))
    assert __import__("os").environ["RAY_COLOR_PREFIX"] == "0"


def test_one_worker_is_singular():
    from rich.console import Console

    from sweeps.cli.progress import SweepDisplay
    from sweeps.driver import SweepStarted

    console = Console(record=True, width=200)
    display = SweepDisplay(console)
    display(SweepStarted(study="s", workers=1, storage="x", finished=0, n_trials=2))
    display(SweepStarted(study="s", workers=2, storage="x", finished=0, n_trials=2))
    text = console.export_text()
    assert "1 worker," in text and "2 workers," in text


# ------------------------------------------------------------------ 6. honest accounting
def test_steps_accounting_counts_failures_as_the_steps_they_ran():
    from sweeps.results import steps_accounting

    assert steps_accounting("COMPLETE", 200, 200) == (200, 200)
    assert steps_accounting("PRUNED", 40, 200) == (40, 200)      # saved by pruning
    assert steps_accounting("PRUNED", None, 200) == (200, 200)   # unknown: no saving claimed
    assert steps_accounting("FAIL", 37, 200) == (37, 37)         # pruning saved nothing there
    assert steps_accounting("FAIL", None, 200) == (0, 0)
    assert steps_accounting("FAIL", 999, 200) == (200, 200)


def _dispatcher(tmp_path: Path, events: list[Any]):  # type: ignore[no-untyped-def]
    from sweeps.driver import RunOptions
    from sweeps.driver.dispatch import Dispatcher
    from sweeps.tracking import NullTracker

    spec = parse_spec(small_spec(steps=40))
    storage = type("Storage", (), {"display_url": "in-memory", "shared": False})()
    return Dispatcher(spec, RunOptions(workdir=tmp_path, tracking=False),
                      optuna.create_study(direction="minimize"), storage, pool=None,
                      tracker=NullTracker(), emit=events.append)


def test_interrupted_trial_is_recorded_with_the_steps_it_ran(tmp_path):
    import time

    from sweeps.common import Outcome
    from sweeps.driver import TrialEnded
    from sweeps.driver.dispatch import Running
    from sweeps.driver.summary import summarize

    events: list[Any] = []
    driver = _dispatcher(tmp_path, events)
    study = driver.study
    complete = study.ask()
    complete.set_user_attr(keys.STEPS_RUN, 40)
    study.tell(complete, 0.5)
    trial = study.ask({"lr": FloatDistribution(1e-3, 30.0, log=True)})
    item = Running(trial, None, 0, 1, None, time.perf_counter() - 2.0, steps=17)
    driver.close_lost(item, Outcome.INTERRUPTED, "interrupted (Ctrl-C); retried on resume")
    frozen = study.trials[trial.number]
    assert frozen.state == TrialState.FAIL
    assert frozen.user_attrs[keys.STEPS_RUN] == 17
    assert frozen.user_attrs[keys.WALL_TIME] >= 2.0
    shown = [e for e in events if isinstance(e, TrialEnded)][-1]
    assert shown.outcome is Outcome.INTERRUPTED
    assert shown.steps_run == 17 and shown.wall_time_s >= 2.0
    # said once (issue 22 item 9): not "...; retried on resume; retrying"
    assert shown.reason == "interrupted (Ctrl-C); retried on resume"
    summary = summarize(study, steps=40, storage="in-memory", started=time.perf_counter())
    # 40 + 17 run; the interrupted trial is no saving: 40 + 17 budget, not 40 + 40
    assert (summary.steps_run, summary.steps_budget, summary.steps_saved) == (57, 57, 0.0)


def test_trials_a_dead_driver_left_running_keep_their_stored_steps(tmp_path):
    events: list[Any] = []
    driver = _dispatcher(tmp_path, events)
    study = driver.study
    stored = study.ask()
    stored.set_user_attr(keys.STEPS_RUN, 23)   # what _poll_progress persisted
    reported = study.ask()
    reported.report(0.4, 30)                   # a worker-side Optuna report
    unknown = study.ask()
    driver.recover_stale("the sweep stopped before this trial finished")
    steps = {t.number: t.user_attrs.get(keys.STEPS_RUN) for t in study.trials[:3]}
    assert steps == {stored.number: 23, reported.number: 30, unknown.number: 0}
    assert all(t.state == TrialState.FAIL for t in study.trials[:3])


def test_failed_trial_counts_the_steps_before_it_raised(tmp_path, monkeypatch, clean_path):
    from sweeps.worker import TrialTask, run_trial

    (tmp_path / "gru_fail_i14.py").write_text(USER_MODULE + textwrap.dedent('''

        class Failing(GRUSeq):
            calls = 0

            def loss(self, model, batch):
                self.calls += 1
                if self.calls == 8:
                    raise RuntimeError("boom at step 8")
                return super().loss(model, batch)


        def failing(seed=0, device="cpu"):
            return Failing(seed, device, 8, "gru")
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[int] = []
    task = TrialTask(study_name="s", trial_number=0, trial_id=0, config={"lr": 0.01},
                     workload="gru_fail_i14:failing", workload_args={}, steps=20,
                     eval_every=20, report_every=3, seed=0, metric="eval_loss",
                     direction="minimize")
    outcome = run_trial(task, on_progress=seen.append)
    assert outcome.outcome == Outcome.FAILED and "boom at step 8" in outcome.reason
    assert outcome.steps_run == 6 and seen == [3, 6]


def test_compute_savings_claims_nothing_for_failed_trials():
    import pandas as pd

    from sweeps.results import compute_savings

    df = pd.DataFrame({"state": ["COMPLETE", "PRUNED", "FAIL", "FAIL", "RUNNING"],
                       "outcome": ["complete", "exploded", "failed", "interrupted", "running"],
                       "steps_run": [100, 30, 12, None, 5]})
    savings = compute_savings(df, 100)
    assert savings["steps_run"] == 142 and savings["steps_budget"] == 212
    assert savings["saved_by_outcome"] == {"exploded": 70}


# ------------------------------------------------------------------ 5. nothing orphaned
def _start_time(pid: int) -> str | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _first_trial_worker(record: Path, timeout: float = 120.0) -> int:
    """The pid of the worker whose model() wrote first to ``record`` (the test workload's
    record folder), once one has; fails when no trial starts within ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while not any(record.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert any(record.iterdir()), "no trial started"
    return int(next(record.iterdir()).name.split("-")[0])


def _wait_gone(pids: dict[int, str | None], timeout: float) -> dict[int, str | None]:
    import time

    deadline = time.monotonic() + timeout
    alive = dict(pids)
    while alive and time.monotonic() < deadline:
        alive = {p: s for p, s in alive.items() if _start_time(p) == s}
        time.sleep(0.1)
    return alive


FAKE_DRIVER = textwrap.dedent('''
    import subprocess, sys, time
    sys.path.insert(0, sys.argv[1])
    from sweeps.driver._reaper import start_reaper

    def spawn(title):
        return subprocess.Popen(["bash", "-c", f"exec -a {title} sleep 300"]).pid

    def watchdog(pid):
        """(state, voluntary context switches) of the watchdog, from /proc."""
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        with open(f"/proc/{pid}/status") as f:
            switches = [int(line.split()[1]) for line in f
                        if line.startswith("voluntary_ctxt_switches:")][0]
        return state, switches

    def wait_in_select(pid, after=-1):
        """Wait until the watchdog sleeps interruptibly ("S": only its select() does;
        reading /proc sleeps, if at all, as "D") having blocked more than ``after`` times.
        Its loop is: note the driver's processes before, then select 1 s / scan, for ever."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state, switches = watchdog(pid)
            if state == "S" and switches > after:
                return switches
            time.sleep(0.005)
        sys.exit("the watchdog never waited in select()")

    old = spawn("ray::Old")          # before the watchdog: not ours to stop
    reaper = start_reaper()
    wait_in_select(reaper.pid)       # in its loop: what ran before it is noted as such
    agent = spawn("ray::FakeAgent")  # what ray.init starts
    other = subprocess.Popen(["sleep", "301"]).pid   # not a Ray process
    # The watchdog has noted them once a scan that began after this point is over: it is in
    # select now (or next), then wakes, scans, and blocks in select again.
    wait_in_select(reaper.pid, after=wait_in_select(reaper.pid))
    print(old, agent, other, reaper.pid, flush=True)
    time.sleep(300)
''')


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_kill_9_of_the_driver_leaves_no_ray_process_behind(tmp_path):
    import os
    import signal
    import subprocess

    script = tmp_path / "driver.py"
    script.write_text(FAKE_DRIVER)
    repo = str(Path(__file__).resolve().parents[3])
    driver = subprocess.Popen([sys.executable, str(script), repo], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    old = agent = other = watchdog = -1
    try:
        old, agent, other, watchdog = map(int, driver.stdout.readline().split())  # type: ignore[union-attr]
        pids = {p: _start_time(p) for p in (old, agent, other, watchdog)}
        assert all(pids.values()), pids
        driver.kill()  # SIGKILL: no clean-up code of the driver runs
        driver.wait(timeout=10)
        assert _wait_gone({agent: pids[agent], watchdog: pids[watchdog]}, 15.0) == {}
        assert _start_time(old) == pids[old] and _start_time(other) == pids[other]
    finally:
        driver.kill()
        for pid in (old, agent, other):
            if pid > 0 and _start_time(pid) is not None:
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_real_sweep_driver_kill_9_leaves_no_ray_process(tmp_path):
    import os
    import signal
    import time

    from tests.sweep_helpers import FIXTURE_MODULE, cli_popen

    (tmp_path / "faulty_wl.py").write_text(FIXTURE_MODULE)
    record = tmp_path / "rec"
    record.mkdir()
    data = small_spec(n_trials=4, workload={"name": "faulty_wl:make",
                                            "args": {"delay": 0.05, "record": str(record)}})
    data["space"]["lr"]["high"] = 0.01
    write_spec(tmp_path / "s.yaml", data)
    proc = cli_popen(tmp_path, "run", "s.yaml", "--workers", "1", "--no-tracking")
    try:
        _first_trial_worker(record)
        time.sleep(2.0)  # the agents are up and the watchdog has noted them
        ray_pids: dict[int, str | None] = {}
        todo = [proc.pid]
        while todo:  # the driver's descendants, from /proc
            parent = todo.pop()
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        fields = (entry / "stat").read_text().rpartition(")")[2].split()
                    except OSError:
                        continue
                    if fields[1] == str(parent) and int(entry.name) not in ray_pids:
                        ray_pids[int(entry.name)] = fields[19]
                        todo.append(int(entry.name))
        titles = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:40] for p in ray_pids
                  if _start_time(p)}
        assert any(t.startswith(b"ray::DashboardAgent") for t in titles.values()), titles
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, not its group
        proc.wait(timeout=10)
        survivors = _wait_gone(ray_pids, 20.0)
        assert survivors == {}, {p: titles.get(p) for p in survivors}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_lost_worker_trial_counts_its_steps_and_output_has_no_ansi(tmp_path):
    import os
    import signal
    import time

    from tests.sweep_helpers import FIXTURE_MODULE, cli_popen, load

    (tmp_path / "faulty_wl.py").write_text(FIXTURE_MODULE)
    record = tmp_path / "rec"
    record.mkdir()
    data = small_spec(n_trials=2, steps=40, report_every=2,
                      workload={"name": "faulty_wl:make",
                                "args": {"delay": 0.1, "record": str(record)}})
    data["space"]["lr"]["high"] = 0.01  # stable: each trial runs its 40 steps (~4 s)
    write_spec(tmp_path / "s.yaml", data)
    proc = cli_popen(tmp_path, "run", "s.yaml", "--workers", "1", "--no-tracking")
    try:
        worker = _first_trial_worker(record)
        time.sleep(2.5)  # a dozen steps, and the driver has asked for them
        os.kill(worker, signal.SIGKILL)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out
    assert "\x1b[" not in out, out          # Ray's "(raylet) A worker died" line is plain
    assert "1 worker," in out
    lost = [t for t in load(tmp_path, "t").trials
            if t.user_attrs.get(keys.OUTCOME) == Outcome.WORKER_LOST]
    assert len(lost) == 1
    steps = lost[0].user_attrs[keys.STEPS_RUN]
    assert 0 < steps < 40, steps
    assert f"worker_lost ({steps} steps" in out
    # the lost trial is no saving: 2 complete x 40 + its steps, on both sides
    assert f"{80 + steps} of {80 + steps} steps run (0% saved by pruning)" in out
