"""Issue 12 (reliability) in shibajax.measurement: no NaN written with exit code 0, NaN parameters named where they
enter, lock-in amplitudes read from header comments through the bias divider, binary and UTF-16 files recognised,
output paths checked before the work, and deconvolutions that say when they cannot be trusted. (The reduced chi^2
of tip calibrations is tested in tests/test_deconvolution.py::test_calibrate_pb_tip_on_two_gap_pb and, on the real
SIS file with the lock-in amplitude its header gives, tests/test_measurement_realdata.py::test_pb_tip_on_pb_sis_fit.)

Each test would fail on the code before the fix (the defect it guards is named in its docstring).
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
from scipy.integrate import quad
from shared_data import REALDATA

import shibajax  # noqa: F401  (float64)
from shibajax.cli import main
from shibajax.errors import (
    DataFileError,
    DeconvolutionError,
    DOSParameterError,
    FitError,
    OutputPathError,
    TunnellingError,
)
from shibajax.measurement import commands
from shibajax.measurement.deconvolution import (
    DeconvolutionWarning,
    calibrate_tip,
    deconvolve,
    fit_sample_dos,
    noise_level,
)
from shibajax.measurement.dos import DynesDOS, MultiGapDOS, NormalDOS, TabulatedDOS, dynes_cell_average, dynes_dos
from shibajax.measurement.peaks import peak_top
from shibajax.measurement.readers import read_spectrum
from shibajax.measurement.tunnelling import K_B_MEV_PER_K, current, didv, didv_kernel, fermi

SIS = REALDATA / "spectrafox_Pb100_SIS_Spectrum001.dat"


# ------------------------------------------------------------------------------------ 4: BCS sample, no NaN output


def _bcs_nis_reference(bias, delta, temperature):
    """dI/dV of a BCS sample (gamma = 0) seen by a normal tip, int rho(E) (-f'(E - V)) dE, by quadrature after
    s = sqrt(E^2 - delta^2), which removes the 1 / sqrt singularity: rho dE = ds on each side of the gap."""
    kt = K_B_MEV_PER_K * temperature

    def mfp(x):
        u = x / (2 * kt)
        return 0.25 / (kt * math.cosh(u) ** 2) if abs(u) < 300 else 0.0

    def integrand(s):
        e = math.sqrt(s * s + delta * delta)
        return mfp(e - bias) + mfp(-e - bias)

    kink = math.sqrt(max(bias * bias - delta * delta, 0.0))
    return quad(integrand, 0.0, 40 * kt + abs(bias) + delta, limit=400, points=[kink])[0]


def test_convolve_bcs_sample_is_finite_and_exact(tmp_path, capsys):
    """Defect: `shibajax convolve --sample dynes:delta=1.35,gamma=0` wrote an all-NaN CSV with exit code 0. The
    sample DOS now enters as cell averages (exact integrals of the BCS singularity), so the result is finite and
    matches an independent quadrature. Tolerance 1e-3 G_N: we see 1.3e-4 at the default step h = 2 ueV (the cell
    average of the coherence peak differs from the point value by O(h^2 rho''), and sqrt-singular cells by
    O(sqrt(h)) in the integrand, which the thermal window averages over ~k_B T = 0.1 meV); peaks are ~2.2 G_N."""
    out = tmp_path / "sub" / "bcs.csv"
    argv = ["convolve", "--sample", "dynes:delta=1.35,gamma=0", "--temperature", "1.2", "--bias=-3:3:25"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert str(out) in printed[0] and "dI/dV at 25 biases" in printed[0]  # where it writes, before the work
    table = np.loadtxt(out, delimiter=",", skiprows=1)
    assert table.shape == (25, 2) and np.all(np.isfinite(table))
    ref = np.array([_bcs_nis_reference(v, 1.35, 1.2) for v in table[:, 0]])
    np.testing.assert_allclose(table[:, 1], ref, atol=1e-3)
    assert table[:, 1].max() > 1.5  # the coherence peaks are there (not a flattened or zero spectrum)


def test_bcs_cell_average_is_the_integral():
    """The cell average of the BCS DOS is the exact integral over each cell: the sum over a grid equals the
    antiderivative difference 2 sqrt(E_max^2 - delta^2) (to rounding), and it tends to the point value away from
    the peaks (error h^2 rho'' / 24: below 1e-5 at h = 1 ueV, 0.1 meV from the peak)."""
    h = 0.001
    energies = np.arange(-3000, 3001) * h
    avg = np.asarray(DynesDOS(1.0, 0.0).cell_average(energies))
    assert np.all(np.isfinite(avg))
    edge = energies[-1] + h / 2
    assert avg.sum() * h == pytest.approx(2 * math.sqrt(edge**2 - 1.0), rel=1e-12)
    far = np.abs(np.abs(energies) - 1.0) > 0.1
    np.testing.assert_allclose(avg[far], np.asarray(dynes_dos(energies, 1.0, 0.0))[far], atol=1e-5)
    two = np.asarray(MultiGapDOS([1.0, 1.2], [0.0, 0.0], [0.5, 0.5]).cell_average(energies))
    assert np.all(np.isfinite(two)) and two.sum() * h == pytest.approx(
        math.sqrt(edge**2 - 1.0) + math.sqrt(edge**2 - 1.44), rel=1e-12
    )
    # gamma > 0: the cell average is the point value + h^2 rho'' / 24, rho'' <~ 3 / gamma^2: < 1e-4 here
    dynes = np.asarray(dynes_cell_average(energies, 1.0, 0.05, h))
    np.testing.assert_allclose(dynes, np.asarray(dynes_dos(energies, 1.0, 0.05)), atol=1e-4)


def test_point_bcs_values_and_bcs_tip_are_refused_by_name():
    """Without cell averages the BCS values hold NaN/inf: didv says so and names the cure instead of returning NaN.
    A BCS tip (sampled at points, with its derivative) is refused with the Dynes gamma it needs."""
    energies = np.arange(-300, 301) * 0.01  # contains E = +-1 exactly
    rho = np.asarray(dynes_dos(energies, 1.0, 0.0))
    assert not np.all(np.isfinite(rho))
    with pytest.raises(TunnellingError, match=r"sample_dos has 2 non-finite value\(s\) at E = -1, 1 meV.*cell_average"):
        didv([0.0, 1.5], energies, rho, NormalDOS(), temperature=1.0)
    with pytest.raises(TunnellingError, match=r"tip gamma = 0.0 meV: a BCS tip.*gamma >= 2 h = 0.02 meV"):
        didv([0.0, 1.5], energies, np.ones(601), DynesDOS(1.0, 0.0), temperature=1.0)


def test_every_command_checks_its_output_is_finite():
    """The final finite-check of the commands (convolve, deconvolve): a NaN result raises, naming where and why,
    and nothing is written."""
    with pytest.raises(TunnellingError, match=r"dI/dV has 1 non-finite value\(s\) \(at bias \(mV\) = 0.5\); why"):
        commands.check_output("dI/dV", [1.0, np.nan], [0.0, 0.5], "bias (mV)", "why")
    commands.check_output("dI/dV", [1.0, 2.0], [0.0, 0.5], "bias (mV)", "why")  # finite: silent


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sample", "normal", "--temperature", "nan"], r"--temperature = nan K must be finite"),
        (["--sample", "normal", "--temperature", "1", "--lockin-rms", "inf"], r"--lockin-rms = inf mV must be finite"),
        (["--sample", "normal", "--temperature", "1", "--energy-step", "0"], r"--energy-step = 0.0 meV must be finite"),
        (["--sample", "normal", "--temperature", "1", "--bias=nan:1:5"], r"--bias 'nan:1:5': START, STOP and N must"),
        (["--sample", "dynes:delta=1,gamma=nan", "--temperature", "1"], r"DynesDOS: gamma = nan must be finite"),
        (
            ["--sample-file", "SAMPLE", "--temperature", "1"],
            r"--sample-file .*1 row\(s\) hold NaN or inf \(first: data row 2\)",
        ),
    ],
)
def test_convolve_refuses_non_finite_input_by_name(argv, message, tmp_path, capsys):
    """Non-finite options never reach the numerics (argparse's float() accepts 'nan' and 'inf')."""
    sample = tmp_path / "sample.csv"
    sample.write_text("energy_meV,dos\n-5,1\n0,nan\n5,1\n")
    argv = [str(sample) if a == "SAMPLE" else a for a in argv]
    out = tmp_path / "x.csv"
    assert main(["convolve", *argv, "--out", str(out)]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


# ----------------------------------------------------------------- 5: lock-in from a header comment, NaN parameters


@pytest.mark.realdata
def test_sis_lockin_from_comment_through_divider():
    """Defect: the Pb/Pb SIS file states its modulation only as `Comment06 Vrms =10mVrms`, before the 5.21e-3
    divider (`Bias>Calibration (V/V) 5.21E-3`); the reader returned NaN and calibrate_tip(lockin_rms=nan) failed
    with 'arange: cannot compute length'. The applied modulation is 10 mV x 5.21e-3 = 52.1 uV rms (rms, as the
    conventions want), and the source names both header lines."""
    if not SIS.is_file():
        pytest.fail(f"missing shared data file {SIS} (see shared/realdata/MANIFEST.md)")
    ds = read_spectrum(SIS)
    assert ds.attrs["lockin_amplitude_V"] == pytest.approx(52.1e-6, rel=1e-12)
    assert ds.attrs["lockin_amplitude_kind"] == "rms"
    source = ds.attrs["lockin_amplitude_source"]
    assert "header line 21" in source and "Vrms         =10mVrms" in source, source
    assert "header line 23" in source and "5.21E-3" in source, source
    bias, data = 1e3 * ds["bias"].values, ds["didv"].values
    # the calibration on the reader's value (no longer NaN) is tests/test_measurement_realdata.py::
    # test_pb_tip_on_pb_sis_fit; a NaN is refused by name before any work:
    with pytest.raises(DeconvolutionError, match=r"calibrate_tip: lockin_rms = nan .*must be finite"):
        calibrate_tip(bias, data, sample="same", lockin_rms=math.nan)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: DynesDOS(math.nan, 0.1), r"DynesDOS: delta = nan must be finite"),
        (lambda: MultiGapDOS([1.0, 1.2], [0.1, 0.1], [math.nan, 0.5]), r"MultiGapDOS: weights = \[nan, 0.5\]"),
        (lambda: NormalDOS(math.inf), r"NormalDOS: value = inf must be finite"),
        (lambda: TabulatedDOS([0.0, math.nan], [1.0, 1.0]), r"TabulatedDOS: energies = \[0.0, nan\]"),
        (lambda: dynes_cell_average(0.0, 1.0, 0.1, math.nan), r"dynes_cell_average: h = nan"),
        (lambda: fermi(0.0, math.nan), r"fermi: temperature = nan K must be finite"),
    ],
)
def test_dos_and_fermi_name_non_finite_parameters(call, match):
    """Defect: NaN parameters slipped through (e.g. NaN weights passed `w < 0` and `|sum - 1| > 1e-9`)."""
    with pytest.raises((DOSParameterError, TunnellingError), match=match):
        call()


def test_tunnelling_and_fits_name_non_finite_parameters():
    energies = np.linspace(-3.0, 3.0, 301)
    bias = np.linspace(-1.0, 1.0, 11)
    dos = np.ones(301)
    cases = [
        (lambda: didv(bias, energies, dos, NormalDOS(), temperature=1.0, lockin_rms=math.nan), r"lockin_rms = nan"),
        (lambda: current(bias, energies, dos, NormalDOS(), temperature=math.nan), r"temperature = nan K"),
        (
            lambda: didv_kernel([-1.0, 0.0, math.nan], energies, NormalDOS(), temperature=1.0),
            r"bias = \[-1.0, 0.0, nan\]",
        ),
        (lambda: didv(bias, np.r_[energies[:-1], math.nan], dos, NormalDOS(), temperature=1.0), "sample_energies"),
        (
            lambda: calibrate_tip(bias, np.ones(11), sample=NormalDOS(), init={"delta": math.nan}),
            r"init\['delta'\] = nan",
        ),
        (lambda: fit_sample_dos(bias, np.ones(11), tip=NormalDOS(), temperature=math.nan), "temperature = nan"),
        (
            lambda: deconvolve(
                bias, np.ones(11), NormalDOS(), temperature=1.0, sample_energies=energies, prior=math.nan
            ),
            "prior = nan",
        ),
        (lambda: peak_top(bias, np.ones(11), search=(0.0, math.nan), half_width=0.1), r"search = \[0.0, nan\]"),
    ]
    for call, match in cases:
        with pytest.raises((TunnellingError, DeconvolutionError, FitError), match=match):
            call()


# ------------------------------------------------------------ 8: binary and UTF-16 files, one NaN, unwritable --out


CSV_TEXT = "# temperature_K = 1.5\nbias (mV),didv\n-1,0.5\n0,0.1\n1,0.6\n"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-8-sig"])
def test_utf16_and_bom_text_is_decoded(tmp_path, encoding):
    """Defect: a UTF-16 spectrum was reported as a column-count error. UTF-16 with or without a byte-order mark
    (NUL in every other byte) and UTF-8 with a BOM read as the same spectrum as plain UTF-8."""
    plain, other = tmp_path / "plain.csv", tmp_path / f"{encoding}.csv"
    plain.write_text(CSV_TEXT, encoding="utf-8")
    other.write_bytes(CSV_TEXT.encode(encoding))
    a, b = read_spectrum(plain), read_spectrum(other)
    np.testing.assert_array_equal(a.bias.values, b.bias.values)
    np.testing.assert_array_equal(a.didv.values, b.didv.values)
    assert b.attrs["temperature_K"] == 1.5


def test_binary_files_are_named_binary(tmp_path):
    """Defect: binary content (NUL bytes) came back as 'expected N columns, found M'."""
    nul = tmp_path / "nul.csv"
    nul.write_bytes(CSV_TEXT.encode() + b"\x00\x01\x02\x03" * 8 + b"1,2\n")
    with pytest.raises(DataFileError, match=r"nul.csv: is a binary file \(a NUL byte at offset \d+\).*UTF-8 text"):
        read_spectrum(nul)
    noise = tmp_path / "noise.dat"
    noise.write_bytes(bytes(np.random.default_rng(0).integers(1, 256, 4000, dtype=np.uint8)))
    with pytest.raises(DataFileError, match=r"noise.dat: is a binary file"):
        read_spectrum(noise)
    odd = tmp_path / "odd.csv"
    odd.write_bytes(b"\xff\xfe" + "bias,didv\n".encode("utf-16-le") + b"\x00\xd8")  # a lone surrogate
    with pytest.raises(DataFileError, match=r"odd.csv: looks UTF-16 encoded but is not valid UTF-16"):
        read_spectrum(odd)


def _spectrum_csv(path, n=2000, nan_at=None):
    bias = np.linspace(-4.0, 4.0, n)
    didv = 1.0 + 0.1 * np.exp(-(bias**2))
    if nan_at is not None:
        didv[nan_at] = np.nan
    lines = ["bias (mV),didv"] + [f"{float(b)!r},{float(g)!r}" for b, g in zip(bias, didv, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return bias


def test_one_nan_in_2000_points_is_named(tmp_path, capsys):
    """Defect: one NaN among 2000 points made `deconvolve` blame 'the normalisation scale nan'. The reader (so the
    CLI, before any work) and the library name the real cause, the data row and the bias of the bad point;
    ``allow_nan=True`` reads it as it is, counted in ``attrs['n_non_finite']``."""
    spectrum = tmp_path / "one_nan.csv"
    bias = _spectrum_csv(spectrum, nan_at=1234)
    argv = ["deconvolve", str(spectrum), "--tip", "normal", "--temperature", "1", "--energies=-5:5:0.05"]
    assert main([*argv, "--out", str(tmp_path / "dos.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{spectrum}: the spectrum has 1 non-finite dI/dV value(s) (NaN or inf, of 2000)" in err, err
    assert f"data row(s) 1235, at bias = {bias[1234]:.6g} mV; remove or interpolate them" in err
    assert "normalisation" not in err
    ds = read_spectrum(spectrum, allow_nan=True)
    assert ds.attrs["n_non_finite"] == 1 and np.isnan(ds.didv.values[1234])
    clean = tmp_path / "clean.csv"
    _spectrum_csv(clean)
    assert read_spectrum(clean).attrs["n_non_finite"] == 0
    data = np.ones(2000)
    data[7] = np.inf
    with pytest.raises(DeconvolutionError, match=rf"1 non-finite dI/dV value\(s\) \(of 2000\) at bias = {bias[7]:.6g}"):
        deconvolve(bias, data, NormalDOS(), temperature=1.0, sample_energies=np.linspace(-5, 5, 201))


@pytest.mark.parametrize("command", ["convolve", "deconvolve"])
def test_unwritable_out_fails_before_the_computation(tmp_path, monkeypatch, capsys, command):
    """Defect: an unwritable --out failed only after the computation. Now it fails first (the computation is
    replaced by a function that fails the test if reached), naming the path."""
    import shibajax.measurement.deconvolution as deconvolution_module
    import shibajax.measurement.tunnelling as tunnelling_module

    def reached(*args, **kwargs):
        raise AssertionError("the computation ran before the output path was checked")

    monkeypatch.setattr(tunnelling_module, "didv", reached)
    monkeypatch.setattr(deconvolution_module, "deconvolve", reached)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "out.csv"  # its parent is a file: cannot be created
    spectrum = tmp_path / "s.csv"
    _spectrum_csv(spectrum, n=50)
    argv = {
        "convolve": ["convolve", "--sample", "normal", "--temperature", "1"],
        "deconvolve": ["deconvolve", str(spectrum), "--tip", "normal", "--temperature", "1", "--energies=-5:5:0.1"],
    }[command]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: cannot create its folder {blocker}" in err, err
    with pytest.raises(OutputPathError, match="is a folder"):
        commands.prepare_output(tmp_path)
    assert not (tmp_path / "fresh.csv").exists() and commands.prepare_output(tmp_path / "fresh.csv")
    assert not (tmp_path / "fresh.csv").exists()  # the test write leaves no empty file behind


# ------------------------------------------------------------ 10: deconvolution sanity, L-curve, discrepancy

T, RMS, NOISE = 1.2, 0.03, 0.005
PAIRS = ((0.62, 0.55), (0.3, 0.7))  # (eps, u^2) of two Shiba pairs inside Delta = 1.35 meV, width 0.03 meV
TIP = DynesDOS(1.35, 0.02)


def _shiba_sample(E):
    rho = DynesDOS(1.35, 0.005)(E)
    for eps, u2 in PAIRS:
        rho = rho + 0.25 * u2 * 0.03 / np.pi / ((E - eps) ** 2 + 0.03**2)
        rho = rho + 0.25 * (1 - u2) * 0.03 / np.pi / ((E + eps) ** 2 + 0.03**2)
    return rho


@pytest.fixture(scope="module")
def sis_shiba():
    """SC tip (Delta 1.35, gamma 0.02 meV) on two Shiba pairs, T = 1.2 K, 30 uV rms, 0.5 % noise; the data are
    made on a grid 2.5x finer than the one the inversion uses (no inverse crime)."""
    fine = np.arange(-4.0, 4.0 + 1e-9, 0.005)
    bias = np.arange(-3.0, 3.0 + 1e-9, 0.025)
    clean = np.asarray(didv(bias, fine, _shiba_sample(fine), TIP, temperature=T, lockin_rms=RMS))
    noisy = clean + NOISE * np.random.default_rng(1).standard_normal(bias.size)
    return bias, noisy, np.arange(-312, 313) * 0.0125


def test_miscalibrated_tip_is_caught(sis_shiba):
    """Defect: with a tip gap off by 0.02 meV, GCV picked lambda ~1e-5 and returned a DOS of order 1e4 without a
    word. Now that raises, naming lambda and the cures; check='warn' returns it with the problems listed."""
    bias, data, grid = sis_shiba
    wrong = DynesDOS(1.33, 0.02)
    with pytest.raises(DeconvolutionError, match=r"fails its sanity checks at lambda = .* \(chosen by GCV\).*recalib"):
        deconvolve(bias, data, wrong, temperature=T, sample_energies=grid, lockin_rms=RMS)
    with pytest.warns(DeconvolutionWarning, match=r"\|rho\| reaches"):
        res = deconvolve(bias, data, wrong, temperature=T, sample_energies=grid, lockin_rms=RMS, check="warn")
    assert res.problems and np.abs(np.asarray(res.dos)).max() > 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        good = deconvolve(bias, data, TIP, temperature=T, sample_energies=grid, lockin_rms=RMS)
    assert good.problems == () and good.method == "gcv" and np.abs(np.asarray(good.dos)).max() < 20


def test_lcurve_and_discrepancy_choose_lambda(sis_shiba):
    """'discrepancy' with the true noise makes the residual rms equal to it (to the root finder's 1e-6 in log
    lambda); 'lcurve' finds a lambda within a factor 3 of GCV's, and both recover the four Shiba peaks within a
    grid step plus half the peak width (0.0125 + 0.015 meV)."""
    from scipy.signal import find_peaks

    bias, data, grid = sis_shiba
    kwargs = {"temperature": T, "sample_energies": grid, "lockin_rms": RMS}
    gcv = deconvolve(bias, data, TIP, **kwargs)
    disc = deconvolve(bias, data, TIP, regularisation="discrepancy", noise=NOISE, **kwargs)
    assert disc.method == "discrepancy" and disc.residual_rms == pytest.approx(NOISE, rel=1e-5)
    lcurve = deconvolve(bias, data, TIP, regularisation="lcurve", **kwargs)
    assert lcurve.method == "lcurve" and 1 / 3 < lcurve.regularisation / gcv.regularisation < 3
    expected = np.sort([s * eps for eps, _ in PAIRS for s in (-1, 1)])
    inside = np.abs(grid) < 1.0
    for res in (disc, lcurve):
        rho = np.asarray(res.dos)
        peaks, _ = find_peaks(np.where(inside, rho, 0.0), prominence=0.3)
        np.testing.assert_allclose(np.sort(grid[peaks]), expected, atol=0.0125 + 0.015)
    with pytest.raises(DeconvolutionError, match="noise = 10 G_N is larger than the whole signal"):
        deconvolve(bias, data, TIP, regularisation="discrepancy", noise=10.0, **kwargs)
    # a noise far below the real one asks for lambda ~ 0: the solve is (numerically) singular there, the checks say so
    with pytest.raises(DeconvolutionError, match="fails its sanity checks"):
        deconvolve(bias, data, TIP, regularisation="discrepancy", noise=1e-6, **kwargs)


def test_noise_level_reads_independent_noise():
    """The point-to-point noise estimate (lower quartile of |second differences|) on a smooth curve plus white
    noise of sigma 0.01: within 15 % (n = 2000: its scatter is ~3 %)."""
    bias = np.linspace(-5, 5, 2000)
    y = np.tanh(bias) + 0.01 * np.random.default_rng(4).standard_normal(bias.size)
    assert noise_level(bias[::-1], y[::-1]) == pytest.approx(0.01, rel=0.15)
