"""The adding problem on a vanilla tanh RNN (Hochreiter & Schmidhuber 1997; Le et al. 2015)."""

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

__all__ = ["CHANCE_MSE", "AddingRNN", "RNNAddingWorkload", "make_adding_batch", "rnn_adding"]

CHANCE_MSE = 1.0 / 6.0
"""MSE of always predicting the mean (1.0) when the target is the sum of two U[0, 1] values:
Var(U1 + U2) = 2 / 12 = 0.167 (Le et al. 2015). Pascanu et al.'s mean target gives 0.042."""

LOSSES = ("mse", "huber")
EVAL_SIZE = 4096
_EVAL_SEED = 7  # the held-out set is the same for every workload seed


def make_adding_batch(
    batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """One batch of the adding problem, drawn on the CPU from ``generator``.

    Inputs ``[batch, seq_len, 2]``: channel 0 holds U[0, 1] values, channel 1 marks two steps
    with 1.0, one uniformly in the first half of the sequence and one in the second half.
    Target ``[batch]``: the sum of the two marked values.
    """
    values = torch.rand(batch_size, seq_len, generator=generator)
    half = seq_len // 2
    first = torch.randint(0, half, (batch_size,), generator=generator)
    second = torch.randint(half, seq_len, (batch_size,), generator=generator)
    markers = torch.zeros(batch_size, seq_len)
    rows = torch.arange(batch_size)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    target = values[rows, first] + values[rows, second]
    return torch.stack([values, markers], dim=-1), target


class AddingRNN(nn.Module):
    """``nn.RNN`` (tanh) over the sequence, a linear read-out of the last hidden state."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.RNN(2, hidden, nonlinearity="tanh", batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


class RNNAddingWorkload(BuiltinWorkload):
    """Adding problem, sum-of-two-U[0,1] variant; chance MSE 0.167 (Le et al. 2015).

    Training batches are fresh draws (an infinite stream from the seed); the held-out set is
    ``EVAL_SIZE`` fixed sequences, the same for every seed so eval losses compare across seeds.
    ``evaluate`` reports ``eval_loss`` (always the MSE, whatever the training loss) and
    ``chance_ratio`` = MSE / 0.167 (below 1 means the RNN learned more than the mean).
    """

    name = "rnn_adding"

    def __init__(
        self,
        seed: int,
        device: str | torch.device,
        seq_len: int,
        hidden: int,
        batch_size: int,
        loss: str,
    ) -> None:
        super().__init__(seed, device, {
            "seq_len": check_positive_int(self.name, "seq_len", seq_len, minimum=2),
            "hidden": check_positive_int(self.name, "hidden", hidden),
            "batch_size": check_positive_int(self.name, "batch_size", batch_size),
            "loss": check_choice(self.name, "loss", loss, LOSSES),
        })
        self.seq_len, self.hidden, self.batch_size, self.loss_name = (
            seq_len, hidden, batch_size, loss
        )
        gen = torch.Generator(device="cpu").manual_seed(_EVAL_SEED)
        x_eval, y_eval = make_adding_batch(EVAL_SIZE, seq_len, gen)
        self.eval_set = (x_eval.to(self.device), y_eval.to(self.device))

    def _build_model(self) -> nn.Module:
        return AddingRNN(self.hidden)

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        gen = data_generator(self.seed, "train")
        while True:
            x, y = make_adding_batch(self.batch_size, self.seq_len, gen)
            yield x.to(self.device), y.to(self.device)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        pred = model(x)
        if self.loss_name == "huber":
            return F.huber_loss(pred, y)
        return F.mse_loss(pred, y)

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        x, y = self.eval_set
        total = torch.zeros((), device=self.device)
        for start in range(0, x.shape[0], 1024):
            pred = model(x[start:start + 1024])
            total += F.mse_loss(pred, y[start:start + 1024], reduction="sum")
        mse = total.item() / x.shape[0]
        return {"eval_loss": mse, "chance_ratio": mse / CHANCE_MSE}


def rnn_adding(
    seed: int = 0,
    device: str | torch.device = "cpu",
    seq_len: int = 50,
    hidden: int = 64,
    batch_size: int = 64,
    loss: str = "mse",
) -> RNNAddingWorkload:
    """Vanilla tanh RNN on the adding problem (sum of two U[0,1]; chance MSE 0.167)."""
    return RNNAddingWorkload(seed, device, seq_len, hidden, batch_size, loss)
