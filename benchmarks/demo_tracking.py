"""What MLflow tracking costs the README demo, end to end through the CLI, in one run.

    .venv/bin/python benchmarks/demo_tracking.py [--repeats 3] [--spec examples/quick.yaml]

Runs ``stabsweep run SPEC --workers 2`` in a fresh folder per run, interleaved and rotated:

* ``off``: ``--no-tracking``;
* ``on``: tracking to the default SQLite store (the uploader process steps back: nice 10 for
  itself and for its session's scheduling group);
* ``on, group nice 0``: the same with ``STABSWEEP_UPLOADER_NICE=0``, i.e. the uploader competing
  with the trials as it did when only its process was niced (a process alone in its session's
  group gains nothing from its own nice under ``sched_autogroup``).

Prints per mode the median of the trials' summed wall time (each trial's own clock in its
worker) and of the whole command, and the on/off ratios with their per-pair spread. The
trials are ~0.3 s each, so fixed per-trial costs and CPU contention weigh heavily here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, median, table

MODES = {"off": (["--no-tracking"], {}), "on": ([], {}),
         "on, group nice 0": ([], {"STABSWEEP_UPLOADER_NICE": "0"})}


def one_run(spec: Path, flags: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(command seconds, summed trial seconds, steps) of one sweep in a fresh folder."""
    import optuna

    with tempfile.TemporaryDirectory(prefix="stabsweep-demo-") as tmp:
        start = time.perf_counter()
        done = subprocess.run(
            [str(Path(sys.executable).parent / "stabsweep"), "run", str(spec), "--workers", "2",
             *flags], cwd=tmp, env={**os.environ, **env}, capture_output=True, text=True,
            timeout=900)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"the sweep failed ({done.returncode}):\n{done.stderr[-2000:]}")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=optuna.get_all_study_names(
            f"sqlite:///{tmp}/stabsweep.db")[0], storage=f"sqlite:///{tmp}/stabsweep.db")
        trials = study.get_trials(deepcopy=False)
        summed = sum(float(t.user_attrs.get("stabsweep.wall_time_s", 0.0)) for t in trials)
        steps = sum(int(t.user_attrs.get("stabsweep.steps_run", 0)) for t in trials)
        # the uploader outlives the sweep for a while: let it go before the next run
        subprocess.run(["pkill", "-f", f"sweeps.tracking._uploader {tmp}"], check=False)
    return wall, summed, steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spec", type=Path, default=ROOT / "examples" / "quick.yaml")
    args = parser.parse_args(argv)
    names = list(MODES)
    runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in names}
    print(f"{args.spec.name}, 2 workers, {args.repeats} rounds of {', '.join(names)} (rotated); "
          f"load avg at start {os.getloadavg()[0]:.1f}", flush=True)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            flags, env = MODES[name]
            runs[name].append(one_run(args.spec.resolve(), flags, env))
            wall, summed, steps = runs[name][-1]
            print(f"  round {r + 1}: {name:<17} command {wall:5.1f} s  trials {summed:5.2f} s "
                  f"({steps} steps)", flush=True)
    off = runs["off"]
    rows = []
    for name in names:
        pairs = [on[1] / base[1] for on, base in zip(runs[name], off, strict=True)]
        rows.append((name, median([w for w, _, _ in runs[name]]),
                     median([s for _, s, _ in runs[name]]),
                     f"{median(pairs):.2f}x ({min(pairs):.2f}-{max(pairs):.2f})"))
    print()
    print(table(["mode", "command s", "trials summed s", "trials vs off (per pair, spread)"],
                rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
