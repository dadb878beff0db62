"""The README's ``stabsweep train`` examples, run as printed: they cannot go stale unnoticed.

Every ``text`` block of the README that writes its config (``$ printf ... > file.yaml``) and
then runs ``$ stabsweep train file.yaml ...`` is replayed in a temporary folder with the
installed ``stabsweep`` command. The command's exit code must be the one the block claims
(``# exit code N``, else 0), and its output must match the block line by line, the wall time
(``in 0.3 s``) aside: the step count, the verdict kind and step, the onset, the numbers of the
suggested fixes. Examples that need a sweep first (``stabsweep train best.yaml`` after an
export) are not replayed here.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"^```text\n(.*?)^```", re.M | re.S)
_EXIT = re.compile(r"#\s*exit code (\d+)")
_TIME = re.compile(r" in [0-9.]+ s;")
_VERDICT = re.compile(r"^EXPLODED: (\w+) at step (\d+)", re.M)


@dataclass
class Example:
    setup: list[str]
    """shell lines that write the config (``printf ... > unstable.yaml``)."""
    command: list[str]
    exit_code: int
    expected: list[str]
    """the printed lines the README shows under the command."""


def readme_examples(text: str) -> list[Example]:
    """The replayable ``stabsweep train`` examples of a README text."""
    found = []
    for block in _BLOCK.findall(text):
        setup: list[str] = []
        current: Example | None = None
        for line in block.splitlines():
            if line.startswith("$ "):
                current = None
                shell = line[2:]
                code = _EXIT.search(shell)
                shell = shell.split("#", 1)[0].strip() if code or " # " in shell else shell
                if shell.startswith("printf ") and ">" in shell:
                    setup.append(shell)
                elif shell.startswith("stabsweep train "):
                    argv = shlex.split(shell)
                    written = {s.rsplit(">", 1)[1].strip() for s in setup}
                    if argv[2] in written:  # the config is made in the block: replayable
                        current = Example(list(setup), argv, int(code.group(1)) if code else 0,
                                          [])
                        found.append(current)
            elif current is not None and line.strip():
                current.expected.append(line)
    return found


def _stabsweep() -> str:
    beside = Path(sys.executable).parent / "stabsweep"
    found = str(beside) if beside.exists() else shutil.which("stabsweep")
    if found is None:
        pytest.skip("the stabsweep command is not installed (pip install -e .)")
    return found


def test_the_readme_has_a_failure_example_to_replay() -> None:
    examples = readme_examples((ROOT / "README.md").read_text())
    failing = [e for e in examples if e.exit_code != 0]
    assert failing, "no replayable `stabsweep train` example with `# exit code 1` in README"
    for example in failing:
        verdict = _VERDICT.search("\n".join(example.expected))
        assert verdict is not None, f"{example.command}: no 'EXPLODED: <kind> at step' line"
        assert int(verdict.group(2)) >= 20, "the failure example should show an onset"


def test_parser_reads_setup_command_exit_code_and_output() -> None:
    text = ("```text\n$ printf 'lr: 1\\n' > a.yaml\n"
            "$ stabsweep train a.yaml --steps 5 --out x     # exit code 1\n"
            "line one\n\nline two\n$ stabsweep train best.yaml\nnot ours\n```\n")
    [example] = readme_examples(text)
    assert example.setup == ["printf 'lr: 1\\n' > a.yaml"]
    assert example.command == ["stabsweep", "train", "a.yaml", "--steps", "5", "--out", "x"]
    assert (example.exit_code, example.expected) == (1, ["line one", "line two"])


@pytest.mark.slow
@pytest.mark.parametrize("example", readme_examples((ROOT / "README.md").read_text()),
                         ids=lambda e: " ".join(e.command[2:]))
def test_readme_train_example_prints_what_the_readme_shows(example: Example,
                                                          tmp_path: Path) -> None:
    for line in example.setup:
        subprocess.run(line, shell=True, cwd=tmp_path, check=True)
    done = subprocess.run([_stabsweep(), *example.command[1:]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    printed = [line for line in done.stdout.splitlines() if line.strip()]
    context = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-2000:]}"
    assert done.returncode == example.exit_code, context
    shown, ran = "\n".join(example.expected), "\n".join(printed)
    claimed, got = _VERDICT.search(shown), _VERDICT.search(ran)
    assert (got and got.groups()) == (claimed and claimed.groups()), context  # kind, step
    assert [_TIME.sub(" in _ s;", line) for line in printed] == \
        [_TIME.sub(" in _ s;", line) for line in example.expected], context
