"""Ray execution: a pool of long-lived trial workers (actors), one per concurrent trial.

Actors keep torch imported and threads configured between trials, so a trial costs one
remote call (~ms), not a process start (Ray Tune's default ``reuse_actors=False`` costs ~1 s
per trial). Each actor asks Ray for ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs
(fractions allowed); inside, torch's thread count is the CPU count Ray granted and the device
is the GPU Ray assigned (``CUDA_VISIBLE_DEVICES`` is set by Ray, so it is ``cuda:0``).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from sweeps.worker.objective import TrialOutcome, TrialTask, run_trial, worker_info


class SweepResourceError(RuntimeError):
    """The requested workers do not fit the machine or cluster."""


class TrialWorker:
    """Runs trials in a Ray actor process (wrapped with ``ray.remote`` at runtime)."""

    def __init__(self) -> None:
        import ray
        import torch

        self.current: tuple[int, int] | None = None
        """(trial number, steps done) of the trial running now."""
        context = ray.get_runtime_context()
        cpus = context.get_assigned_resources().get("CPU", 1.0)
        self.threads = max(1, int(cpus))
        torch.set_num_threads(self.threads)
        gpu_ids = ray.get_gpu_ids()
        self.device = "cuda" if gpu_ids and torch.cuda.is_available() else "cpu"
        self.info = worker_info(self.device, self.threads, gpu_ids)
        self.info["node_id"] = context.get_node_id()
        # Pay the process's one-time import costs when the actor starts (overlapping the
        # driver's set-up), not in its first trial: the first torch optimizer imports
        # torch._dynamo, 1-3 s on a busy 2-core machine.
        import torch._dynamo

        import stability.trainer  # noqa: F401

    def ready(self) -> dict[str, Any]:
        return self.info

    def run(self, task: TrialTask) -> TrialOutcome:
        self.current = (task.trial_number, 0)
        try:
            return run_trial(task, device=self.device, info=dict(self.info),
                             on_progress=lambda steps: self._progress(task.trial_number, steps))
        finally:
            self.current = None

    def _progress(self, trial_number: int, steps: int) -> None:
        self.current = (trial_number, steps)

    def progress(self) -> tuple[int, int] | None:
        """(trial number, optimizer steps done) of the trial running now, or None. Answered
        while ``run`` trains (the actor has a second thread), so the driver can record the
        steps a trial ran before it was interrupted or its worker lost."""
        return self.current


@dataclass
class Slot:
    actor: Any
    ready_ref: Any
    ready: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class WorkerPool:
    """``n`` trial actors; replaces one that dies (kill -9, lost node)."""

    def __init__(self, n: int, cpus_per_trial: float, gpus_per_trial: float) -> None:
        import ray

        self.ray = ray
        self.cpus, self.gpus = cpus_per_trial, gpus_per_trial
        self._remote_cls = ray.remote(TrialWorker).options(  # type: ignore[attr-defined]
            num_cpus=cpus_per_trial, num_gpus=gpus_per_trial, max_restarts=0,
            max_concurrency=2)  # run() and progress(); the driver sends one run() at a time
        self.slots: list[Slot] = [self._new_slot() for _ in range(n)]
        self.start_failures = 0
        self.max_start_failures = 2 * n + 2

    def _new_slot(self) -> Slot:
        actor = self._remote_cls.remote()
        return Slot(actor, actor.ready.remote())  # type: ignore[attr-defined]  # an actor handle

    def idle_ready(self, busy: set[int]) -> list[int]:
        """Indexes of started, idle slots (checks pending starts without blocking)."""
        pending = [s.ready_ref for s in self.slots if not s.ready]
        if pending:
            done, _ = self.ray.wait(pending, num_returns=len(pending), timeout=0)
            done_set = set(done)
            for i, slot in enumerate(self.slots):
                if not slot.ready and slot.ready_ref in done_set:
                    try:
                        slot.info = self.ray.get(slot.ready_ref)
                        slot.ready = True
                    except self.ray.exceptions.RayError as exc:
                        self.start_failures += 1
                        if self.start_failures > self.max_start_failures:
                            raise SweepResourceError(
                                f"trial workers fail to start ({self.start_failures} times); "
                                f"last error: {str(exc).strip().splitlines()[-1]}") from None
                        self.replace(i)
        return [i for i, s in enumerate(self.slots) if s.ready and i not in busy]

    def submit(self, index: int, task: TrialTask) -> Any:
        return self.slots[index].actor.run.remote(task)

    def ask_progress(self, index: int) -> Any:
        """A ref to (trial number, steps done) of slot ``index``'s running trial."""
        return self.slots[index].actor.progress.remote()

    def replace(self, index: int) -> None:
        with contextlib.suppress(Exception):  # already dead
            self.ray.kill(self.slots[index].actor, no_restart=True)
        self.slots[index] = self._new_slot()

    def shutdown(self) -> None:
        for slot in self.slots:
            with contextlib.suppress(Exception):  # already dead
                self.ray.kill(slot.actor, no_restart=True)
        self.slots = []


def short_ray_errors() -> None:
    """Keep each error line Ray's driver prints from the raylet to its first sentence.

    A worker killed mid-trial made Ray print ~1,000 characters into the sweep's output
    (``(raylet) A worker died or was killed ... (1) The process is killed by SIGKILL by OOM
    killer ...``); the sweep says the same in one line (``worker_lost``, retried). Ray has no
    setting for it: its error listener prints through ``ray._private.worker.print_to_stdstream``,
    which this wraps (once; a Ray without it is left alone)."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "stabsweep_short", False):
        return

    def shortened(data: dict[str, Any], ignore_prefix: bool) -> Any:
        if data.get("pid") == "raylet":
            data = {**data, "lines": [_first_sentence(str(line)) for line in data["lines"]]}
        return original(data, ignore_prefix)

    shortened.stabsweep_short = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = shortened


def _first_sentence(line: str, limit: int = 160) -> str:
    first = line.split(". ", 1)[0].strip()
    return first if len(first) <= limit else first[:limit - 3] + "..."


def plain_ray_output(streams: tuple[Any, ...] | None = None) -> None:
    """No ANSI colour codes in what Ray prints (``(raylet) A worker died...``) when the output
    is not a terminal: Ray colours its prefixes unless ``RAY_COLOR_PREFIX=0``, read when it
    prints. A value the user set is kept."""
    streams = streams if streams is not None else (sys.stdout, sys.stderr)
    if not all(getattr(s, "isatty", lambda: False)() for s in streams):
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def init_ray(address: str | None, *, workers: int | None, cpus_per_trial: float,
             gpus_per_trial: float) -> tuple[int, bool]:
    """Start or join Ray; return (number of workers, whether we started Ray)."""
    import logging

    import ray

    started = False
    plain_ray_output()
    short_ray_errors()
    if not ray.is_initialized():
        env = {"PYTHONPATH": os.pathsep.join(p for p in [os.getcwd(), *sys.path] if p)}
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, runtime_env={"env_vars": env})
        started = True
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    # how many shares fit, with a tolerance: in floats 1 // 0.2 == 4.0, so 5 x 0.2 GPU
    # would not fit one GPU
    fit = _shares(cpus, cpus_per_trial) if cpus_per_trial > 0 else 10**6
    if gpus_per_trial > 0:
        fit = min(fit, _shares(gpus, gpus_per_trial))
    if workers is None:
        workers = max(1, fit)
    if (workers < 1 or fit < 1 or workers > fit) and started:
        ray.shutdown()  # the caller never learns it started Ray
    if workers < 1:
        raise SweepResourceError(f"workers must be >= 1; got {workers}.")
    if fit < 1 or workers > fit:
        need = f"{workers} workers x {cpus_per_trial:g} CPU"
        if gpus_per_trial:
            need += f" + {gpus_per_trial:g} GPU"
        raise SweepResourceError(
            f"{need} do not fit the {'cluster' if address else 'machine'} ({cpus:g} CPU, "
            f"{gpus:g} GPU); run fewer workers, or give each fewer CPUs/GPUs.")
    return workers, started


def _shares(total: float, share: float) -> int:
    """Whole ``share``s in ``total``: 5 for 1 / 0.2 (``1 // 0.2`` is 4.0 in floating point)."""
    return math.floor(total / share + 1e-9)
