"""The guard's device work after backward, as one function replayed as a CUDA graph.

After ``backward`` the guard reduces the per-tensor gradient norms to layer and global norms,
counts non-finite tensors, decides whether to skip the update, computes the clip coefficient
and writes the step's trace row. That is ~40 tiny kernels: on a launch-bound GPU step (a few
milliseconds, mostly Python and kernel launches) they cost 10-18% of the step when launched one
by one. :class:`DeviceStep` does all of it as one function of two static inputs, the stacked
per-tensor norms and the loss, and on CUDA captures it once as a CUDA graph: every later step
is one ``cudaGraphLaunch``. What touches the gradients themselves (``torch._foreach_norm``
before, the clip's ``_foreach_mul_`` after) stays outside the graph, since gradient tensors are
new every step; that is the same work ``clip_grad_norm_`` launches in a bare loop.

The function is the same whether captured or not: on the CPU (or before the capture, or when
a capture fails) it runs eagerly, so CPU tests check the numbers a GPU replays. Its math is
the guard's eager step (:mod:`stability.guard`) op for op; the trace row goes to a
device-side slot so the graph writes a new row each replay without the host.

It applies when nothing in the step needs a host branch or gradients at fixed addresses: no
loss scaler (fp32, bf16, fp16_noscale), no gradient standardisation, a clipper that splits
into ``plan`` (device math on the statistics) and ``apply`` (``none``, ``norm``), and float32
parameters. :func:`unsupported` names what stops it; the guard then runs its eager step.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from stability import trace as tr
from stability.clipping import ClipResult, SplitClipper, split_clipper
from stability.config import StabilityConfig
from stability.gate import SkipGate
from stability.stats import GradMonitor, GradStats, reduce_norms


def unsupported(config: StabilityConfig, clipper: object, monitor: GradMonitor) -> str | None:
    """Why the device step cannot run this config, or None when it can."""
    if config.precision == "fp16":
        return "precision fp16 unscales through GradScaler (a host-side step)"
    if config.grad_standardize:
        return "grad_standardize scales each gradient by its layer's norm in the step"
    if split_clipper(clipper) is None:
        return f"clip_method {config.clip_method} keeps host-side state or re-reads gradients"
    if any(p.dtype != torch.float32 for p in monitor.params):
        return "parameters that are not float32"
    if len({p.device for p in monitor.params}) != 1:
        return "parameters on more than one device"
    return None


class DeviceStep:
    """Post-backward statistics, skip decision, clip plan and trace row, on device.

    Args:
        monitor: the guard's gradient monitor (parameters, layers, layer index).
        gate: the guard's skip gate; ``host_gate`` leaves the decision to the host.
        clipper: a split clipper (``plan`` / ``apply``).
        buffer: the guard's ``[rows, columns]`` device trace buffer; row ``slot`` is written.
        graph: capture a CUDA graph once the gate's warm-up is over (CUDA only).
    """

    def __init__(self, monitor: GradMonitor, gate: SkipGate, clipper: SplitClipper,
                 buffer: Tensor,
                 *, norm_type: float, host_gate: bool, graph: bool) -> None:
        self.monitor, self.gate, self.clipper, self.buffer = monitor, gate, clipper, buffer
        self.norm_type, self.host_gate = norm_type, host_gate
        device = buffer.device
        n = len(monitor.params)
        self._in = torch.zeros(n + 1, device=device)
        """the step's per-tensor norms, then its loss (written by ``load``)."""
        self._index = torch.tensor(monitor.layer_of_param, device=device)
        self._no_norm = torch.zeros((), device=device)
        self._one = torch.ones((), device=device)
        self._zero = torch.zeros((), device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        """the buffer row the next step writes (host resets it after an early sync)."""
        self.graph_enabled = graph and device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_error: str | None = None
        self._outputs: tuple[GradStats, ClipResult, Tensor] | None = None
        self._eager_runs = 0

    # ------------------------------------------------------------------ per step
    def load(self, loss: Tensor) -> list[Tensor]:
        """Measure every gradient tensor (one foreach pass) and stage the norms and the loss
        as the function's input; returns the gradients present (for the clip's ``apply``)."""
        params = self.monitor.params
        grads = [p.grad for p in params]
        loss = loss.detach().reshape(())
        if loss.dtype != torch.float32:
            loss = loss.float()
        if all(g is not None for g in grads):
            present: list[Tensor] = grads  # type: ignore[assignment]
            norms = list(torch._foreach_norm(present, self.norm_type))
        else:  # a parameter without a gradient this step measures 0 (adds nothing)
            present = [g for g in grads if g is not None]
            measured = iter(torch._foreach_norm(present, self.norm_type) if present else [])
            norms = [next(measured) if g is not None else self._no_norm for g in grads]
        torch.stack([*norms, loss], out=self._in)
        return present

    def run(self) -> tuple[GradStats, ClipResult, Tensor]:
        """The step's statistics, clip plan and skip flag (float 0/1), as device tensors."""
        if self.graph is not None:
            self.graph.replay()
            assert self._outputs is not None
            return self._outputs
        if self.graph_enabled and self._ready():
            captured = self._capture()
            if captured is not None:
                return captured
        self._eager_runs += 1
        return self._work()

    def _ready(self) -> bool:
        # The gate's warm-up takes a host branch per step; the graph records the steady one.
        # Two eager runs first: every op has run once (lazy initialisation) before capture.
        return self._eager_runs >= 2 and not (self.gate.spikes and not self.host_gate
                                              and self.gate.warming_up)

    def _capture(self) -> tuple[GradStats, ClipResult, Tensor] | None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                outputs = self._work()
        except Exception as exc:  # a capture that fails leaves the eager path, never a crash
            self.graph_enabled = False
            self.graph_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            warnings.warn(f"StabilityGuard: CUDA graph capture failed ({self.graph_error}); "
                          "the guard's step runs eagerly.", RuntimeWarning, stacklevel=4)
            # The eager run below must start from the same slot the failed capture saw.
            return None
        self.graph, self._outputs = graph, outputs
        graph.replay()  # a capture records the kernels without running them
        return outputs

    def _work(self) -> tuple[GradStats, ClipResult, Tensor]:
        """The function captured: inputs ``_in`` and the state tensors, outputs returned."""
        param_norms, loss = self._in[:-1], self._in[-1]
        layer_norms, global_norm = reduce_norms(param_norms, self._index,
                                                self.monitor.n_layers, self.norm_type)
        nonfinite = (~torch.isfinite(param_norms)).sum()
        stats = GradStats(global_norm, layer_norms, param_norms, nonfinite, self.norm_type)
        skip = self._zero if self.host_gate else self.gate(loss, global_norm, nonfinite).float()
        clip = self.clipper.plan(stats)
        # the columns of stability.trace.ROW: loss, norm, coef, threshold, scale (1: no
        # scaler here), overflow (0), non-finite tensors, skipped; then the layer norms
        head = torch.stack((loss, global_norm, clip.coef, clip.threshold, self._one,
                            self._zero, nonfinite.float(), skip))
        self.buffer.index_copy_(0, self.slot, torch.cat((head, layer_norms)).unsqueeze(0))
        self.slot.add_(1).remainder_(self.buffer.shape[0])
        return stats, clip, skip

    def rewind(self) -> None:
        """The host read the buffer before it was full: the next step writes row 0."""
        self.slot.zero_()


assert tr.N_ROW == 8, "DeviceStep writes the eight columns of stability.trace.ROW"
