"""StabilityGuard: the per-step sequence for any training loop.

Two lines in a user's loop::

    guard = StabilityGuard.from_yaml("best.yaml", model)   # init, optimizer, schedule, AMP, clip
    ...
        if guard.step(loss_fn(model(x), y)):               # backward .. step; True = exploded
            break

One optimizer step, in this order::

    backward (scaled for fp16) -> unscale (fp16) -> measure (one foreach pass)
    -> skip decision on device (non-finite; with on_spike: skip, a norm spike)
    -> [standardise] -> clip (reuses the norms) -> record on device
    -> at the sync cadence: one host transfer, detectors replayed step by step
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

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from stability import init as init_schemes
from stability import trace as tr
from stability.clipping import ClipResult, make_clipper, split_clipper, standardize_grads
from stability.config import StabilityConfig
from stability.detectors import Detector, detector_for
from stability.devicestep import DeviceStep, unsupported
from stability.gate import SkipGate
from stability.optim import build_optimizer, build_scheduler
from stability.precision import AutocastHooks, make_grad_scaler, mixed_dtype_error, scale_tensor
from stability.records import StepRecord, Verdict
from stability.stats import GradMonitor, GradStats

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
        self.monitor = GradMonitor.for_model(model)
        self.optimizer = optimizer or build_optimizer(self.monitor.params, config)
        self.scheduler = build_scheduler(self.optimizer, config, total_steps)
        self.scaler = make_grad_scaler(config, self.device.type)
        self._autocast = AutocastHooks(model, config.precision, self.device.type)
        self.clipper = make_clipper(config)
        self.detector = detector if detector is not None else detector_for(config)
        self.gate = SkipGate(self.device, spikes=config.on_spike == "skip")
        # torch's fused SGD / Adam / AdamW take the skip decision as found_inf and drop the
        # update on device; any other optimizer needs the decision on the host (one sync).
        self._found_inf_step = bool(getattr(self.optimizer, "_step_supports_amp_scaling",
                                            False))
        # Synced every step: the host decides from the step's row, no device ops needed.
        if sync_every is None:
            sync_every = 1 if self.device.type == "cpu" else 10
        if sync_every < 1:
            raise ValueError(f"sync_every must be >= 1; got {sync_every}.")
        self.sync_every = sync_every
        self._host_gate = sync_every == 1
        self.stop_on_verdict = stop_on_verdict
        self.on_sync = on_sync

        self.layer_names = tuple(self.monitor.layer_names)
        self.columns = tr.ROW + tr.columns_for(self.layer_names)
        self._buffer = torch.zeros(sync_every, len(self.columns), device=self.device)
        self.device_step: DeviceStep | None = None
        """the fused post-backward step, when it runs (see ``device_step``)."""
        self.device_step_off: str | None = unsupported(config, self.clipper, self.monitor)
        """why the fused step does not run, or None when it does."""
        if device_step is None:
            device_step = self.device.type == "cuda" and self.device_step_off is None
        elif device_step and self.device_step_off is not None:
            raise ValueError(f"device_step=True cannot run this config: "
                             f"{self.device_step_off}; pass device_step=None to fall back.")
        split = split_clipper(self.clipper)
        if device_step and split is not None:
            self.device_step = DeviceStep(self.monitor, self.gate, split, self._buffer,
                                          norm_type=config.clip_norm_type,
                                          host_gate=self._host_gate, graph=True)
        elif self.device_step_off is None:
            self.device_step_off = "device_step=False" if self.device.type == "cuda" else (
                "not a CUDA device (the eager step is faster on CPU)")
        self._one = torch.ones((), device=self.device)
        self._lr_constant = config.schedule == "constant" and config.warmup_steps == 0
        self._zero = torch.zeros((), device=self.device)
        self._pending = 0
        self._pending_lr: list[float] = []
        self._chunks: list[np.ndarray] = []
        self._lrs: list[float] = []
        self._micro = 0
        self._loss_sum: Tensor | None = None
        self.step_count = 0
        """optimizer steps taken (or attempted) so far."""
        self.stats: GradStats | None = None
        self.clip: ClipResult | None = None
        self.verdict: Verdict | None = None
        self.last_record: StepRecord | None = None
        self.overflow_count = 0
        self.skipped_count = 0
        """steps whose update was dropped (spikes, non-finite and fp16 overflow steps)."""

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
        if self.device_step is not None:
            fused = self.device_step
            grads = fused.load(loss)
            self.stats, self.clip, skip = fused.run()
            if fused.clipper.scales:
                fused.clipper.apply(grads, self.clip)
            self._after_row(skip)
            return
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # grads now hold true values
        stats = self.monitor.measure(self.config.clip_norm_type)
        grads = self.monitor.last_grads
        if self.config.grad_standardize and self.monitor.last_index is not None:
            stats = standardize_grads(grads, stats, self.monitor.last_index)
        raw_norm = stats.global_norm
        # the skip decision: on device, or on the host at this step's sync (see sync())
        skip = self._zero if self._host_gate else self.gate(loss, raw_norm, stats.nonfinite)
        clip = self.clipper(self.monitor.params, grads, stats)
        # Let go of this step's gradient tensors: held until the next measure(), they keep
        # the allocator from reusing their memory in the next backward (transformer_lm on
        # CPU: 6% -> 2.5% overhead, benchmarks/monitor_overhead.py).
        self.monitor.last_grads = []
        self.stats, self.clip = stats, clip
        # One device row per step (stability.trace.ROW, then the layer norms); written in
        # place, read by the host only at the sync cadence.
        row = self._buffer[self._pending]
        scale, overflow = self._one, self._zero
        if self.scaler is not None:
            scale = scale_tensor(self.scaler, raw_norm)
            overflow = (~torch.isfinite(raw_norm)).float()
        torch.stack((loss.reshape(()).float(), raw_norm, clip.coef, clip.threshold,
                     scale, overflow, stats.nonfinite.float(), skip.float()),
                    out=row[:tr.N_ROW])
        row[tr.N_ROW:].copy_(stats.layer_norms)
        self._after_row(skip)

    def _after_row(self, skip: Tensor) -> None:
        """The step's row is on device: sync at the cadence, then the update (or not)."""
        self._pending += 1
        self._pending_lr.append(self.optimizer.param_groups[0]["lr"])
        self.step_count += 1
        if self._pending >= self.sync_every:
            self.sync()
        if self.verdict is not None and self.stop_on_verdict:
            self.optimizer.zero_grad(set_to_none=True)
            return
        if self._host_gate:  # decided at this step's sync: a plain step, or none
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
        n = self._pending
        if n == 0:
            return []
        block = self._buffer[:n].cpu().numpy().astype(np.float64)
        if self.device_step is not None and n < self.sync_every:
            self.device_step.rewind()
        lrs = self._pending_lr
        self._pending, self._pending_lr = 0, []
        first_step = self.step_count - n
        records = []
        col = tr.COL
        for i in range(n):
            values = block[i]
            record = StepRecord(
                step=first_step + i, loss=float(values[col["loss"]]),
                global_norm=float(values[col["grad_norm"]]),
                layer_norms=values[tr.N_ROW:], layer_names=self.layer_names, lr=lrs[i],
                overflow=bool(values[col["overflow"]]),
                nonfinite=int(values[col["nonfinite"]]),
                skipped=bool(values[col["skipped"]]),
            )
            if self._host_gate:
                record.skipped = self.gate.decide_host(record.loss, record.global_norm)
                block[i, col["skipped"]] = record.skipped
            records.append(record)
            self.overflow_count += int(record.overflow)
            self.skipped_count += int(record.skipped)
            if self.verdict is None:
                self.verdict = self.detector.observe(record.step, record)
        self.last_record = records[-1]
        self._chunks.append(block)
        self._lrs.extend(lrs)
        if self.on_sync is not None:
            self.on_sync(records)
        return records

    def trace(self) -> pd.DataFrame:
        """Every recorded optimizer step: loss, norms (pre-clip), lr, clip, AMP scale."""
        self.sync()
        data = (np.concatenate(self._chunks) if self._chunks
                else np.zeros((0, len(self.columns))))
        frame = pd.DataFrame(data, columns=list(self.columns))
        frame.insert(0, "step", np.arange(len(frame), dtype=np.int64))
        frame.insert(3, "lr", np.asarray(self._lrs, dtype=np.float64))
        frame["overflow"] = frame["overflow"].astype(bool)
        frame["skipped"] = frame["skipped"].astype(bool)
        frame["nonfinite"] = frame["nonfinite"].astype(np.int64)
        return frame

    def diagnosis(self) -> Diagnosis:
        """What happened: onset, first layer, growth rate, loss impact, suggested fix."""
        from stability.diagnose import diagnose

        return diagnose(self.trace(), self.verdict, self.config)

    def close(self) -> None:
        """Flush pending statistics and remove the autocast hooks from the model."""
        self.sync()
        self._autocast.remove()
