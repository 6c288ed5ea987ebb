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

from shibajax import _precision, ray_mesh  # noqa: F401
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

#: Bytes of the two operands of one sub-chunk's GEMM on CPU (the resolvent rows and the projectors). Each chunk of
#: the scan is summed in sub-chunks of this size: they stay in the cache between being written and being multiplied,
#: and under glibc's 32 MiB mmap threshold, above which every new buffer is page-faulted in again (measured on the
#: 2-core development machine, benchmarks/bench_kernel.py, best of 5: the five-orbital LDOS on 24 x 24 k-points,
#: chunks of 142, in sub-chunks of 2 / 8 / 32 MiB or whole: 0.42 / 0.32 / 0.39 / 0.41 s; its bound-state bracket
#: 0.071 / 0.063 / 0.073 / 0.071 s). On GPU the chunk is multiplied whole (large GEMMs are what a GPU needs).
CPU_SUB_CHUNK_BYTES = 8 * 2**20


class _Kernel(NamedTuple):
    """A chunk's contribution as one real GEMM, ``rows(E, k, w, z) @ columns(U, k, w)``, and how to read the sum.

    rows: (R, c M) float64 (resolvents, and in one route the phases); columns: (c M, F) float64 (projectors);
    ``per_k``: float64 elements of the two operands per k-point (sets the CPU sub-chunk); ``finish(sum)``: the
    summed (R, F) product -> tuple of max_power complex arrays (n_z, ...); ``route``: "A" or "B" (G0), "channels";
    ``shape``: (R, F).
    """

    rows: object
    columns: object
    per_k: int
    finish: object
    route: str
    shape: tuple[int, int]

    def raw(self, e, u, kc, wc, z):
        return self.rows(e, kc, wc, z) @ self.columns(u, kc, wc)


def _resolvent_powers(energies_k, z, max_power, weights=None):
    """w_k [z - E_n(k)]^-p for p = 1..max_power: (max_power n_z, c, M), complex for complex z, real for real z.

    Complex z = x + i y: 1/(x - E + i y) = (x - E - i y) / ((x - E)^2 + y^2) in real arithmetic (vectorised; XLA's
    complex division is 5-7x slower on CPU). Exact to rounding while |z - E| lies within 1e-150..1e150.
    """
    if jnp.iscomplexobj(z):
        a = z.real[:, None, None] - energies_k[None]  # (n_z, c, M)
        inv = 1.0 / (a * a + (z.imag * z.imag)[:, None, None])
        resolvent = jax.lax.complex(a * inv, -z.imag[:, None, None] * inv)
    else:
        resolvent = 1.0 / (z[:, None, None] - energies_k[None])
    powers = [resolvent]
    for _ in range(1, max_power):
        powers.append(powers[-1] * resolvent)
    stacked = jnp.concatenate(powers)
    return stacked if weights is None else stacked * weights[None, :, None]


def _resolvent_rows(energies_k, z, max_power, weights=None):
    """The resolvent powers as a real (rows, c M) matrix: rows (p, z) for real z, ([Re, Im], p, z) for complex z."""
    c, m = energies_k.shape
    stacked = _resolvent_powers(energies_k, z, max_power, weights).reshape(-1, c * m)
    if jnp.iscomplexobj(stacked):
        return jnp.concatenate([stacked.real, stacked.imag])
    return stacked


# Route A, the phase in the projector: resolvents (p n_z, c M) @ projectors w_k e^{ik.d} |n><n| (c M, n_d M M),
# with the projectors as [Re | Im] (c M, 2 n_d M M). Its operands hold 2 n_d M^3 + (1 or 2) p n_z M reals per k.


def _complex_product(both, z_complex: bool):
    """R X from the real product ``both`` = rows @ [Re X | Im X] (:func:`_resolvent_rows`): (p n_z, F) complex.

    Real rows: R X = both[:, :F] + i both[:, F:]. Complex rows [Re R; Im R]:
    Re RX = Re R Re X - Im R Im X and Im RX = Re R Im X + Im R Re X, four blocks of ``both``.
    """
    f = both.shape[1] // 2
    if not z_complex:
        return jax.lax.complex(both[:, :f], both[:, f:])
    r = both.shape[0] // 2
    return jax.lax.complex(both[:r, :f] - both[r:, f:], both[:r, f:] + both[r:, :f])


def _resolvent_product(energies_k, z, projector, max_power):
    """sum_{k n} [z - E_n(k)]^-p X_{kn} for p = 1..max_power: energies_k (c, M) and X given as the real
    (c M, 2F) matrix [Re X | Im X] -> (max_power, n_z, F) complex.

    One real GEMM in both cases (CPU GEMMs of float64 run about twice as fast as complex128 ones, at the same
    8 flops per complex multiply-add): real resolvents R (real energies, inside the gap) give R @ [Re X | Im X];
    complex ones stack [Re R; Im R] as rows, and Re, Im of R X are combined from the four blocks.
    """
    both = _resolvent_rows(energies_k, z, max_power) @ projector
    return _complex_product(both, jnp.iscomplexobj(z)).reshape(max_power, z.shape[0], -1)


def _outer_columns(left_re, left_im, right_re, right_im):
    """Rows (k, n) of w |l><r| as the real matrix [Re | Im]: left (c, n, ..., A), right (c, n, B) ->
    (c n, 2 ... A B), columns (part, ..., a, b), with |l><r|_ab = l_a conj(r_b)."""
    shape = left_re.shape
    br = right_re.reshape(shape[:2] + (1,) * (len(shape) - 3) + (1, right_re.shape[-1]))
    bi = right_im.reshape(br.shape)
    re = left_re[..., None] * br + left_im[..., None] * bi
    im = left_im[..., None] * br - left_re[..., None] * bi
    return jnp.stack([re, im], axis=2).reshape(shape[0] * shape[1], -1)


def _phase_rotation(k, weights, displacements):
    """w_k [[cos, -sin], [sin, cos]](k.d) as (c, 2, n_d, 2): multiplies (Re x, Im x) into Re, Im of w e^{ik.d} x.

    Assembled by a small product with a constant (2 n_d, 4 n_d) sign matrix, so that XLA stores it: built by
    broadcasting, it is fused into its consumers and the sines and cosines are recomputed for every element."""
    n_d = displacements.shape[0]
    angle = k @ displacements.T  # (c, n_d)
    trig = jnp.concatenate([jnp.cos(angle), jnp.sin(angle)], axis=1) * weights[:, None]  # (c, 2 n_d)
    signs = np.zeros((2, n_d, 2, n_d, 2))  # (cos | sin, d) -> (part, d, j)
    for d in range(n_d):
        signs[0, d, 0, d, 0] = signs[0, d, 1, d, 1] = 1.0  # cos on the diagonal
        signs[1, d, 0, d, 1], signs[1, d, 1, d, 0] = -1.0, 1.0  # -sin, +sin off it
    return (trig @ signs.reshape(2 * n_d, 4 * n_d)).reshape(-1, 2, n_d, 2)


def _green_projector(vectors_k, k, weights, displacements):
    """Projectors w_k exp(i k.d) |n_k><n_k| of one chunk, rows (k, n) and columns (d, a, b), as the real
    (c M, 2 n_d M M) matrix [Re | Im].

    Real arithmetic throughout. The left factor w_k exp(i k.d) <a|n_k> is one small batched product
    (c, 2 n_d, 2) @ (c, 2, M M), so it is computed once and stored: written as a broadcast, XLA fuses it into the
    outer product and recomputes the sines and cosines for every element. The outer product with conj<b|n_k> is
    then one fused elementwise pass that writes each element once (an einsum with no contracted index lowers to
    a slow batched outer product on CPU).
    """
    rows = jnp.swapaxes(vectors_k, 1, 2)  # (c, n, a): row n is <a|n_k>
    parts = jnp.stack([rows.real, rows.imag], 1)  # (c, 2, n, a)
    left = jnp.einsum("kpdj,kjna->kpnda", _phase_rotation(k, weights, displacements), parts)  # (c, 2, n, n_d, a)
    return _outer_columns(left[:, 0], left[:, 1], rows.real, rows.imag)


# Route B, the phase in the resolvents: rows w_k e^{ik.d} [z - E_n(k)]^-p as [Re; Im] (2 n_d p n_z, c M) @ the
# Hermitian |n><n| packed into M^2 reals (Re on a <= b, Im on a > b) (c M, M^2). Half the flops of route A for
# complex z (the same for real z), and operands of 2 n_d p n_z M + M^3 reals per k.


def _upper(a: int) -> np.ndarray:
    """(a, a) mask of the upper triangle with the diagonal, a <= b."""
    return np.triu(np.ones((a, a), bool))


def _hermitian_packed(v_re, v_im):
    """Rows (k, n) of the Hermitian |v><v| (c, n, A) -> (c n, A^2) real, packed: Re v_a conj(v_b) for a <= b (it is
    symmetric) and Im v_a conj(v_b) for a > b (antisymmetric); one fused elementwise pass."""
    a = v_re.shape[-1]
    re = v_re[..., :, None] * v_re[..., None, :] + v_im[..., :, None] * v_im[..., None, :]
    im = v_im[..., :, None] * v_re[..., None, :] - v_re[..., :, None] * v_im[..., None, :]
    return jnp.where(_upper(a), re, im).reshape(-1, a * a)


def _unpack_hermitian(s, a: int):
    """sum w Q (..., A, A) complex from s = [Re w; Im w] @ packed Q (:func:`_hermitian_packed`), (2, ..., A^2) real.

    With X = sum Re w Re Q, U = sum Im w Re Q (symmetric, read on a <= b) and Y = sum Re w Im Q,
    V = sum Im w Im Q (antisymmetric, read on a > b): sum w Q = (X - V) + i (U + Y).
    """
    s = s.reshape(*s.shape[:-1], a, a)
    upper, strict_lower = _upper(a), ~_upper(a)
    swapped = jnp.swapaxes(s, -1, -2)
    sym = jnp.where(upper, s, swapped)  # (X, U)
    anti = jnp.where(strict_lower, s, jnp.where(upper & ~np.eye(a, dtype=bool), -swapped, 0.0))  # (Y, V)
    return jax.lax.complex(sym[0] - anti[1], sym[1] + anti[0])


def _phase_rows(energies_k, k, weights, z, displacements, max_power):
    """Rows of route B: Re and Im of w_k e^{ik.d} [z - E_n(k)]^-p, (2 n_d p n_z, c M), rows ([Re, Im], d, p, z).
    One fused elementwise pass over the stored phase rotation (:func:`_phase_rotation`)."""
    c, m = energies_k.shape
    powers = _resolvent_powers(energies_k, z, max_power)  # (p n_z, c, M)
    rot = jnp.moveaxis(_phase_rotation(k, weights, displacements), 0, 2)[:, :, None, :, None]  # (2, n_d, 1, c, 1, 2)
    rows = rot[..., 0] * powers.real
    if jnp.iscomplexobj(powers):
        rows = rows + rot[..., 1] * powers.imag
    return rows.reshape(-1, c * m)


def _green_kernel(displacements, m: int, n_z: int, z_complex: bool, max_power: int) -> _Kernel:
    """:class:`_Kernel` of G0 at ``displacements``: finish gives max_power arrays (n_z, n_d, M, M).

    The route whose GEMM operands are smaller (static shapes): B (phases in the rows, packed projectors) when the
    energies are few compared with M^2, as in a bound-state search or the LDOS of a five-orbital host; A (phases
    in the projectors) for many energies on a small M.
    """
    n_d = displacements.shape[0]
    rows_a = (2 if z_complex else 1) * max_power * n_z
    per_k_a = m * (rows_a + 2 * n_d * m * m)
    per_k_b = m * (2 * n_d * max_power * n_z + m * m)
    if per_k_b <= per_k_a:

        def finish(total):
            out = _unpack_hermitian(total.reshape(2, n_d, max_power, n_z, m * m), m)  # (n_d, p, n_z, M, M)
            return tuple(out[:, p].swapaxes(0, 1) for p in range(max_power))

        return _Kernel(
            lambda e, kc, wc, z: _phase_rows(e, kc, wc, z, displacements, max_power),
            lambda u, kc, wc: _hermitian_packed(jnp.swapaxes(u, 1, 2).real, jnp.swapaxes(u, 1, 2).imag),
            per_k_b,
            finish,
            "B",
            (2 * n_d * max_power * n_z, m * m),
        )

    def finish(total):
        out = _complex_product(total, z_complex).reshape(max_power, n_z, n_d, m, m)
        return tuple(out[p] for p in range(max_power))

    return _Kernel(
        lambda e, kc, wc, z: _resolvent_rows(e, z, max_power),
        lambda u, kc, wc: _green_projector(u, kc, wc, displacements),
        per_k_a,
        finish,
        "A",
        (rows_a, 2 * n_d * m * m),
    )


def _chunk_green(energies_k, vectors_k, k, weights, z, displacements, max_power):
    """Sum over one chunk of k: returns a tuple of (n_z, n_d, M, M) arrays for powers 1..max_power.

    energies_k (c, M), vectors_k (c, M, M), k (c, dim), weights (c,), z (n_z,), displacements (n_d, dim).
    One real matrix product (:func:`_green_kernel`): resolvents times projectors |n_k><n_k|, with the phases
    exp(i k.d) on whichever side is smaller; the projectors do not depend on z, so every energy and power shares
    them.
    """
    kernel = _green_kernel(displacements, energies_k.shape[1], z.shape[0], jnp.iscomplexobj(z), max_power)
    return kernel.finish(kernel.raw(energies_k, vectors_k, k, weights, z))


def _rows_weighted(e, kc, wc, z, max_power):
    return _resolvent_rows(e, z, max_power, wc)


def _projected_kernel(sites, q, m: int, n_z: int, z_complex: bool, max_power: int) -> _Kernel:
    """:class:`_Kernel` of Q^dagger G0^p Q: finish gives max_power arrays (n_z, r, r).

    Rows w_k [z - E_n(k)]^-p ([Re; Im] for complex z), columns b_kn b_kn^dagger packed (Hermitian: r^2 reals)."""
    r = q.shape[1]
    rows = (2 if z_complex else 1) * max_power * n_z
    q_sites = q.reshape(sites.shape[0], m, r).conj()

    def columns(u, kc, wc):
        phase = jnp.exp(1j * (kc @ sites.T))  # (c, n_s)
        b = jnp.einsum("ks,sar,kan->knr", phase, q_sites, u)  # (c, n, r), a product: stored
        return _hermitian_packed(b.real, b.imag)

    def finish(total):
        total = total.reshape(-1, max_power, n_z, r * r)
        if not z_complex:
            total = jnp.concatenate([total, jnp.zeros_like(total)])
        out = _unpack_hermitian(total, r)
        return tuple(out[p] for p in range(max_power))

    rows_of = partial(_rows_weighted, max_power=max_power)
    return _Kernel(rows_of, columns, m * (rows + r * r), finish, "channels", (rows, r * r))


def _chunk_projected(energies_k, vectors_k, k, weights, z, sites, q, max_power):
    """Channel-space sum over one chunk: Q^dagger G0^p Q for p = 1..max_power, each (n_z, r, r).

    sites (n_s, dim) integer, q (n_s M, r): the channel directions. With b_kn = sum_i Q_i^dagger e^{i k.R_i} |n_k>,
    Q^dagger G0(z) Q = sum_{kn} b_kn b_kn^dagger / (z - E_n(k)). Costs (n_s M r + r^2) per (k, n) instead of
    n_d M^2 for every displacement between sites: the way to go for large clusters with few channels.
    """
    kernel = _projected_kernel(sites, q, energies_k.shape[1], z.shape[0], jnp.iscomplexobj(z), max_power)
    return kernel.finish(kernel.raw(energies_k, vectors_k, k, weights, z))


def sub_chunk_size(chunk: int, per_k: int) -> int:
    """k-points per CPU sub-chunk of a chunk of ``chunk`` points whose large intermediates hold ``per_k`` float64
    elements per k-point: at most ``CPU_SUB_CHUNK_BYTES``, and as even as possible (little padding)."""
    largest = max(1, min(chunk, CPU_SUB_CHUNK_BYTES // (8 * max(1, per_k))))
    pieces = -(-chunk // largest)
    return -(-chunk // pieces)


def _sum_in_sub_chunks(raw, shape, sub: int, e, u, kc, wc, z):
    """sum of ``raw`` (float64 of ``shape``) over sub-chunks of ``sub`` k-points of one chunk (lax.scan; the last is
    padded with copies of the first point at weight 0, so every resolvent stays finite)."""
    c = e.shape[0]
    pieces = -(-c // sub)
    pad = pieces * sub - c

    def split(x, fill=None):
        if pad:
            extra = jnp.broadcast_to(x[:1], (pad, *x.shape[1:])) if fill is None else jnp.full((pad,), fill, x.dtype)
            x = jnp.concatenate([x, extra])
        return x.reshape(pieces, sub, *x.shape[1:])

    def body(acc, x):
        return acc + raw(*x, z), None

    acc, _ = jax.lax.scan(body, jnp.zeros(shape), (split(e), split(u), split(kc), split(wc, 0.0)))
    return acc


def _scan_kernel(kernel: _Kernel, z, xs, eigensystem_of, n_k):
    """lax.scan of ``kernel.raw`` over chunks (each summed in CPU sub-chunks), divided by n_k, then finished."""
    z = jnp.asarray(z, dtype=jnp.complex128 if jnp.iscomplexobj(z) else jnp.float64)

    def whole(e, u, kc, wc):
        return kernel.raw(e, u, kc, wc, z)

    def chunk_sum(x):
        kc, wc, e, u = eigensystem_of(x)
        sub = sub_chunk_size(e.shape[0], kernel.per_k)
        if sub >= e.shape[0] or jax.default_backend() != "cpu":  # a performance choice only: both are exact
            return whole(e, u, kc, wc)
        return _sum_in_sub_chunks(kernel.raw, kernel.shape, sub, e, u, kc, wc, z)

    def body(acc, x):
        return acc + chunk_sum(x), None

    acc, _ = jax.lax.scan(body, jnp.zeros(kernel.shape), xs)
    return kernel.finish(acc / n_k)


def projected_greens_sum(model, sites, q, z, *, kgrid, chunk_size, max_power=1, eigensystem=None):
    """Q^dagger G0(z)^p Q for p = 1..max_power, each (n_z, r, r), for sites (n_s, dim) and q (n_s M, r).

    From a cached :class:`BZEigensystem` when given, otherwise diagonalising chunk by chunk. Traced, not jitted:
    call it inside a jitted function (as the bound-state search does).
    """
    sites = jnp.asarray(sites, dtype=jnp.float64)
    compressed = ray_mesh.compressed_for(kgrid, model)
    if compressed is not None:  # a ray mesh of this host in band-resolved form (shibajax.ray_mesh)
        return ray_mesh.channel_sum(compressed, sites, q, jnp.atleast_1d(z), max_power)

    z = jnp.atleast_1d(z)
    kernel = _projected_kernel(sites, q, model.nambu_dim, z.shape[0], jnp.iscomplexobj(z), max_power)
    if eigensystem is not None:
        return _scan_kernel(kernel, z, tuple(eigensystem), lambda x: x, normalisation(kgrid))
    kpts, weights = chunked_kpoints(kgrid, chunk_size)

    def eigensystem_of(x):
        kc, wc = x
        return (kc, wc, *bdg_eigensystem(model, kc))

    return _scan_kernel(kernel, z, (kpts, weights), eigensystem_of, normalisation(kgrid))


def _scan_green(z, displacements, xs, eigensystem_of, n_k: int, m: int, max_power: int):
    """lax.scan of the G0 kernel over chunks ``xs``; ``eigensystem_of(x)`` gives (k, w, E, U) of a chunk."""
    disp = jnp.asarray(displacements, dtype=jnp.float64)
    z = jnp.atleast_1d(z)
    kernel = _green_kernel(disp, m, z.shape[0], jnp.iscomplexobj(z), max_power)
    return _scan_kernel(kernel, z, xs, eigensystem_of, n_k)


@partial(jax.jit, static_argnames=("kgrid", "chunk_size", "max_power"))
def bare_greens_sum(model, displacements, z, *, kgrid, chunk_size, max_power=1):
    """Jitted core of :func:`greens_function`: tuple of (n_z, n_d, M, M) complex128 for powers 1..max_power.

    displacements (n_d, dim) float/int, z (n_z,) complex; kgrid and chunk_size static. H_BdG(k) is
    diagonalised chunk by chunk inside the scan, so memory stays bounded for any number of k-points.
    """
    compressed = ray_mesh.compressed_for(kgrid, model)
    if compressed is not None:  # a ray mesh of this host in band-resolved form (shibajax.ray_mesh)
        return ray_mesh.greens_sum(compressed, displacements, jnp.atleast_1d(z), max_power)
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


#: Arrays of the size of the result (max_power n_z n_d M^2 complex numbers) a G0 sum holds at once: the product of a
#: CPU sub-chunk, the running sum over sub-chunks and the one over chunks (each up to two: route A's real product
#: [Re; Im] x [Re | Im] of complex energies has four real blocks, see _complex_product), and the result.
SUM_COPIES = 7


def green_sum_bytes(m: int, kgrid, dim: int, chunk_size: int, n_z: int, n_d: int, max_power: int = 1) -> int:
    """Peak bytes of one :func:`bare_greens_sum` over n_z energies and n_d displacements: the k-points, one chunk's
    intermediates (projectors and resolvents, with a copy, and the eigenvectors) and the sums (``SUM_COPIES`` arrays
    of max_power n_z n_d M^2 complex numbers)."""
    per_k = 2 * chunk_elements_per_k(m, n_z, n_d, max_power) + 3 * m * m
    sums = SUM_COPIES * max_power * n_z * n_d * m * m
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

    per_e = per_energy + SUM_COPIES * max_power * n_d * m * m * COMPLEX_BYTES  # one energy's intermediates
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
