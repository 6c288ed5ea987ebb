"""Fast, differentiable impurity LDOS from Green's-function blocks computed once.

A fit changes the couplings K, J of the impurity channels, not the host. The bare Green's function G0 of the
host on the fit's energy grid is therefore summed over the Brillouin zone once (with the conventions of
``shibajax.tmatrix``), and every fit step only solves the small impurity problem per energy:

    V(theta) = sum_c theta_c B_c                      (B_c: the potential of channel c with K = 1 or J = 1),
    T(E) = [1 - V G0_ii(E)]^-1 V,
    LDOS(r, E) = -(1/pi) Im Tr_e [G0(0, E) + sum_ij G0(r - r_i, E) T_ij(E) G0(r_j - r, E)],

with E -> E + i eta (eta fixed at the precompute). The electron-block products are folded once into
W_p(E) = G0(r_j - r_p)_{:, e} G0(r_p - r_i)_{e, :}, so LDOS_p(E) = -(1/pi) Im[Tr_e G0(0, E) + Tr T(E) W_p(E)]:
a step costs one (R, R) solve per energy and no k-sum. The host (its Delta, bands and eta) is fixed by the
precompute; to change Delta, build new blocks (see docs/conventions.md, "Fitting").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from shibajax import (
    _linalg,
    _precision,  # noqa: F401
)
from shibajax.brillouin_zone import COMPLEX_BYTES, validate_kgrid
from shibajax.errors import FitError
from shibajax.greens_function import (
    bare_greens_sum,
    complex_energies,
    in_energy_blocks,
    plan_energy_blocks,
    validate_displacements,
)
from shibajax.impurities import Channel, Impurity, impurity_potential
from shibajax.models.tight_binding import TightBindingModel
from shibajax.tmatrix import block_matrix, unique_displacements


@dataclasses.dataclass(frozen=True)
class Couplings:
    """Linear parametrisation of an impurity potential, V(theta) = sum_c theta_c basis[c].

    Attributes:
        names: (n_c,) coupling names, e.g. ("K_0", "J_0", "K_1", ...). Sites that use the same channel names
            share the couplings (a dimer with the adatom's K/J).
        basis: (n_c, R, R) complex128, R = n_imp * 4 n_orb, in the Nambu basis of docs/conventions.md.
        sites: (n_imp, dim) integer lattice coordinates.
        orbitals: per coupling, the orbitals it acts on.
    """

    names: tuple[str, ...]
    basis: jax.Array
    sites: np.ndarray
    orbitals: tuple[tuple[int, ...], ...]

    def potential(self, theta: jax.Array) -> jax.Array:
        """V (R, R) for couplings theta (n_c,) (energy units)."""
        return jnp.einsum("c,crs->rs", jnp.asarray(theta, jnp.complex128), self.basis)


def coupling_basis(
    model: TightBindingModel,
    sites,
    channels: Sequence[Sequence[int] | int] | None = None,
    *,
    spins=None,
    channel_names: Sequence[str] | None = None,
) -> Couplings:
    """Couplings K_c, J_c of channels ``channels`` (orbital sets), the same on every site.

    Args:
        model: the host.
        sites: (n_imp, dim) lattice sites of the impurities.
        channels: one orbital set per channel (default: one channel per orbital, as ``Impurity.per_orbital``).
        spins: (n_imp, 3) spin directions (default +z on every site).
        channel_names: suffixes of the names (default "0", "1", ...): couplings are "K_<name>", "J_<name>".

    Returns:
        :class:`Couplings` with names (K_0, J_0, K_1, J_1, ...), built with ``impurity_potential`` itself.

    Example:
        >>> import shibajax
        >>> from shibajax.fitting import coupling_basis
        >>> c = coupling_basis(shibajax.models.square(mu=-1.0, delta=0.3), [(0, 0)])
        >>> c.names, c.basis.shape
        (('K_0', 'J_0'), (2, 4, 4))
    """
    pos = validate_displacements(sites, model.dim, "sites")
    if channels is None:
        channels = [(o,) for o in range(model.n_orb)]
    chans = [tuple(int(o) for o in np.atleast_1d(c)) for c in channels]
    if not chans:
        raise FitError("coupling_basis needs at least one channel (a list of orbital sets)")
    if channel_names is None:
        channel_names = [str(i) for i in range(len(chans))]
    if len(channel_names) != len(chans) or len(set(channel_names)) != len(chans):
        raise FitError(f"channel_names {list(channel_names)} must be {len(chans)} distinct names, one per channel")
    spins = np.tile([0.0, 0.0, 1.0], (len(pos), 1)) if spins is None else np.asarray(spins, float)
    if spins.shape != (len(pos), 3):
        raise FitError(f"spins must have shape ({len(pos)}, 3), one direction per site; got {spins.shape}")
    names, basis, orbs = [], [], []
    for name, orbitals in zip(channel_names, chans, strict=True):
        for kind, (k, j) in (("K", (1.0, 0.0)), ("J", (0.0, 1.0))):
            imps = [
                Impurity(tuple(int(x) for x in s), spin=tuple(sp), channels=[Channel(K=k, J=j, orbitals=orbitals)])
                for s, sp in zip(pos, spins, strict=True)
            ]
            _, v = impurity_potential(imps, model)
            names.append(f"{kind}_{name}")
            basis.append(v)
            orbs.append(orbitals)
    return Couplings(tuple(names), jnp.stack(basis), pos, tuple(orbs))


@dataclasses.dataclass(frozen=True)
class GreenBlocks:
    """G0 blocks on an energy grid, summed over the Brillouin zone once.

    Attributes:
        energies: (n_E,) uniform grid (energy units), eta: broadening of z = E + i eta.
        g_imp: (n_E, R, R) G0 between the impurity sites.
        weights: (n_E, n_pos, R, R) W_p = G0(r_j - r_p)[:, e] G0(r_p - r_i)[e, :] (electron rows of the tip site).
        bare: (n_E, n_pos) -(1/pi) Im Tr_e G0(0, E): the bare electron LDOS.
        positions: (n_pos, dim) tip positions.
        couplings: the :class:`Couplings`.
    """

    energies: np.ndarray
    eta: float
    g_imp: jax.Array
    weights: jax.Array
    bare_trace: jax.Array
    positions: np.ndarray
    couplings: Couplings

    @property
    def bare(self) -> jax.Array:
        return -self.bare_trace.imag / jnp.pi

    def ldos(self, theta: jax.Array) -> jax.Array:
        """Electron LDOS (n_E, n_pos) with couplings theta (n_c,); differentiable in theta."""
        return impurity_ldos(self, theta)


def green_blocks(
    model: TightBindingModel, couplings: Couplings, positions, energies, *, eta: float, kgrid, chunk_size=None
) -> GreenBlocks:
    """Sum G0 over the Brillouin zone once for the impurity sites and the tip positions.

    Args:
        model: the host; couplings: from :func:`coupling_basis`.
        positions: (n_pos, dim) tip positions (lattice coordinates).
        energies: (n_E,) energies (energy units); eta: broadening > 0.
        kgrid: k-grid per dimension.

    Returns:
        :class:`GreenBlocks`; ``blocks.ldos(theta)`` equals ``shibajax.ldos(...).electron`` to rounding. The host
        may be gapless (a spectrum needs no gap). Long energy grids are summed in blocks of energies (same result).

    Raises:
        MemoryLimitError: the blocks (n_E (n_pos + 1) R^2 complex numbers, R = 4 n_orb n_imp) or one block of
            energies of the k-sum do not fit in memory: use fewer energies or tip positions, or a smaller grid.
    """
    kgrid = validate_kgrid(kgrid, model.dim)
    pos = validate_displacements(positions, model.dim, "positions")
    z = complex_energies(energies, eta)
    sites = couplings.sites
    d_imp = sites[:, None, :] - sites[None, :, :]
    d_left = pos[:, None, :] - sites[None, :, :]  # G0(r_p - r_i)
    d_right = sites[:, None, :] - pos[None, :, :]  # G0(r_j - r_p)
    d_zero = np.zeros((1, 1, model.dim), np.int64)
    disp, (i_imp, i_left, i_right, i_zero) = unique_displacements(d_imp, d_left, d_right, d_zero)
    m, n_pos, n_imp = model.nambu_dim, pos.shape[0], sites.shape[0]
    r, ne = n_imp * m, 2 * model.n_orb
    out = r * r * (n_pos + 1) + n_pos  # per energy: g_imp, weights, bare
    plan = plan_energy_blocks(
        model, kgrid, z.shape[0], disp.shape[0], chunk_size=chunk_size,
        what=f"green_blocks at {n_pos} tip positions with {n_imp} impurity site(s)",
        per_energy=COMPLEX_BYTES * (4 * n_pos * n_imp * ne * m + 2 * out),
        outputs=COMPLEX_BYTES * z.shape[0] * out,
    )  # fmt: skip
    g_imp, weights, bare = in_energy_blocks(
        lambda zb: _blocks(model, disp, zb, i_imp, i_left, i_right, int(i_zero[0, 0]), kgrid, plan.chunk_size),
        z,
        plan.size,
    )
    return GreenBlocks(np.asarray(z.real), float(eta), g_imp, weights, bare, pos, couplings)


def _blocks(model, disp, z, i_imp, i_left, i_right, i_zero, kgrid, chunk_size):
    (g,) = bare_greens_sum(model, disp, z, kgrid=kgrid, chunk_size=chunk_size)
    ne = 2 * model.n_orb
    m = model.nambu_dim
    g_imp = block_matrix(g, i_imp)
    left = g[:, i_left][..., :ne, :]  # (n_z, n_pos, n_imp, 2n, M)
    right = g[:, i_right][..., :, :ne]  # (n_z, n_imp, n_pos, M, 2n)
    n_z, n_pos, n_imp = left.shape[:3]
    left = left.transpose(0, 1, 3, 2, 4).reshape(n_z, n_pos, ne, n_imp * m)
    right = right.transpose(0, 2, 1, 3, 4).reshape(n_z, n_pos, n_imp * m, ne)
    weights = right @ left  # (n_z, n_pos, R, R)
    bare = jnp.trace(g[:, i_zero, :ne, :ne], axis1=-2, axis2=-1)
    return g_imp, weights, jnp.broadcast_to(bare[:, None], (n_z, n_pos))


@jax.jit
def impurity_ldos(blocks: GreenBlocks, theta: jax.Array) -> jax.Array:
    """-(1/pi) Im Tr_e G(r_p, r_p, E + i eta), (n_E, n_pos), for couplings theta (n_c,)."""
    v = blocks.couplings.potential(theta)
    corr = t_matrix_trace(v, blocks.g_imp, blocks.weights)
    return -(blocks.bare_trace + corr).imag / jnp.pi


@jax.custom_jvp
def t_matrix_trace(v: jax.Array, g: jax.Array, w: jax.Array) -> jax.Array:
    """Tr[T(E) W_p(E)] (n_E, n_pos) with T = (1 - V G)^-1 V; v (R, R), g (n_E, R, R), w (n_E, n_pos, R, R).

    Its derivative is written out (``jax.custom_jvp``) so that a Jacobian costs one more product per energy
    instead of one solve per parameter: with A = 1 - V G and X_p = (1 + G T) W_p A^-1,

        d Tr[T W] = Tr[dV X_p] + Tr[dG (T W_p A^-1 V)] + Tr[T dW_p]

    (from (1 - V G) dT = dV (1 + G T) + V dG T). Forward-mode Jacobians of fits (Levenberg-Marquardt's
    ``jax.linearize`` + vmap over the parameter directions) then contract the n_c directions with the
    precomputed X_p only.
    """
    eye = jnp.eye(v.shape[-1], dtype=jnp.complex128)
    return jnp.einsum("zrs,zpsr->zp", _linalg.fit_inv(eye - v @ g) @ v, w)  # T = (1 - V G)^-1 V


def _t_matrix_trace_jvp(primals, tangents):
    """Symbolic zeros (``defjvp(symbolic_zeros=True)``): in a fit G0 and W are constants, so only the dV term is
    built (the dG and dW terms cost as much again, for nothing)."""
    v, g, w = primals
    dv, dg, dw = (None if isinstance(t, SymbolicZero) else t for t in tangents)
    eye = jnp.eye(v.shape[-1], dtype=jnp.complex128)
    a_inv = _linalg.fit_inv(eye - v @ g)  # (n_E, R, R): Gauss-Jordan up to R = SMALL_R (no LAPACK call per E)
    tm = a_inv @ v
    w_a = jnp.einsum("zpst,ztr->zpsr", w, a_inv)  # W_p A^-1
    out = jnp.einsum("zrs,zpsr->zp", tm, w)
    d_out = jnp.zeros_like(out)
    if dv is not None:
        x = jnp.einsum("zqs,zpsr->zpqr", eye + g @ tm, w_a)  # (1 + G T) W_p A^-1
        d_out = d_out + jnp.einsum("rs,zpsr->zp", dv, x)
    if dg is not None:
        y = jnp.einsum("zqs,zpsr,rt->zpqt", tm, w_a, v)  # T W_p A^-1 V
        d_out = d_out + jnp.einsum("zrs,zpsr->zp", dg, y)
    if dw is not None:
        d_out = d_out + jnp.einsum("zrs,zpsr->zp", tm, dw)
    return out, d_out


t_matrix_trace.defjvp(_t_matrix_trace_jvp, symbolic_zeros=True)


def _flatten_blocks(b: GreenBlocks):
    return (b.g_imp, b.weights, b.bare_trace, b.couplings.basis), (
        _Static(b.energies),
        b.eta,
        _Static(b.positions),
        b.couplings.names,
        _Static(b.couplings.sites),
        b.couplings.orbitals,
    )


def _unflatten_blocks(aux, children):
    energies, eta, positions, names, sites, orbitals = aux
    g_imp, weights, bare, basis = children
    return GreenBlocks(
        energies.value, eta, g_imp, weights, bare, positions.value, Couplings(names, basis, sites.value, orbitals)
    )


class _Static:
    """Hashable wrapper of a NumPy array used as static pytree metadata (compared by content)."""

    def __init__(self, value):
        self.value = np.asarray(value)

    def __hash__(self):
        return hash((self.value.shape, self.value.tobytes()))

    def __eq__(self, other):
        return isinstance(other, _Static) and np.array_equal(self.value, other.value)


jax.tree_util.register_pytree_node(GreenBlocks, _flatten_blocks, _unflatten_blocks)
