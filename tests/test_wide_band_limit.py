"""A single classical spin on the square lattice against the analytic Shiba energy.

Wide-band formula (Yu, Shiba, Rusinov; e.g. Balatsky, Vekhter & Zhu, RMP 78, 373 (2006), eq. 4.7 with potential
scattering): E/Delta = +-(1 - a^2 + b^2)/sqrt((1 - a^2 + b^2)^2 + 4 a^2), a = pi N0 J, b = pi N0 K.

A lattice band adds, at leading order in Delta/W, the real part eps0 = Re G_loc(E_F) of the normal-state local
Green's function per spin (particle-hole asymmetry of the band). Solving det[1 - V G0] = 0 with
G0_loc(E) = -pi N0 (E + Delta tau_x)/sqrt(Delta^2 - E^2) + eps0 tau_z gives the same formula with
1 - a^2 + b^2 replaced by C = 1 - 2 eps0 K + (eps0^2 + (pi N0)^2)(K^2 - J^2). N0 and eps0 come from the
analytic square-lattice DOS rho(e) = K(1 - e^2/16t^2)/(2 pi^2 t) (complete elliptic integral), computed here
with SciPy, independently of shibajax. What is left is O(Delta/W): the energy dependence of N0 and eps0 across
the gap, which the test checks shrinks with Delta.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad
from scipy.special import ellipk

import shibajax

T, MU = 1.0, -1.0
J_VALUES = np.array([1.0, 2.0, 3.0, 4.0, 2.0, 2.5])
K_VALUES = np.array([0.0, 0.0, 0.0, 0.0, 0.6, -0.4])


def square_dos(e):
    """Normal-state DOS per spin per site of -2t(cos kx + cos ky)."""
    return ellipk(1.0 - (e / (4 * T)) ** 2) / (2 * np.pi**2 * T)


def normal_state_constants():
    n0 = square_dos(MU)
    # eps0 = P int rho(e) / (mu - e) de, with the pole subtracted analytically (rho has a log van Hove peak at 0).
    regular = quad(lambda e: (square_dos(e) - n0) / (MU - e), -4 * T, 4 * T, points=[0.0, MU], limit=400)[0]
    eps0 = regular + n0 * np.log((MU + 4 * T) / (4 * T - MU))
    return n0, eps0


def shiba_energy(J, K, n0, eps0=0.0):
    """|E|/Delta from the wide-band formula (eps0 = 0) or with the band's eps0."""
    a = np.pi * n0 * J
    c = 1 - 2 * eps0 * K + (eps0**2 + (np.pi * n0) ** 2) * (K**2 - J**2)
    return np.abs(c) / np.sqrt(c**2 + 4 * a**2)


def test_dos_normalised():
    assert abs(quad(square_dos, -4 * T, 4 * T, points=[0.0], limit=200)[0] - 1.0) < 1e-9


@pytest.fixture(scope="module")
def lattice_energies():
    """|E|/Delta of the bound state for each (J, K) at two gaps; grids >= 10 coherence lengths (xi ~ v_F/Delta)."""
    out = {}
    for delta, size in ((0.04, 240), (0.02, 480)):
        model = shibajax.models.square(t=T, mu=MU, delta=delta)

        def energies(J, K, model=model, size=size):
            return shibajax.bound_state_energies(model, shibajax.Impurity((0, 0), K=K, J=J), kgrid=(size, size))

        res = jax.vmap(energies)(jnp.asarray(J_VALUES), jnp.asarray(K_VALUES))
        e = np.asarray(res.energies)
        assert np.all(np.asarray(res.n_states) == 2)  # one +-E pair per spin-diagonal channel
        assert np.all(np.asarray(res.converged))
        out[delta] = np.nanmax(e, axis=1) / delta
        # particle-hole symmetric pair
        np.testing.assert_allclose(np.nanmin(e, axis=1), -np.nanmax(e, axis=1), atol=1e-12)
    return out


def test_approaches_wide_band_formula(lattice_energies):
    n0, eps0 = normal_state_constants()
    with_band = shiba_energy(J_VALUES, K_VALUES, n0, eps0)
    plain = shiba_energy(J_VALUES, K_VALUES, n0)
    dev = {delta: np.abs(e - with_band) for delta, e in lattice_energies.items()}
    # O(Delta/W) corrections: measured 0.009 (Delta = 0.04) and 0.004 (Delta = 0.02) in E/Delta at worst.
    assert np.max(dev[0.02]) < 0.25 * 0.02 / T, dev[0.02]
    assert np.max(dev[0.02]) < 0.7 * np.max(dev[0.04])  # and they shrink as Delta -> 0
    # The plain formula differs only by what eps0 explains (the band's particle-hole asymmetry).
    assert np.all(np.abs(lattice_energies[0.02] - plain) <= np.abs(with_band - plain) + 0.25 * 0.02 / T)
    # Quantum phase transition (E crosses zero) between J = 1 and J = 3, as a = pi N0 J passes ~1.
    assert lattice_energies[0.02][1] < 0.1 < lattice_energies[0.02][0]
