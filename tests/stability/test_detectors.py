"""Explosion detectors on synthetic traces with known onsets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stability.detectors import (
    DEFAULT_DETECTORS,
    SKIP_DETECTORS,
    CeilingDetector,
    CompositeDetector,
    Detector,
    GrowthDetector,
    LossDivergenceDetector,
    MedianRatioDetector,
    NonFiniteDetector,
    NullDetector,
    ZScoreSpikeDetector,
    default_detector,
    records_from_trace,
    replay,
)
from stability.records import StepRecord, Verdict

NAMES = ("embed", "fc1", "fc2", "fc3")
FLOAT32_MAX = float(np.finfo(np.float32).max)


def healthy_layers(n: int, seed: int, sigma: float = 0.3) -> np.ndarray:
    """[n, 4] per-layer norms: lognormal noise around distinct levels."""
    rng = np.random.default_rng(seed)
    levels = np.array([0.5, 1.0, 0.8, 0.3])
    return levels * np.exp(rng.normal(0.0, sigma, size=(n, len(NAMES))))


def records(layers: np.ndarray, losses: np.ndarray | None = None,
            overflow: np.ndarray | None = None) -> list[StepRecord]:
    out = []
    for i, row in enumerate(layers):
        with np.errstate(over="ignore", invalid="ignore"):
            norm = float(np.sqrt(np.sum(row.astype(np.float64) ** 2)))
        if norm > FLOAT32_MAX:
            norm = math.inf  # what a float32 reduction on device gives
        nonfinite = int((~np.isfinite(row)).sum())
        out.append(StepRecord(
            step=i, loss=1.0 if losses is None else float(losses[i]), global_norm=norm,
            layer_norms=row.copy(), layer_names=NAMES, lr=1e-3,
            overflow=bool(overflow[i]) if overflow is not None else False,
            nonfinite=nonfinite))
    return out


def first_verdict(detector: Detector, recs: list[StepRecord]) -> Verdict | None:
    for rec in recs:
        verdict = detector.observe(rec.step, rec)
        if verdict is not None:
            return verdict
    return None


def exploding(onset: int = 100, rate: float = 1.3, n: int = 500, seed: int = 1) -> np.ndarray:
    """Every layer grows from ``onset``: fc3 by x``rate`` per step, the others by x1.15."""
    layers = healthy_layers(n, seed, sigma=0.2)
    t = np.arange(n, dtype=np.float64)[:, None]
    rates = np.array([1.15, 1.15, 1.15, rate])
    with np.errstate(over="ignore"):
        layers *= np.where(t > onset, rates ** (t - onset), 1.0)
    return layers


def test_growth_flagged_early_and_before_inf() -> None:
    onset, rate = 100, 1.3
    recs = records(exploding(onset, rate))
    inf_step = next(r.step for r in recs if not math.isfinite(r.global_norm))
    assert inf_step > onset + 300  # the trace does give warning
    for detector in (GrowthDetector(), default_detector(), default_detector(on_spike="stop")):
        verdict = first_verdict(detector, recs)
        assert verdict is not None
        # growth waits until the norm is 100x its floor (x1.3 per step: ~18 steps, plus the
        # window's lag): the defaults trade a few steps for no false flags on unseen runs
        assert onset <= verdict.step <= onset + 30
        assert verdict.step < inf_step
        assert verdict.layer == "fc3"
    growth = first_verdict(GrowthDetector(), recs)
    assert growth is not None and growth.kind == "growth" and growth.detector == "GrowthDetector"
    assert growth.value > growth.threshold == 0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_healthy_lognormal_trace_is_quiet(seed: int) -> None:
    recs = records(healthy_layers(2000, seed, sigma=0.3),
                   losses=np.exp(np.random.default_rng(seed).normal(0, 0.3, 2000)))
    assert first_verdict(default_detector(), recs) is None


def test_single_spike_that_recovers_is_quiet() -> None:
    layers = healthy_layers(2000, seed=3)
    layers[1000] *= 50.0
    recs = records(layers)
    assert first_verdict(default_detector(), recs) is None
    # the spike is plainly visible: without patience the z-score detector fires on it
    eager = first_verdict(ZScoreSpikeDetector(patience=1), recs)
    assert eager is not None and eager.step == 1000 and eager.kind == "spike"


def test_decaying_spike_is_not_an_explosion() -> None:
    layers = healthy_layers(2000, seed=4)
    for k, factor in enumerate((50.0, 20.0, 10.0, 5.0)):
        layers[1000 + k] *= factor
    assert first_verdict(default_detector(), records(layers)) is None


def test_warmup_transient_is_quiet() -> None:
    layers = healthy_layers(1000, seed=5)
    t = np.arange(1000)
    layers *= np.where(t < 30, 100.0 ** (1 - t / 30), 1.0)[:, None]  # 100x at step 0
    assert first_verdict(default_detector(), records(layers)) is None


def test_nan_at_step_k_names_first_nonfinite_layer() -> None:
    layers = healthy_layers(300, seed=6)
    layers[137, 2] = np.nan
    layers[137, 3] = np.inf
    recs = records(layers)
    verdict = first_verdict(default_detector(on_spike="stop"), recs)
    assert verdict is not None
    assert (verdict.kind, verdict.step, verdict.layer) == ("nonfinite", 137, "fc2")
    assert verdict.value == 2.0 and verdict.detector == "NonFiniteDetector"


def test_nan_loss_alone_is_nonfinite() -> None:
    losses = np.ones(50)
    losses[20] = np.inf
    verdict = first_verdict(NonFiniteDetector(), records(healthy_layers(50, 7), losses))
    assert verdict is not None and (verdict.kind, verdict.step, verdict.layer) == (
        "nonfinite", 20, None)


def _fp16(streak_at: int | None, streak: int) -> list[StepRecord]:
    n = 600
    layers = healthy_layers(n, seed=8)
    overflow = np.zeros(n, dtype=bool)
    overflow[::50] = True  # isolated scaler back-offs
    if streak_at is not None:
        overflow[streak_at:streak_at + streak] = True
    layers[overflow, 1] = np.inf  # the scaled grads overflowed
    return records(layers, overflow=overflow)


def test_isolated_fp16_overflows_are_quiet() -> None:
    assert first_verdict(default_detector(), _fp16(None, 0)) is None
    assert first_verdict(default_detector(), _fp16(300, 11)) is None


def test_overflow_streak_fires_on_the_32nd_in_a_row() -> None:
    assert first_verdict(default_detector(), _fp16(300, 31)) is None
    verdict = first_verdict(default_detector(), _fp16(300, 32))
    assert verdict is not None
    assert (verdict.kind, verdict.step, verdict.value, verdict.threshold) == (
        "overflow_streak", 331, 32.0, 32.0)
    assert verdict.layer == "fc1"


def test_loss_divergence_after_warmup() -> None:
    n = 600
    losses = np.full(n, 0.5)
    losses[:50] = np.linspace(2.0, 0.5, 50)
    losses[400:] = 8.0  # 16x the best (smoothed) loss of 0.5
    recs = records(healthy_layers(n, seed=9), losses)
    detector = LossDivergenceDetector(factor=10.0, patience=3, smoothing=0.9)
    verdict = first_verdict(detector, recs)
    assert verdict is not None
    assert (verdict.kind, verdict.step, verdict.value) == ("loss_divergence", 402, 8.0)
    assert verdict.threshold == pytest.approx(5.0, rel=1e-6)  # 10 x the flat 0.5
    assert "best smoothed loss" in verdict.message
    composite = first_verdict(default_detector(), recs)
    assert composite is not None and composite.kind == "loss_divergence"
    assert composite.step == 402


def test_loss_rise_during_warmup_is_ignored_below_the_initial_limit() -> None:
    losses = np.full(200, 1.0)
    losses[10:20] = 5.0  # 5x the best (and first) loss: above factor 3, below 10x the start
    layers = healthy_layers(200, 10)
    eager = first_verdict(LossDivergenceDetector(factor=3.0, warmup=0), records(layers, losses))
    assert eager is not None and eager.step == 12  # three steps in a row above 3 x 1.0
    assert first_verdict(LossDivergenceDetector(factor=3.0, warmup=50),
                         records(layers, losses)) is None
    losses[10:20] = 50.0  # 50x the first loss: worse than at initialisation, flagged at once
    verdict = first_verdict(LossDivergenceDetector(warmup=50), records(layers, losses))
    assert verdict is not None
    assert (verdict.kind, verdict.step, verdict.value, verdict.threshold) == (
        "loss_divergence", 10, 50.0, 10.0)
    assert "first loss" in verdict.message
    assert first_verdict(LossDivergenceDetector(warmup=50, initial_factor=None),
                         records(layers, losses)) is None


def test_first_update_that_throws_the_loss_up_is_flagged_at_once() -> None:
    losses = np.full(100, 2.3)
    losses[1:] = 0.5  # trains fine...
    losses[1] = 30.0  # ...but the first update made the loss 13x its initial value
    verdict = first_verdict(default_detector(), records(healthy_layers(100, 12), losses))
    assert verdict is not None and (verdict.kind, verdict.step) == ("loss_divergence", 1)


@pytest.mark.parametrize("patience", [1, 3, 5])
def test_initial_patience_lets_a_spike_above_10x_the_start_come_back(patience: int) -> None:
    losses = np.full(100, 0.5)
    losses[0] = 2.0
    losses[40:44] = 30.0  # 15x the first loss for 4 steps, then back
    recs = records(healthy_layers(100, 13), losses)
    detector = LossDivergenceDetector(initial_patience=patience, patience=50)
    verdict = first_verdict(detector, recs)
    if patience <= 4:  # the rise outlasts the window: a verdict at its last step
        assert verdict is not None and verdict.step == 40 + patience - 1
        assert ("in a row" in verdict.message) == (patience > 1)
    else:
        assert verdict is None
    losses[44:] = 30.0  # a rise that stays is a verdict under any window
    verdict = first_verdict(LossDivergenceDetector(initial_patience=patience, patience=50),
                            records(healthy_layers(100, 13), losses))
    assert verdict is not None and verdict.step == 40 + patience - 1


def test_nonfinite_loss_on_an_overflow_step_is_an_explosion() -> None:
    recs = _fp16(None, 0)
    assert recs[100].overflow and recs[150].overflow
    assert first_verdict(NonFiniteDetector(), recs) is None  # skipped steps: only counted
    recs[150].loss = math.inf  # the fp16 forward itself overflowed: no loss scale helps
    verdict = first_verdict(NonFiniteDetector(), recs)
    assert verdict is not None and (verdict.kind, verdict.step) == ("nonfinite", 150)
    assert verdict.layer == "fc1" and "loss inf" in verdict.message


def test_ceiling_names_layer_with_largest_ratio() -> None:
    layers = np.ones((20, 4))  # global norm 2.0: the baseline of the first 4 steps
    layers[7] = [1.0, 2.0, 5.0e4, 3.0]  # fc2 is 5e4x its baseline
    verdict = first_verdict(CeilingDetector(ratio=1e4, baseline=4), records(layers))
    assert verdict is not None
    assert (verdict.kind, verdict.step, verdict.layer, verdict.threshold) == (
        "ceiling", 7, "fc2", 2e4)
    assert verdict.value == pytest.approx(math.sqrt(1 + 4 + 2.5e9 + 9))


def test_median_ratio_hand_computed() -> None:
    layers = np.ones((30, 4)) * 0.5  # global norm exactly 1.0
    layers[20:] *= 20.0
    verdict = first_verdict(MedianRatioDetector(window=64, ratio=10.0, patience=3,
                                                warmup=16), records(layers))
    assert verdict is not None
    assert (verdict.kind, verdict.step) == ("median_ratio", 22)
    assert verdict.value == pytest.approx(20.0) and verdict.threshold == pytest.approx(10.0)


def test_spike_ratio_floor_ignores_small_level_shift() -> None:
    # a very smooth trace: a lasting 1.5x step is many sigmas but under min_ratio = 2
    layers = np.full((400, 4), 0.5) * (1 + 1e-4 * np.sin(np.arange(400)))[:, None]
    layers[200:] *= 1.5
    assert first_verdict(ZScoreSpikeDetector(min_ratio=2.0), records(layers)) is None
    layers[300:] *= 3.0  # now 4.5x the baseline, sustained
    verdict = first_verdict(ZScoreSpikeDetector(patience=3, min_ratio=2.0), records(layers))
    assert verdict is not None and verdict.step == 302


def test_reset_clears_state() -> None:
    recs = records(exploding())
    composite = default_detector()
    first = first_verdict(composite, recs)
    composite.reset()
    assert first_verdict(composite, recs) == first
    nonfinite = NonFiniteDetector(max_overflow_streak=3)
    streak = _fp16(None, 0)[1:3]
    for rec in streak:
        rec.overflow = True
        assert nonfinite.observe(rec.step, rec) is None
    nonfinite.reset()
    assert nonfinite.observe(3, streak[0]) is None  # the streak restarted at one
    assert nonfinite.observe(4, streak[0]) is None
    assert nonfinite.observe(5, streak[0]) is not None


def test_null_and_composite_order() -> None:
    recs = records(healthy_layers(10, 11))
    assert first_verdict(NullDetector(), recs) is None
    recs[5].global_norm = 5e6  # both a ceiling crossing...
    recs[5].loss = math.nan  # ...and a NaN loss on the same step: the first listed wins
    ceiling = CeilingDetector(baseline=2)
    verdict = first_verdict(CompositeDetector([ceiling, NonFiniteDetector()]), recs)
    assert verdict is not None and verdict.kind == "ceiling"
    verdict = first_verdict(CompositeDetector([NonFiniteDetector(), ceiling]), recs)
    assert verdict is not None and verdict.kind == "nonfinite"


@pytest.mark.parametrize(("make", "words"), [
    (lambda: ZScoreSpikeDetector(z_threshold=-1.0), ["z_threshold", "> 0", "-1.0", "4.0"]),
    (lambda: ZScoreSpikeDetector(alpha=1.0), ["alpha", "< 1.0", "got 1.0"]),
    (lambda: ZScoreSpikeDetector(warmup=1), ["warmup", ">= 2", "got 1"]),
    (lambda: NonFiniteDetector(max_overflow_streak=0), ["max_overflow_streak", ">= 1", "0"]),
    (lambda: NonFiniteDetector(max_overflow_streak=2.5), ["an integer", "2.5"]),
    (lambda: CeilingDetector(ratio=math.inf), ["ratio", "finite", "inf"]),
    (lambda: GrowthDetector(window=2), ["window", ">= 3", "got 2"]),
    (lambda: MedianRatioDetector(ratio=1.0), ["ratio", "> 1.0", "got 1.0"]),
    (lambda: LossDivergenceDetector(factor=True), ["factor", "got True"]),
])
def test_constructor_validation_quotes_the_value(make, words) -> None:
    with pytest.raises(ValueError) as info:
        make()
    for word in words:
        assert word in str(info.value)


def test_composite_rejects_non_detectors() -> None:
    with pytest.raises(TypeError, match=r"detectors\[1\] must be a Detector"):
        CompositeDetector([NullDetector(), object()])  # type: ignore[list-item]


def test_default_detector_overrides() -> None:
    kinds = [d.kind for d in default_detector(on_spike="stop").detectors]
    assert kinds == list(DEFAULT_DETECTORS)
    assert [d.kind for d in default_detector().detectors] == list(SKIP_DETECTORS)
    tuned = default_detector({"spike.z_threshold": 5.0}, on_spike="stop",
                             **{"growth.window": 24})
    spike = next(d for d in tuned.detectors if isinstance(d, ZScoreSpikeDetector))
    growth = next(d for d in tuned.detectors if isinstance(d, GrowthDetector))
    assert (spike.z_threshold, growth.window) == (5.0, 24)
    nested = default_detector({"ceiling": {"ratio": 100.0}, "median_ratio": None},
                              on_spike="stop")
    assert [d.kind for d in nested.detectors] == [
        "nonfinite", "ceiling", "spike", "growth", "loss_divergence"]
    assert nested.detectors[1].ratio == 100.0  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"spike has no argument 'bogus'.*z_threshold"):
        default_detector({"spike.bogus": 1}, on_spike="stop")
    with pytest.raises(ValueError, match=r"unknown detector 'spikes'.*nonfinite"):
        default_detector({"spikes.z_threshold": 1})
    # the other policy's members: checked, and unused
    assert [d.kind for d in default_detector({"spike.z_threshold": 5}).detectors] == list(
        SKIP_DETECTORS)
    with pytest.raises(ValueError, match="z_threshold must be"):
        default_detector({"spike.z_threshold": 0})
    with pytest.raises(ValueError, match="z_threshold must be"):
        default_detector({"spike.z_threshold": 0}, on_spike="stop")
    with pytest.raises(ValueError, match="on_spike must be one of skip, stop"):
        default_detector(on_spike="halt")
    skip = default_detector(spike_patience=4)
    assert skip.detectors[1].patience == 4  # type: ignore[attr-defined]


def test_records_from_trace_and_replay_match_live_observation() -> None:
    import pandas as pd

    layers = exploding(onset=60, n=200)
    recs = records(layers)
    frame = pd.DataFrame({"step": [r.step for r in recs], "loss": [r.loss for r in recs],
                          "grad_norm": [r.global_norm for r in recs]})
    for j, name in enumerate(NAMES):
        frame[f"grad_norm/{name}"] = layers[:, j]
    rebuilt = records_from_trace(frame)  # lr, overflow and nonfinite columns absent
    assert [r.step for r in rebuilt] == list(range(200))
    assert rebuilt[7].layer_names == NAMES and rebuilt[7].lr == 0.0
    assert not rebuilt[7].overflow and rebuilt[7].nonfinite == 0
    np.testing.assert_array_equal(rebuilt[7].layer_norms, layers[7])
    live = first_verdict(default_detector(), recs)
    detector = default_detector()
    assert replay(detector, frame) == live is not None
    assert replay(detector, frame) == live  # replay resets the detector first
    assert replay(detector, recs) == live  # records work too
    with pytest.raises(ValueError, match="missing column 'grad_norm'"):
        records_from_trace(frame.drop(columns="grad_norm"))
