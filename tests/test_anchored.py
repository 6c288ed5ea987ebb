"""Peak tops (measurement.peaks) and peak-anchored fits (fitting.anchored) on spectra with known answers."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import shibajax
from shibajax.errors import FitError
from shibajax.fitting import ShibaEnergies, SpectrumModel, coupling_basis, green_blocks
from shibajax.fitting.anchored import fit_anchored
from shibajax.measurement.peaks import peak_top, shiba_pair

KGRID = (16, 16)


def test_peak_top_finds_a_lorentzian_centre_and_its_error_scales_with_the_noise():
    bias = np.linspace(-1.0, 1.0, 2001)
    clean = 1.0 / (1.0 + ((bias - 0.3137) / 0.1) ** 2)
    # noise-free: the vertex of a +-0.03 parabola on a symmetric peak is its centre, up to the window's
    # asymmetry on the grid (centre off-grid, step 1e-3) times the peak's quartic term: seen 6e-6
    p = peak_top(bias, clean, search=(0.0, 1.0), half_width=0.03)
    assert abs(p.position - 0.3137) < 5e-5 and abs(p.height - 1.0) < 1e-3
    errors, shifts = [], []
    for seed in range(40):
        noisy = clean + 0.01 * np.random.default_rng(seed).normal(size=bias.size)
        q = peak_top(bias, noisy, search=(0.0, 1.0), half_width=0.03)
        errors.append(q.error)
        shifts.append(q.position - 0.3137)
    # the reported error is the scatter of the vertex over noise draws (within 40 %: 40 draws)
    assert 0.6 < np.std(shifts) / np.mean(errors) < 1.4


def test_peak_top_errors():
    bias = np.linspace(-1.0, 1.0, 101)
    with pytest.raises(FitError, match="equal 1D shapes"):
        peak_top(bias, bias[:-1], search=(0, 1), half_width=0.1)
    with pytest.raises(FitError, match="fewer than 5 points within"):
        peak_top(bias, -(bias**2), search=(-0.5, 0.5), half_width=0.01)
    with pytest.raises(FitError, match="fewer than 5 points with"):
        peak_top(bias, -(bias**2), search=(2.0, 3.0), half_width=0.1)


@pytest.fixture(scope="module")
def synthetic():
    """A one-channel adatom (K = -3, J = 12 meV) on a square host in meV, NIS at 1.2 K: the spectrum, its exact
    Shiba energy from an independent bound-state search, and the model."""
    host = shibajax.models.square(t=10.0, mu=-20.0, delta=1.35)
    couplings = coupling_basis(host, [(0, 0)])
    energies = np.arange(-4.0, 4.0 + 1e-9, 0.02)
    model = SpectrumModel(green_blocks(host, couplings, [(0, 0)], energies, eta=0.06, kgrid=KGRID))
    truth = {"K_0": -3.0, "J_0": 12.0, "scale": 1.3, "offset": -0.02, "bg0": 0.1, "bg1": 0.02}
    truth |= {"temperature": 1.2, "lockin": 0.03}
    bias = np.linspace(-2.5, 2.5, 801)
    data = np.asarray(model({k: jnp.asarray(v) for k, v in truth.items()}, jnp.asarray(bias)))
    states = shibajax.bound_states(host, shibajax.Impurity((0, 0), K=-3.0, J=12.0), kgrid=KGRID)
    e_b = float(states.energies[states.energies > 0][0])
    return host, couplings, model, truth, bias, data, e_b


def test_anchored_fit_recovers_the_couplings_of_a_noise_free_spectrum(synthetic):
    """On the exact Shiba energy the true (K, J) lies on the constraint curve with chi^2 = 0: the profile fit
    returns it (to the Brent tolerance) and the linear parameters exactly."""
    host, couplings, model, truth, bias, data, e_b = synthetic
    fixed = {n: truth[n] for n in ("offset", "temperature", "lockin")}
    result = fit_anchored(
        model, ShibaEnergies(host, couplings, kgrid=KGRID), bias, data, energy=e_b, values=fixed,
        grid=np.linspace(-10.0, 10.0, 21),
    )  # fmt: skip
    print(result.summary())
    assert result.branch == 0
    assert abs(result.values["K_0"] - truth["K_0"]) < 1e-4
    assert abs(result.values["J_0"] - truth["J_0"]) < 1e-4
    for n in ("scale", "bg0", "bg1"):
        assert abs(result.values[n] - truth[n]) < 1e-6
    assert result.chi2 < 1e-8
    # the model's maxima sit at offset -+ E_b to within the broadening's shift (here < 0.01 mV)
    neg, pos = shiba_pair(bias, data, search=(0.2, 1.2), half_width=0.03)
    assert abs(0.5 * (pos.position - neg.position) - e_b) < 0.01


def test_anchored_fit_error_bars_cover_the_truth_with_noise(synthetic):
    host, couplings, model, truth, bias, data, e_b = synthetic
    noisy = data + 0.02 * np.random.default_rng(3).normal(size=bias.size)
    fixed = {n: truth[n] for n in ("offset", "temperature", "lockin")}
    result = fit_anchored(
        model, ShibaEnergies(host, couplings, kgrid=KGRID), bias, noisy, energy=e_b, values=fixed,
        grid=np.linspace(-10.0, 10.0, 21), sigma=0.02,
    )  # fmt: skip
    print(result.summary())
    # 3 sigma: a single noise draw; reduced chi^2 of the right model with the true sigma is 1 within ~4/sqrt(n)
    assert abs(result.values["K_0"] - truth["K_0"]) < 3 * result.errors["K_0"]
    assert abs(result.values["J_0"] - truth["J_0"]) < 3 * result.errors["J_0"]
    assert abs(result.reduced_chi2 - 1) < 4 * np.sqrt(2 / result.dof)


def test_anchored_fit_errors(synthetic):
    host, couplings, model, truth, bias, data, e_b = synthetic
    fn = ShibaEnergies(host, couplings, kgrid=KGRID)
    fixed = {n: truth[n] for n in ("offset", "temperature", "lockin")}
    with pytest.raises(FitError, match="is not a coupling"):
        fit_anchored(model, fn, bias, data, energy=e_b, values=fixed, scan="K_7")
    with pytest.raises(FitError, match="fixed values missing"):
        fit_anchored(model, fn, bias, data, energy=e_b, values={"offset": 0.0})
    with pytest.raises(FitError, match="equal 1D shapes"):
        fit_anchored(model, fn, bias, data[:-1], energy=e_b, values=fixed)
    # a potential alone binds no state in an s-wave gap (Anderson's theorem): no K puts one at E_b when J = 0
    with pytest.raises(FitError, match="no value of K_0"):
        fit_anchored(model, fn, bias, data, energy=e_b, values=fixed, scan="J_0", solve="K_0", grid=[0.0])
