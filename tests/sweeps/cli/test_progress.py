"""sweeps.cli.progress: the CLI's live display draws the driver's events."""

from __future__ import annotations

from rich.console import Console

from sweeps.cli.progress import SweepDisplay, summary_rows, summary_text
from sweeps.common import Outcome
from sweeps.driver import (
    AlreadyDone,
    StorageServed,
    SweepStarted,
    SweepSummary,
    SweepWarning,
    TrialDispatched,
    TrialEnded,
    TrialRecovered,
)


def _display() -> tuple[SweepDisplay, Console]:
    console = Console(record=True, width=200)
    return SweepDisplay(console), console


def test_each_event_is_drawn() -> None:
    display, console = _display()
    display(SweepStarted("s", 2, "sqlite:///x.db", 1, 4))
    display(StorageServed("127.0.0.1", 7777))
    display(TrialRecovered(3))
    display(TrialDispatched(4, {"lr": 0.1}, 1))  # no line of its own
    display(TrialEnded(4, Outcome.COMPLETE, 0.123456, "completed 40 steps", 40,
                       {"lr": 0.1}, 0.5, 0.123456))
    display(TrialEnded(5, Outcome.EXPLODED, 1e12, "exploded: spike at step 7", 8,
                       {"lr": 9.0}, 0.1, 0.123456))
    display(SweepWarning("could not finish"))
    display(AlreadyDone(4, 4))
    text = console.export_text()
    assert "study s: 1/4 finished, 2 workers, storage sqlite:///x.db" in text
    assert "127.0.0.1:7777" in text and "trial 3 was left running" in text
    assert "trial   4 complete  value 0.1235 (40 steps, 0.5 s) lr=0.1" in text
    assert "trial   5 exploded  (8 steps, 0.1 s) lr=9" in text
    assert "exploded: spike at step 7" in text        # the reason under a non-complete line
    assert "completed 40 steps" not in text           # a complete trial needs no reason
    assert "warning: could not finish" in text and "already has 4 finished" in text
    assert text.count("\n") == 8  # a line each, plus the exploded trial's reason


def test_the_status_counts_by_outcome() -> None:
    display, _ = _display()
    display(SweepStarted("s", 1, "x", 0, 5))
    for number, outcome in enumerate([Outcome.COMPLETE, Outcome.EXPLODED, Outcome.SLOW,
                                      Outcome.FAILED, Outcome.WORKER_LOST]):
        display(TrialEnded(number, outcome, None, "why", 1, best=0.5))
    assert display.finished == 3 and display.failed == 2
    assert display.ended[Outcome.EXPLODED] == display.ended[Outcome.SLOW] == 1
    assert display.best == 0.5


def test_the_summary_adds_up_and_is_plain_lines_off_a_terminal() -> None:
    """Issue 22 item 9: "20 finished (complete 20, interrupted 2)" added up to 22; a log got
    a box padded to 160 columns where the README shows plain lines."""
    summary = SweepSummary(study="s", storage="sqlite:///x.db", n_trials=20,
                           counts={"complete": 18, "exploded": 2, "interrupted": 2}, best=None,
                           steps_run=10, steps_budget=20, wall_time_s=1.0)
    trials = "20 finished (complete 18, exploded 2); not counted: interrupted 2"
    assert dict(summary_rows(summary))["trials"] == trials
    lines = summary_text(summary).splitlines()
    assert lines[0] == f" trials      {trials}"
    assert lines[1] == " best        no completed stable trial yet"
    assert all(line == line.rstrip() and not set(line) & set("│┃━─┏") for line in lines)


def test_a_trial_line_counts_its_skipped_updates() -> None:
    """Issue 22 item 6: the console left out updates the guard dropped."""
    display, console = _display()
    display(TrialEnded(12, Outcome.COMPLETE, 0.5, "completed 200 steps", 200, {"lr": 0.1}, 0.5,
                       0.5, skipped=1))
    display(TrialEnded(13, Outcome.COMPLETE, 0.5, "completed 200 steps", 200, {"lr": 0.1}, 0.5,
                       0.5, skipped=3))
    text = console.export_text()
    assert "(200 steps, 1 update skipped, 0.5 s)" in text
    assert "(200 steps, 3 updates skipped, 0.5 s)" in text


def test_a_rescued_trial_shows_its_value_and_the_summary_its_cost() -> None:
    """Issue 20: a trial the guard kept alive by skipping updates is neither complete nor
    exploded; the summary says how many were rescued and how many updates it cost."""
    display, console = _display()
    display(TrialEnded(7, Outcome.RESCUED, 0.25, "rescued: completed 200 steps after 3 skipped "
                       "update(s), the first at step 40", 200, {"lr": 0.1}, 0.5, 0.25,
                       skipped=3))
    text = console.export_text()
    assert "trial   7 rescued   value 0.25 (200 steps, 3 updates skipped, 0.5 s)" in text
    assert display.finished == 1
    summary = SweepSummary(study="s", storage="x", n_trials=4,
                           counts={"complete": 2, "rescued": 2}, best=None, steps_run=8,
                           steps_budget=8, wall_time_s=1.0, rescued_skipped=5)
    rows = dict(summary_rows(summary))
    assert rows["trials"] == "4 finished (complete 2, rescued 2)"
    assert rows["rescued"] == "2 trials trained on to the end after 5 skipped updates"
