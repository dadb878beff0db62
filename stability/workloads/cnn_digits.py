"""A small CNN on scikit-learn's 8x8 handwritten digits (1797 images, ships with the library)."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stability.workloads.base import BuiltinWorkload, check_positive_int, data_generator

__all__ = ["NEGATIVE_SLOPE", "DigitsCNN", "DigitsWorkload", "cnn_digits", "digits_tensors"]

TEST_FRACTION = 0.2
N_CLASSES = 10
NEGATIVE_SLOPE = 0.1
"""Leaky ReLU slope. With a plain ReLU a too-high learning rate kills every unit and the loss
sits at chance (ln 10) with zero gradients: a silent failure, not an explosion. The leak keeps
the gradient path alive, so an unstable step size shows as a growing gradient norm."""


@functools.cache
def digits_tensors() -> tuple[Tensor, Tensor]:
    """All 1797 digits as ``[N, 1, 8, 8]`` float32 in [0, 1] and ``[N]`` int64 labels."""
    from sklearn.datasets import load_digits  # reads a file bundled with scikit-learn

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    return images, labels


class DigitsCNN(nn.Module):
    """conv3x3(width) - leaky ReLU - conv3x3(2 width) - leaky ReLU - maxpool 2 - linear(10)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.head = nn.Linear(2 * width * 16, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = F.leaky_relu(self.conv1(x), NEGATIVE_SLOPE)
        x = F.max_pool2d(F.leaky_relu(self.conv2(x), NEGATIVE_SLOPE), 2)
        return self.head(x.flatten(1))


class DigitsWorkload(BuiltinWorkload):
    """Ten-way classification of 8x8 digits; cross-entropy loss.

    The seed fixes the train/test split (80/20, from a seeded permutation), the initial
    weights and the order of the training batches (a fresh permutation of the training set
    each epoch). ``evaluate`` reports ``eval_loss`` (cross-entropy on the test split, chance
    ln 10 = 2.30) and ``accuracy``.
    """

    name = "cnn_digits"

    def __init__(
        self, seed: int, device: str | torch.device, batch_size: int, width: int
    ) -> None:
        super().__init__(seed, device, {
            "batch_size": check_positive_int(self.name, "batch_size", batch_size),
            "width": check_positive_int(self.name, "width", width),
        })
        self.batch_size, self.width = batch_size, width
        images, labels = digits_tensors()
        order = torch.randperm(len(labels), generator=data_generator(seed, "task"))
        n_test = int(len(labels) * TEST_FRACTION)
        test, train = order[:n_test], order[n_test:]
        self.train_images, self.train_labels = images[train], labels[train]
        self.eval_set = (images[test].to(self.device), labels[test].to(self.device))

    def _build_model(self) -> nn.Module:
        return DigitsCNN(self.width)

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        gen = data_generator(self.seed, "train")
        n = len(self.train_labels)
        while True:
            order = torch.randperm(n, generator=gen)
            # Drop the last partial batch so every step sees batch_size examples.
            for start in range(0, n - self.batch_size + 1, self.batch_size):
                idx = order[start:start + self.batch_size]
                yield self.train_images[idx].to(self.device), self.train_labels[idx].to(
                    self.device
                )
            if n < self.batch_size:
                idx = torch.randint(0, n, (self.batch_size,), generator=gen)
                yield self.train_images[idx].to(self.device), self.train_labels[idx].to(
                    self.device
                )

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        x, y = self.eval_set
        logits = model(x)
        return {
            "eval_loss": F.cross_entropy(logits, y).item(),
            "accuracy": (logits.argmax(dim=1) == y).float().mean().item(),
        }


def cnn_digits(
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    width: int = 16,
) -> DigitsWorkload:
    """Small CNN on scikit-learn's 8x8 digits; eval cross-entropy and accuracy."""
    return DigitsWorkload(seed, device, batch_size, width)
