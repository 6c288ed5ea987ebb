"""Grid fits (issue 14, item 2): every pixel of a grid in one compiled call, against known answers.

Synthetic grid: a one-channel adatom on the square host of tests/test_anchored.py (meV; t = 10, mu = -20,
Delta = 1.35, eta = 0.06, 16 x 16 grid), normal tip at 1.2 K with 30 uV rms lock-in, 201 biases in +-2.5 mV, a
(2, 3) grid of pixels: four with known (K, J, offset, scale, bg0), one bare (K = J = 0: the host's own spectrum),
one with a NaN; Gaussian noise sigma = 0.01 (given to the fit). References: the true values (within the Laplace
errors), an independent bound-state search at the fitted couplings (E_b), and ``fitting.fit`` on the Problem of one
pixel (the single-spectrum pipeline, same starts and stopping rule). Real data: a few pixels of
shared/realdata/mnpc_grid1 (MnPc on Pb(111)).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from shared_data import REALDATA, require

import shibajax
from shibajax._linalg import small_inv
from shibajax.errors import FitError
from shibajax.fitting import SpectrumModel, coupling_basis, fit, green_blocks
from shibajax.fitting.energies import ShibaEnergies
from shibajax.fitting.grid import Anchor, GridProblem, PixelModel, fit_grid

KGRID = (16, 16)
ENERGIES = np.arange(-4.0, 4.0 + 1e-9, 0.02)  # meV: +-2.5 mV + 8 k_B T + lock-in + the offset bounds
BIAS = np.linspace(-2.5, 2.5, 250)  # mV: as many points as the real-data test fits (its program is reused)
NOISE = 0.01
# (K, J, offset mV, scale, bg0) per pixel, row by row of the (2, 3) grid; pixel 4 is bare, pixel 5 gets a NaN
TRUTH = [(-3.0, 12.0, 0.02, 1.1, 0.05), (2.0, 14.0, -0.03, 0.9, 0.0), (-1.0, 13.0, 0.0, 1.0, -0.02),
         (-4.0, 16.0, 0.04, 1.2, 0.03), (0.0, 0.0, 0.01, 1.05, 0.02), (1.0, 11.0, 0.0, 1.0, 0.0)]  # fmt: skip
# the same spec, starts and settings for the synthetic and the real grid: one compiled fit serves both
PARAMS = {"K_0": {"value": 0.0, "lower": -30.0, "upper": 30.0}, "J_0": {"value": 14.0, "lower": 2.0, "upper": 40.0}}
PARAMS |= {"bg1": 0.0}  # a free background slope (as fit_anchored's linear profile; the truth has none)
OPTIONS = {"n_starts": 3, "seed": 0, "method": "lm", "max_iter": 80}


@pytest.fixture(scope="module")
def host():
    model = shibajax.models.square(t=10.0, mu=-20.0, delta=1.35)
    couplings = coupling_basis(model, [(0, 0)])
    spectrum = SpectrumModel(green_blocks(model, couplings, [(0, 0)], ENERGIES, eta=0.06, kgrid=KGRID))
    return model, spectrum, ShibaEnergies(model, couplings, kgrid=KGRID)


def _synthetic_grid(spectrum):
    rng = np.random.default_rng(7)
    rows = []
    for k, j, offset, scale, bg0 in TRUTH:
        values = {"K_0": k, "J_0": j, "offset": offset, "scale": scale, "bg0": bg0, "bg1": 0.0}
        values |= {"temperature": 1.2, "lockin": 0.03}
        clean = np.asarray(spectrum({n: jnp.asarray(v) for n, v in values.items()}, jnp.asarray(BIAS)))
        rows.append(clean + NOISE * rng.normal(size=BIAS.size))
    didv = np.array(rows).reshape(2, 3, BIAS.size)
    didv[1, 2, 50] = np.nan
    coords = {
        "bias": ("bias", BIAS * 1e-3, {"units": "V"}),
        "x": ("x", [0.0, 1.4e-10, 2.8e-10]),
        "y": ("y", [0, 1.4e-10]),
    }
    attrs = {"temperature_K": 1.2, "lockin_amplitude_V": 3e-5}
    return xr.Dataset({"didv": (("y", "x", "bias"), didv)}, coords=coords, attrs=attrs)


@pytest.fixture(scope="module")
def synthetic(host):
    """The grid and its fit (blocks of 3 pixels: two blocks, the second padded)."""
    _, spectrum, shiba = host
    grid = _synthetic_grid(spectrum)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit_grid(grid, spectrum, PARAMS, shiba=shiba, sigma=NOISE, normalise=False, block=3,
                          progress=False, **OPTIONS)  # fmt: skip
    print(result[["class", "E_b", "E_b_error", "K_0", "K_0_error", "J_0", "J_0_error", "offset", "delta_bic"]])
    return grid, result, [str(w.message) for w in caught]


def test_synthetic_pixels_recovered_within_their_laplace_errors(host, synthetic):
    model, _, _ = host
    _, result, _ = synthetic
    assert list(result["class"].values) == ["shiba"] * 4 + ["bare", "skipped"]
    assert list(result["row"].values) == [0, 0, 0, 1, 1, 1] and list(result["col"].values) == [0, 1, 2] * 2
    np.testing.assert_array_equal(result["x"].values, [0.0, 1.4e-10, 2.8e-10] * 2)
    for i in range(4):
        r = result.isel(pixel=i)
        k, j, offset, scale, bg0 = TRUTH[i]
        assert bool(r["converged"]) and int(r["n_good"]) >= 1
        # sigma is given, so the errors are absolute: each true value within 3 standard errors (seeded noise)
        for name, true in (("K_0", k), ("J_0", j), ("offset", offset), ("scale", scale), ("bg0", bg0)):
            value, error = float(r[name]), float(r[f"{name}_error"])
            assert 0 < error < 0.05 * max(1.0, abs(true)), (i, name, error)
            assert abs(value - true) < 3 * error, (i, name, value, true, error)
        # reduced chi^2 ~ 1 (250 points: 1 +- 0.09)
        assert abs(float(r["reduced_chi2"]) - 1.0) < 0.3
        # E_b is the Shiba energy of the fitted couplings: an independent bound-state search agrees to its tolerance
        states = shibajax.bound_states(
            model, shibajax.Impurity((0, 0), K=float(r["K_0"]), J=float(r["J_0"])), kgrid=KGRID
        )
        assert abs(float(r["E_b"]) - states.energies[states.energies > 0][0]) < 1e-8
        true_states = shibajax.bound_states(model, shibajax.Impurity((0, 0), K=k, J=j), kgrid=KGRID)
        true_e = true_states.energies[true_states.energies > 0][0]
        assert 0 < float(r["E_b_error"]) and abs(float(r["E_b"]) - true_e) < 3 * float(r["E_b_error"])
        assert float(r["delta_bic"]) > 100  # a clear state: the bare model is far off


def test_bare_pixel_is_bare_and_the_nan_pixel_is_reported_and_skipped(synthetic):
    _, result, messages = synthetic
    bare = result.isel(pixel=4)
    assert str(bare["class"].values) == "bare" and float(bare["delta_bic"]) < 0
    assert np.isnan(float(bare["E_b"])) and np.isnan(float(bare["K_0"])) and np.isnan(float(bare["J_0"]))
    # the instrument values are the bare fit's: the truth within 3 errors
    assert abs(float(bare["scale"]) - 1.05) < 3 * float(bare["scale_error"])
    assert abs(float(bare["reduced_chi2"]) - 1.0) < 0.3
    skipped = result.isel(pixel=5)
    assert str(skipped["class"].values) == "skipped" and np.isnan(float(skipped["chi2"]))
    assert result.attrs["n_skipped"] == 1 and '"pixel": 5' in result.attrs["skipped"]
    assert any("skips 1 pixel" in m and "non-finite" in m for m in messages)


def test_grid_fit_equals_the_single_spectrum_fit_of_each_pixel(host, synthetic):
    """fitting.fit on the Problem of one pixel (same model, data, starts, stopping rule): the same optimum. Both
    run the same LM iterations on the same arithmetic (the grid's data are arguments of one compiled program, the
    Problem's are constants), so they agree to rounding (seen: 1e-12), far inside the fit tolerance (ftol 1e-10)."""
    _, spectrum, _ = host
    grid, result, _ = synthetic
    gp = GridProblem(grid, spectrum, PARAMS, sigma=NOISE, normalise=False)
    assert gp.pixel_model.shifted  # a free offset: the shifted-kernel model
    np.testing.assert_array_equal(gp.problem(0).datasets[0].data, grid["didv"].values[0, 0])
    single = fit(gp.problem(0), n_starts=3, seed=0, method="lm", max_iter=80, progress=False)
    r = result.isel(pixel=0)
    for name in single.free:
        assert abs(single.values[name] - float(r[name])) < 1e-7 * (1 + abs(single.values[name])), name
        assert abs(single.errors[name] / float(r[f"{name}_error"]) - 1) < 1e-5, name
    assert abs(2 * single.loss / float(r["chi2"]) - 1) < 1e-9
    assert single.n_good == int(r["n_good"])
    # the bare model: the grid's optimum is a minimum of the bare Problem of that pixel with the grid's chi^2
    bare = gp.problem(4, bare=True)
    x = jnp.asarray([float(result[n][4]) for n in bare.space.free])
    assert abs(2 * float(bare.loss_natural(x)) / float(result["chi2_bare"][4]) - 1) < 1e-9
    gradient = np.asarray(jax.grad(bare.loss_natural)(x))
    scale = np.array([float(result[f"{n}_error"][4]) for n in bare.space.free])
    assert np.max(np.abs(gradient * scale)) < 1e-4  # d(chi^2/2) per standard error: 0 at the optimum


def test_anchored_mode_equals_fit_anchored_per_pixel(host, synthetic):
    """The vectorised peak-anchored fit (golden-section refinement of the profile, all pixels at once) against
    fitting.anchored.fit_anchored on each pixel (Brent, exact kernel at the pixel's offset): the same K, J, linear
    parameters and chi^2 to the refinement's tolerance (1e-6 of the bracket, 6 meV: seen < 1e-5 meV), and the
    solver's E_b of the anchored couplings equals the peak-derived one."""
    from shibajax.fitting.anchored import fit_anchored
    from shibajax.measurement.peaks import shiba_pair

    _, spectrum, shiba = host
    grid, _, _ = synthetic
    anchor = Anchor(search=(0.2, 1.2), half_width=0.05, grid=tuple(np.linspace(-30.0, 30.0, 21)))
    two = grid.isel(y=[0], x=[0, 1])
    kwargs = {"shiba": shiba, "sigma": NOISE, "normalise": False, "block": 3, "progress": False} | OPTIONS
    result = fit_grid(two, spectrum, PARAMS, mode="anchored", anchor=anchor, **kwargs)
    for i in range(2):
        r, y = result.isel(pixel=i), two["didv"].values[0, i]
        neg, pos = shiba_pair(BIAS, y, search=anchor.search, half_width=anchor.half_width)
        energy, offset = 0.5 * (pos.position - neg.position), 0.5 * (pos.position + neg.position)
        ref = fit_anchored(
            spectrum, shiba, BIAS, y, energy=energy, values={"offset": offset, "temperature": 1.2, "lockin": 0.03},
            grid=anchor.grid, sigma=NOISE,
        )  # fmt: skip
        assert bool(r["anchored"]) and int(r["branch"]) == ref.branch
        assert abs(float(r["E_anchor"]) - energy) < 1e-12 and abs(float(r["offset"]) - offset) < 1e-12
        assert abs(float(r["E_b"]) - energy) < 1e-8  # the solver at the anchored (K, J) finds the anchor
        for name in ("K_0", "J_0", "scale", "bg0", "bg1"):
            assert abs(float(r[name]) - ref.values[name]) < 1e-4 * max(1.0, abs(ref.values[name])), name
        assert abs(float(r["chi2_anchored"]) / ref.chi2 - 1) < 1e-6
        assert abs(float(r["K_0_error"]) / ref.errors["K_0"] - 1) < 1e-2  # finite-difference curvatures


def test_interrupted_fit_resumes_to_the_same_dataset(host, synthetic, tmp_path):
    _, spectrum, shiba = host
    grid, result, _ = synthetic
    path = tmp_path / "grid.nc"
    kwargs = {"shiba": shiba, "sigma": NOISE, "normalise": False, "block": 3, "progress": False, "out": path} | OPTIONS

    def stop(info):
        raise KeyboardInterrupt(f"stopped after block {info['block']}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyboardInterrupt):
            fit_grid(grid, spectrum, PARAMS, on_block=stop, **kwargs)
        with xr.open_dataset(path) as partial:
            assert list(partial["done"].values.astype(bool)) == [True, True, True, False, False, True]
        seen = []
        resumed = fit_grid(grid, spectrum, PARAMS, on_block=seen.append, **kwargs)
        assert [s["block"] for s in seen] == [0] and seen[0]["pixels_done"] == 6  # only the second block ran
        xr.testing.assert_identical(resumed, result)
        with xr.open_dataset(path) as stored:
            np.testing.assert_array_equal(stored["K_0"].values, result["K_0"].values)
        # the same file with other data is refused, naming what differs; restart=True discards it
        other = grid.copy(deep=True)
        other["didv"].values[0, 0, 0] += 1e-3
        with pytest.raises(FitError, match=r"different grid fit: grid\.didv content differs.*restart=True"):
            fit_grid(other, spectrum, PARAMS, **kwargs)
        with pytest.raises(FitError, match=r"fit\.starts content differs"):
            fit_grid(grid, spectrum, PARAMS, **(kwargs | {"seed": 1}))
        again = fit_grid(grid, spectrum, PARAMS, restart=True, **kwargs)
        xr.testing.assert_identical(again, result)


def test_pixel_model_matches_the_spectrum_model(host):
    """The grid's pixel model against SpectrumModel (the single-spectrum pipeline): its T-matrix (Gauss-Jordan,
    no LAPACK) gives the same LDOS to rounding (1e-12 relative; seen 1e-15), and the free-offset model, which
    interpolates g(s) = sum_j W(s, E_j) rho(E_j) at s = V - offset, the exact kernel at the shifted biases to 1e-6
    relative (12-point Lagrange at k_B T = 0.10 meV = 5 h: seen 1e-10)."""
    _, spectrum, _ = host
    values = {"K_0": -3.0, "J_0": 12.0, "offset": 0.037, "scale": 1.0, "bg0": 0.0, "bg1": 0.0}
    values |= {"temperature": 1.2, "lockin": 0.03}
    values = {n: jnp.asarray(v) for n, v in values.items()}
    rho, rho_exact = PixelModel(spectrum).sample_dos(values), spectrum.sample_dos(values)
    assert np.max(np.abs(np.asarray(rho - rho_exact))) < 1e-12 * np.max(np.abs(np.asarray(rho_exact)))
    exact = np.asarray(spectrum(values, jnp.asarray(BIAS)))
    for shifted, tol in ((True, 1e-6), (False, 1e-12)):
        model = PixelModel(spectrum, shifted=shifted)
        kernel = model.kernel({n: values[n] for n in model.kernel_parameters}, BIAS)
        approx = np.asarray(model(values, jnp.asarray(BIAS), kernel=kernel))
        assert np.max(np.abs(approx - exact)) < tol * np.max(np.abs(exact)), shifted
    # the inverse itself, on matrices that need pivoting (a zero first pivot) and on random ones
    rng = np.random.default_rng(3)
    a = rng.normal(size=(50, 6, 6)) + 1j * rng.normal(size=(50, 6, 6))
    a[:, 0, 0] = 0.0
    inv = np.asarray(small_inv(jnp.asarray(a)))
    assert np.max(np.abs(inv @ a - np.eye(6))) < 1e-11


def test_grid_input_errors_name_the_problem(host, synthetic):
    _, spectrum, shiba = host
    grid, _, _ = synthetic
    with pytest.raises(FitError, match="temperature is shared by every pixel"):
        GridProblem(grid, spectrum, PARAMS | {"temperature": {"value": 1.2, "lower": 0.5, "upper": 2.0}})
    with pytest.raises(FitError, match="offset is free without bounds"):
        GridProblem(grid, spectrum, PARAMS | {"offset": 0.0})
    with pytest.raises(FitError, match=r"unknown parameters \['K_1'\]"):
        GridProblem(grid, spectrum, PARAMS | {"K_1": 0.0})
    with pytest.raises(FitError, match="takes \\(pixel, bias\\) or \\(y, x, bias\\)"):
        GridProblem(grid.rename(y="row"), spectrum, PARAMS)
    with pytest.raises(FitError, match="has no default"):
        GridProblem(grid.assign_attrs(temperature_K=float("nan")), spectrum, PARAMS)
    with pytest.raises(FitError, match="mode 'anchored' needs shiba"):
        fit_grid(grid, spectrum, PARAMS, shiba=None, mode="anchored")
    with pytest.raises(FitError, match="unknown option 'maxiter'"):
        fit_grid(grid, spectrum, PARAMS, shiba=shiba, maxiter=3)


# ------------------------------------------------------------------------------------ real data

GRID = REALDATA / "mnpc_grid1"
PIXELS = ("001", "035", "045")  # bare Pb at the edge; two pixels near the molecule's centre (E_b ~ 0.55 meV)


def _read_pixels(names):
    """The (pixel, bias) Dataset of the mnpc_grid1 files (read_spectrum each; positions from the headers)."""
    from shibajax.measurement.readers import header_of, read_spectrum

    rows, x, y = [], [], []
    for name in names:
        ds = read_spectrum(require(GRID / f"MnPc-grid1_{name}.dat"), sort=True)
        header = header_of(ds)
        rows.append(ds["didv"].values)
        x.append(float(header["X (m)"]))
        y.append(float(header["Y (m)"]))
    coords = {"bias": ("bias", ds["bias"].values, {"units": "V"}), "name": ("pixel", list(names))}
    coords |= {"x": ("pixel", x), "y": ("pixel", y)}
    return xr.Dataset({"didv": (("pixel", "bias"), np.array(rows))}, coords=coords, attrs=dict(ds.attrs))


@pytest.mark.realdata
def test_mnpc_grid_pixels_classes_and_anchored_shiba_energies():
    """Issue 14, "Must show", on three pixels: the bare-Pb pixel 001 is "bare" and the central pixels are "shiba"
    with E_b within 20 ueV of the measured maxima (measurement.peaks.shiba_pair on the full-resolution spectrum).

    Host as tests/test_fitting_realdata.py: one band (t = 10, mu = -20 meV), Delta = 1.305 and eta = 0.047 meV from
    the single-gap fit of the bare-Pb spectrum of the same session, G0 on a Fermi-shell mesh (base 16, resolution 1).
    Peak-anchored mode: the free fit's E_b sits 10-25 ueV outward of the maxima (the measured peaks are broader
    than one channel's); anchored, the solver's E_b of the fitted (K, J) equals the maxima's to the root tolerance.
    Pixel 001: the free fit puts a state at the gap edge (E_b ~ Delta), which lowers the BIC by ~70 (the two-gap Pb
    coherence peaks that the single-gap host lacks); the in-gap margin (the model's line width) rules it out."""
    from shibajax.fermi_shell import fermi_shell_mesh
    from shibajax.measurement.peaks import shiba_pair

    grid = _read_pixels(PIXELS)
    window = grid.sel(bias=slice(-2.5e-3, 2.5e-3))
    model = shibajax.models.square(t=10.0, mu=-20.0, delta=1.305)
    couplings = coupling_basis(model, [(0, 0)])
    mesh = fermi_shell_mesh(model, base=16, resolution=1.0)
    spectrum = SpectrumModel(green_blocks(model, couplings, [(0, 0)], ENERGIES, eta=0.047, kgrid=mesh))
    shiba = ShibaEnergies(model, couplings, kgrid=mesh)
    # every 4th point (0.02 mV), so the anchor's parabolas span +-0.05 mV (5 points); the reference below takes
    # all points within +-0.03 mV (12), so the two differ by the noise of the peak tops (seen 5-10 ueV)
    result = fit_grid(
        window.isel(bias=slice(None, None, 4)), spectrum, PARAMS, shiba=shiba, mode="anchored",
        anchor=Anchor(search=(0.2, 1.0), half_width=0.05, grid=tuple(np.linspace(-30.0, 30.0, 21))),
        block=3, progress=False, **OPTIONS,
    )  # fmt: skip
    print(result[["class", "E_b", "E_anchor", "K_0", "J_0", "offset", "delta_bic", "reduced_chi2"]].to_dataframe())
    assert list(result["class"].values) == ["bare", "shiba", "shiba"]
    assert np.isnan(float(result["E_b"][0])) and result.attrs["in_gap_limit"] < 1.0
    bias = 1e3 * window["bias"].values
    for i in (1, 2):
        r = result.isel(pixel=i)
        y = window["didv"].values[i]
        neg, pos = shiba_pair(bias, y, search=(0.2, 1.0), half_width=0.03)
        measured = 0.5 * (pos.position - neg.position)
        assert bool(r["anchored"]) and 0.5 < float(r["E_b"]) < 0.6
        assert abs(float(r["E_b"]) - measured) < 0.02  # the 20 ueV
        assert abs(float(r["E_b"]) - float(r["E_anchor"])) < 1e-6  # the solver reproduces the anchor
        assert float(r["K_0"]) < 0 < float(r["J_0"])  # hole-like peak the taller: K < 0 (test_fitting_realdata)
