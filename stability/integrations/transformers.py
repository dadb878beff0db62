"""Hugging Face ``Trainer``: a callback that applies a StabilityConfig and watches every step.

::

    callback = StabilityCallback.from_yaml("best.yaml")
    args = TrainingArguments(output_dir="run1", max_steps=200, **callback.training_args())
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      optimizers=callback.optimizers(model, total_steps=200))
    callback.attach(trainer)   # first in the callback list, so report_to sees the norms
    trainer.train()

What it does, per config field (``pip install stabsweep[transformers]``):

- applied by the callback: ``clip_method`` and every clip parameter, ``clip_norm_type``,
  ``grad_standardize`` (in ``on_pre_optimizer_step``, reusing the measured norms; the
  Trainer's own ``max_grad_norm`` clipping is turned off, since it would clip, by norm only,
  before anything is measured); ``on_spike`` and ``spike_patience``; ``init``, ``init_std``,
  ``init_gain`` (when the Trainer is built or the callback attached, so before a checkpoint is
  loaded; ``apply_init=False`` when fine-tuning a pretrained model).
- applied through :meth:`StabilityCallback.optimizers`, the Trainer's ``optimizers=`` argument
  (a callback cannot replace the Trainer's optimizer): ``optimizer``, ``lr``, ``momentum``,
  ``beta1``, ``beta2``, ``eps``, ``weight_decay``, ``warmup_steps``, ``schedule``,
  ``min_lr_ratio`` (the guard's fused optimizer and schedule, not the Trainer's look-alikes,
  whose warm-up starts at lr 0). Any other optimizer: a warning at train start.
- refused, checked: ``precision`` and ``grad_accum_steps`` are ``TrainingArguments``
  (``bf16`` / ``fp16``, ``gradient_accumulation_steps``) that the Trainer's accelerator fixes
  when it is built (pass :meth:`StabilityCallback.training_args`); a mismatch raises
  ``ConfigError`` at train start. ``fp16_noscale`` and ``loss_scale_*`` other than the
  defaults have no TrainingArguments field.

Skip (``on_spike: skip``) is exact: the hook runs right before ``optimizer.step()``; a fused
optimizer (``optim="adamw_torch_fused"``, or :meth:`optimizers`) takes the skip decision as its
``found_inf`` and drops the update on device, with no host sync; any other optimizer gets no
gradients for that step, which torch's optimizers treat as nothing to update. The Trainer still
counts the step and steps its lr schedule (as the guard does). The loss of a step is read from
the model's output (``outputs.loss``: an HF model given ``labels``), weighted by what the
Trainer back-propagates (its gradient-accumulation scaling), with no host sync; a model that
returns no loss (a ``compute_loss_func``) is refused at its first step.

A verdict sets ``control.should_training_stop`` and writes ``trace.parquet``,
``diagnosis.json`` and the two plots to ``out`` (default ``args.output_dir``). The norms and the
verdict join the Trainer's own log lines (``grad_norm/global``, ``grad_norm/<layer>``,
``stability/*``, every ``logging_steps``): in ``state.log_history`` always, and for the
``report_to`` integrations (MLflow, TensorBoard, ...) when :meth:`attach` put the callback
ahead of them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

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
_DEFAULT = StabilityConfig()


class StabilityCallback(WatchingCallback, TrainerCallback):
    """Applies a :class:`StabilityConfig` inside a Hugging Face ``Trainer`` (see the module doc).

    Args:
        config: the stability settings (or a mapping of them).
        out: folder for ``trace.parquet``, ``diagnosis.json`` and the plots; default
            ``args.output_dir``.
        detector: explosion detector; None: the default composite for ``config.on_spike``.
        sync_every: host transfer cadence (default: every step on CPU, 10 on a GPU).
        apply_init: re-initialise the model's weights with ``config.init``.
        log_layers: also log one ``grad_norm/<layer>`` value per layer.
    """

    NOT_YET = ("has not watched a run yet: attach it to a Trainer and call "
               "trainer.train() first")

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
        self._initialised: set[int] = set()
        self._loss: Tensor | None = None
        self._hook: Any = None

    # ------------------------------------------------------------------ what the user passes on
    def training_args(self) -> dict[str, Any]:
        """``TrainingArguments`` that the config decides: ``bf16`` / ``fp16``,
        ``gradient_accumulation_steps``, and ``max_grad_norm=0`` (the callback clips)."""
        return {"bf16": self.config.precision == "bf16",
                "fp16": self.config.precision == "fp16",
                "gradient_accumulation_steps": self.config.grad_accum_steps,
                "max_grad_norm": 0.0}

    def optimizers(self, model: nn.Module, total_steps: int | None = None
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """``Trainer(optimizers=...)``: the config's (fused) optimizer and its per-step schedule
        (``total_steps``, the optimizer steps, is needed by cosine / linear schedules)."""
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = tag_optimizer(build_optimizer(params, self.config))
        return optimizer, build_scheduler(optimizer, self.config, total_steps)

    def attach(self, trainer: Trainer) -> Trainer:
        """Put this callback first in ``trainer``'s list (ahead of the ``report_to``
        integrations, so its values are in the logs they send) and apply ``init``."""
        handler = trainer.callback_handler
        handler.callbacks = [self, *(c for c in handler.callbacks if c is not self)]
        self._init(trainer.model)
        return trainer

    def _init(self, model: nn.Module | None) -> None:
        if model is None or id(model) in self._initialised:
            return
        self._initialised.add(id(model))
        if self.apply_init and self.config.init != "default":
            init_schemes.apply_init(model, self.config.init, std=self.config.init_std,
                                    gain=self.config.init_gain)

    # ------------------------------------------------------------------ Trainer events
    def on_init_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:
        self._init(kwargs.get("model"))

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:
        _check_args(args, self.config)
        if args.max_grad_norm and args.max_grad_norm > 0:
            log.warning("StabilityCallback: max_grad_norm %s -> 0: the Trainer would clip by "
                        "norm before the callback measures; the config's clip_method %r "
                        "applies instead.", args.max_grad_norm, self.config.clip_method)
            args.max_grad_norm = 0.0
        model: nn.Module = kwargs["model"]
        self.watcher = StepWatcher(model, self.config, detector=self._detector,
                                   sync_every=self._sync_every)
        self._loss, self.saved_to = None, None
        self._hook = model.register_forward_hook(self._on_forward)
        if not built_here(kwargs.get("optimizer")):
            log.warning("StabilityCallback: the Trainer's optimizer was not built from the "
                        "config, so optimizer, lr, warmup_steps and schedule are not applied; "
                        "pass Trainer(optimizers=callback.optimizers(model, total_steps)).")

    def _on_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        if not module.training or not torch.is_grad_enabled():
            return
        loss = (output.get("loss") if isinstance(output, Mapping)
                else getattr(output, "loss", None))
        if isinstance(loss, Tensor) and loss.requires_grad:
            # its gradient is the weight the Trainer gives it (1 / accumulation steps, or 1
            # when the model divided by the tokens of all micro-batches; x the fp16 scale)
            loss.register_hook(functools.partial(self._add_loss, loss.detach().float()))

    def _add_loss(self, value: Tensor, grad: Tensor) -> None:
        weighted = (value * grad.detach().float()).reshape(())
        self._loss = weighted if self._loss is None else self._loss + weighted

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState,
                              control: TrainerControl, **kwargs: Any) -> None:
        watcher, loss = self._watching(), self._loss
        self._loss = None
        if loss is None:
            raise RuntimeError(
                "StabilityCallback found no loss in the model's outputs: it reads "
                "outputs.loss (an HF model returns it when the batch has labels). A loss "
                "computed outside the model (compute_loss_func) is not supported.")
        wrapper = kwargs["optimizer"]
        optimizer = getattr(wrapper, "optimizer", wrapper)  # accelerate's AcceleratedOptimizer
        scaler = getattr(wrapper, "scaler", None)
        if scaler is not None:  # fp16: the Trainer unscales only when it clips
            from torch.amp.grad_scaler import OptState

            if scaler._per_optimizer_states[id(optimizer)]["stage"] is OptState.READY:
                scaler.unscale_(optimizer)
            loss = loss / scaler._scale  # on device: no sync
        watcher.before_step(loss, optimizer, scaler=scaler)
        if watcher.verdict is not None:
            control.should_training_stop = True

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState,
                          control: TrainerControl, **kwargs: Any) -> None:
        self._watching().after_step()

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:
        if self._watching().verdict is not None:
            control.should_training_stop = True
            control.should_log = True  # the verdict goes out with this step's log line

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        watcher = self.watcher
        if watcher is None or watcher.last_record is None or logs is None or "loss" not in logs:
            return  # not a training log line (eval, or before the first step)
        metrics = metrics_of(watcher.last_record, watcher.skipped_count,
                             layers=self.log_layers)
        if watcher.verdict is not None:
            metrics.update(verdict_metrics(watcher.verdict))
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        watcher = self._watching()
        watcher.after_step()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        watcher.sync()
        if state.is_world_process_zero:
            self.saved_to = watcher.save(self.out or Path(args.output_dir or "."))
        if watcher.verdict is not None:
            log.warning("StabilityCallback stopped training: %s (trace, diagnosis.json "
                        "and plots in %s)", watcher.verdict, self.saved_to)


def _refuse(config: StabilityConfig) -> None:  # StabilityCallback.refuse
    if config.precision == "fp16_noscale":
        raise ConfigError("precision 'fp16_noscale' has no TrainingArguments equivalent "
                          "(use fp32, bf16 or fp16).", field="precision")
    for name in ("loss_scale_init", "loss_scale_growth_interval"):
        if config.precision == "fp16" and getattr(config, name) != getattr(_DEFAULT, name):
            raise ConfigError(f"{name} {getattr(config, name)!r} has no TrainingArguments "
                              f"field (the Trainer's GradScaler uses "
                              f"{getattr(_DEFAULT, name)!r}); set it back to that.",
                              field=name)


def _check_args(args: TrainingArguments, config: StabilityConfig) -> None:
    have = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    if have != config.precision:
        flags = {"fp32": "bf16=False, fp16=False", "bf16": "bf16=True",
                 "fp16": "fp16=True"}[config.precision]
        raise ConfigError(f"precision is {config.precision!r} in the config but the Trainer "
                          f"runs {have}; pass TrainingArguments({flags}) "
                          "(callback.training_args() has it).", field="precision")
    if args.gradient_accumulation_steps != config.grad_accum_steps:
        raise ConfigError(f"grad_accum_steps is {config.grad_accum_steps} in the config but "
                          f"gradient_accumulation_steps is {args.gradient_accumulation_steps};"
                          f" pass TrainingArguments(gradient_accumulation_steps="
                          f"{config.grad_accum_steps}).", field="grad_accum_steps")
