"""Shared helpers of the file readers: errors that name file and line, number parsing, column names.

Private: the public functions are in ``shibajax.measurement.readers``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shibajax.errors import DataFileError

RESERVED = frozenset({"bias", "didv", "current", "sweep", "x", "y", "point"})
"""Names the readers give to coordinates and to the picked dI/dV and current; other channels never take them."""


def fail(path: Path | str, problem: str, line: int | None = None) -> DataFileError:
    """A ``DataFileError`` whose message starts with the file name and, for text formats, the 1-based line."""
    where = f"{path}: line {line}: " if line is not None else f"{path}: "
    return DataFileError(where + problem)


def to_float(text: str | None) -> float:
    """Parse a header value as a float; NaN when it is empty or not a number (``N/A``, ``1.55k``, ``TRUE``)."""
    if text is None:
        return math.nan
    try:
        return float(text.strip())
    except ValueError:
        return math.nan


def parse_rows(
    path: Path | str,
    lines: Sequence[str],
    first_line: int,
    names: Sequence[str],
    sep: str | None,
) -> np.ndarray:
    """Parse a block of delimited numeric rows into a float64 array ``(n_rows, n_columns)``.

    ``lines`` are the raw data lines (no line ends), ``first_line`` the 1-based file line of ``lines[0]``,
    ``names`` the column names (only their number and, in messages, their text are used), ``sep`` the
    delimiter (``None``: runs of whitespace). Blank lines are skipped. Every other line must hold exactly
    ``len(names)`` numbers (``NaN`` and ``Inf`` are numbers); otherwise ``DataFileError`` names the line.
    """
    n_col = len(names)
    rows: list[list[str]] = []
    line_numbers: list[int] = []
    for offset, raw in enumerate(lines):
        text = raw.strip() if sep is None else raw.strip("\r\n ")
        if sep == "\t":
            text = text.rstrip("\t")  # Nanonis and Createc end rows with a tab
        if not text:
            continue
        fields = text.split(sep)
        if len(fields) != n_col:
            raise fail(path, f"expected {n_col} columns, found {len(fields)}", first_line + offset)
        rows.append(fields)
        line_numbers.append(first_line + offset)
    if not rows:
        raise fail(path, "the data block holds no rows (is the file cut short?)", first_line)
    try:
        return np.array(rows, dtype=np.float64)
    except ValueError:
        pass
    for fields, number in zip(rows, line_numbers, strict=True):  # slow path, only to name the bad token
        for k, token in enumerate(fields):
            try:
                float(token)
            except ValueError:
                raise fail(
                    path, f"column {k + 1} ({names[k]!r}): cannot read {token.strip()!r} as a number", number
                ) from None
    raise fail(path, "cannot read the data block as numbers", first_line)  # pragma: no cover (numpy/float differ)


_TAG = re.compile(r"\[([^\]]*)\]")
_UNIT = re.compile(r"\(([^()]*)\)\s*$")


def split_column_name(name: str) -> tuple[str, str, tuple[str, ...]]:
    """``'LockIn [00001] [bwd] (V)'`` -> ``('LockIn', 'V', ('00001', 'bwd'))``; Generic 5 puts tags after the unit."""
    tags = tuple(t.strip() for t in _TAG.findall(name))
    rest = re.sub(r"\s+", " ", _TAG.sub(" ", name)).strip()
    match = _UNIT.search(rest)
    unit = match.group(1).strip() if match else ""
    base = rest[: match.start()].strip() if match else rest
    return base, unit, tags


def sanitise(name: str) -> str:
    """A Python- and NetCDF-safe lower-case name: ``'X% LockIn'`` -> ``'x_lockin'``, ``'LI Demod 1 X'`` ->
    ``'li_demod_1_x'``."""
    text = re.sub(r"[^0-9a-zA-Z]+", "_", name.replace("%", "")).strip("_").lower()
    if not text:
        text = "channel"
    if text[0].isdigit():
        text = "ch_" + text
    return text


def unique_name(name: str, taken: set[str], suffix: str = "_signal") -> str:
    """``name``, or ``name + suffix`` if reserved, then ``_2``, ``_3`` ... until not in ``taken``; adds it."""
    if name in RESERVED:
        name += suffix
    candidate, k = name, 2
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    taken.add(candidate)
    return candidate
