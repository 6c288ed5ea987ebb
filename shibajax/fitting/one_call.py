"""One-call fits of Shiba energies: :func:`fit_energies` finds every set of couplings that puts one bound state of
each channel exactly on each measured peak, and says how many there are.

The problem is degenerate. One channel's Shiba energy E(J) falls from the gap edge to zero at its quantum phase
transition J_c and rises again beyond it, so |E| = target has two solutions, J < J_c (free spin) and J > J_c
(screened spin, u and v swapped); and which channel makes which peak is not fixed by the energies either. Five
peaks and five channels have up to 5! x 2^5 = 3840 exact solutions. :func:`fit_energies` enumerates them all,
checks each, and ranks them by extra data when given (peak heights: the model's |u|^2 and |v|^2 at the tip).

Method. Everything is evaluated at the target energies t_p, where a solution must have a level, so the Brillouin
zone is summed once, for G0 (and G0^2, and G0 to the tip positions) at t_p, t_p -+ w, 0 and the gap edge; no root
search runs. With V(theta) = sum_c theta_c B_c and a channel's couplings written in an orthonormal basis Q_c of
the range of its coupling matrices (b = Q_c^dagger B Q_c, g = Q_c^dagger G0 Q_c):

1. Channels that do not mix (Q_c^dagger G0(E) Q_d = 0 for c != d at every energy used, e.g. one channel per
   orbital of an orbital-diagonal host) factorise det[1 - V G0] into one determinant per channel. At fixed K,
   det[1 - (K b_K + J b_J) g(t_p)] = 0 is the pencil det(A - J b_J g) with A = 1 - K b_K g, so every J that binds
   a level of channel c at t_p is 1 / lambda for a real eigenvalue lambda of A^-1 b_J g(t_p): all branches at
   once, exactly, for all channels and targets in one batched eigenvalue call (as
   :meth:`~shibajax.fitting.ShibaEnergies.couplings_at`). The branch of a root is the number of critical
   couplings J_c (the same inversion at E = 0) below it. With ``fit="K,J"`` each peak's electron/hole asymmetry
   (u^2 - v^2) / (u^2 + v^2) fixes K as well: for each branch J(K) the asymmetry of the state at t_p is scanned on
   a grid of K and its crossings with the measured one are refined by bisection, vectorised over all of them.
2. Every combination (channel -> peak permutation, branch per channel) is a solution; for decoupled channels it is
   exact by construction and is checked below.
3. Channels that mix (the host couples their orbitals, or their form factors overlap): Gauss-Newton, vectorised
   over all starts, drives the full secular problem to a level at every t_p. The residual of peak p is
   E_p - t_p = -mu / mu', with mu the eigenvalue nearest zero of the Hermitian A_p = Lambda^-1 - Q^dagger G0(t_p) Q
   of the full V (Q, Lambda its eigenvectors and nonzero eigenvalues) and mu' = chi^dagger G0^2 chi (the first-order
   distance to the level); the Jacobian by forward differences. Starts: every combination of the channels-alone
   solutions (step 1 with the inter-channel blocks of G0 dropped), continued as those blocks are switched on, the
   same starts directly, and random ones in the box of couplings. Distinct converged solutions are kept; this
   search is not proven complete (the decoupled enumeration is).

Check of every solution (docs of :mod:`shibajax.bound_states`): the eigenvalues of A(E) increase monotonically with
E, so the number of levels in (E_1, E_2) is the number of negative eigenvalues of A(E_1) minus that of A(E_2)
(Sylvester's inertia), exactly, with no level missed between energies. A solution is exact when its levels in
(0, gap edge) are exactly one in each window (t_p - w, t_p + w) and none elsewhere, and |E_p - t_p| < ``tol``.
The state at t_p (null vector chi of A_p, psi(r) = sum_j G0(r - r_j, t_p) chi_j, normalised by chi^dagger G0^2
chi = 1) gives |u|^2 and |v|^2 at the tip positions for the ranking: chi^2 of the measured heights against
``scale * (|u|^2, |v|^2)`` with the scale fitted (heights are in arbitrary units).

Units: those of the model (meV for the Pb-like hosts, docs/conventions.md, "Fitting"); J > 0 by convention (for a
classical spin, J -> -J is the reversed spin and gives the same energies).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from shibajax.adatoms import Adatom
from shibajax.bound_states import EDGE_MARGIN, ZERO_COUPLING
from shibajax.brillouin_zone import (
    check_memory,
    default_chunk_size,
    describe_kgrid,
    gap_edge,
    n_points,
)
from shibajax.errors import FitError
from shibajax.fitting.energies import ShibaEnergies
from shibajax.fitting.hosts import adatom_couplings
from shibajax.fitting.spectrum import Couplings, coupling_basis
from shibajax.greens_function import bare_greens_sum, chunk_elements_per_k, green_sum_bytes, validate_displacements
from shibajax.impurities import Impurity
from shibajax.models.tight_binding import TightBindingModel
from shibajax.tmatrix import block_matrix, unique_displacements

#: An exact solution has |E_p - t_p| below this times the gap edge for every peak (default ``tol``): 1e-9 of a
#: 1.35 meV gap is ~1e-6 ueV, far below any measurement; the inversion itself is exact to rounding (~1e-14).
EXACT_TOL = 1e-9
#: Half-width of the window around each target in which its level is counted, relative to the gap edge. It must
#: exceed ``tol`` (the level is inside) and be below half the spacing of the targets (targets closer are refused).
WINDOW = 1e-7
#: Channels are decoupled when every inter-channel block of G0 (and overlap of their ranges) is below this times
#: the largest block: a symmetry zero comes out at rounding (~1e-16); a real coupling is O(1e-3) or more.
DECOUPLED_TOL = 1e-10
#: An eigenvalue of the inversion pencil is real when |Im| is below this times the largest |eigenvalue| (the
#: non-symmetric eigensolver leaves ~1e-15 on simple real eigenvalues, ~1e-8 on double ones, e.g. J_c at E = 0).
REAL_TOL = 1e-6
#: Relative distance below which two roots of one pencil are one (a double root: the +-E pair at J_c).
SAME_ROOT = 1e-6
#: Largest number of combinations (permutations x branch choices) enumerated.
MAX_COMBINATIONS = 2_000_000
#: Points of the K grid (fit="K,J") on which each branch's asymmetry is scanned, and bisection steps after it
#: (2^-60 of a grid step: rounding).
K_GRID = 201
BISECTIONS = 60
#: Gauss-Newton (coupled channels): steps, step halvings, and the relative forward-difference step.
GN_STEPS = 40
GN_HALVINGS = 4
FD_STEP = 1e-7
#: Gauss-Newton runs on to this fraction of the tolerance (then stops at a stall: rounding).
POLISH = 1e-4
#: Continuation for coupled channels: the inter-channel blocks of G0 switched on in these steps (0: each channel
#: alone, where the starts are exact for channels on orthogonal orbitals; 1: the full problem).
HOMOTOPY = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Items per chunk of the batched small-matrix checks (memory: chunk x energies x r^2 complex numbers).
CHUNK = 512


@dataclasses.dataclass(frozen=True)
class EnergySolution:
    """One exact solution of :func:`fit_energies`.

    Attributes:
        values: {coupling name: value} (energy units), e.g. {"K_0": 0.0, "J_0": 4.1, ...}.
        assignment: {channel: index of its peak in ``EnergyFit.targets``}.
        branches: {channel: branch}: 0 below the channel's quantum phase transition (J < J_c, free spin), 1 above
            it (screened spin), 2.. further ones of multi-orbital channels. For coupled channels, the branch of the
            decoupled start it converged from.
        energies: (n,) the model's level at each peak, in target order (energy units).
        residual: max_p |E_p - t_p| (energy units).
        u2, v2: (n, n_pos) |u|^2 and |v|^2 of each peak's state at the tip positions (per unit length of psi).
        score: chi^2 of ``extra`` against ``scale * (u2, v2)`` (None without extra data).
        scale: the fitted (or given) height scale (None without extra data).
    """

    values: dict
    assignment: dict
    branches: dict
    energies: np.ndarray
    residual: float
    u2: np.ndarray
    v2: np.ndarray
    score: float | None = None
    scale: float | None = None

    def couplings(self, kind: str = "J") -> dict:
        """{channel: value} of the couplings of one kind ("J" or "K")."""
        return {n.split("_", 1)[1]: v for n, v in self.values.items() if n.split("_", 1)[0] == kind}


@dataclasses.dataclass(frozen=True)
class EnergyFit:
    """Result of :func:`fit_energies`: every exact solution, ranked (best first).

    Attributes:
        solutions: the distinct exact solutions, ranked by ``ranked_by``.
        targets: (n,) the peak energies, in the order given (energy units).
        channels: the channel names (couplings ``K_<name>``, ``J_<name>``).
        fit: "J" or "K,J". decoupled: whether the channels do not mix (exact enumeration) or were solved by
            Gauss-Newton from decoupled starts.
        critical: {channel: J_c} quantum phase transitions at the fixed K (fit="J", decoupled channels; the
            smallest positive critical coupling), else {}.
        gap_edge: the grid's gap edge (energy units). tol: the exactness threshold used (energy units).
        ranked_by: "extra data (chi^2 of the peak heights)" or "none: all fit the energies exactly".
        n_candidates: combinations tried (permutations x branch choices, or Gauss-Newton starts).
        root_counts: (n_c, n) exact roots (branches) of each channel alone at each peak, within j_range.
        seconds: wall time of the call. kgrid: the grid or mesh. couplings: the :class:`Couplings` used.
    """

    solutions: tuple
    targets: np.ndarray
    channels: tuple
    fit: str
    decoupled: bool
    critical: dict
    gap_edge: float
    tol: float
    ranked_by: str
    n_candidates: int
    root_counts: np.ndarray
    seconds: float
    kgrid: object = dataclasses.field(repr=False)
    couplings: Couplings = dataclasses.field(repr=False)

    @property
    def n_exact(self) -> int:
        """Number of distinct exact solutions."""
        return len(self.solutions)

    @property
    def degenerate(self) -> bool:
        """True when the energies admit more than one set of couplings."""
        return self.n_exact > 1

    @property
    def best(self) -> EnergySolution:
        """The first-ranked solution (with extra data: the one that fits it best)."""
        if not self.solutions:
            raise FitError("fit_energies found no exact solution (see summary())")
        return self.solutions[0]

    def values_array(self) -> np.ndarray:
        """(n_exact, n_couplings) the solutions' couplings in the order of ``couplings.names``."""
        names = self.couplings.names
        return np.array([[s.values[n] for n in names] for s in self.solutions]).reshape(-1, len(names))

    def summary(self, n: int = 5) -> str:
        """The count, the degeneracy in words and the first ``n`` solutions."""
        t = ", ".join(f"{x:.6g}" for x in self.targets)
        how = "decoupled channels, exact enumeration" if self.decoupled else "coupled channels, Gauss-Newton"
        lines = [
            f"fit_energies: targets [{t}], channels {list(self.channels)} ({how}), fit {self.fit}, "
            f"kgrid {describe_kgrid(self.kgrid)}, gap edge {self.gap_edge:.6g}, {self.seconds:.2f} s",
        ]
        if self.critical:
            lines.append("  critical couplings J_c: " + ", ".join(f"{c}: {v:.6g}" for c, v in self.critical.items()))
        if not self.solutions:
            lines.append(
                f"  NO exact solution among {self.n_candidates} candidates (|E - target| < {self.tol:.2g}); exact "
                f"roots per channel (rows) and peak (columns), each channel alone: {self.root_counts.tolist()}. "
                "A zero row or column, or no permutation through nonzero entries, means no solution in j_range"
            )
            return "\n".join(lines)
        n_perm = len({tuple(s.assignment.values()) for s in self.solutions})
        n_branch = len({tuple(s.branches.values()) for s in self.solutions})
        if self.degenerate:
            lines.append(
                f"  DEGENERATE: {self.n_exact} distinct exact solutions (|E - target| < {self.tol:.2g}) from "
                f"{n_perm} channel -> peak orders and {n_branch} branch patterns (either side of each channel's "
                "quantum phase transition). The energies alone do not fix the couplings"
                + ("" if self.ranked_by.startswith("extra") else ": give extra= (peak heights) to rank them")
            )
        else:
            lines.append(f"  unique: 1 exact solution (|E - target| < {self.tol:.2g})")
        if not self.decoupled:
            lines.append(
                f"  coupled channels: found by Gauss-Newton from {self.n_candidates} starts (continued from the "
                "channels alone, direct, random); unlike the decoupled enumeration this is not proven complete"
            )
        lines.append(f"  ranked by: {self.ranked_by}")
        for i, s in enumerate(self.solutions[:n]):
            parts = [
                f"{c}->{self.targets[p]:.4g} J={s.values['J_' + c]:.6g}"
                + (f" K={s.values['K_' + c]:.4g}" if self.fit == "K,J" else "")
                + f" b{s.branches[c]}"
                for c, p in s.assignment.items()
            ]
            score = "" if s.score is None else f", chi^2 {s.score:.4g}"
            lines.append(f"  #{i + 1}: residual {s.residual:.1e}{score}: " + "; ".join(parts))
        if self.n_exact > n:
            lines.append(f"  ... {self.n_exact - n} more (EnergyFit.solutions)")
        return "\n".join(lines)


def _couplings_of(model, site_or_adatom, channels) -> tuple[Couplings, np.ndarray]:
    """Couplings of the scatterer, and the K each channel has there (0 for a bare site)."""
    if isinstance(site_or_adatom, Adatom):
        couplings = adatom_couplings(model, site_or_adatom, channels)
        k_of = {c.shape: float(c.K) for c in site_or_adatom.channels}
        return couplings, np.array([k_of[n.split("_", 1)[1]] for n in couplings.names[::2]])
    if isinstance(site_or_adatom, Impurity):
        if channels is not None:
            raise FitError("channels= is for a bare site or an Adatom: an Impurity brings its own channels")
        imp = site_or_adatom
        orbitals = [tuple(range(model.n_orb)) if c.orbitals is None else c.orbitals for c in imp.channels]
        couplings = coupling_basis(model, [imp.site], orbitals, spins=[np.asarray(imp.spin)])
        return couplings, np.array([float(c.K) for c in imp.channels])
    try:
        site = validate_displacements([site_or_adatom], model.dim, "site")
    except Exception as err:
        raise FitError(
            f"site_or_adatom = {site_or_adatom!r} must be a lattice site (a tuple of {model.dim} integers), a "
            "shibajax.Impurity or a shibajax.adatoms.Adatom"
        ) from err
    couplings = coupling_basis(model, site, channels)
    return couplings, np.zeros(len(couplings.names) // 2)


def _check_targets(targets, n_channels, names, top, window) -> np.ndarray:
    try:
        t = np.asarray(targets, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise FitError(f"targets = {targets!r} must be a list of positive peak energies (energy units)") from err
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)):
        raise FitError(f"targets = {np.asarray(targets).tolist()} must be a non-empty 1D list of finite energies")
    if t.size != n_channels:
        raise FitError(
            f"{t.size} target energies for {n_channels} channels {list(names)}: fit_energies fits one peak per "
            f"channel. Give {n_channels} energies, or choose the channels (channels=...)"
        )
    bad = t[(t <= 0) | (t >= top)]
    if bad.size:
        raise FitError(
            f"target energy {bad[0]:.6g} is outside the gap: Shiba energies lie in (0, {top:.6g}), the gap edge of "
            "this host on this k-grid (give the positive member of each +-E pair, below the gap edge; a peak "
            "measured with a superconducting tip is at Delta_tip + E)"
        )
    order = np.sort(t)
    if t.size > 1 and np.min(np.diff(order)) <= 4 * window:
        i = int(np.argmin(np.diff(order)))
        raise FitError(
            f"targets {order[i]:.9g} and {order[i + 1]:.9g} coincide (closer than {4 * window:.2g}): a degenerate "
            "level, which fit_energies does not assign. Give distinct peak energies"
        )
    return t


def _check_extra(extra, n, model, sites, fit):
    """(u2 (n, P) or None, v2, sigma (n, P), scale or None, positions (P, dim))."""
    default_pos = np.asarray(sites[:1], np.int64)
    if extra is None:
        if fit == "K,J":
            raise FitError(
                "fit='K,J' has two unknowns per channel but one energy per peak: give extra={'u2': [...], "
                "'v2': [...]} (each peak's height at +E and at -E; with a normal tip they measure |u|^2 and |v|^2), "
                "whose asymmetry fixes K; or fit='J' with K fixed (K=...)"
            )
        return None, None, None, None, default_pos
    if not isinstance(extra, Mapping):
        raise FitError(f"extra must be a dict with 'u2' and 'v2' (peak heights at +E and -E); got {type(extra)}")
    unknown = set(extra) - {"u2", "v2", "positions", "sigma", "scale"}
    if unknown:
        raise FitError(f"extra has unknown keys {sorted(unknown)}: use 'u2', 'v2', 'positions', 'sigma', 'scale'")
    if "u2" not in extra or "v2" not in extra:
        raise FitError("extra needs both 'u2' and 'v2': the heights of each peak at +E (electron) and -E (hole)")
    pos = default_pos
    if extra.get("positions") is not None:
        pos = validate_displacements(extra["positions"], model.dim, "extra['positions']")
    shape = (n, pos.shape[0])
    out = []
    for key in ("u2", "v2"):
        a = np.asarray(extra[key], np.float64)
        a = a.reshape(n, 1) if a.shape == (n,) and pos.shape[0] == 1 else a
        if a.shape != shape or not np.all(np.isfinite(a)) or np.any(a < 0):
            raise FitError(
                f"extra['{key}'] must be {shape} finite non-negative heights (one per peak, in target order, and "
                f"per tip position); got shape {np.shape(extra[key])}"
            )
        out.append(a)
    if np.any(out[0] + out[1] <= 0):
        raise FitError("extra: every peak needs u2 + v2 > 0 (a height at +E or -E)")
    sigma = np.broadcast_to(np.asarray(extra.get("sigma", 1.0), np.float64), shape)
    if not np.all(np.isfinite(sigma) & (sigma > 0)):
        raise FitError(f"extra['sigma'] = {extra.get('sigma')!r} must be positive (scalar or {shape})")
    scale = extra.get("scale")
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        raise FitError(f"extra['scale'] = {scale!r} must be a positive number (None: fitted)")
    return out[0], out[1], sigma, scale, pos


def _check_fixed_k(k, default, names) -> np.ndarray:
    n = len(names)
    if k is None:
        return np.asarray(default, np.float64)
    if isinstance(k, Mapping):
        unknown = set(k) - set(names)
        if unknown:
            raise FitError(f"K has unknown channels {sorted(unknown)}: the channels are {list(names)}")
        return np.array([float(k.get(c, d)) for c, d in zip(names, default, strict=True)])
    a = np.broadcast_to(np.asarray(k, np.float64), (n,)) if np.ndim(k) == 0 else np.asarray(k, np.float64)
    if a.shape != (n,) or not np.all(np.isfinite(a)):
        raise FitError(f"K = {k!r} must be a number, {n} numbers (one per channel {list(names)}) or a dict")
    return a.copy()


# --- small-matrix kernels (host NumPy, batched over leading dimensions) --------------------------------------------


def _coupling_roots(fixed, b, g, lo, hi) -> np.ndarray:
    """x with det[1 - (fixed + x b) g] = 0, lo < x < hi: (N, r) ascending, NaN-padded; double roots once.

    fixed, g: (N, r, r); b: (r, r). 1/x are the real nonzero eigenvalues of (1 - fixed g)^-1 b g."""
    eye = np.eye(g.shape[-1])
    m = np.linalg.solve(eye - fixed @ g, b @ g)
    lam = np.linalg.eigvals(m)
    scale = np.max(np.abs(lam), axis=-1, keepdims=True)
    real = (np.abs(lam.imag) <= REAL_TOL * scale) & (np.abs(lam) > REAL_TOL * scale)
    x = np.where(real, 1.0 / np.where(real, lam.real, 1.0), np.nan)
    x = np.sort(np.where((x > lo) & (x < hi), x, np.nan), axis=-1)
    same = np.abs(np.diff(x, axis=-1)) <= SAME_ROOT * np.abs(x[..., 1:])
    x[..., 1:] = np.where(same, np.nan, x[..., 1:])
    return np.sort(x, axis=-1)


def _hermitian_form(v):
    """V = w diag(lam) w^dagger (N, r, r) -> w, 1/lam on coupled directions (a constant elsewhere), mask."""
    lam, w = np.linalg.eigh(v)
    scale = np.max(np.abs(lam), axis=-1, keepdims=True)
    coupled = np.abs(lam) > ZERO_COUPLING * scale
    inv = np.where(coupled, 1.0 / np.where(coupled, lam, 1.0), 1.0 / np.where(scale > 0, scale, 1.0))
    return w, inv, coupled[..., :, None] & coupled[..., None, :]


def _a_matrix(form, g, per_energy=False):
    """A = Lambda^-1 - w^dagger g w (decoupled directions left out), Hermitian. g: (N, r, r), one energy per item,
    or with ``per_energy`` (n_z, r, r) shared by all items -> A (N, n_z, r, r)."""
    w, inv, mask = form
    wh = np.swapaxes(w.conj(), -1, -2)
    if per_energy:
        w, wh, inv, mask = w[:, None], wh[:, None], inv[:, None], mask[:, None]
    a = inv[..., :, None] * np.eye(inv.shape[-1]) - np.where(mask, wh @ g @ w, 0.0)
    return 0.5 * (a + np.swapaxes(a.conj(), -1, -2))


def _negative_counts(v, g) -> np.ndarray:
    """(N, n_z) number of negative eigenvalues of A(E) for each V (N, r, r) at each energy, g (n_z, r, r)."""
    out = [np.zeros((0, g.shape[0]), int)]
    for s in range(0, v.shape[0], CHUNK):
        a = _a_matrix(_hermitian_form(v[s : s + CHUNK]), g, per_energy=True)
        out.append(np.sum(np.linalg.eigvalsh(a) < 0, axis=-1))
    return np.concatenate(out)


def _states(v, g, g2, gpos, n_orb):
    """The state at one energy per item: v, g, g2 (N, r, r), gpos (N, P M, r) ->
    dE (N,) first-order offset of the nearest level, chi (N, r), u2, v2 (N, P)."""
    form = _hermitian_form(v)
    mu, x = np.linalg.eigh(_a_matrix(form, g))
    k = np.argmin(np.abs(mu), axis=-1)
    mu_k = np.take_along_axis(mu, k[:, None], axis=-1)[:, 0]
    x_k = np.take_along_axis(x, k[:, None, None], axis=-1)[..., 0]
    chi = np.einsum("nab,nb->na", form[0], x_k)
    slope = np.real(np.einsum("na,nab,nb->n", chi.conj(), g2, chi))
    psi = np.einsum("npa,na->np", gpos, chi) / np.sqrt(slope)[:, None]
    psi = np.abs(psi.reshape(psi.shape[0], -1, 4 * n_orb)) ** 2
    half = 2 * n_orb
    return -mu_k / slope, chi, psi[..., :half].sum(-1), psi[..., half:].sum(-1)


def _asymmetry(u2, v2):
    u, v = u2.sum(-1), v2.sum(-1)
    return (u - v) / (u + v)


# --- the channel spaces and the Green's functions at the target energies ------------------------------------------


@dataclasses.dataclass
class _Space:
    """One search space: an orthonormal basis q (R, r), the coupling matrices in it (n_c2, r, r), and G0 there at
    the energies (n_z, r, r), G0^2 and G0 to the tip positions at the targets."""

    q: np.ndarray
    basis: np.ndarray
    g: np.ndarray
    g2: np.ndarray
    gpos: np.ndarray


def _space(q, basis, g, g2, gpos) -> _Space:
    qh = q.conj().T
    return _Space(q, qh @ basis @ q, qh @ g @ q, qh @ g2 @ q, gpos @ q)


def _range_basis(mats) -> np.ndarray:
    u, sv, _ = np.linalg.svd(np.concatenate(list(mats), axis=1), full_matrices=False)
    return u[:, sv > 1e-8 * max(float(sv[0]), 1e-300)]


def _is_decoupled(qs, g) -> bool:
    """Whether every inter-channel block of G0 (and overlap of the channels' ranges) is below DECOUPLED_TOL
    relative to the largest element of G0, at every energy of g (n_z, R, R)."""
    scale = max(float(np.max(np.abs(g))), 1e-300)
    worst = 0.0
    for i, j in itertools.combinations(range(len(qs)), 2):
        overlap = float(np.max(np.abs(qs[i].conj().T @ qs[j])))
        block = float(np.max(np.abs(qs[i].conj().T @ g @ qs[j]))) / scale
        worst = max(worst, overlap, block)
    return worst < DECOUPLED_TOL


# --- per-channel candidates ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Candidates:
    """Per channel c, peak p and branch slot b (n_c, n, n_b): K, J (NaN: none), branch label, exactness in the
    channel's own space (valid), signed offset E - t of the level, and the state's u2, v2 (..., P)."""

    k: np.ndarray
    j: np.ndarray
    branch: np.ndarray
    valid: np.ndarray
    offset: np.ndarray
    u2: np.ndarray
    v2: np.ndarray


class _Setup(NamedTuple):
    """What the per-channel and coupled solvers share: n targets, the J range (lo, hi), n_orb, the indices of
    E = 0 and the gap edge in the energy list, the windows' lower and upper indices (n,), the tolerance, the fit
    mode, the measured asymmetries (n,) or None."""

    n: int
    lo: float
    hi: float
    n_orb: int
    z0: int
    ztop: int
    below: np.ndarray
    above: np.ndarray
    tol: float
    fit: str
    asym: np.ndarray | None


def _critical(sp: _Space, c: int, kvals, st: _Setup) -> np.ndarray:
    """(N, r) critical couplings J_c of channel c (levels at E = 0) at K values (N,), ascending, NaN-padded."""
    g0 = np.broadcast_to(sp.g[st.z0], (kvals.size,) + sp.g.shape[1:])
    return _coupling_roots(kvals[:, None, None] * sp.basis[2 * c], sp.basis[2 * c + 1], g0, st.lo, st.hi)


def _branch_of(sp: _Space, c: int, p, kv, b, st: _Setup):
    """J of branch slot b (the b-th smallest root) at targets p with K = kv (all (M,)); NaN where there is none."""
    roots = _coupling_roots(kv[:, None, None] * sp.basis[2 * c], sp.basis[2 * c + 1], sp.g[p], st.lo, st.hi)
    return np.where(b < roots.shape[-1], roots[np.arange(kv.size), np.minimum(b, roots.shape[-1] - 1)], np.nan)


def _alpha(sp: _Space, c: int, p, kv, jv, st: _Setup):
    """Electron/hole asymmetry of the state at targets p for couplings (kv, jv) (M,); NaN where jv is NaN."""
    out = np.full(kv.size, np.nan)
    ok = np.isfinite(jv)
    if ok.any():
        v = kv[ok, None, None] * sp.basis[2 * c] + jv[ok, None, None] * sp.basis[2 * c + 1]
        _, _, u2, v2 = _states(v, sp.g[p[ok]], sp.g2[p[ok]], sp.gpos[p[ok]], st.n_orb)
        out[ok] = _asymmetry(u2, v2)
    return out


def _k_solutions(sp: _Space, c: int, k_range, st: _Setup):
    """fit="K,J": every (K, J) of channel c whose state at t_p has the measured asymmetry: per J branch, a scan of K
    and bisection of each crossing, all brackets at once. Returns K, J (n, n_slots), NaN-padded."""
    n, asym = st.n, st.asym
    kg = np.linspace(k_range[0], k_range[1], K_GRID)
    p_all = np.repeat(np.arange(n), K_GRID)
    fixed = np.tile(kg, n)[:, None, None] * sp.basis[2 * c]
    roots = _coupling_roots(fixed, sp.basis[2 * c + 1], sp.g[p_all], st.lo, st.hi).reshape(n, K_GRID, -1)
    p_i, k_i, b_i = np.nonzero(np.isfinite(roots))
    f = np.full(roots.shape, np.nan)
    f[p_i, k_i, b_i] = _alpha(sp, c, p_i, kg[k_i], roots[p_i, k_i, b_i], st) - asym[p_i]
    cross = np.isfinite(f[:, :-1]) & np.isfinite(f[:, 1:]) & (np.sign(f[:, :-1]) != np.sign(f[:, 1:]))
    pc, kc, bc = np.nonzero(cross)  # K in [kg[kc], kg[kc + 1]] on branch slot bc at target pc
    k_lo, k_hi, f_lo = kg[kc], kg[kc + 1], f[pc, kc, bc]
    for _ in range(BISECTIONS):
        mid = 0.5 * (k_lo + k_hi)
        fm = _alpha(sp, c, pc, mid, _branch_of(sp, c, pc, mid, bc, st), st) - asym[pc]
        left = np.isfinite(fm) & (np.sign(fm) == np.sign(f_lo))
        k_lo, f_lo, k_hi = np.where(left, mid, k_lo), np.where(left, fm, f_lo), np.where(left, k_hi, mid)
    k_root = 0.5 * (k_lo + k_hi)
    j_root = _branch_of(sp, c, pc, k_root, bc, st)
    slot = np.array([np.sum(pc[:i] == pc[i]) for i in range(pc.size)], int)  # crossings numbered per target
    width = int(slot.max()) + 1 if slot.size else 1
    kk, jj = np.full((n, width), np.nan), np.full((n, width), np.nan)
    kk[pc, slot], jj[pc, slot] = k_root, j_root
    return kk, jj


def _channel_candidates(sp: _Space, c: int, k_fixed: float, k_range, st: _Setup):
    """Every (K, J) of channel c that puts one of its levels at each target (the channel alone: exact when the
    channels are decoupled), with its branch, exactness check (one level in (0, gap edge), at t_p) and state.
    Returns the columns of :class:`_Candidates` for this channel, (n, n_b) (and (n, n_b, P))."""
    n = st.n
    bk, bj = sp.basis[2 * c], sp.basis[2 * c + 1]
    if st.fit == "K,J":
        kk, jj = _k_solutions(sp, c, k_range, st)
    else:
        g_t = sp.g[:n]
        jj = _coupling_roots(np.broadcast_to(k_fixed * bk, g_t.shape), bj, g_t, st.lo, st.hi)
        kk = np.where(np.isfinite(jj), k_fixed, np.nan)
    n_b = jj.shape[-1]
    n_pos = sp.gpos.shape[1] // (4 * st.n_orb)
    branch = np.zeros((n, n_b), int)
    valid = np.zeros((n, n_b), bool)
    offset = np.full((n, n_b), np.inf)
    u2, v2 = np.full((n, n_b, n_pos), np.nan), np.full((n, n_b, n_pos), np.nan)
    p_i, b_i = np.nonzero(np.isfinite(jj))
    if p_i.size:
        kv, jv = kk[p_i, b_i], jj[p_i, b_i]
        v = kv[:, None, None] * bk + jv[:, None, None] * bj
        branch[p_i, b_i] = np.sum(_critical(sp, c, kv, st) < jv[:, None], axis=-1)
        de, _, u2[p_i, b_i], v2[p_i, b_i] = _states(v, sp.g[p_i], sp.g2[p_i], sp.gpos[p_i], st.n_orb)
        counts = _negative_counts(v, sp.g)
        rows = np.arange(p_i.size)
        total = counts[:, st.z0] - counts[:, st.ztop]
        own = counts[rows, st.below[p_i]] - counts[rows, st.above[p_i]]
        valid[p_i, b_i] = (total == 1) & (own == 1) & (np.abs(de) < st.tol)
        offset[p_i, b_i] = de
    return kk, jj, branch, valid, offset, u2, v2


def _stack_candidates(per_channel) -> _Candidates:
    n_b = max(c[1].shape[-1] for c in per_channel)

    def pad(a, fill):
        width = [(0, 0), (0, n_b - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
        return np.pad(a, width, constant_values=fill)

    fills = (np.nan, np.nan, 0, False, np.inf, np.nan, np.nan)
    cols = [np.stack([pad(c[i], fills[i]) for c in per_channel]) for i in range(7)]
    return _Candidates(*cols)


def _combinations(valid) -> np.ndarray:
    """(N, n_c, 2) every (peak, branch slot) per channel with all entries valid: permutations x branch choices."""
    n_c, n, n_b = valid.shape
    count = math.factorial(n) * n_b**n_c
    if count > MAX_COMBINATIONS:
        raise FitError(
            f"{math.factorial(n)} channel -> peak orders x {n_b}^{n_c} branch choices = {count:.3g} combinations, "
            f"more than {MAX_COMBINATIONS:.3g}: fit fewer channels at a time, or narrow j_range / k_range"
        )
    perms = np.array(list(itertools.permutations(range(n))), int)  # (n!, n): channel c -> peak perms[:, c]
    choices = np.stack(np.meshgrid(*[np.arange(n_b)] * n_c, indexing="ij"), -1).reshape(-1, n_c)
    ok = valid[np.arange(n_c), perms[:, None, :], choices[None, :, :]].all(-1)  # (n!, n_b^n_c)
    i, j = np.nonzero(ok)
    return np.stack([perms[i], choices[j]], axis=-1)


# --- coupled channels: Gauss-Newton on the secular problem at the target energies ---------------------------------


def _start_box(cand, lo, hi, k_range):
    """(J low, J high, K low, K high) of the random starts: J up to 3x the largest decoupled candidate (within
    j_range), K within +-2x the largest |K| candidate or k_range."""
    j = cand.j[np.isfinite(cand.j)]
    j_hi = min(hi, 3.0 * float(np.max(j))) if j.size else (hi if np.isfinite(hi) else 10.0 * max(lo, 1.0))
    j_lo = max(lo, 0.0) if lo >= 0 else lo
    k = np.abs(cand.k[np.isfinite(cand.k)])
    k_hi = 2.0 * float(np.max(k)) if k.size and np.max(k) > 0 else 1.0
    if k_range is not None:
        return j_lo, j_hi, float(k_range[0]), float(k_range[1])
    return j_lo, j_hi, -k_hi, k_hi


def _full_residuals(theta, sp: _Space, st: _Setup):
    """Residuals (N, n or 2n) E_p - t_p (and asymmetry - measured) of couplings theta (N, n_c2) in the full space."""
    v = np.einsum("nc,crs->nrs", theta, sp.basis)
    out_e, out_a = [], []
    for p in range(st.n):  # targets: a handful; each call is batched over all starts
        de, _, u2, v2 = _states_at(v, sp, p, st.n_orb)
        out_e.append(de)
        out_a.append(_asymmetry(u2, v2))
    res = np.stack(out_e, -1)
    if st.asym is not None:
        res = np.concatenate([res, np.stack(out_a, -1) - st.asym], axis=-1)
    return res


def _states_at(v, sp: _Space, p: int, n_orb: int):
    """:func:`_states` of every V (N, r, r) at target p of the space."""
    shape = (v.shape[0],) + sp.gpos.shape[1:]
    g, g2 = np.broadcast_to(sp.g[p], v.shape), np.broadcast_to(sp.g2[p], v.shape)
    return _states(v, g, g2, np.broadcast_to(sp.gpos[p], shape), n_orb)


def _gauss_newton(theta0, free, sp: _Space, st: _Setup):
    """Gauss-Newton from every start at once (forward-difference Jacobian, step halving); returns theta (N, n_c2)
    and converged (N,) (energy residuals below tol, asymmetry residuals below 1e-9)."""
    theta = theta0.copy()
    e_tol = np.full(st.n, st.tol) if st.asym is None else np.concatenate([np.full(st.n, st.tol), np.full(st.n, 1e-9)])

    def evaluate(th):
        with np.errstate(invalid="ignore", divide="ignore"):
            r = _full_residuals(th, sp, st)
        return np.where(np.isfinite(r), r, np.inf)

    res = evaluate(theta)
    active = np.ones(theta.shape[0], bool)
    for _ in range(GN_STEPS):  # on to POLISH x tol (quadratic convergence: one or two more steps), or a stall
        active &= ~np.all(np.abs(res) < POLISH * e_tol, axis=-1) & np.all(np.isfinite(res), axis=-1)
        if not active.any():
            break
        th, r = theta[active], res[active]
        h = FD_STEP * np.maximum(np.abs(th[:, free]), np.max(np.abs(th), axis=-1, keepdims=True))
        jac = np.empty(r.shape + (len(free),))
        for i, c in enumerate(free):  # one batched evaluation per free coupling
            shifted = th.copy()
            shifted[:, c] += h[:, i]
            jac[..., i] = (evaluate(shifted) - r) / h[:, i, None]
        jac = np.where(np.isfinite(jac), jac, 0.0)
        step = np.einsum("nij,nj->ni", np.linalg.pinv(jac), r)
        norm0 = np.linalg.norm(r / e_tol, axis=-1)
        best_th, best_r = th, r
        todo = np.ones(th.shape[0], bool)
        lam = 1.0
        for _ in range(GN_HALVINGS):
            trial = th.copy()
            trial[:, free] = th[:, free] - lam * step
            tr = evaluate(trial)
            better = todo & (np.linalg.norm(tr / e_tol, axis=-1) < norm0)
            best_th = np.where(better[:, None], trial, best_th)
            best_r = np.where(better[:, None], tr, best_r)
            todo &= ~better
            lam *= 0.5
            if not todo.any():
                break
        stalled = todo  # no step lowered the residual: stop these starts
        theta[active], res[active] = best_th, best_r
        idx = np.flatnonzero(active)
        active[idx[stalled]] = False
    return theta, np.all(np.abs(res) < e_tol, axis=-1)


# --- the call ------------------------------------------------------------------------------------------------------


def _coupled_solutions(cand: _Candidates, spaces, qs, full: _Space, k_fixed, k_range, n_starts, st: _Setup):
    """Channels that mix: Gauss-Newton on the full problem from (a) every combination of the channels-alone
    candidates, continued from the channels alone to the full G0 (HOMOTOPY), (b) the same starts directly and
    (c) ``n_starts`` random starts in the box of couplings; the converged ones are checked (level counts), the
    distinct exact ones kept. Returns K, J, branches, channel -> peak (N, n_c), residual (N,), offsets E - t (N, n),
    u2, v2 (N, n, P) and the number of starts."""
    n_c, n = len(qs), st.n
    i_k, i_j = np.arange(n_c) * 2, np.arange(n_c) * 2 + 1
    combos = _combinations(np.isfinite(cand.j))
    rows = np.arange(n_c)
    p_of, b_of = combos[..., 0], combos[..., 1]
    theta0 = np.zeros((combos.shape[0], 2 * n_c))
    theta0[:, i_k] = cand.k[rows, p_of, b_of] if st.fit == "K,J" else k_fixed
    theta0[:, i_j] = cand.j[rows, p_of, b_of]
    free = list(i_j) if st.fit == "J" else sorted([*i_k, *i_j])
    # G0 of the channels alone, in the full space (q^dagger P_c G P_c q summed over channels)
    proj = [full.q.conj().T @ q for q in qs]  # (r, r_c)
    alone = [sum(pc @ pc.conj().T @ g @ pc @ pc.conj().T for pc in proj) for g in (full.g, full.g2)]
    theta = theta0
    for lam in HOMOTOPY:  # (a) continuation from the channels alone (inter-channel blocks of G0 off)
        g, g2 = (a + lam * (b - a) for a, b in zip(alone, (full.g, full.g2), strict=True))
        theta, converged = _gauss_newton(theta, free, _Space(full.q, full.basis, g, g2, full.gpos), st)
    # (b), (c): strongly overlapping channels: a continuation path can end where two solutions meet, and the
    # channels-alone starts can be far off
    box = _start_box(cand, st.lo, st.hi, k_range if st.fit == "K,J" else None)
    rng = np.random.default_rng(0)
    extra = np.zeros((n_starts, 2 * n_c))
    extra[:, i_j] = rng.uniform(box[0], box[1], (n_starts, n_c))
    extra[:, i_k] = rng.uniform(box[2], box[3], (n_starts, n_c)) if st.fit == "K,J" else k_fixed
    direct, direct_ok = _gauss_newton(np.concatenate([theta0, extra]), free, full, st)
    theta = np.concatenate([theta, direct])[np.concatenate([converged, direct_ok])]
    n_tried = combos.shape[0] * 2 + n_starts
    theta = theta[np.all((theta[:, i_j] > st.lo) & (theta[:, i_j] < st.hi), axis=-1)]
    # check: exactly one level in each target's window and none elsewhere in (0, gap edge)
    v = np.einsum("nc,crs->nrs", theta, full.basis)
    counts = _negative_counts(v, full.g)
    total = counts[:, st.z0] - counts[:, st.ztop]
    own = counts[:, st.below] - counts[:, st.above]
    states = [_states_at(v, full, p, st.n_orb) for p in range(n)]  # targets; each batched over all solutions
    de = np.stack([x[0] for x in states], -1).reshape(-1, n)
    chi = np.stack([x[1] for x in states], 1).reshape(v.shape[0], n, -1)
    u2m = np.stack([x[2] for x in states], 1).reshape(v.shape[0], n, -1)
    v2m = np.stack([x[3] for x in states], 1).reshape(v.shape[0], n, -1)
    exact = (total == n) & np.all(own == 1, axis=-1) & np.all(np.abs(de) < st.tol, axis=-1)
    theta, de, chi, u2m, v2m = theta[exact], de[exact], chi[exact], u2m[exact], v2m[exact]
    key = np.round(theta / max(float(np.max(np.abs(theta), initial=0.0)), 1e-300), 7)
    first = np.sort(np.unique(key, axis=0, return_index=True)[1])  # distinct solutions (starts converge to one)
    theta, de, chi, u2m, v2m = theta[first], de[first], chi[first], u2m[first], v2m[first]
    # assignment: the permutation channel -> peak that carries the most amplitude of the peaks' states
    weights = np.stack([np.sum(np.abs(np.einsum("ac,npa->npc", pc.conj(), chi)) ** 2, -1) for pc in proj], -1)
    weights = weights / np.maximum(weights.sum(-1, keepdims=True), 1e-300)  # (N, n peaks, n_c)
    perms = np.array(list(itertools.permutations(range(n))), int)  # channel c -> peak perms[:, c]
    carried = weights[:, perms, np.arange(n_c)].sum(-1)  # (N, n!)
    p_of = perms[np.argmax(carried, axis=-1)] if theta.shape[0] else np.zeros((0, n_c), int)
    # branch: the channel-alone critical couplings below J (its quantum phase transition without the others)
    branches = np.zeros((theta.shape[0], n_c), int)
    for c in range(n_c):  # channels
        crit = _critical(spaces[c], c, theta[:, i_k[c]], st)
        branches[:, c] = np.sum(crit < theta[:, i_j[c], None], axis=-1)
    residual = np.abs(de).max(-1, initial=0.0)
    return theta[:, i_k], theta[:, i_j], branches, p_of, residual, de, u2m, v2m, n_tried


def fit_energies(
    model: TightBindingModel,
    site_or_adatom,
    targets: Sequence[float],
    *,
    kgrid,
    channels=None,
    fit: str = "J",
    K=None,
    extra: Mapping | None = None,
    j_range: tuple[float, float] = (0.0, math.inf),
    k_range: tuple[float, float] | None = None,
    tol: float | None = None,
    n_starts: int = 1000,
) -> EnergyFit:
    """Every set of couplings that puts one level of each channel exactly on each peak, ranked; one call.

    Args:
        model: the host (with a full gap; energy units, e.g. meV).
        site_or_adatom: a lattice site (tuple of ints; channels: one per orbital, or ``channels``), a
            :class:`shibajax.Impurity` (its channels' orbitals, spin and K), or a :class:`shibajax.adatoms.Adatom`
            (its orbital-shaped channels, spin and K; ``channels``: a subset of its shapes).
        targets: (n,) positive peak energies inside the gap, one per channel (energy units).
        kgrid: k-grid (tuple) or :class:`~shibajax.brillouin_zone.KMesh`.
        channels: for a site, orbital sets (default one channel per orbital); for an adatom, shape names.
        fit: "J" (J per channel free, K fixed at ``K``) or "K,J" (both free; needs ``extra``, whose
            electron/hole asymmetry per peak fixes K).
        K: fixed potential scattering for fit="J": a number, one per channel, or {channel: K}; default the
            scatterer's own (0 for a bare site).
        extra: data to rank the solutions by (and, for fit="K,J", to solve for K): {"u2": (n,) or (n, P) heights
            of each peak at +E, "v2": the same at -E (a normal tip measures |u|^2 and |v|^2), "positions": (P, dim)
            tip sites (default the first impurity site), "sigma": their errors (default 1), "scale": the height
            per unit |u|^2 (default fitted)}. Peaks in target order.
        j_range: allowed J (default J > 0, the convention). k_range: K scanned for fit="K,J" (default
            +-5 J_c(K = 0) per channel).
        tol: exactness threshold on |E - target| (energy units); default ``EXACT_TOL`` times the gap edge.
        n_starts: coupled channels only: random Gauss-Newton starts in the box of couplings (J up to 3x the
            largest decoupled solution), besides the n! x branches decoupled starts and their continuations.

    Returns:
        :class:`EnergyFit` with every distinct exact solution (couplings, channel -> peak assignment, branch per
        channel, residual, model |u|^2 and |v|^2), ranked by ``extra`` when given; ``degenerate`` and
        ``summary()`` say how many there are.

    Raises:
        FitError: targets outside the gap, not one per channel, or coinciding; bad ``fit``, ``K``, ``extra``.
        NoGapError: the host has no full gap.

    Example:
        >>> import shibajax
        >>> from shibajax.fitting import fit_energies
        >>> m = shibajax.models.square(mu=-1.0, delta=0.3)
        >>> res = fit_energies(m, (0, 0), [0.1], kgrid=(12, 12))
        >>> res.n_exact, res.degenerate, sorted(s.branches["0"] for s in res.solutions)
        (2, True, [0, 1])
    """
    start = time.perf_counter()
    if fit not in ("J", "K,J"):
        raise FitError(f"fit = {fit!r}: choose 'J' (J free, K fixed) or 'K,J' (both free, with extra= heights)")
    couplings, k_default = _couplings_of(model, site_or_adatom, channels)
    fn = ShibaEnergies(model, couplings, kgrid=kgrid)  # checks the grid and the gap (NoGapError), sets up geometry
    names = tuple(n.split("_", 1)[1] for n in couplings.names[::2])
    n_c = len(names)
    lo, hi = (float(x) for x in j_range)
    if not (lo < hi):
        raise FitError(f"j_range = {j_range!r} must be (low, high) with low < high (energy units)")
    gap = float(gap_edge(model, fn.kgrid))
    top = gap * (1.0 - EDGE_MARGIN)
    window = WINDOW * gap
    tol = EXACT_TOL * gap if tol is None else float(tol)
    if not (0 < tol < window):
        raise FitError(f"tol = {tol!r} must lie in (0, {window:.3g}) (the counting window, WINDOW x gap edge)")
    if isinstance(n_starts, bool) or not isinstance(n_starts, int | np.integer) or n_starts < 0:
        raise FitError(f"n_starts = {n_starts!r} must be an integer >= 0 (random starts for coupled channels)")
    t = _check_targets(targets, n_c, names, top, window)
    n = t.size
    k_fixed = _check_fixed_k(K, k_default, names)
    if fit == "K,J" and K is not None:
        raise FitError("K= fixes K for fit='J'; with fit='K,J' K is fitted (narrow it with k_range=)")
    u2d, v2d, sigma, scale_fixed, positions = _check_extra(extra, n, model, couplings.sites, fit)
    asym = None if u2d is None else _asymmetry(u2d, v2d)

    # one Brillouin-zone sum: G0 between the impurities at t, t -+ w, 0 and the gap edge; G0^2 and G0 to the tips
    sites = couplings.sites
    disp, (idx_imp, idx_pos) = unique_displacements(
        sites[:, None, :] - sites[None, :, :], positions[:, None, :] - sites[None, :, :]
    )
    z = np.concatenate([t, t - window, t + window, [0.0, top]])
    st = _Setup(n, lo, hi, model.n_orb, 3 * n, 3 * n + 1, np.arange(n) + n, np.arange(n) + 2 * n, tol, fit, asym)
    m = model.nambu_dim
    chunk = int(default_chunk_size(n_points(fn.kgrid), chunk_elements_per_k(m, z.size, disp.shape[0], 2)))
    check_memory(
        green_sum_bytes(m, fn.kgrid, model.dim, chunk, z.size, disp.shape[0], 2),
        f"fit_energies ({z.size} energies, {disp.shape[0]} displacements)",
        "Use a smaller k-grid or fewer tip positions",
    )
    g1, g2 = bare_greens_sum(model, disp, jnp.asarray(z), kgrid=fn.kgrid, chunk_size=chunk, max_power=2)
    g_imp = np.asarray(block_matrix(g1, idx_imp))
    g_imp = 0.5 * (g_imp + np.swapaxes(g_imp.conj(), -1, -2))  # Hermitian at real in-gap energies
    greens = (g_imp, np.asarray(block_matrix(g2[:n], idx_imp)), np.asarray(block_matrix(g1[:n], idx_pos)))
    basis = np.asarray(couplings.basis)

    qs = [_range_basis(basis[2 * c : 2 * c + 2]) for c in range(n_c)]
    decoupled = _is_decoupled(qs, g_imp)
    spaces = [_space(q, basis, *greens) for q in qs]
    per_channel = []
    for c in range(n_c):  # a handful of channels; each call is batched over targets, branches and K values
        k_rng = k_range
        if fit == "K,J" and k_rng is None:
            crit0 = _critical(spaces[c], c, np.zeros(1), st)[0]
            if not np.isfinite(crit0).any():
                raise FitError(
                    f"channel {names[c]!r} has no quantum phase transition in j_range = {j_range}: give k_range= "
                    "(the K to scan, energy units) for fit='K,J'"
                )
            k_rng = (-5.0 * float(np.nanmin(crit0)), 5.0 * float(np.nanmin(crit0)))
        per_channel.append(_channel_candidates(spaces[c], c, k_fixed[c], k_rng, st))
    cand = _stack_candidates(per_channel)
    critical = {}
    if fit == "J" and decoupled:
        for c in range(n_c):  # channels
            crit = _critical(spaces[c], c, k_fixed[c : c + 1], st)[0]
            if np.isfinite(crit).any():
                critical[names[c]] = float(np.nanmin(crit))

    if decoupled:
        combos = _combinations(cand.valid)
        n_candidates = combos.shape[0]
        rows = np.arange(n_c)
        p_of, b_of = combos[..., 0], combos[..., 1]
        k_sol, j_sol = cand.k[rows, p_of, b_of], cand.j[rows, p_of, b_of]
        branches = cand.branch[rows, p_of, b_of]
        order = np.argsort(p_of, axis=-1)  # peak p <- channel order[:, p]
        offsets = np.take_along_axis(cand.offset[rows, p_of, b_of], order, axis=1)
        u2m = np.take_along_axis(cand.u2[rows, p_of, b_of], order[..., None], axis=1)
        v2m = np.take_along_axis(cand.v2[rows, p_of, b_of], order[..., None], axis=1)
        residual = np.abs(offsets).max(-1, initial=0.0)
    else:
        full = _space(_range_basis(basis), basis, *greens)
        k_sol, j_sol, branches, p_of, residual, offsets, u2m, v2m, n_candidates = _coupled_solutions(
            cand, spaces, qs, full, k_fixed, k_range, n_starts, st
        )
    energies = t[None, :] + offsets

    # ranking; ties (every exact solution fits equally) broken by the assignment and the branches, never by the
    # rounding-level residuals, so that the listing is the same on every machine
    pa, br = np.asarray(p_of).reshape(len(residual), -1), np.asarray(branches).reshape(len(residual), -1)
    tie_break = tuple(br[:, c] for c in reversed(range(br.shape[1]))) + tuple(
        pa[:, c] for c in reversed(range(pa.shape[1]))
    )
    score = scale = None
    if u2d is not None:
        w2 = 1.0 / sigma**2
        num = np.sum(w2 * (u2m * u2d + v2m * v2d), axis=(1, 2))
        den = np.sum(w2 * (u2m**2 + v2m**2), axis=(1, 2))
        scale = np.full(num.shape, float(scale_fixed)) if scale_fixed is not None else np.maximum(num / den, 0.0)
        s = scale[:, None, None]
        score = np.sum(w2 * ((s * u2m - u2d) ** 2 + (s * v2m - v2d) ** 2), axis=(1, 2))
        rank = np.lexsort((*tie_break, score))
        ranked_by = "extra data (chi^2 of the peak heights against scale x (|u|^2, |v|^2))"
    else:
        rank = np.lexsort((*tie_break, branches.sum(-1)))
        ranked_by = (
            "none: all fit the energies exactly (listed weak coupling first, then by assignment; the order is a "
            "listing, not a preference)"
        )
    solutions = []
    for i in rank:
        values = {}
        for c in range(n_c):
            values[f"K_{names[c]}"] = float(k_sol[i, c])
            values[f"J_{names[c]}"] = float(j_sol[i, c])
        solutions.append(
            EnergySolution(
                values={nm: values[nm] for nm in couplings.names},
                assignment={names[c]: int(p_of[i, c]) for c in range(n_c)},
                branches={names[c]: int(branches[i, c]) for c in range(n_c)},
                energies=np.asarray(energies[i]),
                residual=float(residual[i]),
                u2=np.asarray(u2m[i]),
                v2=np.asarray(v2m[i]),
                score=None if score is None else float(score[i]),
                scale=None if scale is None else float(scale[i]),
            )
        )
    return EnergyFit(
        solutions=tuple(solutions),
        targets=t,
        channels=names,
        fit=fit,
        decoupled=bool(decoupled),
        critical=critical,
        gap_edge=gap,
        tol=tol,
        ranked_by=ranked_by,
        n_candidates=int(n_candidates),
        root_counts=cand.valid.sum(-1),
        seconds=time.perf_counter() - start,
        kgrid=fn.kgrid,
        couplings=couplings,
    )
