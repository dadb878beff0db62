"""diagnose(): onset, first layer, growth rate, loss impact and numeric suggestions."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from stability.config import StabilityConfig
from stability.diagnose import (
    NEVER_LEARNED_RATIO,
    Diagnosis,
    Suggestion,
    diagnose,
    stall_ratio,
)
from stability.records import Verdict

LAYERS = ("embed", "fc1", "fc2", "fc3")
ONSET, RATE, NAN_AT = 120, 1.25, 160


def make_trace(n: int, layers: np.ndarray, loss: np.ndarray, lr: float | np.ndarray = 1e-2,
               overflow: np.ndarray | None = None, amp_scale: float = 1.0,
               clip_threshold: float = math.nan) -> pd.DataFrame:
    with np.errstate(over="ignore", invalid="ignore"):
        norm = np.sqrt((layers ** 2).sum(axis=1))
    frame = pd.DataFrame({
        "step": np.arange(n, dtype=np.int64), "loss": loss, "grad_norm": norm,
        "lr": np.broadcast_to(lr, (n,)).astype(np.float64), "clip_coef": 1.0,
        "clip_threshold": clip_threshold, "amp_scale": amp_scale,
        "overflow": overflow if overflow is not None else np.zeros(n, dtype=bool),
        "nonfinite": (~np.isfinite(layers)).sum(axis=1).astype(np.int64),
    })
    for j, name in enumerate(LAYERS):
        frame[f"grad_norm/{name}"] = layers[:, j]
    return frame


def exploding_trace(seed: int = 0) -> pd.DataFrame:
    """Flat noisy norms; fc3 grows x1.25 per step from step 120, fc2 from 130; inf at 160."""
    n = NAN_AT + 1
    rng = np.random.default_rng(seed)
    layers = np.array([0.2, 0.2, 0.2, 1.0]) * np.exp(rng.normal(0.0, 0.1, (n, 4)))
    t = np.arange(n, dtype=np.float64)
    layers[:, 3] *= np.where(t > ONSET, RATE ** (t - ONSET), 1.0)
    layers[:, 2] *= np.where(t > ONSET + 10, 1.1 ** (t - ONSET - 10), 1.0)
    layers[NAN_AT, 3] = np.inf
    loss = 0.7 + 0.02 * rng.standard_normal(n)
    loss[NAN_AT] = np.inf
    return make_trace(n, layers, loss, lr=np.linspace(1e-3, 5e-2, n))


def nan_verdict() -> Verdict:
    return Verdict(kind="nonfinite", step=NAN_AT, value=1.0, threshold=0.0, layer="fc3",
                   detector="NonFiniteDetector", message="loss inf")


@pytest.mark.parametrize("verdict", [nan_verdict(), None], ids=["given", "replayed"])
def test_explosion_onset_layer_growth_and_loss(verdict: Verdict | None) -> None:
    trace = exploding_trace()
    diag = diagnose(trace, verdict)
    assert diag.exploded
    assert abs(diag.onset_step - ONSET) <= 3
    assert diag.first_layer == "fc3"
    assert diag.growth_rate == pytest.approx(RATE, rel=0.10)
    pre = trace["grad_norm"].to_numpy()[: diag.onset_step]
    assert diag.pre_onset_norm_p90 == pytest.approx(np.percentile(pre, 90), rel=1e-12)
    assert diag.loss_before == pytest.approx(0.7, abs=0.01)
    assert diag.lr_at_onset == trace["lr"].iloc[diag.onset_step]
    if verdict is not None:
        assert (diag.verdict_step, diag.verdict_kind) == (NAN_AT, "nonfinite")
        assert math.isinf(diag.loss_after)
    else:  # the detectors catch it well before the loss turns non-finite
        assert ONSET < diag.verdict_step < NAN_AT
        assert diag.loss_after == pytest.approx(0.7, abs=0.1)


def test_clip_suggestion_is_the_printed_p90() -> None:
    config = StabilityConfig(lr=5e-2, optimizer="sgd")
    diag = diagnose(exploding_trace(), nan_verdict(), config)
    clip = next(s for s in diag.suggestions if s.intervention == "clip")
    expected = float(f"{diag.pre_onset_norm_p90:.3g}")
    assert clip.changes == {"clip_method": "norm", "clip_threshold": expected}
    assert f"clip by norm at {expected:g}" in clip.text
    assert diag.suggestions[0] is clip  # the numeric clip is the first fix here
    warm = next(s for s in diag.suggestions if s.intervention == "warmup")
    assert warm.changes == {"warmup_steps": 250}  # 2 x onset 120, rounded up to 50
    lr = next(s for s in diag.suggestions if s.intervention == "lr")
    assert lr.changes["lr"] == float(f"{diag.lr_at_onset / 3:.2g}")
    for s in diag.suggestions:  # every change applies to the config
        config.replace(**s.changes)


def test_adam_is_told_to_lower_the_lr_before_clipping() -> None:
    # Adam divides by the gradient's running RMS: a clipped norm hardly shrinks its step
    diag = diagnose(exploding_trace(), nan_verdict(), StabilityConfig(lr=5e-2, optimizer="adam"))
    kinds = [s.intervention for s in diag.suggestions]
    assert kinds.index("lr") < kinds.index("clip")


def test_blow_up_during_the_warm_up_is_not_told_to_warm_up_longer() -> None:
    # onset at step 120 while the lr still rises towards its peak at step 200
    config = StabilityConfig(lr=5e-2, optimizer="sgd", warmup_steps=200)
    diag = diagnose(exploding_trace(), nan_verdict(), config)
    kinds = [s.intervention for s in diag.suggestions]
    assert "warmup" not in kinds
    lr = next(s for s in diag.suggestions if s.intervention == "lr")
    assert "during the warm-up to 0.05" in lr.text
    assert kinds.index("lr") <= 1


def test_tight_clip_already_in_place_puts_lr_first() -> None:
    trace = exploding_trace()
    config = StabilityConfig(clip_method="norm", clip_threshold=0.5, warmup_steps=1000)
    diag = diagnose(trace, nan_verdict(), config)
    kinds = [s.intervention for s in diag.suggestions]
    assert "clip" not in kinds and "warmup" not in kinds
    assert kinds[0] == "lr"


def test_healthy_trace() -> None:
    n = 500
    rng = np.random.default_rng(1)
    layers = np.array([0.2, 0.3, 0.4, 0.5]) * np.exp(rng.normal(0, 0.2, (n, 4)))
    trace = make_trace(n, layers, 1.0 / np.sqrt(1 + np.arange(n)))
    diag = diagnose(trace)
    norm = trace["grad_norm"].to_numpy()
    assert not diag.exploded and diag.suggestions == []
    assert diag.onset_step is None and diag.verdict is None
    assert diag.max_norm == norm.max() and diag.max_norm_step == int(norm.argmax())
    assert diag.pre_onset_norm_p90 == pytest.approx(np.percentile(norm, 90))
    text = diag.summary()
    assert text.startswith("healthy") and f"{norm.max():.4g}" in text
    assert json.loads(json.dumps(diag.to_dict()))["exploded"] is False


def test_fp16_many_overflows_suggests_bf16_first() -> None:
    n = 312  # the guard stops at the verdict
    rng = np.random.default_rng(2)
    layers = np.array([0.2, 0.3, 0.4, 0.5]) * np.exp(rng.normal(0, 0.2, (n, 4)))
    overflow = np.zeros(n, dtype=bool)
    overflow[::7] = True  # 43 back-offs...
    overflow[280:312] = True  # ...then 32 in a row
    layers[overflow, 1] = np.inf
    trace = make_trace(n, layers, np.full(n, 0.5), overflow=overflow, amp_scale=1024.0)
    diag = diagnose(trace)  # replayed: overflow_streak at step 311
    assert (diag.verdict_kind, diag.verdict_step) == ("overflow_streak", 311)
    assert diag.overflow_count == int(overflow.sum())
    assert diag.suggestions[0].intervention == "precision"
    assert diag.suggestions[0].changes == {"precision": "bf16"}
    assert f"{diag.overflow_count} of {n} steps overflowed" in diag.suggestions[0].text


@pytest.mark.parametrize(("on_spike", "kind"), [("stop", "nonfinite"), ("skip", "unsettled")])
def test_fp16_without_scaling_suggests_bf16_or_scaling_first(on_spike: str, kind: str) -> None:
    """fp16_noscale has no scaler, so no overflow count: inf gradients are the sign (stop:
    the first one; skip: they are skipped until they do not settle)."""
    n = 60
    rng = np.random.default_rng(3)
    layers = np.array([0.2, 0.3, 0.4, 0.5]) * np.exp(rng.normal(0, 0.2, (n, 4)))
    layers[40:, 2] = np.inf
    trace = make_trace(n, layers, np.full(n, 0.5))
    at = 40 if kind == "nonfinite" else 49  # the guard's verdict (skip: the 10th in a row)
    verdict = Verdict(kind=kind, step=at, value=math.inf, threshold=math.nan, layer="fc2",
                      detector="NonFiniteDetector", message="non-finite gradient")
    diag = diagnose(trace, verdict,
                    config=StabilityConfig(precision="fp16_noscale", on_spike=on_spike))
    assert (diag.verdict_kind, diag.overflow_count) == (kind, 0)
    first = diag.suggestions[0]
    assert (first.intervention, first.changes) == ("precision", {"precision": "bf16"})
    assert "loss scaling (precision: fp16)" in first.text
    plain = diagnose(trace, verdict, config=StabilityConfig(precision="fp32", on_spike=on_spike))
    assert plain.exploded and all(s.intervention != "precision" for s in plain.suggestions)


def test_recovered_transient_is_healthy() -> None:
    n = 300
    rng = np.random.default_rng(4)
    layers = np.array([0.2, 0.3, 0.4, 0.5]) * np.exp(rng.normal(0, 0.2, (n, 4)))
    layers[10:20] *= 1000.0
    loss = np.full(n, 4.0)
    loss[12:22] = 800.0  # 200x the initial loss, then back
    loss[22:] = 1.0
    assert not diagnose(make_trace(n, layers, loss)).exploded
    loss[-1] = np.nan  # the same trace ending non-finite is replayed and diagnosed
    diag = diagnose(make_trace(n, layers, loss))
    assert (diag.verdict_kind, diag.verdict_step) == ("loss_divergence", 12)
    assert diag.onset_step == 9  # the last step before the 1000x jump


def test_recurrent_first_layer_suggests_orthogonal_init() -> None:
    trace = exploding_trace().rename(columns={"grad_norm/fc3": "grad_norm/rnn"})
    diag = diagnose(trace, nan_verdict())
    assert diag.first_layer == "rnn"
    init = next(s for s in diag.suggestions if s.intervention == "init")
    assert init.changes == {"init": "orthogonal", "init_gain": 1.0}


def test_abrupt_nan_without_warning() -> None:
    n = 300
    rng = np.random.default_rng(3)
    layers = np.array([0.2, 0.3, 0.4, 0.5]) * np.exp(rng.normal(0, 0.2, (n, 4)))
    layers[250:, 1] = np.nan
    loss = np.full(n, 0.4)
    loss[250:] = np.nan
    diag = diagnose(make_trace(n, layers, loss))
    assert (diag.verdict_kind, diag.verdict_step, diag.first_layer) == ("nonfinite", 250, "fc1")
    assert diag.onset_step == 249  # the last step inside the healthy band
    assert diag.loss_before == pytest.approx(0.4)
    assert diag.loss_after is not None and math.isnan(diag.loss_after)


def test_to_dict_is_json_and_summary_reads() -> None:
    diag = diagnose(exploding_trace(), nan_verdict())
    data = diag.to_dict()
    text = json.dumps(data, allow_nan=False)  # strict JSON: no NaN / Infinity tokens
    back = json.loads(text)
    assert back["loss_after"] == "inf"
    assert back["verdict"]["kind"] == "nonfinite"
    assert back["suggestions"][0]["changes"]["clip_method"] == "norm"
    summary = diag.summary()
    assert f"onset at step {diag.onset_step}" in summary and "fc3" in summary
    assert "1. clip by norm at" in summary


def test_bad_trace_is_named() -> None:
    with pytest.raises(ValueError, match="missing column 'grad_norm'"):
        diagnose(pd.DataFrame({"step": [0], "loss": [1.0]}))
    with pytest.raises(TypeError, match="DataFrame"):
        diagnose([1, 2, 3])  # type: ignore[arg-type]
    empty = diagnose(pd.DataFrame({"step": [], "loss": [], "grad_norm": []}))
    assert not empty.exploded and "no steps" in empty.summary()


def test_public_types() -> None:
    s = Suggestion("clip", "clip by norm at 1", {"clip_method": "norm", "clip_threshold": 1.0})
    assert isinstance(Diagnosis(exploded=False).suggestions, list) and s.changes


@pytest.mark.parametrize("verdict_step", [1, 2, 3])
def test_first_layer_named_for_explosions_in_the_first_steps(verdict_step: int) -> None:
    """No baseline yet (the detectors fall back to none): the layer that rose most is named."""
    n = verdict_step + 1
    layers = np.tile([1.0, 0.5, 0.8, 0.3], (n, 1))
    layers[1:, 2] *= 50.0 ** np.arange(1, n)[:, None].ravel()  # fc2 leaps from step 1 on
    layers[1:, 3] *= 3.0  # fc3 is the largest-but-one, rises less
    loss = np.linspace(1.0, 1e3, n)
    verdict = Verdict("loss_divergence", verdict_step, 1e3, 10.0, layer=None)
    diag = diagnose(make_trace(n, layers, loss), verdict)
    assert diag.exploded and diag.first_layer == "fc2"
    assert "unknown" not in diag.summary()


@pytest.mark.parametrize("verdict_step", [1, 2, 3])
def test_first_layer_of_an_early_nonfinite_step_is_the_first_nonfinite_layer(
        verdict_step: int) -> None:
    n = verdict_step + 1
    layers = np.tile([1.0, 0.5, 0.8, 0.3], (n, 1))
    layers[verdict_step, 1] = math.inf
    layers[verdict_step, 3] = math.nan
    loss = np.ones(n)
    loss[verdict_step] = math.nan
    diag = diagnose(make_trace(n, layers, loss),
                    Verdict("nonfinite", verdict_step, math.nan, 0.0, layer=None))
    assert diag.first_layer == "fc1"


def test_first_layer_at_step_zero_is_the_largest_norm() -> None:
    layers = np.array([[1.0, 9.0, 2.0, 0.5]])
    diag = diagnose(make_trace(1, layers, np.array([5.0])),
                    Verdict("loss_divergence", 0, 5.0, 1.0, layer=None))
    assert diag.first_layer == "fc1"


def flat_trace(n: int = 300, spike_at: int | None = None, start: float = 1.1,
               level: float = 1.0, seed: int = 5) -> pd.DataFrame:
    """A run whose loss drops from ``start`` to ``level`` in 5 steps and stays there."""
    rng = np.random.default_rng(seed)
    layers = np.array([0.2, 0.3, 0.4, 0.5]) * np.exp(rng.normal(0, 0.2, (n, 4)))
    if spike_at is not None:
        layers[spike_at] *= 40.0
    loss = level * np.exp(rng.normal(0, 0.05, n))
    loss[:5] = np.linspace(start, level, 5)
    return make_trace(n, layers, loss, lr=0.3)


def test_run_stuck_near_its_start_never_learned_with_its_evidence() -> None:
    diag = diagnose(flat_trace(spike_at=80), config=StabilityConfig(optimizer="sgd", lr=0.3))
    assert not diag.exploded and diag.never_learned and diag.outcome == "never_learned"
    assert diag.loss_end == pytest.approx(1.0, rel=0.05)
    assert diag.loss_end / diag.loss_start > NEVER_LEARNED_RATIO
    assert diag.stall_step is not None and diag.stall_step <= 10
    assert diag.spike_step == 80 and diag.spike_ratio > 20
    assert [s.intervention for s in diag.suggestions] == ["lr", "clip"]
    assert diag.suggestions[0].changes == {"lr": 0.1}
    text = diag.summary()
    assert text.startswith("NEVER LEARNED") and "largest norm spike" in text
    assert "at step 80, after the stall" in text
    assert json.loads(json.dumps(diag.to_dict()))["outcome"] == "never_learned"


def test_never_learned_without_a_spike_suggests_an_init_and_a_smaller_lr() -> None:
    diag = diagnose(flat_trace(), config=StabilityConfig(optimizer="sgd", lr=0.3))
    assert diag.never_learned and diag.spike_step is None
    assert diag.suggestions[0].changes == {"init": "kaiming_normal", "lr": 0.075}
    assert "no norm spike" in diag.summary()


def test_never_learned_against_the_constant_prediction_baseline() -> None:
    # the loss fell 10x from a large start, but only to what a constant prediction gives
    trace = flat_trace(start=10.0)
    assert diagnose(trace).outcome == "healthy"
    diag = diagnose(trace, baseline=1.02)
    assert diag.outcome == "never_learned" and diag.loss_baseline == 1.02
    assert "x the constant-prediction loss 1.02 (start 5.5)" in diag.summary()


def test_a_run_that_learned_is_not_never_learned() -> None:
    trace = flat_trace(level=0.2, start=1.1)  # 0.2 / 1.1 = 0.18 of its start
    assert diagnose(trace).outcome == "healthy"
    assert diagnose(trace, baseline=1.0).outcome == "healthy"
    assert math.isnan(stall_ratio(np.ones(10)))  # too short to say


def test_skipped_updates_without_a_verdict_are_rescued() -> None:
    trace = flat_trace(level=0.2, spike_at=120)
    trace["skipped"] = False
    trace.loc[[120, 121, 160], "skipped"] = True
    diag = diagnose(trace)
    assert (diag.outcome, diag.skipped_count, diag.first_skipped_step) == ("rescued", 3, 120)
    assert diag.summary().startswith("rescued: no explosion in 300 steps after 3 update(s) "
                                     "skipped as spikes or non-finite, the first at step 120")
