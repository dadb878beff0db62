from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from stability.clipping import (
    AGC,
    AutoClip,
    NormClip,
    ValueClip,
    ZClip,
    adaptive_clip,
    clip_by_norm,
    clip_by_value,
    make_clipper,
    standardize_grads,
)
from stability.config import StabilityConfig
from stability.stats import GradMonitor


def _model(seed: int = 0, scale: float = 10.0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))
    (model(torch.randn(32, 6)) * scale).pow(2).mean().backward()
    return model


@pytest.mark.parametrize("max_norm", [0.01, 0.5, 3.0, 1e6])
def test_norm_clip_equals_torch(max_norm):
    ours, ref = _model(), _model()
    monitor = GradMonitor.for_model(ours)
    stats = monitor.measure()
    result = clip_by_norm(monitor.last_grads, stats.global_norm, max_norm)
    ref_total = nn.utils.clip_grad_norm_(ref.parameters(), max_norm)
    assert float(stats.global_norm) == pytest.approx(float(ref_total), rel=1e-6)
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6)
    expected_coef = min(1.0, max_norm / (float(ref_total) + 1e-6))
    assert float(result.coef) == pytest.approx(expected_coef, rel=1e-6)


def test_value_clip_matches_torch_and_reports_norm_ratio():
    ours, ref = _model(), _model()
    monitor = GradMonitor.for_model(ours)
    stats = monitor.measure()
    result = clip_by_value(monitor.last_grads, stats.global_norm, 0.05)
    nn.utils.clip_grad_value_(ref.parameters(), 0.05)
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    post = nn.utils.get_total_norm([p.grad for p in ref.parameters()])
    assert float(result.coef) == pytest.approx(float(post) / float(stats.global_norm), rel=1e-5)


def _agc_reference(p: torch.Tensor, g: torch.Tensor, lam: float, eps: float) -> torch.Tensor:
    """Brock et al. 2021, eq. 3, written out row by row."""
    out = g.clone()
    rows = p.shape[0] if p.ndim > 1 else 1
    for i in range(rows):
        w_row = p[i] if p.ndim > 1 else p
        g_row = g[i] if p.ndim > 1 else g
        w_norm = max(float(w_row.norm()), eps)
        g_norm = float(g_row.norm())
        if g_norm > lam * w_norm:
            clipped = g_row * (lam * w_norm / g_norm)
            if p.ndim > 1:
                out[i] = clipped
            else:
                out = clipped
    return out


def test_agc_matches_reference_formula():
    model = _model(scale=50.0)
    expected = {n: _agc_reference(p.detach(), p.grad, 0.01, 1e-3)
                for n, p in model.named_parameters()}
    stats = GradMonitor.for_model(model).measure()
    result = adaptive_clip(list(model.parameters()), stats.global_norm, 0.01, 1e-3)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-7)
    assert 0 < float(result.coef) < 1


def test_autoclip_threshold_is_percentile_of_history():
    clipper = AutoClip(percentile=25.0, history=5)
    norms = [4.0, 1.0, 3.0, 2.0, 5.0, 10.0, math.nan]
    seen: list[float] = []
    for value in norms:
        t = clipper.threshold(torch.tensor(value))
        if math.isfinite(value):
            seen.append(value)
        window = [v for v in (seen[-5:] if math.isfinite(value) else seen[-4:])]
        assert float(t) == pytest.approx(np.percentile(window, 25), rel=1e-6)


def test_autoclip_clips_by_norm_at_threshold():
    model = _model()
    monitor = GradMonitor.for_model(model)
    clipper = AutoClip(percentile=50.0, history=10)
    for value in (1.0, 2.0, 3.0):
        clipper.threshold(torch.tensor(value))
    stats = monitor.measure()
    total = float(stats.global_norm)
    result = clipper(list(model.parameters()), monitor.last_grads, stats)
    expected_threshold = float(np.percentile([1.0, 2.0, 3.0, total], 50))
    assert float(result.threshold) == pytest.approx(expected_threshold, rel=1e-6)
    assert float(result.coef) == pytest.approx(min(1, expected_threshold / (total + 1e-6)))


class _Stats:
    def __init__(self, norm: float) -> None:
        self.global_norm = torch.tensor(norm)


def test_zclip_ema_and_threshold():
    z = ZClip(alpha=0.9, z_threshold=2.0, warmup=4)
    warm = [1.0, 2.0, 3.0, 2.0]
    for value in warm:
        r = z([], [], _Stats(value))
        assert float(r.coef) == 1.0
    mean, var = np.mean(warm), np.var(warm)
    assert float(z.mean) == pytest.approx(mean)
    assert float(z.var) == pytest.approx(var)
    spike = 100.0
    r = z([], [], _Stats(spike))
    threshold = mean + 2.0 * math.sqrt(var)
    assert float(r.threshold) == pytest.approx(threshold, rel=1e-6)
    assert float(r.coef) == pytest.approx(threshold / (spike + 1e-6), rel=1e-6)
    # EMA updated with the clipped value, not the spike
    assert float(z.mean) == pytest.approx(0.9 * mean + 0.1 * threshold, rel=1e-6)
    assert float(z.var) == pytest.approx(0.9 * var + 0.1 * (threshold - mean) ** 2, rel=1e-6)


def test_make_clipper_selects_by_method():
    kinds = {"norm": NormClip, "value": ValueClip, "agc": AGC, "autoclip": AutoClip,
             "zclip": ZClip}
    for method, cls in kinds.items():
        assert isinstance(make_clipper(StabilityConfig(clip_method=method)), cls)


def test_standardize_gives_unit_layer_norms_without_second_pass():
    model = _model()
    ref = _model()
    monitor = GradMonitor.for_model(model)
    stats = monitor.measure()
    new = standardize_grads(monitor.last_grads, stats, monitor.last_index)
    measured = GradMonitor.for_model(model).measure()
    torch.testing.assert_close(new.layer_norms, measured.layer_norms, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(new.global_norm, measured.global_norm, rtol=1e-5, atol=1e-6)
    assert new.layer_norms.tolist() == pytest.approx([1.0, 1.0], rel=1e-5)
    # direction within each layer preserved
    for a, b in zip(model.parameters(), ref.parameters()):
        cos = torch.nn.functional.cosine_similarity(a.grad.flatten(), b.grad.flatten(), dim=0)
        assert float(cos) == pytest.approx(1.0, abs=1e-5)
