"""The Hugging Face Trainer callback against StabilityGuard on a 2-layer, 64-dim GPT-2 built
from its config class (nothing downloaded): the same weights, the same batches."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from stability import StabilityGuard
from stability.config import ConfigError, StabilityConfig
from stability.integrations.transformers import StabilityCallback

VOCAB, LENGTH = 64, 16


def _model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=64, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def _dataset(n: int = 256) -> list[dict[str, torch.Tensor]]:
    """Counting sequences mod VOCAB from random starts: learnable, and no download."""
    gen = torch.Generator().manual_seed(1)
    starts = torch.randint(0, VOCAB, (n, 1), generator=gen)
    ids = (starts + torch.arange(LENGTH)) % VOCAB
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


class _Batches(TrainerCallback):
    """Records what the Trainer feeds the model (the keyword arguments of each forward)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        def record(module: Any, args: Any, kw: dict[str, Any]) -> None:
            if module.training:
                self.calls.append({k: v.clone() if isinstance(v, torch.Tensor) else v
                                   for k, v in kw.items()})
        kwargs["model"].register_forward_pre_hook(record, with_kwargs=True)


def _train(config: StabilityConfig, steps: int, tmp_path: Path, *, report_to: str = "none",
           extra: list[TrainerCallback] | None = None, **kwargs: Any
           ) -> tuple[StabilityCallback, GPT2LMHeadModel, Trainer, GPT2LMHeadModel, _Batches]:
    model = _model()
    initial = copy.deepcopy(model)
    callback = StabilityCallback(config, out=tmp_path / "run", **kwargs)
    batches = _Batches()
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=steps,
                             per_device_train_batch_size=8, logging_steps=1,
                             report_to=report_to, save_strategy="no", use_cpu=True,
                             disable_tqdm=True, seed=0, **callback.training_args())
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(),
                      callbacks=[batches, *(extra or [])],
                      optimizers=callback.optimizers(model, total_steps=steps))
    callback.attach(trainer)
    trainer.train()
    return callback, model, trainer, initial, batches


def _guard(config: StabilityConfig, model: GPT2LMHeadModel, calls: list[dict[str, Any]],
           steps: int) -> StabilityGuard:
    """The guard's loop over the very forwards the Trainer made (same weights, same batches,
    same loss arguments)."""
    guard = StabilityGuard(model, config, total_steps=steps)
    model.train()
    for kw in calls:
        if guard.step(model(**kw).loss):
            break
    guard.close()
    return guard


COMPARED = ["loss", "grad_norm", "clip_coef", "lr", "skipped"]


@pytest.mark.parametrize("clip", [
    {"clip_method": "norm", "clip_threshold": 0.5},
    {"clip_method": "autoclip", "autoclip_percentile": 10.0},
])
def test_clipping_matches_the_guard(clip: dict[str, Any], tmp_path: Path) -> None:
    config = StabilityConfig(optimizer="adamw", lr=3e-3, warmup_steps=4, **clip)
    callback, model, _, initial, batches = _train(config, 12, tmp_path)
    guard = _guard(config, initial, batches.calls, 12)
    ours, theirs = callback.trace(), guard.trace()
    assert len(ours) == len(theirs) == 12
    assert (ours["clip_coef"] < 0.999).any(), "the thresholds were chosen to clip"
    pd.testing.assert_frame_equal(ours[COMPARED], theirs[COMPARED], rtol=1e-5)
    layers = [c for c in theirs.columns if c.startswith("grad_norm/")]
    np.testing.assert_allclose(ours[layers], theirs[layers], rtol=1e-5)
    for mine, ref in zip(model.parameters(), initial.parameters(), strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-6)


def test_blow_up_stopped_at_the_guards_verdict_step(tmp_path: Path) -> None:
    config = StabilityConfig(optimizer="sgd", momentum=0.0, lr=30.0, warmup_steps=40)
    callback, _, trainer, initial, batches = _train(config, 60, tmp_path)
    guard = _guard(config, initial, batches.calls, 60)
    assert guard.verdict is not None and callback.verdict is not None
    assert (callback.verdict.kind, callback.verdict.step) == (guard.verdict.kind,
                                                              guard.verdict.step)
    assert trainer.state.global_step == guard.step_count < 60
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"trace.parquet", "diagnosis.json",
                                               "grad_norm_trace.png", "layer_heatmap.png"}
    assert json.loads((run / "diagnosis.json").read_text())["verdict_step"] == guard.verdict.step


class _Poison(TrainerCallback):
    """An inf gradient on one weight at optimizer step ``at``, put there during backward (the
    loss stays finite), and a snapshot of that weight and of Adam's step count after every
    step."""

    def __init__(self, at: int) -> None:
        self.at, self.backward_calls = at, 0
        self.weights: list[torch.Tensor] = []
        self.adam_steps: list[float] = []

    @staticmethod
    def _weight(model: Any) -> torch.Tensor:
        return model.transformer.h[0].mlp.c_fc.weight

    def _poison(self, grad: torch.Tensor) -> torch.Tensor:
        self.backward_calls += 1
        return torch.full_like(grad, math.inf) if self.backward_calls == self.at + 1 else grad

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._weight(kw["model"]).register_hook(self._poison)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        weight = self._weight(kw["model"])
        self.weights.append(weight.detach().clone())
        self.adam_steps.append(float(kw["optimizer"].optimizer.state[weight]["step"]))


@pytest.mark.parametrize("sync_every", [1, 4], ids=["host-gate", "found-inf"])
def test_a_non_finite_update_is_skipped(sync_every: int, tmp_path: Path) -> None:
    poison = _Poison(at=5)
    config = StabilityConfig(optimizer="adamw", lr=3e-3)
    callback, _, trainer, _, _ = _train(config, 10, tmp_path, extra=[poison],
                                        sync_every=sync_every)
    trace = callback.trace()
    assert callback.watcher is not None
    assert callback.watcher.dropped_by == ("no_grads" if sync_every == 1 else "found_inf")
    assert trace["skipped"].tolist() == [i == 5 for i in range(10)]
    assert trace["nonfinite"].iloc[5] >= 1 and math.isfinite(trace["loss"].iloc[5])
    assert callback.verdict is None and trainer.state.global_step == 10
    assert torch.equal(poison.weights[5], poison.weights[4])
    assert not torch.equal(poison.weights[6], poison.weights[5])
    assert poison.adam_steps == [1, 2, 3, 4, 5, 5, 6, 7, 8, 9]


def test_norms_reach_report_to_and_the_log_history(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "hf-stability")
    config = StabilityConfig(optimizer="adamw", lr=3e-3, clip_method="norm", clip_threshold=0.5)
    callback, _, trainer, _, _ = _train(config, 6, tmp_path, report_to="mlflow")
    trace = callback.trace()
    history = [h for h in trainer.state.log_history if "grad_norm/global" in h]
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([h["grad_norm/global"] for h in history], trace["grad_norm"],
                               rtol=1e-6)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("hf-stability")
    assert experiment is not None
    run = client.search_runs([experiment.experiment_id])[0]
    layer = next(c for c in trace.columns if c.startswith("grad_norm/") and ".h.00.attn" in c)
    for key, column in (("grad_norm/global", "grad_norm"), (layer, layer)):
        points = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in points] == [1, 2, 3, 4, 5, 6]
        np.testing.assert_allclose([m.value for m in points], trace[column], rtol=1e-6)


def test_arguments_that_disagree_with_the_config_are_refused(tmp_path: Path) -> None:
    callback = StabilityCallback(StabilityConfig(precision="bf16"))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to="none",
                             use_cpu=True, save_strategy="no")
    model = _model()
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(16),
                      optimizers=callback.optimizers(model))
    callback.attach(trainer)
    with pytest.raises(ConfigError, match=r"bf16=True") as err:
        trainer.train()
    assert err.value.field == "precision"
    with pytest.raises(ConfigError, match="fp16_noscale"):
        StabilityCallback(StabilityConfig(precision="fp16_noscale"))
