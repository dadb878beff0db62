from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stability.config import INIT_SCHEMES
from stability.init import (
    apply_init,
    init_targets,
    mark_residual_branch_end,
    residual_branch_ends,
)


class ResidualNet(nn.Module):
    """Two residual blocks; the second linear of each branch is marked."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(8, width)
        self.blocks = nn.ModuleList()
        for _ in range(2):
            self.blocks.append(nn.Sequential(
                nn.LayerNorm(width),
                nn.Linear(width, width),
                nn.ReLU(),
                mark_residual_branch_end(nn.Linear(width, width)),
            ))
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def test_normal_std_matches_request() -> None:
    torch.manual_seed(0)
    layer = apply_init(nn.Linear(512, 512), "normal", std=0.05)
    assert layer.weight.std().item() == pytest.approx(0.05, rel=0.02)
    assert layer.weight.mean().item() == pytest.approx(0.0, abs=0.05 * 0.02)


def test_kaiming_normal_std_is_sqrt_two_over_fan_in() -> None:
    torch.manual_seed(0)
    layer = apply_init(nn.Linear(256, 1024), "kaiming_normal")
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.02)
    conv = apply_init(nn.Conv2d(16, 256, 3), "kaiming_normal")
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (16 * 9)), rel=0.03)


def test_kaiming_uniform_bound() -> None:
    torch.manual_seed(0)
    layer = apply_init(nn.Linear(100, 400), "kaiming_uniform")
    bound = math.sqrt(6 / 100)  # gain sqrt(2) * sqrt(3 / fan_in)
    w = layer.weight
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.98 * bound  # fills the interval
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)


def test_xavier_uniform_bounds_and_gain() -> None:
    torch.manual_seed(0)
    for gain in (1.0, 2.0):
        layer = apply_init(nn.Linear(300, 100), "xavier_uniform", gain=gain)
        bound = gain * math.sqrt(6 / (300 + 100))
        assert layer.weight.abs().max().item() <= bound
        assert layer.weight.abs().max().item() > 0.98 * bound
    normal = apply_init(nn.Linear(300, 500), "xavier_normal", gain=1.5)
    assert normal.weight.std().item() == pytest.approx(1.5 * math.sqrt(2 / 800), rel=0.03)


@pytest.mark.parametrize("gain", [1.0, 0.5])
def test_orthogonal_rows_are_orthonormal(gain: float) -> None:
    torch.manual_seed(0)
    layer = apply_init(nn.Linear(96, 64), "orthogonal", gain=gain)  # 64 rows, 96 columns
    w = layer.weight.double()
    eye = torch.eye(64, dtype=torch.float64)
    assert torch.allclose(w @ w.T, gain**2 * eye, atol=1e-5)


def test_non_default_schemes_zero_biases_and_leave_norm_layers() -> None:
    for scheme in [s for s in INIT_SCHEMES if s != "default"]:
        torch.manual_seed(0)
        model = ResidualNet()
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.fill_(3.0)
                    m.bias.fill_(0.5)
        apply_init(model, scheme)
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                assert torch.count_nonzero(module.bias).item() == 0, (scheme, name)
            if isinstance(module, nn.LayerNorm):
                assert torch.all(module.weight == 3.0), (scheme, name)
                assert torch.all(module.bias == 0.5), (scheme, name)


def test_default_changes_nothing() -> None:
    torch.manual_seed(0)
    model = ResidualNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_init(model, "default")
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_residual_zero_zeroes_exactly_the_marked_modules() -> None:
    torch.manual_seed(0)
    model = ResidualNet()
    assert residual_branch_ends(model) == ["blocks.0.3", "blocks.1.3"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_init(model, "residual_zero")
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if name in ("blocks.0.3", "blocks.1.3"):
            assert torch.count_nonzero(module.weight).item() == 0, name
        else:
            # Other weights keep their init (non-zero, unchanged); only their bias is zeroed.
            assert torch.count_nonzero(module.weight).item() == module.weight.numel(), name
            assert torch.equal(module.weight, before[f"{name}.weight"]), name
        assert torch.count_nonzero(module.bias).item() == 0, name
    # Each block now starts as the identity: the output equals the skip path alone.
    x = torch.randn(4, 8)
    h = model.inp(x)
    assert torch.allclose(model(x), model.out(h))


def test_residual_zero_without_marks_says_how_to_mark() -> None:
    with pytest.raises(ValueError, match="mark_residual_branch_end"):
        apply_init(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), "residual_zero")


def test_residual_zero_on_marked_container_names_it() -> None:
    model = nn.Sequential(mark_residual_branch_end(nn.Sequential(nn.Linear(4, 4))))
    with pytest.raises(ValueError, match=r"module '0' \(Sequential\).*no 'weight'"):
        apply_init(model, "residual_zero")


def test_residual_zero_zero_gamma_on_marked_batchnorm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), mark_residual_branch_end(nn.BatchNorm2d(8)))
    apply_init(model, "residual_zero")
    assert torch.count_nonzero(model[1].weight).item() == 0
    assert torch.count_nonzero(model[0].weight).item() == model[0].weight.numel()


def test_unknown_scheme_names_init_and_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        apply_init(nn.Linear(2, 2), "he_normal")
    message = str(info.value)
    assert message.startswith("init must be one of")
    assert "'he_normal'" in message
    for scheme in INIT_SCHEMES:
        assert scheme in message


def test_bad_std_and_gain_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"std must be > 0; got -1\.0"):
        apply_init(nn.Linear(2, 2), "normal", std=-1.0)
    with pytest.raises(ValueError, match=r"gain must be > 0; got 0\.0"):
        apply_init(nn.Linear(2, 2), "orthogonal", gain=0.0)


def test_recurrent_embedding_and_attention_weights_are_covered() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict({
        "rnn": nn.LSTM(16, 256, batch_first=True),
        "emb": nn.Embedding(1000, 64, padding_idx=0),
        "attn": nn.MultiheadAttention(64, 4),
    })
    apply_init(model, "normal", std=0.1)
    lstm = model["rnn"]
    for name in ("weight_ih_l0", "weight_hh_l0"):
        assert getattr(lstm, name).std().item() == pytest.approx(0.1, rel=0.03), name
    for name in ("bias_ih_l0", "bias_hh_l0"):
        assert torch.count_nonzero(getattr(lstm, name)).item() == 0, name
    emb = model["emb"].weight
    assert emb[1:].std().item() == pytest.approx(0.1, rel=0.03)
    assert torch.count_nonzero(emb[0]).item() == 0  # the padding row stays zero
    attn = model["attn"]
    assert attn.in_proj_weight.std().item() == pytest.approx(0.1, rel=0.05)
    assert torch.count_nonzero(attn.in_proj_bias).item() == 0
    assert attn.out_proj.weight.std().item() == pytest.approx(0.1, rel=0.1)
    targets = init_targets(model)
    assert "rnn.weight_hh_l0" in targets and "attn.in_proj_weight" in targets
    assert "attn.out_proj.weight" in targets


def test_deterministic_under_manual_seed_and_generator() -> None:
    def build(seed: int) -> torch.Tensor:
        torch.manual_seed(123)  # the model's own construction is identical
        layer = nn.Linear(32, 32)
        torch.manual_seed(seed)
        return apply_init(layer, "xavier_normal").weight.detach().clone()

    assert torch.equal(build(0), build(0))
    assert not torch.equal(build(0), build(1))
    a = apply_init(nn.Linear(32, 32), "orthogonal", generator=torch.Generator().manual_seed(5))
    b = apply_init(nn.Linear(32, 32), "orthogonal", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.weight, b.weight)
