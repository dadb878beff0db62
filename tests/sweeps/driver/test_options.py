"""sweeps.driver.options.RunOptions: an impossible value is refused when the options are
built, with the field it names; sweeps.common.errors keeps the field for a front end to show in
its own words."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeps.common import OptionError, SweepError
from sweeps.driver import RunOptions


@pytest.mark.parametrize(("field", "value", "message"), [
    ("n_trials", 0, "n_trials must be >= 1; got 0."),
    ("workers", -1, "workers must be >= 1; got -1 (leave it unset to use every CPU)."),
    ("max_retries", -1, "max_retries must be >= 0; got -1."),
    ("max_consecutive_failures", 0, "max_consecutive_failures must be >= 1; got 0."),
    ("cpus_per_trial", 0.0, "cpus_per_trial must be > 0; got 0"),
    ("gpus_per_trial", -0.5, "gpus_per_trial must be >= 0; got -0.5"),
    ("cpus_per_trial", float("nan"), "cpus_per_trial must be > 0; got nan"),
])
def test_a_bad_value_names_its_field(field: str, value: object, message: str) -> None:
    with pytest.raises(OptionError) as info:
        RunOptions(**{field: value})  # type: ignore[arg-type]
    assert info.value.option == field and str(info.value) == message
    assert "--" not in str(info.value)  # library words, not the CLI's flags
    assert isinstance(info.value, SweepError) and isinstance(info.value, ValueError)


def test_good_values_pass_and_workdir_becomes_a_path(tmp_path: Path) -> None:
    options = RunOptions(n_trials=1, workers=1, max_retries=0, cpus_per_trial=0.5,
                         gpus_per_trial=0.25, workdir=str(tmp_path))  # type: ignore[arg-type]
    assert options.workdir == tmp_path


def test_a_sweep_error_keeps_the_option_that_fixes_it() -> None:
    error = SweepError("study 's' was made from another spec", option="study")
    assert (str(error), error.option) == ("study 's' was made from another spec", "study")
    assert SweepError("plain").option is None
