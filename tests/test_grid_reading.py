"""Grids of spectra as data (issue 14, item 1): ``read_grid`` on a folder, glob or list of single spectra,
``pixel_grid`` on a ``.3ds`` grid, ``to_image``, and the per-pixel Shiba pairs (``shiba_pairs``,
``in_gap_visibility``).

Real data: ``shared/realdata/mnpc_grid1`` (MANIFEST.md), rows 1-5 of a 10 x 10 Nanonis grid over one MnPc molecule
on Pb(111), normal tip, T = 1.06 K, 50 uV rms. Every expected number is read here independently of the reader: the
pixel positions by a regular expression from the raw header text, the dI/dV column by ``numpy.loadtxt``, the
per-pixel peaks by the existing single-spectrum ``shiba_pair``, the visibility by a few lines of NumPy. Synthetic
grids (tiny CSV files with ``# X (m) = ...`` header lines) test the lattice fit, holes and the error messages.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import xarray as xr
from shared_data import REALDATA, require

from shibajax.errors import DataFileError, FitError, ShapeError
from shibajax.measurement.peaks import VISIBLE, in_gap_visibility, shiba_pair, shiba_pairs
from shibajax.measurement.readers import GridWarning, pixel_grid, read_grid, read_spectrum, to_image

GRID = REALDATA / "mnpc_grid1"
KPFM = REALDATA / "spmgrids_Grid_Spectroscopy002_KPFM.3ds"
WINDOW = 2.5  # mV: the fit window of tests/test_fitting_realdata.py (gap, YSR pair, coherence peaks)
SEARCH, NARROW = (0.2, 1.0), 0.03  # mV: the peak search and parabola half width used on Spec001 (same session)
IN_GAP = 1.0  # mV: below the Pb coherence peaks (~1.4 mV)
realdata = pytest.mark.realdata


def _header_position(path):
    """(X, Y) in m from the raw header text, by a regular expression (independent of the reader)."""
    text = path.read_text(encoding="latin-1")
    return tuple(float(re.search(rf"^{axis} \(m\)\t(\S+)", text, re.M).group(1)) for axis in "XY")


def _csv(path, bias_mv, didv, x=None, y=None, extra=""):
    """A tiny spectrum CSV with the tip position in '# X (m) = ...' header lines (read_spectrum keeps them)."""
    lines = [extra] if extra else []
    if x is not None:
        lines += [f"# X (m) = {float(x)!r}", f"# Y (m) = {float(y)!r}"]
    lines.append("bias (mV),didv")
    lines += [f"{float(b)!r},{float(g)!r}" for b, g in zip(bias_mv, didv, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def grid():
    return read_grid(require(GRID))


# --------------------------------------------------------------------------------------------- real grid


@realdata
def test_mnpc_folder_reads_50_pixels_with_header_positions(grid):
    files = sorted(GRID.glob("*.dat"))
    assert len(files) == 50 and dict(grid.sizes) == {"pixel": 50, "bias": 2000}  # MANIFEST: 50 x 2000 points
    assert grid["name"].values.tolist() == [f.name for f in files]  # zero-padded names: natural = plain order
    for k in (0, 16, 34, 49):
        x, y = _header_position(files[k])
        assert grid["x"].values[k] == x and grid["y"].values[k] == y  # exact: the same decimal text parsed
        # the dI/dV column 'X% LockIn (V)' (third) of the [DATA] block, read by numpy.loadtxt
        lines = files[k].read_text(encoding="latin-1").splitlines()
        table = np.loadtxt(lines[lines.index("[DATA]") + 2 :], delimiter="\t")
        np.testing.assert_array_equal(grid["didv"].values[k], table[:, 2])
        np.testing.assert_array_equal(grid["bias"].values, table[:, 0])
    assert grid["current"].shape == (50, 2000) and grid["didv"].attrs["units"] == "V"
    attrs = grid.attrs
    assert (attrs["temperature_K"], attrs["lockin_amplitude_V"], attrs["lockin_frequency_Hz"]) == (1.06, 5e-5, 912.0)
    assert attrs["setpoint_bias_V"] == 5e-3 and attrs["setpoint_current_A"] == 200e-12  # header: 5mV, 200 pA
    assert attrs["format"] == "spectra-folder" and attrs["didv_channel"] == "X% LockIn (V)"
    assert (attrs["n_pixels_read"], attrs["n_pixels_skipped"], json.loads(attrs["skipped_json"])) == (50, 0, [])


@realdata
def test_mnpc_lattice_is_5_by_10(grid):
    """Rows 1-5 of a 10 x 10 raster (MANIFEST): pixel k (0-based) is row k // 10, col k % 10."""
    k = np.arange(50)
    np.testing.assert_array_equal(grid["row"].values, k // 10)
    np.testing.assert_array_equal(grid["col"].values, k % 10)
    assert grid.attrs["grid_layout"] == "lattice" and grid.attrs["grid_shape"].tolist() == [5, 10]
    xy = np.array([_header_position(f) for f in sorted(GRID.glob("*.dat"))]).reshape(5, 10, 2)
    along, across = np.diff(xy, axis=1), np.diff(xy, axis=0)  # header differences within and between rows
    # the header writes 6 significant digits (1e-13 m on 50e-9 m): the steps agree to a few 1e-13 m
    assert abs(grid.attrs["grid_step_m"] - np.hypot(*along.reshape(-1, 2).T).mean()) < 5e-13
    assert abs(grid.attrs["grid_row_step_m"] - np.hypot(*across.reshape(-1, 2).T).mean()) < 5e-13
    a1 = grid.attrs["grid_vectors_m"][:2]
    assert abs(a1[0] - 0.1418e-9) < 1e-12  # the ~0.14 nm along x of the issue; with y: |a1| = 0.180 nm
    angle = math.degrees(math.atan2(along[..., 1].mean(), along[..., 0].mean()))
    assert abs(grid.attrs["grid_angle_deg"] - angle) < 0.05 and abs(grid.attrs["grid_lattice_angle_deg"] - 90) < 0.1
    assert grid.attrs["grid_residual_m"] < 1e-12
    image = to_image(grid)
    assert image["didv"].dims == ("row", "col", "bias") and image["didv"].shape == (5, 10, 2000)
    np.testing.assert_array_equal(image["didv"].values.reshape(50, -1), grid["didv"].values)
    assert image["name"].values[2, 3] == "MnPc-grid1_024.dat"


@realdata
def test_mnpc_shiba_pairs_per_pixel(grid):
    """shiba_pairs equals shiba_pair on every pixel; bare Pb (001) has no visible pair, the molecule's centre has."""
    bias = 1e3 * grid["bias"].values
    keep = np.abs(bias) < WINDOW
    bias, data = bias[keep], grid["didv"].values[:, keep]
    pairs = shiba_pairs(bias, data, search=SEARCH, half_width=NARROW)
    for k in range(50):
        try:
            neg, pos = shiba_pair(bias, data[k], search=SEARCH, half_width=NARROW)
        except FitError:
            assert not pairs.found[k] and np.isnan(pairs.energy[k])
            continue
        assert pairs.found[k]
        # the same parabolas, solved as normal equations in a scaled variable instead of polyfit: ~1e-12 mV
        np.testing.assert_allclose(pairs.positions[k], [neg.position, pos.position], rtol=0, atol=1e-9)
        np.testing.assert_allclose(pairs.heights[k], [neg.height, pos.height], rtol=1e-9)
        np.testing.assert_allclose(pairs.errors[k], [neg.error, pos.error], rtol=1e-6)
        assert pairs.energy[k] == pytest.approx(0.5 * (pos.position - neg.position), abs=1e-9)
        assert pairs.offset[k] == pytest.approx(0.5 * (pos.position + neg.position), abs=1e-9)

    visibility = in_gap_visibility(bias, data, IN_GAP)
    for k in (0, 23, 44):  # plain NumPy reference: outer 10 % of the sorted window, in-gap maximum
        order = np.argsort(bias)
        y, n = data[k, order], bias.size // 10
        assert visibility[k] == pytest.approx(
            y[np.abs(bias[order]) < IN_GAP].max() / (0.5 * (y[:n].mean() + y[-n:].mean()))
        )
    visible = visibility > VISIBLE
    table = "\n".join(
        f"{grid['name'].values[k]}  row {grid['row'].values[k]} col {grid['col'].values[k]}  "
        f"E_b {pairs.energy[k]:.4f} meV  visibility {visibility[k]:.2f}  {'visible' if visible[k] else '-'}"
        for k in range(50)
    )
    print(table)
    assert not visible[0] and visibility[0] < 0.5  # bare Pb: ~0.3, the tails of the coherence peaks
    central = (grid["row"].values >= 1) & (grid["col"].values >= 1) & (grid["col"].values <= 8)
    good = visible & central & pairs.found & (pairs.energy > 0.45) & (pairs.energy < 0.65)  # issue: 0.5-0.6 meV
    assert good.sum() >= 10, table
    # the molecule is in the middle: no visible pair on the first row or the edge columns
    edge = (grid["row"].values == 0) | (grid["col"].values == 0) | (grid["col"].values == 9)
    assert not visible[edge].any()


@realdata
def test_glob_and_list_give_the_folder_dataset(grid):
    by_glob = read_grid(str(GRID / "*.dat"))
    files = sorted(GRID.glob("*.dat"))
    rng = np.random.default_rng(14)
    by_list = read_grid([files[i] for i in rng.permutation(len(files))])  # any order: natural order of names
    for other, kind in ((by_glob, "glob"), (by_list, "list")):
        assert other.attrs["source_kind"] == kind
        bare, reference = other.copy(), grid.copy()
        bare.attrs, reference.attrs = {}, {}
        xr.testing.assert_identical(bare, reference)  # data, coords and their attrs
        assert other.attrs.keys() == grid.attrs.keys()
        for key, value in grid.attrs.items():
            if key not in ("source", "source_kind"):
                assert np.array_equal(other.attrs[key], value, equal_nan=isinstance(value, float)), key
    assert by_list.attrs["source"] == grid.attrs["source"] == str(GRID.absolute())


@realdata
def test_truncated_and_nan_files_are_reported_and_skipped(tmp_path):
    """One row of the grid (files 031-040) with 035 cut short mid-line and a NaN in 036's dI/dV."""
    for k in range(31, 41):
        f = require(GRID / f"MnPc-grid1_{k:03d}.dat")
        (tmp_path / f.name).write_bytes(f.read_bytes())
    raw = (tmp_path / "MnPc-grid1_035.dat").read_bytes()
    (tmp_path / "MnPc-grid1_035.dat").write_bytes(raw[: len(raw) // 2 + 7])
    lines = (tmp_path / "MnPc-grid1_036.dat").read_text(encoding="latin-1").split("\n")
    row = lines.index("[DATA]") + 500
    fields = lines[row].split("\t")
    fields[2] = "NaN"  # X% LockIn (V), the dI/dV
    lines[row] = "\t".join(fields)
    (tmp_path / "MnPc-grid1_036.dat").write_text("\n".join(lines), encoding="latin-1")

    with pytest.warns(GridWarning, match=r"2 pixel\(s\) .* left out") as record:
        ds = read_grid(tmp_path)
    message = str(record[0].message)
    assert "MnPc-grid1_035.dat" in message and "MnPc-grid1_036.dat" in message
    skipped = {s["file"].rsplit("/", 1)[-1]: s["reason"] for s in json.loads(ds.attrs["skipped_json"])}
    assert set(skipped) == {"MnPc-grid1_035.dat", "MnPc-grid1_036.dat"}
    assert "columns" in skipped["MnPc-grid1_035.dat"]  # the cut line: fewer columns than the header names
    assert "non-finite dI/dV" in skipped["MnPc-grid1_036.dat"]
    assert (ds.attrs["n_pixels_read"], ds.attrs["n_pixels_skipped"], ds.sizes["pixel"]) == (8, 2, 8)
    assert "MnPc-grid1_035.dat" not in ds["name"].values and np.isfinite(ds["didv"].values).all()
    # the rest keeps its geometry: one row with a hole of two pixels
    assert ds.attrs["grid_layout"] == "lattice" and ds["col"].values.tolist() == [0, 1, 2, 3, 6, 7, 8, 9]
    image = to_image(ds["didv"].isel(bias=0))
    assert image.shape == (1, 10) and np.isnan(image.values[0, 4:6]).all() and np.isfinite(image.values[0, 6:]).all()


@realdata
def test_pixel_grid_of_a_3ds_file(tmp_path):
    grid = read_grid(require(KPFM))
    pixels = pixel_grid(grid)
    assert dict(pixels.sizes) == {"pixel": 400, "bias": 128}  # Grid dim="20 x 20", Points=128
    row, col = np.divmod(np.arange(400), 20)
    np.testing.assert_array_equal(pixels["row"].values, row)
    np.testing.assert_array_equal(pixels["col"].values, col)
    np.testing.assert_array_equal(pixels["x"].values, grid["param_x"].values.reshape(-1))
    np.testing.assert_array_equal(pixels["current"].values, grid["current"].values.reshape(400, 128))
    # Grid settings: a 15 nm square frame, angle 0, 20 x 20 points: steps of 15 / 20 nm (float32 positions)
    assert pixels.attrs["grid_step_m"] == pytest.approx(0.75e-9, rel=1e-5)
    assert pixels.attrs["grid_row_step_m"] == pytest.approx(0.75e-9, rel=1e-5)
    assert abs(pixels.attrs["grid_angle_deg"]) < 1e-3 and pixels.attrs["n_pixels_read"] == 400
    back = to_image(pixels)  # to_image inverts pixel_grid
    np.testing.assert_array_equal(back["current"].values, grid["current"].values)
    assert pixel_grid(pixels) is pixels

    # an interrupted grid: 150 full pixels and part of the 151st; the 250 unmeasured pixels are reported
    raw = KPFM.read_bytes()
    header = raw.index(b":HEADER_END:") + len(b":HEADER_END:\r\n")
    per_pixel = 4 * (18 + 10 * 128)
    (tmp_path / "cut.3ds").write_bytes(raw[: header + 150 * per_pixel + 100])
    cut = read_grid(tmp_path / "cut.3ds", partial=True)
    with pytest.warns(GridWarning, match=r"250 pixel\(s\) .* not measured"):
        part = pixel_grid(cut)
    assert part.sizes["pixel"] == 150 and part.attrs["n_pixels_skipped"] == 250
    np.testing.assert_array_equal(part["current"].values, pixels["current"].values[:150])


# --------------------------------------------------------------------------------- synthetic grids, errors


def test_rotated_holed_lattice_and_scattered_positions(tmp_path):
    """A 4 x 6 raster rotated by 25 degrees, 0.3 nm steps, 2 % position noise, two pixels missing: row/col and
    the steps come back; random positions give no lattice, and to_image says why."""
    rng = np.random.default_rng(3)
    step, angle = 0.3e-9, math.radians(25.0)
    a1 = step * np.array([math.cos(angle), math.sin(angle)])
    a2 = step * np.array([-math.sin(angle), math.cos(angle)])
    bias = np.linspace(-2.0, 2.0, 9)
    missing = {7, 16}
    for k in range(24):
        if k in missing:
            continue
        r, c = divmod(k, 6)
        x, y = np.array([1e-6, 2e-6]) + c * a1 + r * a2 + 0.02 * step * rng.standard_normal(2)
        _csv(tmp_path / f"p_{k + 1}.csv", bias, np.full(9, float(k)), x, y)
    ds = read_grid(tmp_path)
    k = ds["didv"].values[:, 0].astype(int)  # the pixel's index, written as its data
    assert ds["name"].values.tolist()[:3] == ["p_1.csv", "p_2.csv", "p_3.csv"] and "p_10.csv" == ds["name"].values[8]
    np.testing.assert_array_equal(ds["row"].values, k // 6)
    np.testing.assert_array_equal(ds["col"].values, k % 6)
    assert ds.attrs["grid_shape"].tolist() == [4, 6]
    assert ds.attrs["grid_step_m"] == pytest.approx(step, rel=0.02)  # 2 % noise, averaged over 22 pixels
    assert ds.attrs["grid_angle_deg"] == pytest.approx(25.0, abs=1.0)
    image = to_image(ds["didv"].isel(bias=0))
    assert np.isnan(image.values[1, 1]) and np.isnan(image.values[2, 4]) and image.values[3, 5] == 23.0

    scattered = tmp_path / "scattered"
    scattered.mkdir()
    for k, (x, y) in enumerate(rng.random((12, 2)) * 1e-9):
        _csv(scattered / f"s_{k}.csv", bias, np.ones(9), x, y)
    ds = read_grid(scattered)
    assert ds.attrs["grid_layout"] == "none" and "row" not in ds.coords
    assert "not on a regular lattice" in ds.attrs["grid_layout_reason"]
    with pytest.raises(ShapeError, match=r"no 'row'/'col' coordinates \(grid_layout = 'none': the positions"):
        to_image(ds)  # the Dataset's attrs give the reason; a DataArray alone says what to do
    with pytest.raises(ShapeError, match=r"no 'row'/'col' coordinates; only pixels on a regular lattice"):
        to_image(ds["didv"])


def test_read_grid_errors_and_warnings(tmp_path):
    bias = np.linspace(-1.0, 1.0, 5)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.md").write_text("not a spectrum")
    with pytest.raises(DataFileError, match=r"folder .*empty holds no single-spectrum file .*notes\.md"):
        read_grid(empty)
    with pytest.raises(DataFileError, match=r"the pattern .* matches no file"):
        read_grid(str(empty / "*.dat"))
    with pytest.raises(DataFileError, match=r"the list of files is empty"):
        read_grid([])

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_text("hello\n")
    with pytest.raises(DataFileError, match=r"no spectrum of the folder .*bad could be read .*a\.txt: "):
        read_grid(bad)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _csv(mixed / "m_1.csv", bias, np.ones(5), 0.0, 0.0)
    _csv(mixed / "m_2.csv", bias + 1e-3, np.ones(5), 1e-9, 0.0)  # 1 uV off: a different sweep
    with pytest.raises(DataFileError, match=r"m_2\.csv: read_grid: its bias axis differs from that of .*m_1\.csv"):
        read_grid(mixed)
    _csv(mixed / "m_2.csv", np.linspace(-1, 1, 7), np.ones(7), 1e-9, 0.0)
    with pytest.raises(DataFileError, match=r"m_2\.csv: read_grid: its bias axis has 7 points .* has 5"):
        read_grid(mixed)
    _csv(mixed / "m_2.csv", bias[:3], np.ones(3), 1e-9, 0.0)  # a CSV sweep cut short: skipped as truncated
    _csv(mixed / "m_3.csv", bias, np.ones(5), 2e-9, 0.0, extra="# temperature_K = 4.2")
    with pytest.warns(GridWarning, match=r"m_2\.csv: truncated: 3 of the 5 bias points"):
        ds = read_grid(mixed)
    assert ds["name"].values.tolist() == ["m_1.csv", "m_3.csv"]
    # metadata that differ between pixels: NaN attribute, per-pixel coordinate
    assert math.isnan(ds.attrs["temperature_K"]) and np.isnan(ds["temperature_K"].values[0])
    assert ds["temperature_K"].values[1] == 4.2

    with pytest.raises(DataFileError, match=r"listed twice"):
        read_grid([mixed / "m_1.csv", mixed / "m_1.csv"])
    with pytest.raises(DataFileError, match=r"direction='sideways'; expected one of"):
        read_grid(mixed, direction="sideways")
    with pytest.raises(DataFileError, match=r"partial=True applies to \.3ds grids"):
        read_grid(mixed, partial=True)

    nopos = tmp_path / "nopos"
    nopos.mkdir()
    _csv(nopos / "n_1.csv", bias, np.ones(5))
    _csv(nopos / "n_2.csv", bias, np.ones(5), 1e-9, 0.0)
    with pytest.warns(GridWarning, match=r"1 of 2 spectra have no position .*\['n_1\.csv'\]"):
        ds = read_grid(nopos)
    assert np.isnan(ds["x"].values[0]) and ds.attrs["grid_layout"] == "none"

    with pytest.raises(ShapeError, match=r"pixel_grid: the Dataset has dims \{'bias': 5\}"):
        pixel_grid(read_spectrum(nopos / "n_1.csv"))
    with pytest.raises(ShapeError, match=r"to_image: the data have dims \('bias',\); expected a 'pixel' dim"):
        to_image(read_spectrum(nopos / "n_1.csv")["didv"])


@realdata
def test_3ds_options_are_refused():
    with pytest.raises(DataFileError, match=r"direction='backward' applies to folders, globs and lists"):
        read_grid(require(KPFM), direction="backward")


def test_shiba_pairs_synthetic_and_errors():
    """Two Gaussian peaks per pixel at known +-E_b and offset; a flat pixel and a too narrow window are flagged."""
    bias = np.linspace(-1.5, 1.5, 601)  # 5 uV steps

    def gauss(x0, h):
        return h * np.exp(-(((bias - x0) / 0.05) ** 2))

    e_b, offset = np.array([0.3, 0.55, 0.8]), np.array([0.0, -0.02, 0.015])
    data = np.stack([gauss(o - e, 2.0) + gauss(o + e, 1.0) + 0.1 for e, o in zip(e_b, offset, strict=True)])
    data = np.vstack([data, np.full(601, 0.3)])
    pairs = shiba_pairs(bias, data, search=(0.1, 1.2), half_width=0.0225)  # 9 points, none on the edge
    # the parabola through the top +-0.02 of a Gaussian of width 0.05 centres on it: < 1e-6 mV off (grid-symmetric)
    np.testing.assert_allclose(pairs.energy[:3], e_b, atol=1e-6)
    np.testing.assert_allclose(pairs.offset[:3], offset, atol=1e-6)
    # the parabola averages the Gaussian's quartic term over the window, (0.0225 / 0.05)^4 / 2 = 2 % at its edge:
    # the top comes out 0.15 % low; 0.5 % allows it
    np.testing.assert_allclose(pairs.heights[:3], [[2.1, 1.1]] * 3, rtol=5e-3)
    assert pairs.found.tolist() == [True, True, True, False] and np.isnan(pairs.energy[3])
    e, o, h, f = pairs  # unpacks as (E_b, offset, heights, found)
    assert f is pairs.found and h.shape == (4, 2)
    assert shiba_pairs(bias, data, search=(0.1, 1.2), half_width=0.004).found.sum() == 0  # < 5 points per window
    one = shiba_pairs(bias, data[1], search=(0.1, 1.2), half_width=0.0225)
    assert one.energy.shape == () and float(one.energy) == pytest.approx(0.55, abs=1e-6)

    np.testing.assert_allclose(in_gap_visibility(bias, data, (0.1, 1.2))[:3], 2.1 / 0.1, rtol=1e-3)
    with pytest.raises(FitError, match=r"shiba_pairs: bias \(601,\) must be 1D and didv \(4, 600\)"):
        shiba_pairs(bias, data[:, 1:], search=(0.1, 1.2), half_width=0.02)
    with pytest.raises(FitError, match=r"search = \(1.2, 0.1\) must be \(lo, hi\) with 0 <= lo < hi"):
        shiba_pairs(bias, data, search=(1.2, 0.1), half_width=0.02)
    with pytest.raises(FitError, match=r"no bias point with 0.0 < \|bias\| < 0.001"):
        in_gap_visibility(bias[np.abs(bias) > 0.1], data[:, np.abs(bias) > 0.1], 1e-3)
