"""Band structure, normal-state DOS, filling and plots (shibajax.bands, shibajax.plotting) against analytic results.

The square-lattice DOS per spin of -2t(cos kx + cos ky) is rho(e) = K(1 - e^2/16t^2)/(2 pi^2 t) (complete elliptic
integral, SciPy's convention K(m)), as in test_wide_band_limit.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy.integrate import quad  # noqa: E402
from scipy.special import ellipk, roots_legendre  # noqa: E402

import shibajax  # noqa: E402
from shibajax import bands, plotting  # noqa: E402
from shibajax.errors import BroadeningError, ShapeError  # noqa: E402

T = 1.0


def square_dos(e):
    """Normal-state DOS per spin per site of -2t(cos kx + cos ky)."""
    return ellipk(1.0 - (e / (4 * T)) ** 2) / (2 * np.pi**2 * T)


def lorentzian_broadened_square_dos(e, eta):
    """rho convolved with the Lorentzian (eta/pi)/(x^2 + eta^2), by quadrature (log singularity at 0)."""
    return quad(
        lambda x: square_dos(x) * (eta / np.pi) / ((e - x) ** 2 + eta**2), -4 * T, 4 * T, points=[0.0, e], limit=500
    )[0]


# ---------------------------------------------------------------- band structure


def test_square_bands_along_path_match_analytic():
    mu = -0.7
    model = shibajax.models.square(t=T, mu=mu)
    path = bands.high_symmetry_path(model, n_per_segment=40)
    kx, ky = path.kpoints.T
    eps = -2 * T * (np.cos(kx) + np.cos(ky)) - mu
    e = np.asarray(bands.band_structure(model, path))
    assert e.shape == (121, 2)
    np.testing.assert_allclose(e, np.stack([eps, eps], axis=1), atol=1e-12)


def test_rashba_bands_match_analytic():
    mu, alpha = 0.3, 0.45
    model = shibajax.models.square(t=T, mu=mu, rashba=alpha)
    path = bands.high_symmetry_path(model, n_per_segment=40)
    kx, ky = path.kpoints.T
    eps = -2 * T * (np.cos(kx) + np.cos(ky)) - mu
    split = alpha * np.sqrt(np.sin(kx) ** 2 + np.sin(ky) ** 2)
    e = np.asarray(bands.band_structure(model, path.kpoints))
    np.testing.assert_allclose(e, np.stack([eps - split, eps + split], axis=1), atol=1e-12)


def test_bdg_bands_are_sqrt_eps2_plus_delta2():
    mu, delta = -1.0, 0.3
    model = shibajax.models.square(t=T, mu=mu, delta=delta)
    path = bands.high_symmetry_path(model, n_per_segment=20)
    kx, ky = path.kpoints.T
    ek = np.sqrt((-2 * T * (np.cos(kx) + np.cos(ky)) - mu) ** 2 + delta**2)
    e = np.asarray(bands.band_structure(model, path, bdg=True))
    assert e.shape == (61, 4)
    np.testing.assert_allclose(e, np.stack([-ek, -ek, ek, ek], axis=1), atol=1e-12)


def test_bands_on_grid_shape_and_values():
    model = shibajax.models.square(t=T, mu=0.2)
    k, e = bands.bands_on_grid(model, kgrid=(7, 9))
    assert k.shape == (7, 9, 2) and e.shape == (7, 9, 2)
    eps = -2 * T * (np.cos(k[..., 0]) + np.cos(k[..., 1])) - 0.2
    np.testing.assert_allclose(e[..., 0], eps, atol=1e-12)


# ---------------------------------------------------------------- paths and reciprocal lattice


def test_square_path_lengths():
    path = bands.high_symmetry_path(shibajax.models.square(), n_per_segment=17)
    assert path.tick_labels == ("Gamma", "X", "M", "Gamma")
    np.testing.assert_allclose(np.diff(path.tick_positions), [np.pi, np.pi, np.pi * np.sqrt(2)], rtol=1e-14)
    assert path.distance[0] == 0.0 and np.all(np.diff(path.distance) > 0)


def test_triangular_k_point():
    """a1 = (1, 0), a2 = (1/2, sqrt3/2): K_cart = (4 pi/3, 0), so k_red = (K . a1, K . a2) = (4 pi/3, 2 pi/3)."""
    model = shibajax.models.triangular(t=T, mu=0.0)
    k_red = (4 * np.pi / 3, 2 * np.pi / 3)
    np.testing.assert_allclose(bands.reduced_to_cartesian(model, k_red), [4 * np.pi / 3, 0.0], atol=1e-14)
    # a_i . b_j = 2 pi delta_ij
    a = np.asarray(model.lattice_vectors)
    np.testing.assert_allclose(a @ bands.reciprocal_vectors(model).T, 2 * np.pi * np.eye(2), atol=1e-13)
    path = bands.high_symmetry_path(
        model, [("Gamma", (0, 0)), ("M", (np.pi, 0)), ("K", k_red), ("Gamma", (0, 0))], n_per_segment=30
    )
    # Gamma-M = |b1|/2 = 2 pi/sqrt3, M-K = 2 pi/3 (half the hexagon edge 4 pi/3), K-Gamma = 4 pi/3
    np.testing.assert_allclose(
        np.diff(path.tick_positions), [2 * np.pi / np.sqrt(3), 2 * np.pi / 3, 4 * np.pi / 3], rtol=1e-13
    )
    # K is the band maximum of -2t[cos k1 + cos k2 + cos(k2 - k1)]: 3t; Gamma the minimum -6t
    e = np.asarray(bands.band_structure(model, [k_red, (0.0, 0.0)]))
    np.testing.assert_allclose(e[:, 0], [3 * T, -6 * T], atol=1e-12)


def test_path_needs_points_for_non_square_lattice():
    with pytest.raises(ShapeError, match="no default path"):
        bands.high_symmetry_path(shibajax.models.triangular())
    with pytest.raises(ShapeError):
        bands.high_symmetry_path(shibajax.models.square(), [("Gamma", (0, 0))])
    with pytest.raises(ShapeError):
        bands.band_structure(shibajax.models.square(), np.zeros((4, 3)))


# ---------------------------------------------------------------- density of states


@pytest.mark.parametrize("energy", [-1.0, -2.0, 1.5])
def test_dos_matches_elliptic_integral(energy):
    """eta = 0.02 on 600 x 600.

    Two errors: (i) broadening: rho_eta(e) = rho(e) - (eta/pi) Re G'(e) + O(eta^2), linear in eta; measured
    relative -5.5e-4, -1.0e-3, -7.4e-4 at e = -1, -2, 1.5 (doubling eta doubles it). (ii) grid: the k-sum of a
    Lorentzian is a periodic trapezoidal rule, error ~ exp(-L eta / |v|), |v| <= 2 sqrt2 t, i.e. ~exp(-4) here;
    measured against the Lorentzian-broadened analytic DOS: 1.0e-4, 2.4e-4, 2.4e-5 (falls to < 4e-7 at L = 1200).
    Tolerances: 3e-3 against rho, 1e-3 against rho_eta.
    """
    eta = 0.02
    model = shibajax.models.square(t=T, mu=0.0)
    rho = float(bands.normal_state_dos(model, [energy], kgrid=(600, 600), eta=eta)[0])
    assert abs(rho / square_dos(energy) - 1) < 3e-3
    assert abs(rho / lorentzian_broadened_square_dos(energy, eta) - 1) < 1e-3


def test_dos_both_spins_and_gaussian():
    model = shibajax.models.square(t=T, mu=0.0)
    e = np.array([-1.0, 1.5])
    per_spin = np.asarray(bands.normal_state_dos(model, e, kgrid=(300, 300), eta=0.05, kind="gaussian"))
    both = np.asarray(bands.normal_state_dos(model, e, kgrid=(300, 300), eta=0.05, kind="gaussian", per_spin=False))
    np.testing.assert_allclose(both, 2 * per_spin, rtol=1e-14)
    # Gaussian bias is O(eta^2) rho'' (no O(eta) term): 1% at eta = 0.05
    np.testing.assert_allclose(per_spin, square_dos(e), rtol=1e-2)


def test_dos_normalisation_lorentzian_tan_grid():
    """int rho dE = n_orb per spin; E = 4 tan(theta) maps the Lorentzian tails onto a finite theta interval."""
    model = shibajax.models.square(t=T, mu=0.3, rashba=0.4)
    x, w = roots_legendre(1500)
    theta = 0.5 * np.pi * x
    energies = 4.0 * np.tan(theta)
    jac = 4.0 / np.cos(theta) ** 2 * 0.5 * np.pi
    rho = np.asarray(bands.normal_state_dos(model, energies, kgrid=(40, 40), eta=0.1))
    total = float(np.sum(w * jac * rho))
    assert abs(total - model.n_orb) < 1e-8, total


def test_dos_normalisation_gaussian():
    model = shibajax.models.square(t=T, mu=0.3, rashba=0.4)
    energies = np.linspace(-7.0, 7.0, 2801)  # bands within |E| < 5.4 + tails of 10 eta
    rho = np.asarray(bands.normal_state_dos(model, energies, kgrid=(40, 40), eta=0.1, kind="gaussian"))
    total = float(np.sum(rho) * (energies[1] - energies[0]))
    assert abs(total - model.n_orb) < 1e-10, total


@pytest.mark.parametrize("eta", [0.0, -0.1, float("nan")])
def test_dos_rejects_bad_eta(eta):
    with pytest.raises(BroadeningError):
        bands.normal_state_dos(shibajax.models.square(), [0.0], kgrid=(8, 8), eta=eta)


def test_dos_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        bands.normal_state_dos(shibajax.models.square(), [0.0], kgrid=(8, 8), eta=0.1, kind="box")


def test_dos_chunking_does_not_change_result():
    model = shibajax.models.square(t=T, mu=0.3, rashba=0.4)
    e = np.linspace(-3, 3, 5)
    a = np.asarray(bands.normal_state_dos(model, e, kgrid=(23, 17), eta=0.1))
    b = np.asarray(bands.normal_state_dos(model, e, kgrid=(23, 17), eta=0.1, chunk_size=50))
    np.testing.assert_allclose(a, b, rtol=1e-13)


# ---------------------------------------------------------------- filling


def test_half_filling_at_mu_zero():
    """k -> k + (pi, pi) maps eps -> -eps and an even grid onto itself; states at E_F (kx +- ky = pi) count 1/2."""
    for size in (32, 64):
        assert float(bands.filling(shibajax.models.square(t=T, mu=0.0), kgrid=(size, size))) == 1.0
    # with Rashba the symmetry is k -> k + (pi, pi) combined with a spin rotation: still exact
    assert float(bands.filling(shibajax.models.square(t=T, mu=0.0, rashba=0.4), kgrid=(48, 48))) == 1.0
    # odd grids miss the symmetry: 1 + O(1/L^2)
    odd = float(bands.filling(shibajax.models.square(t=T, mu=0.0), kgrid=(101, 101)))
    assert 0 < odd - 1.0 < 2e-4


def test_filling_monotone_in_mu_and_limits():
    mus = np.linspace(-5.0, 5.0, 21)
    n = np.array([float(bands.filling(shibajax.models.square(t=T, mu=m, rashba=0.3), kgrid=(60, 60))) for m in mus])
    assert n[0] == 0.0 and n[-1] == 2.0
    assert np.all(np.diff(n) >= 0) and np.all(np.diff(n[2:-2]) > 0)
    # against the analytic integral of the DOS (no Rashba, mu = -1): 2 int_{-4}^{-1} rho
    n_exact = 2 * quad(square_dos, -4, -1)[0]
    n_grid = float(bands.filling(shibajax.models.square(t=T, mu=-1.0), kgrid=(400, 400)))
    assert abs(n_grid - n_exact) < 1e-3


# ---------------------------------------------------------------- plots


@pytest.fixture
def rashba_model():
    return shibajax.models.square(t=T, mu=-1.0, rashba=0.5, delta=0.2)


def test_plot_bands(rashba_model):
    ax = plotting.plot_bands(rashba_model)
    assert len(ax.lines) >= 2 and "energy" in ax.get_ylabel()
    ax2 = plotting.plot_bands(rashba_model, ax=plt.subplots()[1], bdg=True)
    assert len(ax2.lines) >= 4
    plt.close("all")


def test_plot_fermi_surface(rashba_model):
    ax = plotting.plot_fermi_surface(rashba_model, kgrid=(80, 80))
    assert len(ax.collections) >= 1 or len(ax.lines) >= 2
    ax = plotting.plot_fermi_surface(shibajax.models.triangular(mu=1.0), kgrid=(60, 60))
    plt.close("all")


def test_plot_dos(rashba_model):
    ax = plotting.plot_dos(rashba_model, np.linspace(-5, 5, 51), kgrid=(40, 40), eta=0.1)
    assert len(ax.lines) >= 1 and "energy" in ax.get_xlabel()
    plt.close("all")
