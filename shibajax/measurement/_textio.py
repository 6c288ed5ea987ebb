"""Shared helpers of the file readers: errors that name file and line, number parsing, column names.

Private: the public functions are in ``shibajax.measurement.readers``.
"""

from __future__ import annotations

import codecs
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


def decode_text(path: Path | str, raw: bytes) -> str:
    """The text of a spectrum file, or a ``DataFileError`` saying that it is not text.

    UTF-16 (a byte-order mark, or every other byte NUL as UTF-16 writes ASCII) is decoded as such; a UTF-8
    byte-order mark is dropped; otherwise UTF-8, else Latin-1 (older Nanonis and Createc headers). NUL bytes
    anywhere else mean a binary file (Createc ``.VERT`` files, which pad their header with NULs, excepted), as
    does a text of which more than 1 % is control characters: both are reported as such rather than as a
    column-count error further down.
    """
    head = raw[:4096]
    utf16 = None
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        utf16 = "utf-16"
    elif len(head) >= 8 and b"\x00" in head:
        even, odd = head[0::2], head[1::2]
        if odd.count(0) > 0.9 * len(odd) and even.count(0) < 0.1 * len(even):
            utf16 = "utf-16-le"
        elif even.count(0) > 0.9 * len(even) and odd.count(0) < 0.1 * len(odd):
            utf16 = "utf-16-be"
    if utf16 is not None:
        try:
            return raw.decode(utf16).lstrip("\ufeff")
        except UnicodeDecodeError as exc:
            raise fail(
                path,
                f"looks UTF-16 encoded but is not valid UTF-16 ({exc.reason} at byte {exc.start}); save it as "
                "UTF-8 text",
            ) from None
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    if not raw.lstrip().startswith(b"[ParVERT"):
        nul = raw.find(b"\x00")
        if nul >= 0:
            raise fail(
                path,
                f"is a binary file (a NUL byte at offset {nul}), not a text spectrum: read_spectrum reads "
                "Nanonis .dat, Createc .VERT and CSV/TXT text (use read_grid for a Nanonis .3ds grid); export the "
                "spectrum as UTF-8 text",
            )
        sample = raw[:65536]
        control = sum(sample.count(bytes([b])) for b in range(32) if b not in (9, 10, 12, 13)) + sample.count(b"\x7f")
        if sample and control > 0.01 * len(sample):
            raise fail(
                path,
                f"is a binary file ({control} control bytes in its first {len(sample)}), not a text spectrum; "
                "export the spectrum as UTF-8 text",
            )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


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
