"""Readers for measured STM spectra: Nanonis ``.dat`` and ``.3ds``, Createc ``.VERT``, plain CSV/TXT.

``read_spectrum`` reads one bias spectrum, ``read_grid`` a Nanonis grid; both return an ``xarray.Dataset``
with the bias in **volts** (as the files store it; the rest of ``shibajax.measurement`` works in mV, so
multiply by 1e3). ``write_spectrum_csv`` writes a spectrum as CSV that ``read_spectrum`` reads back exactly,
``sort_by_bias`` sorts a spectrum by bias, and ``header_of`` returns the file's header as a dict.

A file that cannot be read as asked raises ``shibajax.errors.DataFileError``; the message names the file,
the line (text formats) and the problem. No reader returns silently truncated or NaN-padded data.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import xarray as xr

from shibajax.measurement import _nanonis
from shibajax.measurement._createc import read_vert
from shibajax.measurement._delimited import read_delimited
from shibajax.measurement._textio import decode_text, fail, sanitise, split_column_name, unique_name

__all__ = ["header_of", "read_grid", "read_spectrum", "sort_by_bias", "write_spectrum_csv"]

METADATA_KEYS = (
    "temperature_K",
    "lockin_amplitude_V",
    "lockin_frequency_Hz",
    "setpoint_bias_V",
    "setpoint_current_A",
)
"""The fixed-name numeric metadata every reader sets in ``Dataset.attrs`` (NaN where the file does not say)."""


def read_spectrum(
    path: str | os.PathLike,
    *,
    channel: str | None = None,
    direction: str = "forward",
    sort: bool = False,
    bias_unit: str | None = None,
    allow_nan: bool = False,
) -> xr.Dataset:
    """Read one measured bias spectrum into an ``xarray.Dataset``.

    The format is found from the content (and, for grids, the ``.3ds`` extension):

    * **Nanonis bias spectroscopy** ``.dat`` (Generic 4, 4.5, 5): ``key<TAB>value`` header, ``[DATA]``, a
      line of column names, tab-separated rows. The bias is ``Bias calc (V)``, else ``Bias (V)``.
    * **Createc** ``.VERT`` (``[ParVERT32]`` header, ``DATA``, a parameter line, rows ``index, bias (mV),
      channels...``). The file does not name its channels: they come back as ``column_2`` ... in raw
      ADC/DAC units, and ``didv`` is only set when ``channel=`` names one.
    * **CSV / TXT**: two or more columns separated by commas, tabs, semicolons or spaces; ``#`` comment lines;
      an optional line of column names. Column 1 is the bias; dI/dV is the column named ``didv`` (or
      ``dI/dV``), else the first column not named ``current...`` or ``I``, or column 2 when there are no
      names; the current is the column named ``current...`` or ``I``, or column 3 when there are no names.

    **Automatic dI/dV choice** (Nanonis): among channels that are not ``[filt]`` copies, those whose name
    contains ``LockIn``/``Lock-in``, ``LI Demod``, ``didv`` or ``dI/dV`` or starts with ``LIX``; never a Y,
    R or phase component. The X (in-phase) component wins over a name without a component (``LockIn``); a
    ``LI Demod n`` whose ``Lock-in>Harmonic Dn`` is not 1 (a d2I/dV2 output) comes after those at the first
    harmonic; then file order. ``[AVG]`` columns (mean of the sweeps) are used when the file has them, and
    the single sweeps become ``<name>_sweeps`` with dims ``(sweep, bias)``. No lock-in channel: no ``didv``.

    Args:
        path: the file.
        channel: the dI/dV channel, overriding the automatic choice: the name as the file writes it
            (``'LIY 1 omega (A)'``; tags and unit optional, ``'LockIn [00001]'`` picks one sweep), its name
            without unit (``'LIY 1 omega'``), or the sanitised name (``'liy_1_omega'``); case-insensitive.
        direction: ``'forward'`` (default), ``'backward'`` (the ``[bwd]`` columns) or ``'average'`` (their
            mean, point by point on the common bias axis). Only Nanonis files have a backward sweep; channels
            without a ``[bwd]`` copy are left out of ``'backward'`` and ``'average'``.
        sort: ``True`` sorts by increasing bias (see ``sort_by_bias``); by default the file's order is kept
            (a Nanonis sweep from +5 to -5 mV stays in that order; multi-segment sweeps can be unsorted).
        bias_unit: ``'V'`` or ``'mV'``, for CSV/TXT only. Default: the unit in the bias column's name
            (``bias (mV)``), else volts. A value that contradicts the column name raises.
        allow_nan: ``False`` (default): a NaN or inf in the dI/dV or current column raises (the message gives
            how many, their data rows and biases); ``True`` reads them as they are (``attrs['n_non_finite']``
            counts them), for callers that drop or interpolate such points themselves.

    Returns:
        ``xarray.Dataset`` with coordinate ``bias`` ``(n,)`` in V (float64); ``didv`` ``(n,)`` with ``units``
        as in the file (``V`` for an external lock-in's output voltage, ``A`` for a Nanonis demodulator) and
        ``long_name`` the column; ``current`` ``(n,)`` in A when present; every other channel under a
        sanitised name (``'Y% LockIn (V)'`` -> ``y_lockin``, ``'[filt]'`` -> ``_filt``). ``attrs``:

        * ``temperature_K``, ``lockin_amplitude_V``, ``lockin_frequency_Hz``, ``setpoint_bias_V``,
          ``setpoint_current_A``: floats, NaN where the file does not give them; each ``..._source`` says
          which header line gave it. ``lockin_amplitude_V`` is the modulation at the sample: a Nanonis
          ``Lock-in>Amplitude`` (used only when the modulated signal is the bias) as written, which does not
          say whether it is rms or zero-to-peak; else a comment (``Lockin: 50uVrms``, ``Vrms = 10mVrms``), times
          the bias divider (``Bias>Calibration (V/V)`` < 1 or ``Divider 1:N``) when its peak exceeds a quarter of
          the sweep's half range, so that it must be the lock-in output before the divider (the SIS Pb file:
          10 mV x 5.21e-3 = 52.1 uV); the source then names both lines and the reasoning.
          ``lockin_amplitude_kind`` is ``'rms'`` only where the file says so. ``setpoint_bias_V`` is
          ``Bias>Bias (V)``, the bias when the feedback was opened; ``setpoint_current_A`` is
          ``Z-Controller>Setpoint`` when its unit is A. Temperature:
          the first header key ``...temperature...(K)``, else a comment ``T=1.06K``, else the mean of a
          ``Temperature ... (K)`` column (that mean is also in ``temperature_column_mean_K``).
        * ``format`` (``'nanonis-generic-4'``, ``'nanonis-generic-5'``, ``'nanonis-dat'`` when the file
          names no version, ``'createc-vert'``, ``'csv'``), ``source`` (the path), ``didv_channel`` (the
          column used, ``''`` if none), ``direction``, ``sorted_by_bias``, ``n_non_finite`` (NaN or inf values
          in ``didv`` and ``current``: 0 unless ``allow_nan``), ``header_json`` (the whole
          header as a JSON object of strings; ``header_of`` decodes it).

    Raises:
        DataFileError: the file is malformed or cut short (message: file, line, problem), names no bias,
            lacks the asked ``channel`` or ``direction``, is a ``.3ds`` grid (use ``read_grid``), or is not text
            (NUL or control bytes: "is a binary file"). UTF-16 text (with or without a byte-order mark) is decoded.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "s.csv"
        >>> _ = f.write_text("bias (mV),didv\\n-1,0.5\\n0,0.1\\n1,0.6\\n")
        >>> ds = read_spectrum(f)
        >>> ds.bias.values.tolist(), ds.didv.values.tolist()
        ([-0.001, 0.0, 0.001], [0.5, 0.1, 0.6])
    """
    path = Path(path)
    raw = _read_bytes(path)
    if path.suffix.lower() == ".3ds" or raw.startswith(b"Grid dim"):
        raise fail(path, "is a Nanonis grid (.3ds); use read_grid")
    text = decode_text(path, raw)
    head = text[:4096].lstrip()
    if head.startswith("[ParVERT"):
        spec = read_vert(path, text, channel=channel, direction=direction)
    elif head.startswith("Experiment\t") or "\n[DATA]" in text:
        spec = _nanonis.read_dat(path, text, channel=channel, direction=direction)
        spec.metadata = _nanonis.metadata(spec.header, spec.signals, spec.header_lines, spec.bias)
    else:
        spec = read_delimited(path, text, channel=channel, direction=direction, bias_unit=bias_unit)
    if bias_unit is not None and spec.format != "csv":
        raise fail(path, f"bias_unit applies to CSV/TXT files only; this {spec.format} file states its unit")
    ds = _spectrum_dataset(path, spec, direction, allow_nan=allow_nan)
    return sort_by_bias(ds) if sort else ds


def read_grid(path: str | os.PathLike, *, partial: bool = False) -> xr.Dataset:
    """Read a Nanonis ``.3ds`` grid of spectra into an ``xarray.Dataset``.

    Layout: ``key=value`` header lines up to ``:HEADER_END:``, then big-endian float32, pixel after pixel
    (``x`` fastest): the ``# Parameters (4 byte)`` values (``Fixed parameters`` then ``Experiment
    parameters``), then ``Points`` values of each channel in ``Channels`` order.

    Args:
        path: the ``.3ds`` file.
        partial: an interrupted grid holds fewer pixels than ``Grid dim`` says. By default that raises;
            ``True`` reads the complete pixels and fills the rest with NaN, and ``attrs['n_pixels_measured']``
            says how many were measured.

    Returns:
        ``xarray.Dataset`` with dims ``(y, x, bias)`` (the sweep dim is ``bias`` when ``Sweep Signal`` is the
        bias, else the sanitised sweep signal): coordinates ``x``, ``y`` (pixel indices) and ``bias`` (V,
        ``linspace(Sweep Start, Sweep End, Points)`` for ``Filetype=Linear`` grids whose pixels share the
        sweep; absent otherwise); one variable per channel ``(y, x, bias)`` under its sanitised name (the
        current is ``current``, the lock-in channel that ``read_spectrum`` would pick is ``didv``, channels
        of a backward sweep keep their tag: ``current_bwd``); one variable per
        parameter ``param_<name>`` ``(y, x)``. ``attrs``: the fixed metadata of ``read_spectrum``,
        ``format``, ``source``, ``header_json``, ``n_pixels_measured``, ``n_pixels_total``.

    Raises:
        DataFileError: no ``:HEADER_END:``, a header key missing, or a data size that does not match the
            header (the message gives both).
    """
    path = Path(path)
    grid = _nanonis.read_3ds(path, _read_bytes(path), partial=partial)
    hdr = dict(reversed(grid.header))
    ny, nx, n_ch, n_pts = grid.channels.shape
    sweep_base, sweep_unit, _ = split_column_name(grid.sweep_signal or "point")
    sweep_dim = "bias" if sweep_base.lower() == "bias" else sanitise(sweep_base)
    dims3 = ("y", "x", sweep_dim)
    coords: dict = {"y": np.arange(ny), "x": np.arange(nx)}
    names = [sanitise(p) for p in grid.param_names]
    if hdr.get("Filetype", "").strip() == "Linear" and "sweep_start" in names and "sweep_end" in names:
        start = grid.params[:, :, names.index("sweep_start")]
        end = grid.params[:, :, names.index("sweep_end")]
        measured = ~np.isnan(start)
        if measured.any() and np.ptp(start[measured]) == 0 and np.ptp(end[measured]) == 0:
            scale = {"mV": 1e-3}.get(sweep_unit, 1.0)
            values = np.linspace(start[measured][0], end[measured][0], n_pts) * scale
            coords[sweep_dim] = (sweep_dim, values, {"units": "V" if scale != 1.0 else sweep_unit})

    taken: set[str] = set()
    data_vars: dict = {}
    parts = [split_column_name(name) for name in grid.channel_names]
    keys = [(b, u, "filt" in [t.lower() for t in tags], tuple(tags)) for b, u, tags in parts]
    didv = _nanonis._auto_didv(keys, hdr)
    for j, (name, (base, units, tags)) in enumerate(zip(grid.channel_names, parts, strict=True)):
        if j == didv:
            var = "didv"
        elif base.lower() == "current" and not tags:
            var = "current"
        else:
            var = unique_name(sanitise(" ".join([base, *tags])), taken)
        taken.add(var)
        data_vars[var] = (dims3, grid.channels[:, :, j, :], {"units": units, "long_name": name})
    for j, name in enumerate(grid.param_names):
        base, units, _ = split_column_name(name)
        var = unique_name("param_" + sanitise(base), taken)
        data_vars[var] = (("y", "x"), grid.params[:, :, j], {"units": units, "long_name": name})

    attrs: dict = dict(_nanonis.metadata(grid.header, []))
    version = hdr.get("NanonisMain>SW Version", "").strip()
    attrs["format"] = "nanonis-3ds" + ("-" + "-".join(version.lower().split()) if version else "")
    attrs["source"] = str(path)
    attrs["didv_channel"] = grid.channel_names[didv] if didv is not None else ""
    attrs["n_pixels_measured"] = grid.n_measured
    attrs["n_pixels_total"] = nx * ny
    attrs["header_json"] = _header_json(grid.header)
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def sort_by_bias(ds: xr.Dataset) -> xr.Dataset:
    """The spectrum with every variable reordered by increasing ``bias`` (stable; repeated biases are kept).

    Measured grids can run from positive to negative bias or, for multi-segment (MLS) sweeps, be
    segmented; models and fits want an increasing axis. ``attrs['sorted_by_bias']`` becomes 1.
    """
    order = np.argsort(ds["bias"].values, kind="stable")
    out = ds.isel(bias=order)
    out.attrs["sorted_by_bias"] = 1
    return out


def header_of(ds: xr.Dataset) -> dict[str, str]:
    """The file header a reader kept in ``ds.attrs['header_json']``, as ``{key: value}`` strings (a key seen
    twice gets `` #2`` on its second occurrence)."""
    return json.loads(ds.attrs.get("header_json", "{}"))


def write_spectrum_csv(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write a spectrum from ``read_spectrum`` as CSV that ``read_spectrum`` reads back to the same numbers.

    Columns: ``bias (V)``, ``didv (<units>)``, ``current (A)`` when present, then the other 1-D variables
    along ``bias`` (``<name>_sweeps`` are left out). The fixed metadata and the original ``format``,
    ``source`` and ``didv_channel`` go in ``# key = value`` comment lines. Numbers are written with 17
    significant digits, which round-trips float64 exactly. Returns the path.
    """
    path = Path(path)
    if "bias" not in ds.coords or "didv" not in ds:
        raise fail(path, "write_spectrum_csv needs a spectrum with a 'bias' coordinate and a 'didv' variable")
    names = ["didv"] + [v for v in ds.data_vars if v != "didv" and ds[v].dims == ("bias",)]
    names.sort(key=lambda v: (v != "didv", v != "current"))
    lines = ["# shibajax spectrum (write_spectrum_csv); bias in V"]
    for key in (*METADATA_KEYS, "temperature_column_mean_K"):
        lines.append(f"# {key} = {float(ds.attrs.get(key, math.nan))!r}")
    for key in ("temperature_source", "lockin_amplitude_source", "lockin_amplitude_kind", "lockin_frequency_source"):
        lines.append(f"# {key} = {ds.attrs.get(key, '')}")
    for key in ("format", "source", "didv_channel"):
        lines.append(f"# original_{key} = {ds.attrs.get(key, '')}")
    cols = ["bias (V)"] + [f"{v} ({ds[v].attrs['units']})" if ds[v].attrs.get("units") else v for v in names]
    lines.append(",".join(cols))
    table = np.column_stack([ds["bias"].values] + [ds[v].values for v in names])
    lines += [",".join(f"{x:.17g}" for x in row) for row in table]
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------------------- internals


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise fail(path, f"cannot read the file ({exc.strerror or exc})") from exc


def _header_json(header: list[tuple[str, str]]) -> str:
    out: dict[str, str] = {}
    for key, value in header:
        name, k = key, 2
        while name in out:
            name, k = f"{key} #{k}", k + 1
        out[name] = value
    return json.dumps(out, ensure_ascii=False)


def _spectrum_dataset(path: Path, spec: _nanonis.Spectrum, direction: str, *, allow_nan: bool = False) -> xr.Dataset:
    bias = np.asarray(spec.bias, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(bias))
    if bad.size:
        raise fail(path, f"the bias is not a finite number at {bad.size} points (first: point {bad[0] + 1})")
    n_non_finite = 0
    for role, k in (("dI/dV", spec.didv), ("current", spec.current)):
        if k is None or (role == "current" and k == spec.didv):
            continue
        values = np.asarray(spec.signals[k].values, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        n_non_finite += bad.size
        if bad.size and not allow_nan:
            rows = ", ".join(str(i + 1) for i in bad[:4]) + (" ..." if bad.size > 4 else "")
            at = ", ".join(f"{1e3 * b:.6g}" for b in bias[bad[:4]]) + (" ..." if bad.size > 4 else "")
            raise fail(
                path,
                f"the spectrum has {bad.size} non-finite {role} value(s) (NaN or inf, of {values.size}) in column "
                f"{spec.signals[k].label!r}, data row(s) {rows}, at bias = {at} mV; remove or interpolate them "
                "(read_spectrum(..., allow_nan=True) reads them as they are)",
            )
    data_vars: dict = {}
    sweep_coords: dict = {}
    taken: set[str] = set()
    for k, sig in enumerate(spec.signals):
        base, _units, tags = split_column_name(sig.label)
        if k == spec.didv:
            name = "didv"
        elif k == spec.current:
            name = "current"
        else:
            name = unique_name(sanitise(" ".join([base, *tags])), taken)
        taken.add(name)
        attrs = {"units": sig.units, "long_name": sig.label}
        if sig.note:
            attrs["note"] = sig.note
        data_vars[name] = ("bias", np.asarray(sig.values, dtype=np.float64), attrs)
        if k == spec.didv == spec.current:  # channel= picked the current as dI/dV: keep both names
            data_vars["current"] = data_vars[name]
        if sig.sweeps is not None:
            dim = "sweep"
            if dim in sweep_coords and sweep_coords[dim] != sig.sweep_numbers:
                dim = f"sweep_{name}"
            sweep_coords[dim] = sig.sweep_numbers
            data_vars[f"{name}_sweeps"] = ((dim, "bias"), np.asarray(sig.sweeps, dtype=np.float64), dict(attrs))
        if k == spec.current and sig.units not in ("A", ""):
            raise fail(path, f"current column {sig.label!r} has unit {sig.units!r}; expected A")
    coords: dict = {"bias": ("bias", bias, {"units": "V", "long_name": "sample bias"})}
    coords.update({dim: (dim, np.asarray(nums)) for dim, nums in sweep_coords.items()})
    attrs: dict = {}
    for key in (*METADATA_KEYS, "temperature_column_mean_K"):
        attrs[key] = float(spec.metadata.get(key, math.nan))
    for key in ("temperature_source", "lockin_amplitude_source", "lockin_amplitude_kind", "lockin_frequency_source"):
        attrs[key] = str(spec.metadata.get(key, ""))
    attrs["format"] = spec.format
    attrs["source"] = str(path)
    attrs["didv_channel"] = spec.signals[spec.didv].label if spec.didv is not None else ""
    attrs["direction"] = direction
    attrs["sorted_by_bias"] = 0
    attrs["n_non_finite"] = n_non_finite
    attrs["header_json"] = _header_json(spec.header)
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
