"""Conserved spin sectors: a spin-invariant host with collinear impurity spins, solved in two 2 n_orb problems.

When every hopping is spin-independent, T_d = t_d (x) sigma_0 (no spin-orbit coupling, no Zeeman field), the
pairing is a singlet (always, docs/conventions.md) and the impurity potential V involves the spin only through
n . sigma for one axis n (every spin parallel or antiparallel to n; potential scattering K and exchange J), the
Nambu space splits into two sectors that neither the host nor V mixes. In the basis of docs/conventions.md,

    Psi = (c_up, c_down ; c+_down, -c+_up)   (per orbital),     H_BdG(k) = H_r(k) (x) sigma_0,

    H_r(k) = [[ h0(k),          Delta(k)       ],
              [ Delta(k)^dagger, -h0(-k)^*     ]],       h0(k) = sum_d t_d exp(i k.d)   (2 n_orb x 2 n_orb),

and a spin rotation acts on both blocks alike (1 (x) u): rotating the axis n onto z (u^dagger (n . sigma) u =
sigma_z) leaves H_BdG unchanged and makes V block diagonal in the spin index s of ``2 * orbital + s``. Sector s
holds the electron with spin s and the hole partner of the opposite spin (s = 0: c_up and c+_down), both sectors
have the *same* BdG matrix H_r(k), so one k-sum G_r(d, E) = (1/N) sum_k exp(i k.d) [E - H_r(k)]^-1 serves both,
and the sectors' potentials are V_0 and V_1 (K tau_z + J and K tau_z - J for a spin along +z).

A sector alone is not particle-hole symmetric. The full symmetry (tau_y sigma_y) K exchanges the sectors: with
tau_y H_r(k)^* tau_y = -H_r(-k) (which follows from D_{-d} = D_d^T),

    tau_y G_r(d, E)^* tau_y = -G_r(d, -E),      V_1 = -tau_y V_0^* tau_y   (V particle-hole symmetric),

so det[1 - V_1 G_r(E)] = det[1 - V_0 G_r(-E)]^*: the roots of sector 1 are those of sector 0 mirrored, E -> -E,
and its bound-state amplitudes chi_1 = tau_y chi_0^* (same normalisation chi^dagger G_r^2 chi). The search then
covers sector 0 on (-E_g, E_g) (every eigenvalue of A_0(E) = Lambda_0^-1 - Q_0^dagger G_r Q_0 still increases
monotonically through the gap) and mirrors. Each BdG matrix is half as large, so the eigendecompositions are 8x
cheaper and the channel products 4x smaller than on the full 4 n_orb space; the answer is the same exactly.

Real arithmetic: when h0(k) and Delta(k) are real at every k (t_d = t_{-d}^*, D_d = D_{-d}^*: e.g. real
nearest-neighbour hoppings and s-wave pairing) the sector eigenproblems are real symmetric, and for one impurity
site (where the phase exp(i k.R) drops out) with a real sector potential the whole k-sum is real.

Point-group orbits: a signed permutation P of the lattice coordinates with t_{Pd} = t_d and D_{Pd} = D_d for every
d leaves H_r unchanged, H_r(Pk) = H_r(k). For one impurity site the terms of the k-sum then depend only on H_r(k),
so on a uniform grid it runs over one point per orbit, weighted by the orbit's size (exact: the same terms, added
in another order): N / 8 points for the square lattice's s-wave band, N / 4 for orbitals without the x <-> y
symmetry. Several sites (phases exp(i k.(R_i - R_j)) differ along an orbit) and k-meshes sum every point.

Dispatch: :mod:`shibajax.bound_states` takes this path for concrete models and potentials only (never under a
trace: vmap / jit over couplings or model parameters keep the general path, whose shapes do not depend on the
values), on uniform grids and KMeshes (not a compressed ray mesh, which has its own sums); everything else (SOC,
non-collinear spins, a potential that is not particle-hole symmetric) takes the general 4 n_orb path.

This module holds the host-side analysis (NumPy, on concrete models and potentials; traced ones are never
reduced) and the traced kernels of the sector k-sums; :mod:`shibajax.bound_states` runs the search.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import weakref
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from shibajax import (
    _linalg,
    _precision,  # noqa: F401
)
from shibajax.brillouin_zone import NO_GAP, KMesh, chunked_kpoints, monkhorst_pack, n_points

#: A spin-dependent part of a hopping, or a spin-flip / non-collinear part of V, below this times the largest
#: entry is rounding (models built from spinless matrices are exact; spins are normalised to ~1e-16).
SPIN_RTOL = 1e-12
#: Reduced hosts kept by content (model arrays and displacements), the oldest dropped first.
HOST_CACHE = 64
_HOSTS: dict = {}
_BY_OBJECT: dict = {}


class SectorHost(NamedTuple):
    """A spin-invariant host reduced to one sector (NumPy arrays; cached by model content).

    Attributes:
        hoppings: (n_hop, n_orb, n_orb) complex orbital hoppings t_d (T_d = t_d (x) sigma_0).
        pairing: (n_pair, n_orb, n_orb) complex singlet form factors D_d.
        real: h0(k) and Delta(k) are real at every k (the sector eigenproblems are real symmetric).
        symmetries: the signed permutations P of the lattice coordinates (identity included) with t_{Pd} = t_d and
            D_{Pd} = D_d for every d, as tuples of rows: then H_r(Pk) = H_r(k) (P orthogonal: k.Pd = P^T k.d),
            and a one-site k-sum runs over the orbits of the grid under them (:func:`grid_orbits`).
        full_gap: the gap is full by construction (uniform on-site pairing on a time-reversal-symmetric band
            structure, :func:`shibajax.brillouin_zone.s_wave_full_gap`) and Delta != 0: no gap search needed.
        hopping: max |t_d| (the band scale of :data:`~shibajax.brillouin_zone.NO_GAP`).
    """

    hoppings: np.ndarray
    pairing: np.ndarray
    real: bool
    symmetries: tuple
    full_gap: bool
    hopping: float


class SectorPlan(NamedTuple):
    """How a concrete potential on a spin-invariant host is solved in sector 0.

    Attributes:
        host: the reduced host.
        rotation: (2, 2) SU(2) matrix u with u^dagger (n . sigma) u = sigma_z (n: the common spin axis).
        q: (n_sites * 2 n_orb, r) eigenvectors of the sector-0 potential V_0 on its coupled directions.
        inverse: (r,) 1 / lambda of those directions.
        real: the sector k-sum is real (real host, one site, real V_0).
        n_sites: impurity sites.
    """

    host: SectorHost
    rotation: np.ndarray
    q: np.ndarray
    inverse: np.ndarray
    real: bool
    n_sites: int

    @property
    def rank(self) -> int:
        return self.q.shape[1]


def _is_traced(*xs) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in xs)


def _host_key(model):
    digest = hashlib.sha1()
    for x in (model.hoppings, model.pairing):
        arr = np.asarray(x)
        digest.update(str((arr.shape, arr.dtype)).encode())
        digest.update(arr.tobytes())
    return (model.hop_displacements, model.pair_displacements, model.n_orb, digest.hexdigest())


def sector_host(model) -> SectorHost | None:
    """The model reduced to one spin sector, or None when it is not spin-invariant (or traced).

    Spin-invariant: every hopping is t_d (x) sigma_0 (to ``SPIN_RTOL`` of the largest hopping). Decided once per
    model content and kept (``HOST_CACHE`` entries).
    """
    if _is_traced(model.hoppings, model.pairing):
        return None
    seen = _BY_OBJECT.get(id(model))
    if seen is not None and seen[0]() is model:  # the same (immutable) model object: no hashing of its arrays
        return seen[1]
    key = _host_key(model)
    if key in _HOSTS:
        _remember(model, _HOSTS[key])
        return _HOSTS[key]
    n = model.n_orb
    t4 = np.asarray(model.hoppings).reshape(-1, n, 2, n, 2)
    pairing = np.asarray(model.pairing)
    scale = float(np.max(np.abs(t4))) if t4.size else 0.0
    flip = max(float(np.max(np.abs(t4[:, :, 0, :, 1]))), float(np.max(np.abs(t4[:, :, 1, :, 0]))))
    split = float(np.max(np.abs(t4[:, :, 0, :, 0] - t4[:, :, 1, :, 1])))
    host = None
    if scale > 0 and max(flip, split) <= SPIN_RTOL * scale:
        t = 0.5 * (t4[:, :, 0, :, 0] + t4[:, :, 1, :, 1])
        real = _real_host(model, t, pairing)
        symmetries = _symmetries(model, t, pairing, scale)
        host = SectorHost(t, pairing, real, symmetries, _full_gap(model, t, pairing, scale), scale)
    if len(_HOSTS) >= HOST_CACHE:
        _HOSTS.pop(next(iter(_HOSTS)))
    _HOSTS[key] = host
    _remember(model, host)
    return host


def _remember(model, host) -> None:
    """Keep the host of this model object by identity too (a weak reference: a freed id is never mistaken)."""
    if len(_BY_OBJECT) >= HOST_CACHE:
        _BY_OBJECT.pop(next(iter(_BY_OBJECT)))
    try:
        _BY_OBJECT[id(model)] = (weakref.ref(model), host)
    except TypeError:  # an object without weak references: by content only
        pass


def _partner(displacements, d):
    minus = tuple(-v for v in d)
    return displacements.index(minus) if minus in displacements else None


def _real_host(model, t, pairing) -> bool:
    """h0(k) = sum_d t_d e^{ik.d} and Delta(k) real at every k: t_d = t_{-d}^* and D_d = D_{-d}^* for every d."""
    for disp, mats in ((model.hop_displacements, t), (model.pair_displacements, pairing)):
        scale = max(float(np.max(np.abs(mats))), 1e-300)
        for i, d in enumerate(disp):
            j = _partner(disp, d)
            if j is None or np.max(np.abs(mats[i] - mats[j].conj())) > SPIN_RTOL * scale:
                return False
    return True


def _symmetries(model, t, pairing, scale) -> tuple:
    """Signed permutations P (dim x dim, as tuples of rows) with t_{Pd} = t_d and D_{Pd} = D_d for every d (to
    ``SPIN_RTOL``): symmetries of H_r(k) that map a uniform grid onto itself (where the permuted axes have equal
    lengths; :func:`grid_orbits`). Inversion P = -1 is one exactly when every t_d, D_d is real and even."""
    dim = model.dim
    tables = [
        (dict(zip(model.hop_displacements, t, strict=True)), scale),
        (dict(zip(model.pair_displacements, pairing, strict=True)), max(float(np.max(np.abs(pairing))), 1e-300)),
    ]
    found = []
    for perm in itertools.permutations(range(dim)):
        for signs in itertools.product((1, -1), repeat=dim):
            p = np.zeros((dim, dim), dtype=np.int64)
            p[np.arange(dim), perm] = signs
            ok = True
            for table, size in tables:
                for d, mat in table.items():
                    image = tuple(int(v) for v in p @ np.asarray(d))
                    if image not in table or np.max(np.abs(table[image] - mat)) > SPIN_RTOL * size:
                        ok = False
                        break
                if not ok:
                    break
            if ok:
                found.append(tuple(tuple(int(v) for v in row) for row in p))
    return tuple(found)


#: Orbits of uniform grids under point groups, by (grid, group): (indices (N_rep, dim), weights (N_rep,)).
_ORBITS: dict = {}
ORBIT_CACHE = 8


def grid_orbits(kgrid: tuple[int, ...], symmetries: tuple):
    """The orbits of the Gamma-centred grid n_i = 0 .. L_i - 1 under the symmetries that map it onto itself
    (a permuted axis pair needs equal L): one point per orbit as its grid index n (N_rep, dim) (k = 2 pi n / L),
    and the orbit's size as its weight (N_rep,) (the weights sum to N). None when only the identity applies. Kept
    per (grid, group) on the device."""
    group = tuple(
        p for p in symmetries if all(kgrid[i] == kgrid[j] for i, row in enumerate(p) for j, v in enumerate(row) if v)
    )
    if len(group) <= 1:
        return None
    key = (kgrid, group)
    if key not in _ORBITS:
        size = np.asarray(kgrid)
        n = np.indices(kgrid).reshape(len(kgrid), -1)  # (dim, N), first axis slowest (monkhorst_pack's order)
        least = None
        for p in group:
            image = np.ravel_multi_index(tuple((np.asarray(p) @ n) % size[:, None]), kgrid)
            least = image if least is None else np.minimum(least, image)
        reps, counts = np.unique(least, return_counts=True)
        index = np.stack(np.unravel_index(reps, kgrid), axis=-1).astype(np.int32)
        if len(_ORBITS) >= ORBIT_CACHE:
            _ORBITS.pop(next(iter(_ORBITS)))
        _ORBITS[key] = (jnp.asarray(index), jnp.asarray(counts.astype(np.float64)))
    return _ORBITS[key]


def _full_gap(model, t, pairing, hopping) -> bool:
    """The NumPy form of :func:`~shibajax.brillouin_zone.s_wave_full_gap` for a spin-invariant host, with Delta != 0:
    on-site pairing Delta * 1 on a time-reversal-symmetric band structure (sigma_y T_d^* sigma_y = T_d, i.e. t_d
    real), so E(k)^2 = eps_n(k)^2 + |Delta|^2 >= |Delta|^2: no gap search is needed."""
    if model.pair_displacements != ((0,) * model.dim,):
        return False
    d0 = pairing[0]
    uniform = np.max(np.abs(d0 - d0[0, 0] * np.eye(model.n_orb))) <= 1e-10 * np.max(np.abs(d0))
    time_reversal = np.max(np.abs(t.imag)) <= 1e-10 * hopping
    pairing_scale = float(np.max(np.sum(np.abs(pairing), axis=0)))
    return bool(uniform and time_reversal and pairing_scale > NO_GAP * hopping)


def spin_axis_rotation(n: np.ndarray) -> np.ndarray:
    """u = exp(-i phi sigma_z / 2) exp(-i theta sigma_y / 2) in SU(2), with u sigma_z u^dagger = n . sigma."""
    n = np.asarray(n, dtype=np.float64)
    theta = math.atan2(math.hypot(float(n[0]), float(n[1])), float(n[2]))  # accurate at the poles too
    phi = math.atan2(float(n[1]), float(n[0]))
    rz = np.diag([np.exp(-0.5j * phi), np.exp(0.5j * phi)])
    ry = np.array([[math.cos(theta / 2), -math.sin(theta / 2)], [math.sin(theta / 2), math.cos(theta / 2)]])
    return rz @ ry


def _hole_flip(n_sites: int, n_orb: int) -> np.ndarray:
    """tau_y on the reduced index site * 2 n_orb + tau * n_orb + orbital: (n_sites 2 n_orb, n_sites 2 n_orb)."""
    tau_y = np.array([[0, -1j], [1j, 0]])
    return np.kron(np.eye(n_sites), np.kron(tau_y, np.eye(n_orb)))


def sector_plan(model, potential, n_sites: int, kgrid, zero_coupling: float) -> SectorPlan | None:
    """The sector-0 problem of a concrete potential (R, R) on ``n_sites`` sites, or None (general path).

    None when: the model or the potential is traced; the host is not spin-invariant; the grid is neither a tuple
    nor a :class:`~shibajax.brillouin_zone.KMesh`; V has no coupling; V's spin parts are not collinear (the
    spin-dependent part of every element of V, v . sigma with v in C^3, along one real axis n, to ``SPIN_RTOL``);
    or V is not particle-hole symmetric (V_1 = -tau_y V_0^* tau_y fails; the general path assumes it too).
    """
    if _is_traced(potential) or not isinstance(kgrid, tuple | KMesh):
        return None
    if getattr(kgrid, "compressed", None) is not None:  # a compressed ray mesh (shibajax.ray_mesh): its own sums
        return None
    host = sector_host(model)
    if host is None:
        return None
    n = model.n_orb
    v = np.asarray(potential, dtype=np.complex128)
    scale = float(np.max(np.abs(v))) if v.size else 0.0
    if not scale > 0:
        return None
    v6 = v.reshape(n_sites * 2 * n, 2, n_sites * 2 * n, 2)  # (site tau orbital, spin; site' tau' orbital', spin')
    sigma = np.array([[[0, 1], [1, 0]], [[0, -1j], [1j, 0]], [[1, 0], [0, -1]]])
    parts = 0.5 * np.einsum("asbt,mts->mab", v6, sigma)  # v_mu = Tr_spin(V sigma_mu) / 2: (3, P, P)
    flat = parts.reshape(3, -1)
    # (3, 2 P^2) real: rank one exactly when the spins are collinear; thin SVD (3 x 3 left factor, O(P^2) work)
    left, s, _ = np.linalg.svd(np.concatenate([flat.real, flat.imag], axis=1), full_matrices=False)
    if s[0] <= SPIN_RTOL * scale:
        axis = np.array([0.0, 0.0, 1.0])  # no exchange: any axis
    elif s[1] <= SPIN_RTOL * scale:
        axis = left[:, 0] / np.linalg.norm(left[:, 0])
        if axis[2] < 0 or (axis[2] == 0 and (axis[0] < 0 or (axis[0] == 0 and axis[1] < 0))):
            axis = -axis  # either sign: the sectors swap labels; this one keeps u = 1 for spins along +-z
    else:
        return None  # non-collinear spins
    u = spin_axis_rotation(axis)
    rot = np.kron(np.eye(n_sites * 2 * n), u)
    v_rot = rot.conj().T @ v @ rot
    v_rot = v_rot.reshape(n_sites * 2 * n, 2, n_sites * 2 * n, 2)
    if max(np.max(np.abs(v_rot[:, 0, :, 1])), np.max(np.abs(v_rot[:, 1, :, 0]))) > SPIN_RTOL * scale:
        return None
    v0, v1 = v_rot[:, 0, :, 0], v_rot[:, 1, :, 1]
    flip = _hole_flip(n_sites, n)
    if np.max(np.abs(v1 + flip @ v0.conj() @ flip)) > SPIN_RTOL * scale:
        return None  # not particle-hole symmetric
    v0 = 0.5 * (v0 + v0.conj().T)
    real = host.real and n_sites == 1 and np.max(np.abs(v0.imag)) <= SPIN_RTOL * scale
    lam, q = np.linalg.eigh(v0.real if real else v0)
    coupled = np.abs(lam) > zero_coupling * np.max(np.abs(lam))
    if not coupled.any():
        return None
    return SectorPlan(host, u, q[:, coupled], 1.0 / lam[coupled], bool(real), int(n_sites))


# ---------------------------------------------------------------------------------------------------------------
# Traced kernels: the sector BdG matrices, their eigensystems and the channel k-sums
# ---------------------------------------------------------------------------------------------------------------


class SectorSpec(NamedTuple):
    """Static description of a sector search (hashable: a static argument of the jitted search).

    ``chunks``/``chunk_size``: the k-points run in ``chunks`` chunks of ``chunk_size`` (the last one padded with
    k = 0 at weight 0). ``cache``: the grid is diagonalised once and its channel features kept for every
    evaluation; otherwise every evaluation diagonalises chunk by chunk.
    """

    hop_displacements: tuple
    pair_displacements: tuple
    kgrid: tuple | KMesh
    chunks: int
    chunk_size: int
    cache: bool
    real: bool  # real eigensystem (real host)
    real_sum: bool  # real k-sum (real host, one site, real V_0)
    reduced: bool = False  # the cache runs over given k-points and weights (grid orbits), SectorArrays.kpoints


class SectorArrays(NamedTuple):
    """The array inputs of a sector search (device arrays; a pytree): orbital hoppings and pairing, sites
    (n_s, dim), Q (n_s, m, r) and 1/lambda (r,) of V_0, and the grid indices (N_rep, dim) and weights (N_rep,)
    of the k-points the cache runs over when they are not the whole grid (grid orbits; None otherwise)."""

    hoppings: jax.Array
    pairing: jax.Array
    sites: jax.Array
    q: jax.Array
    inverse: jax.Array
    kpoints: jax.Array | None = None
    kweights: jax.Array | None = None


def plan_chunks(n_k: int, largest: int) -> tuple[int, int]:
    """(chunks, chunk_size) with chunk_size <= largest and the least padding."""
    chunks = max(1, -(-n_k // max(1, int(largest))))
    return chunks, -(-n_k // chunks)


def _phases(displacements, spec: SectorSpec, k=None):
    """exp(i k.d) for the displacements d (n_d, dim), as a function of j -> (c,). At k-points (c, dim) (one complex
    exponential per (k, d)); at grid points given as integer indices n (c, dim) (``k`` an integer array), or on the
    whole uniform grid (k=None; N in the order of :func:`~shibajax.brillouin_zone.monkhorst_pack`), from per-axis
    tables exp(2 pi i n_a d_a / L_a): then no transcendental function per (k, d)."""
    d = np.asarray(displacements, dtype=np.int64).reshape(len(displacements), -1)
    if k is not None and not jnp.issubdtype(k.dtype, jnp.integer):
        phases = jnp.exp(1j * (k @ jnp.asarray(d, jnp.float64).T))  # (c, n_d)
        return lambda j: phases[:, j]
    grid = spec.kgrid
    tables = []
    for axis, size in enumerate(grid):
        values, index = np.unique(d[:, axis], return_inverse=True)
        table = jnp.exp(2j * jnp.pi * (np.arange(size)[:, None] * values[None, :] % size) / size)  # (L_a, n_values)
        if k is not None:
            table = table[k[:, axis]]  # (c, n_values): a gather, no exponential
        tables.append((table, index))

    def phase(j):
        out = None
        for axis, (table, index) in enumerate(tables):
            column = table[:, index[j]]
            if k is None:  # broadcast over the grid's axes
                shape = [1] * len(grid)
                shape[axis] = grid[axis]
                column = column.reshape(shape)
            out = column if out is None else out * column
        return out.reshape(-1)

    return phase


def _fourier(mats, phase):
    """sum_d M_d exp(i k.d) for matrices ``mats`` (n_d, n, n) and the phases of :func:`_phases`: (n, n, c) with the
    k-points last (so that every elementwise kernel runs along k), one fused sum over d."""
    total = 0.0
    for j in range(mats.shape[0]):
        total = total + mats[j][:, :, None] * phase(j)[None, None, :]
    return total


def _sector_blocks(spec: SectorSpec, hoppings, pairing, k=None):
    """h0(k), -h0(-k)^* and Delta(k), each (n, n, c) (k last), at k-points (c, dim), grid indices (c, dim) (integer)
    or on the whole uniform grid (k=None)."""
    hop = _phases(spec.hop_displacements, spec, k)
    h0 = _fourier(hoppings, hop)
    hole = -_fourier(hoppings.conj(), hop)  # -h0(-k)^* = -sum_d t_d^* e^{ik.d}
    pair = _fourier(pairing, _phases(spec.pair_displacements, spec, k))
    if spec.real:
        return h0.real, hole.real, pair.real
    return h0, hole, pair


def sector_hamiltonian(spec: SectorSpec, hoppings, pairing, k=None):
    """H_r(k) = [[h0(k), Delta(k)], [Delta(k)^dagger, -h0(-k)^*]], (c, 2 n_orb, 2 n_orb) at k-points (c, dim) (or on
    the whole uniform grid, k=None); real when ``spec.real``."""
    h0, hole, pair = _sector_blocks(spec, hoppings, pairing, k)
    top = jnp.concatenate([h0, pair], axis=1)
    bottom = jnp.concatenate([jnp.swapaxes(pair.conj(), 0, 1), hole], axis=1)
    return jnp.moveaxis(jnp.concatenate([top, bottom], axis=0), -1, 0)


def eigh_2x2(a, d, b):
    """Eigenvalues (2, ...) ascending and eigenvectors (2, 2, ...) ([component, vector]) of the Hermitian
    [[a, b], [b^*, d]] (a, d real arrays), in closed form: e = (a + d)/2 -+ r, r = sqrt(h^2 + |b|^2), h = (a - d)/2;
    the upper vector is (h + r, b^*) for h >= 0 and (b, r - h) otherwise (the one without cancellation), the lower
    one orthogonal to it, (-y^*, x^*)."""
    mean, half = 0.5 * (a + d), 0.5 * (a - d)
    r = jnp.sqrt(half * half + (b * jnp.conj(b)).real)
    up = half >= 0
    x = jnp.where(up, half + r, b)
    y = jnp.where(up, jnp.conj(b), r - half)
    norm = jnp.sqrt((x * jnp.conj(x)).real + (y * jnp.conj(y)).real)
    ok = norm > 0
    safe = jnp.where(ok, norm, 1.0)
    x = jnp.where(ok, x / safe, 1.0)
    y = jnp.where(ok, y / safe, 0.0)
    vectors = jnp.stack([jnp.stack([-jnp.conj(y), x]), jnp.stack([jnp.conj(x), y])])
    return jnp.stack([mean - r, mean + r]), vectors


def sector_eigensystem(spec: SectorSpec, hoppings, pairing, k=None):
    """Eigenvalues (m, c) and eigenvectors (m, m, c) ([component, band, k]) of H_r at k-points (c, dim), or on the
    whole uniform grid (k=None); m = 2 n_orb: closed form for m = 2, LAPACK (:mod:`shibajax._linalg`) otherwise."""
    if hoppings.shape[-1] == 1:
        h0, hole, pair = _sector_blocks(spec, hoppings, pairing, k)
        return eigh_2x2(h0[0, 0].real, hole[0, 0].real, pair[0, 0])
    e, u = _linalg.eigh(sector_hamiltonian(spec, hoppings, pairing, k))
    return e.T, jnp.moveaxis(u, 0, -1)


def _features(spec: SectorSpec, u, k, w, sites, q):
    """Packed b_kn b_kn^dagger w_k for b_kn = sum_s e^{ik.R_s} Q_s^dagger U_kn, from u (m, m, c): (F, m c) real
    (band-major, as the eigenvalues (m, c) flattened), F = r(r+1)/2 for a real sum, else r^2 (:func:`_pack`)."""
    r = q.shape[-1]
    if sites.shape[0] == 1:  # one site: the phase drops out of b b^dagger
        b = jnp.einsum("ar,ank->rnk", q[0].conj(), u)
    else:
        phase = jnp.exp(1j * (jnp.asarray(sites, jnp.float64) @ k.T))  # (n_s, c)
        b = jnp.einsum("sar,sk,ank->rnk", q.conj(), phase, u)
    iu = np.triu_indices(r)
    outer = b[iu[0]] * b[iu[1]].conj() * w  # (P, m, c)
    if spec.real_sum:
        features = outer.real
    else:
        strict = np.triu_indices(r, 1)
        features = jnp.concatenate([outer.real, (b[strict[0]] * b[strict[1]].conj() * w).imag])
    return features.reshape(features.shape[0], -1)


def _unpack(features, r: int, real: bool):
    """(..., F) -> Hermitian (..., r, r): the upper triangle (real parts) and, unless real, the imaginary parts of
    the strict upper triangle (the inverse of the packing of :func:`_features`)."""
    iu = np.triu_indices(r)
    n_up = iu[0].size
    shape = features.shape[:-1] + (r, r)
    upper = jnp.zeros(shape, jnp.float64).at[..., iu[0], iu[1]].set(features[..., :n_up])
    full = upper + jnp.swapaxes(upper, -1, -2) - jnp.eye(r) * upper
    if real:
        return full
    strict = np.triu_indices(r, 1)
    imag = jnp.zeros(shape, jnp.float64).at[..., strict[0], strict[1]].set(features[..., n_up:])
    return jax.lax.complex(full, imag - jnp.swapaxes(imag, -1, -2))


def _kpoint_chunks(spec: SectorSpec):
    """k (chunks, chunk_size, dim) and weights (chunks, chunk_size); padding: k = 0 at weight 0."""
    return chunked_kpoints(spec.kgrid, spec.chunk_size)


def grid_cache(spec: SectorSpec, arrays: SectorArrays):
    """Diagonalise the whole grid once: (E (chunks, m chunk_size), features (chunks, F, m chunk_size)) and the gap
    edge min |E|. Runs over the KMesh's points, the grid orbits (``spec.reduced``: one point per orbit, weighted by
    its size; every point of an orbit has the same H_r, hence for one site the same terms), or the whole uniform
    grid. Padding entries have E at the first k-point and zero features (weight 0)."""
    hoppings, pairing, sites, q = arrays.hoppings, arrays.pairing, arrays.sites, arrays.q
    if spec.reduced:
        k, w = arrays.kpoints, arrays.kweights
        e, u = sector_eigensystem(spec, hoppings, pairing, k)
    elif isinstance(spec.kgrid, KMesh):
        k = jnp.asarray(spec.kgrid.points)
        w = jnp.asarray(spec.kgrid.weights)
        e, u = sector_eigensystem(spec, hoppings, pairing, k)
    else:
        k = monkhorst_pack(spec.kgrid) if sites.shape[0] > 1 else None  # the phases of several sites
        w = jnp.ones(math.prod(spec.kgrid))
        e, u = sector_eigensystem(spec, hoppings, pairing)
    m, n_k = e.shape
    gap = jnp.min(jnp.abs(e))
    features = _features(spec, u, k, w, sites, q).reshape(-1, m, n_k)  # (F, m, n_k)
    pad = spec.chunks * spec.chunk_size - n_k
    if pad:
        e = jnp.concatenate([e, jnp.broadcast_to(e[:, :1], (m, pad))], axis=1)
        features = jnp.concatenate([features, jnp.zeros(features.shape[:2] + (pad,))], axis=2)
    e = e.reshape(m, spec.chunks, spec.chunk_size).transpose(1, 0, 2).reshape(spec.chunks, -1)
    features = features.reshape(-1, m, spec.chunks, spec.chunk_size).transpose(2, 0, 1, 3)
    return (e, features.reshape(spec.chunks, features.shape[1], -1)), gap


def grid_gap(spec: SectorSpec, hoppings, pairing):
    """The grid's gap edge min_k min_n |E_n(k)|, diagonalising chunk by chunk (padding points left out)."""
    k, _ = _kpoint_chunks(spec)
    valid = (jnp.arange(k.shape[0] * k.shape[1]) < n_points(spec.kgrid)).reshape(k.shape[:2])

    def body(best, chunk):
        e, _ = sector_eigensystem(spec, hoppings, pairing, chunk[0])
        return jnp.minimum(best, jnp.min(jnp.where(chunk[1][None, :], jnp.abs(e), jnp.inf))), None

    best, _ = jax.lax.scan(body, jnp.asarray(jnp.inf), (k, valid))
    return best


def channel_sums(spec: SectorSpec, arrays: SectorArrays, x, max_power, cache=None, norm=1.0):
    """Q^dagger G_r(E)^p Q at real energies x (n_x,) inside the gap, for p = 1..max_power: a tuple of (n_x, r, r)
    (real symmetric when ``spec.real_sum``, else complex Hermitian). ``q``: (n_s, m, r); ``sites`` (n_s, dim) float.

    G_r^p = sum_{kn} [x - E_n(k)]^-p b_kn b_kn^dagger / norm is one real matrix product per chunk, resolvent rows
    (max_power n_x, m c) @ features (F, m c)^T, from the ``cache`` of :func:`grid_cache`, or diagonalising and
    building the features chunk by chunk (the whole grid or mesh)."""
    hoppings, pairing, sites, q = arrays.hoppings, arrays.pairing, arrays.sites, arrays.q
    x = jnp.asarray(x, jnp.float64)
    r = q.shape[-1]
    n_feat = r * (r + 1) // 2 if spec.real_sum else r * r

    def body(acc, chunk):
        if cache is None:
            kc, wc = chunk
            e, u = sector_eigensystem(spec, hoppings, pairing, kc)
            e, features = e.reshape(-1), _features(spec, u, kc, wc, sites, q)
        else:
            e, features = chunk
        resolvent = 1.0 / (x[:, None] - e[None, :])  # (n_x, m c)
        powers = [resolvent]
        for _ in range(1, max_power):
            powers.append(powers[-1] * resolvent)
        return acc + jnp.concatenate(powers) @ features.T, None

    xs = _kpoint_chunks(spec) if cache is None else cache
    acc, _ = jax.lax.scan(body, jnp.zeros((max_power * x.shape[0], n_feat)), xs)
    mats = _unpack(acc / norm, r, spec.real_sum).reshape(max_power, x.shape[0], r, r)
    return tuple(mats[p] for p in range(max_power))


# ---------------------------------------------------------------------------------------------------------------
# Back to the full Nambu basis
# ---------------------------------------------------------------------------------------------------------------


def full_amplitudes(plan: SectorPlan, n_orb: int, chi0: np.ndarray, chi1: np.ndarray) -> np.ndarray:
    """Sector amplitudes in the full Nambu basis: chi0 (R0, m0) of sector 0 and chi1 (R0, m1), given as the
    *sector-0* amplitudes of the mirrored level (-E), mapped to sector 1 by particle-hole symmetry
    (tau_y chi^*), embedded at spin 0 and 1 and rotated back (1 (x) u): (m0 + m1, n_sites, 4 n_orb)."""
    n_s = plan.n_sites
    r0 = n_s * 2 * n_orb
    flip = _hole_flip(n_s, n_orb)
    sector1 = flip @ chi1.conj()
    m = chi0.shape[1] + chi1.shape[1]
    rotated = np.zeros((r0, 2, m), np.complex128)
    rotated[:, 0, : chi0.shape[1]] = chi0
    rotated[:, 1, chi0.shape[1] :] = sector1
    full = np.einsum("st,atm->asm", plan.rotation, rotated).reshape(r0 * 2, m)
    return full.T.reshape(m, n_s, 4 * n_orb)
