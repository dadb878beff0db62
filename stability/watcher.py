"""StepWatcher: the guard's step without the loop: measure, skip decision, clip, record, detect.

:class:`StabilityGuard` runs it between its own backward and ``optimizer.step()``; a framework
callback (:mod:`stability.integrations`) runs it between the framework's backward and the
framework's ``optimizer.step()``. In this order::

    measure (one foreach pass) -> skip decision (on device, or on the host at a per-step sync)
    -> [standardise] -> clip (reuses the norms) -> record on device -> at the sync cadence: one
    host transfer, detectors replayed step by step

On CUDA, where the config allows it, everything after the foreach pass up to the clip's
multiply is one function replayed as a CUDA graph (:mod:`stability.devicestep`).

Whoever steps the optimizer drops a skipped update one of two exact ways: a fused torch
optimizer (``fused=True``; what ``build_optimizer`` makes) takes the skip decision as its
``found_inf`` tensor, which drops the update on device with no host sync; any other optimizer
has its gradients set to ``None`` on a host decision, and torch's optimizers leave a parameter
without a gradient untouched (weights, moments and step count). :meth:`StepWatcher.before_step`
does that for a loop it does not own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from stability import trace as tr
from stability.clipping import ClipResult, make_clipper, split_clipper, standardize_grads
from stability.config import StabilityConfig
from stability.detectors import Detector, detector_for
from stability.devicestep import DeviceStep, unsupported
from stability.gate import SkipGate
from stability.precision import scale_tensor
from stability.records import StepRecord, Verdict
from stability.stats import GradMonitor, GradStats

if TYPE_CHECKING:
    from stability.diagnose import Diagnosis

_FOUND_INF = ("grad_scale", "found_inf")


class StepWatcher:
    """Measures, decides, clips and records every optimizer step of a model.

    Args:
        model: the model being trained (its trainable parameters are measured per module).
        config: the stability settings (clipping, ``on_spike``, ``spike_patience``).
        detector: explosion detector; None: the default composite for ``config.on_spike``.
        sync_every: host transfer cadence in optimizer steps. Default: every step on CPU (free,
            and lets a non-finite step be skipped), 10 on accelerators (no per-step sync;
            measured faster than 1 on 3 of 4 sizes on an H200, benchmarks/gpu_check.py).
        on_sync: called with the new StepRecords after each host transfer (e.g. a logger).
        device_step: run the post-backward work as one function (:mod:`stability.devicestep`),
            captured as a CUDA graph on CUDA. None (default): on CUDA where the config allows
            it; True: also on CPU (eagerly; for tests), ValueError when the config cannot;
            False: never.
    """

    def __init__(self, model: nn.Module, config: StabilityConfig, *,
                 detector: Detector | None = None, sync_every: int | None = None,
                 on_sync: Callable[[list[StepRecord]], None] | None = None,
                 device_step: bool | None = None) -> None:
        self.config = config
        self.monitor = GradMonitor.for_model(model)
        self.device = self.monitor.params[0].device
        self.clipper = make_clipper(config)
        self.detector = detector if detector is not None else detector_for(config)
        self.gate = SkipGate(self.device, spikes=config.on_spike == "skip")
        if sync_every is None:
            sync_every = 1 if self.device.type == "cpu" else 10
        if isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 1:
            raise ValueError(f"sync_every must be an integer >= 1; got {sync_every!r}.")
        self.sync_every = sync_every
        self.host_gate = sync_every == 1
        """synced every step: the host decides from the step's row, no device ops needed."""
        self.on_sync = on_sync
        self.layer_names = tuple(self.monitor.layer_names)
        self.columns = tr.ROW + tr.columns_for(self.layer_names)
        self._buffer = torch.zeros(sync_every, len(self.columns), device=self.device)
        self._one = torch.ones((), device=self.device)
        self._zero = torch.zeros((), device=self.device)
        self.device_step: DeviceStep | None = None
        """the fused post-backward step, when it runs (see ``device_step``)."""
        self.device_step_off: str | None = unsupported(config, self.clipper, self.monitor)
        """why the fused step does not run, or None when it does."""
        split = split_clipper(self.clipper)
        if device_step is None:
            device_step = self.device.type == "cuda" and self.device_step_off is None
        elif device_step and self.device_step_off is not None:
            raise ValueError(f"device_step=True cannot run this config: "
                             f"{self.device_step_off}; pass device_step=None to fall back.")
        if device_step and split is not None:
            self.device_step = DeviceStep(self.monitor, self.gate, split, self._buffer,
                                          norm_type=config.clip_norm_type,
                                          host_gate=self.host_gate, graph=True)
        elif self.device_step_off is None:
            self.device_step_off = "device_step=False" if self.device.type == "cuda" else (
                "not a CUDA device (the eager step is faster on CPU)")
        self._pending = 0
        self._pending_lr: list[float] = []
        self._chunks: list[np.ndarray] = []
        self._lrs: list[float] = []
        self._armed: list[Any] = []  # optimizers holding our found_inf until after_step
        self.step_count = 0
        """optimizer steps recorded so far."""
        self.stats: GradStats | None = None
        self.clip: ClipResult | None = None
        self.verdict: Verdict | None = None
        self.last_record: StepRecord | None = None
        self.overflow_count = 0
        self.skipped_count = 0
        """steps whose update was dropped (spikes, non-finite and fp16 overflow steps)."""
        self.dropped_by: str = "none"
        """how :meth:`before_step` dropped a skipped update: ``found_inf`` (armed on the fused
        optimizer every step on the device path), ``no_grads`` (once a host decision did)."""

    # ------------------------------------------------------------------ the step
    def record(self, loss: Tensor, lr: float, *,
               scaler: torch.amp.GradScaler | None = None) -> Tensor:
        """Measure, decide, clip and record this step (gradients unscaled already); sync at
        the cadence. Returns the skip decision on device (0-d; zero when ``host_gate``: the
        host decided at this step's sync, ``last_record.skipped``)."""
        if self.device_step is not None and scaler is None:
            fused = self.device_step
            grads = fused.load(loss)
            self.stats, self.clip, skip = fused.run()
            if fused.clipper.scales:
                fused.clipper.apply(grads, self.clip)
        else:
            skip = self._eager(loss, scaler)
        self._pending += 1
        self._pending_lr.append(lr)
        self.step_count += 1
        if self._pending >= self.sync_every:
            self.sync()
        return skip

    def _eager(self, loss: Tensor, scaler: torch.amp.GradScaler | None) -> Tensor:
        stats = self.monitor.measure(self.config.clip_norm_type)
        grads = self.monitor.last_grads
        if self.config.grad_standardize and self.monitor.last_index is not None:
            stats = standardize_grads(grads, stats, self.monitor.last_index)
        raw_norm = stats.global_norm
        loss = loss.detach().reshape(()).to(self.device)
        # the skip decision: on device, or on the host at this step's sync (see sync())
        skip = self._zero if self.host_gate else self.gate(loss, raw_norm, stats.nonfinite)
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
        if scaler is not None:
            scale = scale_tensor(scaler, raw_norm)
            overflow = (~torch.isfinite(raw_norm)).float()
        torch.stack((loss.float(), raw_norm, clip.coef, clip.threshold, scale,
                     overflow, stats.nonfinite.float(), skip.float()), out=row[:tr.N_ROW])
        row[tr.N_ROW:].copy_(stats.layer_norms)
        return skip

    # ------------------------------------------------------------------ a loop not ours
    def before_step(self, loss: Tensor, optimizer: torch.optim.Optimizer, *,
                    scaler: torch.amp.GradScaler | None = None) -> None:
        """:meth:`record` this step, then drop its update when it is skipped, for a loop that
        calls its own ``optimizer.step()`` next. Call :meth:`after_step` once it returned."""
        skip = self.record(loss, float(optimizer.param_groups[0]["lr"]), scaler=scaler)
        if self.verdict is not None:  # the verdict's own update is not applied (as the guard)
            self._drop_grads()
        elif self.host_gate:
            if self.last_record is not None and self.last_record.skipped:
                self._drop_grads()
        elif scaler is None and getattr(optimizer, "_step_supports_amp_scaling", False):
            opt: Any = optimizer  # fused: the update is dropped on device, no host sync
            opt.grad_scale, opt.found_inf = None, skip.float()
            self._armed.append(opt)
            self.dropped_by = "found_inf"
        elif bool(skip):  # an unfused optimizer, or a GradScaler's own found_inf: one sync
            self._drop_grads()

    def _drop_grads(self) -> None:
        for p in self.monitor.params:
            p.grad = None
        self.dropped_by = "no_grads"

    def after_step(self) -> None:
        """Take our ``found_inf`` back off the optimizer (it would skip every later step)."""
        for opt in self._armed:
            for name in _FOUND_INF:
                if name in vars(opt):
                    delattr(opt, name)
        self._armed = []

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
        col = tr.COL
        records = []
        for i in range(n):
            values = block[i]
            record = StepRecord(
                step=first_step + i, loss=float(values[col["loss"]]),
                global_norm=float(values[col["grad_norm"]]),
                layer_norms=values[tr.N_ROW:], layer_names=self.layer_names, lr=lrs[i],
                overflow=bool(values[col["overflow"]]),
                nonfinite=int(values[col["nonfinite"]]),
                skipped=bool(values[col["skipped"]]))
            if self.host_gate:
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

    def save(self, out: str | Path) -> Path:
        """Write the run's files to folder ``out`` (see :func:`save_run`)."""
        trace = self.trace()
        return save_run(out, trace, self.verdict, self.diagnosis())


def save_run(out: str | Path, trace: pd.DataFrame, verdict: Verdict | None,
             diagnosis: Diagnosis) -> Path:
    """Write ``trace.parquet``, ``diagnosis.json`` and the two plots (``grad_norm_trace.png``,
    ``layer_heatmap.png``) to folder ``out``; return it."""
    from stability import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trace.to_parquet(out / "trace.parquet")
    (out / "diagnosis.json").write_text(json.dumps(diagnosis.to_dict(), indent=2))
    plots.plot_trace(trace, out / "grad_norm_trace.png", verdict=verdict, diagnosis=diagnosis)
    plots.plot_layer_heatmap(trace, out / "layer_heatmap.png")
    return out
