"""Brillouin-zone grids and chunked sums over k.

Grids are Gamma-centred Monkhorst-Pack grids in reduced coordinates, k_i = 2 pi n_i / L_i with
n_i = 0 .. L_i - 1 (docs/conventions.md). On an L x L grid the BZ sum is exact for an L x L periodic
lattice, which is what makes T-matrix energies equal exact diagonalisation of that lattice.

Sums over k are written for one chunk of k-points and run with ``lax.scan`` over chunks, so memory is
bounded by the chunk size (padding points carry weight 0), whatever the number of k-points.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from shibajax import _precision  # noqa: F401
from shibajax.errors import ShapeError
from shibajax.models.tight_binding import TightBindingModel, bdg_hamiltonian

#: Default memory budget of one chunk's largest intermediate, in complex128 elements (2**22 = 64 MiB).
CHUNK_BUDGET_ELEMENTS = 2**22


class KMesh:
    """An explicit set of k-points with quadrature weights: a non-uniform Brillouin-zone integration rule.

    Every function that takes ``kgrid`` also takes a KMesh; BZ sums then read
    (1/N) sum_k f(k) -> sum_k w_k f(k). Built, for instance, by :func:`shibajax.fermi_shell.fermi_shell_mesh`
    (adaptive refinement near the Fermi surface). Compared and hashed by identity (it is a static argument of
    compiled functions: a new mesh compiles anew, the same mesh reuses the compiled code).

    Args:
        points: (n_k, dim) reduced coordinates (k_i in [0, 2 pi), docs/conventions.md).
        weights: (n_k,) positive weights summing to 1 (the BZ average of a constant is 1).
        description: a label (shown in results).
    """

    __slots__ = ("description", "points", "weights")

    def __init__(self, points, weights, description: str = "custom k-mesh"):
        pts = np.asarray(points, dtype=np.float64)
        w = np.asarray(weights, dtype=np.float64)
        if pts.ndim != 2 or w.shape != (pts.shape[0],) or pts.shape[0] == 0:
            raise ShapeError(f"KMesh needs points (n_k, dim) and weights (n_k,); got {pts.shape} and {w.shape}")
        if not (np.all(np.isfinite(pts)) and np.all(np.isfinite(w)) and np.all(w >= 0)):
            raise ShapeError("KMesh points and weights must be finite and the weights >= 0")
        if abs(w.sum() - 1.0) > 1e-10:
            raise ShapeError(f"KMesh weights must sum to 1 (a BZ average); they sum to {w.sum():.12g}")
        self.points, self.weights, self.description = pts, w, description

    @property
    def dim(self) -> int:
        return self.points.shape[1]

    def __len__(self) -> int:
        return self.points.shape[0]

    def __repr__(self) -> str:
        return f"KMesh({len(self)} points, dim={self.dim}: {self.description})"


def n_points(kgrid) -> int:
    """Number of k-points of a grid tuple or a :class:`KMesh`."""
    return len(kgrid) if isinstance(kgrid, KMesh) else math.prod(kgrid)


def normalisation(kgrid) -> float:
    """What a weighted BZ sum is divided by: N for a uniform grid (weights 1), 1 for a KMesh (weights sum to 1)."""
    return 1.0 if isinstance(kgrid, KMesh) else float(math.prod(kgrid))


def describe_kgrid(kgrid) -> str | list[int]:
    """JSON-ready description: the grid as a list, or the mesh's label and size."""
    return f"{kgrid.description} ({len(kgrid)} points)" if isinstance(kgrid, KMesh) else list(kgrid)


def validate_kgrid(kgrid, dim: int) -> tuple[int, ...] | KMesh:
    """Return kgrid as a tuple of positive ints of length dim (or a KMesh of that dimension), or raise ShapeError."""
    if isinstance(kgrid, KMesh):
        if kgrid.dim != dim:
            raise ShapeError(f"the k-mesh is {kgrid.dim}D but the lattice is {dim}D")
        return kgrid
    if isinstance(kgrid, int | np.integer):
        kgrid = (int(kgrid),) * dim
    try:
        out = tuple(int(v) for v in kgrid)
    except TypeError as err:
        raise ShapeError(f"kgrid {kgrid!r} must be a tuple of {dim} positive integers, e.g. (48, 48)") from err
    if len(out) != dim or any(v < 1 for v in out) or any(int(v) != v for v in kgrid):
        raise ShapeError(f"kgrid {kgrid!r} must be a tuple of {dim} positive integers, e.g. (48,) * {dim}")
    return out


def monkhorst_pack(kgrid: tuple[int, ...]) -> jax.Array:
    """All k-points of a Gamma-centred grid, (prod(kgrid), dim), reduced coordinates in [0, 2 pi)."""
    axes = [2.0 * jnp.pi * jnp.arange(n) / n for n in kgrid]
    mesh = jnp.meshgrid(*axes, indexing="ij")
    return jnp.stack([m.ravel() for m in mesh], axis=-1)


def default_chunk_size(n_k: int, elements_per_k: int, budget: int = CHUNK_BUDGET_ELEMENTS) -> int:
    """k-points per chunk so that a chunk's intermediates stay below ``budget`` complex elements."""
    return int(max(1, min(n_k, budget // max(1, elements_per_k))))


def chunked_kpoints(kgrid, chunk_size: int) -> tuple[jax.Array, jax.Array]:
    """Grid split into chunks: k (n_chunks, chunk_size, dim) and weights (n_chunks, chunk_size): 1 (or the
    KMesh's weights) on real points, 0 on padding."""
    if isinstance(kgrid, KMesh):
        k, w = jnp.asarray(kgrid.points), jnp.asarray(kgrid.weights)
    else:
        k = monkhorst_pack(kgrid)
        w = jnp.ones(k.shape[0])
    n_k = k.shape[0]
    n_chunks = math.ceil(n_k / chunk_size)
    pad = n_chunks * chunk_size - n_k
    k = jnp.concatenate([k, jnp.zeros((pad, k.shape[1]))]) if pad else k
    w = jnp.concatenate([w, jnp.zeros(pad)])
    return k.reshape(n_chunks, chunk_size, -1), w.reshape(n_chunks, chunk_size)


def bdg_eigensystem(model: TightBindingModel, k: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigenvalues (..., M) and eigenvectors (..., M, M) of H_BdG at k-points (..., dim)."""
    h = jnp.vectorize(partial(bdg_hamiltonian, model), signature="(d)->(m,m)")(k)
    return jnp.linalg.eigh(h)


@partial(jax.jit, static_argnames=("kgrid", "chunk_size"))
def _gap_edge(model, kgrid, chunk_size):
    kpts, weights = chunked_kpoints(kgrid, chunk_size)

    def body(current, xs):
        kc, _ = xs  # padding points are real grid points (k = 0), harmless for a minimum
        h = jax.vmap(partial(bdg_hamiltonian, model))(kc)
        return jnp.minimum(current, jnp.min(jnp.abs(jnp.linalg.eigvalsh(h)))), None

    out, _ = jax.lax.scan(body, jnp.asarray(jnp.inf), (kpts, weights))
    return out


def gap_edge(model: TightBindingModel, kgrid, chunk_size: int | None = None) -> jax.Array:
    """Smallest quasiparticle energy min_k min_n |E_n(k)| on the grid (the gap edge that grid sees).

    Args:
        model: BdG model.
        kgrid: grid size per dimension.
        chunk_size: k-points per chunk (default from the memory budget).

    Returns:
        Scalar float64 (energy units).
    """
    kgrid = validate_kgrid(kgrid, model.dim)
    n_k = n_points(kgrid)
    if chunk_size is None:
        chunk_size = default_chunk_size(n_k, 4 * model.nambu_dim**2)
    return _gap_edge(model, kgrid, int(chunk_size))
