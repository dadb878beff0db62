"""The README's "Layout" section names every module of the packages, so it cannot drift from
the tree unnoticed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Layout")
    return readme[start:readme.index("\n## ", start + 1) if "\n## " in readme[start + 1:]
                  else len(readme)]


def test_every_module_is_in_the_layout() -> None:
    section = _layout()
    named = set(re.findall(r"[A-Za-z_]\w*(?=\.py\b)", section))
    missing = []
    # stability/ by its top modules; sweeps/ to the last module of each sub-package
    paths = [*(ROOT / "stability").glob("*.py"), *(ROOT / "sweeps").rglob("*.py")]
    for path in sorted(paths):
        if path.stem not in ("__init__", "__main__") and path.stem not in named:
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"README Layout does not name: {', '.join(missing)}"


def test_every_folder_in_the_layout_exists() -> None:
    for folder in re.findall(r"^\s*([a-z_]+)/", _layout(), re.M):
        assert any((ROOT / p / folder).is_dir() for p in ("", "stability", "sweeps", "tests")), \
            folder
