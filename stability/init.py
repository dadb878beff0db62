"""Named weight-initialisation schemes, applied to any ``nn.Module``.

``apply_init(model, "kaiming_normal")`` re-initialises the weight matrices and kernels of every
``Linear``, ``Conv*`` / ``ConvTranspose*``, ``RNN`` / ``LSTM`` / ``GRU`` (``weight_ih`` /
``weight_hh``), ``Embedding`` and ``MultiheadAttention`` (packed input projection) in the model,
and zeroes their biases. Normalisation layers (``LayerNorm``, ``BatchNorm``, ...) and parameters
of other modules are left as they are. ``default`` changes nothing (PyTorch's own init).

``residual_zero`` is the SkipInit / Fixup idea (De & Smith 2020; Zhang et al. 2019; Goyal et al.
2017 for the zero BatchNorm gamma): the last layer of every residual branch starts at zero, so
each block starts as the identity and the depth of the network does not multiply the variance
of the signal or of the gradient at initialisation. Mark those layers with
:func:`mark_residual_branch_end` when building the model; every other weight keeps the init it
has (PyTorch's default), and every bias of the layers above is zeroed.

Randomness comes from ``generator`` when given, else from the global RNG, so a scheme is
deterministic under ``torch.manual_seed``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from stability.config import INIT_SCHEMES

__all__ = [
    "INIT_SCHEMES",
    "apply_init",
    "init_targets",
    "mark_residual_branch_end",
    "residual_branch_ends",
]

RESIDUAL_END_ATTR = "_stabsweep_residual_end"

# Module types whose weights a scheme re-initialises. Subclasses count too (the attention
# output projection is a ``NonDynamicallyQuantizableLinear``, a ``Linear``).
_TARGET_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.modules.conv._ConvNd,
    nn.RNNBase,
    nn.Embedding,
    nn.MultiheadAttention,
)
_EXTRA_WEIGHT_NAMES = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def mark_residual_branch_end(module: nn.Module) -> nn.Module:
    """Mark ``module`` as the last layer of a residual branch and return it.

    Use it inline when building a model: ``self.proj = mark_residual_branch_end(nn.Linear(...))``.
    The ``residual_zero`` scheme zeroes the ``weight`` (and ``bias``) of marked modules; a
    marked BatchNorm / LayerNorm gets a zero gain, the zero-gamma trick of Goyal et al. 2017.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"mark_residual_branch_end expects an nn.Module; got {type(module).__name__}."
        )
    setattr(module, RESIDUAL_END_ATTR, True)
    return module


def residual_branch_ends(model: nn.Module) -> list[str]:
    """Qualified names of the modules in ``model`` marked by :func:`mark_residual_branch_end`."""
    return [
        name for name, module in model.named_modules()
        if getattr(module, RESIDUAL_END_ATTR, False)
    ]


def init_targets(model: nn.Module) -> list[str]:
    """Qualified names of the parameters that a non-default scheme re-initialises or zeroes."""
    names = []
    for mod_name, module in model.named_modules():
        if not isinstance(module, _TARGET_TYPES):
            continue
        for p_name, _ in module.named_parameters(recurse=False):
            if _is_weight(p_name) or _is_bias(p_name):
                names.append(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def apply_init(
    model: nn.Module,
    scheme: str,
    *,
    std: float = 0.02,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Re-initialise ``model`` in place with the named scheme and return it.

    Schemes (``stability.config.INIT_SCHEMES``): ``default`` (no change), ``xavier_uniform`` and
    ``xavier_normal`` (``gain``), ``kaiming_uniform`` and ``kaiming_normal`` (fan_in, ReLU gain
    sqrt(2)), ``orthogonal`` (``gain``; semi-orthogonal for non-square matrices, kernels are
    flattened to ``[out, in * k...]``), ``normal`` (N(0, ``std``)), ``residual_zero`` (zero the
    last layer of each marked residual branch, see the module docstring).
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(
            f"init must be one of {', '.join(INIT_SCHEMES)}; got {scheme!r}."
        )
    if not std > 0:
        raise ValueError(f"init std must be > 0; got {std!r}.")
    if not gain > 0:
        raise ValueError(f"init gain must be > 0; got {gain!r}.")
    if scheme == "default":
        return model
    if scheme == "residual_zero":
        return _residual_zero(model)

    fill = _weight_fill(scheme, std=std, gain=gain)
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, _TARGET_TYPES):
                continue
            for p_name, param in module.named_parameters(recurse=False):
                if _is_weight(p_name):
                    _fill_with(param, fill, generator)
                elif _is_bias(p_name):
                    param.zero_()
            _restore_padding_row(module)
    return model


def _residual_zero(model: nn.Module) -> nn.Module:
    ends = residual_branch_ends(model)
    if not ends:
        raise ValueError(
            "init 'residual_zero' needs the last layer of each residual branch marked, and "
            f"{type(model).__name__} has none marked; wrap those layers with "
            "stability.init.mark_residual_branch_end(...) when building the model, or choose "
            "another init scheme."
        )
    modules = dict(model.named_modules())
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _TARGET_TYPES):
                for p_name, param in module.named_parameters(recurse=False):
                    if _is_bias(p_name):
                        param.zero_()
        for name in ends:
            module = modules[name]
            weight = getattr(module, "weight", None)
            if not isinstance(weight, Tensor):
                raise ValueError(
                    f"module {name!r} ({type(module).__name__}) is marked as a residual branch "
                    "end but has no 'weight' tensor to zero; mark the last layer of the branch "
                    "(e.g. its nn.Linear or nn.Conv2d), not the container."
                )
            weight.zero_()
            bias = getattr(module, "bias", None)
            if isinstance(bias, Tensor):
                bias.zero_()
    return model


_Fill = Callable[[Tensor, "torch.Generator | None"], Tensor]


def _weight_fill(scheme: str, *, std: float, gain: float) -> _Fill:
    init = nn.init
    fills: dict[str, _Fill] = {
        "xavier_uniform": lambda t, g: init.xavier_uniform_(t, gain=gain, generator=g),
        "xavier_normal": lambda t, g: init.xavier_normal_(t, gain=gain, generator=g),
        "kaiming_uniform": lambda t, g: init.kaiming_uniform_(
            t, mode="fan_in", nonlinearity="relu", generator=g
        ),
        "kaiming_normal": lambda t, g: init.kaiming_normal_(
            t, mode="fan_in", nonlinearity="relu", generator=g
        ),
        "orthogonal": lambda t, g: init.orthogonal_(t, gain=gain, generator=g),
        "normal": lambda t, g: init.normal_(t, mean=0.0, std=std, generator=g),
    }
    return fills[scheme]


def _fill_with(param: Tensor, fill: _Fill, generator: torch.Generator | None) -> None:
    if param.dim() < 2:
        # No fan-in / fan-out to scale by; no module type this file targets has one.
        return
    if generator is not None and generator.device != param.device:
        # Draw on the generator's device, then copy: the same numbers on every device.
        tmp = torch.empty(param.shape, dtype=param.dtype, device=generator.device)
        fill(tmp, generator)
        param.copy_(tmp)
    else:
        fill(param, generator)


def _restore_padding_row(module: nn.Module) -> None:
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        module.weight[module.padding_idx].zero_()


def _is_weight(p_name: str) -> bool:
    return p_name == "weight" or p_name.startswith("weight_") or p_name in _EXTRA_WEIGHT_NAMES


def _is_bias(p_name: str) -> bool:
    return p_name == "bias" or p_name.startswith("bias_") or p_name.endswith("_bias")
