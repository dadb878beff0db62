"""On-device gradient statistics: global and per-layer norms in one pass over the gradients.

``torch._foreach_norm`` measures every gradient tensor in one fused call; the per-layer and
global norms are reductions of those per-tensor norms, so the numbers that global clipping
needs and the numbers the monitor records are the same ones. Nothing here moves a value to
the host: results stay on the gradients' device until the caller flushes them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(slots=True)
class GradStats:
    """Gradient statistics of one step, as 0-d / 1-d tensors on the gradients' device."""

    global_norm: Tensor
    """0-d float32: norm of all gradients together (same value ``clip_grad_norm_`` returns)."""
    layer_norms: Tensor
    """[n_layers] float32: norm per module (parameters grouped by their owning module)."""
    param_norms: Tensor
    """[n_params_with_grad] float32: norm of each gradient tensor."""
    nonfinite: Tensor
    """0-d int64: number of gradient tensors that hold an inf or NaN."""
    norm_type: float = 2.0


_COMPILED = "_orig_mod"
"""The attribute ``torch.compile`` wraps a module under (``OptimizedModule._orig_mod``)."""


def strip_compiled(name: str) -> str:
    """A parameter or module path without ``torch.compile``'s wrapper parts:
    ``_orig_mod.blocks.0._orig_mod.attn.weight`` -> ``blocks.0.attn.weight``, so a model and
    its compiled form (whole, or compiled blocks inside it) have the same layer names."""
    if _COMPILED not in name:
        return name
    parts = [part for part in name.split(".") if part != _COMPILED]
    return ".".join(parts)


def layer_of(param_name: str) -> str:
    """Module that owns a parameter: ``encoder.0.weight`` -> ``encoder.0``."""
    head, _, _ = param_name.rpartition(".")
    return head or param_name


_DIGITS = re.compile(r"^[0-9]+$")


def layer_labels(model: nn.Module, paths: list[str]) -> list[str]:
    """Readable layer names, in model order: ``0`` -> ``00:Linear``, ``blocks.1.attn`` ->
    ``blocks.01.attn:MultiheadAttention``.

    Numeric path parts are zero-padded (``2`` sorts before ``10``), the module's type follows
    a colon. When the labels would not sort (as text, which is how the MLflow UI orders
    charts) in model order, each gets its position as a prefix: ``03-head:Linear``. A
    parameter owned by the model itself keeps its name.
    """
    modules = {strip_compiled(name): module for name, module in model.named_modules()}
    width = max([2] + [len(part) for path in paths for part in path.split(".")
                       if _DIGITS.match(part)])
    labels = []
    for path in paths:
        padded = ".".join(part.zfill(width) if _DIGITS.match(part) else part
                          for part in path.split("."))
        module = modules.get(path)
        labels.append(f"{padded}:{type(module).__name__}" if module is not None and path
                      else padded)
    ordered = labels == sorted(labels) and labels == sorted(labels, key=str.lower)
    if not ordered or len(set(labels)) != len(labels):
        digits = max(2, len(str(len(labels) - 1)))
        labels = [f"{i:0{digits}d}-{label}" for i, label in enumerate(labels)]
    return labels


class GradMonitor:
    """Measures the gradients of a model's parameters, grouped per module.

    Layers are listed in the order their first parameter appears in ``named_parameters()``,
    which for most models is input to output. Parameters whose ``.grad`` is ``None`` (frozen,
    unused this step) are skipped.
    """

    def __init__(self, named_parameters: Iterable[tuple[str, nn.Parameter]]) -> None:
        self.param_names: list[str] = []
        self.params: list[nn.Parameter] = []
        self.layer_names: list[str] = []
        self.layer_paths: list[str] = self.layer_names
        """module path of each layer (``layer_names`` may be readable labels of them)."""
        layer_pos: dict[str, int] = {}
        self._layer_of_param: list[int] = []
        for name, param in named_parameters:
            if not param.requires_grad:
                continue
            name = strip_compiled(name)
            layer = layer_of(name)
            if layer not in layer_pos:
                layer_pos[layer] = len(self.layer_names)
                self.layer_names.append(layer)
            self.param_names.append(name)
            self.params.append(param)
            self._layer_of_param.append(layer_pos[layer])
        if not self.params:
            raise ValueError("model has no trainable parameters to monitor.")
        self._index_cache: dict[tuple[int, ...], Tensor] = {}
        self._all = list(range(len(self.params)))
        self.last_grads: list[Tensor] = []
        self.last_index: Tensor | None = None

    @classmethod
    def for_model(cls, model: nn.Module) -> GradMonitor:
        """A monitor whose layers have readable names (:func:`layer_labels`)."""
        monitor = cls(model.named_parameters())
        monitor.layer_paths = list(monitor.layer_names)
        monitor.layer_names = layer_labels(model, monitor.layer_paths)
        return monitor

    @property
    def layer_of_param(self) -> list[int]:
        """The layer (position in ``layer_names``) of each monitored parameter."""
        return list(self._layer_of_param)

    @property
    def n_layers(self) -> int:
        return len(self.layer_names)

    def grads(self) -> tuple[list[Tensor], list[int]]:
        """Gradient tensors present now, and the positions of their parameters."""
        grads = [p.grad for p in self.params]
        if all(g is not None for g in grads):  # the common case: one list, no filtering
            return grads, self._all  # type: ignore[return-value]
        present = [i for i, g in enumerate(grads) if g is not None]
        return [g for g in grads if g is not None], present

    def _layer_index(self, present: list[int], device: torch.device) -> Tensor:
        key = () if present is self._all else tuple(present)
        index = self._index_cache.get(key)
        if index is None or index.device != device:
            index = torch.tensor([self._layer_of_param[i] for i in present], device=device)
            self._index_cache[key] = index
        return index

    def measure(self, norm_type: float = 2.0) -> GradStats:
        """One pass over the gradients: per-tensor, per-layer, global norms, non-finite count."""
        grads, present = self.grads()
        device = self.params[0].device
        if not grads:
            zero = torch.zeros((), device=device)
            return GradStats(zero, torch.zeros(self.n_layers, device=device),
                             torch.zeros(0, device=device),
                             torch.zeros((), dtype=torch.int64, device=device), norm_type)
        device = grads[0].device
        param_norms = torch.stack(torch._foreach_norm(grads, norm_type)).float()
        index = self._layer_index(present, device)
        self.last_grads, self.last_index = grads, index
        layer_norms, global_norm = reduce_norms(param_norms, index, self.n_layers, norm_type)
        nonfinite = (~torch.isfinite(param_norms)).sum()
        return GradStats(global_norm, layer_norms, param_norms, nonfinite, norm_type)


def reduce_norms(param_norms: Tensor, index: Tensor, n_groups: int, norm_type: float
                 ) -> tuple[Tensor, Tensor]:
    """Combine per-tensor p-norms into per-group and global p-norms, on device."""
    if math.isinf(norm_type):
        groups = torch.zeros(n_groups, device=param_norms.device).scatter_reduce(
            0, index, param_norms, reduce="amax", include_self=True)
        return groups, param_norms.max()
    powered = param_norms.pow(norm_type)
    groups = torch.zeros(n_groups, device=param_norms.device).index_add_(0, index, powered)
    return groups.pow(1.0 / norm_type), powered.sum().pow(1.0 / norm_type)


def grad_norms(module: nn.Module, norm_type: float = 2.0) -> dict[str, Tensor]:
    """Convenience: ``{"global": ..., "<layer>": ...}`` for a module's current gradients."""
    monitor = GradMonitor.for_model(module)
    stats = monitor.measure(norm_type)
    out = {"global": stats.global_norm}
    out.update(zip(monitor.layer_paths, stats.layer_norms.unbind(0), strict=True))
    return out
