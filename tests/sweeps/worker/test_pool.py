"""sweeps.worker.pool: Ray output settings, how many workers fit, and the pool of trial actors.

The fast tests give ``init_ray`` a stand-in ``ray`` module (the arithmetic and who shuts Ray
down); the ``slow`` ones start a local Ray of 2 CPUs (``ray.init(address="local")``, never a
cluster already running on the machine) and run real trial actors on it.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sweeps.worker import SweepResourceError, TrialTask, WorkerPool, init_ray, plain_ray_output
from tests.sweep_helpers import FIXTURE_MODULE


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class _NoIsatty:
    """A stream-like object without ``isatty`` (counts as not a terminal)."""

    def write(self, text: str) -> int:
        return len(text)


# ------------------------------------------------------------------ plain_ray_output
@pytest.mark.parametrize(("streams", "plain"), [
    ((io.StringIO(), io.StringIO()), True),
    ((_Tty(), io.StringIO()), True),  # stderr redirected: Ray's prefixes go there too
    ((io.StringIO(), _Tty()), True),
    ((_NoIsatty(), _Tty()), True),
    ((_Tty(), _Tty()), False),  # a terminal keeps Ray's colours
])
def test_plain_ray_output_turns_colour_off_unless_every_stream_is_a_terminal(
        monkeypatch: pytest.MonkeyPatch, streams: tuple[Any, ...], plain: bool) -> None:
    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    plain_ray_output(streams)
    assert os.environ.get("RAY_COLOR_PREFIX") == ("0" if plain else None)


def test_plain_ray_output_keeps_the_users_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_COLOR_PREFIX", "1")
    plain_ray_output((io.StringIO(), io.StringIO()))
    assert os.environ["RAY_COLOR_PREFIX"] == "1"


def test_plain_ray_output_reads_stdout_and_stderr_by_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    monkeypatch.setattr(sys, "stdout", _Tty())
    monkeypatch.setattr(sys, "stderr", _Tty())
    plain_ray_output()
    assert "RAY_COLOR_PREFIX" not in os.environ
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    plain_ray_output()
    assert os.environ["RAY_COLOR_PREFIX"] == "0"


# ------------------------------------------------------------------ init_ray (stand-in Ray)
class FakeRay:
    """What init_ray uses of the ``ray`` module, with the cluster's resources and a log."""

    def __init__(self, cpus: float, gpus: float = 0.0, initialized: bool = False) -> None:
        self.resources = {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}
        self.initialized = initialized
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs: Any) -> None:
        self.calls.append(("init", kwargs))
        self.initialized = True

    def cluster_resources(self) -> dict[str, float]:
        return dict(self.resources)

    def shutdown(self) -> None:
        self.calls.append(("shutdown", {}))
        self.initialized = False

    def called(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``make(cpus, gpus, initialized)`` puts a FakeRay where ``import ray`` finds it."""
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # not a terminal, whatever runs pytest
    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)

    def make(cpus: float, gpus: float = 0.0, initialized: bool = False) -> FakeRay:
        fake = FakeRay(cpus, gpus, initialized)
        monkeypatch.setitem(sys.modules, "ray", fake)
        return fake

    yield make


def test_init_ray_starts_ray_and_fits_workers_to_the_machine(fake_ray: Any) -> None:
    ray = fake_ray(8)
    assert init_ray(None, workers=None, cpus_per_trial=2, gpus_per_trial=0) == (4, True)
    assert ray.called() == ["init"]
    kwargs = ray.calls[0][1]
    assert kwargs["address"] is None and kwargs["include_dashboard"] is False
    assert kwargs["log_to_driver"] is False
    # actors import the user's workload modules from where the driver runs
    path = kwargs["runtime_env"]["env_vars"]["PYTHONPATH"].split(os.pathsep)
    assert path[0] == os.getcwd()
    assert os.environ["RAY_COLOR_PREFIX"] == "0"  # stdout is not a terminal


def test_init_ray_joins_a_running_ray_without_starting_it(fake_ray: Any) -> None:
    ray = fake_ray(6, initialized=True)
    assert init_ray("10.0.0.1:6379", workers=3, cpus_per_trial=2,
                    gpus_per_trial=0) == (3, False)
    assert ray.called() == []


def test_init_ray_limits_workers_by_gpus(fake_ray: Any) -> None:
    fake_ray(16, gpus=2, initialized=True)
    assert init_ray(None, workers=None, cpus_per_trial=1, gpus_per_trial=1) == (2, False)
    assert init_ray(None, workers=None, cpus_per_trial=1, gpus_per_trial=0.5) == (4, False)
    assert init_ray(None, workers=None, cpus_per_trial=4, gpus_per_trial=0.5) == (4, False)
    assert init_ray(None, workers=None, cpus_per_trial=8, gpus_per_trial=0.5) == (2, False)


@pytest.mark.parametrize(("address", "where"), [(None, "machine"), ("auto", "cluster")])
def test_too_many_workers_is_an_error_and_ray_it_started_is_shut_down(
        fake_ray: Any, address: str | None, where: str) -> None:
    ray = fake_ray(2)
    with pytest.raises(SweepResourceError,
                       match=rf"3 workers x 1 CPU do not fit the {where} \(2 CPU, 0 GPU\)"):
        init_ray(address, workers=3, cpus_per_trial=1, gpus_per_trial=0)
    assert ray.called() == ["init", "shutdown"]  # the caller never learns it started Ray


def test_too_many_workers_leaves_a_ray_it_joined_running(fake_ray: Any) -> None:
    ray = fake_ray(2, initialized=True)
    with pytest.raises(SweepResourceError, match="3 workers x 1 CPU do not fit the machine"):
        init_ray(None, workers=3, cpus_per_trial=1, gpus_per_trial=0)
    assert ray.called() == [] and ray.initialized


def test_gpus_that_do_not_fit_are_named_in_the_error(fake_ray: Any) -> None:
    ray = fake_ray(4)
    with pytest.raises(SweepResourceError,
                       match=r"1 workers x 1 CPU \+ 1 GPU do not fit the machine "
                             r"\(4 CPU, 0 GPU\)"):
        init_ray(None, workers=1, cpus_per_trial=1, gpus_per_trial=1)
    assert ray.called() == ["init", "shutdown"]


@pytest.mark.parametrize("initialized", [False, True])
def test_workers_below_one_is_an_error(fake_ray: Any, initialized: bool) -> None:
    ray = fake_ray(4, initialized=initialized)
    with pytest.raises(SweepResourceError, match="workers must be >= 1; got 0"):
        init_ray(None, workers=0, cpus_per_trial=1, gpus_per_trial=0)
    assert ray.called() == ([] if initialized else ["init", "shutdown"])


def test_a_machine_too_small_for_one_worker_is_an_error(fake_ray: Any) -> None:
    fake_ray(1, initialized=True)
    with pytest.raises(SweepResourceError, match=r"1 workers x 2 CPU do not fit"):
        init_ray(None, workers=None, cpus_per_trial=2, gpus_per_trial=0)


@pytest.mark.parametrize(("cpus", "gpus", "workers", "cpus_per_trial", "gpus_per_trial"), [
    (8, 1, 5, 1, 0.2),
    (2, 0, 20, 0.1, 0),
])
def test_fractional_shares_that_add_up_exactly_fit(
        fake_ray: Any, cpus: float, gpus: float, workers: int, cpus_per_trial: float,
        gpus_per_trial: float) -> None:
    fake_ray(cpus, gpus=gpus, initialized=True)
    assert init_ray(None, workers=workers, cpus_per_trial=cpus_per_trial,
                    gpus_per_trial=gpus_per_trial) == (workers, False)


# ------------------------------------------------------------------ real Ray (slow)
BLOCKING = "stabsweep_blocking_workload"


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A local Ray of 2 CPUs for this module, its actors able to import the test workload."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    folder = tmp_path_factory.mktemp("ray-workload")
    (folder / f"{BLOCKING}.py").write_text(FIXTURE_MODULE)
    repo = str(Path(__file__).resolve().parents[3])
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_USAGE_STATS_ENABLED")}
    os.environ.pop("RAY_ADDRESS", None)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(folder), repo])}})
    try:
        yield ray
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def small_task(number: int, **workload_args: Any) -> TrialTask:
    workload = f"{BLOCKING}:make" if workload_args else "deep_mlp"
    args = workload_args or {"depth": 3, "width": 8, "batch_size": 16}
    return TrialTask(study_name="workers", trial_number=number, trial_id=number,
                     config={"lr": 1e-3}, workload=workload, workload_args=args, steps=30,
                     eval_every=10, report_every=10, seed=0, metric="eval_loss",
                     direction="minimize")


def started_pool(ray: Any, n: int) -> WorkerPool:
    pool = WorkerPool(n, cpus_per_trial=1, gpus_per_trial=0)
    ray.get([slot.ready_ref for slot in pool.slots], timeout=180)
    return pool


@pytest.mark.slow
def test_init_ray_joins_the_local_ray_and_fits_its_two_cpus(local_ray: Any) -> None:
    assert init_ray(None, workers=None, cpus_per_trial=1, gpus_per_trial=0) == (2, False)
    assert init_ray(None, workers=1, cpus_per_trial=2, gpus_per_trial=0) == (1, False)
    with pytest.raises(SweepResourceError, match=r"do not fit the machine \(2 CPU, 0 GPU\)"):
        init_ray(None, workers=3, cpus_per_trial=1, gpus_per_trial=0)
    with pytest.raises(SweepResourceError, match=r"\+ 1 GPU do not fit"):
        init_ray(None, workers=1, cpus_per_trial=1, gpus_per_trial=1)
    assert local_ray.is_initialized()  # joined, so never shut down by init_ray


@pytest.mark.slow
def test_pool_runs_a_trial_in_an_actor_with_the_cpus_it_asked_for(local_ray: Any) -> None:
    pool = started_pool(local_ray, 2)
    try:
        assert pool.idle_ready(set()) == [0, 1]
        assert pool.idle_ready({1}) == [0]  # busy slots are left out
        info = pool.slots[0].info
        assert info["device"] == "cpu" and info["torch_threads"] == 1
        assert info["gpu_ids"] == [] and info["node_id"]
        assert info["pid"] != os.getpid()  # its own process
        outcome = local_ray.get(pool.submit(0, small_task(4)), timeout=180)
        assert outcome.outcome == "complete" and outcome.steps_run == 30
        assert outcome.trial_number == 4 and outcome.worker["pid"] == info["pid"]
        assert local_ray.get(pool.ask_progress(0), timeout=60) is None  # nothing running now
    finally:
        pool.shutdown()
    assert pool.slots == []


@pytest.mark.slow
def test_progress_is_answered_while_a_trial_trains(local_ray: Any, tmp_path: Path) -> None:
    """The actor answers ``progress`` from its second thread while ``run`` is busy: the
    trial waits inside its 15th loss call until the test has seen its step count."""
    release = tmp_path / "release"
    pool = started_pool(local_ray, 1)
    try:
        running = pool.submit(0, small_task(7, wait_at=15, release=str(release)))
        deadline = time.monotonic() + 120
        seen = None
        while time.monotonic() < deadline:
            seen = local_ray.get(pool.ask_progress(0), timeout=60)
            if seen == (7, 10):
                break
            time.sleep(0.05)
        assert seen == (7, 10)  # the report at step 10; the trial is held at step 14
        ready, _ = local_ray.wait([running], timeout=0)
        assert ready == []
        release.touch()
        outcome = local_ray.get(running, timeout=180)
        assert outcome.outcome == "complete" and outcome.steps_run == 30
        assert local_ray.get(pool.ask_progress(0), timeout=60) is None
    finally:
        release.touch()
        pool.shutdown()


@pytest.mark.slow
def test_replace_gives_a_slot_a_fresh_actor(local_ray: Any) -> None:
    pool = started_pool(local_ray, 1)
    try:
        old = pool.slots[0].actor
        old_pid = local_ray.get(old.ready.remote(), timeout=60)["pid"]
        pool.replace(0)
        assert pool.slots[0].actor is not old and not pool.slots[0].ready
        # the old one was killed: ray.kill is asynchronous, so a call made at once may still
        # reach it on a loaded machine (seen in CI); within a minute every call must fail
        deadline = time.monotonic() + 60
        with pytest.raises(local_ray.exceptions.RayActorError):
            while time.monotonic() < deadline:
                local_ray.get(old.ready.remote(), timeout=60)
                time.sleep(0.2)
        local_ray.get(pool.slots[0].ready_ref, timeout=180)
        assert pool.idle_ready(set()) == [0]
        assert pool.slots[0].info["pid"] != old_pid
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_workers_that_keep_failing_to_start_are_a_resource_error(local_ray: Any) -> None:
    pool = started_pool(local_ray, 1)
    pool.shutdown()

    class Broken:  # defined here: Ray ships it by value to the actor
        def __init__(self) -> None:
            raise RuntimeError("cannot start")

        def ready(self) -> dict[str, Any]:
            return {}

    pool._remote_cls = local_ray.remote(Broken).options(num_cpus=1, max_restarts=0)
    pool.slots = [pool._new_slot()]
    try:
        deadline = time.monotonic() + 180
        with pytest.raises(SweepResourceError, match=r"trial workers fail to start \(5 times\)"):
            while time.monotonic() < deadline:
                assert pool.idle_ready(set()) == []
                local_ray.wait([pool.slots[0].ready_ref], timeout=10)
        assert pool.start_failures == pool.max_start_failures + 1 == 5
    finally:
        pool.shutdown()


def test_ray_error_lines_are_kept_to_their_first_sentence(monkeypatch) -> None:
    """Issue 22 item 9: a worker killed -9 put Ray's ~1,000-character raylet line into the
    sweep's output; the sweep's own worker_lost line says it."""
    from ray._private import worker as ray_worker

    from sweeps.worker.pool import short_ray_errors

    printed: list[dict] = []
    monkeypatch.setattr(ray_worker, "print_to_stdstream",
                        lambda data, ignore_prefix: printed.append(data))
    short_ray_errors()
    short_ray_errors()  # wraps once
    long = ("A worker died or was killed while executing a task by an unexpected system error. "
            "To troubleshoot the problem, check the logs for the dead worker. " + "x" * 900)
    ray_worker.print_to_stdstream({"lines": [long], "pid": "raylet", "is_err": False}, False)
    ray_worker.print_to_stdstream({"lines": [long], "pid": 1234, "is_err": False}, False)
    assert printed[0]["lines"] == ["A worker died or was killed while executing a task by an "
                                   "unexpected system error"]
    assert printed[1]["lines"] == [long]  # a worker's own output is left alone
