"""Brillouin-zone integration that converges at physical gap sizes: adaptive refinement near the Fermi surface.

Why. Inside the gap the integrand of G0(d, E) = sum_k exp(i k.d) [E - H(k)]^-1 varies on the scale
dk ~ Delta / v_F around the Fermi surface, and is smooth elsewhere. At physical Delta / W ~ 1e-3 a uniform grid
needs dk ~ 2 pi / L << Delta / v_F, i.e. L ~ 10^4 per dimension (10^8 points in 2D): wrong, or very slow. A
uniform grid is also a finite periodic lattice, whose level spacing must be well below Delta.

How. Start from a Gamma-centred L0^d grid of cells. A cell of size h (reduced units, per axis) centred at k_c is
*resolved* when the band energies change across it by much less than the distance to the nearest pole,

    rho * v(k_c) <= E_min(k_c),      v = max_n sum_i |xi_n(k_c + h_i e_i / 2) - xi_n(k_c - h_i e_i / 2)|,

with xi_n the normal-state bands, E_min = min_n |E_n(k_c)| the smallest BdG quasiparticle energy, and rho the
*resolution* (the number of cells across the energy scale E_min; larger is finer). Unresolved cells are split into
2^d children, level by level; far from the Fermi surface E_min ~ |xi| is large and cells stay coarse, near it
E_min ~ Delta and cells shrink to h v ~ Delta / rho. The number of points grows like (perimeter of the Fermi
surface) / (Delta / v_F), linearly in W / Delta, instead of quadratically. Each leaf cell carries an
n_g^d-point Gauss-Legendre rule. Decisions are taken on whole orbits of the model's point group (signed
permutations of the reduced axes that leave the band energies invariant, found numerically), so the mesh has
the model's symmetry and symmetry-protected degeneracies stay exact.

Convergence diagnostic. :func:`converged_bound_states` answers on the mesh (base L0, resolution 2 rho) and solves
again on two others, (L0, rho) and (3/2 L0, 2 rho): the resolution and the base grid both set the error (at
rho = 0.25 on Nb(110) the energies moved by 0.1 meV between bases 64, 96 and 128). The larger of the two
differences is reported as the estimated error of each bound-state energy. It is an estimate, a difference
between meshes, not a bound: it is only as good as the assumption that the error falls between the meshes
compared (as seen in ``benchmarks/bench_kmesh.py``).
"""

from __future__ import annotations

import itertools
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from shibajax import (
    _linalg,
    _precision,  # noqa: F401
)
from shibajax.bound_states import BoundStates, bound_states
from shibajax.brillouin_zone import KMesh, validate_kgrid
from shibajax.errors import ShapeError
from shibajax.models.tight_binding import TightBindingModel, bdg_hamiltonian, electron_hamiltonian

#: Default resolution rho (cells across the local energy scale E_min).
DEFAULT_RESOLUTION = 2.0
#: Default Gauss-Legendre points per axis in each leaf cell.
DEFAULT_GAUSS = 3
#: Refinement stops after this many levels (cells 2^-MAX_LEVELS of the base cell).
MAX_LEVELS = 16
#: Refuse to build meshes with more points than this.
MAX_POINTS = 20_000_000
_BATCH = 1 << 15


@partial(jax.jit, static_argnames=())
def _cell_data(model, centres, h):
    """E_min (n,) and the band-energy variation v (n,) of cells centred at ``centres`` (n, dim) of size h (dim,)."""

    def one(k):
        e_bdg = _linalg.eigvalsh(bdg_hamiltonian(model, k))
        e_min = jnp.min(jnp.abs(e_bdg))
        steps = jnp.diag(h) / 2.0
        xi_plus = jax.vmap(lambda s: _linalg.eigvalsh(electron_hamiltonian(model, k + s)))(steps)
        xi_minus = jax.vmap(lambda s: _linalg.eigvalsh(electron_hamiltonian(model, k - s)))(steps)
        v = jnp.max(jnp.sum(jnp.abs(xi_plus - xi_minus), axis=0))
        return e_min, v

    return jax.vmap(one)(centres)


def _evaluate(model, centres: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Host loop over fixed-size batches (one compiled shape) of :func:`_cell_data`."""
    n = centres.shape[0]
    e_out, v_out = np.empty(n), np.empty(n)
    size = min(_BATCH, 1 << max(0, (n - 1).bit_length()))
    for start in range(0, n, size):
        block = centres[start : start + size]
        pad = size - block.shape[0]
        if pad:
            block = np.concatenate([block, np.zeros((pad, block.shape[1]))])
        e, v = _cell_data(model, jnp.asarray(block), jnp.asarray(h))
        e_out[start : start + size] = np.asarray(e)[: size - pad]
        v_out[start : start + size] = np.asarray(v)[: size - pad]
    return e_out, v_out


def band_symmetries(model: TightBindingModel, base: tuple[int, ...], n_test: int = 12, seed: int = 0) -> np.ndarray:
    """Signed permutations S of the reduced axes with E_n(S k) = E_n(k) for the BdG bands, that map the base grid
    onto itself: (n_ops, dim, dim) integer matrices (always including the identity)."""
    dim = model.dim
    rng = np.random.default_rng(seed)
    k = rng.uniform(0.0, 2.0 * np.pi, size=(n_test, dim))
    bands = jax.vmap(lambda q: _linalg.eigvalsh(bdg_hamiltonian(model, q)))
    reference = np.asarray(bands(jnp.asarray(k)))
    scale = max(1.0, float(np.max(np.abs(reference))))
    ops = []
    for perm in itertools.permutations(range(dim)):
        if any(base[p] != base[i] for i, p in enumerate(perm)):
            continue
        for signs in itertools.product((1, -1), repeat=dim):
            s = np.zeros((dim, dim), dtype=np.int64)
            s[np.arange(dim), perm] = signs
            images = np.asarray(bands(jnp.asarray(k @ s.T)))
            if np.max(np.abs(images - reference)) < 1e-10 * scale:
                ops.append(s)
    return np.stack(ops)


def _gauss_rule(n_g: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes in [-1/2, 1/2]^dim and weights summing to 1, (n_g^dim, dim) and (n_g^dim,)."""
    x, w = np.polynomial.legendre.leggauss(n_g)
    nodes = np.stack(np.meshgrid(*([x / 2.0] * dim), indexing="ij"), axis=-1).reshape(-1, dim)
    weights = np.prod(np.stack(np.meshgrid(*([w / 2.0] * dim), indexing="ij"), axis=-1).reshape(-1, dim), axis=1)
    return nodes, weights


def fermi_shell_mesh(
    model: TightBindingModel,
    *,
    base=64,
    resolution: float = DEFAULT_RESOLUTION,
    gauss: int = DEFAULT_GAUSS,
    max_levels: int = MAX_LEVELS,
    max_points: int = MAX_POINTS,
) -> KMesh:
    """Adaptive k-mesh, refined towards the Fermi surface until every cell resolves the local energy scale.

    Args:
        model: BdG model with a gap (the gap sets the finest cells; Delta = 0 would refine forever and stops at
            ``max_levels``).
        base: base grid per dimension (int or tuple); its cells resolve the band structure far from E_F.
        resolution: rho > 0, cells across the local energy scale (see module docstring); the error of
            bound-state energies falls roughly as rho^-2 to rho^-4 (``benchmarks/bench_kmesh.py``).
        gauss: Gauss-Legendre points per axis in each leaf cell (1 = midpoint rule).
        max_levels: largest number of halvings of a base cell.
        max_points: refuse meshes with more points.

    Returns:
        :class:`~shibajax.brillouin_zone.KMesh` (reduced coordinates, weights summing to 1), usable wherever a
        ``kgrid`` is.

    Example:
        >>> import shibajax
        >>> m = shibajax.models.square(mu=-1.0, delta=0.01)
        >>> mesh = fermi_shell_mesh(m, base=32, resolution=1.0)
        >>> len(mesh) < 1024 * 1024, round(float(mesh.weights.sum()), 12)
        (True, 1.0)
    """
    base = validate_kgrid(base, model.dim)
    if isinstance(base, KMesh):
        raise ShapeError("base must be a grid size (int or tuple), not a KMesh")
    if not (np.isfinite(resolution) and resolution > 0):
        raise ShapeError(f"resolution = {resolution!r} must be a positive number")
    if int(gauss) != gauss or gauss < 1:
        raise ShapeError(f"gauss = {gauss!r} must be a positive integer")
    dim = model.dim
    ops = band_symmetries(model, base)
    h0 = 2.0 * np.pi / np.asarray(base, dtype=np.float64)
    axes = [np.arange(n) * step for n, step in zip(base, h0, strict=True)]
    centres = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, dim)
    nodes, node_weights = _gauss_rule(int(gauss), dim)
    children = np.stack(np.meshgrid(*([np.array([-0.25, 0.25])] * dim), indexing="ij"), axis=-1).reshape(-1, dim)
    leaf_points, leaf_weights = [], []
    n_total, levels_used = 0, 0
    for level in range(max_levels + 1):
        h = h0 / 2.0**level
        refine = np.zeros(centres.shape[0], dtype=bool)
        if level < max_levels:
            for s in ops:  # a cell is refined when any of its images is: the mesh keeps the point group
                e_min, v = _evaluate(model, np.mod(centres @ s.T, 2.0 * np.pi), h)
                refine |= resolution * v > e_min
        leaves = centres[~refine]
        cell_weight = np.prod(h) / (2.0 * np.pi) ** dim
        leaf_points.append((leaves[:, None, :] + nodes[None] * h).reshape(-1, dim))
        leaf_weights.append(np.broadcast_to(cell_weight * node_weights, (leaves.shape[0], nodes.shape[0])).ravel())
        n_total += leaf_points[-1].shape[0]
        levels_used = level
        centres = (centres[refine][:, None, :] + children[None] * h).reshape(-1, dim)
        if n_total + centres.shape[0] * nodes.shape[0] > max_points:
            raise ShapeError(
                f"the Fermi-shell mesh would exceed max_points = {max_points} at level {level + 1}: lower the "
                "resolution, or raise max_points (is the gap zero or nodal?)"
            )
        if centres.shape[0] == 0:
            break
    points = np.mod(np.concatenate(leaf_points), 2.0 * np.pi)
    weights = np.concatenate(leaf_weights)
    weights = weights / weights.sum()  # exact up to rounding: the leaves tile the zone
    label = (
        f"Fermi-shell mesh: base {'x'.join(map(str, base))}, resolution {resolution:g}, "
        f"{gauss}^{dim} Gauss points per cell, {levels_used} levels"
    )
    return KMesh(points, weights, label)


def converged_bound_states(
    model: TightBindingModel,
    impurities,
    *,
    base=64,
    resolution: float = DEFAULT_RESOLUTION,
    gauss: int = DEFAULT_GAUSS,
    vary_base: bool = True,
    **kwargs,
) -> BoundStates:
    """Bound states on a Fermi-shell mesh of resolution 2 rho, with an error estimate from two other meshes.

    The answer is solved on the mesh (``base``, 2 rho). The returned :class:`~shibajax.BoundStates` has
    ``energy_errors`` (energy units) per level, the larger of

    - |E(base, 2 rho) - E(base, rho)|, the resolution's share, and
    - |E(base, 2 rho) - E(3/2 base, 2 rho)|, the base grid's share (``vary_base``; each axis of the base grid
      times 3/2, rounded): the base cells resolve the bands far from the Fermi surface and the symmetry
      orbits, and at small rho the energies depend on them too.

    This is an estimate, a difference between meshes, not a bound: a mesh pair that happens to agree hides any
    error they share. If two meshes disagree on the number of levels the errors are ``inf`` (the coarser mesh
    is too coarse: raise ``resolution`` or ``base``).

    Args:
        model, impurities: as for :func:`shibajax.bound_states`.
        base, resolution, gauss: of :func:`fermi_shell_mesh`; the answer uses resolution 2 rho.
        vary_base: also solve on the 3/2 finer base grid (default); False estimates from the resolution alone
            (two solves instead of three).
        **kwargs: passed to :func:`shibajax.bound_states`.
    """
    base_grid = validate_kgrid(base, model.dim)
    if isinstance(base_grid, KMesh):
        raise ShapeError("base must be a grid size (int or tuple), not a KMesh")

    def solve(grid, rho):
        mesh = fermi_shell_mesh(model, base=grid, resolution=rho, gauss=gauss)
        return bound_states(model, impurities, kgrid=mesh, **kwargs)

    fine = solve(base_grid, 2 * resolution)
    others = [solve(base_grid, resolution)]
    if vary_base:
        others.append(solve(tuple(max(n + 1, round(1.5 * n)) for n in base_grid), 2 * resolution))
    errors = np.zeros(fine.energies.shape)
    for other in others:
        if other.multiplicities.tolist() == fine.multiplicities.tolist():
            errors = np.maximum(errors, np.abs(fine.energies - other.energies))
        else:
            errors = np.full(fine.energies.shape, math.inf)
    return fine.with_errors(errors)
