"""Plain CSV / TXT spectra: two or more columns (bias, dI/dV[, current, ...]), optional header line.

Private: ``shibajax.measurement.readers`` calls it and documents the format. Lines starting with ``#`` are
comments; ``# key = value`` (or ``# key: value``) comments are header entries, and those with the fixed
metadata names (``temperature_K``, ...) are read back as numbers, so ``write_spectrum_csv`` round-trips.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from shibajax.measurement._nanonis import Signal, Spectrum
from shibajax.measurement._textio import fail, parse_rows, sanitise, split_column_name, to_float

METADATA_NUMBERS = (
    "temperature_K",
    "lockin_amplitude_V",
    "lockin_frequency_Hz",
    "setpoint_bias_V",
    "setpoint_current_A",
    "temperature_column_mean_K",
)
BIAS_UNITS = {"V": 1.0, "mV": 1e-3}


def _is_current(label: str) -> bool:
    name = sanitise(label)
    return name == "i" or name.startswith("current")


def _split(line: str, sep: str | None) -> list[str]:
    return [f.strip() for f in (line.split(sep) if sep else line.split())]


def read_delimited(path: Path, text: str, *, channel: str | None, direction: str, bias_unit: str | None) -> Spectrum:
    """Parse a delimited text spectrum; see ``read_spectrum`` for the column rules."""
    if direction != "forward":
        raise fail(path, f"direction={direction!r}: a CSV/TXT spectrum holds one sweep; use direction='forward'")
    lines = [line.rstrip("\r") for line in text.split("\n")]
    header: list[tuple[str, str]] = []
    k = 0
    while k < len(lines) and (not lines[k].strip() or lines[k].lstrip().startswith("#")):
        m = re.match(r"\s*#\s*([^=:]+?)\s*[=:]\s*(.*)$", lines[k])
        if m:
            header.append((m.group(1), m.group(2).strip()))
        k += 1
    if k >= len(lines):
        raise fail(path, "no data rows (only comments or blank lines)")
    first = lines[k]
    sep = next((s for s in (",", "\t", ";") if s in first), None)
    fields = _split(first, sep)
    named = any(math.isnan(to_float(f)) and f.lower() not in ("nan", "inf", "-inf") for f in fields)
    if named:
        names = fields
        k += 1
    else:
        names = [f"column_{j}" for j in range(len(fields))]
    if len(names) < 2:
        raise fail(path, f"expected at least 2 columns (bias, dI/dV), found {len(names)}", k if named else k + 1)
    data = parse_rows(path, lines[k:], k + 1, names, sep)

    parts = [split_column_name(n) for n in names]
    file_unit = parts[0][1] if named else ""
    if bias_unit is not None and bias_unit not in BIAS_UNITS:
        raise fail(path, f"bias_unit={bias_unit!r}; expected one of {tuple(BIAS_UNITS)}")
    if file_unit and file_unit not in BIAS_UNITS:
        raise fail(path, f"bias column {names[0]!r} has unit {file_unit!r}; expected V or mV")
    if bias_unit is not None and file_unit and bias_unit != file_unit:
        raise fail(path, f"bias_unit={bias_unit!r} but the bias column is named {names[0]!r}")
    scale = BIAS_UNITS[bias_unit or file_unit or "V"]
    bias = data[:, 0] * scale

    signals = [Signal(parts[j][0] if named else names[j], parts[j][1], data[:, j]) for j in range(1, len(names))]
    labels = [names[j] for j in range(1, len(names))]
    if channel is not None:
        hits = [
            j
            for j, (lab, sig) in enumerate(zip(labels, signals, strict=True))
            if channel.lower() in (lab.lower(), sig.label.lower()) or sanitise(channel) == sanitise(sig.label)
        ]
        if not hits:
            raise fail(path, f"unknown channel {channel!r}; available: {', '.join(labels)}")
        didv = hits[0]
    else:
        didv = 0
        if named:  # a column named dI/dV (any spelling), else the first that is not a current
            by_name = [j for j, s in enumerate(signals) if sanitise(s.label) in ("didv", "di_dv")]
            others = [j for j, s in enumerate(signals) if not _is_current(s.label)]
            didv = (by_name or others or [0])[0]
    current = None
    if named:
        current = next((j for j, s in enumerate(signals) if _is_current(s.label) and j != didv), None)
    elif len(signals) >= 2:
        current = 1
    if current is not None and not signals[current].units:
        signals[current].units = "A"

    hdr = dict(reversed(header))
    meta: dict[str, float | str] = {key: to_float(hdr.get(key)) for key in METADATA_NUMBERS}
    for key in ("temperature_source", "lockin_amplitude_source", "lockin_amplitude_kind", "lockin_frequency_source"):
        meta[key] = hdr.get(key, "")
    return Spectrum(bias, signals, didv, current, header, "csv", meta)
