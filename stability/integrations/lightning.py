"""PyTorch Lightning: a callback that applies a StabilityConfig and watches every optimizer step.

::

    callback = StabilityCallback.from_yaml("best.yaml")
    trainer = pl.Trainer(callbacks=[callback], **callback.trainer_args())

    # in the LightningModule, for the config's optimizer, lr, warm-up and schedule:
    def configure_optimizers(self):
        return StabilityCallback.of(self.trainer).configure_optimizers(self)

What it does, per config field (``pip install stabsweep[lightning]``):

- applied by the callback: ``clip_method`` and every clip parameter, ``clip_norm_type``,
  ``grad_standardize`` (in ``on_before_optimizer_step``, reusing the measured norms);
  ``on_spike`` and ``spike_patience`` (the skip gate and the default detector); ``init``,
  ``init_std``, ``init_gain`` (in ``setup``, before the optimizers and any checkpoint load;
  ``apply_init=False`` when fine-tuning).
- applied through :meth:`StabilityCallback.configure_optimizers`, which the module returns
  from its own ``configure_optimizers`` (a callback cannot replace the module's optimizer):
  ``optimizer``, ``lr``, ``momentum``, ``beta1``, ``beta2``, ``eps``, ``weight_decay``,
  ``warmup_steps``, ``schedule``, ``min_lr_ratio`` (the guard's fused optimizer and schedule,
  stepped per optimizer step). Any other optimizer: a warning at fit start.
- refused, checked: ``precision`` and ``grad_accum_steps`` are the Trainer's ``precision`` and
  ``accumulate_grad_batches``, fixed when the Trainer is built (pass
  :meth:`StabilityCallback.trainer_args`); a mismatch raises ``ConfigError`` at setup.
  ``fp16_noscale`` has no Lightning precision; ``loss_scale_*`` other than the defaults (which
  are GradScaler's) need a ``MixedPrecision`` plugin with your own scaler, so are refused too.

Skip (``on_spike: skip``) is exact: Lightning runs the training step inside
``optimizer.step(closure)``, so the step itself cannot be left out; instead a fused optimizer
reads the skip decision as its ``found_inf`` (the update, moments and step count are dropped on
device, no host sync) and any other optimizer gets no gradients for that step (a host decision),
which torch's optimizers treat as nothing to update. The verdict sets ``trainer.should_stop``;
``trace.parquet``, ``diagnosis.json`` and the two plots go to ``out`` (default:
``trainer.log_dir``). Norms and the verdict go to the Trainer's loggers through
``LightningModule.log_dict`` (``grad_norm/global``, ``grad_norm/<layer>``, ``stability/*``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from stability import init as init_schemes
from stability.config import ConfigError, StabilityConfig
from stability.detectors import Detector
from stability.integrations._core import (
    StepWatcher,
    WatchingCallback,
    built_here,
    metrics_of,
    tag_optimizer,
    verdict_metrics,
)
from stability.optim import build_optimizer, build_scheduler

if TYPE_CHECKING:

    pass

__all__ = ["StabilityCallback"]

log = logging.getLogger(__name__)

PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
"""config precision -> Lightning's ``Trainer(precision=...)``."""
_ALIASES = {"32": "32-true", "32-true": "32-true", "bf16-mixed": "bf16-mixed",
            "16-mixed": "16-mixed", "16": "16-mixed", "bf16": "bf16-mixed"}
_DEFAULT_SCALE = StabilityConfig()


class StabilityCallback(WatchingCallback, pl.Callback):
    """Applies a :class:`StabilityConfig` inside a Lightning ``Trainer`` (see the module doc).

    Args:
        config: the stability settings (or a mapping of them).
        out: folder for ``trace.parquet``, ``diagnosis.json`` and the plots; default the
            Trainer's ``log_dir``.
        detector: explosion detector; None: the default composite for ``config.on_spike``.
        sync_every: host transfer cadence (default: every step on CPU, 10 on a GPU).
        apply_init: re-initialise the module's weights with ``config.init`` at setup.
        log_layers: also log one ``grad_norm/<layer>`` value per layer.
    """

    NOT_YET = ("has not watched a fit yet: pass it to Trainer(callbacks=[...]) and call "
               "trainer.fit first")

    @staticmethod
    def refuse(config: StabilityConfig) -> None:
        _refuse(config)

    def __init__(self, config: StabilityConfig | Mapping[str, Any], *,
                 out: str | Path | None = None, detector: Detector | None = None,
                 sync_every: int | None = None, apply_init: bool = True,
                 log_layers: bool = True) -> None:
        WatchingCallback.__init__(self, config, out=out, detector=detector,
                                  sync_every=sync_every, apply_init=apply_init,
                                  log_layers=log_layers)
        self._loss: Tensor | None = None
        self._logged_step = -1

    @classmethod
    def of(cls, trainer: pl.Trainer) -> StabilityCallback:
        """The StabilityCallback among a Trainer's callbacks (for ``configure_optimizers``)."""
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, cls):
                return callback
        raise LookupError("the Trainer has no StabilityCallback: pass "
                          "Trainer(callbacks=[StabilityCallback.from_yaml(...)]).")

    # ------------------------------------------------------------------ what the user passes on
    def trainer_args(self) -> dict[str, Any]:
        """``Trainer`` arguments that the config decides: ``precision`` and
        ``accumulate_grad_batches`` (Lightning's own clipping stays off: the callback clips)."""
        return {"precision": PRECISION[self.config.precision],
                "accumulate_grad_batches": self.config.grad_accum_steps}

    def configure_optimizers(self, params: nn.Module | Iterable[nn.Parameter],
                             total_steps: int | None = None) -> dict[str, Any]:
        """What ``LightningModule.configure_optimizers`` returns to use the config's optimizer,
        lr, warm-up and schedule: the guard's (fused) optimizer and its per-step schedule.

        ``total_steps`` (optimizer steps; cosine / linear schedules need it) defaults to the
        Trainer's ``estimated_stepping_batches`` when a module attached to a Trainer is given.
        """
        if isinstance(params, nn.Module):
            module = params
            params = [p for p in module.parameters() if p.requires_grad]
            trainer = getattr(module, "_trainer", None)
            if total_steps is None and self.config.schedule != "constant" and trainer:
                estimated = trainer.estimated_stepping_batches
                total_steps = int(estimated) if math.isfinite(estimated) else None
        optimizer = tag_optimizer(build_optimizer(params, self.config))
        scheduler = build_scheduler(optimizer, self.config, total_steps)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        _check_trainer(trainer, self.config)
        if self.apply_init and self.config.init != "default":
            init_schemes.apply_init(pl_module, self.config.init, std=self.config.init_std,
                                    gain=self.config.init_gain)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) > 1:
            raise RuntimeError(f"StabilityCallback watches one optimizer over the whole module; "
                               f"configure_optimizers returned {len(trainer.optimizers)}. "
                               "Use one optimizer (with parameter groups if needed).")
        self.watcher = StepWatcher(pl_module, self.config, detector=self._detector,
                                   sync_every=self._sync_every)
        self._loss, self._logged_step, self.saved_to = None, -1, None
        if not any(built_here(opt) for opt in trainer.optimizers):
            log.warning("StabilityCallback: the module's optimizer was not built from the "
                        "config, so optimizer, lr, warmup_steps and schedule are not applied; "
                        "return StabilityCallback.of(self.trainer).configure_optimizers(self) "
                        "from configure_optimizers to apply them.")

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           loss: Tensor) -> None:
        # Lightning hands over the loss it back-propagates: divided by accumulate_grad_batches
        # (so the micro-batches add up to their mean) and, for 16-mixed, scaled.
        value = loss.detach().float()
        scaler = _scaler(trainer)
        scale = scaler._scale if scaler is not None else None  # a device tensor: no sync
        if scale is not None:
            value = value / scale
        self._loss = value if self._loss is None else self._loss + value

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        watcher, loss = self._watching(), self._loss
        self._loss = None
        if loss is None:  # training_step returned None: no backward, nothing to measure
            return
        scaler = _scaler(trainer)
        if scaler is not None:
            _unscale_once(scaler, optimizer)  # fused optimizers are not unscaled by Lightning
        watcher.before_step(loss.reshape(()), optimizer, scaler=scaler)
        if watcher.verdict is not None:
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        watcher = self._watching()
        watcher.after_step()
        record = watcher.last_record
        if record is None or record.step == self._logged_step:
            return
        every = int(getattr(trainer, "log_every_n_steps", 0) or 0)  # 0: Lightning logs nothing
        if (every and trainer.global_step % every == 0) or watcher.verdict is not None:
            metrics = metrics_of(record, watcher.skipped_count, layers=self.log_layers)
            if watcher.verdict is not None:
                metrics.update(verdict_metrics(watcher.verdict))
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
            self._logged_step = record.step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        watcher = self._watching()
        watcher.after_step()
        watcher.sync()
        out = self.out or Path(trainer.log_dir or trainer.default_root_dir)
        if trainer.is_global_zero:
            self.saved_to = watcher.save(out)
        verdict = watcher.verdict
        if verdict is not None:
            for logger in trainer.loggers:
                logger.log_metrics(verdict_metrics(verdict), step=trainer.global_step)
                logger.log_hyperparams({"stability/verdict": str(verdict)})
            log.warning("StabilityCallback stopped the fit: %s (trace, diagnosis.json and "
                        "plots in %s)", verdict, self.saved_to)


def _refuse(config: StabilityConfig) -> None:  # StabilityCallback.refuse
    if config.precision not in PRECISION:
        raise ConfigError(f"precision {config.precision!r} has no Lightning equivalent "
                          f"(use one of {', '.join(PRECISION)}).", field="precision")
    for name in ("loss_scale_init", "loss_scale_growth_interval"):
        if config.precision == "fp16" and getattr(config, name) != getattr(_DEFAULT_SCALE, name):
            raise ConfigError(
                f"{name} {getattr(config, name)!r} is not applied by the Lightning callback "
                f"(16-mixed uses GradScaler's default {getattr(_DEFAULT_SCALE, name)!r}); "
                f"set it back, or pass plugins=[MixedPrecision('16-mixed', device, "
                f"scaler=GradScaler(...))] and drop it from the config.", field=name)


def _check_trainer(trainer: pl.Trainer, config: StabilityConfig) -> None:
    want = PRECISION[config.precision]
    have = _ALIASES.get(str(trainer.precision), str(trainer.precision))
    if have != want:
        raise ConfigError(f"precision is {config.precision!r} in the config but the Trainer "
                          f"runs {trainer.precision!r}; pass Trainer(precision={want!r}) "
                          "(callback.trainer_args() has it).", field="precision")
    if trainer.accumulate_grad_batches != config.grad_accum_steps:
        raise ConfigError(f"grad_accum_steps is {config.grad_accum_steps} in the config but "
                          f"the Trainer accumulates {trainer.accumulate_grad_batches}; pass "
                          f"Trainer(accumulate_grad_batches={config.grad_accum_steps}).",
                          field="grad_accum_steps")
    if trainer.gradient_clip_val:
        raise ConfigError(f"Trainer(gradient_clip_val={trainer.gradient_clip_val}) would clip "
                          "again after the callback (which applies clip_method "
                          f"{config.clip_method!r}); leave gradient_clip_val unset.",
                          field="clip_method")


def _scaler(trainer: pl.Trainer) -> torch.amp.GradScaler | None:
    return getattr(trainer.precision_plugin, "scaler", None)


def _unscale_once(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> None:
    from torch.amp.grad_scaler import OptState

    state = scaler._per_optimizer_states[id(optimizer)]
    if state["stage"] is OptState.READY:
        scaler.unscale_(optimizer)
