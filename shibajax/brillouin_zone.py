"""Brillouin-zone grids and chunked sums over k.

Grids are Gamma-centred Monkhorst-Pack grids in reduced coordinates, k_i = 2 pi n_i / L_i with
n_i = 0 .. L_i - 1 (docs/conventions.md). On an L x L grid the BZ sum is exact for an L x L periodic
lattice, which is what makes T-matrix energies equal exact diagonalisation of that lattice.

Sums over k are written for one chunk of k-points and run with ``lax.scan`` over chunks, so memory is
bounded by the chunk size (padding points carry weight 0), whatever the number of k-points. Before anything is
allocated, :func:`check_memory` compares an estimate of a calculation's memory with :func:`memory_limit` (a
fraction of the available memory, or ``SHIBAJAX_MEMORY_LIMIT_GB``) and raises
:class:`~shibajax.errors.MemoryLimitError` when it does not fit.

A k-grid is an exact periodic lattice, and it can miss the nodes of a nodal gap: a d-wave host on a grid
without k-points on its nodes has a small but finite gap on that lattice. Whether the *host* (the infinite
lattice) has a gap is decided by :func:`host_gap`, which refines the grid's lowest quasiparticle energies by a
local minimisation of |E(k)| over continuous k (docs/conventions.md, "k-grids").
"""

from __future__ import annotations

import hashlib
import math
import os
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from shibajax import (
    _linalg,
    _precision,  # noqa: F401
)
from shibajax.errors import MemoryLimitError, ShapeError
from shibajax.models.tight_binding import TightBindingModel, bdg_hamiltonian
from shibajax.nambu import SIGMA_Y

#: Default memory budget of one chunk's largest intermediate, in complex128 elements (2**22 = 64 MiB).
CHUNK_BUDGET_ELEMENTS = 2**22
#: Bytes of a complex128 and of a float64 element.
COMPLEX_BYTES, REAL_BYTES = 16, 8
#: Share of the available memory (host RAM, or the free memory of the first accelerator) one calculation may plan
#: to use: the rest is left to XLA's temporaries, compiled code and other processes.
MEMORY_FRACTION = 0.5
#: Environment variable that sets the memory limit instead, in GB (10^9 bytes), e.g. ``SHIBAJAX_MEMORY_LIMIT_GB=4``.
MEMORY_LIMIT_ENV = "SHIBAJAX_MEMORY_LIMIT_GB"
#: Budget of the intermediates of one block of energies of a Green's-function sum (bytes, 1 GiB): longer energy
#: grids are summed block by block (each block its own k-sum), so memory does not grow with the number of energies.
ENERGY_BLOCK_BYTES = 2**30


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
    """Return kgrid as a tuple of positive ints of length dim (or a KMesh of that dimension), or raise ShapeError.

    Raises:
        ShapeError: not dim positive integers.
        MemoryLimitError: the grid's k-point array alone does not fit in :func:`memory_limit` (e.g.
            ``kgrid=100000`` on a 2D model: 10^10 k-points), found before anything is allocated.
    """
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
    n_k = math.prod(out)
    check_memory(
        kpoint_bytes(n_k, dim),
        f"kgrid {out} ({n_k:.3g} k-points): its k-point array alone",
        "Use a smaller grid: an L x L grid converges once L is several coherence lengths v_F / Delta (lattice "
        "units); for physical gaps use a Fermi-shell mesh (shibajax.fermi_shell.fermi_shell_mesh), which refines "
        "only near the Fermi surface",
    )
    return out


# ---------------------------------------------------------------------------------------------------------------
# Memory estimates and the limit they are checked against
# ---------------------------------------------------------------------------------------------------------------


def available_memory() -> tuple[float, str]:
    """Bytes free for a calculation, and what they are: the free memory of the first device when JAX reports it
    (GPU, TPU: ``memory_stats()``), else the available host RAM (``MemAvailable`` of /proc/meminfo, or
    ``os.sysconf``)."""
    try:
        device = jax.devices()[0]
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001  (a backend without memory statistics)
        stats = None
    if stats and stats.get("bytes_limit"):
        return float(stats["bytes_limit"] - stats.get("bytes_in_use", 0)), f"free memory of {device}"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return 1024.0 * float(line.split()[1]), "available host memory"
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")), "free host memory"
    except (ValueError, OSError, AttributeError):
        return float("inf"), "host memory (unknown size)"


def memory_limit() -> tuple[float, str]:
    """The memory one calculation may plan to use (bytes), and where the figure comes from: ``MEMORY_FRACTION``
    of :func:`available_memory`, or ``SHIBAJAX_MEMORY_LIMIT_GB`` (GB) when that is set.

    Raises:
        MemoryLimitError: ``SHIBAJAX_MEMORY_LIMIT_GB`` is not a positive number.
    """
    text = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if text:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (math.isfinite(value) and value > 0):
            raise MemoryLimitError(
                f"{MEMORY_LIMIT_ENV}={text!r} must be a positive number of GB (e.g. {MEMORY_LIMIT_ENV}=4), or unset"
            )
        return value * 1e9, f"{MEMORY_LIMIT_ENV}={text}"
    free, where = available_memory()
    return MEMORY_FRACTION * free, (
        f"{MEMORY_FRACTION:.0%} of the {format_bytes(free)} of {where}; set {MEMORY_LIMIT_ENV} to change it"
    )


def format_bytes(n: float) -> str:
    """A byte count for messages: '512 MB', '1.6e+02 GB'."""
    if n < 1e9:
        return f"{n / 1e6:.3g} MB"
    return f"{n / 1e9:.3g} GB"


def check_memory(estimate: float, what: str, fix: str) -> None:
    """Raise :class:`~shibajax.errors.MemoryLimitError` when ``estimate`` (bytes) exceeds :func:`memory_limit`.

    Args:
        estimate: the bytes the calculation would allocate. what: what needs them (the parameters that decide
            the size). fix: the cure (smaller grid, ``chunk_size``, fewer energies...).
    """
    limit, source = memory_limit()
    if estimate > limit:
        raise MemoryLimitError(
            f"{what} needs about {format_bytes(estimate)}, more than the memory limit of {format_bytes(limit)} "
            f"({source}). {fix}"
        )


def kpoint_bytes(n_k: int, dim: int) -> int:
    """Bytes of a grid's k-points and weights as the chunked sums hold them (with the padded copy)."""
    return 3 * n_k * (dim + 1) * REAL_BYTES


def chunk_budget() -> int:
    """Complex elements one chunk's largest intermediate may have: ``CHUNK_BUDGET_ELEMENTS``, less when the memory
    limit is small (an eighth of it: a chunk holds several intermediates of that size)."""
    limit, _ = memory_limit()
    return int(max(1, min(CHUNK_BUDGET_ELEMENTS, limit / (8 * COMPLEX_BYTES))))


def monkhorst_pack(kgrid: tuple[int, ...]) -> jax.Array:
    """All k-points of a Gamma-centred grid, (prod(kgrid), dim), reduced coordinates in [0, 2 pi)."""
    axes = [2.0 * jnp.pi * jnp.arange(n) / n for n in kgrid]
    mesh = jnp.meshgrid(*axes, indexing="ij")
    return jnp.stack([m.ravel() for m in mesh], axis=-1)


def default_chunk_size(n_k: int, elements_per_k: int, budget: int | None = None) -> int:
    """k-points per chunk so that a chunk's intermediates stay below ``budget`` complex elements (default
    :func:`chunk_budget`: 2**22, less under a small memory limit)."""
    budget = chunk_budget() if budget is None else budget
    return int(max(1, min(n_k, budget // max(1, elements_per_k))))


def check_chunk_size(chunk_size) -> int | None:
    """A caller's ``chunk_size`` (k-points per chunk): None (from the memory budget) or a positive integer, else
    ShapeError (checked on the host, before anything is compiled)."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer) or chunk_size < 1:
        raise ShapeError(f"chunk_size = {chunk_size!r} must be a positive integer (k-points per chunk) or None")
    return int(chunk_size)


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
    return _linalg.eigh(h)


# ---------------------------------------------------------------------------------------------------------------
# The gap: of the grid, and of the host (the infinite lattice)
# ---------------------------------------------------------------------------------------------------------------

#: A gap below this times the largest hopping |T_d| is zero (eigenvalues are exact to ~1e-15 of it).
NO_GAP = 1e-9
#: A host whose lowest quasiparticle energy over continuous k is below this times its pairing scale
#: (sum_d max |D_d|, the largest |Delta(k)| can be) is nodal. The minimisation converges onto a node to ~1e-12 of
#: the pairing scale or better (quadratically, see :func:`host_gap`), and a full gap is a sizeable fraction of it
#: (the smallest among the built-in models, LiFeAs s+- near its nodal lines, is 2e-2 of it).
NODE_RTOL = 1e-6
#: Starts of the minimisation: the grid points of lowest |E| of the model, and as many of the rescaled model
#: (see gap_from_starts).
GAP_STARTS = 4
#: Trust-region Newton steps of the minimisation at most, and at most how many of them a rescaled start takes on the
#: model with its pairing rescaled to the band scale (it stops earlier when every start has converged, or when one
#: has found a node).
GAP_STEPS, GAP_RESCALED_STEPS = 40, 20
#: Finite-difference step of the Hessian of E(k)^2 (reduced coordinates): E^2 is smooth on the scale of the bands
#: (~1 in k), and the gradients it differences are exact to ~1e-15 (Hellmann-Feynman), so the Hessian is good to
#: ~1e-10 relative.
GAP_FD_STEP = 1e-5
#: Irrational fractions of the grid spacing added to the starts, so that no start sits exactly on a mirror line
#: (a saddle of |E| by symmetry) or on a node of the grid.
_START_OFFSET = (0.3183, 0.5772, 0.1234)


class GapInfo(NamedTuple):
    """The gap of a host, as arrays (jit- and vmap-safe).

    Attributes:
        grid: min_k min_n |E_n(k)| on the grid: the gap edge of the periodic lattice the grid is.
        host: the lowest |E_n(k)| found over continuous k (<= grid): the gap of the infinite lattice.
        k: (dim,) reduced coordinates where ``host`` is reached (a node, when the host is nodal).
        pairing: pairing scale sum_d max |D_d| (0 for Delta = 0); hopping: max |T_d| (the band scale).
        has_gap: the host has a full superconducting gap: pairing > 0 (relative to the bands), the grid has no
            node, and ``host > NODE_RTOL * pairing``.
    """

    grid: jax.Array
    host: jax.Array
    k: jax.Array
    pairing: jax.Array
    hopping: jax.Array
    has_gap: jax.Array

    @property
    def reason(self) -> str:
        """Why a (concrete) host has no gap, in words for an error message ('' when it has one)."""
        if bool(self.has_gap):
            return ""
        if not float(self.pairing) > NO_GAP * float(self.hopping):
            return "Delta = 0: the model has no pairing"
        k = ", ".join(f"{x:.4f}" for x in np.asarray(self.k) % (2 * np.pi))
        if not float(self.grid) > NO_GAP * float(self.hopping):
            return f"the gap has nodes on this k-grid: its gap edge is {float(self.grid):.2g}, i.e. zero"
        return (
            f"the gap has nodes: Delta(k) vanishes on the Fermi surface near k = ({k}) (reduced coordinates), where "
            f"the quasiparticle energy falls to {float(self.host):.2g}. The grid misses the nodes and sees a gap edge "
            f"of {float(self.grid):.3g}, an artefact of the finite lattice: the host (the infinite lattice) is gapless"
        )


def _bdg_and_slopes(model, k):
    """H_BdG(k) and its derivatives dH/dk_j, stacked (1 + dim, M, M), for one k (dim,): the blocks of
    :func:`~shibajax.models.tight_binding.bdg_hamiltonian` with every phase e^{ik.d} also times i d_j."""
    n, dim = model.n_orb, k.shape[0]

    def coefficients(displacements):
        d = jnp.asarray(displacements, dtype=jnp.float64)  # (n_d, dim)
        phase = jnp.exp(1j * (d @ k))
        return jnp.concatenate([phase[None], (1j * d.T) * phase[None]])  # (1 + dim, n_d)

    c_hop, c_pair = coefficients(model.hop_displacements), coefficients(model.pair_displacements)
    sy = jnp.kron(jnp.eye(n), jnp.asarray(SIGMA_Y))
    h = jnp.einsum("ad,dxy->axy", c_hop, model.hoppings)
    hole = -sy @ jnp.einsum("ad,dxy->axy", c_hop, model.hoppings.conj()) @ sy  # -sigma_y h(-k)^* sigma_y
    pair = jnp.einsum("ad,dxy,st->axsyt", c_pair, model.pairing, jnp.eye(2)).reshape(dim + 1, 2 * n, 2 * n)
    top = jnp.concatenate([h, pair], axis=2)
    return jnp.concatenate([top, jnp.concatenate([jnp.swapaxes(pair.conj(), 1, 2), hole], axis=2)], axis=1)


def _lowest_levels(model, k, factors):
    """E^2 and d(E^2)/dk of the quasiparticle level closest to zero at k (n, P, dim), with the pairing of row i
    times ``factors[i]``: (n, P) and (n, P, dim).

    The gradient is Hellmann-Feynman, 2 E <psi| dH/dk |psi>; on a degenerate level (spin, Kramers) every vector of
    the level gives the same value, since the degeneracy holds at every k and so for dH/dk too. The matrices are
    built with vmap and diagonalised as one stack (:mod:`shibajax._linalg`: no batched LAPACK call on CPU).
    """

    def one_start(factor, ks):
        scaled = model.replace(pairing=model.pairing * factor)
        return jax.vmap(partial(_bdg_and_slopes, scaled))(ks)  # (P, 1 + dim, M, M)

    stacked = jax.vmap(one_start)(factors, k)
    h, dh = stacked[:, :, 0], stacked[:, :, 1:]
    e, v = _linalg.eigh(h)  # (n, P, M), (n, P, M, M)
    i = jnp.argmin(jnp.abs(e), axis=-1)
    level = jnp.take_along_axis(e, i[..., None], -1)[..., 0]
    psi = jnp.take_along_axis(v, i[..., None, None], -1)[..., 0]  # (n, P, M)
    slope = jnp.real(jnp.einsum("npa,npjab,npb->npj", psi.conj(), dh, psi))
    return level**2, 2.0 * level[..., None] * slope


def _trust_region_step(w, u, g, radius):
    """Step of a trust-region Newton method for Hessian eigenpairs (w ascending, u columns) and gradient g: the
    Newton step of H + lambda (lambda = max(0, -w_min), so a descent direction), shortened to ``radius``; in the
    hard case (negative curvature, the step shorter than the radius) the rest goes along the lowest eigenvector."""
    gt = u.T @ g
    lam = jnp.maximum(0.0, -w[0]) + 1e-9 * (jnp.max(jnp.abs(w)) + 1e-300)
    step = -gt / (w + lam)
    norm = jnp.linalg.norm(step)
    hard = step.at[0].add(jnp.sqrt(jnp.maximum(radius**2 - norm**2, 0.0)))
    step = jnp.where(norm >= radius, step * (radius / jnp.where(norm > 0, norm, 1.0)), jnp.where(w[0] < 0, hard, step))
    return u @ step


def _minimise_gap(model, starts, factors, spacing, target):
    """Local minima of E(k)^2 from ``starts`` (n, dim): a trust-region Newton method (Hellmann-Feynman gradients,
    finite-difference Hessian). A start with ``factors != 1`` first runs on the model with its pairing times that
    factor (at most GAP_RESCALED_STEPS steps, until it converges), then on the model itself. Stops when every start
    has converged on the model, when one is below ``target`` (a node: the answer is known), or after GAP_STEPS
    steps. Returns |E| (n,) and k (n, dim) at the minima."""
    n, dim = starts.shape
    eye = jnp.eye(dim)
    offsets = jnp.concatenate([jnp.zeros((1, dim)), GAP_FD_STEP * eye, -GAP_FD_STEP * eye])  # (1 + 2 dim, dim)

    def evaluate(points, factor):  # (n, dim), (n,) -> E^2 (n,), gradient (n, dim), Hessian (n, dim, dim)
        f, g = _lowest_levels(model, points[:, None, :] + offsets[None], factor)
        hess = (g[:, 1 : 1 + dim] - g[:, 1 + dim :]) / (2 * GAP_FD_STEP)
        return f[:, 0], g[:, 0], 0.5 * (hess + jnp.swapaxes(hess, 1, 2))

    def body(state):
        it, k, f, g, hess, radius, step, rescaled, steps, done = state  # step: the one tried in this iteration
        # rescaled starts that converged (or ran out of steps) go on with the model itself, from where they are
        switch = rescaled & (done | (steps >= GAP_RESCALED_STEPS))
        rescaled = rescaled & ~switch
        f = jnp.where(switch, jnp.inf, f)
        radius = jnp.where(switch, 0.1 * spacing, radius)
        step = jnp.where(switch[:, None], 0.0, step)
        f_new, g_new, h_new = evaluate(k + step, jnp.where(rescaled, factors, 1.0))
        predicted = -(jnp.einsum("nd,nd->n", g, step) + 0.5 * jnp.einsum("nd,nde,ne->n", step, hess, step))
        ratio = jnp.where(predicted > 0, (f - f_new) / jnp.where(predicted > 0, predicted, 1.0), 0.0)
        length = jnp.linalg.norm(step, axis=1)
        grown = jnp.where((ratio > 0.75) & (length > 0.99 * radius), 2.0 * radius, radius)
        new_radius = jnp.clip(jnp.where(ratio < 0.25, 0.25 * length, grown), 1e-15, jnp.pi)
        radius = jnp.where(jnp.isfinite(f), new_radius, radius)  # f = inf: a first evaluation, not a step
        ok = f_new < f
        k = jnp.where(ok[:, None], k + step, k)
        f = jnp.where(ok, f_new, f)
        g = jnp.where(ok[:, None], g_new, g)
        hess = jnp.where(ok[:, None, None], h_new, hess)
        w, u = _linalg.eigh(hess)
        step = jax.vmap(_trust_region_step)(w, u, g, radius)
        # converged: the next step (or the trust region) is below rounding of k (~1e-15 of 2 pi), or it would lower
        # E^2 by less than 1e-12 of itself (a minimum of E > 0; near a node the model predicts E^2 -> 0 instead)
        gain = -(jnp.einsum("nd,nd->n", g, step) + 0.5 * jnp.einsum("nd,nde,ne->n", step, hess, step))
        done = (jnp.linalg.norm(step, axis=1) < 1e-13) | (radius < 1e-13) | (gain < 1e-12 * f)
        steps = jnp.where(switch, 0, steps + 1)
        return it + 1, k, f, g, hess, radius, step, rescaled, steps, done

    def cond(state):
        it, _, f, *_, rescaled, _, done = state
        found = jnp.any(~rescaled & (f < target**2))
        return (it < GAP_STEPS) & ~found & ~jnp.all(done & ~rescaled)

    zeros = jnp.zeros((n, dim))
    counts = jnp.zeros(n, dtype=jnp.int32)
    rescaled = factors != 1.0
    init = (0, starts, jnp.full(n, jnp.inf), zeros, jnp.zeros((n, dim, dim)), jnp.full(n, spacing), zeros,
            rescaled, counts, jnp.zeros(n, bool))  # fmt: skip
    _, k, f, *_, rescaled, _, _ = jax.lax.while_loop(cond, body, init)
    return jnp.where(rescaled, jnp.inf, jnp.sqrt(f)), k  # a start still on the rescaled model has no value


def model_scales(model: TightBindingModel) -> tuple[jax.Array, jax.Array]:
    """(band scale max_d |T_d|, pairing scale sum_d max |D_d|) of a model (jit-safe)."""
    hopping = jnp.max(jnp.abs(model.hoppings))
    pairing = jnp.max(jnp.sum(jnp.abs(model.pairing), axis=0))
    return hopping, pairing


def s_wave_full_gap(model: TightBindingModel):
    """Whether the model's gap is full by construction, with no search: on-site pairing D_0 = Delta * identity on
    a time-reversal-symmetric band structure (sigma_y T_d^* sigma_y = T_d for every d: no Zeeman or exchange
    term). Then H_BdG = [[h, Delta], [Delta^*, -h]] with Delta commuting with h, so E(k)^2 = eps_n(k)^2 + |Delta|^2
    >= |Delta|^2 at every k. Returns None when the pairing is not on-site only (known from the static structure),
    else a bool array (traceable)."""
    if model.pair_displacements != ((0,) * model.dim,):
        return None
    d0 = model.pairing[0]
    n = model.n_orb
    uniform = jnp.max(jnp.abs(d0 - d0[0, 0] * jnp.eye(n))) <= 1e-10 * jnp.max(jnp.abs(d0))
    sy = jnp.kron(jnp.eye(n), jnp.asarray(SIGMA_Y))
    t = model.hoppings
    time_reversal = jnp.max(jnp.abs(sy @ t.conj() @ sy - t)) <= 1e-10 * jnp.max(jnp.abs(t))
    return uniform & time_reversal


def rescaled(model: TightBindingModel) -> TightBindingModel:
    """The model with its pairing rescaled to the band scale (pairing scale = max |T_d| / 2): the same nodes
    (xi = 0 and Delta = 0 do not depend on the pairing's scale), with |Delta| comparable to the band velocities."""
    hopping, pairing = model_scales(model)
    factor = jnp.where(pairing > 0, 0.5 * hopping / jnp.where(pairing > 0, pairing, 1.0), 1.0)
    return model.replace(pairing=model.pairing * factor)


def gap_from_starts(model: TightBindingModel, grid_gap, starts, spacing: float, rescaled_starts=None) -> GapInfo:
    """:class:`GapInfo` from the grid's gap edge and its lowest points ``starts`` (n, dim) (jit- and vmap-safe).

    The starts are minimised on the model itself, and ``rescaled_starts`` (n, dim) (the lowest points of the
    :func:`rescaled` model's grid; an array, or a function returning it, called only when a search is needed;
    default ``starts``) first on the rescaled model and then on the model itself. A small Delta makes
    E(k)^2 = xi^2 + |Delta|^2 a long narrow valley along the Fermi surface, in which a search on the model itself
    may stop short of a node, and makes the grid's lowest points the ones nearest the Fermi surface wherever they
    are; on the rescaled model E(k) measures the distance to the nodes, without the valley. An s-wave gap on a
    time-reversal-symmetric host (:func:`s_wave_full_gap`) needs no search: its ``host`` is min(grid, |Delta|)
    (|Delta| is the gap when there is a Fermi surface, a lower bound otherwise).
    """
    hopping, pairing = model_scales(model)
    threshold = jnp.maximum(NO_GAP * hopping, NODE_RTOL * pairing)
    has_pairing = (pairing > NO_GAP * hopping) & (grid_gap > NO_GAP * hopping)
    offset = 1e-3 * spacing * np.asarray(_START_OFFSET[: starts.shape[1]])
    starts = starts + offset

    def search(_):
        big = jnp.where(pairing > 0, 0.5 * hopping / jnp.where(pairing > 0, pairing, 1.0), 1.0)
        other = rescaled_starts() if callable(rescaled_starts) else rescaled_starts
        other = starts if other is None else other + offset
        factors = jnp.concatenate([jnp.ones(starts.shape[0]), jnp.full(other.shape[0], big)])
        values, ks = _minimise_gap(model, jnp.concatenate([starts, other]), factors, spacing, 1e-3 * threshold)
        best = jnp.argmin(values)
        host = jnp.minimum(values[best], grid_gap)
        return host, ks[best], has_pairing & (host > threshold)

    def s_wave(_):
        return jnp.minimum(grid_gap, pairing), starts[0], has_pairing

    full = s_wave_full_gap(model)
    if full is None:
        host, k, has_gap = search(None)
    else:
        host, k, has_gap = jax.lax.cond(full, s_wave, search, None)
    return GapInfo(grid_gap, host, k, pairing, hopping, has_gap)


def grid_spacing(kgrid) -> float:
    """Typical k-spacing of a grid or mesh (reduced coordinates): 2 pi / L."""
    if isinstance(kgrid, KMesh):
        return 2.0 * np.pi / len(kgrid) ** (1.0 / kgrid.dim)
    return 2.0 * np.pi / max(kgrid)


def lowest_points(energies, k, n: int = GAP_STARTS):
    """The grid's gap edge and its n k-points (n, dim) of lowest |E|, from energies (..., M) at k (..., dim)."""
    e_min = jnp.min(jnp.abs(energies), axis=-1).reshape(-1)
    _, idx = jax.lax.top_k(-e_min, min(n, e_min.shape[0]))
    return jnp.min(e_min), k.reshape(-1, k.shape[-1])[idx]


def scan_gap(model, kgrid, chunk_size, n: int = GAP_STARTS):
    """Gap edge of the grid and its n lowest points (n, dim), diagonalising chunk by chunk (traced, not jitted)."""
    kpts, weights = chunked_kpoints(kgrid, chunk_size)
    n = min(n, kpts.shape[0] * kpts.shape[1])

    def body(carry, xs):
        best, best_k = carry
        kc, _ = xs  # padding points are real grid points (k = 0), harmless for a minimum
        h = jax.vmap(partial(bdg_hamiltonian, model))(kc)
        e_min = jnp.min(jnp.abs(_linalg.eigvalsh(h)), axis=-1)
        values = jnp.concatenate([best, e_min])
        _, idx = jax.lax.top_k(-values, n)
        return (values[idx], jnp.concatenate([best_k, kc])[idx]), None

    init = (jnp.full(n, jnp.inf), jnp.zeros((n, kpts.shape[-1])))
    (best, best_k), _ = jax.lax.scan(body, init, (kpts, weights))
    return best[0], best_k


@partial(jax.jit, static_argnames=("kgrid", "chunk_size"))
def _gap_edge(model, kgrid, chunk_size):
    return scan_gap(model, kgrid, chunk_size, 1)[0]


@partial(jax.jit, static_argnames=("kgrid", "chunk_size", "both"))
def _scan_starts(model, kgrid, chunk_size, both=True):
    grid, starts = scan_gap(model, kgrid, chunk_size)
    return grid, starts, (scan_gap(rescaled(model), kgrid, chunk_size)[1] if both else starts)


#: Jitted apart from the grid scan: compiled once per model structure, whatever the grid.
_refine_starts = jax.jit(gap_from_starts)
#: host_gap results of concrete models, by content (model arrays, grid, chunk): a host is refined once, however
#: many impurity configurations are then solved on it. At most HOST_GAP_CACHE entries, the oldest dropped first.
_HOST_GAPS: dict = {}
HOST_GAP_CACHE = 64


def _is_traced(model) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in (model.hoppings, model.pairing))


def _content_key(model, kgrid, chunk_size):
    if isinstance(kgrid, KMesh):  # static by identity: not kept alive by a cache
        return None
    digest = hashlib.sha1()
    for x in (model.hoppings, model.pairing):
        arr = np.asarray(x)
        digest.update(str((arr.shape, arr.dtype)).encode())
        digest.update(arr.tobytes())
    return (jax.tree_util.tree_structure(model), digest.hexdigest(), kgrid, chunk_size)


def host_has_gap(model: TightBindingModel, kgrid) -> jax.Array:
    """``host_gap(model, kgrid).has_gap`` of a concrete model, without a grid scan for an s-wave gap on a
    time-reversal-symmetric host (:func:`s_wave_full_gap`: then only Delta != 0 is needed; a grid with zero gap
    is caught by the search itself)."""
    with jax.ensure_compile_time_eval():
        full = s_wave_full_gap(model)
        if full is not None and bool(full):
            hopping, pairing = model_scales(model)
            return pairing > NO_GAP * hopping
    return host_gap(model, kgrid).has_gap


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


def host_gap(model: TightBindingModel, kgrid, chunk_size: int | None = None) -> GapInfo:
    """The gap of the host (the infinite lattice), and whether it has one: grid, host, k and has_gap.

    A grid is an exact periodic lattice, but it can miss a gap's nodes (a d-wave host on a grid without k-points
    on the nodes has a small finite gap on that lattice). The grid's lowest points are therefore refined by a
    local minimisation of E(k)^2 over continuous k (trust-region Newton; at a node E^2 = xi^2 + |Delta|^2 is a
    smooth quadratic, so it converges quadratically onto it), and the host is nodal when the lowest |E| found is
    below ``NODE_RTOL`` times the pairing scale. A full gap (s, s+- with its nodal lines off the Fermi surface,
    d+id) stays ``has_gap = True``; Delta = 0, a d-wave gap, or s+- with nodal lines crossing the Fermi surface
    give ``has_gap = False`` (docs/conventions.md, "k-grids"). Every bound-state search uses it
    (``BoundStateBatch.has_gap``): a concrete model's result is kept (per model content, grid and chunk), and under
    jit / vmap over model parameters it runs inside the caller's computation.

    Args:
        model: BdG model. kgrid: grid per dimension or a KMesh (where the minimisation starts).
        chunk_size: k-points per chunk of the grid scan.

    Returns:
        :class:`GapInfo` (arrays; ``reason`` says in words why a host has no gap).

    Example:
        >>> import shibajax
        >>> from shibajax.brillouin_zone import host_gap
        >>> d_wave = shibajax.models.square(mu=-1.0, delta=0.3, gap="d")
        >>> info = host_gap(d_wave, (12, 12))
        >>> bool(info.has_gap), float(info.grid) > 0.05, float(info.host) < 1e-9
        (False, True, True)
    """
    kgrid = validate_kgrid(kgrid, model.dim)
    if chunk_size is None:
        chunk_size = default_chunk_size(n_points(kgrid), 4 * model.nambu_dim**2)
    chunk_size = int(chunk_size)
    if _is_traced(model):  # under jit / vmap over model parameters: part of the caller's computation
        grid, starts = scan_gap(model, kgrid, chunk_size)

        def other():  # the rescaled model's lowest points, scanned only if a search is needed
            return scan_gap(rescaled(model), kgrid, chunk_size)[1]

        return gap_from_starts(model, grid, starts, grid_spacing(kgrid), other)
    key = _content_key(model, kgrid, chunk_size)
    if key in _HOST_GAPS:
        return _HOST_GAPS[key]
    with jax.ensure_compile_time_eval():  # concrete values, even when called while an outer jit traces
        full = s_wave_full_gap(model)
        if full is not None and bool(full):  # no search to compile
            grid, starts, _ = _scan_starts(model, kgrid, chunk_size, both=False)
            hopping, pairing = model_scales(model)
            has_gap = (pairing > NO_GAP * hopping) & (grid > NO_GAP * hopping)
            info = GapInfo(grid, jnp.minimum(grid, pairing), starts[0], pairing, hopping, has_gap)
        else:
            grid, starts, other = _scan_starts(model, kgrid, chunk_size)
            info = _refine_starts(model, grid, starts, grid_spacing(kgrid), other)
    if key is not None:
        if len(_HOST_GAPS) >= HOST_GAP_CACHE:
            _HOST_GAPS.pop(next(iter(_HOST_GAPS)))
        _HOST_GAPS[key] = info
    return info
