"""``attn_spike``: a small causal transformer whose loss spikes and comes back.

The small-scale proxies of Wortsman et al. (2023, "Small-scale proxies for large-scale
Transformer training instabilities") for two instabilities of large transformers:

- *attention logit growth*: without qk-layernorm, the query and key weights grow at a high lr
  until the attention logits saturate the softmax (one-hot attention, entropy collapse); the
  loss jumps, and often comes back once Adam's moments adapt;
- *output logit divergence*: the output logits drift (their log-partition function away from
  0) at a high lr without weight decay; a z-loss (``1e-4 * logsumexp^2``) holds them.

The task needs attention: each sequence is a random prefix of ``half`` tokens followed by the
same prefix again, and the loss is the next-token cross-entropy over the copy only (an
induction head takes it from ln(vocab) to near zero; without attention it stays at
ln(vocab)). ``qk_norm`` and ``z_loss`` are the two mitigations of the paper; the corpus draws
them, the lr and the optimizer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from _families import _Family
from torch import nn
from torch.nn import functional as F


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.q_norm: nn.Module = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm: nn.Module = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        q, k = self.q_norm(q), self.k_norm(k)
        logits = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        attn = logits.masked_fill(mask, float("-inf")).softmax(-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class _CausalLM(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, seq: int,
                 qk_norm: bool, final_norm: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(seq, d) * 0.02)
        self.blocks = nn.Sequential(*(_Block(d, heads, qk_norm) for _ in range(layers)))
        self.ln: nn.Module = nn.LayerNorm(d) if final_norm else nn.Identity()
        self.out = nn.Linear(d, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[:tokens.shape[1]]
        return self.out(self.ln(self.blocks(x)))


class AttentionSpike(_Family):
    name = "attn_spike"

    def __init__(self, seed: int = 0, device: str | torch.device = "cpu", *,
                 qk_norm: bool = False, z_loss: float = 0.0, final_norm: bool = True,
                 n_layers: int = 2,
                 d_model: int = 32, heads: int = 2, half: int = 8, vocab: int = 32,
                 batch_size: int = 16) -> None:
        super().__init__(seed, device, dict(qk_norm=qk_norm, z_loss=z_loss,
                                            final_norm=final_norm, n_layers=n_layers,
                                            d_model=d_model, heads=heads, half=half,
                                            vocab=vocab, batch_size=batch_size))

    def _build_model(self) -> nn.Module:
        a = self.args
        return _CausalLM(a["vocab"], a["d_model"], a["n_layers"], a["heads"], 2 * a["half"],
                         a["qk_norm"], a["final_norm"])

    def _draw(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, ...]:
        prefix = torch.randint(0, self.args["vocab"], (n, self.args["half"]), generator=gen)
        return (torch.cat((prefix, prefix), 1),)

    def _logits(self, model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.args["half"]
        logits = model(tokens[:, :-1]).float()[:, h - 1:]  # positions that predict the copy
        return logits.reshape(-1, logits.shape[-1]), tokens[:, h:].reshape(-1)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        logits, target = self._logits(model, batch[0])
        loss = F.cross_entropy(logits, target)
        if self.args["z_loss"]:
            loss = loss + self.args["z_loss"] * logits.logsumexp(-1).pow(2).mean()
        return loss

    def _task_loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        logits, target = self._logits(model, batch[0])
        return F.cross_entropy(logits, target)
