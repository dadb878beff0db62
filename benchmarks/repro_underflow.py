"""A workload whose gradients are small enough to underflow in fp16 (for repro_fp16.py).

Regression onto a fixed random "teacher" network whose outputs are scaled by ``target_scale``
(1e-3 by default): the residuals, and so every gradient, are about that small times the usual,
and once the student fits the large part of the signal its gradients fall under fp16's smallest
subnormal (2**-24 = 6e-8) and flush to zero; with a 2**16 loss scale they do not. A student
``depth`` tanh layers deep, ``width`` wide; batches of ``batch_size`` fresh Gaussian inputs.

``evaluate`` reports ``eval_loss`` (held-out MSE divided by the target variance, so 1.0 is
"predict the mean" whatever ``target_scale``) and ``zero_grad_frac``: the fraction of parameter
gradient entries that were exactly 0 after backward, over every training step so far (counted
by a post-accumulate-grad hook on each parameter: one extra comparison per gradient, on the
benchmark's side, not in the guard). In fp32 a tanh network's gradients are practically never
exactly 0, so the fraction measures underflow.

Used by a sweep as ``workload: {name: "benchmarks.repro_underflow:make"}`` (run from the
repository root, which stabsweep puts on ``sys.path``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

IN_DIM, OUT_DIM, TEACHER_WIDTH = 32, 16, 64
EVAL_SIZE = 2048


def _mlp(in_dim: int, width: int, depth: int, out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(depth):
        layers += [nn.Linear(dim, width), nn.Tanh()]
        dim = width
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


class UnderflowRegression:
    """Student MLP regressing a scaled teacher; see the module docstring."""

    name = "underflow_regression"

    def __init__(self, seed: int = 0, device: str | torch.device = "cpu", depth: int = 4,
                 width: int = 64, batch_size: int = 64, target_scale: float = 1e-3) -> None:
        for key, value in (("depth", depth), ("width", width), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"workload {self.name!r}: {key} must be an integer >= 1; "
                                 f"got {value!r}")
        if not isinstance(target_scale, int | float) or not target_scale > 0:
            raise ValueError(f"workload {self.name!r}: target_scale must be > 0; "
                             f"got {target_scale!r}")
        self.seed, self.device = seed, torch.device(device)
        self.depth, self.width, self.batch_size = depth, width, batch_size
        self.target_scale = float(target_scale)
        gen = torch.Generator().manual_seed(12345)  # one teacher and eval set for every seed
        self.teacher = _mlp(IN_DIM, TEACHER_WIDTH, 2, OUT_DIM)
        with torch.no_grad():
            for p in self.teacher.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) / max(1, p.shape[-1]) ** 0.5)
        self.teacher.requires_grad_(False).to(self.device)
        x = torch.randn(EVAL_SIZE, IN_DIM, generator=gen).to(self.device)
        self.eval_set = (x, self._target(x))
        self.target_var = float(self.eval_set[1].var())
        self._zeros = torch.zeros((), dtype=torch.float64, device=self.device)
        self._total = 0

    def _target(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.teacher(x) * self.target_scale

    def model(self) -> nn.Module:
        torch.manual_seed(self.seed)
        student = _mlp(IN_DIM, self.width, self.depth, OUT_DIM).to(self.device)
        with torch.no_grad():  # start at the target's scale, as a sensible init would
            head = student[-1]
            assert isinstance(head, nn.Linear)
            head.weight.mul_(self.target_scale)
            head.bias.mul_(self.target_scale)
        for p in student.parameters():
            p.register_post_accumulate_grad_hook(self._count)
        return student

    def _count(self, param: Tensor) -> None:
        grad = param.grad
        if grad is not None:
            self._zeros += (grad == 0).sum()
            self._total += grad.numel()

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(self.seed + 1)
        while True:
            x = torch.randn(self.batch_size, IN_DIM, generator=gen).to(self.device)
            yield x, self._target(x)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return nn.functional.mse_loss(model(x).float(), y)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        x, y = self.eval_set
        with torch.no_grad():
            mse = float(nn.functional.mse_loss(model(x).float(), y))
        frac = float(self._zeros) / self._total if self._total else 0.0
        return {"eval_loss": mse / self.target_var, "zero_grad_frac": frac}


def make(seed: int = 0, device: str = "cpu", **args: Any) -> UnderflowRegression:
    return UnderflowRegression(seed=seed, device=device, **args)
