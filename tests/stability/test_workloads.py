from __future__ import annotations

import hashlib
import inspect
import math
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from stability.init import apply_init, residual_branch_ends
from stability.workloads import (
    BUILTIN_WORKLOADS,
    Workload,
    WorkloadError,
    describe_workloads,
    load_workload,
)
from stability.workloads.corpus import corpus
from stability.workloads.rnn_adding import CHANCE_MSE

# Small sizes keep every test in the low seconds on two CPU cores.
SMALL: dict[str, dict[str, Any]] = {
    "rnn_adding": {"seq_len": 20, "hidden": 32},
    "deep_mlp": {"depth": 6, "width": 32},
    "transformer_lm": {"d_model": 32, "seq_len": 32},
    "cnn_digits": {"width": 8},
}
# (Adam learning rate, fraction of the initial eval_loss that 50 steps must get below)
TRAIN: dict[str, tuple[float, float]] = {
    "rnn_adding": (1e-2, 0.5),
    "deep_mlp": (3e-3, 0.8),
    "transformer_lm": (1e-2, 0.8),
    "cnn_digits": (1e-2, 0.5),
}


def _flat(batch: Any) -> list[torch.Tensor]:
    return list(batch) if isinstance(batch, tuple | list) else [batch]


def _same_batches(a: list[Any], b: list[Any]) -> bool:
    return all(
        torch.equal(x, y) for ba, bb in zip(a, b) for x, y in zip(_flat(ba), _flat(bb))
    )


def _first(workload: Workload, n: int = 3) -> list[Any]:
    stream = workload.batches()
    return [next(stream) for _ in range(n)]


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", list(BUILTIN_WORKLOADS))
def test_builtin_is_deterministic_by_seed(name: str) -> None:
    a = load_workload(name, seed=0, **SMALL[name])
    b = load_workload(name, seed=0, **SMALL[name])
    c = load_workload(name, seed=1, **SMALL[name])
    assert isinstance(a, Workload)
    assert a.name == name
    assert _same_batches(_first(a), _first(b))
    assert _same_batches(_first(a), _first(a))  # each call restarts the stream
    assert not _same_batches(_first(a), _first(c))
    torch.manual_seed(0)
    rng_before = torch.get_rng_state()
    model_a = a.model()
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    assert _same_state(model_a, b.model())
    assert _same_state(model_a, a.model())
    assert not _same_state(model_a, c.model())


@pytest.mark.parametrize("name", list(BUILTIN_WORKLOADS))
def test_builtin_trains_with_adam(name: str) -> None:
    lr, fraction = TRAIN[name]
    workload = load_workload(name, seed=0, **SMALL[name])
    model = workload.model()
    before = workload.evaluate(model)["eval_loss"]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    stream = workload.batches()
    for _ in range(50):
        loss = workload.loss(model, next(stream))
        assert loss.dim() == 0
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = workload.evaluate(model)
    assert math.isfinite(after["eval_loss"])
    assert after["eval_loss"] < fraction * before, (before, after)


class _Probe(nn.Module):
    """Wraps a model and records the mode and grad state its forward ran under."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, torch.is_grad_enabled()))
        return self.inner(x)


@pytest.mark.parametrize("name", list(BUILTIN_WORKLOADS))
def test_evaluate_runs_in_eval_mode_without_grad_and_restores_modes(name: str) -> None:
    workload = load_workload(name, seed=0, **SMALL[name])
    probe = _Probe(workload.model())
    probe.train()
    probe.inner.eval()  # a mixed state must come back as it was
    metrics = workload.evaluate(probe)
    assert probe.seen and all(seen == (False, False) for seen in probe.seen)
    assert probe.training and not probe.inner.training
    assert isinstance(metrics["eval_loss"], float)
    assert all(isinstance(v, float) for v in metrics.values())


class _Constant(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), self.value)


def test_rnn_adding_chance_level_is_one_sixth() -> None:
    workload = load_workload("rnn_adding", seed=0)
    _, targets = workload.eval_set  # type: ignore[attr-defined]
    # Sum of two U[0, 1]: mean 1, variance 2/12. Predicting the mean scores 1/6.
    assert targets.mean().item() == pytest.approx(1.0, abs=0.02)
    assert ((targets - 1.0) ** 2).mean().item() == pytest.approx(1 / 6, rel=0.05)
    metrics = workload.evaluate(_Constant(1.0))
    assert metrics["eval_loss"] == pytest.approx(0.167, rel=0.05)
    assert metrics["chance_ratio"] == pytest.approx(1.0, rel=0.05)
    assert abs(CHANCE_MSE - 0.1667) < 1e-4
    # The eval loss is the MSE whatever the training loss is.
    huber = load_workload("rnn_adding", seed=0, loss="huber")
    assert huber.evaluate(_Constant(1.0))["eval_loss"] == metrics["eval_loss"]
    batch = next(huber.batches())
    model = _Constant(3.0)  # error 1 to 2.8 per sample: huber = |e| - 0.5 < mse = e^2
    assert huber.loss(model, batch).item() < workload.loss(model, batch).item()


def test_rnn_adding_inputs_mark_one_step_in_each_half() -> None:
    x, y = next(load_workload("rnn_adding", seed=3, seq_len=10, batch_size=256).batches())
    assert x.shape == (256, 10, 2)
    markers = x[..., 1]
    assert torch.all(markers[:, :5].sum(dim=1) == 1) and torch.all(markers[:, 5:].sum(dim=1) == 1)
    assert torch.allclose((x[..., 0] * markers).sum(dim=1), y)


def test_deep_mlp_targets_have_unit_variance() -> None:
    workload = load_workload("deep_mlp", seed=0)
    _, y = workload.eval_set  # type: ignore[attr-defined]
    assert y.var().item() == pytest.approx(1.0, rel=0.1)
    assert abs(y.mean().item()) < 0.1
    model = workload.model()
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 16


def _run_sgd(lr: float, steps: int, clip: float | None) -> tuple[int | None, list[float]]:
    """Plain SGD on the default deep_mlp; returns (first step with a blown-up loss, norms)."""
    workload = load_workload("deep_mlp", seed=0)
    model = workload.model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    stream = workload.batches()
    norms: list[float] = []
    for step in range(steps):
        loss = workload.loss(model, next(stream))
        optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip or math.inf)
        norms.append(norm.item())
        if not math.isfinite(loss.item()) or loss.item() > 1e6:
            return step, norms
        optimizer.step()
    return None, norms


def test_deep_mlp_explodes_with_high_lr_sgd_and_clipping_prevents_it() -> None:
    exploded_at, norms = _run_sgd(lr=1.5, steps=300, clip=None)
    assert exploded_at is not None and exploded_at < 30
    # The gradient norm grows step after step before the loss blows up.
    assert norms[exploded_at - 1] > 100 * norms[0]
    clipped_at, clipped_norms = _run_sgd(lr=1.5, steps=300, clip=1.0)
    assert clipped_at is None
    assert all(math.isfinite(n) for n in clipped_norms)


def test_transformer_marks_residual_branch_ends_and_norm_placement_matters() -> None:
    post = load_workload("transformer_lm", seed=0, n_layers=2, **SMALL["transformer_lm"])
    model = post.model()
    assert residual_branch_ends(model) == [
        "blocks.0.proj", "blocks.0.fc_out", "blocks.1.proj", "blocks.1.fc_out",
    ]
    batch = next(post.batches())
    apply_init(model, "residual_zero")
    assert model.blocks[0].proj.weight.abs().sum().item() == 0
    assert math.isfinite(post.loss(model, batch).item())
    pre = load_workload("transformer_lm", seed=0, norm="pre", **SMALL["transformer_lm"])
    pre_model = pre.model()
    assert isinstance(pre_model.ln_f, nn.LayerNorm)
    assert pre.loss(pre_model, batch).item() != post.loss(post.model(), batch).item()


def test_transformer_corpus_is_fixed_text() -> None:
    text = corpus()
    assert len(text) == 200_000
    assert text.startswith("A deep stack stalls while each worker recovers after warm-up")
    # Any change to the generator changes this digest (and every eval loss ever recorded).
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert digest == "997152467fde86d4f771c4b06ce6fde378e541e725af23caf43d20d21e499a32"
    workload = load_workload("transformer_lm", seed=0)
    assert len(workload.vocab) == len(set(text))  # type: ignore[attr-defined]
    assert workload.evaluate(workload.model())["eval_loss"] == pytest.approx(
        math.log(len(set(text))), rel=0.1
    )


def test_cnn_digits_split_is_disjoint_and_fixed_by_seed() -> None:
    a = load_workload("cnn_digits", seed=0)
    b = load_workload("cnn_digits", seed=1)
    n_train, n_test = len(a.train_labels), len(a.eval_set[1])  # type: ignore[attr-defined]
    assert (n_train, n_test) == (1797 - 359, 359)
    train = {tuple(img.flatten().tolist()) for img in a.train_images}  # type: ignore[attr-defined]
    test = {tuple(img.flatten().tolist()) for img in a.eval_set[0]}  # type: ignore[attr-defined]
    assert len(train & test) < 10  # the dataset holds a few exact duplicate images
    assert not torch.equal(a.eval_set[1], b.eval_set[1])  # type: ignore[attr-defined]
    metrics = a.evaluate(a.model())
    assert metrics["eval_loss"] == pytest.approx(math.log(10), rel=0.05)
    assert 0.0 <= metrics["accuracy"] <= 0.3


def test_describe_workloads_reads_signatures() -> None:
    rows = {row["name"]: row for row in describe_workloads()}
    assert list(rows) == list(BUILTIN_WORKLOADS)
    assert rows["rnn_adding"]["arguments"] == {
        "seq_len": 50, "hidden": 64, "batch_size": 64, "loss": "mse",
    }
    assert rows["deep_mlp"]["arguments"]["depth"] == 16
    assert rows["transformer_lm"]["arguments"]["norm"] == "post"
    assert rows["cnn_digits"]["arguments"] == {"batch_size": 64, "width": 16}
    for name, row in rows.items():
        assert row["description"] and "\n" not in row["description"]
        params = inspect.signature(BUILTIN_WORKLOADS[name]).parameters
        assert list(params)[:2] == ["seed", "device"]


# ---------------------------------------------------------------- loader errors

def _message(spec: str, **kwargs: Any) -> str:
    with pytest.raises(WorkloadError) as info:
        load_workload(spec, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_builtin_lists_builtins_and_the_module_form() -> None:
    message = _message("mnist")
    assert "'mnist'" in message
    for name in BUILTIN_WORKLOADS:
        assert name in message
    assert "package.module:factory" in message
    assert "'mypkg:make'" in _message("mypkg.make")


def test_unknown_builtin_argument_is_named_with_valid_ones() -> None:
    message = _message("rnn_adding", hiden=8)
    assert "'hiden'" in message
    assert "seq_len, hidden, batch_size, loss" in message


def test_bad_builtin_values_name_the_argument() -> None:
    assert "loss must be one of mse, huber; got 'l1'" in _message("rnn_adding", loss="l1")
    assert "depth must be >= 2; got 1" in _message("deep_mlp", depth=1)
    message = _message("transformer_lm", d_model=30, n_heads=4)
    assert "d_model must be divisible by n_heads" in message and "d_model=30" in message
    assert "device 'gpu0'" in _message("cnn_digits", device="gpu0")
    assert "seed must be >= 0; got -1" in _message("deep_mlp", seed=-1)
    if not torch.cuda.is_available():
        assert "'cuda' is not available" in _message("deep_mlp", device="cuda")


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    source = '''
        from __future__ import annotations

        import torch
        import torch.nn.functional as F
        from torch import nn


        class Linear1D:
            name = "linear_1d"

            def __init__(self, seed, device, slope=2.0):
                self.seed, self.device, self.slope = seed, torch.device(device), slope

            def model(self):
                torch.manual_seed(self.seed)
                return nn.Linear(1, 1).to(self.device)

            def batches(self):
                gen = torch.Generator().manual_seed(self.seed + 1)
                while True:
                    x = torch.randn(32, 1, generator=gen)
                    yield x, self.slope * x

            def loss(self, model, batch):
                x, y = batch
                return F.mse_loss(model(x), y)

            def evaluate(self, model):
                x = torch.linspace(-1, 1, 11).unsqueeze(1)
                with torch.no_grad():
                    return {"eval_loss": F.mse_loss(model(x), self.slope * x).item()}


        def make(seed=0, device="cpu", slope=2.0):
            return Linear1D(seed, device, slope)


        def make_int(seed=0, device="cpu"):
            return 7


        def make_raising(seed=0, device="cpu"):
            raise ValueError("bad slope -1")


        def make_no_device(seed=0):
            return Linear1D(seed, "cpu")


        class NoModule(Linear1D):
            def model(self):
                return "not a module"


        def make_bad_model(seed=0, device="cpu"):
            return NoModule(seed, device)


        NOT_CALLABLE = 3
    '''
    (tmp_path / "user_wl_mod.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_wl_mod"
    sys.modules.pop("user_wl_mod", None)


def test_user_workload_loads_by_module_and_factory(user_module: str) -> None:
    workload = load_workload(f"{user_module}:make", seed=4, slope=3.0)
    assert workload.name == "linear_1d"
    x, y = next(workload.batches())
    assert torch.allclose(y, 3.0 * x)
    model = workload.model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = workload.evaluate(model)["eval_loss"]
    for batch, _ in zip(workload.batches(), range(100)):
        optimizer.zero_grad()
        workload.loss(model, batch).backward()
        optimizer.step()
    assert workload.evaluate(model)["eval_loss"] < 1e-3 < before


def test_user_workload_errors_name_the_spec_and_the_cause(user_module: str) -> None:
    message = _message("no_such_pkg.mod:make")
    assert "'no_such_pkg.mod:make' could not be imported" in message
    assert "No module named 'no_such_pkg'" in message
    message = _message(f"{user_module}:missing")
    assert f"'{user_module}:missing'" in message and "no attribute 'missing'" in message
    message = _message(f"{user_module}:NOT_CALLABLE")
    assert "is a int, not callable" in message
    message = _message(f"{user_module}:make_int")
    assert message == (
        f"workload '{user_module}:make_int' returned int, which lacks model(), batches(), "
        "loss(), evaluate()."
    )
    message = _message(f"{user_module}:make_raising")
    assert message == f"workload '{user_module}:make_raising' raised ValueError: bad slope -1"
    message = _message(f"{user_module}:make", slop=1.0)
    assert f"'{user_module}:make' rejects the arguments" in message and "'slop'" in message
    message = _message(f"{user_module}:make_no_device")
    assert "rejects the arguments" in message and "device" in message
    message = _message(f"{user_module}:make_bad_model")
    assert "model() returned str" in message and "nn.Module" in message
    assert "must have the form" in _message(f"{user_module}:")
