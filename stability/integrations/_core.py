"""The guard's step without the loop: measure, skip decision, clip, record, detect.

:class:`StepWatcher` is what a framework callback runs between the framework's backward and its
``optimizer.step()``. It is built from the guard's own parts (``GradMonitor``, ``SkipGate``,
``make_clipper``, the default detector, the ``stability.trace`` row layout), in the guard's
order::

    measure (one foreach pass) -> skip decision (on device, or on the host at a per-step sync)
    -> [standardise] -> clip (reuses the norms) -> record on device -> at the sync cadence: one
    host transfer, detectors replayed step by step -> drop the update when skipped

The framework then calls its own ``optimizer.step()``. A skipped update is dropped in one of two
exact ways (:meth:`StepWatcher.before_step`): a fused torch optimizer (``fused=True``; what
``build_optimizer`` makes) gets the skip decision as its ``found_inf`` tensor, which drops the
update on device with no host sync; any other optimizer has its gradients set to ``None`` on a
host decision, and torch's optimizers leave a parameter without a gradient untouched (weights,
moments and step count). The guard's ``guard.py`` is not imported: the two share the parts,
not the loop.
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
from stability.clipping import ClipResult, make_clipper, standardize_grads
from stability.config import StabilityConfig
from stability.detectors import Detector, detector_for
from stability.gate import SkipGate
from stability.precision import scale_tensor
from stability.records import StepRecord, Verdict
from stability.stats import GradMonitor, GradStats

if TYPE_CHECKING:
    from stability.diagnose import Diagnosis

_FOUND_INF = ("grad_scale", "found_inf")


class StepWatcher:
    """Watches the optimizer steps of a loop someone else runs (a framework's trainer).

    Args:
        model: the model being trained (its trainable parameters are measured per module).
        config: the stability settings (clipping, ``on_spike``, ``spike_patience``).
        detector: explosion detector; None: the default composite for ``config.on_spike``.
        sync_every: host transfer cadence in optimizer steps. Default: every step on CPU,
            10 on accelerators (no per-step sync with a fused optimizer).
        on_sync: called with the new StepRecords after each host transfer.
    """

    def __init__(self, model: nn.Module, config: StabilityConfig, *,
                 detector: Detector | None = None, sync_every: int | None = None,
                 on_sync: Callable[[list[StepRecord]], None] | None = None) -> None:
        self.config = config
        self.monitor = GradMonitor.for_model(model)
        self.device = self.monitor.params[0].device
        self.clipper = make_clipper(config)
        self.detector = detector if detector is not None else detector_for(config)
        self.gate = SkipGate(self.device, spikes=config.on_spike == "skip")
        if sync_every is None:
            sync_every = 1 if self.device.type == "cpu" else 10
        if not isinstance(sync_every, int) or sync_every < 1:
            raise ValueError(f"sync_every must be an integer >= 1; got {sync_every!r}.")
        self.sync_every = sync_every
        self._host_gate = sync_every == 1
        self.on_sync = on_sync
        self.layer_names = tuple(self.monitor.layer_names)
        self.columns = tr.ROW + tr.columns_for(self.layer_names)
        self._buffer = torch.zeros(sync_every, len(self.columns), device=self.device)
        self._one = torch.ones((), device=self.device)
        self._zero = torch.zeros((), device=self.device)
        self._pending = 0
        self._pending_lr: list[float] = []
        self._chunks: list[np.ndarray] = []
        self._lrs: list[float] = []
        self._armed: list[Any] = []  # optimizers holding our found_inf until after_step
        self.step_count = 0
        self.stats: GradStats | None = None
        self.clip: ClipResult | None = None
        self.verdict: Verdict | None = None
        self.last_record: StepRecord | None = None
        self.skipped_count = 0
        self.overflow_count = 0
        self.dropped_by: str = "none"
        """how a skipped update is dropped: ``found_inf`` (armed on the fused optimizer every
        step on the device path), ``no_grads`` (set once a host decision dropped one)."""

    # ------------------------------------------------------------------ the step
    def before_step(self, loss: Tensor, optimizer: torch.optim.Optimizer, *,
                    scaler: torch.amp.GradScaler | None = None) -> None:
        """Measure, decide, clip and record this step; drop its update when it is skipped.

        ``loss`` is the step's loss (0-d, on device, unscaled); the gradients must be
        unscaled already. Call :meth:`after_step` once the framework's ``optimizer.step()``
        has returned.
        """
        stats = self.monitor.measure(self.config.clip_norm_type)
        grads = self.monitor.last_grads
        if self.config.grad_standardize and self.monitor.last_index is not None:
            stats = standardize_grads(grads, stats, self.monitor.last_index)
        raw_norm = stats.global_norm
        loss = loss.detach().reshape(()).float().to(self.device)
        skip = self._zero if self._host_gate else self.gate(loss, raw_norm, stats.nonfinite)
        clip = self.clipper(self.monitor.params, grads, stats)
        self.monitor.last_grads = []
        self.stats, self.clip = stats, clip
        row = self._buffer[self._pending]
        scale, overflow = self._one, self._zero
        if scaler is not None:
            scale = scale_tensor(scaler, raw_norm)
            overflow = (~torch.isfinite(raw_norm)).float()
        torch.stack((loss, raw_norm, clip.coef, clip.threshold, scale, overflow,
                     stats.nonfinite.float(), skip.float()), out=row[:tr.N_ROW])
        row[tr.N_ROW:].copy_(stats.layer_norms)
        self._pending += 1
        self._pending_lr.append(float(optimizer.param_groups[0]["lr"]))
        self.step_count += 1
        if self._pending >= self.sync_every:
            self.sync()
        if self.verdict is not None:  # the verdict's own update is not applied (as the guard)
            self._drop_grads()
        elif self._host_gate:
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
        """Every recorded optimizer step, with the guard's columns (``stability.trace``)."""
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
        from stability.diagnose import diagnose

        return diagnose(self.trace(), self.verdict, self.config)

    def save(self, out: str | Path) -> Path:
        """Write ``trace.parquet``, ``diagnosis.json``, ``grad_norm_trace.png`` and
        ``layer_heatmap.png`` to folder ``out`` (the files ``TrainResult.save`` writes)."""
        from stability import plots

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        trace = self.trace()
        diagnosis = self.diagnosis()
        trace.to_parquet(out / "trace.parquet")
        (out / "diagnosis.json").write_text(json.dumps(diagnosis.to_dict(), indent=2))
        plots.plot_trace(trace, out / "grad_norm_trace.png", verdict=self.verdict,
                         diagnosis=diagnosis)
        plots.plot_layer_heatmap(trace, out / "layer_heatmap.png")
        return out


def metrics_of(record: StepRecord, skipped_total: int, *, layers: bool = True
               ) -> dict[str, float]:
    """The values a framework logger gets for one step (keys as the sweep's MLflow runs use:
    ``grad_norm/global``, ``grad_norm/<layer>``, then ``stability/*``)."""
    out = {"grad_norm/global": record.global_norm,
           "stability/skipped_steps": float(skipped_total),
           "stability/nonfinite_grads": float(record.nonfinite)}
    if layers:
        for name, value in zip(record.layer_names, record.layer_norms.tolist(), strict=True):
            out[f"grad_norm/{name}"] = float(value)
    return out


def verdict_metrics(verdict: Verdict) -> dict[str, float]:
    return {"stability/exploded": 1.0, "stability/verdict_step": float(verdict.step)}


def tag_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Mark an optimizer as built from the config (a callback then knows lr, optimizer and
    schedule are in force)."""
    optimizer._stabsweep_built = True  # type: ignore[attr-defined]
    return optimizer


def built_here(optimizer: Any) -> bool:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate / Lightning wrappers
    return bool(getattr(inner, "_stabsweep_built", False) or
                getattr(optimizer, "_stabsweep_built", False))
