"""Plots: real PNG files of a sane size, robust to NaN / inf and degenerate sweeps."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stability import plots
from stability.diagnose import diagnose
from stability.records import Verdict

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert len(data) > 5000  # a drawn figure, not an empty canvas
    return width, height


def sane(path: Path) -> tuple[int, int]:
    width, height = png_size(path)
    assert 300 <= width <= 4000 and 200 <= height <= 4000
    return width, height


def trace(n: int = 300, nan_at: int | None = 250) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    layers = np.array([0.3, 0.5, 1.0]) * np.exp(rng.normal(0, 0.2, (n, 3)))
    t = np.arange(n, dtype=np.float64)
    layers[:, 2] *= np.where(t > 200, 1.3 ** (t - 200), 1.0)
    loss = 0.5 + 0.01 * rng.standard_normal(n)
    if nan_at is not None:
        layers[nan_at:, 2] = np.inf
        layers[nan_at:, 1] = np.nan
        loss[nan_at:] = np.nan
    with np.errstate(invalid="ignore"):
        norm = np.sqrt((layers ** 2).sum(axis=1))
    frame = pd.DataFrame({"step": np.arange(n), "loss": loss, "grad_norm": norm,
                          "lr": 1e-3, "clip_coef": 1.0, "clip_threshold": 2.0,
                          "amp_scale": 1.0, "overflow": False, "nonfinite": 0})
    frame.loc[:100, "clip_threshold"] = np.nan
    for j, name in enumerate(("embed", "fc1", "fc2")):
        frame[f"grad_norm/{name}"] = layers[:, j]
    return frame


def test_matplotlib_is_imported_lazily() -> None:
    assert plots.__name__ == "stability.plots"
    import subprocess

    code = ("import sys, stability.plots, stability.diagnose, stability.detectors; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"


def test_plot_trace_with_verdict_and_diagnosis(tmp_path: Path) -> None:
    frame = trace()
    verdict = Verdict(kind="nonfinite", step=250, value=1.0, threshold=0.0, layer="fc1")
    diag = diagnose(frame, verdict)
    out = plots.plot_trace(frame, tmp_path / "sub" / "trace.png", verdict=verdict,
                           diagnosis=diag, title="rnn-adding trial 7")
    assert out == tmp_path / "sub" / "trace.png"
    sane(out)
    plain = plots.plot_trace(trace(nan_at=None), tmp_path / "plain.png")  # nothing marked
    sane(plain)


def test_plot_trace_all_nonfinite(tmp_path: Path) -> None:
    frame = trace(n=20, nan_at=0)
    frame["grad_norm"] = np.nan
    sane(plots.plot_trace(frame, tmp_path / "nan.png"))


def test_heatmap_handles_nan_inf_and_zero(tmp_path: Path) -> None:
    frame = trace()
    frame.loc[10:20, "grad_norm/embed"] = 0.0
    width, height = sane(plots.plot_layer_heatmap(frame, tmp_path / "heat.png"))
    assert width > height


def test_heatmap_long_trace_is_pooled(tmp_path: Path) -> None:
    n = 9001
    matrix = np.ones((2, n))
    matrix[1, 4321] = np.inf
    pooled, steps = plots._pool(matrix, np.arange(n, dtype=np.float64))
    assert pooled.shape == (2, 1801) and steps.size == 1801  # blocks of 5
    assert np.isnan(pooled[1, 4321 // 5]) and np.isfinite(pooled[0]).all()
    frame = pd.DataFrame({"step": np.arange(n), "grad_norm/a": matrix[0],
                          "grad_norm/b": matrix[1]})
    sane(plots.plot_layer_heatmap(frame, tmp_path / "long.png"))


def test_heatmap_needs_layer_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="grad_norm/<layer>"):
        plots.plot_layer_heatmap(pd.DataFrame({"step": [0, 1]}), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def sweep(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lr = 10 ** rng.uniform(-4, -1, n)
    clip = 10 ** rng.uniform(-1, 1, n)
    clip[::4] = np.nan  # a quarter of the trials did not clip
    exploded = lr * np.nan_to_num(clip, nan=100.0) > 0.05
    return pd.DataFrame({"lr": lr, "clip_threshold": clip, "exploded": exploded})


def test_stability_map(tmp_path: Path) -> None:
    sane(plots.plot_stability_map(sweep(), tmp_path / "map.png", title="study x"))


def test_stability_map_all_nan_y_and_single_row(tmp_path: Path) -> None:
    frame = sweep()
    frame["clip_threshold"] = np.nan
    sane(plots.plot_stability_map(frame, tmp_path / "noclip.png"))
    one = pd.DataFrame({"lr": [1e-3], "clip_threshold": [1.0], "exploded": [True]})
    sane(plots.plot_stability_map(one, tmp_path / "one.png"))
    one_nan = pd.DataFrame({"lr": [1e-3], "clip_threshold": [np.nan], "exploded": [False]})
    sane(plots.plot_stability_map(one_nan, tmp_path / "one_nan.png"))


def test_stability_map_rejects_bad_columns(tmp_path: Path) -> None:
    frame = sweep()
    with pytest.raises(ValueError, match="missing column 'momentum'"):
        plots.plot_stability_map(frame, tmp_path / "m.png", y="momentum")
    frame.loc[3, "lr"] = -1.0
    with pytest.raises(ValueError, match=r"'lr' must hold positive numbers.*-1\.0"):
        plots.plot_stability_map(frame, tmp_path / "m.png")
    assert not (tmp_path / "m.png").exists()
