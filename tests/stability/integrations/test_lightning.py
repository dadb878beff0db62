"""The Lightning callback against StabilityGuard on the same 2-layer model, data and seed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from stability import StabilityGuard
from stability.config import ConfigError, StabilityConfig
from stability.integrations.lightning import StabilityCallback

BATCH = 16


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=gen)
    w = torch.randn(8, 1, generator=gen)
    return x, torch.tanh(x @ w) + 0.1 * torch.randn(256, 1, generator=gen)


class TwoLayer(pl.LightningModule):
    """Linear -> tanh -> Linear; the optimizer comes from the callback's config."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.loss(batch)

    def configure_optimizers(self) -> Any:
        return StabilityCallback.of(self.trainer).configure_optimizers(self)


def _fit(config: StabilityConfig, steps: int, tmp_path: Path, *, logger: Any = False,
         extra: list[pl.Callback] | None = None, **kwargs: Any
         ) -> tuple[StabilityCallback, TwoLayer, pl.Trainer]:
    model = TwoLayer()
    callback = StabilityCallback(config, out=tmp_path / "run", **kwargs)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=logger,
                         callbacks=[callback, *(extra or [])], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         log_every_n_steps=1, default_root_dir=tmp_path,
                         **callback.trainer_args())
    x, y = _data()
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False))
    return callback, model, trainer


def _guard(config: StabilityConfig, steps: int) -> tuple[StabilityGuard, TwoLayer]:
    model = TwoLayer()
    guard = StabilityGuard(model, config, total_steps=steps)
    x, y = _data()
    step = 0
    while guard.step_count < steps:
        i = (step * BATCH) % len(x)
        step += 1
        if guard.step(model.loss((x[i:i + BATCH], y[i:i + BATCH]))):
            break
    guard.close()
    return guard, model


COMPARED = ["loss", "grad_norm", "clip_coef", "lr", "skipped"]


@pytest.mark.parametrize("clip", [
    {"clip_method": "norm", "clip_threshold": 0.05},
    {"clip_method": "value", "clip_threshold": 0.005},
    {"clip_method": "agc", "agc_clip_factor": 0.002},
    {"clip_method": "autoclip", "autoclip_percentile": 10.0},
    {"clip_method": "zclip", "zclip_warmup": 5, "zclip_z_threshold": 0.5, "lr": 0.1},
    {"clip_method": "norm", "clip_threshold": 0.05, "grad_accum_steps": 2},
])
def test_clipping_matches_the_guard(clip: dict[str, Any], tmp_path: Path) -> None:
    config = StabilityConfig(**{"optimizer": "adam", "lr": 0.01, "warmup_steps": 5,
                                "init": "xavier_normal", **clip})
    callback, model, _ = _fit(config, 30, tmp_path)
    guard, reference = _guard(config, 30)
    ours, theirs = callback.trace(), guard.trace()
    assert len(ours) == len(theirs) == 30
    assert (ours["clip_coef"] < 0.999).any(), "the thresholds were chosen to clip"
    pd.testing.assert_frame_equal(ours[COMPARED], theirs[COMPARED], rtol=1e-5)
    layers = [c for c in theirs.columns if c.startswith("grad_norm/")]
    assert layers == [c for c in ours.columns if c.startswith("grad_norm/")]
    np.testing.assert_allclose(ours[layers], theirs[layers], rtol=1e-5)
    for mine, ref in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)


def test_blow_up_stopped_at_the_guards_verdict_step(tmp_path: Path) -> None:
    config = StabilityConfig(optimizer="sgd", momentum=0.0, lr=2.0, warmup_steps=100)
    callback, _, trainer = _fit(config, 200, tmp_path)
    guard, _ = _guard(config, 200)
    assert guard.verdict is not None and callback.verdict is not None
    assert (callback.verdict.kind, callback.verdict.step) == (guard.verdict.kind,
                                                              guard.verdict.step)
    assert trainer.should_stop and trainer.global_step == guard.step_count < 200
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"trace.parquet", "diagnosis.json",
                                               "grad_norm_trace.png", "layer_heatmap.png"}
    diagnosis = json.loads((run / "diagnosis.json").read_text())
    assert diagnosis["exploded"] and diagnosis["verdict_step"] == guard.verdict.step
    assert len(pd.read_parquet(run / "trace.parquet")) == guard.step_count


class _Snapshots(pl.Callback):
    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []
        self.adam_steps: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        weight = pl_module.net[0].weight  # type: ignore[index]
        self.weights.append(weight.detach().clone())
        self.adam_steps.append(float(trainer.optimizers[0].state[weight]["step"]))


@pytest.mark.parametrize("sync_every", [1, 4], ids=["host-gate", "found-inf"])
def test_a_non_finite_update_is_skipped(sync_every: int, tmp_path: Path) -> None:
    """An inf gradient at step 5 (the loss stays finite): the update is dropped, weights and
    Adam's step count unchanged, and training goes on. sync_every=4 takes the on-device path
    (the fused optimizer's found_inf), 1 the host decision (no gradients for that step)."""
    backward_calls = [0]

    def poison(grad: torch.Tensor) -> torch.Tensor:
        backward_calls[0] += 1
        return torch.full_like(grad, math.inf) if backward_calls[0] == 6 else grad

    snapshots = _Snapshots()

    class Poisoned(pl.Callback):
        def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            pl_module.net[0].weight.register_hook(poison)  # type: ignore[index]

    config = StabilityConfig(optimizer="adam", lr=0.01)
    callback, _, trainer = _fit(config, 12, tmp_path, extra=[Poisoned(), snapshots],
                                sync_every=sync_every)
    trace = callback.trace()
    assert callback.watcher is not None
    assert callback.watcher.dropped_by == ("no_grads" if sync_every == 1 else "found_inf")
    assert trace["skipped"].tolist() == [i == 5 for i in range(12)]
    assert trace["nonfinite"].iloc[5] >= 1 and math.isfinite(trace["loss"].iloc[5])
    assert callback.verdict is None and trainer.global_step == 12
    assert torch.equal(snapshots.weights[5], snapshots.weights[4])
    assert not torch.equal(snapshots.weights[6], snapshots.weights[5])
    assert snapshots.adam_steps == [1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10, 11]
    assert all(torch.isfinite(w).all() for w in snapshots.weights)


def test_norms_reach_the_trainers_logger(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    config = StabilityConfig(optimizer="adam", lr=0.01, clip_method="norm", clip_threshold=0.1)
    callback, _, _ = _fit(config, 10, tmp_path, logger=logger)
    logger.save()
    logged = pd.read_csv(Path(logger.log_dir) / "metrics.csv")
    trace = callback.trace()
    layer = next(c for c in trace.columns if c.startswith("grad_norm/net."))
    rows = logged.dropna(subset=["grad_norm/global"])
    assert len(rows) == 10
    np.testing.assert_allclose(rows["grad_norm/global"], trace["grad_norm"], rtol=1e-6)
    np.testing.assert_allclose(rows[layer], trace[layer], rtol=1e-6)
    assert (rows["stability/skipped_steps"] == 0).all()


def test_a_trainer_that_disagrees_with_the_config_is_refused(tmp_path: Path) -> None:
    callback = StabilityCallback(StabilityConfig(precision="bf16"))
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, callbacks=[callback],
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    x, y = _data()
    with pytest.raises(ConfigError, match=r"precision='bf16-mixed'") as err:
        trainer.fit(TwoLayer(), DataLoader(TensorDataset(x, y), batch_size=BATCH))
    assert err.value.field == "precision"
    with pytest.raises(ConfigError, match="no Lightning equivalent"):
        StabilityCallback(StabilityConfig(precision="fp16_noscale"))
