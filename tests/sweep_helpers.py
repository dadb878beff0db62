"""Shared helpers for the sweep end-to-end tests: specs, a fault-injecting workload, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

FIXTURE_MODULE = textwrap.dedent('''
    """A user workload that wraps deep_mlp and does what a test asks at a chosen loss call.

    delay       seconds to sleep in every loss call
    fail        1: every loss call raises
    die_once    a marker path: the first process to reach call 5 claims it and kills itself
    record      a folder: each model() under Ray writes "<gpu ids>;<torch threads>" there
    raise_at    this call raises (a two-line message)
    bump_at     this call's loss value jumps by 1000 (its gradient does not)
    wait_at     this call waits until the file ``release`` exists (at most 120 s); a process
                that waits creates ``<release>.waiting-<pid>`` first
    """
    import os
    import time

    from stability.workloads import load_workload


    def _first_to_claim(path):
        """True in exactly one process: two workers at call 5 at once must not both die
        (checking the marker and then creating it let both through)."""
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True


    class Scripted:
        name = "scripted"

        def __init__(self, seed, device, script, **inner):
            self.inner = load_workload("deep_mlp", seed=seed, device=device, **inner)
            self.script, self.calls = script, 0

        def model(self):
            record = self.script["record"]
            import ray
            if record and ray.is_initialized():
                import torch
                with open(os.path.join(record, f"{os.getpid()}-{time.time_ns()}"), "w") as f:
                    f.write(f"{','.join(str(g) for g in ray.get_gpu_ids())};"
                            f"{torch.get_num_threads()}")
            return self.inner.model()

        def batches(self):
            return self.inner.batches()

        def loss(self, model, batch):
            self.calls += 1
            do = self.script
            if do["delay"]:
                time.sleep(do["delay"])
            if do["fail"] == 1:
                raise RuntimeError("boom from the faulty workload")
            if self.calls == do["raise_at"]:
                raise RuntimeError(f"boom at call {self.calls}\\nsecond line of the message")
            if do["die_once"] and self.calls == 5 and _first_to_claim(do["die_once"]):
                os.kill(os.getpid(), 9)
            if self.calls == do["wait_at"]:
                deadline = time.monotonic() + 120
                if not os.path.exists(do["release"]):  # say who waits: <release>.waiting-<pid>
                    open(f"{do['release']}.waiting-{os.getpid()}", "w").close()
                while not os.path.exists(do["release"]) and time.monotonic() < deadline:
                    time.sleep(0.02)
            loss = self.inner.loss(model, batch)
            if self.calls == do["bump_at"]:
                loss = loss + 1000.0  # the value jumps, the gradient does not: training as usual
            return loss

        def evaluate(self, model):
            return self.inner.evaluate(model)


    def make(seed=0, device="cpu", delay=0.0, die_once="", fail=0, record="", raise_at=None,
             bump_at=None, wait_at=None, release="", depth=3, width=8, batch_size=16):
        script = {"delay": delay, "die_once": die_once, "fail": fail, "record": record,
                  "raise_at": raise_at, "bump_at": bump_at, "wait_at": wait_at,
                  "release": release}
        return Scripted(seed, device, script, depth=depth, width=width, batch_size=batch_size)
''')


def small_spec(study: str = "t", n_trials: int = 6, steps: int = 40, **overrides: Any
               ) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "study": study,
        "workload": {"name": "deep_mlp", "args": {"depth": 3, "width": 8, "batch_size": 16}},
        "steps": steps,
        "eval_every": steps,
        "report_every": 10,
        "objective": {"metric": "eval_loss", "direction": "minimize"},
        "n_trials": n_trials,
        "seed": 0,
        "sampler": {"name": "random"},
        "fixed": {"optimizer": "sgd"},
        "space": {
            "lr": {"type": "float", "low": 1e-3, "high": 30.0, "log": True},
            "clip_method": {"type": "categorical", "choices": ["none", "norm"]},
            "clip_threshold": {"type": "float", "low": 0.5, "high": 5.0, "log": True,
                               "when": {"clip_method": ["norm"]}},
        },
    }
    spec.update(overrides)
    return spec


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cli_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(workdir)])
    env.pop("MLFLOW_TRACKING_URI", None)
    env["RAY_DEDUP_LOGS"] = "0"
    return env


def cli(workdir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *args], cwd=workdir,
                          env=cli_env(workdir), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def cli_popen(workdir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sweeps.cli", *args], cwd=workdir,
                            env=cli_env(workdir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def load(workdir: Path, study: str):  # type: ignore[no-untyped-def]
    import optuna

    return optuna.load_study(study_name=study, storage=f"sqlite:///{workdir / 'stabsweep.db'}")


def states(study) -> dict[str, int]:  # type: ignore[no-untyped-def]
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts
