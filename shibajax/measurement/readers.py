"""Readers for measured STM spectra: Nanonis ``.dat`` and ``.3ds``, Createc ``.VERT``, plain CSV/TXT.

``read_spectrum`` reads one bias spectrum, ``read_grid`` a grid of spectra (a Nanonis ``.3ds`` file, or a
folder, glob or list of single-spectrum files); both return an ``xarray.Dataset`` with the bias in **volts** (as
the files store it; the rest of ``shibajax.measurement`` works in mV, so multiply by 1e3). ``pixel_grid`` puts a
``.3ds`` grid ``(y, x, bias)`` into the ``(pixel, bias)`` layout of a folder of spectra, and ``to_image`` puts a
per-pixel result back onto ``(row, col)`` for maps. ``write_spectrum_csv`` writes a spectrum as CSV that
``read_spectrum`` reads back exactly, ``sort_by_bias`` sorts a spectrum by bias, and ``header_of`` returns the
file's header as a dict.

A file that cannot be read as asked raises ``shibajax.errors.DataFileError``; the message names the file,
the line (text formats) and the problem. No reader returns silently truncated or NaN-padded data.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from shibajax.errors import DataFileError, ShapeError
from shibajax.measurement import _nanonis
from shibajax.measurement._createc import read_vert
from shibajax.measurement._delimited import read_delimited
from shibajax.measurement._lattice import fit_lattice
from shibajax.measurement._textio import decode_text, fail, sanitise, split_column_name, to_float, unique_name

__all__ = [
    "GridWarning",
    "header_of",
    "pixel_grid",
    "read_grid",
    "read_spectrum",
    "sort_by_bias",
    "to_image",
    "write_spectrum_csv",
]

METADATA_KEYS = (
    "temperature_K",
    "lockin_amplitude_V",
    "lockin_frequency_Hz",
    "setpoint_bias_V",
    "setpoint_current_A",
)
"""The fixed-name numeric metadata every reader sets in ``Dataset.attrs`` (NaN where the file does not say)."""
SOURCE_KEYS = ("temperature_source", "lockin_amplitude_source", "lockin_amplitude_kind", "lockin_frequency_source")
SPECTRUM_SUFFIXES = (".dat", ".vert", ".csv", ".txt", ".tsv")
"""The files of a folder that ``read_grid`` reads as single spectra (case-insensitive); others are ignored."""
BIAS_TOLERANCE_V = 1e-9
"""Spectra of one grid must share the bias axis to this (V): far below the step of any bias sweep (5 uV for the
MnPc grid), far above the rounding of the values as the files write them."""


class GridWarning(UserWarning):
    """``read_grid`` / ``pixel_grid`` left pixels out (named, with the reason), or headers lack positions."""


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


def read_grid(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    partial: bool = False,
    direction: str = "forward",
    channel: str | None = None,
    sort: bool = False,
) -> xr.Dataset:
    """Read a grid of spectra: a Nanonis ``.3ds`` file, or a folder, glob pattern or list of single spectra.

    **A ``.3ds`` file** (``path`` names an existing file). Layout: ``key=value`` header lines up to
    ``:HEADER_END:``, then big-endian float32, pixel after pixel (``x`` fastest): the ``# Parameters (4 byte)``
    values (``Fixed parameters`` then ``Experiment parameters``), then ``Points`` values of each channel in
    ``Channels`` order. Returns dims ``(y, x, bias)``; :func:`pixel_grid` turns it into the ``(pixel, bias)``
    layout below.

    **Single spectra** (``path`` a folder, a glob pattern such as ``"grid1/*.dat"``, or a list of files): every
    file is read by :func:`read_spectrum` (a folder: its files ending in ``.dat``, ``.vert``, ``.csv``, ``.txt``
    or ``.tsv``, not its sub-folders; a glob or a list: every file named). Pixels are in natural order of the
    file names (``_2`` before ``_10``), whatever the order of a list. A file that fails to parse, is cut short,
    holds NaN or inf in its dI/dV or current, or has no dI/dV channel is left out and **reported**: a
    :class:`GridWarning` names each such file with the reason, and ``attrs['skipped_json']`` lists them. All
    spectra must share one bias axis (same points, within ``BIAS_TOLERANCE_V`` = 1e-9 V): a file whose axis
    differs is an error, not resampled (a different sweep is a different measurement; read it with
    ``read_spectrum``), except that an axis that is a contiguous part of the others' (a sweep cut short in a
    format without a point count) is skipped as truncated. Pixel positions are the headers' ``X (m)`` and
    ``Y (m)`` (Nanonis; in a CSV, comment lines ``# X (m) = 1.5e-9``); a file without them gets NaN and a
    :class:`GridWarning`.

    Args:
        path: the ``.3ds`` file; or a folder, a glob pattern or a list of spectrum files.
        partial: ``.3ds`` only. An interrupted grid holds fewer pixels than ``Grid dim`` says. By default that
            raises; ``True`` reads the complete pixels and fills the rest with NaN, and
            ``attrs['n_pixels_measured']`` says how many were measured.
        direction, channel, sort: single spectra only, passed to :func:`read_spectrum` (a ``.3ds`` grid keeps
            every channel, the backward sweep as ``<name>_bwd``).

    Returns:
        **.3ds**: ``xarray.Dataset`` with dims ``(y, x, bias)`` (the sweep dim is ``bias`` when ``Sweep Signal``
        is the bias, else the sanitised sweep signal): coordinates ``x``, ``y`` (pixel indices) and ``bias`` (V,
        ``linspace(Sweep Start, Sweep End, Points)`` for ``Filetype=Linear`` grids whose pixels share the
        sweep; absent otherwise); one variable per channel ``(y, x, bias)`` under its sanitised name (the
        current is ``current``, the lock-in channel that ``read_spectrum`` would pick is ``didv``, channels
        of a backward sweep keep their tag: ``current_bwd``); one variable per
        parameter ``param_<name>`` ``(y, x)``. ``attrs``: the fixed metadata of ``read_spectrum``,
        ``format``, ``source``, ``header_json``, ``n_pixels_measured``, ``n_pixels_total``.

        **Single spectra**: dims ``(pixel, bias)``. Variables ``didv`` ``(pixel, bias)`` (units and long_name of
        the first file) and ``current`` ``(pixel, bias)`` when every pixel has one. Coordinates ``bias`` (V, the
        common axis, in the files' order unless ``sort``), per pixel ``x``, ``y`` (m), ``name`` (file name),
        ``file`` (full path), and ``row``, ``col`` (int) when the positions form a regular lattice (see below).
        ``attrs``: the fixed metadata of ``read_spectrum`` (``temperature_K``, ``lockin_amplitude_V``, ...)
        where all pixels agree; where they differ the attribute is NaN (a ``..._source`` string: ``'varies per
        pixel'``) and a per-pixel coordinate of that name holds the values. Also ``format='spectra-folder'``,
        ``spectrum_format`` (the files' format), ``source`` (the folder, the pattern, or the list's common
        folder), ``source_kind`` (``'folder'``, ``'glob'``, ``'list'``), ``didv_channel``, ``direction``,
        ``sorted_by_bias``, ``n_pixels_read``, ``n_pixels_skipped``, ``skipped_json`` (JSON list of
        ``{"file": ..., "reason": ...}``), ``ignored_files_json`` (a folder's files not read for their suffix),
        and the geometry:

        * ``grid_layout``: ``'lattice'`` when the positions are a (possibly rotated, sheared, holed) regular
          lattice ``p = grid_origin_m + col a1 + row a2``; ``row`` and ``col`` are then integer coordinates
          with ``col`` along the fast (within-row) step of the file order; ``grid_shape`` = (rows, cols),
          ``grid_step_m`` = ``|a1|``, ``grid_row_step_m`` = ``|a2|``, ``grid_angle_deg`` = the angle of ``a1``
          from the +x axis (counter-clockwise), ``grid_lattice_angle_deg`` = the angle between ``a1`` and
          ``a2``, ``grid_vectors_m`` = ``(a1x, a1y, a2x, a2y)``, ``grid_residual_m`` = the largest distance of
          a pixel from its lattice point (the lattice is fitted by least squares; more than 25 % of a step is
          not a lattice).
        * ``grid_layout='none'`` otherwise (positions missing, scattered, or two on one lattice point): no
          ``row``/``col``, and ``grid_layout_reason`` says why.

    Raises:
        DataFileError: ``.3ds``: no ``:HEADER_END:``, a header key missing, or a data size that does not match
            the header (the message gives both). Single spectra: an empty folder, list or glob; no readable
            file left (the message names the folder and the reasons); a bias axis that differs from the
            others' (names both files); dI/dV channels that differ between files (pass ``channel=``); an
            option that does not apply to the kind of input.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for i, k in enumerate((1, 2, 10)):  # a line of three pixels 1 nm apart (CSV: '# X (m) = ...' lines)
        ...     text = f"# X (m) = {i}e-9\\n# Y (m) = 0\\nbias (mV),didv\\n-1,{k}\\n0,0.1\\n1,0.6\\n"
        ...     _ = (d / f"s_{k}.csv").write_text(text)
        >>> ds = read_grid(d)
        >>> dict(ds.sizes), ds["name"].values.tolist(), ds["didv"].values[:, 0].tolist()
        ({'pixel': 3, 'bias': 3}, ['s_1.csv', 's_2.csv', 's_10.csv'], [1.0, 2.0, 10.0])
        >>> ds.attrs["grid_layout"], ds["col"].values.tolist(), round(ds.attrs["grid_step_m"] * 1e9, 9)
        ('lattice', [0, 1, 2], 1.0)
    """
    options = {"direction": direction, "channel": channel, "sort": sort}
    if isinstance(path, bytes):
        raise DataFileError(f"read_grid: path = {path!r} is bytes; pass a str or pathlib.Path")
    if isinstance(path, (str, os.PathLike)):
        single = Path(path)
        if single.is_dir():
            files, ignored = _folder_files(single)
            return _read_spectra(files, os.path.abspath(single), "folder", ignored, partial, **options)
        if not single.exists() and re.search(r"[*?\[]", str(path)):
            matches = [Path(f) for f in glob.glob(str(path), recursive=True) if Path(f).is_file()]
            if not matches:
                raise DataFileError(
                    f"read_grid: the pattern {str(path)!r} matches no file; check the folder and the pattern"
                )
            return _read_spectra(matches, str(path), "glob", [], partial, **options)
        for name, default in (("direction", "forward"), ("channel", None), ("sort", False)):
            if options[name] != default:
                raise fail(
                    single,
                    f"read_grid: {name}={options[name]!r} applies to folders, globs and lists of single spectra; a "
                    ".3ds grid keeps every channel (the backward sweep as <name>_bwd): select from the Dataset",
                )
        return _read_3ds(single, partial)
    files = [Path(f) for f in path]
    if not files:
        raise DataFileError("read_grid: the list of files is empty; pass at least one spectrum file")
    seen: dict[str, Path] = {}
    for f in files:
        key = os.path.realpath(f)
        if key in seen:
            raise DataFileError(f"read_grid: {f} is listed twice (as {seen[key]}); each pixel must be its own file")
        seen[key] = f
    try:
        common = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    except ValueError:  # different drives
        common = ""
    return _read_spectra(files, common, "list", [], partial, **options)


def _read_3ds(path: Path, partial: bool) -> xr.Dataset:
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


def pixel_grid(ds: xr.Dataset) -> xr.Dataset:
    """A ``.3ds`` grid from :func:`read_grid` ``(y, x, ...)`` in the ``(pixel, ...)`` layout of a folder of spectra.

    Pixels are in file order (``x`` fastest). Every variable with dims ``y`` and ``x`` becomes ``(pixel, ...)``;
    coordinates per pixel: ``row`` (the ``y`` index), ``col`` (the ``x`` index), ``x``, ``y`` (m, from the
    ``param_x`` / ``param_y`` parameters, the tip position of each pixel; NaN when the grid has none), ``name``
    (``'<file>[y=i,x=j]'``) and ``file``. Pixels never measured (an interrupted grid read with ``partial=True``:
    all channels NaN) and pixels with a NaN or inf in ``didv`` are left out and reported (a :class:`GridWarning`
    and ``attrs['skipped_json']``), as :func:`read_grid` does for files. ``attrs``: those of the grid, plus
    ``n_pixels_read``, ``n_pixels_skipped``, ``skipped_json``, ``grid_layout='lattice'``, ``grid_shape`` and
    the geometry of :func:`read_grid` (steps and angle from a least-squares fit of the positions on the indices;
    NaN where the grid has no positions or a single row or column). A Dataset already in the ``pixel`` layout is
    returned as it is.

    Raises:
        ShapeError: the Dataset has neither a ``pixel`` dim nor ``y`` and ``x`` dims.
        DataFileError: no pixel is left.
    """
    if "pixel" in ds.dims:
        return ds
    if not {"y", "x"} <= set(ds.dims):
        raise ShapeError(
            f"pixel_grid: the Dataset has dims {dict(ds.sizes)}; expected a .3ds grid from read_grid (dims y, x, "
            "...) or a Dataset with a 'pixel' dim"
        )
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    source = str(ds.attrs.get("source", ""))
    row, col = np.divmod(np.arange(ny * nx), nx)
    data_vars: dict = {}
    per_pixel: list[str] = []
    for name, var in ds.data_vars.items():
        if {"y", "x"} <= set(var.dims):
            yx = var.transpose("y", "x", ...)
            data_vars[name] = (("pixel", *yx.dims[2:]), yx.values.reshape(ny * nx, *yx.shape[2:]), yx.attrs)
            per_pixel.append(name)
        else:
            data_vars[name] = var
    coords: dict = {k: c for k, c in ds.coords.items() if k not in ("x", "y") and not {"x", "y"} & set(c.dims)}
    for axis in ("x", "y"):
        param = f"param_{axis}"
        values = ds[param].transpose("y", "x").values.reshape(-1) if param in ds else np.full(ny * nx, np.nan)
        coords[axis] = ("pixel", values.astype(np.float64), {"units": "m", "long_name": f"tip position {axis}"})
    coords["row"] = ("pixel", row.astype(np.int64))
    coords["col"] = ("pixel", col.astype(np.int64))
    label = Path(source).name or "grid"
    coords["name"] = ("pixel", np.array([f"{label}[y={i},x={j}]" for i, j in zip(row, col, strict=True)]))
    coords["file"] = ("pixel", np.full(ny * nx, os.path.abspath(source) if source else ""))
    out = xr.Dataset(data_vars, coords=coords, attrs=dict(ds.attrs))

    spectra = [v for v in per_pixel if out[v].ndim > 1]
    measured = np.zeros(ny * nx, bool)
    for v in spectra or per_pixel:
        values = out[v].values.reshape(ny * nx, -1)
        measured |= np.isfinite(values).any(axis=1)
    skipped: list[dict] = []
    keep = measured.copy()
    for k in np.flatnonzero(~measured):
        skipped.append({"file": str(out["name"].values[k]), "reason": "not measured (the grid was interrupted)"})
    if "didv" in out:
        bad = (~np.isfinite(out["didv"].values.reshape(ny * nx, -1))).sum(axis=1)
        for k in np.flatnonzero(measured & (bad > 0)):
            reason = f"{bad[k]} non-finite dI/dV value(s) (NaN or inf, of {out['didv'].shape[-1]})"
            skipped.append({"file": str(out["name"].values[k]), "reason": reason})
        keep &= bad == 0
    if not keep.any():
        raise DataFileError(f"pixel_grid: no pixel of {source or 'the grid'} is left: {_reasons(skipped)}")
    out = out.isel(pixel=np.flatnonzero(keep))
    _warn_skipped("pixel_grid", source, skipped, stacklevel=2)  # the caller of pixel_grid
    out.attrs.update(n_pixels_read=int(keep.sum()), n_pixels_skipped=len(skipped), skipped_json=json.dumps(skipped))
    out.attrs.update(_index_geometry(out, (ny, nx)))
    return out


def to_image(data: xr.Dataset | xr.DataArray) -> xr.Dataset | xr.DataArray:
    """Per-pixel values ``(pixel, ...)`` back onto the grid ``(row, col, ...)``, NaN where no pixel is (holes).

    ``data`` needs the ``row`` and ``col`` coordinates of :func:`read_grid` / :func:`pixel_grid` (a result
    indexed by ``pixel`` that kept them, e.g. a fit's Dataset on the grid's coordinates). The image is
    ``attrs['grid_shape']`` large when ``data`` carries it (a Dataset, or a DataArray that kept its attrs), else
    ``max(row) + 1`` by ``max(col) + 1``. Numbers and booleans become float64 (complex stays complex) with NaN in
    the holes; strings get ``''``. Per-pixel coordinates (``x``, ``y``, ``name``, ...) become ``(row, col)``
    coordinates; variables without a ``pixel`` dim are kept as they are. For a map:
    ``to_image(ds["E_b"]).plot()``, or ``imshow`` of ``.values`` (rows are the slow scan axis; the grid is
    rotated by ``attrs['grid_angle_deg']`` in the sample frame).

    Raises:
        ShapeError: no ``pixel`` dim, no ``row``/``col`` coordinates (positions not on a lattice: ``grid_layout``
            ``'none'``; plot ``x``, ``y`` as points instead), or two pixels on one (row, col).
    """
    if not isinstance(data, (xr.Dataset, xr.DataArray)):
        raise ShapeError(f"to_image: expected an xarray Dataset or DataArray, got {type(data).__name__}")
    if "pixel" not in data.dims:
        raise ShapeError(f"to_image: the data have dims {tuple(data.dims)}; expected a 'pixel' dim")
    if "row" not in data.coords or "col" not in data.coords:
        why = data.attrs.get("grid_layout_reason", "")
        raise ShapeError(
            "to_image: the pixels have no 'row'/'col' coordinates"
            + (f" (grid_layout = 'none': {why})" if why else "")
            + "; only pixels on a regular lattice make an image: plot the x, y coordinates as points instead"
        )
    row = np.asarray(data["row"].values, dtype=np.int64)
    col = np.asarray(data["col"].values, dtype=np.int64)
    shape = data.attrs.get("grid_shape")
    if shape is not None and len(np.atleast_1d(shape)) == 2:
        n_rows, n_cols = (int(v) for v in np.atleast_1d(shape))
    else:
        n_rows, n_cols = int(row.max()) + 1, int(col.max()) + 1
    if row.min() < 0 or col.min() < 0 or row.max() >= n_rows or col.max() >= n_cols:
        raise ShapeError(f"to_image: row/col outside the grid_shape {(n_rows, n_cols)}")
    flat = row * n_cols + col
    if np.unique(flat).size != flat.size:
        k = np.flatnonzero(np.bincount(flat) > 1)[0]
        raise ShapeError(f"to_image: two pixels share row {k // n_cols}, col {k % n_cols}")

    def image(da: xr.DataArray) -> xr.DataArray:
        da = da.transpose("pixel", ...)
        values = np.asarray(da.values)
        if values.dtype.kind in "biuf":
            values, fill = values.astype(np.float64), np.nan
        elif values.dtype.kind == "c":
            values, fill = values.astype(np.complex128), complex(np.nan, np.nan)
        else:
            fill = ""
        out = np.full((n_rows, n_cols, *values.shape[1:]), fill, dtype=values.dtype)
        out[row, col] = values
        return xr.DataArray(out, dims=("row", "col", *da.dims[1:]), attrs=da.attrs)

    coords: dict = {"row": np.arange(n_rows), "col": np.arange(n_cols)}
    for name, c in data.coords.items():
        if name in ("row", "col", "pixel"):
            continue
        coords[name] = image(c).variable if "pixel" in c.dims else c.variable
    if isinstance(data, xr.DataArray):
        out = image(data.reset_coords(drop=True))
        return out.assign_coords(coords).rename(data.name)
    variables = {
        name: image(var.reset_coords(drop=True)) if "pixel" in var.dims else var.reset_coords(drop=True)
        for name, var in data.data_vars.items()
    }
    return xr.Dataset(variables, coords=coords, attrs=dict(data.attrs))


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


def _natural_key(text: str) -> list:
    """``'grid_2'`` before ``'grid_10'``: digit runs compare as numbers, the rest case-insensitively."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _folder_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The spectrum files of ``folder`` (by suffix, not hidden) and the names of its other files."""
    try:
        entries = [e for e in folder.iterdir() if e.is_file() and not e.name.startswith(".")]
    except OSError as exc:
        raise DataFileError(f"read_grid: cannot list the folder {folder} ({exc.strerror or exc})") from exc
    files = [e for e in entries if e.suffix.lower() in SPECTRUM_SUFFIXES]
    ignored = sorted((e.name for e in entries if e.suffix.lower() not in SPECTRUM_SUFFIXES), key=_natural_key)
    if not files:
        grids = [name for name in ignored if name.lower().endswith(".3ds")]
        hint = f"; it holds the .3ds grid(s) {grids[:3]}: pass the file itself" if grids else ""
        others = f" (its files: {ignored[:5]}{' ...' if len(ignored) > 5 else ''})" if ignored and not grids else ""
        raise DataFileError(
            f"read_grid: the folder {folder} holds no single-spectrum file (names ending in "
            f"{', '.join(SPECTRUM_SUFFIXES)}){others}{hint}; for other names pass a glob pattern or a list of files"
        )
    return files, ignored


def _reason(path: Path, exc: BaseException) -> str:
    """The message of a read error without the leading file name (the skip record names the file)."""
    text = str(exc.strerror or exc) if isinstance(exc, OSError) else str(exc)
    for prefix in (f"{path}: ", f"{path.name}: "):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def _reasons(skipped: list[dict], limit: int = 5) -> str:
    text = "; ".join(f"{Path(s['file']).name}: {s['reason']}" for s in skipped[:limit])
    return text + (f"; ... ({len(skipped) - limit} more)" if len(skipped) > limit else "")


def _warn_skipped(who: str, source: str, skipped: list[dict], stacklevel: int) -> None:
    if skipped:
        warnings.warn(
            f"{who}: {len(skipped)} pixel(s) of {source} left out (attrs['skipped_json'] lists them): "
            + _reasons(skipped, limit=20),
            GridWarning,
            stacklevel=stacklevel + 1,
        )


def _is_part_of(short: np.ndarray, full: np.ndarray) -> bool:
    """Whether ``short`` equals the start or the end of ``full`` (a sweep cut short), to BIAS_TOLERANCE_V."""
    n = short.size
    return any(np.abs(short - part).max() <= BIAS_TOLERANCE_V for part in (full[:n], full[full.size - n :]))


def _read_spectra(
    files: list[Path],
    source: str,
    kind: str,
    ignored: list[str],
    partial: bool,
    *,
    direction: str,
    channel: str | None,
    sort: bool,
) -> xr.Dataset:
    """read_grid of single spectra (see its docstring)."""
    if partial:
        raise DataFileError(
            f"read_grid: partial=True applies to .3ds grids; {source} is a {kind} of single spectra, whose cut-short "
            "files are skipped and reported anyway"
        )
    if direction not in _nanonis.DIRECTIONS:
        raise DataFileError(f"read_grid: direction={direction!r}; expected one of {_nanonis.DIRECTIONS}")
    files = sorted(files, key=lambda f: (_natural_key(f.name), _natural_key(str(f))))
    skipped: list[dict] = []
    read: list[tuple[Path, xr.Dataset]] = []
    for f in files:
        try:
            ds = read_spectrum(f, channel=channel, direction=direction, sort=sort)
        except (OSError, ValueError) as exc:  # DataFileError is a ValueError
            skipped.append({"file": os.path.abspath(f), "reason": _reason(f, exc)})
            continue
        if "didv" not in ds:
            reason = "no dI/dV channel (no lock-in column was recognised; pass channel= to name one)"
            skipped.append({"file": os.path.abspath(f), "reason": reason})
            continue
        read.append((f, ds))
    if not read:
        raise DataFileError(
            f"read_grid: no spectrum of the {kind} {source} could be read ({len(files)} file(s)): {_reasons(skipped)}"
        )

    # one bias axis: the most common length (ties: the first file's) is the reference
    lengths = np.array([ds.sizes["bias"] for _, ds in read])
    counts = {n: int((lengths == n).sum()) for n in lengths.tolist()}
    ref_file, ref = next((f, ds) for f, ds in read if counts[ds.sizes["bias"]] == max(counts.values()))
    ref_bias = ref["bias"].values
    kept: list[tuple[Path, xr.Dataset]] = []
    for f, ds in read:
        bias = ds["bias"].values
        if bias.size == ref_bias.size:
            diff = float(np.abs(bias - ref_bias).max())
            if diff > BIAS_TOLERANCE_V:
                raise fail(
                    f,
                    f"read_grid: its bias axis differs from that of {ref_file} by up to {diff:.3g} V (more than "
                    f"{BIAS_TOLERANCE_V:g} V); the spectra of a grid must share one bias axis and read_grid does not "
                    "resample: read this file with read_spectrum, or resample the spectra onto one axis first",
                )
        elif bias.size < ref_bias.size and _is_part_of(bias, ref_bias):
            reason = f"truncated: {bias.size} of the {ref_bias.size} bias points of the others ({ref_file.name})"
            skipped.append({"file": os.path.abspath(f), "reason": reason})
            continue
        else:
            raise fail(
                f,
                f"read_grid: its bias axis has {bias.size} points ({1e3 * bias[0]:.6g} to {1e3 * bias[-1]:.6g} mV) "
                f"where {ref_file} has {ref_bias.size} ({1e3 * ref_bias[0]:.6g} to {1e3 * ref_bias[-1]:.6g} mV); "
                "the spectra of a grid must share one bias axis and read_grid does not resample: read the grids "
                "separately, or resample the spectra onto one axis first",
            )
        if ds.attrs["didv_channel"] != ref.attrs["didv_channel"]:
            raise fail(
                f,
                f"read_grid: its dI/dV channel {ds.attrs['didv_channel']!r} differs from "
                f"{ref.attrs['didv_channel']!r} of {ref_file}; pass channel= to read the same channel from all files",
            )
        kept.append((f, ds))
    if not kept:  # pragma: no cover (the reference itself is always kept)
        raise DataFileError(f"read_grid: no spectrum of the {kind} {source} is left: {_reasons(skipped)}")

    n = len(kept)
    names = [f.name for f, _ in kept]
    data_vars: dict = {"didv": (("pixel", "bias"), np.stack([ds["didv"].values for _, ds in kept]), ref["didv"].attrs)}
    if all("current" in ds for _, ds in kept):
        stack = np.stack([ds["current"].values for _, ds in kept])
        data_vars["current"] = (("pixel", "bias"), stack, ref["current"].attrs)
    coords: dict = {"bias": ("bias", ref_bias, dict(ref["bias"].attrs))}
    positions = np.full((n, 2), np.nan)
    for k, (_, ds) in enumerate(kept):
        header = header_of(ds)
        positions[k] = to_float(header.get("X (m)")), to_float(header.get("Y (m)"))
    coords["x"] = ("pixel", positions[:, 0], {"units": "m", "long_name": "tip position x (header 'X (m)')"})
    coords["y"] = ("pixel", positions[:, 1], {"units": "m", "long_name": "tip position y (header 'Y (m)')"})
    coords["name"] = ("pixel", np.array(names))
    coords["file"] = ("pixel", np.array([os.path.abspath(f) for f, _ in kept]))

    attrs: dict = {}
    for key in (*METADATA_KEYS, "temperature_column_mean_K"):
        values = np.array([float(ds.attrs.get(key, math.nan)) for _, ds in kept])
        same = np.all((values == values[0]) | (np.isnan(values) & np.isnan(values[0])))
        attrs[key] = float(values[0]) if same else math.nan
        if not same:
            coords[key] = ("pixel", values)
    for key in SOURCE_KEYS:
        values = {str(ds.attrs.get(key, "")) for _, ds in kept}
        attrs[key] = values.pop() if len(values) == 1 else f"varies per pixel (see the coordinates {key[:-7]}...)"
    formats = sorted({str(ds.attrs.get("format", "")) for _, ds in kept})
    attrs["format"] = "spectra-folder"
    attrs["spectrum_format"] = formats[0] if len(formats) == 1 else "mixed: " + ", ".join(formats)
    attrs["source"] = str(source)
    attrs["source_kind"] = kind
    attrs["didv_channel"] = ref.attrs["didv_channel"]
    attrs["direction"] = direction
    attrs["sorted_by_bias"] = int(sort)
    attrs["n_pixels_read"] = n
    attrs["n_pixels_skipped"] = len(skipped)
    attrs["skipped_json"] = json.dumps(skipped)
    attrs["ignored_files_json"] = json.dumps(ignored)

    missing = [name for name, p in zip(names, positions, strict=True) if not np.isfinite(p).all()]
    if missing:
        reason = f"{len(missing)} of {n} spectra have no position in their header ('X (m)', 'Y (m)')"
        warnings.warn(
            f"read_grid: {reason}; their x and y are NaN: {missing[:20]}{' ...' if len(missing) > 20 else ''}",
            GridWarning,
            stacklevel=3,
        )
        attrs.update(grid_layout="none", grid_layout_reason=reason)
    else:
        lattice = fit_lattice(positions, names)
        if lattice.ok:
            coords["row"] = ("pixel", lattice.row)
            coords["col"] = ("pixel", lattice.col)
            attrs.update(_geometry_attrs(lattice.a1, lattice.a2, lattice.origin, lattice.residual, lattice.shape))
        else:
            attrs.update(grid_layout="none", grid_layout_reason=lattice.reason)
    _warn_skipped("read_grid", str(source), skipped, stacklevel=3)  # the caller of read_grid
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _geometry_attrs(a1, a2, origin, residual: float, shape) -> dict:
    """The grid_* attributes of a lattice p = origin + col a1 + row a2 (see read_grid)."""
    a1, a2, origin = (np.asarray(v, dtype=np.float64) for v in (a1, a2, origin))
    n1, n2 = float(np.linalg.norm(a1)), float(np.linalg.norm(a2))
    cosine = float(a1 @ a2) / (n1 * n2) if n1 > 0 and n2 > 0 else math.nan  # NaN steps: NaN
    between = math.degrees(math.acos(float(np.clip(cosine, -1.0, 1.0)))) if math.isfinite(cosine) else math.nan
    return {
        "grid_layout": "lattice",
        "grid_layout_reason": "",
        "grid_shape": np.array(shape, dtype=np.int64),
        "grid_step_m": n1,
        "grid_row_step_m": n2,
        "grid_angle_deg": math.degrees(math.atan2(a1[1], a1[0])),
        "grid_lattice_angle_deg": between,
        "grid_vectors_m": np.concatenate([a1, a2]),
        "grid_origin_m": origin,
        "grid_residual_m": float(residual),
    }


def _index_geometry(ds: xr.Dataset, shape: tuple[int, int]) -> dict:
    """Geometry of a .3ds grid in the pixel layout: the steps fitted (least squares) to the positions on the
    (row, col) indices; NaN where the grid has no positions or a single row or column."""
    xy = np.column_stack([ds["x"].values, ds["y"].values])
    row, col = ds["row"].values.astype(float), ds["col"].values.astype(float)
    ok = np.isfinite(xy).all(axis=1)
    nan2 = np.full(2, np.nan)
    a1, a2, origin, residual = nan2, nan2, nan2, math.nan
    if ok.sum() >= 1:
        columns = [np.ones(int(ok.sum()))]
        has_col, has_row = np.ptp(col[ok]) > 0, np.ptp(row[ok]) > 0
        columns += [col[ok]] if has_col else []
        columns += [row[ok]] if has_row else []
        design = np.column_stack(columns)
        coef, *_ = np.linalg.lstsq(design, xy[ok], rcond=None)
        origin = coef[0]
        a1 = coef[1] if has_col else nan2
        a2 = coef[1 + int(has_col)] if has_row else nan2
        residual = float(np.linalg.norm(design @ coef - xy[ok], axis=1).max())
    return _geometry_attrs(a1, a2, origin, residual, shape)
