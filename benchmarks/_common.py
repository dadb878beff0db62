"""Helpers shared by the benchmark scripts: small workload sizes, tables, the cache folder."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/<script>.py` from anywhere
    sys.path.insert(0, str(ROOT))

CACHE = Path(__file__).resolve().parent / ".cache"

SMALL: dict[str, dict[str, Any]] = {
    "deep_mlp": {"depth": 12, "width": 32, "batch_size": 64},
    "rnn_adding": {"seq_len": 30, "hidden": 32, "batch_size": 32},
    "transformer_lm": {"n_layers": 2, "d_model": 32, "n_heads": 2, "seq_len": 32,
                       "batch_size": 8},
    "cnn_digits": {"batch_size": 32, "width": 8},
}
"""CPU-cheap sizes of the built-in workloads (a few ms per step on one core)."""


def cache_dir() -> Path:
    """``benchmarks/.cache/``, created with a ``.gitignore`` so git never sees its files."""
    CACHE.mkdir(parents=True, exist_ok=True)
    ignore = CACHE / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# benchmark caches: regenerate with --refresh\n*\n")
    return CACHE


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
          left: Sequence[int] = (0,)) -> str:
    """A plain-text table: the ``left`` columns left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(v.ljust(w) if i in left else v.rjust(w)
                         for i, (v, w) in enumerate(zip(row, widths, strict=True)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.3g}"
    return str(value)
