"""Infinite periodic chains of identical magnetic impurities: Bloch Green's function and Shiba bands.

A chain has one impurity (same channels and spin) at every site j d, j in Z, with d = (s, 0) (``axis=0``) or
(0, s) (``axis=1``), integer spacing s >= 1, on a 2D lattice. Its Bloch sum

    g(q, E) = sum_j exp(i q j) G0(j d, E),        q in [0, 2 pi) per chain period,

follows from G0(d, E) = (1/N) sum_k e^{ik.d} [E - H(k)]^-1 (docs/conventions.md): sum_j e^{ij(q + s k_par)}
picks k_par = (2 pi m - q) / s, m = 0 .. s-1, so

    g(q, E) = (1/s) sum_m < [E - H(k_par = (2 pi m - q) / s, k_perp)]^-1 >_{k_perp},

the average over a Gamma-centred grid of ``n_perp`` points k_perp = 2 pi n / n_perp. For an L x L torus with a
full row of L / s impurities this is exact (no approximation at all) with ``n_perp = L`` and
q = 2 pi n s / L, n = 0 .. L/s - 1: the finite problem splits into these Bloch blocks.

Shiba bands: with V = Q Lambda Q^dagger (one impurity's potential, nonzero eigenvalues kept), a Bloch state
chi_j = exp(-i q j) chi solves chi = V g(q, E) chi, i.e. the zeros of det[1 - V g(q, E)], which are the zero
crossings of the sorted eigenvalues of the Hermitian A(q, E) = Lambda^-1 - Q^dagger g(q, E) Q. As for single
impurities (:mod:`shibajax.bound_states`) each eigenvalue increases monotonically in E inside the gap
(dA/dE = Q^dagger <[E - H]^-2> Q >= 0). At fixed q there is no particle-hole mirror (E(q) pairs with -E(-q)),
so the whole window (-E_g(q), E_g(q)) is searched, E_g(q) = min |E_n(k)| over the k-points entering g(q, .).
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
from shibajax.bound_states import EDGE_MARGIN, ROOT_TOL, _hermitian, _hermitian_form, _refine_crossings
from shibajax.brillouin_zone import bdg_eigensystem
from shibajax.errors import ImpurityError, ShapeError
from shibajax.impurities import Impurity, channel_potential
from shibajax.models.tight_binding import TightBindingModel

#: Energies E = e_max sin(theta), theta uniform in [-pi/2, pi/2], on which crossings are first bracketed.
N_BRACKET = 17


def _check_chain(model: TightBindingModel, spacing, axis, n_perp) -> tuple[int, int, int]:
    if model.dim != 2:
        raise ShapeError(f"chains are implemented on 2D lattices; this model is {model.dim}D")
    if int(spacing) != spacing or spacing < 1:
        raise ShapeError(f"chain spacing must be an integer >= 1 (lattice units); got {spacing!r}")
    if axis not in (0, 1):
        raise ShapeError(f"chain axis must be 0 (along a1) or 1 (along a2); got {axis!r}")
    if int(n_perp) != n_perp or n_perp < 1:
        raise ShapeError(f"n_perp must be a positive integer (k-points across the chain); got {n_perp!r}")
    return int(spacing), int(axis), int(n_perp)


def _chain_kpoints(q, spacing: int, axis: int, n_perp: int) -> jax.Array:
    """The s * n_perp k-points (reduced coordinates) of g(q, .): k_par = (2 pi m - q)/s, k_perp on a grid."""
    k_par = (2.0 * jnp.pi * jnp.arange(spacing) - q) / spacing
    k_perp = 2.0 * jnp.pi * jnp.arange(n_perp) / n_perp
    par, perp = jnp.meshgrid(k_par, k_perp, indexing="ij")
    cols = (par.ravel(), perp.ravel()) if axis == 0 else (perp.ravel(), par.ravel())
    return jnp.stack(cols, axis=-1)


def _chain_eigensystem(model, q, spacing, axis, n_perp):
    return bdg_eigensystem(model, _chain_kpoints(q, spacing, axis, n_perp))


def _green_from_eig(energies_k, vectors_k, e, power: int = 1):
    """(1/n_k) sum_k U [E - E_k]^-power U^dagger at one real energy: (M, M) complex."""
    res = (1.0 / (e - energies_k)) ** power  # (n_k, M)
    return jnp.einsum("kan,kn,kbn->ab", vectors_k, res, vectors_k.conj()) / energies_k.shape[0]


@partial(jax.jit, static_argnames=("spacing", "axis", "n_perp"))
def _bloch_green(model, q, energies, *, spacing, axis, n_perp):
    ek, uk = _chain_eigensystem(model, q, spacing, axis, n_perp)
    return jax.vmap(lambda e: _green_from_eig(ek, uk, e))(energies)


def chain_bloch_green(model: TightBindingModel, q, energies, *, spacing: int = 1, axis: int = 0, n_perp: int):
    """Bloch sum g(q, E) = sum_j exp(i q j) G0(j d, E) of an infinite chain, d = spacing along ``axis``.

    Args:
        model: 2D BdG model.
        q: chain momentum (radians per chain period), a scalar (vmap over it for several).
        energies: (n_E,) real energies inside the gap (real resolvents; Hermitian result).
        spacing: integer distance s between neighbouring impurities.
        axis: 0 for a chain along a1, 1 along a2.
        n_perp: k-points across the chain (the torus size for an exact L x L result).

    Returns:
        (n_E, M, M) complex128 in the Nambu basis of docs/conventions.md.

    Example:
        >>> import shibajax
        >>> from shibajax.chains import chain_bloch_green
        >>> m = shibajax.models.square(mu=-1.0, delta=0.3)
        >>> chain_bloch_green(m, 0.5, [0.0, 0.1], n_perp=16).shape
        (2, 4, 4)
    """
    spacing, axis, n_perp = _check_chain(model, spacing, axis, n_perp)
    e = jnp.atleast_1d(jnp.asarray(energies, jnp.float64))
    if e.ndim != 1:
        raise ShapeError(f"energies must be a scalar or a 1D array; got shape {e.shape}")
    return _bloch_green(model, jnp.asarray(q, jnp.float64), e, spacing=spacing, axis=axis, n_perp=n_perp)


class ChainBands(NamedTuple):
    """Shiba bands of an infinite chain, fixed shape (vmap/jit safe).

    energies: (n_q, R) in-gap E(q) ascending per q, NaN-padded (R = 4 n_orb).  gap_edge: (n_q,) the window
    half-width E_g(q) searched at each q.  n_states: (n_q,) number of roots.  converged: every root met tol.
    """

    energies: jax.Array
    gap_edge: jax.Array
    n_states: jax.Array
    converged: jax.Array


def _bands_one_q(model, potential, q, edge_margin, tol, *, spacing, axis, n_perp, max_iter=100):
    form = _hermitian_form(potential)
    r = potential.shape[0]
    ek, uk = _chain_eigensystem(model, q, spacing, axis, n_perp)
    gap = jnp.min(jnp.abs(ek))
    e_max = gap * (1.0 - edge_margin)
    qh = form.q.conj().T
    both = form.coupled[:, None] & form.coupled[None, :]
    inv = jnp.diag(form.inverse).astype(jnp.complex128)

    def a_of(e):
        g = _green_from_eig(ek, uk, e)
        return _hermitian(inv - jnp.where(both, qh @ g @ form.q, 0.0))

    def da_of(e):
        g2 = _green_from_eig(ek, uk, e, 2)
        return _hermitian(jnp.where(both, qh @ g2 @ form.q, 0.0))

    grid = e_max * jnp.sin(jnp.linspace(-0.5 * jnp.pi, 0.5 * jnp.pi, N_BRACKET))
    grid = grid.at[0].set(-e_max).at[-1].set(e_max)
    lam_grid = _linalg.eigvalsh(jax.vmap(a_of)(grid))  # (N_BRACKET, R), each column increasing
    n_neg_start = jnp.sum(lam_grid[0] < 0)
    n_pos_end = jnp.sum(lam_grid[-1] <= 0)
    index = n_pos_end + jnp.arange(r)
    crossing = index < n_neg_start
    index = jnp.minimum(index, r - 1)
    roots, done = _refine_crossings(
        lambda x: (jax.vmap(a_of)(x), jax.vmap(da_of)(x)), grid, lam_grid, index, crossing, tol * gap, max_iter
    )
    energies = jnp.sort(jnp.where(crossing, roots, jnp.nan))
    return energies, gap, jnp.sum(crossing), jnp.all(done | ~crossing)


@partial(jax.jit, static_argnames=("spacing", "axis", "n_perp"))
def _bands(model, potential, q_values, edge_margin, tol, *, spacing, axis, n_perp):
    one = partial(_bands_one_q, spacing=spacing, axis=axis, n_perp=n_perp)
    e, gap, n, conv = jax.vmap(lambda q: one(model, potential, q, edge_margin, tol))(q_values)
    return ChainBands(e, gap, n, jnp.all(conv))


def chain_potential(model: TightBindingModel, impurity: Impurity) -> jax.Array:
    """V (M, M) of one impurity of the chain (its site is ignored: every chain site carries it)."""
    if not isinstance(impurity, Impurity):
        raise ImpurityError("a chain is built from one shibajax.Impurity (its site is ignored)")
    return sum(channel_potential(c, impurity.spin, model.n_orb) for c in impurity.channels)


def shiba_band_batch(
    model: TightBindingModel,
    impurity: Impurity,
    q_values,
    *,
    spacing: int = 1,
    axis: int = 0,
    n_perp: int,
    edge_margin: float = EDGE_MARGIN,
    tol: float = ROOT_TOL,
) -> ChainBands:
    """Shiba bands E(q) with the search window and convergence flag (see :func:`shiba_bands`)."""
    spacing, axis, n_perp = _check_chain(model, spacing, axis, n_perp)
    q = jnp.atleast_1d(jnp.asarray(q_values, jnp.float64))
    if q.ndim != 1:
        raise ShapeError(f"q_values must be a scalar or a 1D array; got shape {q.shape}")
    potential = chain_potential(model, impurity)
    return _bands(model, potential, q, edge_margin, tol, spacing=spacing, axis=axis, n_perp=n_perp)


def shiba_bands(
    model: TightBindingModel,
    impurity: Impurity,
    q_values,
    *,
    spacing: int = 1,
    axis: int = 0,
    n_perp: int,
    edge_margin: float = EDGE_MARGIN,
    tol: float = ROOT_TOL,
) -> jax.Array:
    """In-gap Shiba bands E(q) of an infinite chain of copies of ``impurity`` at sites j d.

    Args:
        model: 2D BdG model with a gap.
        impurity: the impurity repeated on every chain site (its ``site`` is ignored).
        q_values: (n_q,) chain momenta (radians per period). On an L x L torus with a full row of L/s
            impurities, q = 2 pi n s / L and n_perp = L give the torus's in-gap spectrum exactly.
        spacing, axis, n_perp: as in :func:`chain_bloch_green`.
        edge_margin: search |E| < E_g(q) (1 - edge_margin), E_g(q) the smallest |E_n(k)| over the k-points
            that enter g(q, .).
        tol: root tolerance relative to E_g(q).

    Returns:
        (n_q, 4 n_orb) float64, the roots of det[1 - V g(q, E)] at each q ascending, NaN-padded.

    Example:
        >>> import numpy as np, shibajax
        >>> from shibajax.chains import shiba_bands
        >>> m = shibajax.models.square(mu=-1.0, delta=0.3, rashba=0.4)
        >>> shiba_bands(m, shibajax.Impurity((0, 0), J=1.0), np.linspace(0, np.pi, 3), n_perp=32).shape
        (3, 4)
    """
    return shiba_band_batch(
        model, impurity, q_values, spacing=spacing, axis=axis, n_perp=n_perp, edge_margin=edge_margin, tol=tol
    ).energies


def pfaffian(a) -> complex:
    """Pfaffian of a complex antisymmetric (2n, 2n) matrix (Parlett-Reid L T L^T elimination with pivoting).

    Pf(A)^2 = det(A); Pf of an odd-sized matrix is 0.
    """
    a = np.array(a, dtype=complex)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ShapeError(f"the Pfaffian needs a square matrix; got shape {a.shape}")
    if not np.allclose(a, -a.T, atol=1e-10 * max(1.0, float(np.abs(a).max(initial=0.0)))):
        raise ShapeError("the Pfaffian needs an antisymmetric matrix (A^T = -A)")
    n = a.shape[0]
    if n % 2:
        return 0.0 + 0.0j
    pf = 1.0 + 0.0j
    for k in range(0, n - 1, 2):
        kp = k + 1 + int(np.abs(a[k + 1 :, k]).argmax())
        if kp != k + 1:  # swap rows and columns k+1 and kp (one transposition: sign change)
            a[[k + 1, kp], k:] = a[[kp, k + 1], k:]
            a[k:, [k + 1, kp]] = a[k:, [kp, k + 1]]
            pf = -pf
        if a[k + 1, k] == 0:
            return 0.0 + 0.0j
        pf *= a[k, k + 1]
        if k + 2 < n:
            tau = a[k, k + 2 :] / a[k, k + 1]
            a[k + 2 :, k + 2 :] += np.outer(tau, a[k + 2 :, k + 1]) - np.outer(a[k + 2 :, k + 1], tau)
    return pf


def majorana_number(
    model: TightBindingModel, impurity: Impurity, *, spacing: int = 1, axis: int = 0, n_perp: int
) -> int:
    """Kitaev's Majorana number of the infinite chain: +1 trivial, -1 topological (Majorana end states).

    At the particle-hole invariant momenta q = 0, pi the matrix B(q) = V^-1 - g(q, 0) obeys
    Xi B* Xi^-1 = -B with Xi = tau_y sigma_y (per orbital), so B Xi is antisymmetric and
    M = sign[Pf(B(0) Xi) / Pf(B(pi) Xi)]. Needs an invertible impurity potential (every orbital coupled,
    J != +-K); a gapless chain (det B(0) or det B(pi) = 0) has no Majorana number and raises.
    """
    spacing, axis, n_perp = _check_chain(model, spacing, axis, n_perp)
    v = np.asarray(chain_potential(model, impurity))
    lam = np.linalg.eigvalsh(v)
    if np.min(np.abs(lam)) <= 1e-12 * max(np.max(np.abs(lam)), 1e-300):
        raise ImpurityError("the Majorana number needs an invertible impurity potential on every orbital")
    xi = np.kron(np.array([[0, -1j], [1j, 0]]), np.kron(np.eye(model.n_orb), np.array([[0, -1j], [1j, 0]])))
    xi = xi.real  # tau_y sigma_y is real
    pf = []
    for q in (0.0, np.pi):
        g = np.asarray(chain_bloch_green(model, q, [0.0], spacing=spacing, axis=axis, n_perp=n_perp))[0]
        b = np.linalg.inv(v) - g
        bx = b @ xi
        pf.append(pfaffian(0.5 * (bx - bx.T)))
    if min(abs(pf[0]), abs(pf[1])) == 0.0:
        raise ShapeError("B(0) or B(pi) is singular: the chain is gapless, the Majorana number is undefined")
    ratio = pf[0] / pf[1]
    # Pf(B Xi)^2 = det B is real for Hermitian B, and both Pfaffians carry the same phase: the ratio is real.
    if abs(ratio.imag) > 1e-6 * abs(ratio):
        raise ArithmeticError(f"Pfaffian ratio {ratio} is not real: the chain breaks particle-hole symmetry")
    return 1 if ratio.real > 0 else -1
