"""A small character-level causal transformer LM, with post-LN (unstable) or pre-LN blocks."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stability.init import mark_residual_branch_end
from stability.workloads.base import (
    BuiltinWorkload,
    WorkloadError,
    check_choice,
    check_positive_int,
    data_generator,
)
from stability.workloads.corpus import corpus

__all__ = ["Block", "CharTransformer", "TransformerLMWorkload", "transformer_lm"]

NORMS = ("post", "pre")
HELD_OUT_FRACTION = 0.1
MAX_EVAL_WINDOWS = 64


class Block(nn.Module):
    """Causal self-attention and a 4x MLP, each a residual branch.

    ``post``: ``x = LN(x + f(x))`` (the original Transformer; its gradient near the output is
    large at init and it needs warm-up, Xiong et al. 2020). ``pre``: ``x = x + f(LN(x))``.
    The last layer of each branch (attention output projection, MLP second linear) is marked
    with :func:`stability.init.mark_residual_branch_end`.
    """

    def __init__(self, d_model: int, n_heads: int, norm: str) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm = norm
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = mark_residual_branch_end(nn.Linear(d_model, d_model))
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.fc_out = mark_residual_branch_end(nn.Linear(4 * d_model, d_model))

    def attention(self, x: Tensor) -> Tensor:
        batch, seq, d_model = x.shape
        q, k, v = self.qkv(x).split(d_model, dim=-1)
        shape = (batch, seq, self.n_heads, d_model // self.n_heads)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(batch, seq, d_model))

    def mlp(self, x: Tensor) -> Tensor:
        return self.fc_out(F.gelu(self.fc(x)))

    def forward(self, x: Tensor) -> Tensor:
        if self.norm == "pre":
            x = x + self.attention(self.ln1(x))
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + self.attention(x))
        return self.ln2(x + self.mlp(x))


class CharTransformer(nn.Module):
    """Token + learned position embeddings, ``n_layers`` blocks, a linear head to logits."""

    def __init__(
        self, vocab: int, seq_len: int, n_layers: int, d_model: int, n_heads: int, norm: str
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, norm) for _ in range(n_layers))
        # Pre-LN leaves the residual stream un-normalised; it needs a final LayerNorm.
        self.ln_f = nn.LayerNorm(d_model) if norm == "pre" else nn.Identity()
        self.head = nn.Linear(d_model, vocab)

    def forward(self, idx: Tensor) -> Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok(idx) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class TransformerLMWorkload(BuiltinWorkload):
    """Next-character prediction on a generated English-like corpus (``corpus.py``).

    The corpus is the same string everywhere; its last 10% is held out. Training batches are
    random windows of ``seq_len + 1`` characters from the first 90%, drawn from the seed;
    ``evaluate`` reports ``eval_loss``, the mean cross-entropy (nats per character) over up to
    ``MAX_EVAL_WINDOWS`` fixed, non-overlapping held-out windows. Uniform guessing scores
    ln(vocab) = 3.56; a unigram model about 2.95.
    """

    name = "transformer_lm"

    def __init__(
        self,
        seed: int,
        device: str | torch.device,
        n_layers: int,
        d_model: int,
        n_heads: int,
        seq_len: int,
        batch_size: int,
        norm: str,
    ) -> None:
        super().__init__(seed, device, {
            "n_layers": check_positive_int(self.name, "n_layers", n_layers),
            "d_model": check_positive_int(self.name, "d_model", d_model),
            "n_heads": check_positive_int(self.name, "n_heads", n_heads),
            "seq_len": check_positive_int(self.name, "seq_len", seq_len),
            "batch_size": check_positive_int(self.name, "batch_size", batch_size),
            "norm": check_choice(self.name, "norm", norm, NORMS),
        })
        if d_model % n_heads:
            raise WorkloadError(
                f"workload {self.name!r}: d_model must be divisible by n_heads; got "
                f"d_model={d_model}, "
                f"n_heads={n_heads}."
            )
        text = corpus()
        self.vocab = sorted(set(text))
        lookup = {ch: i for i, ch in enumerate(self.vocab)}
        data = torch.tensor([lookup[ch] for ch in text], dtype=torch.long)
        split = int(len(data) * (1 - HELD_OUT_FRACTION))
        self.train_data, held_out = data[:split], data[split:]
        window = seq_len + 1
        n_eval = min(MAX_EVAL_WINDOWS, len(held_out) // window)
        if n_eval < 1:
            raise WorkloadError(
                f"workload {self.name!r}: seq_len must be below {len(held_out) - 1} "
                "(the length of the held-out text); "
                f"got {seq_len}."
            )
        self.eval_windows = held_out[: n_eval * window].view(n_eval, window).to(self.device)
        self.n_layers, self.d_model, self.n_heads = n_layers, d_model, n_heads
        self.seq_len, self.batch_size, self.norm = seq_len, batch_size, norm

    def _build_model(self) -> nn.Module:
        return CharTransformer(
            len(self.vocab), self.seq_len, self.n_layers, self.d_model, self.n_heads, self.norm
        )

    def batches(self) -> Iterator[Tensor]:
        """Token-id windows ``[batch, seq_len + 1]``: inputs ``[:, :-1]``, targets ``[:, 1:]``."""
        gen = data_generator(self.seed, "train")
        offsets = torch.arange(self.seq_len + 1)
        n_starts = len(self.train_data) - self.seq_len
        while True:
            starts = torch.randint(0, n_starts, (self.batch_size, 1), generator=gen)
            yield self.train_data[starts + offsets].to(self.device)

    def loss(self, model: nn.Module, batch: Tensor) -> Tensor:
        logits = model(batch[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"eval_loss": self.loss(model, self.eval_windows).item()}


def transformer_lm(
    seed: int = 0,
    device: str | torch.device = "cpu",
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    seq_len: int = 64,
    batch_size: int = 16,
    norm: str = "post",
) -> TransformerLMWorkload:
    """Small char-level causal transformer LM on generated text; post-LN (unstable) or pre-LN."""
    return TransformerLMWorkload(
        seed, device, n_layers, d_model, n_heads, seq_len, batch_size, norm
    )
