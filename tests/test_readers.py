"""Readers for measured spectra, on every real file in ``shared/realdata`` (MANIFEST.md gives their sources).

Expected numbers are read by eye from the files' headers (each cited next to the number) and from MANIFEST.md;
columns are cross-checked against ``numpy.loadtxt``, an independent parser. Corrupted and truncated copies,
written to ``tmp_path``, must raise ``DataFileError`` naming the file, the line and the problem.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import shared_data
import xarray as xr

from shibajax.errors import DataFileError, ShibajaxError
from shibajax.measurement.readers import header_of, read_grid, read_spectrum, sort_by_bias, write_spectrum_csv

pytestmark = pytest.mark.realdata  # every test but a few reads the measured files (conftest.py)
DATA = shared_data.REALDATA
MNPC = "spectrafox_MnPc-Pb111_Spec001.dat"
BARE_PB = "spectrafox_MnPc-Pb111_grid1_001_bare-Pb.dat"
SIS = "spectrafox_Pb100_SIS_Spectrum001.dat"
SPMQT = "spmqt_nanonis_sts_15mv.dat"
XARRAY = "nanonis-xarray_i_v.dat"
GEN5 = "pynxtools-spm_Bias-Spectroscopy00015_20230420.dat"
VERT = "spmqt_createc_vert_didz_image_state.VERT"
GRID = "spmgrids_Grid_Spectroscopy002_KPFM.3ds"
SPECTRA = [MNPC, BARE_PB, SIS, SPMQT, XARRAY, GEN5, VERT]

# (points, first bias, last bias) in mV, from MANIFEST.md and the headers' sweep settings.
BIAS_AXIS = {
    MNPC: (2000, 5.0, -5.0),  # Bias Spectroscopy>Sweep Start (V) 5E-3, Sweep End -5E-3, Num Pixel 2000
    BARE_PB: (2000, 5.0, -5.0),  # same header lines
    SIS: (2396, 4.0, -4.0),  # MLS segments 4E-3 ... -4E-3, steps 200+900+200+900+200 less 4 shared ends
    SPMQT: (401, -15.0, 15.0),  # Sweep Start -15E-3, Sweep End 15E-3, Num Pixel 401
    XARRAY: (201, -8.0, 8.0),  # Sweep Start -8E-3, Sweep End 8E-3, Num Pixel 201
    GEN5: (2048, -50.0, 50.0),  # Sweep Start -50E-3, Sweep End 50E-3, Num Pixel 2048
    VERT: (1000, 2500.0, 9000.0),  # Vpoint0.V=2500.0000, Vpoint1.V=9000.0000 (mV); 1000 on the line after DATA
}
# The files write the bias with 6 significant digits (Generic 5: float32, -5.0000001E-2), so ends agree to 1e-6
# relative; Createc's first point is one step (6.5 mV) past Vpoint0.
BIAS_TOL_MV = {VERT: 6.5}

NAN = math.nan
# Fixed metadata, read by eye from each header (the header line is quoted).
METADATA = {
    MNPC: {
        "temperature_K": 1.06,  # Comment09	T=1.06K
        "lockin_amplitude_V": 50e-6,  # Comment07	Lockin: 50uVrms,5ms,5mV
        "lockin_frequency_Hz": 912.0,  # Comment08	Gain:9; 912Hz modulation
        "setpoint_bias_V": 5e-3,  # Bias>Bias (V)	5E-3 (Comment06 Setpoint:5mV,200 pA)
        "setpoint_current_A": 200e-12,  # Z-Controller>Setpoint	200E-12, Setpoint unit	A
    },
    SIS: {
        "temperature_K": NAN,  # no temperature anywhere in the header
        # Comment06 "Vrms =10mVrms" is the lock-in output: x the divider Bias>Calibration (V/V) 5.21E-3 at the sample
        "lockin_amplitude_V": 10e-3 * 5.21e-3,
        "lockin_frequency_Hz": NAN,  # not stated
        "setpoint_bias_V": 5e-3,  # Bias>Bias (V)	5E-3
        "setpoint_current_A": 200e-12,  # Z-Controller>Setpoint	200E-12
    },
    SPMQT: {
        "temperature_K": NAN,  # not stated (metadata anonymised upstream)
        "lockin_amplitude_V": 1.5e-3,  # Lock-in>Amplitude	1.5E-3 (Modulated signal	Bias (V))
        "lockin_frequency_Hz": 799.0,  # Lock-in>Frequency (Hz)	799E+0
        "setpoint_bias_V": -15e-3,  # Bias>Bias (V)	-15E-3
        "setpoint_current_A": 500e-12,  # Z-Controller>Setpoint	500E-12
    },
    XARRAY: {
        "temperature_K": 4.366,  # Ext. VI 1>Microscope temperature (K)	+04.366
        "lockin_amplitude_V": 150e-6,  # Lock-in>Amplitude	150E-6
        "lockin_frequency_Hz": 600.0,  # Lock-in>Frequency (Hz)	600E+0
        "setpoint_bias_V": -8e-3,  # Bias>Bias (V)	-8E-3
        "setpoint_current_A": 100e-12,  # Z-Controller>Setpoint	100E-12
    },
    GEN5: {
        "temperature_K": 2.4591,  # Temperature 1>Temperature 1 (K)	2.4591E+0
        "lockin_amplitude_V": 2e-3,  # Lock-in>Amplitude	2E-3
        "lockin_frequency_Hz": 1e3,  # Lock-in>Frequency (Hz)	1E+3
        "setpoint_bias_V": -50e-3,  # Bias>Bias (V)	-50E-3
        "setpoint_current_A": 25e-12,  # Z-Controller>Setpoint	25E-12
    },
    VERT: {
        "temperature_K": NAN,  # T-STM:=0.00000 (no sensor)
        "lockin_amplitude_V": NAN,  # LockinAmpl=100.000 has no unit and a dI/dz spectrum modulates z, not the bias
        "lockin_frequency_Hz": 543.0,  # LockinFreq=543.00
        "setpoint_bias_V": 2.0188,  # BiasVolt.[mV]=2018.80
        "setpoint_current_A": 1.01e-10,  # SetPoint=1.01E-10
    },
}
METADATA[BARE_PB] = METADATA[MNPC]  # the same header lines
FORMAT = {
    MNPC: ("nanonis-dat", "X% LockIn (V)"),  # no NanonisMain>SW Version line
    BARE_PB: ("nanonis-dat", "X% LockIn (V)"),
    SIS: ("nanonis-dat", "X% LockIn (V)"),
    SPMQT: ("nanonis-generic-4.5", "LockIn (V)"),  # NanonisMain>SW Version	Generic 4.5
    XARRAY: ("nanonis-generic-4", "LIX 1 omega (A)"),
    GEN5: ("nanonis-generic-5", "LI Demod 1 X (A)"),  # Demod 1 runs at Harmonic D1 1, Demod 2 at 2 (d2I/dV2)
    VERT: ("createc-vert", ""),  # the file does not name its channels
}


def _loadtxt(name: str) -> tuple[list[str], np.ndarray]:
    """Column names and numbers of a Nanonis .dat, parsed independently with numpy.loadtxt."""
    lines = (DATA / name).read_text().splitlines()
    at = lines.index("[DATA]")
    return lines[at + 1].rstrip("\t").split("\t"), np.loadtxt(DATA / name, skiprows=at + 2, delimiter="\t")


def _last_digit(x: np.ndarray) -> np.ndarray:
    """The value of the last of the 6 significant digits Nanonis writes (``3.99821E+0`` -> 1e-5)."""
    return 10.0 ** (np.floor(np.log10(np.maximum(np.abs(x), 1e-300))) - 5)


def test_every_realdata_file_is_covered():
    on_disk = {p.name for p in DATA.iterdir() if p.name != "MANIFEST.md"}
    assert on_disk == {*SPECTRA, GRID, "mnpc_grid1"}
    # mnpc_grid1/: 50 spectra of the MnPc grid, same session and header as BARE_PB (MANIFEST.md)
    grid_files = sorted((DATA / "mnpc_grid1").iterdir())
    assert [p.name for p in grid_files] == [f"MnPc-grid1_{k:03d}.dat" for k in range(1, 51)]
    for path in grid_files[:: len(grid_files) - 1]:  # the first and the last: the format is the same throughout
        ds = read_spectrum(path)
        assert ds.bias.size == 2000 and ds.attrs["didv_channel"] == "X% LockIn (V)"
        assert (ds.attrs["temperature_K"], ds.attrs["lockin_amplitude_V"]) == (1.06, 50e-6)


@pytest.mark.parametrize("name", SPECTRA)
def test_bias_axis_and_metadata(name):
    ds = read_spectrum(DATA / name)
    n, first, last = BIAS_AXIS[name]
    tol = BIAS_TOL_MV.get(name, 1e-6 * abs(first))
    bias = ds["bias"]
    assert bias.dtype == np.float64 and bias.attrs["units"] == "V"
    assert bias.size == n
    assert bias.values[0] * 1e3 == pytest.approx(first, abs=tol)
    assert bias.values[-1] * 1e3 == pytest.approx(last, rel=1e-6)
    for key, want in METADATA[name].items():
        got = ds.attrs[key]
        # Parsed from the same decimal text: only float rounding separates them.
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-12), key
    fmt, didv = FORMAT[name]
    assert ds.attrs["format"] == fmt and ds.attrs["didv_channel"] == didv
    assert ds.attrs["source"] == str(DATA / name)
    assert ("didv" in ds) == bool(didv)
    if name != VERT:
        assert ds["current"].attrs["units"] == "A"
        header = header_of(ds)
        assert header["Experiment"] == "bias spectroscopy" and len(header) > 30


def test_metadata_sources_and_kinds():
    mnpc = read_spectrum(DATA / MNPC)
    assert mnpc.attrs["lockin_amplitude_kind"] == "rms"  # "50uVrms"
    assert "Comment09" in mnpc.attrs["temperature_source"]
    xr_ = read_spectrum(DATA / XARRAY)
    assert xr_.attrs["lockin_amplitude_kind"] == "unstated"  # Nanonis Lock-in>Amplitude says neither rms nor peak
    gen5 = read_spectrum(DATA / GEN5)
    # The Temperature 1 (K) column reads 1.6252 K while the header line reads 2.4591 K: both are kept.
    assert gen5.attrs["temperature_column_mean_K"] == pytest.approx(1.6252, abs=1e-4)
    assert gen5.attrs["temperature_source"] == "header 'Temperature 1>Temperature 1 (K)'"
    assert header_of(gen5)["Lock-in>Harmonic D2"] == "2"


def test_columns_match_numpy_loadtxt():
    names, raw = _loadtxt(MNPC)
    assert names[:4] == ["Bias calc (V)", "Current (A)", "X% LockIn (V)", "Y% LockIn (V)"]
    fwd = read_spectrum(DATA / MNPC)
    np.testing.assert_array_equal(fwd["bias"], raw[:, 0])
    np.testing.assert_array_equal(fwd["current"], raw[:, 1])
    np.testing.assert_array_equal(fwd["didv"], raw[:, 2])
    np.testing.assert_array_equal(fwd["y_lockin"], raw[:, 3])
    bwd = read_spectrum(DATA / MNPC, direction="backward")
    np.testing.assert_array_equal(bwd["bias"], raw[:, 0])  # the backward sweep is stored on the same rows
    np.testing.assert_array_equal(bwd["didv"], raw[:, names.index("X% LockIn [bwd] (V)")])
    np.testing.assert_array_equal(bwd["current"], raw[:, names.index("Current [bwd] (A)")])
    avg = read_spectrum(DATA / MNPC, direction="average")
    np.testing.assert_allclose(avg["didv"], 0.5 * (raw[:, 2] + raw[:, 5]), rtol=1e-15)
    assert [d.attrs["direction"] for d in (fwd, bwd, avg)] == ["forward", "backward", "average"]


def test_direction_errors():
    with pytest.raises(DataFileError, match=rf"{SIS}: direction='backward' needs a backward sweep.*no \[bwd\]"):
        read_spectrum(DATA / SIS, direction="backward")  # Bias Spectroscopy>backward sweep	FALSE
    with pytest.raises(DataFileError, match=r"direction='sideways'; expected one of"):
        read_spectrum(DATA / MNPC, direction="sideways")
    with pytest.raises(DataFileError, match=r"one sweep; use direction='forward'"):
        read_spectrum(DATA / VERT, direction="average")


def test_avg_columns_are_the_mean_of_the_sweeps():
    ds = read_spectrum(DATA / SPMQT)
    assert ds["didv_sweeps"].dims == ("sweep", "bias") and ds["sweep"].values.tolist() == [1, 2]
    for var in ("didv", "current"):
        mean = ds[f"{var}_sweeps"].mean("sweep").values
        # [AVG] and each sweep are written with 6 digits: half a last digit of each, summed.
        tol = 0.5 * _last_digit(ds[var].values) + 0.5 * np.max(_last_digit(ds[f"{var}_sweeps"].values), axis=0)
        assert np.all(np.abs(ds[var].values - mean) <= tol * (1 + 1e-9))
    names, raw = _loadtxt(SPMQT)
    bwd = read_spectrum(DATA / SPMQT, direction="backward")
    np.testing.assert_array_equal(bwd["didv"], raw[:, names.index("LockIn [AVG] [bwd] (V)")])
    np.testing.assert_array_equal(bwd["didv_sweeps"][1], raw[:, names.index("LockIn [00002] [bwd] (V)")])


def test_channel_selection():
    names, raw = _loadtxt(XARRAY)
    want = raw[:, names.index("LIY 1 omega (A)")]
    for spelling in ("LIY 1 omega (A)", "LIY 1 omega", "liy 1 OMEGA", "liy_1_omega"):
        ds = read_spectrum(DATA / XARRAY, channel=spelling)
        np.testing.assert_array_equal(ds["didv"], want)
        assert ds.attrs["didv_channel"] == "LIY 1 omega (A)"
        assert "lix_1_omega" in ds  # the automatic choice is now an ordinary channel
    with pytest.raises(DataFileError, match=r"unknown channel 'foo'; available: .*LIX 1 omega \(A\)"):
        read_spectrum(DATA / XARRAY, channel="foo")
    with pytest.raises(DataFileError, match=r"names a \[bwd\] column; pass direction='backward'"):
        read_spectrum(DATA / XARRAY, channel="LIY 1 omega [bwd] (A)")

    names, raw = _loadtxt(GEN5)
    filt = read_spectrum(DATA / GEN5, channel="LI Demod 2 X (A) [filt]")
    np.testing.assert_array_equal(filt["didv"], raw[:, names.index("LI Demod 2 X (A) [filt]")])
    names, raw = _loadtxt(SPMQT)
    one = read_spectrum(DATA / SPMQT, channel="LockIn [00001]")
    np.testing.assert_array_equal(one["didv"], raw[:, names.index("LockIn [00001] (V)")])
    vert = read_spectrum(DATA / VERT, channel="column_8")
    assert vert.attrs["didv_channel"] == "column_8" and vert["didv"].values[0] == -2.03967e02  # 1st data row


def test_automatic_choice_prefers_the_first_harmonic(tmp_path):
    """Swap the demodulators' harmonics in the Generic 5 header: Demod 2 becomes dI/dV."""
    text = (DATA / GEN5).read_text()
    text = text.replace("Lock-in>Harmonic D1\t1", "Lock-in>Harmonic D1\t2", 1)
    text = text.replace("Lock-in>Harmonic D2\t2", "Lock-in>Harmonic D2\t1", 1)
    (tmp_path / "swapped.dat").write_text(text)
    assert read_spectrum(tmp_path / "swapped.dat").attrs["didv_channel"] == "LI Demod 2 X (A)"


def test_pb100_sis_peaks_at_the_sum_of_the_gaps():
    """SIS with Pb tip and Pb sample: the two largest dI/dV peaks at +-(Delta_tip + Delta_sample) = +-2.68 mV."""
    ds = read_spectrum(DATA / SIS, sort=True)
    v, g = ds["bias"].values * 1e3, ds["didv"].values
    v_pos, v_neg = v[v > 0][np.argmax(g[v > 0])], v[v < 0][np.argmax(g[v < 0])]
    assert abs(v_pos - 2.68) < 0.1 and abs(v_neg + 2.68) < 0.1  # 0.1 mV: MANIFEST's reading, ~2 bias steps of MLS
    assert g.max() in (g[v == v_pos][0], g[v == v_neg][0])


def test_bare_pb_hard_gap_and_coherence_peaks():
    """Bare Pb(111) with a normal tip at 1.06 K: exp(-Delta / kT) ~ 1e-6, so dI/dV(0) is nearly zero."""
    ds = read_spectrum(DATA / BARE_PB, sort=True)
    v, g = ds["bias"].values * 1e3, ds["didv"].values
    normal = g[np.abs(v) > 3.0].mean()
    assert g[np.abs(v) < 0.3].mean() < 0.05 * normal  # 5 %: lock-in noise, far above the thermal 1e-6
    # Coherence peaks just above Delta(Pb) ~ 1.35-1.4 meV (two-band Pb, thermal and lock-in broadening).
    assert abs(v[v > 0][np.argmax(g[v > 0])] - 1.45) < 0.1
    assert abs(v[v < 0][np.argmax(g[v < 0])] + 1.45) < 0.1


def test_mnpc_shiba_pair():
    """MnPc on Pb(111): a YSR pair at +0.47 / -0.50 mV (MANIFEST), the hole-like (negative) peak taller."""
    ds = read_spectrum(DATA / MNPC, sort=True)
    v, g = ds["bias"].values * 1e3, ds["didv"].values
    pos, neg = (v > 0.2) & (v < 0.8), (v < -0.2) & (v > -0.8)
    v_pos, v_neg = v[pos][np.argmax(g[pos])], v[neg][np.argmax(g[neg])]
    assert abs(v_pos - 0.47) < 0.03 and abs(v_neg + 0.50) < 0.03  # 0.03 mV: 6 bias steps, below the 50 uV lock-in
    assert g[neg].max() > 1.3 * g[pos].max()  # MANIFEST: ~1.8x; noise is ~1 % of the peaks


def test_sorting():
    raw = read_spectrum(DATA / MNPC)
    ds = read_spectrum(DATA / MNPC, sort=True)
    assert np.all(np.diff(ds["bias"].values) > 0) and ds.attrs["sorted_by_bias"] == 1
    assert raw.attrs["sorted_by_bias"] == 0 and raw["bias"].values[0] > raw["bias"].values[-1]
    np.testing.assert_array_equal(ds["didv"].values, raw["didv"].values[::-1])  # one monotone sweep: reversed
    again = sort_by_bias(read_spectrum(DATA / SPMQT))
    assert again["didv_sweeps"].shape == (2, 401)


def test_grid():
    ds = read_grid(DATA / GRID)
    assert dict(ds.sizes) == {"y": 20, "x": 20, "bias": 128}  # Grid dim="20 x 20", Points=128
    channels = [v for v in ds.data_vars if ds[v].dims == ("y", "x", "bias")]
    params = [v for v in ds.data_vars if ds[v].dims == ("y", "x")]
    assert len(channels) == 10 and len(params) == 18  # Channels (10 names), # Parameters (4 byte)=18
    np.testing.assert_allclose(ds["bias"], np.linspace(0.2, -0.1, 128), rtol=1e-7)  # Sweep Start/End, float32
    # Independent check of the byte layout: the recorded "Bias (V)" channel follows the sweep (float32 data;
    # the 1e-4 V allows the DAC's settling), and every pixel's X, Y lie in the grid frame.
    assert np.abs(ds["bias_signal"] - ds["bias"]).max() < 1e-4
    cx, cy, w, h = 1.106620e-7, 2.331660e-7, 1.5e-8, 1.5e-8  # Grid settings=cx;cy;w;h;angle 0
    assert np.all(np.abs(ds["param_x"] - cx) <= w / 2 * 1.001) and np.all(np.abs(ds["param_y"] - cy) <= h / 2 * 1.001)
    assert np.ptp(ds["param_x"].values[0]) > 0.9 * w * 19 / 20  # x runs fastest: a row spans the frame
    assert ds.attrs["setpoint_bias_V"] == 0.2 and math.isnan(ds.attrs["setpoint_current_A"])  # Setpoint unit=Hz
    assert ds.attrs["n_pixels_measured"] == 400 and ds.attrs["format"] == "nanonis-3ds-generic-4"
    assert ds["current"].attrs["units"] == "A" and "didv" not in ds  # KPFM grid: no lock-in channel
    with pytest.raises(DataFileError, match=r"is a Nanonis grid \(.3ds\); use read_grid"):
        read_spectrum(DATA / GRID)


# ------------------------------------------------------------------------------------------ CSV / TXT


def test_csv_round_trip(tmp_path):
    ds = read_spectrum(DATA / MNPC)
    back = read_spectrum(write_spectrum_csv(ds, tmp_path / "mnpc.csv"))
    for var in ("bias", "didv", "current", "y_lockin"):
        np.testing.assert_array_equal(back[var].values, ds[var].values)  # 17 digits: exact
    assert back["didv"].attrs["units"] == "V" and back["current"].attrs["units"] == "A"
    for key in ("temperature_K", "lockin_amplitude_V", "lockin_frequency_Hz", "setpoint_bias_V", "setpoint_current_A"):
        assert back.attrs[key] == ds.attrs[key]
    assert back.attrs["lockin_amplitude_kind"] == "rms" and back.attrs["format"] == "csv"
    assert header_of(back)["original_didv_channel"] == "X% LockIn (V)"


@pytest.mark.parametrize(
    ("text", "bias_unit"),
    [
        ("-1.5,0.2,-3e-10\n0,0.05,0\n1.5,0.25,3e-10\n", "mV"),  # no header, commas, three columns
        ("# T = 1 K\nbias (mV)\tdidv\tcurrent (A)\n-1.5\t0.2\t-3e-10\n0\t0.05\t0\n1.5\t0.25\t3e-10\n", None),
        ("V  dIdV  I\n-1.5e-3  0.2  -3e-10\n0  0.05  0\n1.5e-3  0.25  3e-10\n", "V"),  # whitespace, volts
        ("-1.5;0.2;-3e-10\n0;0.05;0\n1.5;0.25;3e-10\n\n", "mV"),  # semicolons, trailing blank line
    ],
)
def test_csv_layouts(tmp_path, text, bias_unit):
    f = tmp_path / "s.txt"
    f.write_text(text)
    ds = read_spectrum(f, bias_unit=bias_unit)
    np.testing.assert_allclose(ds["bias"], [-1.5e-3, 0.0, 1.5e-3], rtol=1e-15)
    np.testing.assert_array_equal(ds["didv"], [0.2, 0.05, 0.25])
    np.testing.assert_array_equal(ds["current"], [-3e-10, 0.0, 3e-10])
    assert ds.attrs["format"] == "csv" and math.isnan(ds.attrs["temperature_K"])


def test_csv_errors(tmp_path):
    f = tmp_path / "s.csv"
    f.write_text("bias (mV),didv\n-1,0.5\n0,0.1\n")
    with pytest.raises(DataFileError, match=r"bias_unit='V' but the bias column is named 'bias \(mV\)'"):
        read_spectrum(f, bias_unit="V")
    with pytest.raises(DataFileError, match=r"bias_unit='eV'; expected one of"):
        read_spectrum(f, bias_unit="eV")
    with pytest.raises(DataFileError, match=r"bias_unit applies to CSV/TXT files only"):
        read_spectrum(DATA / SPMQT, bias_unit="V")
    f.write_text("1\n2\n3\n")
    with pytest.raises(DataFileError, match=r"s.csv: line 1: expected at least 2 columns \(bias, dI/dV\), found 1"):
        read_spectrum(f)
    f.write_text("bias,didv\n-1,0.5\n0,0.1x\n")
    with pytest.raises(DataFileError, match=r"s.csv: line 3: column 2 \('didv'\): cannot read '0.1x' as a number"):
        read_spectrum(f)
    f.write_text("# only a comment\n")
    with pytest.raises(DataFileError, match=r"s.csv: no data rows"):
        read_spectrum(f)
    with pytest.raises(DataFileError, match=r"nothing.dat: cannot read the file"):
        read_spectrum(tmp_path / "nothing.dat")


# ------------------------------------------------------------------------------ broken copies of real files


def _cut(tmp_path, name: str, at: int, suffix: str = ""):
    raw = (DATA / name).read_bytes()
    out = tmp_path / (f"cut_{name}" + suffix)
    out.write_bytes(raw[:at])
    return out, raw[:at].count(b"\n") + 1  # the (partial) line the cut falls on


def _data_line(name: str, k: int) -> int:
    """1-based file line of the k-th data row (k = 0: first) of a Nanonis .dat."""
    lines = (DATA / name).read_bytes().split(b"\n")
    return lines.index(b"[DATA]") + 3 + k if b"[DATA]" in lines else lines.index(b"[DATA]\r") + 3 + k


def test_truncated_in_the_data_block(tmp_path):
    raw = (DATA / MNPC).read_bytes()
    at = raw.index(b"\n", len(raw) // 2) + 30  # 30 bytes into a row of 7 numbers
    f, line = _cut(tmp_path, MNPC, at)
    found = raw[:at].split(b"\n")[-1].count(b"\t") + 1
    assert found < 7
    with pytest.raises(DataFileError, match=rf"cut_{MNPC}: line {line}: expected 7 columns, found {found}"):
        read_spectrum(f)
    f, _ = _cut(tmp_path, MNPC, raw.index(b"\n", len(raw) // 2) + 1)  # cut between rows
    msg = r"header says 2000 points \(Bias Spectroscopy>Num Pixel\) but the \[DATA\] block holds \d+ rows"
    with pytest.raises(DataFileError, match=msg):
        read_spectrum(f)
    raw = (DATA / SIS).read_bytes()
    f, _ = _cut(tmp_path, SIS, raw.index(b"\n", len(raw) // 2) + 1)  # a multi-segment (MLS) sweep
    with pytest.raises(DataFileError, match=r"multi-segment \(MLS\) settings give 2400 points but .* holds \d+ rows"):
        read_spectrum(f)


def test_truncated_in_the_header(tmp_path):
    raw = (DATA / GEN5).read_bytes()
    f, _ = _cut(tmp_path, GEN5, raw.index(b"Lock-in>Amplitude"))
    with pytest.raises(DataFileError, match=rf"cut_{GEN5}: no \[DATA\] block"):
        read_spectrum(f)
    raw = (DATA / VERT).read_bytes()
    f, _ = _cut(tmp_path, VERT, raw.index(b"LockinFreq"))
    with pytest.raises(DataFileError, match=rf"cut_{VERT}: no DATA line"):
        read_spectrum(f)
    raw = (DATA / GRID).read_bytes()
    f, _ = _cut(tmp_path, GRID, raw.index(b"Z-Controller"), ".3ds")
    with pytest.raises(DataFileError, match=r"no ':HEADER_END:' line"):
        read_grid(f)


def test_corrupted_token_and_missing_column(tmp_path):
    lines = (DATA / XARRAY).read_text().split("\n")
    k = _data_line(XARRAY, 57)
    fields = lines[k - 1].split("\t")
    bad = lines.copy()
    bad[k - 1] = "\t".join([*fields[:2], "12.3.4E-3", *fields[3:]])
    (tmp_path / "token.dat").write_text("\n".join(bad))
    msg = rf"token.dat: line {k}: column 3 \('Phase \(deg\)'\): cannot read '12.3.4E-3' as a number"
    with pytest.raises(DataFileError, match=msg):
        read_spectrum(tmp_path / "token.dat")
    bad = lines.copy()
    bad[k - 1] = "\t".join(fields[:5] + fields[6:])  # one field dropped
    (tmp_path / "column.dat").write_text("\n".join(bad))
    with pytest.raises(DataFileError, match=rf"column.dat: line {k}: expected 15 columns, found 14"):
        read_spectrum(tmp_path / "column.dat")
    bad = lines.copy()
    bad[k - 1] = "\t".join(fields[:3]) + "\t\t" + "\t".join(fields[4:])  # an empty field
    (tmp_path / "empty.dat").write_text("\n".join(bad))
    with pytest.raises(DataFileError, match=rf"empty.dat: line {k}: column 4 .*cannot read ''"):
        read_spectrum(tmp_path / "empty.dat")
    renamed = [ln.replace("Bias calc (V)", "Bias (V)") for ln in lines]  # older files name the sweep "Bias (V)"
    (tmp_path / "bias.dat").write_text("\n".join(renamed))
    np.testing.assert_array_equal(read_spectrum(tmp_path / "bias.dat")["bias"], read_spectrum(DATA / XARRAY)["bias"])
    bad = [ln.replace("Bias calc (V)", "Voltage (V)") for ln in lines]
    (tmp_path / "nobias.dat").write_text("\n".join(bad))
    with pytest.raises(DataFileError, match=r"nobias.dat: no bias column \('Bias calc \(V\)' or 'Bias \(V\)'\)"):
        read_spectrum(tmp_path / "nobias.dat")


def test_broken_vert(tmp_path):
    raw = (DATA / VERT).read_bytes()
    at = raw.index(b"\n500\t") + 12
    f, line = _cut(tmp_path, VERT, at)
    with pytest.raises(DataFileError, match=rf"line {line}: expected 10 columns, found \d"):
        read_spectrum(f)
    f, _ = _cut(tmp_path, VERT, raw.index(b"\n500\t") + 1)
    with pytest.raises(DataFileError, match=r"says 1000 points but the data block holds 500 rows"):
        read_spectrum(f)


def test_wrong_3ds_size(tmp_path):
    raw = (DATA / GRID).read_bytes()
    short = tmp_path / "short.3ds"
    short.write_bytes(raw[:-100])  # the last pixel cut short
    msg = r"short.3ds: header says 20 x 20 pixels of 1298 floats \(18 parameters \+ 10 channels x 128 points\)"
    with pytest.raises(DataFileError, match=msg + r".*but the file holds 2076700 bytes"):
        read_grid(short)
    ds = read_grid(short, partial=True)
    assert ds.attrs["n_pixels_measured"] == 399
    assert np.all(np.isnan(ds["current"].values[19, 19])) and not np.any(np.isnan(ds["current"].values[19, 18]))
    full = read_grid(DATA / GRID)
    np.testing.assert_array_equal(ds["current"].values[:19], full["current"].values[:19])
    long = tmp_path / "long.3ds"
    long.write_bytes(raw + b"\0" * 8)
    with pytest.raises(DataFileError, match=r"long.3ds: header says .* holds 2076808 bytes"):
        read_grid(long, partial=True)
    bad = tmp_path / "bad.3ds"
    bad.write_bytes(raw.replace(b"# Parameters (4 byte)=18", b"# Parameters (4 byte)=17", 1))
    with pytest.raises(DataFileError, match=r"header names 18 parameters but '# Parameters \(4 byte\)' says 17"):
        read_grid(bad)


def test_errors_are_shibajax_errors():
    assert issubclass(DataFileError, ShibajaxError) and issubclass(DataFileError, ValueError)


def test_synthetic_3ds_layout(tmp_path):
    """A 3 x 2 grid written by hand: every float encodes (y, x, block, index), so any mix-up of axes shows."""
    ny, nx, n_pts = 2, 3, 4
    header = (
        'Grid dim="3 x 2"\r\nGrid settings=0;0;1E-9;1E-9;0\r\nFiletype=Linear\r\nSweep Signal="Bias (V)"\r\n'
        'Fixed parameters="Sweep Start;Sweep End"\r\nExperiment parameters="X (m);Y (m)"\r\n'
        "# Parameters (4 byte)=4\r\nExperiment size (bytes)=32\r\nPoints=4\r\n"
        'Channels="Current (A);LI Demod 1 X (A)"\r\nLock-in>Modulated signal=Bias (V)\r\n'
        "Lock-in>Amplitude=1E-4\r\nLock-in>Frequency (Hz)=877\r\n:HEADER_END:\r\n"
    )
    pixels = []
    for y in range(ny):
        for x in range(nx):  # x runs fastest
            params = [-2e-3, 2e-3, x * 1e-10, y * 1e-10]
            current = [1000 * y + 100 * x + 10 + k for k in range(n_pts)]
            didv = [1000 * y + 100 * x + 20 + k for k in range(n_pts)]
            pixels.append(params + current + didv)
    f = tmp_path / "tiny.3ds"
    f.write_bytes(header.encode() + np.asarray(pixels, dtype=">f4").tobytes())
    ds = read_grid(f)
    assert dict(ds.sizes) == {"y": ny, "x": nx, "bias": n_pts}
    np.testing.assert_allclose(ds["bias"], np.linspace(-2e-3, 2e-3, n_pts), rtol=1e-7)  # float32 ends
    y, x, k = np.meshgrid(np.arange(ny), np.arange(nx), np.arange(n_pts), indexing="ij")
    np.testing.assert_array_equal(ds["current"], 1000 * y + 100 * x + 10 + k)
    np.testing.assert_array_equal(ds["didv"], 1000 * y + 100 * x + 20 + k)
    assert ds.attrs["didv_channel"] == "LI Demod 1 X (A)" and ds["didv"].attrs["units"] == "A"
    np.testing.assert_allclose(ds["param_x"], x[:, :, 0] * 1e-10, rtol=1e-7)
    np.testing.assert_allclose(ds["param_y"], y[:, :, 0] * 1e-10, rtol=1e-7)
    assert ds.attrs["lockin_amplitude_V"] == 1e-4 and ds.attrs["lockin_frequency_Hz"] == 877.0


def test_results_save_to_netcdf(tmp_path):
    """Every attr is a number or a string (the header as JSON), so the Datasets save as NetCDF unchanged."""
    for ds in (read_spectrum(DATA / SPMQT), read_grid(DATA / GRID)):
        ds.to_netcdf(tmp_path / "out.nc")
        with xr.open_dataset(tmp_path / "out.nc") as back:
            xr.testing.assert_identical(back.load(), ds)
