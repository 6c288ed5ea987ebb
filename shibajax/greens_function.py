"""Bare Green's function of a BdG model, summed over the Brillouin zone.

    G0(d, z) = (1/N) sum_k exp(i k.d) [z - H_BdG(k)]^-1 = (1/N) sum_k exp(i k.d) sum_n |n_k><n_k| / (z - E_n(k))

for displacements d = r - r' (integer lattice coordinates) and complex or real energies z. The kernel works
on one chunk of k-points (eigendecomposition once per k, then every energy and displacement by one matrix
product) and ``lax.scan`` runs it over chunks, so memory does not grow with the number of k-points.
Powers p > 1 give (1/N) sum_k e^{ik.d} [z - H(k)]^-p, used for dG0/dE = -G0^2 and for normalising bound states.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from shibajax import _precision  # noqa: F401
from shibajax._checks import check_energies
from shibajax.brillouin_zone import (
    COMPLEX_BYTES,
    ENERGY_BLOCK_BYTES,
    bdg_eigensystem,
    check_chunk_size,
    check_memory,
    chunked_kpoints,
    default_chunk_size,
    kpoint_bytes,
    memory_limit,
    n_points,
    normalisation,
    validate_kgrid,
)
from shibajax.errors import BroadeningError, ShapeError
from shibajax.models.tight_binding import TightBindingModel


def _chunk_green(energies_k, vectors_k, k, weights, z, displacements, max_power):
    """Sum over one chunk of k: returns a tuple of (n_z, n_d, M, M) arrays for powers 1..max_power.

    energies_k (c, M), vectors_k (c, M, M), k (c, dim), weights (c,), z (n_z,), displacements (n_d, dim).
    Written as one matrix product, resolvents (p n_z, c M) @ projectors (c M, n_d M M), where the projector of
    state n at k is exp(i k.d) |n_k><n_k|: it does not depend on z, so every energy and power shares it.
    """
    c, m = energies_k.shape
    n_z, n_d = z.shape[0], displacements.shape[0]
    phase = jnp.exp(1j * (k @ displacements.T)) * weights[:, None]  # (c, n_d)
    projector = jnp.einsum("kd,kan,kbn->kndab", phase, vectors_k, vectors_k.conj()).reshape(c * m, n_d * m * m)
    out = _resolvent_product(energies_k, z, projector, max_power)
    out = out.reshape(max_power, n_z, n_d, m, m)
    return tuple(out[p] for p in range(max_power))


def _resolvent_product(energies_k, z, weighted_outer, max_power):
    """sum_{k n} [z - E_n(k)]^-p X_{kn} for p = 1..max_power: energies_k (c, M), X (c M, F) -> (max_power, n_z, F)."""
    c, m = energies_k.shape
    n_z = z.shape[0]
    resolvent = 1.0 / (z[:, None, None] - energies_k[None])  # (n_z, c, M)
    powers = [resolvent]
    for _ in range(1, max_power):
        powers.append(powers[-1] * resolvent)
    stacked = jnp.concatenate(powers).reshape(max_power * n_z, c * m)
    if jnp.iscomplexobj(stacked):
        out = stacked @ weighted_outer
    else:  # real energies (inside the gap): real resolvents, so two real products instead of one complex one
        f = weighted_outer.shape[1]
        both = stacked @ jnp.concatenate([weighted_outer.real, weighted_outer.imag], axis=1)
        out = jax.lax.complex(both[:, :f], both[:, f:])
    return out.reshape(max_power, n_z, -1)


def _chunk_projected(energies_k, vectors_k, k, weights, z, sites, q, max_power):
    """Channel-space sum over one chunk: Q^dagger G0^p Q for p = 1..max_power, each (n_z, r, r).

    sites (n_s, dim) integer, q (n_s M, r): the channel directions. With b_kn = sum_i Q_i^dagger e^{i k.R_i} |n_k>,
    Q^dagger G0(z) Q = sum_{kn} b_kn b_kn^dagger / (z - E_n(k)). Costs (n_s M r + r^2) per (k, n) instead of
    n_d M^2 for every displacement between sites: the way to go for large clusters with few channels.
    """
    c, m = energies_k.shape
    r = q.shape[1]
    phase = jnp.exp(1j * (k @ sites.T))  # (c, n_s)
    b = jnp.einsum("ks,sar,kan->knr", phase, q.reshape(sites.shape[0], m, r).conj(), vectors_k)
    outer = jnp.einsum("knr,kns,k->knrs", b, b.conj(), weights).reshape(c * m, r * r)
    out = _resolvent_product(energies_k, z, outer, max_power).reshape(max_power, z.shape[0], r, r)
    return tuple(out[p] for p in range(max_power))


def _scan_kernel(kernel, z, xs, eigensystem_of, n_k, zero_shape, max_power):
    """lax.scan of ``kernel(E, U, k, w, z) -> tuple of max_power arrays`` over chunks, divided by n_k."""
    z = jnp.asarray(z, dtype=jnp.complex128 if jnp.iscomplexobj(z) else jnp.float64)
    zero = tuple(jnp.zeros((z.shape[0], *zero_shape), jnp.complex128) for _ in range(max_power))

    def body(acc, x):
        kc, wc, e, u = eigensystem_of(x)
        part = kernel(e, u, kc, wc, z)
        return tuple(a + p for a, p in zip(acc, part, strict=True)), None

    acc, _ = jax.lax.scan(body, zero, xs)
    return tuple(a / n_k for a in acc)


def projected_greens_sum(model, sites, q, z, *, kgrid, chunk_size, max_power=1, eigensystem=None):
    """Q^dagger G0(z)^p Q for p = 1..max_power, each (n_z, r, r), for sites (n_s, dim) and q (n_s M, r).

    From a cached :class:`BZEigensystem` when given, otherwise diagonalising chunk by chunk. Traced, not jitted:
    call it inside a jitted function (as the bound-state search does).
    """
    sites = jnp.asarray(sites, dtype=jnp.float64)
    r = q.shape[1]

    def kernel(e, u, kc, wc, zz):
        return _chunk_projected(e, u, kc, wc, zz, sites, q, max_power)

    if eigensystem is not None:
        return _scan_kernel(kernel, z, tuple(eigensystem), lambda x: x, normalisation(kgrid), (r, r), max_power)
    kpts, weights = chunked_kpoints(kgrid, chunk_size)

    def eigensystem_of(x):
        kc, wc = x
        return (kc, wc, *bdg_eigensystem(model, kc))

    return _scan_kernel(kernel, z, (kpts, weights), eigensystem_of, normalisation(kgrid), (r, r), max_power)


def _scan_green(z, displacements, xs, eigensystem_of, n_k: int, m: int, max_power: int):
    """lax.scan of :func:`_chunk_green` over chunks ``xs``; ``eigensystem_of(x)`` gives (k, w, E, U) of a chunk."""
    disp = jnp.asarray(displacements, dtype=jnp.float64)

    def kernel(e, u, kc, wc, zz):
        return _chunk_green(e, u, kc, wc, zz, disp, max_power)

    return _scan_kernel(kernel, z, xs, eigensystem_of, n_k, (disp.shape[0], m, m), max_power)


@partial(jax.jit, static_argnames=("kgrid", "chunk_size", "max_power"))
def bare_greens_sum(model, displacements, z, *, kgrid, chunk_size, max_power=1):
    """Jitted core of :func:`greens_function`: tuple of (n_z, n_d, M, M) complex128 for powers 1..max_power.

    displacements (n_d, dim) float/int, z (n_z,) complex; kgrid and chunk_size static. H_BdG(k) is
    diagonalised chunk by chunk inside the scan, so memory stays bounded for any number of k-points.
    """
    kpts, weights = chunked_kpoints(kgrid, chunk_size)

    def eigensystem_of(x):
        kc, wc = x
        return (kc, wc, *bdg_eigensystem(model, kc))

    norm = normalisation(kgrid)
    return _scan_green(z, displacements, (kpts, weights), eigensystem_of, norm, model.nambu_dim, max_power)


class BZEigensystem(NamedTuple):
    """Eigensystem of H_BdG on a whole grid, in chunks: k (n_c, c, dim), weights (n_c, c), energies (n_c, c, M),
    vectors (n_c, c, M, M). Worth keeping when many G0 evaluations follow on a grid that fits in memory."""

    k: jax.Array
    weights: jax.Array
    energies: jax.Array
    vectors: jax.Array


def bz_eigensystem(model: TightBindingModel, kgrid, chunk_size: int) -> BZEigensystem:
    """Diagonalise H_BdG(k) on the grid once (chunk by chunk, with lax.map)."""
    kpts, weights = chunked_kpoints(kgrid, chunk_size)
    energies, vectors = jax.lax.map(partial(bdg_eigensystem, model), kpts)
    return BZEigensystem(kpts, weights, energies, vectors)


def greens_sum_from_eigensystem(eig: BZEigensystem, displacements, z, *, n_k: float, max_power: int = 1):
    """Same as :func:`bare_greens_sum` from a precomputed :class:`BZEigensystem` (no diagonalisation)."""
    return _scan_green(z, displacements, tuple(eig), lambda x: x, n_k, eig.vectors.shape[-1], max_power)


def green_chunk_size(model: TightBindingModel, kgrid, n_z: int, n_d: int, max_power: int = 1) -> int:
    """Default k-chunk for a G0 sum over n_z energies and n_d displacements (bounded memory)."""
    return default_chunk_size(n_points(kgrid), chunk_elements_per_k(model.nambu_dim, n_z, n_d, max_power))


def chunk_elements_per_k(m: int, n_z: int, n_d: int, max_power: int = 1) -> int:
    """Complex elements per k-point of the chunk kernel's intermediates (projectors and resolvents)."""
    return m * (m * m * n_d + max_power * n_z + m)


def green_sum_bytes(m: int, kgrid, dim: int, chunk_size: int, n_z: int, n_d: int, max_power: int = 1) -> int:
    """Peak bytes of one :func:`bare_greens_sum` over n_z energies and n_d displacements: the k-points, one chunk's
    intermediates (projectors and resolvents, with a copy, and the eigenvectors) and the sums (a chunk's product,
    the accumulator and the result, each max_power n_z n_d M^2 complex numbers)."""
    per_k = 2 * chunk_elements_per_k(m, n_z, n_d, max_power) + 3 * m * m
    sums = 3 * max_power * n_z * n_d * m * m
    return kpoint_bytes(n_points(kgrid), dim) + COMPLEX_BYTES * (int(chunk_size) * per_k + sums)


class EnergyBlocks(NamedTuple):
    """How a Green's-function sum over many energies is run: ``size`` energies per block (each block its own
    k-sum), ``chunk_size`` k-points per chunk of a block's sum."""

    size: int
    chunk_size: int


def plan_energy_blocks(
    model: TightBindingModel,
    kgrid,
    n_z: int,
    n_d: int,
    *,
    what: str,
    chunk_size: int | None = None,
    per_energy: int = 0,
    outputs: int = 0,
    max_power: int = 1,
) -> EnergyBlocks:
    """Energies per block so that a sum of G0 over n_z energies and n_d displacements fits in memory.

    One block holds all energies when the whole calculation fits in :func:`~shibajax.brillouin_zone.memory_limit`
    and its energy-dependent intermediates in ``ENERGY_BLOCK_BYTES`` (1 GiB); otherwise the energies are summed in
    blocks (the results are the same: every energy has its own k-sum). Checked before anything is allocated.

    Args:
        model, kgrid: the host and its grid. n_z, n_d: energies and displacements of the sum.
        what: the calculation, for the error message (e.g. "ldos at 40 positions and 5000 energies").
        chunk_size: k-points per chunk when given by the caller (else from the memory budget, per block).
        per_energy: bytes per energy of the caller's own intermediates beyond G0 (T-matrix products, outputs).
        outputs: bytes of results kept over all energies while the blocks run (the concatenated result).
        max_power: powers of G0 summed.

    Raises:
        MemoryLimitError: even one energy per block does not fit (the estimate, the limit and what to reduce).
    """
    m = model.nambu_dim
    chunk_size = check_chunk_size(chunk_size)

    def chunk(size):
        return int(chunk_size) if chunk_size is not None else green_chunk_size(model, kgrid, size, n_d, max_power)

    def total(size, blocked):
        sums = green_sum_bytes(m, kgrid, model.dim, chunk(size), size, n_d, max_power)
        return sums + size * per_energy + (2 if blocked else 1) * outputs  # blocks: parts and their concatenation

    per_e = per_energy + 3 * max_power * n_d * m * m * COMPLEX_BYTES  # one energy's intermediates
    limit, _ = memory_limit()
    if n_z * per_e <= ENERGY_BLOCK_BYTES and total(n_z, False) <= limit:
        return EnergyBlocks(n_z, chunk(n_z))
    size = int(max(1, min(n_z, ENERGY_BLOCK_BYTES // per_e)))
    while size > 1 and total(size, size < n_z) > limit:
        size = max(1, size // 2)
    check_memory(
        total(size, size < n_z),
        f"{what} ({n_z} energies, {n_d} displacements, M = {m}, {n_points(kgrid):.3g} k-points"
        f"{'' if chunk_size is None else f', chunk_size = {chunk_size}'}; summed {size} energies at a time)",
        "Use fewer energies, positions or impurity sites, a smaller k-grid, or a smaller chunk_size",
    )
    return EnergyBlocks(size, chunk(size))


def in_energy_blocks(fn, z: jax.Array, size: int):
    """fn(z_block) for blocks of ``size`` energies, concatenated along the first axis of every output (a tuple of
    arrays or one array). The last block is padded with its last energy, so ``fn`` compiles once."""
    n_z = z.shape[0]
    if size >= n_z:
        return fn(z)
    parts = []
    for start in range(0, n_z, size):
        block = z[start : start + size]
        n = block.shape[0]
        if n < size:
            block = jnp.concatenate([block, jnp.broadcast_to(block[-1:], (size - n,))])
        out = fn(block)
        parts.append(jax.tree_util.tree_map(lambda x, n=n: x[:n], out))
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *parts)


def validate_eta(eta, hint: str = "") -> float:
    """Return eta as a positive float or raise BroadeningError (``hint`` is appended to the message)."""
    try:
        value = float(eta)
    except (TypeError, ValueError) as err:
        raise BroadeningError(f"eta = {eta!r} must be a positive number (energy units){hint}") from err
    if not np.isfinite(value) or value <= 0.0:
        raise BroadeningError(f"eta = {eta!r}: the broadening must be eta > 0 (z = E + i eta){hint}")
    return value


def validate_displacements(displacements, dim: int, what: str = "displacements") -> np.ndarray:
    """Return integer lattice vectors as an (n, dim) int array, or raise ShapeError."""
    arr = np.asarray(displacements)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ShapeError(f"{what} must have shape (n, {dim}) (integer lattice coordinates); got {arr.shape}")
    if not np.all(np.isfinite(arr)) or not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ShapeError(f"{what} must be integer lattice coordinates (sites of the lattice); got {arr.tolist()}")
    return arr.astype(np.int64)


def complex_energies(energies, eta) -> jax.Array:
    """z = E + i eta (eta > 0 checked), shape (n_E,) complex128, or real E (eta=None), float64."""
    check_energies(energies)  # non-empty, 1-D, finite and real (concrete values; tracers pass)
    e = jnp.atleast_1d(jnp.asarray(energies, dtype=jnp.float64))
    if e.ndim != 1:
        raise ShapeError(f"energies must be a scalar or a 1D array; got shape {e.shape}")
    if eta is None:
        return e  # real: the kernel then uses real resolvents
    return e + 1j * validate_eta(eta, ". For real energies inside the gap pass eta=None")


def greens_function(
    model: TightBindingModel,
    displacements,
    energies,
    *,
    eta: float | None = None,
    kgrid,
    chunk_size: int | None = None,
) -> jax.Array:
    """Bare BdG Green's function G0(d, E + i eta) on a Gamma-centred grid.

    Args:
        model: BdG model.
        displacements: (n_d, dim) integer lattice vectors d = r - r' (or one vector).
        energies: (n_E,) energies (energy units).
        eta: broadening > 0 for the retarded function; None for real energies (meant for |E| inside the gap).
        kgrid: grid size per dimension, e.g. (64, 64).
        chunk_size: k-points per chunk (default: from a 64 MiB budget).

    Returns:
        (n_E, n_d, 4 n_orb, 4 n_orb) complex128 in the Nambu basis of docs/conventions.md. Long energy grids are
        summed in blocks of energies (:func:`plan_energy_blocks`), with the same result.

    Raises:
        MemoryLimitError: the grid, or the result with one block of energies, does not fit in memory.

    Example:
        >>> import shibajax
        >>> m = shibajax.models.square(mu=-1.0, delta=0.3)
        >>> shibajax.greens_function(m, [(0, 0)], [0.0], kgrid=(8, 8)).shape
        (1, 1, 4, 4)
    """
    kgrid = validate_kgrid(kgrid, model.dim)
    disp = validate_displacements(displacements, model.dim)
    z = complex_energies(energies, eta)
    n_z, n_d, m = z.shape[0], disp.shape[0], model.nambu_dim
    plan = plan_energy_blocks(
        model, kgrid, n_z, n_d, what="greens_function", chunk_size=chunk_size,
        outputs=n_z * n_d * m * m * COMPLEX_BYTES,
    )  # fmt: skip
    return in_energy_blocks(
        lambda zb: bare_greens_sum(model, disp, zb, kgrid=kgrid, chunk_size=plan.chunk_size)[0], z, plan.size
    )
