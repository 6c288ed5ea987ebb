"""The effective one-orbital Nb(110) surface model (energies in meV, lengths in pm)."""

import math

import jax
import jax.numpy as jnp
import numpy as np

import shibajax
from shibajax import Impurity, bound_states
from shibajax.models import (
    NB110_A,
    NB110_DIMERS,
    NB110_DIMERS_PM,
    NB110_LATTICE_VECTORS,
    NB110_NN_DISTANCE,
    NB110_T_RASHBA,
    bdg_hamiltonian,
    electron_hamiltonian,
    nb110,
)

SIGMA_Y = np.array([[0, -1j], [1j, 0]])
TAU_Y_SIGMA_Y = np.kron(SIGMA_Y, SIGMA_Y)  # Nambu index tau * 2 + spin (n_orb = 1)
# Fermi wavevectors (reduced coordinates) of the t_R = 0 band at the default mu: along [001] k1 = k2 = Q_X,
# along [1-10] k1 = -k2 = Q_Y (roots of eps = 0, see the module docstring).
Q_X = 1.6566883359563773
Q_Y = 1.8352554279828792


def random_k(n, seed=0):
    return np.random.default_rng(seed).uniform(-np.pi, np.pi, size=(n, 2))


def test_hermitian_and_particle_hole_symmetric():
    m = nb110()
    k = random_k(50)
    h = np.asarray(jax.vmap(lambda q: electron_hamiltonian(m, q))(jnp.asarray(k)))
    np.testing.assert_allclose(h, np.conj(np.swapaxes(h, -1, -2)), atol=1e-12)
    hp = np.asarray(jax.vmap(lambda q: bdg_hamiltonian(m, q))(jnp.asarray(k)))
    hm = np.asarray(jax.vmap(lambda q: bdg_hamiltonian(m, q))(jnp.asarray(-k)))
    np.testing.assert_allclose(hp, np.conj(np.swapaxes(hp, -1, -2)), atol=1e-12)
    np.testing.assert_allclose(TAU_Y_SIGMA_Y @ np.conj(hp) @ TAU_Y_SIGMA_Y, -hm, atol=1e-10)


def test_lattice_geometry_and_dimers():
    lv = np.asarray(NB110_LATTICE_VECTORS)
    a = NB110_A
    assert math.isclose(NB110_NN_DISTANCE, 285.26, abs_tol=0.01)
    np.testing.assert_allclose(np.linalg.norm(lv, axis=1), math.sqrt(3) * a / 2, rtol=1e-14)
    np.testing.assert_allclose(np.asarray(nb110().lattice_vectors), lv, rtol=0)
    np.testing.assert_allclose(np.array([1, 1]) @ lv, [a, 0.0], atol=1e-12)  # 2nd neighbour along [001]
    np.testing.assert_allclose(np.array([1, -1]) @ lv, [0.0, math.sqrt(2) * a], atol=1e-12)  # 3rd, [1-10]
    lengths = {"sqrt2a-[1-10]": math.sqrt(2) * a, "sqrt3a/2-[1-11]": math.sqrt(3) * a / 2, "2a-[001]": 2 * a}
    for name, length in lengths.items():
        cart = np.asarray(NB110_DIMERS[name], float) @ lv
        np.testing.assert_allclose(cart, NB110_DIMERS_PM[name], atol=1e-12, err_msg=name)
        assert math.isclose(float(np.linalg.norm(cart)), length, rel_tol=1e-14), name
    # the model only hops along the four shells named in the docstring
    assert set(nb110().hop_displacements) == {
        (0, 0),
        (1, 0),
        (-1, 0),
        (0, 1),
        (0, -1),
        (1, 1),
        (-1, -1),
        (1, -1),
        (-1, 1),
    }


def test_dos_at_fermi_level():
    # Energies are meV, so normal_state_dos is per meV per spin: x 1000 for per eV. The band velocity near E_F
    # is |d eps / d k_i| ~ 4 t1 = 1.2 eV per radian, so a 600 x 600 grid has level spacing ~ 1200 * 2 pi / 600
    # = 13 meV; eta = 15 meV exceeds it and is still small against the 100 meV to the van Hove energy.
    # (eta = 5 meV on 600^2 and eta = 3 meV on 800^2 give 0.6953 /eV.)
    m = nb110(t_rashba=0.0)
    rho = 1000.0 * float(shibajax.normal_state_dos(m, [0.0], kgrid=(600, 600), eta=15.0)[0])
    assert abs(rho - 0.70) < 0.07, rho
    # bandwidth: a few eV (band bottom at Gamma -1.7 eV, top +0.7 eV) and about half filling
    e = np.asarray(shibajax.band_structure(m, [[0.0, 0.0], [np.pi, np.pi], [np.pi, -np.pi]]))
    assert e[0, 0] == -1700.0
    filling = float(shibajax.filling(m, kgrid=(300, 300)))
    assert 0.9 < filling < 1.2, filling


def test_closed_anisotropic_fermi_pocket():
    m = nb110(t_rashba=0.0)
    e = np.asarray(shibajax.band_structure(m, [[Q_X, Q_X], [Q_Y, -Q_Y]]))
    np.testing.assert_allclose(e, 0.0, atol=1e-9)
    a = NB110_A
    kx, ky = 2 * Q_X / a, math.sqrt(2) * Q_Y / a  # Cartesian k_F (1/pm)
    assert kx < 1.5 * math.pi / a and ky < math.sqrt(2) * math.pi / a  # inside the zone: closed pocket
    assert kx / ky > 1.2  # anisotropic: longer along [001]
    # electron pocket around Gamma: the band is above E_F where the axes meet the zone boundary,
    # kx = 1.5 pi/a (k1 = k2 = 3 pi/4) and ky = sqrt2 pi/a (k1 = -k2 = pi)
    edge = np.asarray(shibajax.band_structure(m, [[0.75 * np.pi, 0.75 * np.pi], [np.pi, -np.pi]]))
    assert np.all(edge[:, 0] > 0.0)


def rashba_g(k, t_r):
    """g(k) of the module docstring: 2 t_R (sqrt(2/3) (sin k1 - sin k2), -(sin k1 + sin k2) / sqrt3)."""
    s1, s2 = np.sin(k[:, 0]), np.sin(k[:, 1])
    return 2 * t_r * np.stack([math.sqrt(2 / 3) * (s1 - s2), -(s1 + s2) / math.sqrt(3)], axis=-1)


def test_rashba_splitting():
    m = nb110()
    t_r = NB110_T_RASHBA
    # a path crossing the Fermi surface along [001] and along [1-10], plus random points
    s = np.linspace(0.5, 1.5, 11)
    k = np.concatenate([np.stack([s * Q_X, s * Q_X], -1), np.stack([s * Q_Y, -s * Q_Y], -1), random_k(20, 1)])
    e = np.asarray(shibajax.band_structure(m, k))
    g = np.linalg.norm(rashba_g(k, t_r), axis=-1)
    np.testing.assert_allclose(e[:, 1] - e[:, 0], 2 * g, atol=1e-9)
    # the mean of the two bands is the t_R = 0 band
    e0 = np.asarray(shibajax.band_structure(nb110(t_rashba=0.0), k))
    np.testing.assert_allclose(0.5 * (e[:, 0] + e[:, 1]), e0[:, 0], atol=1e-9)
    # at k_F: 8 t_R / sqrt3 |sin Q_X| = 34.5 meV along [001], 8 t_R sqrt(2/3) |sin Q_Y| = 47.3 meV along [1-10]
    kf = np.array([[Q_X, Q_X], [Q_Y, -Q_Y]])
    split = np.diff(np.asarray(shibajax.band_structure(m, kf)), axis=-1)[:, 0]
    np.testing.assert_allclose(
        split, [8 * t_r / math.sqrt(3) * math.sin(Q_X), 8 * t_r * math.sqrt(2 / 3) * math.sin(Q_Y)]
    )
    np.testing.assert_allclose(split, [34.5, 47.3], atol=0.05)
    assert np.all(split > 20 * 1.5)  # far larger than Delta = 1.5 meV


def test_single_spin_smoke():
    # Smoke test of the model in the solver only. With the physical Delta = 1.5 meV (Delta / W ~ 1e-3) the
    # coherence length v_F / Delta is ~ 800 sites, and a converged grid would be thousands of points per side.
    # On a 48 x 48 grid the gap edge happens to be 1.509 meV (a k-point falls near the Fermi surface), but the
    # level spacing near E_F, ~ v 2 pi / L ~ 150 meV, is 100 Delta: the in-gap physics would be that of a
    # 48 x 48 flake, not of the surface. So use Delta = 100 meV here (xi ~ 1200 / 100 ~ 12 sites, L = 4 xi).
    # J = 300 meV: pi N0 J ~ 0.66 (N0 = 0.7 /eV), a state well inside the gap (wide-band estimate E ~ 0.4 Delta;
    # the solver gives +-45.0 meV).
    m = nb110(delta=100.0)
    bs = bound_states(m, Impurity((0, 0), J=300.0), kgrid=(48, 48))
    assert bs.converged
    assert abs(bs.gap_edge - 100.0) < 1.0  # the grid resolves the gap edge (100.0001 meV)
    e = np.sort(bs.energies)
    assert e.size == 2
    np.testing.assert_allclose(e[0], -e[1], rtol=1e-9)
    assert 0.1 * bs.gap_edge < e[1] < 0.8 * bs.gap_edge, e
