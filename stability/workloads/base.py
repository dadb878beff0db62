"""The Workload protocol and the small base class the built-in workloads share.

A workload is what a trial trains: a model, an infinite stream of batches, a loss and a fixed
held-out evaluation, all deterministic given a seed. It is built by a factory
``factory(seed: int = 0, device: str | torch.device = "cpu", **kwargs) -> Workload``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = [
    "PROTOCOL_METHODS",
    "BuiltinWorkload",
    "Workload",
    "WorkloadError",
    "WorkloadFactory",
    "check_choice",
    "check_positive_int",
    "data_generator",
]

PROTOCOL_METHODS = ("model", "batches", "loss", "evaluate")


class WorkloadError(ValueError):
    """A workload cannot be found, built or used. The message names it and says why."""


@runtime_checkable
class Workload(Protocol):
    """What the trainer needs from a workload.

    - ``model()``: a fresh model, deterministic given the workload's seed, on its device.
    - ``batches()``: an infinite, deterministic stream of training batches on the device; every
      call starts the same stream from its beginning.
    - ``loss(model, batch)``: the scalar training loss.
    - ``evaluate(model)``: metrics on fixed held-out data; contains ``"eval_loss"``. Runs under
      ``torch.no_grad()`` with the model in eval mode, and restores the model's modes after.
    """

    name: str

    def model(self) -> nn.Module: ...

    def batches(self) -> Iterator[Any]: ...

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...


WorkloadFactory = Callable[..., Workload]

# Offsets that give each random stream of a workload its own seed: the model's weights, the
# training batches and (where it depends on the seed) the held-out data never share a stream.
_STREAM_OFFSETS = {"model": 0, "train": 1_000_003, "eval": 2_000_029, "task": 3_000_017}


def data_generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator for one named stream (``model``, ``train``, ``eval``, ``task``).

    Data is drawn on the CPU and moved to the device, so a seed gives the same numbers on
    every device.
    """
    return torch.Generator(device="cpu").manual_seed(seed + _STREAM_OFFSETS[stream])


def check_positive_int(workload: str, name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WorkloadError(
            f"workload {workload!r}: {name} must be an integer >= {minimum}; got {value!r}."
        )
    if value < minimum:
        raise WorkloadError(f"workload {workload!r}: {name} must be >= {minimum}; got {value!r}.")
    return value


def check_choice(workload: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise WorkloadError(
            f"workload {workload!r}: {name} must be one of {', '.join(choices)}; got {value!r}."
        )
    return str(value)


class BuiltinWorkload:
    """Shared plumbing: seed, device, argument record, deterministic model, eval wrapper.

    Subclasses set ``name``, implement ``_build_model()`` (called under a fixed seed on the
    CPU), ``batches()``, ``loss()`` and ``_evaluate()`` (called under ``torch.no_grad`` with the
    model in eval mode).
    """

    name: str = "builtin"

    def __init__(self, seed: int, device: str | torch.device, args: dict[str, Any]) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise WorkloadError(
                f"workload {self.name!r}: seed must be an integer; got {seed!r}."
            )
        if seed < 0:
            raise WorkloadError(f"workload {self.name!r}: seed must be >= 0; got {seed!r}.")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise WorkloadError(
                f"workload {self.name!r}: device {device!r} is not a torch device ({exc}); "
                "use e.g. 'cpu' or 'cuda:0'."
            ) from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise WorkloadError(
                f"workload {self.name!r}: device {device!r} is not available on this machine "
                "(torch.cuda.is_available() is False); use device 'cpu'."
            )
        self.seed = seed
        self.args: dict[str, Any] = dict(args)
        """The workload's own arguments (not seed or device), as given to its factory."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        return f"{type(self).__name__}(seed={self.seed}, device='{self.device}', {args})"

    # ---------------------------------------------------------------- model
    def model(self) -> nn.Module:
        """A fresh model with the same initial weights for the same seed, on every device."""
        # Build on the CPU under a private seed; only the CPU generator is seeded (and then
        # restored), so the caller's CPU and CUDA random streams are left as they were.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.seed + _STREAM_OFFSETS["model"])
            model = self._build_model()
        return model.to(self.device)

    def _build_model(self) -> nn.Module:
        raise NotImplementedError

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                return self._evaluate(model)
        finally:
            for module, training in modes:
                module.training = training

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        raise NotImplementedError
