"""Createc vertical-spectroscopy (``.VERT``) parser.

Private: ``shibajax.measurement.readers.read_spectrum`` calls it. The layout, read off the real file in
``shared/realdata`` (``spmqt_createc_vert_didz_image_state.VERT``):

* ``[ParVERT32]``, then ``key=value`` lines (``Long name / Short name=value`` on older lines, where the short
  name is the key), with CR LF line ends and NUL padding before the data;
* a line ``DATA``;
* one line of numbers: number of points, tip x and y (DAC), the channel mask ``Vertchannelselectval``, ...;
* one row per point, tab-separated: the point index, the bias in **mV** (it runs between the header's
  ``Vpoint0.V`` and ``Vpoint1.V``, which are in mV), then the recorded channels in raw ADC/DAC units.

The file names neither the channels nor their units, so they come back as ``column_2``, ``column_3``, ...
in raw units, and no dI/dV is picked unless ``channel=`` names one. A file whose data block starts with a
line of column names uses those names instead (bias: the column named ``V``, ``V(mV)`` or ``Bias...``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from shibajax.measurement._nanonis import Signal, Spectrum
from shibajax.measurement._textio import fail, parse_rows, sanitise, to_float


def read_vert(path: Path, text: str, *, channel: str | None, direction: str) -> Spectrum:
    """Parse a Createc ``.VERT`` file into a ``Spectrum`` (bias in V)."""
    lines = [line.rstrip("\r").replace("\x00", "") for line in text.split("\n")]
    header: list[tuple[str, str]] = []
    data_at = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped == "DATA":
            data_at = i
            break
        if i == 0 or not stripped or "=" not in line:
            continue
        key, _, value = line.partition("=")
        if " / " in key:
            key = key.split(" / ", 1)[1]
        if key.strip():
            header.append((key.strip(), value.strip()))
    if data_at is None:
        raise fail(path, "no DATA line (the header is cut short, or this is not a Createc .VERT file)")
    if direction != "forward":
        raise fail(path, f"direction={direction!r}: a Createc .VERT file holds one sweep; use direction='forward'")
    k = data_at + 1
    if k >= len(lines) or not lines[k].strip():
        raise fail(path, "no parameter line after DATA", k + 1)
    params = lines[k].split()
    n_points = int(to_float(params[0])) if params and not math.isnan(to_float(params[0])) else None
    if n_points is None:
        raise fail(path, f"cannot read the number of points from {lines[k].strip()[:60]!r}", k + 1)
    k += 1
    first = lines[k].strip().split("\t") if k < len(lines) else []
    named = bool(first) and any(math.isnan(to_float(tok)) and tok.strip().lower() != "nan" for tok in first)
    if named:
        names = [tok.strip() for tok in first]
        k += 1
    else:
        width = len(first) if first and first[0] else 0
        if width < 2:
            raise fail(path, "no data rows after the parameter line (is the file cut short?)", k + 1)
        names = ["index", "bias (mV)"] + [f"column_{j}" for j in range(2, width)]
    data = parse_rows(path, lines[k:], k + 1, names, "\t")
    if data.shape[0] != n_points:
        raise fail(
            path,
            f"the parameter line after DATA says {n_points} points but the data block holds {data.shape[0]} rows "
            "(is the file cut short?)",
        )
    if named:
        bias_k = next((j for j, n in enumerate(names) if re.fullmatch(r"V(\s*\(mV\))?|bias.*", n, re.I)), None)
        if bias_k is None:
            raise fail(path, f"no bias column ('V' or 'Bias'); columns: {', '.join(names)}")
    else:
        bias_k = 1
    bias = data[:, bias_k] * 1e-3  # Createc stores the bias in mV

    signals, keys = [], []
    for j, name in enumerate(names):
        if j == bias_k or name == "index":
            continue
        signals.append(Signal(name, "raw" if not named else "", data[:, j]))
        keys.append(name)
    didv = None
    if channel is not None:
        hits = [j for j, n in enumerate(keys) if n.lower() == channel.lower() or sanitise(n) == sanitise(channel)]
        if not hits:
            raise fail(path, f"unknown channel {channel!r}; available: {', '.join(keys)}")
        didv = hits[0]
    current = next((j for j, n in enumerate(keys) if n.strip().lower() in ("i", "current")), None)

    hdr = dict(reversed(header))
    t_stm = to_float(hdr.get("T-STM:"))
    bias_mv = to_float(hdr.get("BiasVolt.[mV]", hdr.get("Biasvolt[mV]")))
    meta: dict[str, float | str] = {
        # T-STM is 0 when no sensor is read out; 0 K is not a temperature.
        "temperature_K": t_stm if t_stm > 0 else math.nan,
        "temperature_source": "header 'T-STM:'" if t_stm > 0 else "",
        "temperature_column_mean_K": math.nan,
        # LockinAmpl is written without a unit and without saying what is modulated (bias or z): not parsed.
        "lockin_amplitude_V": math.nan,
        "lockin_amplitude_source": "",
        "lockin_amplitude_kind": "",
        "lockin_frequency_Hz": to_float(hdr.get("LockinFreq")),
        "lockin_frequency_source": "header 'LockinFreq'" if "LockinFreq" in hdr else "",
        "setpoint_bias_V": bias_mv * 1e-3,
        "setpoint_current_A": to_float(hdr.get("SetPoint")),
    }
    return Spectrum(np.asarray(bias), signals, didv, current, header, "createc-vert", meta)
