"""Batched dense linear algebra that cannot deadlock XLA's CPU thread pool.

Why this module exists. jaxlib 0.10's CPU LAPACK kernels (``eigh``, ``solve``/``getrf``, ``cholesky``, ``svd``,
...) split a *batched* call into sub-tasks, schedule them on XLA's intra-op thread pool and block the calling
pool thread until they finish (``jax::ParallelBatchMap`` -> ``BlockingCounter::Wait``). When as many such calls run
at once as the pool has threads -- e.g. a sweep sharded over 4 simulated CPU devices
(``--xla_force_host_platform_device_count=4``), each device executing a batched ``eigh`` -- every pool thread
waits for sub-tasks queued behind it and nothing runs again: the process sits in futex waits forever, with no
CPU use. (Native stacks of the hung ``shibajax sweep``: all ``tf_XLAEigen`` workers in
``lapack_zheevd_ffi -> ParallelBatchMap -> BlockingCounter::Wait``; ``OPENBLAS_NUM_THREADS=1`` does not help,
because OpenBLAS is not the one waiting.) Later jaxlib releases compile that parallel path out; 0.10.2 is the
newest one the package index serves here.

The fix at the root is to never hand a batch to a CPU LAPACK kernel: on the CPU platform the functions below
map over the batch (``jax.lax.map``), so every LAPACK call factorises one matrix and runs inline on its thread;
on GPU/TPU they are the plain batched ``jnp.linalg`` calls (cuSOLVER batches are fine). The choice is made when
the program is lowered for a platform (``jax.lax.platform_dependent``), so one traced function runs unchanged
on either. Rule for callers: hand these functions the batch as explicit leading dimensions (build the matrices with
``vmap``, then call ``eigh`` once on the stack), never by ``vmap``-ing a function that calls them on one matrix:
under an outer ``jax.vmap`` the mapped loop becomes a loop of vmap-sized batched LAPACK calls again. The library's
own batch paths on CPU (sweeps, multistart fits) use ``jax.lax.map`` over points for the same reason, and
``tests/test_cpu_threading.py`` checks that their compiled programs contain no batched LAPACK call.

Every function takes arrays with any number of leading batch dimensions, like its ``jnp.linalg`` namesake, and is
differentiable (the map is a ``scan``, which JAX differentiates in both modes).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def _per_matrix(fn: Callable, *arrays: jax.Array, core_ndims: tuple[int, ...]):
    """``fn`` applied to arrays with shared leading batch dims; ``core_ndims``: trailing dims of one problem."""
    batch_shape = arrays[0].shape[: arrays[0].ndim - core_ndims[0]]
    if not batch_shape:
        return fn(*arrays)

    def batched(*xs):
        return fn(*xs)

    def mapped(*xs):
        flat = [x.reshape((-1,) + x.shape[x.ndim - n :]) for x, n in zip(xs, core_ndims, strict=True)]
        out = jax.lax.map(lambda args: fn(*args), tuple(flat))
        return jax.tree.map(lambda o: o.reshape(batch_shape + o.shape[1:]), out)

    return jax.lax.platform_dependent(*arrays, cpu=mapped, default=batched)


def eigh(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigenvalues (ascending) and eigenvectors of Hermitian ``a`` (..., n, n), as ``jnp.linalg.eigh``."""
    return _per_matrix(jnp.linalg.eigh, a, core_ndims=(2,))


def eigvalsh(a: jax.Array) -> jax.Array:
    """Eigenvalues (ascending) of Hermitian ``a`` (..., n, n) -> (..., n), as ``jnp.linalg.eigvalsh``."""
    return _per_matrix(jnp.linalg.eigvalsh, a, core_ndims=(2,))


def solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a^-1 b`` for ``a`` (..., n, n) and ``b`` (..., n, m) or a vector right-hand side ``b`` (..., n)."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    if b.ndim == a.ndim - 1:
        return solve(a, b[..., None])[..., 0]
    batch = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = jnp.broadcast_to(a, batch + a.shape[-2:])
    b = jnp.broadcast_to(b, batch + b.shape[-2:])
    return _per_matrix(jnp.linalg.solve, a, b, core_ndims=(2, 2))


def inv(a: jax.Array) -> jax.Array:
    """Inverse of ``a`` (..., n, n), as ``jnp.linalg.inv``."""
    return _per_matrix(jnp.linalg.inv, a, core_ndims=(2,))


def cholesky(a: jax.Array) -> jax.Array:
    """Lower Cholesky factor of positive-definite ``a`` (..., n, n), as ``jnp.linalg.cholesky``."""
    return _per_matrix(jnp.linalg.cholesky, a, core_ndims=(2,))


def svd(a: jax.Array, full_matrices: bool = True, compute_uv: bool = True):
    """Singular value decomposition of ``a`` (..., m, n), as ``jnp.linalg.svd``."""

    def one(x):
        return jnp.linalg.svd(x, full_matrices=full_matrices, compute_uv=compute_uv)

    return _per_matrix(one, a, core_ndims=(2,))


#: T-matrices of fits (``fitting.spectrum.t_matrix_trace``) are inverted by :func:`small_inv` up to this size R of the
#: impurity space (one channel on one site: R = 4; five d channels: R = 20), above it by LAPACK (:func:`inv`).
SMALL_R = 24


def small_inv(a: jax.Array) -> jax.Array:
    """Inverse of a (..., n, n) by Gauss-Jordan elimination with partial pivoting, unrolled over the n columns.

    Plain array operations, no LAPACK call: vectorised over the leading dimensions (the energies of a spectrum)
    where ``_linalg.inv`` on CPU maps one LAPACK call per matrix (0.2 against 0.8 ms for 401 4 x 4 matrices), and
    safe under ``vmap`` on every platform. For the small, well-conditioned 1 - V G0 of a fit (n <= :data:`SMALL_R`);
    agrees with ``jnp.linalg.inv`` to rounding (tests/test_fit_grid.py).

    Example (a zero first pivot: rows swapped):
        >>> import jax.numpy as jnp
        >>> from shibajax._linalg import small_inv
        >>> small_inv(jnp.array([[0.0, 2.0], [1.0, 1.0]])).round(12).tolist()
        [[-0.5, 1.0], [0.5, 0.0]]
    """
    n = a.shape[-1]
    m = jnp.concatenate([a, jnp.broadcast_to(jnp.eye(n, dtype=a.dtype), a.shape)], axis=-1)
    rows = jnp.arange(n)
    for k in range(n):
        p = jnp.argmax(jnp.abs(m[..., k:, k]), axis=-1) + k  # (...,) pivot row
        swap = jnp.where(rows == k, p[..., None], jnp.where(rows == p[..., None], k, rows))
        m = jnp.take_along_axis(m, swap[..., None], axis=-2)
        pivot = m[..., k : k + 1, :] / m[..., k : k + 1, k : k + 1]
        m = m - m[..., :, k : k + 1] * pivot
        m = m.at[..., k : k + 1, :].set(pivot)
    return m[..., n:]


def fit_inv(a: jax.Array) -> jax.Array:
    """(..., n, n) inverse for the T-matrices of fits: :func:`small_inv` up to n = SMALL_R, else :func:`inv`."""
    return small_inv(a) if a.shape[-1] <= SMALL_R else inv(a)
