"""Infinite impurity chains: Bloch Green's function, Shiba bands against ED, Pfaffian and Majorana number."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from exact_diagonalisation import add_impurities, bdg_lattice, in_gap_states, square_hoppings

import shibajax
from shibajax.chains import (
    chain_bloch_green,
    majorana_number,
    pfaffian,
    shiba_band_batch,
    shiba_bands,
)
from shibajax.clusters import chain_sites, ferromagnetic_spins, impurities_at
from shibajax.errors import ShapeError

ENERGY_TOL = 1e-8  # exact method on the same lattice
L = 12
T, MU, DELTA, J = 1.0, -1.0, 0.3, 1.0


def _row(spacing, axis):
    return [(j * spacing, 0) if axis == 0 else (0, j * spacing) for j in range(L // spacing)]


@pytest.mark.parametrize(("alpha", "spacing", "axis"), [(0.0, 1, 0), (0.4, 1, 0), (0.4, 2, 1), (0.4, 3, 0)])
def test_bloch_green_is_the_torus_bloch_sum(alpha, spacing, axis):
    """g(q, E) = sum_j e^{iqj} G0(j d, E) on the L x L torus, q = 2 pi n s / L, n_perp = L (sign convention)."""
    model = shibajax.models.square(t=T, mu=MU, delta=DELTA, rashba=alpha)
    row = _row(spacing, axis)
    energies = jnp.array([-0.1, 0.05])
    g0 = np.asarray(shibajax.greens_function(model, row, energies, kgrid=(L, L)))  # (n_E, n_row, M, M)
    qs = 2 * np.pi * np.arange(L // spacing) * spacing / L
    g = jax.vmap(lambda q: chain_bloch_green(model, q, energies, spacing=spacing, axis=axis, n_perp=L))(qs)
    for i, q in enumerate(qs):
        expected = np.einsum("j,ejab->eab", np.exp(1j * q * np.arange(len(row))), g0)
        np.testing.assert_allclose(np.asarray(g[i]), expected, atol=1e-13, rtol=0)
        np.testing.assert_allclose(np.asarray(g[i]), np.conj(np.swapaxes(np.asarray(g[i]), -1, -2)), atol=1e-13)


@pytest.mark.parametrize(("alpha", "spacing", "axis"), [(0.0, 1, 0), (0.4, 1, 0), (0.4, 2, 1)])
def test_shiba_bands_equal_exact_diagonalisation_of_a_full_row(alpha, spacing, axis):
    """Union over the torus's q of the bands = in-gap ED levels of L x L with a full row of impurities."""
    model = shibajax.models.square(t=T, mu=MU, delta=DELTA, rashba=alpha)
    row = _row(spacing, axis)
    qs = 2 * np.pi * np.arange(L // spacing) * spacing / L
    bands = shiba_band_batch(model, shibajax.Impurity((0, 0), J=J), qs, spacing=spacing, axis=axis, n_perp=L)
    assert bool(bands.converged)
    h0 = bdg_lattice(L, square_hoppings(T, MU, alpha), {(0, 0): DELTA})
    imps = [(site, [((0,), 0.0, J)], (0.0, 0.0, 1.0)) for site in row]
    e_ed, _, gap = in_gap_states(h0, add_impurities(h0, L, imps))
    lib = np.asarray(bands.energies)
    lib = np.sort(lib[np.isfinite(lib)])
    lib = lib[np.abs(lib) < gap * (1 - 1e-6)]  # the window at each q can exceed the global gap edge
    assert lib.size == e_ed.size > 0
    np.testing.assert_allclose(lib, np.sort(e_ed), atol=ENERGY_TOL, rtol=0)


def test_bands_pair_e_of_q_with_minus_e_of_minus_q_and_vmap_over_couplings():
    model = shibajax.models.square(t=T, mu=MU, delta=DELTA, rashba=0.4)
    qs = jnp.array([0.3, 2 * np.pi - 0.3])
    e = np.asarray(shiba_bands(model, shibajax.Impurity((0, 0), J=J), qs, n_perp=64))
    assert e.shape == (2, 4)
    plus, minus = e[0][np.isfinite(e[0])], e[1][np.isfinite(e[1])]
    assert plus.size > 0
    np.testing.assert_allclose(np.sort(plus), np.sort(-minus), atol=1e-10)
    sweep = jax.vmap(lambda j: shiba_bands(model, shibajax.Impurity((0, 0), J=j), qs, n_perp=64))(jnp.array([0.0, J]))
    assert sweep.shape == (2, 2, 4)
    assert np.all(np.isnan(np.asarray(sweep[0])))
    np.testing.assert_allclose(np.asarray(sweep[1]), e, atol=1e-10)


def test_chain_input_errors():
    model = shibajax.models.square(t=T, mu=MU, delta=DELTA)
    for kwargs in ({"spacing": 0}, {"spacing": 1.5}, {"axis": 2}, {"n_perp": 0}):
        with pytest.raises(ShapeError):
            chain_bloch_green(model, 0.0, [0.0], **{"n_perp": 8, **kwargs})
    cube = model.replace(lattice_vectors=((1.0, 0, 0), (0, 1.0, 0), (0, 0, 1.0)))
    with pytest.raises(ShapeError, match="2D"):
        shiba_bands(cube, shibajax.Impurity((0, 0, 0), J=1.0), [0.0], n_perp=8)


def test_pfaffian():
    rng = np.random.default_rng(1)
    for n in (2, 4, 6, 8, 12):
        x = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
        a = x - x.T
        pf = pfaffian(a)
        assert abs(pf**2 - np.linalg.det(a)) < 1e-10 * abs(np.linalg.det(a))
    zs = [1 + 2j, 3.0, -0.5j]
    blocks = scipy.linalg.block_diag(*[np.array([[0, z], [-z, 0]]) for z in zs])
    assert abs(pfaffian(blocks) - np.prod(zs)) < 1e-14
    perm = np.array([0, 2, 1, 3])  # an odd permutation of the basis flips the sign
    two = scipy.linalg.block_diag(*[np.array([[0, z], [-z, 0]]) for z in zs[:2]])
    assert abs(pfaffian(two[np.ix_(perm, perm)]) + np.prod(zs[:2])) < 1e-14
    assert pfaffian(np.zeros((3, 3))) == 0
    with pytest.raises(ShapeError):
        pfaffian(np.ones((2, 2)))


# FM chain along x, spins along z, on the Rashba square lattice: topological at J_TOPO, trivial at J_TRIVIAL.
# Lowest |E| of finite chains on a 56 x 56 grid, J = 3: 0.0376, 0.0183, 0.0090 at N = 16, 24, 32 (decay ~11 sites).
TOPO = {"t": 1.0, "mu": -3.0, "delta": 0.5, "rashba": 0.8}
J_TOPO, J_TRIVIAL = 3.0, 1.0
DELTA_TOPO = TOPO["delta"]


def test_majorana_number():
    """M = -1 at J = 3, +1 at J = 1 and J -> 0."""
    model = shibajax.models.square(**TOPO)
    m_of = lambda j: majorana_number(model, shibajax.Impurity((0, 0), J=j), n_perp=256)  # noqa: E731
    assert m_of(0.05) == 1
    assert m_of(J_TRIVIAL) == 1
    assert m_of(J_TOPO) == -1


def test_finite_chain_end_states_follow_the_majorana_number():
    """Topological: lowest |E| decays exponentially with N; trivial: it stays near 0.28."""
    model = shibajax.models.square(**TOPO)
    grid = 64  # at least twice the longest chain (31 sites): its ends must not meet through the periodic image
    lowest = {}
    for j, sizes in ((J_TOPO, (16, 24, 32)), (J_TRIVIAL, (24, 32))):
        for n in sizes:
            chain = impurities_at(chain_sites(n), ferromagnetic_spins(n), J=j)
            e = np.asarray(shibajax.bound_state_energies(model, chain, kgrid=(grid, grid)).energies)
            lowest[j, n] = np.nanmin(np.abs(e))
    n_topo = np.array([16, 24, 32])
    e_topo = np.array([lowest[J_TOPO, n] for n in n_topo])
    slope, _ = np.polyfit(n_topo, np.log(e_topo), 1)
    decay_length = -1.0 / slope
    assert np.all(np.diff(e_topo) < 0) and 5.0 < decay_length < 20.0, (e_topo, decay_length)
    assert e_topo[-1] < 0.03 * DELTA_TOPO
    assert min(lowest[J_TRIVIAL, 24], lowest[J_TRIVIAL, 32]) > 0.4 * DELTA_TOPO
    assert abs(lowest[J_TRIVIAL, 24] - lowest[J_TRIVIAL, 32]) < 0.05 * DELTA_TOPO
