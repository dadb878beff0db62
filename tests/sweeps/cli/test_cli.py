"""CLI argument handling without Ray: one-line errors, exit codes, nothing written."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from sweeps.cli import app
from tests.sweep_helpers import small_spec, write_spec

runner = CliRunner()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", "0"], "--workers must be >= 1; got 0"),
        (["--workers", "-1"], "--workers must be >= 1; got -1"),
        (["--n-trials", "0"], "--n-trials must be >= 1; got 0"),
        (["--cpus-per-trial", "0"], "--cpus-per-trial must be > 0"),
        (["--max-retries", "-1"], "--max-retries must be >= 0"),
    ],
)
def test_bad_run_flags_exit_2_and_write_nothing(tmp_path, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path / "s.yaml", small_spec())
    result = runner.invoke(app, ["run", str(spec), "--no-tracking", *flags])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "stabsweep.db").exists()


def test_unreachable_tracking_server_fails_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path / "s.yaml", small_spec())
    result = runner.invoke(app, ["run", str(spec), "--tracking-uri", "http://127.0.0.1:1"])
    assert result.exit_code == 2
    assert "the MLflow server does not answer" in result.output
    assert "--no-tracking" in result.output
    assert not (tmp_path / "stabsweep.db").exists()


def test_train_steps_must_be_positive(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"lr": 0.01}))
    result = runner.invoke(app, ["train", str(config), "-w", "deep_mlp", "--steps", "0"])
    assert result.exit_code == 2
    assert "--steps must be >= 1; got 0" in result.output


def test_missing_spec_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", "nope.yaml"])
    assert result.exit_code == 2
    assert "nope.yaml" in result.output


def test_train_bad_config_field_and_missing_workload(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"learning_rate": 0.1}))
    result = runner.invoke(app, ["train", str(bad), "--workload", "deep_mlp"])
    assert result.exit_code == 2
    assert "unknown field 'learning_rate'" in result.output
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"lr": 0.01}))
    result = runner.invoke(app, ["train", str(plain)])
    assert result.exit_code == 2
    assert "--workload is required" in result.output


def test_train_runs_and_reports_explosion_with_exit_1(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"optimizer": "sgd", "lr": 1.5, "momentum": 0.0}))
    result = runner.invoke(app, ["train", str(config), "--workload", "deep_mlp", "--steps", "60",
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert "EXPLODED" in result.output
    assert (tmp_path / "run" / "trace.parquet").exists()
    assert (tmp_path / "run" / "diagnosis.json").exists()


def test_status_of_unknown_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["status", "nothing"])
    assert result.exit_code == 2
    assert "no study storage" in result.output


def test_workloads_lists_builtins():
    result = runner.invoke(app, ["workloads"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in ("rnn_adding", "deep_mlp", "transformer_lm", "cnn_digits"):
        assert name in result.output


def test_interrupted_run_says_how_to_resume_with_the_same_flags(tmp_path, monkeypatch):
    """Issue 22 item 9: the hint dropped --workers, --no-tracking and the storage."""
    import sweeps.driver
    from sweeps.common import SweepInterrupted

    def interrupted(*args, **kwargs):
        raise SweepInterrupted("interrupted: 't' keeps its finished trials")

    monkeypatch.setattr(sweeps.driver, "run_sweep", interrupted)
    spec = write_spec(tmp_path / "s.yaml", small_spec())
    result = runner.invoke(app, ["run", str(spec), "--workers", "2", "--no-tracking",
                                 "--storage", "sqlite:///my db.sqlite", "--max-retries", "2"])
    assert result.exit_code == 130, result.output
    assert (f"Resume with: stabsweep run {spec} --workers 2 --storage 'sqlite:///my db.sqlite' "
            "--no-tracking") in result.output.replace("\n", "")


def test_the_summary_off_a_terminal_is_plain_lines(tmp_path, monkeypatch):
    import sweeps.driver
    from sweeps.driver import SweepSummary

    summary = SweepSummary(study="t", storage="sqlite:///x.db", n_trials=6,
                           counts={"complete": 6}, best=None, steps_run=240, steps_budget=240,
                           wall_time_s=1.5)
    monkeypatch.setattr(sweeps.driver, "run_sweep", lambda *a, **k: summary)
    spec = write_spec(tmp_path / "s.yaml", small_spec())
    result = runner.invoke(app, ["run", str(spec), "--no-tracking"])
    assert result.exit_code == 0, result.output
    assert " trials      6 finished (complete 6)\n compute     240 of 240 steps run" not in \
        result.output  # "best" comes between
    assert " trials      6 finished (complete 6)\n" in result.output
    assert not set(result.output) & set("│┃━─┏")
