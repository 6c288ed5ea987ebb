"""Green's functions and the full G(r, r', z) against direct inversion of the real-space BdG matrix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from exact_diagonalisation import SX, SY, SZ, add_impurities, bdg_lattice, square_hoppings

import shibajax
from shibajax.models import bdg_hamiltonian, electron_hamiltonian

L = 8
T, MU, DELTA, ALPHA = 1.0, -1.0, 0.3, 0.4
INVERSION_TOL = 1e-11  # two exact routes to the same resolvent: rounding only


def _site(x, y):
    return (x % L) * L + (y % L)


def _block(gmat, r, rp, n_sites):
    """4x4 Nambu block of a real-space resolvent between sites r and r' (layout of bdg_lattice)."""
    i, j = _site(*r), _site(*rp)
    idx_i = [2 * i, 2 * i + 1, 2 * n_sites + 2 * i, 2 * n_sites + 2 * i + 1]
    idx_j = [2 * j, 2 * j + 1, 2 * n_sites + 2 * j, 2 * n_sites + 2 * j + 1]
    return gmat[np.ix_(idx_i, idx_j)]


def test_square_h_of_k_is_the_textbook_formula():
    model = shibajax.models.square(t=T, mu=MU, delta=DELTA, rashba=ALPHA)
    for k in np.random.default_rng(0).uniform(0, 2 * np.pi, size=(5, 2)):
        kx, ky = k
        want = (-2 * T * (np.cos(kx) + np.cos(ky)) - MU) * np.eye(2) + ALPHA * (np.sin(ky) * SX - np.sin(kx) * SY)
        np.testing.assert_allclose(electron_hamiltonian(model, jnp.asarray(k)), want, atol=1e-14)


@pytest.mark.parametrize("gap", ["s", "s+-", "d", "d+id"])
def test_bdg_particle_hole_symmetry_and_hermiticity(gap):
    """(tau_y sigma_y) H(k)* (tau_y sigma_y) = -H(-k) in the Nambu basis of docs/conventions.md."""
    model = shibajax.models.square(t=T, mu=MU, delta=DELTA, rashba=ALPHA, gap=gap)
    xi = np.kron(SY, SY)
    for k in np.random.default_rng(1).uniform(0, 2 * np.pi, size=(4, 2)):
        h = np.asarray(bdg_hamiltonian(model, jnp.asarray(k)))
        hm = np.asarray(bdg_hamiltonian(model, jnp.asarray(-k)))
        np.testing.assert_allclose(h, h.conj().T, atol=1e-14)
        np.testing.assert_allclose(xi @ h.conj() @ xi, -hm, atol=1e-14)


def test_gap_shapes():
    k = jnp.array([0.7, 0.2])
    for gap, want in [
        ("s", DELTA),
        ("s+-", DELTA * np.cos(0.7) * np.cos(0.2)),
        ("d", DELTA / 2 * (np.cos(0.7) - np.cos(0.2))),
        ("d+id", DELTA / 2 * (np.cos(0.7) - np.cos(0.2)) + 1j * DELTA * np.sin(0.7) * np.sin(0.2)),
    ]:
        model = shibajax.models.square(mu=MU, delta=DELTA, gap=gap)
        np.testing.assert_allclose(shibajax.models.pairing_matrix(model, k)[0, 0], want, atol=1e-15)


def test_bare_green_function_equals_real_space_resolvent():
    h0 = bdg_lattice(L, square_hoppings(T, MU, ALPHA), {(0, 0): DELTA})
    n_sites = L * L
    model = shibajax.models.square(t=T, mu=MU, delta=DELTA, rashba=ALPHA)
    disps = [(0, 0), (1, 0), (0, 1), (2, -1), (-3, 2)]
    energies = np.array([-0.5, 0.1, 1.3])
    eta = 0.05
    g = np.asarray(shibajax.greens_function(model, disps, energies, eta=eta, kgrid=(L, L)))
    assert g.dtype == np.complex128
    for ie, e in enumerate(energies):
        res = np.linalg.inv((e + 1j * eta) * np.eye(4 * n_sites) - h0)
        for idd, d in enumerate(disps):
            # G0(d) = G(r, r') with d = r - r'
            want = _block(res, (d[0] + 3, d[1] + 2), (3, 2), n_sites)
            np.testing.assert_allclose(g[ie, idd], want, atol=INVERSION_TOL)


def test_real_energy_in_gap_is_hermitian():
    model = shibajax.models.square(t=T, mu=MU, delta=DELTA, rashba=ALPHA)
    g = np.asarray(shibajax.greens_function(model, [(0, 0), (1, 2), (-1, -2)], [0.1], kgrid=(12, 12)))
    np.testing.assert_allclose(g[0, 0], g[0, 0].conj().T, atol=1e-14)
    np.testing.assert_allclose(g[0, 1], g[0, 2].conj().T, atol=1e-14)  # G0(d)^dagger = G0(-d) for real E


def test_chunking_does_not_change_the_sum():
    model = shibajax.models.square(t=T, mu=MU, delta=DELTA, rashba=ALPHA)
    args = (model, [(0, 0), (3, 1)], [0.05, 0.2])
    whole = shibajax.greens_function(*args, eta=0.01, kgrid=(10, 10))
    chunked = shibajax.greens_function(*args, eta=0.01, kgrid=(10, 10), chunk_size=7)  # 100 = 14 * 7 + 2
    np.testing.assert_allclose(chunked, whole, atol=1e-14)


def test_full_green_function_with_impurities_equals_real_space_resolvent():
    h0 = bdg_lattice(L, square_hoppings(T, MU, ALPHA), {(0, 0): DELTA})
    n_sites = L * L
    cfg = [((0, 0), 0.3, 1.2, (0, 0, 1)), ((2, 1), -0.2, 0.9, (1, 1, 0))]
    h = add_impurities(h0, L, [(s, [((0,), K, J)], n) for s, K, J, n in cfg])
    model = shibajax.models.square(t=T, mu=MU, delta=DELTA, rashba=ALPHA)
    imps = [shibajax.Impurity(s, K=K, J=J, spin=n) for s, K, J, n in cfg]
    r, rp = [(0, 0), (1, 0), (3, 3)], [(0, 0), (2, 1), (-1, 2)]
    energies, eta = np.array([-0.2, 0.15]), 0.02
    g = np.asarray(shibajax.greens_function_with_impurities(model, imps, r, rp, energies, eta=eta, kgrid=(L, L)))
    for ie, e in enumerate(energies):
        res = np.linalg.inv((e + 1j * eta) * np.eye(4 * n_sites) - h)
        for a, ra in enumerate(r):
            for b, rb in enumerate(rp):
                np.testing.assert_allclose(g[ie, a, b], _block(res, ra, rb, n_sites), atol=INVERSION_TOL)


def test_exchange_field_is_tau0_and_potential_is_tauz():
    """Nambu structure of V: K tau_z + J tau_0 n.sigma on one orbital."""
    model = shibajax.models.square(mu=MU, delta=DELTA)
    n = np.array([1.0, -2.0, 0.5]) / np.linalg.norm([1.0, -2.0, 0.5])
    _, v = shibajax.impurity_potential(shibajax.Impurity((0, 0), K=0.7, J=1.3, spin=n), model)
    ns = n[0] * SX + n[1] * SY + n[2] * SZ
    want = np.kron(np.diag([1.0, -1.0]), 0.7 * np.eye(2)) + np.kron(np.eye(2), 1.3 * ns)
    np.testing.assert_allclose(v, want, atol=1e-15)


def test_float64_throughout():
    assert jax.config.jax_enable_x64
    model = shibajax.models.square(mu=MU, delta=DELTA)
    assert model.hoppings.dtype == jnp.complex128
    states = shibajax.bound_state_energies(model, shibajax.Impurity((0, 0), J=2.0), kgrid=(8, 8))
    assert states.energies.dtype == jnp.float64


def test_spin_from_angles_and_normalisation():
    imp = shibajax.Impurity((0, 0), J=1.0, theta=np.pi / 2, phi=np.pi / 2)
    np.testing.assert_allclose(imp.spin, [0.0, 1.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(shibajax.Impurity((0, 0), J=1.0, spin=(0, 3, 4)).spin, [0, 0.6, 0.8], atol=1e-15)
