"""benchmarks/gpu_check.py runs without a GPU (the CPU fallback at tiny sizes): the script a GPU
machine runs as it is must not first meet its bugs there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_falls_back_to_the_cpu_and_prints_every_section(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--out",
         str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no CUDA device, so this runs on the CPU" in proc.stdout
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    checks = {row[0] for row in rows}
    assert checks == {"precision", "overhead", "syncs", "skip exactness", "compile", "sweep"}
    precision = [row for row in rows if row[0] == "precision"]
    assert len(precision) == 16 and all(row[2] == "ok" for row in precision)
    exact = [row for row in rows if row[0] == "skip exactness"]
    assert len(exact) == 7
    assert all(row[2] in ("bit-identical", "identical") for row in exact), exact
    compiled = next(row for row in rows if row[0] == "compile")
    assert compiled[2] == "ok" and "_orig_mod" not in compiled[3]
    assert (tmp_path / "gpu_check.md").read_text().startswith("check")
