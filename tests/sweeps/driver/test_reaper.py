"""sweeps.driver._reaper: the watchdog runs the driver's on-death command (which ends the
study's MLflow run) when the driver is killed -9, and not when the driver closes it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

DRIVER = textwrap.dedent("""
    import os, signal, sys
    from sweeps.driver._reaper import start_reaper

    marker, how = sys.argv[1], sys.argv[2]
    reaper = start_reaper(0.1, on_death=[sys.executable, "-c", f"open({marker!r}, 'w').close()"])
    print(reaper.pid, flush=True)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    reaper.close()
""")


def _wait(condition, what: str, limit_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {limit_s:.0f} s for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["close", "kill"])
def test_the_on_death_command_runs_only_when_the_driver_dies(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "ran"
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(marker), how], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    watchdog = Path(f"/proc/{int(proc.stdout.split()[0])}")
    _wait(lambda: not watchdog.exists(), "the watchdog to exit")
    if how == "kill":
        _wait(marker.exists, "the on-death command")
    else:
        time.sleep(0.5)  # a command wrongly started would have run by now
        assert not marker.exists()
