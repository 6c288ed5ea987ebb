"""Spin textures and clusters: dimer angle sweeps and helical chains against exact diagonalisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from exact_diagonalisation import add_impurities, bdg_lattice, cluster, in_gap_states, square_hoppings

import shibajax
from shibajax.clusters import (
    antiferromagnetic_spins,
    canted_pair_spins,
    chain_sites,
    ferromagnetic_spins,
    helical_chain,
    impurities_at,
    spiral_spins,
)
from shibajax.errors import ImpurityError, ShapeError

ENERGY_TOL = 1e-8  # exact method on the same lattice
L = 12
T, MU, DELTA, J = 1.0, -1.0, 0.3, 1.5
ANGLES = np.array([0.0, 0.25, 0.5, 0.75, 1.0]) * np.pi
DIMER = [(0, 0), (2, 1)]


def _ed_levels(alpha, sites, spins):
    h0 = bdg_lattice(L, square_hoppings(T, MU, alpha), {(0, 0): DELTA})
    imps = [(tuple(s), [((0,), 0.0, J)], np.asarray(n)) for s, n in zip(sites, spins, strict=True)]
    e, _, gap = in_gap_states(h0, add_impurities(h0, L, imps))
    return e, gap


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_dimer_angle_sweep_equals_exact_diagonalisation(alpha):
    """One vmapped call over the angle between the two spins, against ED of the L x L torus at each angle."""
    model = shibajax.models.square(t=T, mu=MU, delta=DELTA, rashba=alpha)

    def energies(angle):
        dimer = impurities_at(DIMER, canted_pair_spins(angle), J=J)
        return shibajax.bound_state_energies(model, dimer, kgrid=(L, L))

    sweep = jax.vmap(energies)(jnp.asarray(ANGLES))
    for i, angle in enumerate(ANGLES):
        e_ed, gap = _ed_levels(alpha, DIMER, np.asarray(canted_pair_spins(angle)))
        lib = np.asarray(sweep.energies[i])
        lib = lib[np.isfinite(lib)]
        assert lib.size == e_ed.size > 0
        np.testing.assert_allclose(lib, np.sort(e_ed), atol=ENERGY_TOL, rtol=0)
    # At 180 degrees: twofold degenerate without SOC, split with Rashba SOC.
    e_ed, gap = _ed_levels(alpha, DIMER, np.asarray(canted_pair_spins(np.pi)))
    _, mults = cluster(e_ed, 1e-9 * gap)
    last = np.asarray(sweep.multiplicity[-1])
    last = last[last > 0]
    if alpha == 0.0:
        assert np.all(mults == 2) and np.all(last == 2)
    else:
        assert np.all(mults == 1) and np.all(last == 1)


def test_helical_chain_equals_exact_diagonalisation():
    size = 16
    chain = helical_chain(5, pitch=2 * np.pi / 5, J=J, direction=(1, 0), start=(0, 0))
    model = shibajax.models.square(t=T, mu=MU, delta=DELTA)
    states = shibajax.bound_states(model, chain, kgrid=(size, size))
    h0 = bdg_lattice(size, square_hoppings(T, MU, 0.0), {(0, 0): DELTA})
    imps = [(imp.site, [((0,), 0.0, J)], np.asarray(imp.spin)) for imp in chain]
    e_ed, _, _ = in_gap_states(h0, add_impurities(h0, size, imps))
    assert e_ed.size >= 10
    np.testing.assert_allclose(states.all_energies, np.sort(e_ed), atol=ENERGY_TOL, rtol=0)


def test_textures():
    spins = np.asarray(spiral_spins(6, 0.3))
    np.testing.assert_allclose(np.linalg.norm(spins, axis=1), 1.0, atol=1e-15)
    np.testing.assert_allclose(np.einsum("ij,ij->i", spins[:-1], spins[1:]), np.cos(0.3), atol=1e-15)
    np.testing.assert_allclose(spins[:, 1], 0.0, atol=1e-15)  # default plane: x-z
    fm = np.asarray(ferromagnetic_spins(3, axis=(1, 1, 0)))
    np.testing.assert_allclose(fm, np.tile([2**-0.5, 2**-0.5, 0.0], (3, 1)), atol=1e-15)
    afm = np.asarray(antiferromagnetic_spins(4))
    np.testing.assert_allclose(afm[:, 2], [1, -1, 1, -1], atol=1e-15)
    np.testing.assert_array_equal(chain_sites(3, (1, 1), (2, 0)), [[2, 0], [3, 1], [4, 2]])


def test_texture_errors():
    with pytest.raises(ShapeError, match="n >= 1"):
        chain_sites(0)
    with pytest.raises(ShapeError, match="nonzero lattice vector"):
        chain_sites(3, (0, 0))
    with pytest.raises(ImpurityError, match="perpendicular"):
        spiral_spins(3, 0.1, axis=(0, 0, 1), normal=(0, 0, 1))
    with pytest.raises(ShapeError, match=r"spins of shape \(n, 3\)"):
        impurities_at([(0, 0), (1, 0)], np.zeros((3, 3)), J=1.0)
