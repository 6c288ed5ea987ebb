"""Gapless hosts (issue 12, defect 2): has_gap describes the host (the infinite lattice), not the k-grid.

A k-grid is an exact periodic lattice and misses the nodes of a nodal gap: a d-wave host on a 12 x 12 or 13 x 13
grid has a grid gap edge of 0.075 or 0.196 (a quarter of Delta = 0.3 or more). Such hosts, and Delta = 0, must
give has_gap = False in batches, sweeps and fits, and a NoGapError from bound_states; full gaps (s, s+- with its
nodal lines off the Fermi surface, d+id) must keep has_gap = True (docs/conventions.md, "Gapless hosts").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import shibajax
from shibajax import sweep
from shibajax.brillouin_zone import host_gap
from shibajax.errors import NoGapError
from shibajax.fitting import ShibaEnergies, coupling_basis

IMPURITY = shibajax.Impurity((0, 0), J=2.0)
#: The grid misses the nodes when its gap edge is a sizeable fraction of Delta = 0.3 (0.075 on 12 x 12): far above
#: any rounding (1e-15), so without the host test these grids would report a full gap.
GRID_MISSES_NODES = 0.05


def square_with_gap(mu, s, d, s_pm, d_id):
    """Square lattice (t = 1) whose pairing holds every gap shape of ``models.square`` with traceable weights:
    Delta(k) = s + (d / 2)(cos kx - cos ky) + s_pm cos kx cos ky + i d_id sin kx sin ky. One pytree structure for
    all shapes, so a single vmapped search covers them (one compilation)."""
    hop = {(0, 0): -mu, (1, 0): -1.0, (-1, 0): -1.0, (0, 1): -1.0, (0, -1): -1.0}
    diag, anti = 0.25 * s_pm - 0.25j * d_id, 0.25 * s_pm + 0.25j * d_id
    pairing = {
        (0, 0): s,
        (1, 0): 0.25 * d,
        (-1, 0): 0.25 * d,
        (0, 1): -0.25 * d,
        (0, -1): -0.25 * d,
        (1, 1): diag,
        (-1, -1): diag,
        (1, -1): anti,
        (-1, 1): anti,
    }
    return shibajax.models.from_hoppings(hop, n_orb=1, pairing=pairing)


#: (mu, s, d, s+-, d+id) and the expected has_gap. s+-: Delta cos kx cos ky has nodal lines |kx|, |ky| = pi / 2;
#: at mu = -1 the Fermi surface cos kx + cos ky = 1/2 crosses them (at cos ky = 1/2); at mu = -3
#: (cos kx + cos ky = 3/2, a pocket around Gamma with |kx|, |ky| < pi / 3) it does not, and the gap there is
#: Delta cos kx cos ky >= Delta / 2 > 0. The first two entries are a batch over Delta = 0.3, 0 (s-wave).
CASES = {
    "s": ((-1.0, 0.3, 0.0, 0.0, 0.0), True),
    "delta = 0": ((-1.0, 0.0, 0.0, 0.0, 0.0), False),
    "d": ((-1.0, 0.0, 0.3, 0.0, 0.0), False),
    "s+- crossing": ((-1.0, 0.0, 0.0, 0.3, 0.0), False),
    "s+- off the Fermi surface": ((-3.0, 0.0, 0.0, 0.3, 0.0), True),
    "d+id": ((-1.0, 0.0, 0.3, 0.0, 0.3), True),
}
#: The entries whose nodes (or Fermi surface, for Delta = 0) the 13 x 13 grid misses: a grid-only test calls them
#: gapped. (On 12 x 12 the s+- nodes and the Delta = 0 Fermi surface pass through grid points.)
MISSED = ("delta = 0", "d", "s+- crossing")


def test_gap_shapes_in_one_vmapped_batch():
    """s, Delta = 0, d, s+- with nodal lines crossing / missing the Fermi surface, d+id: one vmapped search over
    the pairing (a traced model). A gapless entry has has_gap = False and no states, and does not raise."""
    kgrid = (13, 13)
    names = list(CASES)
    params = jnp.asarray([CASES[n][0] for n in names])
    expected = np.array([CASES[n][1] for n in names])

    def solve(p):
        return shibajax.bound_state_energies(square_with_gap(*p), IMPURITY, kgrid=kgrid)

    out = jax.vmap(solve)(params)
    np.testing.assert_array_equal(out.has_gap, expected, err_msg=str(names))
    n_states = np.asarray(out.n_states)
    assert np.all(n_states[~expected] == 0) and np.all(n_states[expected] > 0)  # J = 2 binds states in a full gap
    assert np.all(np.isnan(np.asarray(out.energies)[~expected]))
    missed = [names.index(n) for n in MISSED]
    assert np.all(np.asarray(out.gap_edge)[missed] > GRID_MISSES_NODES)  # only the host test finds these


@pytest.mark.parametrize("kgrid", [(12, 12), (13, 13)])
def test_d_wave_host_is_gapless_on_grids_that_miss_the_nodes(kgrid):
    d_wave = shibajax.models.square(mu=-1.0, delta=0.3, gap="d")
    info = host_gap(d_wave, kgrid)
    assert float(info.grid) > GRID_MISSES_NODES  # the grid alone sees a full gap
    assert not bool(info.has_gap)
    # The node found is on the Fermi surface and on a diagonal: cos kx = cos ky = -mu / 4 (xi = 0, Delta = 0).
    # Tolerance: the minimisation converges onto the node to ~1e-12 (|E| < 1e-9 there, with velocities ~ 1).
    np.testing.assert_allclose(np.abs(np.cos(np.asarray(info.k))), [0.25, 0.25], atol=1e-6)
    assert float(info.host) < 1e-9
    with pytest.raises(NoGapError, match=r"Delta\(k\) vanishes on the Fermi surface.*shibajax.ldos"):
        shibajax.bound_states(d_wave, IMPURITY, kgrid=kgrid)


def test_batch_api_flags_a_concrete_nodal_host():
    """bound_state_energies on a fixed (concrete) d-wave host: has_gap = False and no states, no error."""
    d_wave = shibajax.models.square(mu=-1.0, delta=0.3, gap="d")
    out = shibajax.bound_state_energies(d_wave, IMPURITY, kgrid=(13, 13))
    assert not bool(out.has_gap) and int(out.n_states) == 0 and float(out.gap_edge) > GRID_MISSES_NODES


def test_sweep_writes_has_gap_false_for_delta_zero(tmp_path):
    """On the 8 x 8 grid, Delta = 0 at mu = -1 has a grid gap edge of 0.41 (no k-point on the Fermi surface)."""
    config = {
        "kgrid": 8,
        "model": {"mu": -1.0, "delta": 0.3},
        "impurity": {"kind": "dimer", "separation": [2, 0], "J": 1.5},
        "sweep": {"delta": [0.0, 0.3]},
    }
    ds = sweep.run_sweep(config, tmp_path / "sweep.nc", progress=False)
    np.testing.assert_array_equal(ds["has_gap"].values, [False, True])
    assert int(ds["n_states"].values[0]) == 0 and int(ds["n_states"].values[1]) > 0
    assert float(ds["gap_edge"].values[0]) > GRID_MISSES_NODES


def test_fits_refuse_shiba_energies_of_a_nodal_host():
    """Shiba energies of a gapless host are not reported (its spectrum still is: green_blocks of a d-wave host in
    tests/test_memory_limits.py)."""
    d_wave = shibajax.models.square(mu=-1.0, delta=0.3, gap="d")
    with pytest.raises(NoGapError, match="vanishes on the Fermi surface"):
        ShibaEnergies(d_wave, coupling_basis(d_wave, [(0, 0)]), kgrid=(12, 12))
