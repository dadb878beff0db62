"""StabilityGuard: the per-step sequence for any training loop.

Two lines in a user's loop::

    guard = StabilityGuard.from_yaml("best.yaml", model)   # init, optimizer, schedule, AMP, clip
    ...
        if guard.step(loss_fn(model(x), y)):               # backward .. step; True = exploded
            break

One optimizer step, in this order::

    backward (scaled for fp16) -> unscale (fp16)
    -> the watcher (stability.watcher): measure (one foreach pass) -> skip decision on device
       (non-finite; with on_spike: skip, a norm spike) -> [standardise] -> clip (reuses the
       norms) -> record on device -> at the sync cadence: one host transfer, detectors
       replayed step by step
    -> optimizer.step (the skip decision is its found_inf: dropped on device) -> scheduler.step

Between sync points nothing waits on the host: statistics go into a device buffer, and a
non-finite or (with ``on_spike: skip``) spiking step never reaches the weights, even between
syncs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import Tensor, nn

from stability import init as init_schemes
from stability.clipping import ClipResult
from stability.config import StabilityConfig
from stability.detectors import Detector
from stability.optim import build_optimizer, build_scheduler
from stability.precision import AutocastHooks, make_grad_scaler, mixed_dtype_error
from stability.records import StepRecord, Verdict
from stability.stats import GradStats
from stability.watcher import StepWatcher

if TYPE_CHECKING:
    from stability.diagnose import Diagnosis

class StabilityGuard:
    """Applies a :class:`StabilityConfig` to a model and watches every optimizer step.

    Args:
        model: the model to train (weights are re-initialised when ``config.init`` is not
            ``default`` and ``apply_init`` is true: pass ``apply_init=False`` when fine-tuning).
        config: the stability settings.
        total_steps: run length in optimizer steps (needed by cosine / linear schedules).
        detector: explosion detector; when None, the composite default for
            ``config.on_spike`` (see :func:`stability.detectors.default_detector`).
        optimizer: use this optimizer instead of building one from the config.
        sync_every: host transfer cadence in optimizer steps. Default: every step on CPU (free,
            and lets a non-finite step be skipped), 10 on accelerators (no per-step sync;
            measured faster than 1 on 3 of 4 sizes on an H200, benchmarks/gpu_check.py).
        stop_on_verdict: once a detector fires, further ``step`` calls skip the update.
        on_sync: called with the new StepRecords after each host transfer (e.g. a logger).
        device_step: run the post-backward work as one function (:mod:`stability.devicestep`),
            captured as a CUDA graph on CUDA. None (default): on CUDA where the config allows
            it; True: also on CPU (eagerly; for tests), ValueError when the config cannot;
            False: never.
    """

    def __init__(
        self,
        model: nn.Module,
        config: StabilityConfig,
        *,
        total_steps: int | None = None,
        detector: Detector | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        sync_every: int | None = None,
        apply_init: bool = True,
        stop_on_verdict: bool = True,
        on_sync: Callable[[list[StepRecord]], None] | None = None,
        device_step: bool | None = None,
    ) -> None:
        self.model, self.config = model, config
        first = next(model.parameters(), None)
        if first is None:
            raise ValueError("model has no parameters: StabilityGuard needs a trainable model.")
        self.device = first.device
        if apply_init and config.init != "default":
            init_schemes.apply_init(model, config.init, std=config.init_std,
                                    gain=config.init_gain)
        self.watcher = StepWatcher(model, config, detector=detector, sync_every=sync_every,
                                   on_sync=on_sync, device_step=device_step)
        """measures, decides, clips and records each step (:mod:`stability.watcher`)."""
        self.monitor = self.watcher.monitor
        self.optimizer = optimizer or build_optimizer(self.monitor.params, config)
        self.scheduler = build_scheduler(self.optimizer, config, total_steps)
        self.scaler = make_grad_scaler(config, self.device.type)
        self._autocast = AutocastHooks(model, config.precision, self.device.type)
        # torch's fused SGD / Adam / AdamW take the skip decision as found_inf and drop the
        # update on device; any other optimizer needs the decision on the host (one sync).
        self._found_inf_step = bool(getattr(self.optimizer, "_step_supports_amp_scaling",
                                            False))
        self.stop_on_verdict = stop_on_verdict
        self._lr_constant = config.schedule == "constant" and config.warmup_steps == 0
        self._micro = 0
        self._loss_sum: Tensor | None = None

    # ------------------------------------------------------------------ the watcher's state
    # What the watcher measured and decided, read through the guard (one source of truth).
    clipper = property(lambda self: self.watcher.clipper)
    detector = property(lambda self: self.watcher.detector)
    gate = property(lambda self: self.watcher.gate)
    layer_names = property(lambda self: self.watcher.layer_names)
    columns = property(lambda self: self.watcher.columns)
    sync_every = property(lambda self: self.watcher.sync_every)
    device_step = property(lambda self: self.watcher.device_step)
    device_step_off = property(lambda self: self.watcher.device_step_off)

    @property
    def step_count(self) -> int:
        """optimizer steps taken (or attempted) so far."""
        return self.watcher.step_count

    @property
    def stats(self) -> GradStats | None:
        """the latest step's gradient statistics (device tensors)."""
        return self.watcher.stats

    @property
    def clip(self) -> ClipResult | None:
        return self.watcher.clip

    @property
    def verdict(self) -> Verdict | None:
        return self.watcher.verdict

    @property
    def last_record(self) -> StepRecord | None:
        return self.watcher.last_record

    @property
    def overflow_count(self) -> int:
        return self.watcher.overflow_count

    @property
    def skipped_count(self) -> int:
        """steps whose update was dropped (spikes, non-finite and fp16 overflow steps)."""
        return self.watcher.skipped_count

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: StabilityConfig | Mapping[str, Any], model: nn.Module,
                    **kwargs: Any) -> StabilityGuard:
        if not isinstance(config, StabilityConfig):
            config = StabilityConfig.from_dict(config)
        return cls(model, config, **kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path, model: nn.Module, **kwargs: Any) -> StabilityGuard:
        """Build from a YAML file: a StabilityConfig or a file ``stabsweep export`` wrote."""
        return cls(model, StabilityConfig.load(path), **kwargs)

    # ------------------------------------------------------------------ the step
    @property
    def accumulating(self) -> bool:
        """True between micro-batches of one optimizer step (grad accumulation)."""
        return self._micro != 0

    @property
    def exploded(self) -> bool:
        return self.verdict is not None

    def step(self, loss: Tensor) -> bool:
        """Backward one micro-batch; every ``grad_accum_steps`` calls, run the optimizer step.

        Returns True once an explosion has been detected (the update of that step and of any
        later call is skipped when ``stop_on_verdict``).
        """
        if self.verdict is not None and self.stop_on_verdict:
            return True
        accum = self.config.grad_accum_steps
        scaled = loss / accum if accum > 1 else loss
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        try:
            scaled.backward()
        except RuntimeError as exc:
            raise mixed_dtype_error(exc, self.config.precision) from exc
        detached = loss.detach()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        self._micro += 1
        if self._micro < accum:
            return False
        mean_loss = self._loss_sum / accum if accum > 1 else self._loss_sum
        self._micro, self._loss_sum = 0, None
        self._optimizer_step(mean_loss)
        return self.verdict is not None

    def _optimizer_step(self, loss: Tensor) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # grads now hold true values
        skip = self.watcher.record(loss, self.optimizer.param_groups[0]["lr"],
                                   scaler=self.scaler)
        if self.verdict is not None and self.stop_on_verdict:
            self.optimizer.zero_grad(set_to_none=True)
            return
        if self.watcher.host_gate:  # decided at this step's sync: a plain step, or none
            record = self.last_record
            self._apply(record is not None and record.skipped)
        else:
            self._apply(skip)
        self.optimizer.zero_grad(set_to_none=True)
        if self._lr_constant:
            return  # constant lr, no warm-up: LambdaLR would only redo the same Python work
        if self.scaler is None:
            self.scheduler.step()
            return
        with warnings.catch_warnings():
            # With fp16 the first optimizer.step may be skipped by the scaler; torch warns.
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()

    def _apply(self, skip: Tensor | bool) -> None:
        """optimizer.step unless ``skip``; the loss scale is updated either way (fp16).

        ``skip`` is a host bool when the host decided it, else a device tensor."""
        if isinstance(skip, Tensor) and self._found_inf_step:
            # The gradients are already unscaled: the optimizer reads only found_inf.
            opt: Any = self.optimizer
            opt.grad_scale, opt.found_inf = None, skip.float()
            try:
                opt.step()
            finally:
                del opt.grad_scale, opt.found_inf
        elif not bool(skip):  # on the host already, or a sync for an unfused optimizer
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
        if self.scaler is not None:
            self.scaler.update()  # backs off on the scaler's own overflow only

    # ------------------------------------------------------------------ host side
    def sync(self) -> list[StepRecord]:
        """Move pending statistics to the host (one transfer) and run the detectors."""
        return self.watcher.sync()

    def trace(self) -> pd.DataFrame:
        """Every recorded optimizer step: loss, norms (pre-clip), lr, clip, AMP scale."""
        return self.watcher.trace()

    def diagnosis(self) -> Diagnosis:
        """What happened: onset, first layer, growth rate, loss impact, suggested fix."""
        return self.watcher.diagnosis()

    def close(self) -> None:
        """Flush pending statistics and remove the autocast hooks from the model."""
        self.sync()
        self._autocast.remove()
