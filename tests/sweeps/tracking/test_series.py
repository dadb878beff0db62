"""sweeps.tracking._series: the guard's records as MLflow metric points (cadence, non-finite
values, run-length series, metric keys)."""

from __future__ import annotations

import math

import pytest

from sweeps.tracking._series import RunLength, TraceEncoder, metric_key
from tests.sweeps.tracking.helpers import synthetic


def test_run_length_sends_first_and_last_step_of_each_run() -> None:
    series, out = RunLength("lr"), []
    for step, value in enumerate([1.0, 1.0, 1.0, 0.5, 0.5, math.nan, math.nan, 0.5]):
        series.push(step, value, 0, out)
    series.close(0, out)
    got = [(p[3], p[1]) for p in out]
    assert got[:5] == [(0, 1.0), (2, 1.0), (3, 0.5), (4, 0.5), (5, got[4][1])]
    assert math.isnan(got[4][1]) and got[4][0] == 5 and got[5][0] == 6
    assert got[6:] == [(7, 0.5)]
    assert len(got) == 7


def test_encoder_cadence_nonfinite_and_keys() -> None:
    records, _ = synthetic(25, nan_at=13, lr_change_at=7)
    encoder = TraceEncoder(layer_every=10)
    points = encoder.encode(records[:20], ts=1) + encoder.encode(records[20:], ts=2)
    points += encoder.close(ts=3)
    by_key: dict[str, list[tuple[int, float]]] = {}
    for key, value, _, step in points:
        by_key.setdefault(key, []).append((step, value))
    assert [s for s, _ in by_key["grad_norm/global"]] == list(range(25))
    assert [s for s, _ in by_key["loss"]] == list(range(25))
    # Per-layer, log10: every 10th step, every non-finite step (13..24), and the last step;
    # a NaN/inf/0 value has no log10 point (net.4 is NaN from step 13).
    assert [s for s, _ in by_key["grad_norm_log10/net.2"]] == [0, 10, *range(13, 25)]
    assert [s for s, _ in by_key["grad_norm_log10/net.4"]] == [0, 10]
    assert by_key["grad_norm_log10/net.2"][0][1] == pytest.approx(math.log10(0.2))
    assert [s for s, _ in by_key["grad_norm/global_log10"]] == list(range(13))
    assert by_key["lr"] == [(0, 0.1), (6, 0.1), (7, 0.05), (24, 0.05)]
    assert by_key["guard/nonfinite_grads"] == [(0, 0.0), (12, 0.0), (13, 1.0), (24, 1.0)]
    assert by_key["guard/amp_overflow_count"] == [(0, 0.0), (24, 0.0)]
    assert encoder.first_nonfinite == 13
    assert metric_key("grad_norm/enc.layers[0]") == "grad_norm/enc.layers_0_"
