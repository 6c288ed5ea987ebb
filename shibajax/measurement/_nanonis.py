"""Nanonis file parsers: bias-spectroscopy ``.dat`` (Generic 4, 4.5, 5) and binary ``.3ds`` grids.

Private: ``shibajax.measurement.readers`` turns what these return into ``xarray.Dataset`` objects. The layouts
were read off real files (``shared/realdata/MANIFEST.md``):

* ``.dat``: ``key<TAB>value<TAB>`` header lines, a ``[DATA]`` line, one tab-separated line of column names,
  then one tab-separated row of numbers per bias point. Column names are ``base [tag] ... (unit)`` (Generic 5
  also writes ``base (unit) [filt]``); tags are ``bwd`` (backward sweep), ``AVG`` (mean of the sweeps),
  ``00001`` ... (single sweeps) and ``filt`` (software-filtered copy).
* ``.3ds``: ``key=value`` header lines up to ``:HEADER_END:``, then big-endian float32: per pixel (rows of
  ``x`` inside ``y``) the ``# Parameters (4 byte)`` values followed by ``Points`` values of each channel.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shibajax.measurement._textio import fail, parse_rows, sanitise, split_column_name, to_float

DIRECTIONS = ("forward", "backward", "average")


@dataclass
class Signal:
    """One measured quantity of a spectrum after direction and sweep selection.

    ``values`` has shape ``(n_bias,)``; ``sweeps`` ``(n_sweeps, n_bias)`` or ``None``; ``label`` is the name
    as the file writes it (without direction and sweep tags) and ``units`` its unit text.
    """

    label: str
    units: str
    values: np.ndarray
    sweeps: np.ndarray | None = None
    sweep_numbers: tuple[int, ...] = ()
    note: str = ""


@dataclass
class Spectrum:
    """What a format parser hands to ``readers``: bias in volts, signals, picked roles and the header."""

    bias: np.ndarray
    signals: list[Signal]
    didv: int | None
    current: int | None
    header: list[tuple[str, str]]
    format: str
    metadata: dict[str, float | str] = field(default_factory=dict)
    header_lines: list[int] = field(default_factory=list)  # 1-based file line of each header entry



#: Largest grid (as float64 in memory) that read_grid allocates; a header asking for more is refused.
MAX_GRID_BYTES = 4 * 2**30

def decode(raw: bytes) -> str:
    """Text of a file: UTF-8 if it is valid, else Latin-1 (older Nanonis and Createc headers)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


# --------------------------------------------------------------------------------------------------- .dat


@dataclass
class _Column:
    index: int
    base: str
    units: str
    bwd: bool
    filt: bool
    sweep: int | str | None  # None: plain, "avg": [AVG], int: [0000n]
    extra: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str, bool, tuple[str, ...]]:
        return (self.base, self.units, self.filt, self.extra)


def _classify(index: int, name: str) -> _Column:
    base, units, tags = split_column_name(name)
    bwd = filt = False
    sweep: int | str | None = None
    extra: list[str] = []
    for tag in tags:
        low = tag.lower()
        if low == "bwd":
            bwd = True
        elif low == "filt":
            filt = True
        elif low == "avg":
            sweep = "avg"
        elif tag.isdigit():
            sweep = int(tag)
        else:
            extra.append(tag)
    return _Column(index, base, units, bwd, filt, sweep, tuple(extra))


def _label(col: _Column) -> str:
    tags = "".join(f" [{t}]" for t in col.extra) + (" [filt]" if col.filt else "")
    return f"{col.base}{tags} ({col.units})" if col.units else f"{col.base}{tags}"


def read_dat(path: Path, text: str, *, channel: str | None, direction: str) -> Spectrum:
    """Parse a Nanonis bias-spectroscopy ``.dat`` file (see the module docstring for the layout)."""
    lines = text.split("\n")
    header: list[tuple[str, str]] = []
    header_lines: list[int] = []
    data_at = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped == "[DATA]":
            data_at = i
            break
        if not stripped:
            continue
        if "\t" not in line:
            raise fail(path, f"expected 'key<TAB>value' in the header, found {stripped[:60]!r}", i + 1)
        key, _, value = line.rstrip("\r").partition("\t")
        header.append((key.strip(), value.rstrip("\t").strip()))
        header_lines.append(i + 1)
    if data_at is None:
        raise fail(path, "no [DATA] block (the header is cut short, or this is not a Nanonis spectrum)")
    j = data_at + 1
    if j >= len(lines) or not lines[j].strip():
        raise fail(path, "no line of column names after [DATA]", j + 1)
    names = lines[j].rstrip("\r").rstrip("\t").split("\t")
    data = parse_rows(path, lines[j + 1 :], j + 2, names, "\t")
    hdr = dict(reversed(header))  # first occurrence wins
    _check_row_count(path, hdr, data.shape[0])

    columns = [_classify(k, n) for k, n in enumerate(names)]
    bias_col = next((c for c in columns if c.base.lower() == "bias calc" and not (c.bwd or c.filt or c.sweep)), None)
    if bias_col is None:
        bias_col = next((c for c in columns if c.base.lower() == "bias" and not (c.bwd or c.filt or c.sweep)), None)
    if bias_col is None:
        raise fail(path, f"no bias column ('Bias calc (V)' or 'Bias (V)'); columns: {', '.join(names)}")
    scale = {"V": 1.0, "mV": 1e-3}.get(bias_col.units)
    if scale is None:
        raise fail(path, f"bias column {names[bias_col.index]!r} has unit {bias_col.units!r}; expected V or mV")
    bias = data[:, bias_col.index] * scale

    groups: dict[tuple, list[_Column]] = {}
    for col in columns:
        if col is not bias_col:
            groups.setdefault(col.key, []).append(col)
    has_bwd = any(c.bwd for c in columns)
    if direction not in DIRECTIONS:
        raise fail(path, f"direction={direction!r}; expected one of {DIRECTIONS}")
    if direction != "forward" and not has_bwd:
        raise fail(path, f"direction={direction!r} needs a backward sweep, but the file has no [bwd] columns")

    wanted_sweep: int | str | None = None
    forced: tuple | None = None
    if channel is not None:
        forced, wanted_sweep = _match_channel(path, channel, groups, direction)

    signals: list[Signal] = []
    keys: list[tuple] = []
    for key, cols in groups.items():
        sweep = wanted_sweep if key == forced else None
        sig = _select(data, cols, direction, sweep)
        if sig is None:
            if key == forced:
                raise fail(path, f"channel {channel!r} has no {direction} sweep in this file")
            continue
        signals.append(sig)
        keys.append(key)

    didv = keys.index(forced) if forced is not None else _auto_didv(keys, hdr)
    current = next((k for k, key in enumerate(keys) if key[0].lower() == "current" and not key[2] and not key[3]), None)
    version = hdr.get("NanonisMain>SW Version", "").strip().strip('"')
    fmt = "nanonis-" + re.sub(r"\s+", "-", version.lower()) if version else "nanonis-dat"
    return Spectrum(bias, signals, didv, current, header, fmt, header_lines=header_lines)


def _select(data: np.ndarray, cols: list[_Column], direction: str, sweep: int | str | None) -> Signal | None:
    """The values of one signal for ``direction``; ``sweep`` forces one sweep (``'avg'`` or a number)."""

    def one(bwd: bool) -> tuple[np.ndarray, np.ndarray | None, tuple[int, ...], str] | None:
        mine = [c for c in cols if c.bwd == bwd]
        if not mine:
            return None
        numbered = sorted((c for c in mine if isinstance(c.sweep, int)), key=lambda c: c.sweep)
        sweeps = np.stack([data[:, c.index] for c in numbered]) if numbered else None
        numbers = tuple(c.sweep for c in numbered)
        if sweep is not None:
            pick = next((c for c in mine if c.sweep == sweep), None)
            return None if pick is None else (data[:, pick.index], None, (), "")
        main = next((c for c in mine if c.sweep is None), None) or next((c for c in mine if c.sweep == "avg"), None)
        if main is not None:
            return data[:, main.index], sweeps, numbers, ""
        return sweeps.mean(axis=0), sweeps, numbers, f"mean of sweeps {list(numbers)} taken by the reader"

    first = cols[0]
    if direction == "average":
        fwd, bwd = one(False), one(True)
        if fwd is None or bwd is None:
            return None
        swp = None
        if fwd[1] is not None and bwd[1] is not None and fwd[2] == bwd[2]:
            swp = 0.5 * (fwd[1] + bwd[1])
        note = "mean of the forward and backward sweeps"
        return Signal(_label(first), first.units, 0.5 * (fwd[0] + bwd[0]), swp, fwd[2] if swp is not None else (), note)
    got = one(direction == "backward")
    if got is None:
        return None
    return Signal(_label(first), first.units, got[0], got[1], got[2], got[3])


def _match_channel(
    path: Path, channel: str, groups: dict[tuple, list[_Column]], direction: str
) -> tuple[tuple, int | str | None]:
    """The group key and sweep the user's ``channel`` names: the file's column name (tags optional), its base
    name (``'LIX 1 omega'``), or its sanitised name (``'lix_1_omega'``), case-insensitive."""
    base, units, _tags = split_column_name(channel)
    probe = _classify(0, channel)
    if probe.bwd and direction != "backward":
        raise fail(path, f"channel {channel!r} names a [bwd] column; pass direction='backward' instead")
    for key in groups:
        kbase, kunits, kfilt, kextra = key
        name_ok = kbase.lower() == base.lower() and kfilt == probe.filt and kextra == probe.extra
        if name_ok and (not units or units == kunits):
            return key, probe.sweep
        if sanitise(channel) == sanitise(kbase) + ("_filt" if kfilt else "") and not kextra:
            return key, None
    available = ", ".join(_label(cols[0]) for cols in groups.values())
    raise fail(path, f"unknown channel {channel!r}; available: {available}")


_LOCKIN = re.compile(r"lock-?in|li demod|^li[xy]\b|didv|di/dv", re.IGNORECASE)
_X = re.compile(r"(^|\b)x%|\bx\b|^lix", re.IGNORECASE)
_NOT_X = re.compile(r"(^|\b)y%|\by\b|^liy|\br\b|phase|phi|theta", re.IGNORECASE)


def _auto_didv(keys: list[tuple], hdr: dict[str, str]) -> int | None:
    """The documented automatic dI/dV choice (see ``read_spectrum``): unfiltered lock-in channels, the X (in-phase)
    component before one with no component named, a demodulator running at the first harmonic before others,
    then file order. ``None`` when no channel looks like a lock-in output."""
    best: tuple | None = None
    for k, (base, _units, filt, extra) in enumerate(keys):
        if filt or extra or not _LOCKIN.search(base) or _NOT_X.search(base):
            continue
        demod = re.search(r"demod\s*(\d+)", base, re.IGNORECASE)
        harmonic = to_float(hdr.get(f"Lock-in>Harmonic D{demod.group(1)}")) if demod else math.nan
        rank = (0 if _X.search(base) else 1, 1 if harmonic not in (1.0,) and not math.isnan(harmonic) else 0, k)
        if best is None or rank < best:
            best = rank
    return None if best is None else best[2]


def _check_row_count(path: Path, hdr: dict[str, str], n_rows: int) -> None:
    """Catch a file cut at a line boundary: the header's point count must match the rows."""
    mode = hdr.get("Bias Spectroscopy>Sweep mode", "Linear").strip()
    num = to_float(hdr.get("Bias Spectroscopy>Num Pixel"))
    if mode == "Linear" and not math.isnan(num) and n_rows != int(num):
        raise fail(
            path,
            f"header says {int(num)} points (Bias Spectroscopy>Num Pixel) but the [DATA] block holds {n_rows} rows "
            "(is the file cut short?)",
        )
    if mode == "MLS":
        settings = next((v for k, v in hdr.items() if k.startswith("Bias Spectroscopy>MultiLine Settings")), "")
        try:
            steps = [int(float(seg.split(",")[4])) for seg in settings.split(";") if seg.strip()]
        except (IndexError, ValueError):
            return  # settings not readable: no check
        # Nanonis drops the first point of each later segment (it repeats the previous end): total - (n_seg - 1).
        expected = {sum(steps), sum(steps) - (len(steps) - 1)}
        if steps and n_rows not in expected:
            raise fail(
                path,
                f"header's multi-segment (MLS) settings give {max(expected)} points but the [DATA] block holds "
                f"{n_rows} rows (is the file cut short?)",
            )


_RMS = re.compile(r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([uµm]?)V\s*rms", re.IGNORECASE)
_LOCKIN_WORDS = re.compile(r"lock|modul|^\s*v\s*(rms|mod)\b", re.IGNORECASE)
_DIVIDER_COMMENT = re.compile(r"divider\s*1\s*:\s*([0-9]*\.?[0-9]+)", re.IGNORECASE)
_PREFIX = {"u": "e-6", "µ": "e-6", "m": "e-3", "": ""}  # decimal exponents: "50" + "e-6" parses to 5e-05 exactly
LOCKIN_SWEEP_FRACTION = 0.25
"""A stated modulation whose peak (sqrt 2 V_rms) exceeds this fraction of the sweep's half range cannot be what
the sample saw (it would wash out every feature of the sweep): it is the lock-in output before the bias divider."""


def _lockin_from_comments(header, lines, bias) -> tuple[float, str]:
    """(V_rms at the sample, source) from a comment such as ``Lockin: 50uVrms`` or ``Vrms = 10mVrms``.

    External lock-ins are written down by hand; the value is the lock-in output, which reaches the sample through
    the bias divider when there is one (``Bias>Calibration (V/V)`` < 1, or a comment ``Divider 1:N``). A value
    small against the sweep is taken as already at the sample (``Lockin: 50uVrms`` on a +-5 mV sweep); one whose
    peak exceeds ``LOCKIN_SWEEP_FRACTION`` of the sweep's half range is multiplied by the divider
    (``Vrms = 10mVrms`` before 5.21e-3 on a +-4 mV sweep: 52.1 uV rms). The source names both header lines.
    """

    def where(k: int) -> str:
        return f"header line {lines[k]}" if k < len(lines) else "header"

    comments = [k for k, (key, _) in enumerate(header) if re.fullmatch(r"Comment\d*", key)]
    divider, div_source = math.nan, ""
    for k, (key, value) in enumerate(header):
        if key == "Bias>Calibration (V/V)":
            c = to_float(value)
            if 0 < c < 1:
                divider, div_source = c, f"{where(k)}: {key!r} = {value!r}"
            break
    if math.isnan(divider):
        for k in comments:
            m = _DIVIDER_COMMENT.search(header[k][1])
            if m and float(m.group(1)) > 1:
                divider, div_source = 1.0 / float(m.group(1)), f"{where(k)}: {header[k][0]} {header[k][1]!r}"
                break
    half_range = math.nan
    if bias is not None and np.size(bias) and np.all(np.isfinite(bias)):
        half_range = 0.5 * float(np.max(bias) - np.min(bias))
    for k in comments:
        key, value = header[k]
        m = _RMS.search(value)
        if not (m and _LOCKIN_WORDS.search(value)):
            continue
        stated = float(m.group(1) + _PREFIX[m.group(2).lower()])
        text = f"{where(k)}: {key} {value!r}"
        peak = math.sqrt(2.0) * stated
        too_large = not math.isnan(half_range) and peak > LOCKIN_SWEEP_FRACTION * half_range
        if too_large and not math.isnan(divider):
            return stated * divider, (
                f"{text} x divider {divider:.6g} ({div_source}): its peak sqrt(2) x {stated:.3g} V exceeds "
                f"{LOCKIN_SWEEP_FRACTION:g} of the sweep's half range {half_range:.3g} V, so it is the lock-in output "
                f"before the divider; the sample sees {stated * divider:.4g} V rms"
            )
        if too_large:
            return stated, (
                f"{text}, as written: its peak sqrt(2) x {stated:.3g} V exceeds {LOCKIN_SWEEP_FRACTION:g} of the "
                f"sweep's half range {half_range:.3g} V and the header names no divider; check it"
            )
        if not math.isnan(divider):
            return stated, (
                f"{text}, taken as the modulation at the sample (small against the sweep); the header also gives a "
                f"divider {divider:.6g} ({div_source}): if {stated:.3g} V is the lock-in output, the sample sees "
                f"{stated * divider:.4g} V rms"
            )
        return stated, text
    return math.nan, ""


def metadata(
    header: list[tuple[str, str]],
    signals: list[Signal],
    header_lines: list[int] | None = None,
    bias: np.ndarray | None = None,
) -> dict[str, float | str]:
    """Fixed-name metadata from a Nanonis header (``.dat`` or ``.3ds``); NaN and an empty source where absent.

    * ``temperature_K``: the first header key holding ``temperature`` and ending in ``(K)`` (``Temperature 1>
      Temperature 1 (K)``, ``Ext. VI 1>Microscope temperature (K)``); else a ``CommentNN`` value ``T=1.06K``;
      else the mean of a ``Temperature ... (K)`` column. ``temperature_column_mean_K`` holds that mean too.
    * ``lockin_amplitude_V``: ``Lock-in>Amplitude`` when ``Lock-in>Modulated signal`` is a bias; else a comment
      that mentions the lock-in or a modulation, or starts with ``Vrms``, and gives ``50uVrms`` / ``1.5 mV rms`` /
      ``Vrms = 10mVrms``, through the bias divider when it is the lock-in output (see
      :func:`_lockin_from_comments`; ``lockin_amplitude_source`` gives the header lines and the reasoning).
      ``lockin_amplitude_kind`` is ``'rms'`` only where the file says rms; Nanonis's own key does not say whether
      it is rms or zero-to-peak.
    * ``lockin_frequency_Hz``: ``Lock-in>Frequency (Hz)``, else a comment ``912Hz modulation``.
    * ``setpoint_bias_V``: ``Bias>Bias (V)`` (the bias when the header was written, where the feedback was set).
    * ``setpoint_current_A``: ``Z-Controller>Setpoint`` when ``Z-Controller>Setpoint unit`` is ``A``.
    """
    hdr = dict(reversed(header))
    comments = [(k, v) for k, v in header if re.fullmatch(r"Comment\d*", k)]
    out: dict[str, float | str] = {}

    temp, source = math.nan, ""
    for key, value in header:
        if "temperature" in key.lower() and key.rstrip().endswith("(K)") and not math.isnan(to_float(value)):
            temp, source = to_float(value), f"header {key!r}"
            break
    if math.isnan(temp):
        for key, value in comments:
            m = re.search(r"\bT\s*=\s*([0-9]*\.?[0-9]+)\s*(m?)K\b", value)
            if m:
                temp = float(m.group(1) + ("e-3" if m.group(2) else ""))
                source = f"header {key!r} ({value!r})"
                break
    col_mean = math.nan
    for sig in signals:
        if sig.label.lower().startswith("temperature") and sig.units == "K":
            col_mean = float(np.mean(sig.values))
            if math.isnan(temp):
                temp, source = col_mean, f"mean of column {sig.label!r}"
            break
    out["temperature_K"], out["temperature_source"] = temp, source
    out["temperature_column_mean_K"] = col_mean

    amp, amp_source, kind = math.nan, "", "unstated"
    modulated = hdr.get("Lock-in>Modulated signal", "")
    raw_amp = hdr.get("Lock-in>Amplitude")
    if raw_amp is not None and "bias" in modulated.lower():
        amp, amp_source = to_float(raw_amp), "header 'Lock-in>Amplitude'"
    if math.isnan(amp):
        if bias is None:
            start = to_float(hdr.get("Bias Spectroscopy>Sweep Start (V)", hdr.get("Sweep Start")))
            end = to_float(hdr.get("Bias Spectroscopy>Sweep End (V)", hdr.get("Sweep End")))
            bias = None if math.isnan(start) or math.isnan(end) else np.array([start, end])
        amp, amp_source = _lockin_from_comments(header, header_lines or [], bias)
        kind = "rms" if amp_source else kind
    out["lockin_amplitude_V"], out["lockin_amplitude_source"] = amp, amp_source
    out["lockin_amplitude_kind"] = kind if amp_source else ""

    freq, freq_source = to_float(hdr.get("Lock-in>Frequency (Hz)")), ""
    if not math.isnan(freq):
        freq_source = "header 'Lock-in>Frequency (Hz)'"
    else:
        for key, value in comments:
            m = re.search(r"([0-9]*\.?[0-9]+)\s*(k?)Hz", value)
            if m and re.search(r"modulation|lock", value, re.IGNORECASE):
                freq = float(m.group(1) + ("e3" if m.group(2) else ""))
                freq_source = f"header {key!r} ({value!r})"
                break
    out["lockin_frequency_Hz"], out["lockin_frequency_source"] = freq, freq_source

    out["setpoint_bias_V"] = to_float(hdr.get("Bias>Bias (V)"))
    unit = hdr.get("Z-Controller>Setpoint unit", "").strip()
    out["setpoint_current_A"] = to_float(hdr.get("Z-Controller>Setpoint")) if unit == "A" else math.nan
    return out


# --------------------------------------------------------------------------------------------------- .3ds


@dataclass
class Grid:
    """A parsed ``.3ds`` grid: ``params`` ``(ny, nx, n_params)``, ``channels`` ``(ny, nx, n_channels, n_points)``."""

    header: list[tuple[str, str]]
    param_names: list[str]
    channel_names: list[str]
    params: np.ndarray
    channels: np.ndarray
    n_measured: int
    sweep_signal: str


def read_3ds(path: Path, raw: bytes, *, partial: bool) -> Grid:
    """Parse a Nanonis ``.3ds`` grid (see the module docstring for the layout)."""
    marker = raw.find(b":HEADER_END:")
    if marker < 0:
        raise fail(path, "no ':HEADER_END:' line (the header is cut short, or this is not a Nanonis .3ds grid)")
    end = raw.find(b"\n", marker)
    start = len(raw) if end < 0 else end + 1
    header: list[tuple[str, str]] = []
    for i, raw_line in enumerate(decode(raw[:marker]).split("\n")):
        line = raw_line.strip()
        if not line:
            continue
        if "=" not in line:
            raise fail(path, f"expected 'key=value' in the header, found {line[:60]!r}", i + 1)
        key, _, value = line.partition("=")
        header.append((key.strip(), value.strip().strip('"')))
    hdr = dict(reversed(header))

    def need(key: str) -> str:
        if key not in hdr:
            raise fail(path, f"header lacks {key!r}")
        return hdr[key]

    dims = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", need("Grid dim"))
    if dims is None:
        raise fail(path, f"cannot read 'Grid dim'={hdr['Grid dim']!r}; expected 'NX x NY'")
    nx, ny = int(dims.group(1)), int(dims.group(2))
    def count(key: str) -> int:
        raw_value = need(key)
        try:
            value = float(to_float(raw_value))
        except (TypeError, ValueError):
            value = float("nan")
        if not (np.isfinite(value) and value >= 0 and value == int(value)):
            raise fail(path, f"cannot read {key!r}={raw_value!r}; expected a non-negative integer")
        return int(value)

    n_par = count("# Parameters (4 byte)")
    n_pts = count("Points")
    channels = [c for c in need("Channels").split(";") if c]
    fixed = [p for p in hdr.get("Fixed parameters", "").split(";") if p]
    exper = [p for p in hdr.get("Experiment parameters", "").split(";") if p]
    params = fixed + exper
    if len(params) != n_par:
        raise fail(path, f"header names {len(params)} parameters but '# Parameters (4 byte)' says {n_par}")
    per_pixel = n_par + len(channels) * n_pts
    n_pix = nx * ny
    n_bytes = len(raw) - start
    if n_bytes != 4 * per_pixel * n_pix:
        problem = (
            f"header says {nx} x {ny} pixels of {per_pixel} floats ({n_par} parameters + {len(channels)} channels"
            f" x {n_pts} points), {4 * per_pixel * n_pix} bytes, but the file holds {n_bytes} bytes after the header"
        )
        if not partial or n_bytes > 4 * per_pixel * n_pix:
            raise fail(path, problem + ("" if partial else "; read_grid(..., partial=True) reads the full pixels"))
    if per_pixel < 1:
        raise fail(path, "header gives no parameters and no channel points per pixel")
    n_full = min(n_bytes // (4 * per_pixel), n_pix)
    full_bytes = 8 * n_pix * per_pixel
    if full_bytes > MAX_GRID_BYTES:
        raise fail(
            path,
            f"header says {nx} x {ny} pixels of {per_pixel} floats: {full_bytes / 2**30:.3g} GiB in memory, more than "
            f"the {MAX_GRID_BYTES / 2**30:.3g} GiB limit (the file holds {n_full} full pixels); is 'Grid dim' right?",
        )
    flat = np.full(n_pix * per_pixel, np.nan, dtype=np.float64)
    flat[: n_full * per_pixel] = np.frombuffer(raw, dtype=">f4", count=n_full * per_pixel, offset=start)
    block = flat.reshape(ny, nx, per_pixel)
    measured = n_full - int(np.all(np.isnan(block.reshape(n_pix, per_pixel)[:n_full, n_par:]), axis=1).sum())
    return Grid(
        header=header,
        param_names=params,
        channel_names=channels,
        params=block[:, :, :n_par],
        channels=block[:, :, n_par:].reshape(ny, nx, len(channels), n_pts),
        n_measured=measured,
        sweep_signal=hdr.get("Sweep Signal", ""),
    )
