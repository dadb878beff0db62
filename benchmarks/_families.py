"""Model families for the detection corpus that are *not* built-in workloads.

Each is chosen to break a detector tuned on the built-ins:

- ``scaled_mlp``: regression with ``reduction="sum"`` and a static loss multiplier from 2^-8
  to 2^14, so gradient norms sit orders of magnitude away from 1 (an absolute ceiling trips
  at step 0, an absolute floor never);
- ``teacher``: a student learning a noiseless teacher: the loss falls to ~1e-5, where one
  noisy batch is a 100x bump that passes (loss-relative rules see a "divergence");
- ``faulty_mlp``: a classifier whose data stream has 0-3 corrupt batches (inputs x10-100 or
  shuffled labels) at seeded steps: one-step spikes that recover;
- ``gated_rnn``: a GRU or LSTM summing a marked channel over a sequence (gated recurrence:
  saturating gates, norms that jump when a gate opens);
- ``attn_stack``: a pre- or post-LN self-attention stack reversing a token sequence
  (attention-logit growth, post-LN's early instability).

Mixed precision (bf16, fp16 with loss scaling) is drawn across all of them by the corpus.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from stability.workloads.base import BuiltinWorkload, data_generator

FAMILIES = ("scaled_mlp", "teacher", "faulty_mlp", "gated_rnn", "attn_stack")


def _mlp(dims: list[int], act: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class _Family(BuiltinWorkload):
    """A fixed eval batch, ``eval_loss`` = the task's mean loss on it."""

    def __init__(self, seed: int, device: str | torch.device, args: dict[str, Any]) -> None:
        super().__init__(seed, device, args)
        self._eval = [t.to(self.device) for t in self._draw(data_generator(seed, "eval"), 256)]

    def _draw(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _task_loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        raise NotImplementedError

    def batches(self) -> Iterator[Any]:
        gen = data_generator(self.seed, "train")
        step = 0
        while True:
            batch = self._draw(gen, self.args.get("batch_size", 32))
            yield tuple(t.to(self.device) for t in self._corrupt(step, batch, gen))
            step += 1

    def _corrupt(self, step: int, batch: tuple[torch.Tensor, ...], gen: torch.Generator
                 ) -> tuple[torch.Tensor, ...]:
        return batch

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self._task_loss(model, batch)

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"eval_loss": float(self._task_loss(model, tuple(self._eval)))}


class ScaledRegression(_Family):
    name = "scaled_mlp"

    def __init__(self, seed: int = 0, device: str | torch.device = "cpu", *,
                 scale: float = 1.0, depth: int = 4, width: int = 64, batch_size: int = 64
                 ) -> None:
        self._teacher = _mlp([16, 32, 1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 77)
            for p in self._teacher.parameters():
                nn.init.normal_(p, std=0.5)
        super().__init__(seed, device, dict(scale=scale, depth=depth, width=width,
                                            batch_size=batch_size))

    def _build_model(self) -> nn.Module:
        return _mlp([16] + [self.args["width"]] * (self.args["depth"] - 1) + [1], nn.ReLU)

    def _draw(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, ...]:
        x = torch.randn(n, 16, generator=gen)
        with torch.no_grad():
            y = self._teacher(x) + 0.1 * torch.randn(n, 1, generator=gen)
        return x, y

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch  # sum over the batch, times a static scale: norms far from 1
        return self.args["scale"] * F.mse_loss(model(x).float(), y, reduction="sum")

    def _task_loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(model(x).float(), y)


class Teacher(_Family):
    name = "teacher"

    def __init__(self, seed: int = 0, device: str | torch.device = "cpu", *,
                 width: int = 32, bumps: int = 2, batch_size: int = 32, steps: int = 250
                 ) -> None:
        self._teacher = nn.Linear(8, 4)  # a linear teacher: the loss can reach ~1e-5
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 91)
            for p in self._teacher.parameters():
                nn.init.normal_(p, std=0.4)
        gen = data_generator(seed, "task")
        # bumps land in the second half, once the loss is near zero
        self._bumps = set((steps // 2 + torch.randperm(steps // 2, generator=gen)[:bumps])
                          .tolist())
        super().__init__(seed, device, dict(width=width, bumps=bumps,
                                            batch_size=batch_size, steps=steps))

    def _build_model(self) -> nn.Module:
        w = self.args["width"]
        return _mlp([8, w, w, 4])

    def _draw(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, ...]:
        x = torch.randn(n, 8, generator=gen)
        with torch.no_grad():
            y = self._teacher(x)
        return x, y

    def _corrupt(self, step: int, batch: tuple[torch.Tensor, ...], gen: torch.Generator
                 ) -> tuple[torch.Tensor, ...]:
        if step not in self._bumps:
            return batch
        x, y = batch
        return x, y + 0.05 * torch.randn(y.shape, generator=gen)  # one noisy batch

    def _task_loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(model(x).float(), y)


class FaultyClassifier(_Family):
    name = "faulty_mlp"

    def __init__(self, seed: int = 0, device: str | torch.device = "cpu", *,
                 faults: int = 2, fault_scale: float = 30.0, depth: int = 4, width: int = 64,
                 batch_size: int = 64, steps: int = 250) -> None:
        gen = data_generator(seed, "task")
        self._centers = torch.randn(10, 20, generator=gen) * 1.5
        self._faults = {int(s): int(k) for s, k in zip(
            torch.randperm(steps - 20, generator=gen)[:faults] + 10,
            torch.randint(0, 2, (faults,), generator=gen), strict=True)}
        super().__init__(seed, device, dict(faults=faults, fault_scale=fault_scale,
                                            depth=depth, width=width, batch_size=batch_size,
                                            steps=steps))

    def _build_model(self) -> nn.Module:
        return _mlp([20] + [self.args["width"]] * (self.args["depth"] - 1) + [10], nn.ReLU)

    def _draw(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, ...]:
        y = torch.randint(0, 10, (n,), generator=gen)
        return self._centers[y] + torch.randn(n, 20, generator=gen), y

    def _corrupt(self, step: int, batch: tuple[torch.Tensor, ...], gen: torch.Generator
                 ) -> tuple[torch.Tensor, ...]:
        kind = self._faults.get(step)
        if kind is None:
            return batch
        x, y = batch
        if kind == 0:  # a corrupt batch: inputs off by a large factor
            return x * self.args["fault_scale"], y
        return x, y[torch.randperm(len(y), generator=gen)]  # shuffled labels

    def _task_loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x).float(), y)


class _Recurrent(nn.Module):
    def __init__(self, cell: str, hidden: int) -> None:
        super().__init__()
        cls = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = cls(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class GatedRNN(_Family):
    name = "gated_rnn"

    def __init__(self, seed: int = 0, device: str | torch.device = "cpu", *,
                 cell: str = "gru", seq_len: int = 30, hidden: int = 32, batch_size: int = 32
                 ) -> None:
        super().__init__(seed, device, dict(cell=cell, seq_len=seq_len, hidden=hidden,
                                            batch_size=batch_size))

    def _build_model(self) -> nn.Module:
        return _Recurrent(self.args["cell"], self.args["hidden"])

    def _draw(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, ...]:
        t = self.args["seq_len"]
        values = torch.rand(n, t, generator=gen)
        marks = (torch.rand(n, t, generator=gen) < 0.2).float()
        target = (values * marks).sum(1, keepdim=True)
        return torch.stack((values, marks), -1), target

    def _task_loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(model(x).float(), y)


class _Attention(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, norm_first: bool, seq: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(seq, d) * 0.1)
        layer = nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=0.0, batch_first=True,
                                           norm_first=norm_first)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.embed(tokens) + self.pos))


class AttentionStack(_Family):
    name = "attn_stack"

    def __init__(self, seed: int = 0, device: str | torch.device = "cpu", *,
                 norm: str = "post", n_layers: int = 2, d_model: int = 32, seq_len: int = 12,
                 vocab: int = 16, batch_size: int = 32) -> None:
        super().__init__(seed, device, dict(norm=norm, n_layers=n_layers, d_model=d_model,
                                            seq_len=seq_len, vocab=vocab,
                                            batch_size=batch_size))

    def _build_model(self) -> nn.Module:
        a = self.args
        return _Attention(a["vocab"], a["d_model"], a["n_layers"], a["norm"] == "pre",
                          a["seq_len"])

    def _draw(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, ...]:
        tokens = torch.randint(0, self.args["vocab"], (n, self.args["seq_len"]), generator=gen)
        return tokens, tokens.flip(1)

    def _task_loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        logits = model(x).float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


FACTORIES = {cls.name: cls for cls in (ScaledRegression, Teacher, FaultyClassifier, GatedRNN,
                                       AttentionStack)}


def build(family: str, seed: int, **args: Any) -> BuiltinWorkload:
    return FACTORIES[family](seed, "cpu", **args)
