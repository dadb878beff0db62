"""sweeps.driver.preflight: a workload that cannot be built is one line naming the field at
fault and the fix (issue 22 item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeps.common import SweepError
from sweeps.driver.preflight import preflight
from sweeps.spec import parse_spec
from tests.sweep_helpers import small_spec


def test_a_bad_fixed_argument_is_named_by_its_field() -> None:
    spec = parse_spec(small_spec(workload={"name": "deep_mlp", "args": {"depth": "deep"}}))
    with pytest.raises(SweepError) as info:
        preflight(spec)
    assert str(info.value).startswith("workload.args.depth: workload 'deep_mlp': depth must ")
    assert str(info.value).endswith("; fix workload.args.depth in the spec")


def test_a_missing_factory_lists_what_the_module_defines(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "preflight_wl.py").write_text(
        "from stability.workloads import load_workload\n\n"
        "def make(seed=0, device='cpu', **args):\n"
        "    return load_workload('deep_mlp', seed=seed, device=device, depth=2, width=4)\n\n"
        "def other(seed=0, device='cpu'):\n    return make(seed, device)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = parse_spec(small_spec(workload={"name": "preflight_wl:nope"}))
    with pytest.raises(SweepError) as info:
        preflight(spec)
    assert str(info.value) == (
        "workload.name: 'preflight_wl' has no factory 'nope'; name one it defines (make, other)"
        " as preflight_wl:<name>, or define nope(seed=0, device='cpu', **args) in preflight_wl")


def test_train_says_the_same_of_a_missing_factory(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from sweeps.cli import app

    (tmp_path / "train_wl.py").write_text("def make(seed=0, device='cpu'):\n    pass\n")
    (tmp_path / "c.yaml").write_text("lr: 0.01\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "c.yaml"), "-w", "train_wl:nope",
                                      "--steps", "2"])
    assert result.exit_code == 2, result.output
    assert ("'train_wl' has no factory 'nope'; name one it defines (make) as train_wl:<name>"
            in " ".join(result.output.split()))
