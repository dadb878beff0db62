"""A deep plain MLP (no normalisation, no residuals) regressing a fixed random teacher."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stability.workloads.base import (
    BuiltinWorkload,
    check_choice,
    check_positive_int,
    data_generator,
)

__all__ = ["DeepMLPWorkload", "Teacher", "deep_mlp"]

IN_FEATURES = 32
TEACHER_HIDDEN = 64
ACTIVATIONS = ("relu", "tanh", "gelu")
LOSSES = ("mse", "huber")
EVAL_SIZE = 4096
_TASK_SEED = 11  # the teacher and held-out set are the same for every workload seed


class Teacher:
    """``y = w2 · tanh(W1 x + b1)``, scaled so that y has unit variance over N(0, I) inputs.

    Predicting the mean therefore scores an MSE of about 1.0 on the held-out set.
    """

    def __init__(self, generator: torch.Generator) -> None:
        self.w1 = torch.randn(TEACHER_HIDDEN, IN_FEATURES, generator=generator) / IN_FEATURES**0.5
        self.b1 = 0.5 * torch.randn(TEACHER_HIDDEN, generator=generator)
        self.w2 = torch.randn(TEACHER_HIDDEN, generator=generator)
        probe = torch.randn(8192, IN_FEATURES, generator=generator)
        raw = self._raw(probe)
        self.mean = raw.mean()
        self.scale = raw.std()

    def _raw(self, x: Tensor) -> Tensor:
        return torch.tanh(x @ self.w1.T + self.b1) @ self.w2

    def __call__(self, x: Tensor) -> Tensor:
        return (self._raw(x) - self.mean) / self.scale


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}[name]()


class DeepMLPWorkload(BuiltinWorkload):
    """Regression of a fixed teacher by a ``depth``-layer MLP of width ``width``.

    ``depth`` counts the linear layers (input and output layers included), with ``activation``
    between them and no normalisation or skip connections, so the signal and the gradient
    pass through every layer: the classic setting for exploding (and vanishing) gradients.
    Inputs are N(0, I) in 32 dimensions; targets have unit variance (mean-prediction MSE 1.0).
    Training batches are fresh draws from the seed; the teacher and the ``EVAL_SIZE`` held-out
    inputs are the same for every seed. ``evaluate`` reports ``eval_loss`` (always the MSE).

    The layers keep PyTorch's default init (weight variance 1 / (3 fan_in)), under which the
    input's share of the signal shrinks about 6x per ReLU layer: at depth 16 plain SGD barely
    moves the loss (Adam trains it), so the init scheme is one of the knobs that matter here.
    Measured at the defaults (seeds 0-2, 300 steps): plain SGD explodes from lr 1.2 (loss
    > 1e6 within 5 to 22 steps, the gradient norm growing step after step before), and
    clipping the norm at 1.0 keeps every lr up to 5 finite.
    """

    name = "deep_mlp"

    def __init__(
        self,
        seed: int,
        device: str | torch.device,
        depth: int,
        width: int,
        activation: str,
        batch_size: int,
        loss: str,
    ) -> None:
        super().__init__(seed, device, {
            "depth": check_positive_int(self.name, "depth", depth, minimum=2),
            "width": check_positive_int(self.name, "width", width),
            "activation": check_choice(self.name, "activation", activation, ACTIVATIONS),
            "batch_size": check_positive_int(self.name, "batch_size", batch_size),
            "loss": check_choice(self.name, "loss", loss, LOSSES),
        })
        self.depth, self.width, self.activation = depth, width, activation
        self.batch_size, self.loss_name = batch_size, loss
        gen = torch.Generator(device="cpu").manual_seed(_TASK_SEED)
        self.teacher = Teacher(gen)
        x_eval = torch.randn(EVAL_SIZE, IN_FEATURES, generator=gen)
        self.eval_set = (x_eval.to(self.device), self.teacher(x_eval).to(self.device))

    def _build_model(self) -> nn.Module:
        layers: list[nn.Module] = [nn.Linear(IN_FEATURES, self.width)]
        for _ in range(self.depth - 2):
            layers += [_activation(self.activation), nn.Linear(self.width, self.width)]
        layers += [_activation(self.activation), nn.Linear(self.width, 1), nn.Flatten(0)]
        return nn.Sequential(*layers)

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        gen = data_generator(self.seed, "train")
        while True:
            x = torch.randn(self.batch_size, IN_FEATURES, generator=gen)
            yield x.to(self.device), self.teacher(x).to(self.device)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        pred = model(x)
        if self.loss_name == "huber":
            return F.huber_loss(pred, y)
        return F.mse_loss(pred, y)

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        x, y = self.eval_set
        return {"eval_loss": F.mse_loss(model(x), y).item()}


def deep_mlp(
    seed: int = 0,
    device: str | torch.device = "cpu",
    depth: int = 16,
    width: int = 64,
    activation: str = "relu",
    batch_size: int = 128,
    loss: str = "mse",
) -> DeepMLPWorkload:
    """Deep plain MLP (no normalisation) regressing a fixed random teacher network."""
    return DeepMLPWorkload(seed, device, depth, width, activation, batch_size, loss)
