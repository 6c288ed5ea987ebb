"""T-matrix of impurities, the full Green's function and the local density of states.

With V the block-diagonal impurity potential on the impurity sites and G_imp the bare G0 between them,

    T(z) = [1 - V G_imp(z)]^-1 V,
    G(r, r', z) = G0(r - r', z) + sum_ij G0(r - r_i, z) T_ij(z) G0(r_j - r', z),
    LDOS(r, E) = -(1/pi) Im Tr_e G(r, r, E + i eta)        (electron block: what a normal STM tip sees),

exact for point-like impurities (e.g. Balatsky, Vekhter & Zhu, Rev. Mod. Phys. 78, 373 (2006)).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from shibajax import (
    _linalg,
    _precision,  # noqa: F401
)
from shibajax.brillouin_zone import COMPLEX_BYTES, REAL_BYTES, validate_kgrid
from shibajax.errors import ShapeError
from shibajax.greens_function import (
    bare_greens_sum,
    complex_energies,
    in_energy_blocks,
    plan_energy_blocks,
    validate_displacements,
)
from shibajax.impurities import check_real, check_separations, impurity_potential
from shibajax.models.tight_binding import TightBindingModel
from shibajax.nambu import SIGMA, SIGMA_0


def unique_displacements(*groups: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Union of displacement arrays (..., dim) -> unique (n_u, dim) and, per group, indices of shape (...)."""
    dim = groups[0].shape[-1]
    flat = np.concatenate([g.reshape(-1, dim) for g in groups])
    uniq, inverse = np.unique(flat, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    out, start = [], 0
    for g in groups:
        size = int(np.prod(g.shape[:-1]))
        out.append(inverse[start : start + size].reshape(g.shape[:-1]))
        start += size
    return uniq, out


def block_matrix(g: jax.Array, index: np.ndarray) -> jax.Array:
    """Assemble G0 between sites: g (n_z, n_u, M, M), index (n_a, n_b) -> (n_z, n_a M, n_b M)."""
    blocks = g[:, index]  # (n_z, n_a, n_b, M, M)
    n_z, n_a, n_b, m, _ = blocks.shape
    return blocks.transpose(0, 1, 3, 2, 4).reshape(n_z, n_a * m, n_b * m)


def t_matrix(potential: jax.Array, g_imp: jax.Array) -> jax.Array:
    """T = [1 - V G]^-1 V; potential (R, R), g_imp (..., R, R) -> (..., R, R)."""
    eye = jnp.eye(potential.shape[-1], dtype=jnp.complex128)
    return _linalg.solve(eye - potential @ g_imp, jnp.broadcast_to(potential, g_imp.shape))


@partial(jax.jit, static_argnames=("kgrid", "chunk_size"))
def _dressed_greens(model, potential, disp, idx_imp, idx_left, idx_right, idx_bare, z, *, kgrid, chunk_size):
    """G(r_a, r'_b, z): (n_z, n_a, n_b, M, M) from one BZ sum over all displacements needed."""
    (g,) = bare_greens_sum(model, disp, z, kgrid=kgrid, chunk_size=chunk_size)
    bare = g[:, idx_bare]  # (n_z, n_a, n_b, M, M)
    if potential.shape[0] == 0:
        return bare
    g_imp = block_matrix(g, idx_imp)
    tm = t_matrix(potential, g_imp)
    left = block_matrix(g, idx_left)  # (n_z, n_a M, R)
    right = block_matrix(g, idx_right)  # (n_z, R, n_b M)
    m = model.nambu_dim
    n_z, n_a, n_b = bare.shape[:3]
    corr = (left @ tm @ right).reshape(n_z, n_a, m, n_b, m).transpose(0, 1, 3, 2, 4)
    return bare + corr


def _prepare(model, impurities, positions, positions_prime, diagonal_only=False, kgrid=None):
    """Unique displacements of a G(r, r') evaluation and the index arrays into them.

    With diagonal_only, positions_prime must equal positions and only r = r' is needed (the LDOS), so the
    bare term needs d = 0 alone instead of all n_pos^2 pairs.
    """
    pos = validate_displacements(positions, model.dim, "positions")
    pos_p = validate_displacements(positions_prime, model.dim, "positions")
    if impurities is None or _is_empty(impurities):
        sites, potential = np.zeros((0, model.dim), np.int64), jnp.zeros((0, 0), jnp.complex128)
    else:
        sites, potential = impurity_potential(impurities, model)
    check_separations(sites, kgrid)
    d_imp = sites[:, None, :] - sites[None, :, :]
    d_left = pos[:, None, :] - sites[None, :, :]
    d_right = sites[:, None, :] - pos_p[None, :, :]
    d_bare = np.zeros_like(pos)[:, None, :] if diagonal_only else pos[:, None, :] - pos_p[None, :, :]
    disp, (i_imp, i_left, i_right, i_bare) = unique_displacements(d_imp, d_left, d_right, d_bare)
    return potential, disp, i_imp, i_left, i_right, i_bare


def _is_empty(impurities) -> bool:
    try:
        return len(impurities) == 0
    except TypeError:
        return False


def greens_function_with_impurities(
    model: TightBindingModel, impurities, positions, positions_prime, energies, *, eta, kgrid, chunk_size=None
) -> jax.Array:
    """Full G(r, r', E + i eta) with the impurities' T-matrix.

    Args:
        model: BdG model.
        impurities: an Impurity, a list of them, or [] for the bare G0.
        positions, positions_prime: (n_a, dim), (n_b, dim) integer lattice coordinates r and r'.
        energies: (n_E,) energies; eta: broadening > 0 (or None for real in-gap energies).
        kgrid: grid per dimension.

    Returns:
        (n_E, n_a, n_b, M, M) complex128, M = 4 n_orb (long energy grids summed in blocks, same result).

    Raises:
        MemoryLimitError: the result (or one block of energies) does not fit in memory.
    """
    kgrid = validate_kgrid(kgrid, model.dim)
    z = complex_energies(energies, eta)
    potential, disp, i_imp, i_left, i_right, i_bare = _prepare(
        model, impurities, positions, positions_prime, kgrid=kgrid
    )
    m, r = model.nambu_dim, potential.shape[0]
    n_a, n_b = i_bare.shape
    out = n_a * n_b * m * m  # per energy; the T-matrix products below hold each a few times
    plan = plan_energy_blocks(
        model, kgrid, z.shape[0], disp.shape[0], chunk_size=chunk_size,
        what=f"greens_function_with_impurities ({n_a} x {n_b} positions, {r // m} impurity sites)",
        per_energy=COMPLEX_BYTES * (3 * r * r + 2 * n_a * m * r + r * n_b * m + 4 * out),
        outputs=COMPLEX_BYTES * z.shape[0] * out,
    )  # fmt: skip
    return in_energy_blocks(
        lambda zb: _dressed_greens(
            model, potential, disp, i_imp, i_left, i_right, i_bare, zb, kgrid=kgrid, chunk_size=plan.chunk_size
        ),
        z,
        plan.size,
    )


class LDOS(NamedTuple):
    """Local density of states (states per energy unit per cell), arrays of shape (n_E, n_pos).

    electron: -(1/pi) Im Tr G_ee(r, r, E): sum_n |u_n(r)|^2 delta(E - E_n), what a normal tip measures.
    hole: -(1/pi) Im Tr G_hh(r, r, E): sum_n |v_n(r)|^2 delta(E - E_n).
    spin_up, spin_down: electron LDOS projected on spin +- along ``spin_axis`` (sum = electron).
    orbital: electron LDOS per orbital, (n_E, n_pos, n_orb).
    """

    energies: np.ndarray
    positions: np.ndarray
    electron: jax.Array
    hole: jax.Array
    spin_up: jax.Array
    spin_down: jax.Array
    orbital: jax.Array
    spin_axis: np.ndarray

    @property
    def total(self) -> jax.Array:
        """The STM-relevant LDOS (the electron block), (n_E, n_pos)."""
        return self.electron


def ldos(
    model: TightBindingModel,
    impurities,
    positions,
    energies,
    *,
    eta: float,
    kgrid,
    spin_axis=(0.0, 0.0, 1.0),
    chunk_size=None,
) -> LDOS:
    """LDOS at lattice positions with impurities, electron/hole and spin resolved.

    Args:
        model: BdG model.
        impurities: Impurity, list of Impurity, or [] (bare LDOS).
        positions: (n_pos, dim) integer lattice coordinates (or one position).
        energies: (n_E,) energies (energy units).
        eta: Lorentzian broadening > 0 (energy units).
        kgrid: grid per dimension.
        spin_axis: axis of the spin resolution (normalised).

    Returns:
        :class:`LDOS` with arrays of shape (n_E, n_pos). Long energy grids are summed in blocks of energies
        (each block its own k-sum, intermediates under 1 GiB and the memory limit), with the same result.

    Raises:
        MemoryLimitError: the k-grid, or one block of energies, does not fit in memory
            (:func:`~shibajax.brillouin_zone.memory_limit`, ``SHIBAJAX_MEMORY_LIMIT_GB``).

    Example:
        >>> import shibajax
        >>> m = shibajax.models.square(mu=-1.0, delta=0.3)
        >>> r = shibajax.ldos(m, shibajax.Impurity((0, 0), J=1.0), [(0, 0)], [0.0, 0.1], eta=0.02, kgrid=(16, 16))
        >>> r.electron.shape
        (2, 1)
    """
    if eta is None:
        raise ShapeError("the LDOS needs a broadening eta > 0")
    check_real("spin_axis", spin_axis, error=ShapeError, max_ndim=1, hint=" (a nonzero 3-vector)")
    axis = np.asarray(spin_axis, dtype=float)
    if axis.shape != (3,) or not np.linalg.norm(axis) > 0:
        raise ShapeError(f"spin_axis {spin_axis!r} must be a nonzero 3-vector")
    axis = axis / np.linalg.norm(axis)
    pos = validate_displacements(positions, model.dim, "positions")
    kgrid = validate_kgrid(kgrid, model.dim)
    z = complex_energies(energies, eta)
    potential, disp, i_imp, i_left, i_right, i_bare = _prepare(
        model, impurities, pos, pos, diagonal_only=True, kgrid=kgrid
    )
    m, r, n_a, n_i = model.nambu_dim, potential.shape[0], pos.shape[0], i_left.shape[1]
    n_out = (4 + model.n_orb) * n_a  # real outputs per energy
    plan = plan_energy_blocks(
        model, kgrid, z.shape[0], disp.shape[0], chunk_size=chunk_size,
        what=f"ldos at {n_a} positions with {n_i} impurity site(s)",
        per_energy=COMPLEX_BYTES * (4 * n_a * n_i * m * m + 3 * r * r + n_a * m * r + 2 * n_a * m * m)
        + REAL_BYTES * n_out,
        outputs=REAL_BYTES * z.shape[0] * n_out,
    )  # fmt: skip
    electron, hole, up, down, orb = in_energy_blocks(
        lambda zb: _ldos_core(
            model, potential, disp, i_imp, i_left, i_right, i_bare[:, 0], zb, jnp.asarray(axis),
            kgrid=kgrid, chunk_size=plan.chunk_size,
        ),
        z,
        plan.size,
    )  # fmt: skip
    return LDOS(np.asarray(z.real), pos, electron, hole, up, down, orb, axis)


@partial(jax.jit, static_argnames=("kgrid", "chunk_size"))
def _ldos_core(model, potential, disp, idx_imp, idx_left, idx_right, idx_diag, z, axis, *, kgrid, chunk_size):
    (g,) = bare_greens_sum(model, disp, z, kgrid=kgrid, chunk_size=chunk_size)
    gd = g[:, idx_diag]  # (n_z, n_a, M, M)
    m = model.nambu_dim
    if potential.shape[0] > 0:
        tm = t_matrix(potential, block_matrix(g, idx_imp))
        left = g[:, idx_left]  # (n_z, n_a, n_imp, M, M): G0(r_a - r_i)
        right = g[:, idx_right]  # (n_z, n_imp, n_a, M, M): G0(r_j - r_a)
        n_z, n_a, n_i = left.shape[:3]
        left = left.transpose(0, 1, 3, 2, 4).reshape(n_z, n_a, m, n_i * m)
        right = right.transpose(0, 1, 3, 2, 4).reshape(n_z, n_i * m, n_a, m)
        gd = gd + jnp.einsum("zaxi,zij,zjay->zaxy", left, tm, right)
    n = model.n_orb
    g_ee = gd[..., : 2 * n, : 2 * n]
    g_hh = gd[..., 2 * n :, 2 * n :]
    n_sigma = jnp.einsum("i,iab->ab", axis.astype(jnp.complex128), jnp.asarray(SIGMA))
    proj_up = jnp.kron(jnp.eye(n), 0.5 * (jnp.asarray(SIGMA_0) + n_sigma))
    proj_down = jnp.kron(jnp.eye(n), 0.5 * (jnp.asarray(SIGMA_0) - n_sigma))

    def spectral(x):
        return -x.imag / jnp.pi

    electron = spectral(jnp.trace(g_ee, axis1=-2, axis2=-1))
    hole = spectral(jnp.trace(g_hh, axis1=-2, axis2=-1))
    up = spectral(jnp.einsum("xy,zayx->za", proj_up, g_ee))
    down = spectral(jnp.einsum("xy,zayx->za", proj_down, g_ee))
    diag = jnp.diagonal(g_ee, axis1=-2, axis2=-1).reshape(*g_ee.shape[:2], n, 2)
    orbital = spectral(diag.sum(-1))
    return electron, hole, up, down, orbital
