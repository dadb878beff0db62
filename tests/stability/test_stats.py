from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stability.stats import GradMonitor, grad_norms, layer_of


def _model_with_grads() -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1, bias=False), nn.Linear(1, 1))
    # hand-set gradients
    model[0].weight.grad = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # norm 5, max 4
    model[0].bias.grad = torch.tensor([0.0, 12.0])                  # norm 12
    model[1].weight.grad = torch.tensor([[-6.0, 8.0]])               # norm 10, max 8
    model[2].weight.grad = None                                      # skipped
    model[2].bias.grad = None
    return model


def test_l2_norms_by_hand():
    model = _model_with_grads()
    monitor = GradMonitor.for_model(model)
    assert monitor.layer_names == ["00:Linear", "01:Linear", "02:Linear"]
    assert monitor.layer_paths == ["0", "1", "2"]
    stats = monitor.measure(2.0)
    assert stats.param_norms.tolist() == pytest.approx([5.0, 12.0, 10.0])
    # layer 0: sqrt(25 + 144) = 13 ; layer 1: 10 ; layer 2: no grads -> 0
    assert stats.layer_norms.tolist() == pytest.approx([13.0, 10.0, 0.0])
    assert float(stats.global_norm) == pytest.approx(math.sqrt(169 + 100))
    assert int(stats.nonfinite) == 0


def test_inf_norms_by_hand():
    stats = GradMonitor.for_model(_model_with_grads()).measure(math.inf)
    assert stats.layer_norms.tolist() == pytest.approx([12.0, 8.0, 0.0])
    assert float(stats.global_norm) == 12.0


def test_global_norm_matches_torch_clip_grad_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.Tanh(), nn.Linear(20, 3))
    model(torch.randn(8, 10)).pow(2).sum().backward()
    ours = GradMonitor.for_model(model).measure().global_norm
    ref = nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert float(ours) == pytest.approx(float(ref), rel=1e-6)


def test_nonfinite_counted_per_tensor():
    model = _model_with_grads()
    model[1].weight.grad[0, 0] = math.nan
    model[0].bias.grad[0] = math.inf
    stats = GradMonitor.for_model(model).measure()
    assert int(stats.nonfinite) == 2
    assert not math.isfinite(float(stats.global_norm))


def test_frozen_params_are_not_monitored_and_helper_dict():
    model = _model_with_grads()
    model[1].weight.requires_grad_(False)
    monitor = GradMonitor.for_model(model)
    assert monitor.layer_names == ["00:Linear", "02:Linear"]
    norms = grad_norms(_model_with_grads())
    assert float(norms["1"]) == pytest.approx(10.0)
    assert layer_of("encoder.layers.0.linear1.weight") == "encoder.layers.0.linear1"
    assert layer_of("scale") == "scale"


def test_layer_labels_pad_indices_add_types_and_sort_in_model_order():
    from stability.stats import layer_labels

    mlp = nn.Sequential(*[nn.Linear(2, 2) if i % 2 == 0 else nn.ReLU() for i in range(23)])
    labels = GradMonitor.for_model(mlp).layer_names
    assert labels[:3] == ["00:Linear", "02:Linear", "04:Linear"] and labels[-1] == "22:Linear"
    assert labels == sorted(labels)  # "10" after "08", not after "0" as text

    class Net(nn.Module):  # model order is not alphabetical: positions are prefixed
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(5, 4)
            self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(11)])
            self.head = nn.Linear(4, 5)
            self.scale = nn.Parameter(torch.ones(1))

    net = Net()
    paths = GradMonitor(net.named_parameters()).layer_names
    labels = layer_labels(net, paths)
    assert labels[0] == "00-scale"  # a parameter of the model itself keeps its name
    assert labels[1] == "01-tok:Embedding" and labels[2] == "02-blocks.00:Linear"
    assert labels[12] == "12-blocks.10:Linear" and labels[13] == "13-head:Linear"
    assert labels == sorted(labels)
