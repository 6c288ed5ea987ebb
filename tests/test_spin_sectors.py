"""The spin-sector search (shibajax.spin_sectors) against the general 4 n_orb search, exact diagonalisation and
the symmetries it rests on.

A spin-invariant host (T_d = t_d sigma_0) with collinear impurity spins is solved in sector 0 of the Nambu space
(c_up, c+_down) only, on a 2 n_orb BdG matrix; sector 1 follows by particle-hole symmetry. Both paths are exact on
the L x L periodic lattice, so their energies agree to rounding (we ask 1e-12 of the gap: both refine roots to
1e-12 E_g by Newton steps that converge quadratically, so the difference is rounding, ~1e-16) and the projector on
each level, sum_a chi_a chi_a^dagger (basis independent within a degenerate level), to 1e-10 (eigenvectors of
A(E) carry rounding / (eigenvalue gap of A) ~ 1e-14 here). The single impurity and the FM / AFM dimers along z are
also checked against exact diagonalisation, energies and wavefunctions, in tests/test_exact_diagonalisation.py
(rashba = 0: now the sector path).
"""

from __future__ import annotations

import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from exact_diagonalisation import add_impurities, bdg_lattice, in_gap_states, square_hoppings
from scipy.optimize import brentq

import shibajax
from shibajax import spin_sectors
from shibajax.brillouin_zone import KMesh
from shibajax.models.tight_binding import bdg_hamiltonian

bound_states_module = sys.modules["shibajax.bound_states"]

ENERGY_TOL = 1e-12  # relative to the gap: two exact methods, roots refined to 1e-12 E_g (see the module docstring)
PROJECTOR_TOL = 1e-10  # level projectors: eigenvector rounding
ED_TOL = 1e-9  # T-matrix vs exact diagonalisation of the same lattice (test_exact_diagonalisation: 1e-8)

ONE_BAND = shibajax.models.square(t=1.0, mu=-1.0, delta=0.3)
TILT = np.array([0.3, -0.8, 0.5])

CONFIGS = {  # one-band host, (site, K, J, spin)
    "single_z": [((0, 0), 0.0, 1.5, (0, 0, 1))],
    "single_x_with_K": [((0, 0), 0.4, 1.5, (1, 0, 0))],
    "single_minus_z": [((1, 2), -0.3, 1.1, (0, 0, -1))],
    "single_tilted": [((0, 0), 0.2, 2.2, tuple(TILT))],
    "fm_dimer": [((0, 0), 0.0, 1.5, (0, 0, 1)), ((2, 0), 0.0, 1.5, (0, 0, 1))],
    "afm_dimer_tilted": [((0, 0), 0.3, 1.5, tuple(TILT)), ((1, 2), 0.3, 1.5, tuple(-TILT))],
    "fm_dimer_x_unequal": [((0, 0), 0.1, 1.2, (1, 0, 0)), ((2, 1), -0.2, 1.8, (2, 0, 0))],
}


def _impurities(config):
    return [shibajax.Impurity(site, K=K, J=J, spin=n) for site, K, J, n in config]


def _projectors(states):
    return [np.einsum("mia,mjb->iajb", chi, chi.conj()) for chi in states.amplitudes]


def _assert_same_states(a, b):
    tol = ENERGY_TOL * b.gap_edge
    assert abs(a.gap_edge - b.gap_edge) <= tol and a.converged and b.converged
    np.testing.assert_array_equal(a.multiplicities, b.multiplicities)
    np.testing.assert_allclose(a.energies, b.energies, atol=tol, rtol=0)
    for pa, pb in zip(_projectors(a), _projectors(b), strict=True):
        np.testing.assert_allclose(pa, pb, atol=PROJECTOR_TOL, rtol=0)


def _plan(model, impurities, kgrid=(8, 8)):
    sites, v = shibajax.impurity_potential(impurities, model)
    return spin_sectors.sector_plan(model, v, sites.shape[0], kgrid, bound_states_module.ZERO_COUPLING)


def _lattice_g0(h0, energy, sites, size, m):
    """G0(r, r_j, E) = (E - H0)^-1 of the lattice, (4 n_orb N, n_imp M), columns in the library's layout (site,
    tau, orbital, spin); rows in the ED layout (tau, site, orbital, spin). And (G0^2) restricted to the sites."""
    n_sites = size * size
    ne = n_sites * m // 2
    cols = []
    for x, y in sites:
        i = (x % size) * size + (y % size)
        cols.extend(range(m // 2 * i, m // 2 * (i + 1)))
        cols_h = range(ne + m // 2 * i, ne + m // 2 * (i + 1))
        cols.extend(cols_h)
    cols = np.asarray(cols)
    g = np.linalg.inv(energy * np.eye(h0.shape[0]) - h0)[:, cols]
    return g, g.conj().T @ g


def _check_against_ed(states, h0, h, size, sites):
    """Energies and multiplicities against exact diagonalisation, and every level's amplitudes chi: the bound-state
    equation chi = V G0_imp(E) chi, the norm over the lattice (chi^dagger G0^2 chi = 1) and psi = G0 chi equal to
    the ED eigenvectors of the level (projectors: basis independent), with G0 = (E - H0)^-1 of the ED lattice."""
    e_ed, v_ed, gap = in_gap_states(h0, h)
    assert e_ed.size > 0 and states.converged
    assert abs(states.gap_edge - gap) < ED_TOL * gap
    np.testing.assert_allclose(states.all_energies, np.sort(e_ed), atol=ED_TOL * gap, rtol=0)
    m = h0.shape[0] // (size * size)
    for level, mult, chi in zip(states.energies, states.multiplicities, states.amplitudes, strict=True):
        g, g2 = _lattice_g0(h0, level, sites, size, m)
        c = chi.reshape(mult, -1).T  # (n_imp M, mult)
        psi = g @ c  # (4 n_orb N, mult), ED layout
        pick = np.abs(e_ed - level) < 1e-9 * gap
        assert pick.sum() == mult
        np.testing.assert_allclose(c.conj().T @ g2 @ c, np.eye(mult), atol=ED_TOL)  # orthonormal on the lattice
        np.testing.assert_allclose(psi @ psi.conj().T, v_ed[:, pick] @ v_ed[:, pick].conj().T, atol=ED_TOL)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sector_search_against_exact_diagonalisation(name):
    """Every one-band configuration (single impurities along any axis, with and without K; FM and AFM dimers along
    z, x and a tilted axis) through the sector path: energies and amplitudes against ED of the 8 x 8 lattice."""
    imps = _impurities(CONFIGS[name])
    assert _plan(ONE_BAND, imps) is not None  # the sector path is taken
    states = shibajax.bound_states(ONE_BAND, imps, kgrid=(8, 8))
    h0 = bdg_lattice(8, square_hoppings(1.0, -1.0, 0.0), {(0, 0): 0.3})
    h = add_impurities(h0, 8, [(site, [((0,), K, J)], n) for site, K, J, n in CONFIGS[name]])
    _check_against_ed(states, h0, h, 8, [site for site, *_ in CONFIGS[name]])


def test_afm_dimer_levels_are_twofold():
    """Without SOC an AFM dimer's levels are twofold degenerate (Beck et al. 2021): one state in each sector, the
    second the particle-hole image of sector 0's state at -E (amplitudes checked against ED above)."""
    states = shibajax.bound_states(ONE_BAND, _impurities(CONFIGS["afm_dimer_tilted"]), kgrid=(8, 8))
    assert np.all(states.multiplicities == 2)
    fm = shibajax.bound_states(ONE_BAND, _impurities(CONFIGS["fm_dimer"]), kgrid=(8, 8))
    assert np.all(fm.multiplicities == 1)


def _two_orbital():
    """Two orbitals, spin-independent hoppings (real, inter-orbital along x), s-wave gap (uniform: a full gap
    without a gap search, which would compile for seconds)."""
    hop = {
        (0, 0): np.array([[0.3, 0.1], [0.1, -0.2]]),
        (1, 0): np.array([[-1.0, 0.15], [0.15, -0.6]]),
        (-1, 0): np.array([[-1.0, 0.15], [0.15, -0.6]]),
        (0, 1): np.array([[-0.8, -0.1], [-0.1, -0.7]]),
        (0, -1): np.array([[-0.8, -0.1], [-0.1, -0.7]]),
    }
    pair = {(0, 0): np.diag([0.25, 0.25])}
    return hop, pair, shibajax.models.from_hoppings(hop, n_orb=2, pairing=pair)


def test_multi_orbital_per_orbital_channels():
    """Impurity.per_orbital with K != 0 and the spin along y on a two-orbital host (LAPACK eigensystems of the 4 x 4
    sector matrices): energies and amplitudes against exact diagonalisation of the 6 x 6 lattice."""
    hop, pair, model = _two_orbital()
    imp = shibajax.Impurity.per_orbital((0, 0), K=[0.3, -0.2], J=[1.6, 1.1], spin=(0, 1, 0))
    plan = _plan(model, [imp])
    assert plan is not None and plan.host.real and plan.real
    size = 6
    states = shibajax.bound_states(model, imp, kgrid=(size, size))
    h0 = bdg_lattice(size, {d: np.kron(t, np.eye(2)) for d, t in hop.items()}, pair, n_orb=2)
    h = add_impurities(h0, size, [((0, 0), [((0,), 0.3, 1.6), ((1,), -0.2, 1.1)], (0, 1, 0))], n_orb=2)
    _check_against_ed(states, h0, h, size, [(0, 0)])


def test_kmesh_and_chunked_paths(monkeypatch):
    """The same sum in other forms must give the same states as the 8 x 8 grid (summed over the 15 orbits of its
    points under the square's point group): a KMesh holding that grid's points shuffled, some split into two
    copies of half the weight (every point, explicit weights); and the path that diagonalises the whole grid chunk
    by chunk in every evaluation (no cache; chunk_size 7: padded chunks)."""
    imps = _impurities(CONFIGS["single_x_with_K"])
    grid = shibajax.bound_states(ONE_BAND, imps, kgrid=(8, 8))
    rng = np.random.default_rng(1)
    points = np.asarray(shibajax.monkhorst_pack((8, 8)))[rng.permutation(64)]
    weights = np.full(64, 1 / 64)
    points, weights = np.concatenate([points, points[:10]]), np.concatenate([weights, weights[:10]])
    weights[:10] /= 2
    weights[64:] /= 2
    mesh_states = shibajax.bound_states(ONE_BAND, imps, kgrid=KMesh(points, weights, "split 8 x 8"))
    _assert_same_states(mesh_states, grid)

    monkeypatch.setattr(bound_states_module, "EIGENSYSTEM_CACHE_ELEMENTS", 0)
    search = bound_states_module._sector_setup(ONE_BAND, *_potential(imps), (8, 8), 7, None)
    assert not search.spec.cache and search.spec.chunk_size * search.spec.chunks > 64  # padded chunks
    _assert_same_states(shibajax.bound_states(ONE_BAND, imps, kgrid=(8, 8), chunk_size=7), grid)


def _potential(imps, model=ONE_BAND):
    sites, v = shibajax.impurity_potential(imps, model)
    return v, sites


def test_grid_orbits_partition_the_grid_and_leave_the_host_invariant():
    """The symmetries found for a host leave H_r(k) unchanged (H_r(Pk) = H_r(k) at random k), and the orbits
    partition the grid: the weights sum to N and the images of the representatives are every point. The square
    lattice has its 8 operations, which a (9, 10) grid cuts to the 4 that keep the axes; a host with different x
    and y hoppings keeps 4; a complex (time-reversal breaking) hopping along x only those that fix x."""
    _, _, two_orbital = _two_orbital()  # t_x != t_y: mirrors and inversion only
    chiral = shibajax.models.from_hoppings(
        {(0, 0): 0.4, (1, 0): -np.exp(0.3j), (-1, 0): -np.exp(-0.3j), (0, 1): -0.7, (0, -1): -0.7}, delta=0.2
    )
    k = np.random.default_rng(2).uniform(0, 2 * np.pi, size=(5, 2))
    for model, n_ops in ((ONE_BAND, 8), (two_orbital, 4), (chiral, 2)):
        host = spin_sectors.sector_host(model)
        assert len(host.symmetries) == n_ops
        spec = spin_sectors.SectorSpec(
            model.hop_displacements, model.pair_displacements, (8, 8), 1, 1, True, host.real, False
        )
        images = np.concatenate([k @ np.asarray(p).T for p in host.symmetries])  # P k for every P, (n_ops 5, 2)
        h = np.asarray(jax.jit(partial(spin_sectors.sector_hamiltonian, spec))(host.hoppings, host.pairing, images))
        np.testing.assert_allclose(h, np.tile(h[:5], (n_ops, 1, 1)), atol=1e-13)
        for kgrid in ((8, 8), (9, 10)):
            group = [p for p in host.symmetries if kgrid[0] == kgrid[1] or p[0][0] != 0]
            index, weights = (np.asarray(x) for x in spin_sectors.grid_orbits(kgrid, host.symmetries))
            assert weights.sum() == np.prod(kgrid)
            reached = {tuple((np.asarray(p) @ n) % np.asarray(kgrid)) for n in index for p in group}
            assert len(reached) == np.prod(kgrid)


def test_general_path_where_the_sectors_do_not_apply():
    """Non-collinear spins (even by 1e-6 rad), a Rashba host, a traced potential (vmap / jit over couplings: the
    fitting path) and a compressed ray mesh take the general path; collinear spins (parallel or antiparallel, any
    axis, or J = 0) on a spin-invariant host take the sectors."""
    assert _plan(ONE_BAND, _impurities(CONFIGS["afm_dimer_tilted"])) is not None
    assert _plan(ONE_BAND, [shibajax.Impurity((0, 0), K=0.5, J=0.0)]) is not None  # no exchange: any axis
    canted = [((0, 0), 0.2, 1.5, (0, 0, 1)), ((2, 0), 0.2, 1.5, (np.sin(1e-6), 0, np.cos(1e-6)))]
    assert _plan(ONE_BAND, _impurities(canted)) is None
    rashba = shibajax.models.square(t=1.0, mu=-1.0, delta=0.3, rashba=0.4)
    assert spin_sectors.sector_host(rashba) is None
    assert _plan(rashba, _impurities(CONFIGS["single_z"])) is None
    v, sites = _potential(_impurities(CONFIGS["single_z"]))

    def traced(x):
        assert spin_sectors.sector_plan(ONE_BAND, x, 1, (8, 8), 1e-12) is None
        return x

    jax.jit(traced)(v)

    class Compressed(KMesh):
        compressed = object()  # what shibajax.ray_mesh's meshes carry: their own k-sums

    mesh = Compressed(np.zeros((1, 2)), np.ones(1))
    assert spin_sectors.sector_plan(ONE_BAND, v, 1, mesh, 1e-12) is None


def test_fixed_shape_batches_through_the_sectors():
    """bound_state_energies and energies_of_potential of concrete input go through the sectors with the general
    path's shapes: (rank,) and (R,) entries (R = 2 sites x 4 here, rank 8), ascending, NaN-padded, multiplicities
    0 on padding, the same states as bound_states (checked against ED above)."""
    imps = _impurities(CONFIGS["fm_dimer_x_unequal"])
    v, sites = _potential(imps)
    states = shibajax.bound_states(ONE_BAND, imps, kgrid=(8, 8))
    for batch in (
        shibajax.bound_state_energies(ONE_BAND, imps, kgrid=(8, 8)),
        shibajax.energies_of_potential(ONE_BAND, v, sites, kgrid=(8, 8)),
    ):
        n = int(batch.n_states)
        assert batch.energies.shape == (8,) and n == states.all_energies.size
        assert bool(batch.has_gap) and bool(batch.converged)
        np.testing.assert_allclose(batch.energies[:n], states.all_energies, atol=ENERGY_TOL, rtol=0)
        assert np.all(np.isnan(batch.energies[n:])) and np.all(batch.multiplicity[n:] == 0)
        np.testing.assert_array_equal(batch.multiplicity[:n], np.repeat(states.multiplicities, states.multiplicities))


def test_bdg_matrix_is_the_sector_matrix_twice_and_particle_hole():
    """For a spin-invariant host H_BdG(k) = H_r(k) (x) sigma_0 in the basis (tau, orbital, spin), and
    tau_y H_r(k)^* tau_y = -H_r(-k) (what maps sector 0 to sector 1); on a complex host (d+id pairing, a complex
    spin-independent hopping) as well as real ones."""
    complex_host = shibajax.models.from_hoppings(
        {(0, 0): 0.4, (1, 0): -1.0 * np.exp(0.3j), (-1, 0): -1.0 * np.exp(-0.3j), (0, 1): -0.7, (0, -1): -0.7},
        pairing={(1, 0): 0.1, (-1, 0): 0.1, (0, 1): 0.05j, (0, -1): 0.05j},
    )
    _, _, two_orbital = _two_orbital()
    k = jnp.array([[0.3, 1.7], [2.9, -0.4], [np.pi, 0.5]])
    for model in (complex_host, two_orbital):
        host = spin_sectors.sector_host(model)
        assert host is not None and host.real == (model is two_orbital)
        spec = spin_sectors.SectorSpec(
            model.hop_displacements, model.pair_displacements, (4, 4), 1, 16, True, host.real, False
        )

        @jax.jit
        def matrices(model, t, d, spec=spec):
            full = jax.vmap(lambda q: bdg_hamiltonian(model, q))(k)
            return full, spin_sectors.sector_hamiltonian(spec, t, d, k), spin_sectors.sector_hamiltonian(spec, t, d, -k)

        full, h_r, h_minus = (np.asarray(x) for x in matrices(model, host.hoppings, host.pairing))
        np.testing.assert_allclose(full, np.kron(h_r, np.eye(2)), atol=1e-14)
        tau_y = np.kron(np.array([[0, -1j], [1j, 0]]), np.eye(model.n_orb))
        np.testing.assert_allclose(tau_y @ h_r.conj() @ tau_y, -h_minus, atol=1e-14)


def test_sector_one_roots_are_sector_zero_roots_mirrored():
    """The derivation behind searching one sector: with V_1 = -tau_y V_0^* tau_y (a particle-hole symmetric V) and
    tau_y G_r(E)^* tau_y = -G_r(-E), det[1 - V_1 G_r(E)] = det[1 - V_0 G_r(-E)]^*. Checked with a plain NumPy
    sector G_r (brute-force inverse of H_r on an 8 x 8 grid, written from docs/conventions.md): the zeros of
    det[1 - V_s G_r(E)] of each sector found by a sign scan and brentq, for an AFM dimer along a tilted axis."""
    imps = _impurities(CONFIGS["afm_dimer_tilted"])
    v, sites = _potential(imps)
    plan = spin_sectors.sector_plan(ONE_BAND, v, 2, (8, 8), 1e-12)
    rot = np.kron(np.eye(4), plan.rotation)
    v_rot = (rot.conj().T @ np.asarray(v) @ rot).reshape(4, 2, 4, 2)
    v0, v1 = v_rot[:, 0, :, 0], v_rot[:, 1, :, 1]
    np.testing.assert_allclose(v_rot[:, 0, :, 1], 0, atol=1e-14)  # the rotation decouples the sectors
    flip = np.kron(np.eye(2), np.array([[0, -1j], [1j, 0]]))
    np.testing.assert_allclose(v1, -flip @ v0.conj() @ flip, atol=1e-14)

    kx, ky = np.meshgrid(2 * np.pi * np.arange(8) / 8, 2 * np.pi * np.arange(8) / 8, indexing="ij")
    xi = -2 * (np.cos(kx) + np.cos(ky)).ravel() + 1.0  # t = 1, mu = -1
    h_r = np.zeros((xi.size, 2, 2))
    h_r[:, 0, 0], h_r[:, 1, 1], h_r[:, 0, 1], h_r[:, 1, 0] = xi, -xi, 0.3, 0.3
    k = np.stack([kx.ravel(), ky.ravel()], 1)
    d = np.asarray(sites)[:, None, :] - np.asarray(sites)[None, :, :]  # (2, 2, dim)
    gap = float(np.sqrt(xi**2 + 0.09).min())

    def g_imp(e):  # (4, 4): blocks G_r(r_i - r_j, E), index site * 2 + tau
        res = np.linalg.inv(e * np.eye(2) - h_r)  # (N, 2, 2)
        phase = np.exp(1j * np.einsum("kd,ijd->kij", k, d))
        return np.einsum("kij,kab->iajb", phase, res).reshape(4, 4) / xi.size

    np.testing.assert_allclose(flip @ g_imp(0.1).conj() @ flip, -g_imp(-0.1), atol=1e-14)

    def roots(vs):
        f = lambda e: np.linalg.det(np.eye(4) - vs @ g_imp(e)).real  # noqa: E731  (real: det of 1 - V G, V G ~ Hermitian)
        grid = np.linspace(-gap, gap, 401)[1:-1]
        vals = np.array([f(e) for e in grid])
        return np.array([brentq(f, grid[i], grid[i + 1], xtol=1e-15) for i in np.flatnonzero(vals[:-1] * vals[1:] < 0)])

    r0, r1 = roots(v0), roots(v1)
    assert r0.size > 0
    np.testing.assert_allclose(np.sort(r1), np.sort(-r0), atol=1e-12)
    states = shibajax.bound_states(ONE_BAND, imps, kgrid=(8, 8))
    np.testing.assert_allclose(states.all_energies, np.sort(np.concatenate([r0, r1])), atol=1e-11)


def test_closed_form_2x2_eigensystem():
    """eigh_2x2 against numpy.linalg.eigh on random Hermitian matrices and the special cases (b = 0, a = d, a < d,
    a zero matrix): ascending eigenvalues, unitary vectors, U diag(E) U^dagger = H, to rounding."""
    rng = np.random.default_rng(3)
    h = rng.normal(size=(50, 2, 2)) + 1j * rng.normal(size=(50, 2, 2))
    h = h + h.conj().transpose(0, 2, 1)
    h[0] = np.diag([1.0, -1.0])
    h[1] = np.diag([-1.0, 1.0])
    h[2] = np.eye(2)
    h[3] = 0.0
    h[4] = [[2.0, 1e-9], [1e-9, 2.0]]
    e, u = jax.jit(spin_sectors.eigh_2x2)(h[:, 0, 0].real, h[:, 1, 1].real, h[:, 0, 1])
    e, u = np.moveaxis(np.asarray(e), 0, -1), np.moveaxis(np.asarray(u), -1, 0)  # (50, 2), (50, 2, 2)
    np.testing.assert_allclose(e, np.linalg.eigvalsh(h), atol=1e-14)
    np.testing.assert_allclose(np.einsum("kan,kbn->kab", u, u.conj()), np.broadcast_to(np.eye(2), h.shape), atol=1e-14)
    np.testing.assert_allclose(np.einsum("kan,kn,kbn->kab", u, e, u.conj()), h, atol=1e-13)


def test_spin_axis_rotation():
    """u sigma_z u^dagger = n . sigma for any axis, at the poles too (n = +-z, and -z to rounding)."""
    sigma = np.array([[[0, 1], [1, 0]], [[0, -1j], [1j, 0]], [[1, 0], [0, -1]]])
    rng = np.random.default_rng(0)
    for axis in [*rng.normal(size=(5, 3)), (0, 0, 1), (0, 0, -1), (1e-17, 0, -1), (1, 0, 0)]:
        n = np.asarray(axis, float) / np.linalg.norm(axis)
        u = spin_sectors.spin_axis_rotation(n)
        np.testing.assert_allclose(u @ sigma[2] @ u.conj().T, np.einsum("i,iab->ab", n, sigma), atol=1e-15)
        np.testing.assert_allclose(u @ u.conj().T, np.eye(2), atol=1e-15)
