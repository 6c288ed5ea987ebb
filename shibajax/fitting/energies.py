"""Differentiable Shiba energies (implicit differentiation) and fits of couplings to tables of peak energies.

The energies are the zeros of det[1 - V(theta) G0(E)] found by :func:`shibajax.energies_of_potential`
(eigenvalue crossings of the Hermitian A(E) = Lambda^-1 - Q^dagger G0 Q). Their derivatives are not taken
through the root search: at a root, with u a null vector of 1 - V G0(E) (u = V G0 u) and phi = G0 u, the
Hermitian pencil H(E, theta) = V - V G0(E) V has phi as a null vector, and Hellmann-Feynman on its crossing
eigenvalue gives (G0' = -G0^2)

    d mu / d theta = -phi^dagger (dV/dtheta) phi,   d mu / dE = u^dagger G0(E)^2 u  (> 0),
    dE / d theta = -(d mu / d theta) / (d mu / dE) = phi^dagger (dV/dtheta) phi / u^dagger G0^2 u.

A level of multiplicity m (roots closer than DEGENERACY_TOL times the gap edge, chained as ``bound_states``
clusters them) has an m-dimensional null space. With U (R, m) an orthonormal basis of it at the level's mean
energy and Phi = G0 U, degenerate perturbation theory on H gives the one-sided derivatives of the level's m
sorted energies along a direction dtheta, lim_{h -> 0+} (E(theta + h dtheta) - E(theta)) / h, as the ascending
eigenvalues of

    (Phi^dagger dV Phi) c = lambda (U^dagger G0(E)^2 U) c,      dV = V(dtheta)

(a perturbation that breaks the symmetry splits the level, one that keeps it gives m equal values; for m = 1
this is the formula above). That derivative is not linear in dtheta (along -dtheta a split comes out reversed),
but the tangent of a ``jax.custom_jvp`` must be, for reverse mode to transpose it. So the jvp is
sum_c dtheta_c D_c E with D_c E the one-sided derivative along +theta_c: ``jax.jacfwd`` gives exactly these
one-sided partials, ``jax.grad`` their transpose, and ``jax.jvp`` is the one-sided directional derivative along
each coupling and along any direction that splits no degenerate level differently from them.
:meth:`ShibaEnergies.directional_derivative` gives it along any direction. Shapes are fixed throughout (NaN-padded
roots), so jit and vmap work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from shibajax import _linalg
from shibajax.bound_states import DEGENERACY_TOL, ROOT_TOL, energies_of_potential, require_gap
from shibajax.brillouin_zone import check_memory, default_chunk_size, n_points, validate_kgrid
from shibajax.errors import FitError
from shibajax.fitting.parameters import ParameterSpace
from shibajax.fitting.spectrum import Couplings
from shibajax.greens_function import bare_greens_sum, chunk_elements_per_k, green_sum_bytes
from shibajax.models.tight_binding import TightBindingModel
from shibajax.tmatrix import block_matrix, unique_displacements

#: Relative singular-value threshold for the channel spaces of :meth:`ShibaEnergies.channel_weights`: a coupling
#: direction below it is rounding (the coupling matrices are built in float64 from normalised form factors, so
#: genuine directions sit at O(1)), and stacked channel vectors with a singular value below it are linearly
#: dependent within rounding of the geometry.
CHANNEL_RANK_TOL = 1e-8


def level_clusters(energies: jax.Array, tol) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Degenerate levels of sorted, NaN-padded roots: neighbours closer than ``tol`` (energy units) are chained
    into one level (the rule of ``bound_states``); NaN entries are levels of their own. jit- and vmap-safe.

    Args:
        energies: (n,) ascending, NaN-padded at the end (energy units). tol: scalar (energy units).

    Returns:
        first (n,): index of the first root of each root's level; rank (n,): position of the root within its
        level (0 .. m - 1); size (n,): the level's multiplicity m.
    """
    n = energies.shape[0]
    index = jnp.arange(n)
    joins = jnp.concatenate([jnp.zeros(1, bool), jnp.diff(energies) < tol])  # NaN compares False
    first = jax.lax.cummax(jnp.where(joins, 0, index))
    size = jnp.sum(first[:, None] == first[None, :], axis=1)
    return first, index - first, size


def level_derivatives(
    phi: jax.Array, u: jax.Array, g2: jax.Array, dv: jax.Array, first: jax.Array, active: jax.Array
) -> jax.Array:
    """Derivatives of the sorted energies of the degenerate levels, all at once, by degenerate perturbation theory.

    For each level (roots i with the same ``first[i]``, contiguous) with null-space basis U = u[level] and
    Phi = phi[level], the ascending eigenvalues of (Phi^dagger dV Phi) c = lambda (U^dagger G0^2 U) c, placed
    at the level's roots in order. All levels are solved as one (n, n) block-diagonal pencil (zero between
    different levels): Cholesky reduction with the metric, then ``eigvalsh`` with the blocks shifted apart
    (level number times 3 ||C||_F, more than the spread of any block) so that the sorted eigenvalues come out
    grouped by level, in order, whatever the values (equal derivatives of different levels are common: a
    channel that does not touch them). No eigenvector is needed; the shifts cost ~3 n eps ||C|| of rounding.

    Args:
        phi: (n, R) G0 u per root. u: (n, R) null vectors of 1 - V G0, orthonormal within a level.
        g2: (n, R, R) G0^2 between the impurities at each root's level energy (the same within a level).
        dv: (R, R) dV along the direction (energy units). first: (n,) from :func:`level_clusters`.
        active: (n,) bool, the roots to solve for (whole levels); the others (padding, roots alone, whose
            values may be anything) are decoupled rows with an identity metric and give 0.

    Returns:
        (n,) dE/d(direction) of the sorted energies on active roots (energy units per unit of the direction);
        for a level of one root it is phi^dagger dV phi / u^dagger G0^2 u.
    """
    n = first.shape[0]
    pair = (first[:, None] == first[None, :]) & active[:, None] & active[None, :]
    num = jnp.where(pair, jnp.einsum("ir,rs,js->ij", phi.conj(), dv, phi), 0.0)
    metric = jnp.where(pair, jnp.einsum("ir,irs,js->ij", u.conj(), g2, u), jnp.eye(n))
    # Cholesky keeps the exact zeros between blocks, so C = L^-1 N L^-dagger is block diagonal too
    chol = _linalg.cholesky(0.5 * (metric + metric.conj().T))
    x = jax.scipy.linalg.solve_triangular(chol, num, lower=True)
    c = jax.scipy.linalg.solve_triangular(chol, x.conj().T, lower=True)
    c = 0.5 * (c + c.conj().T)
    level = jnp.cumsum(first == jnp.arange(n)) - 1
    # ||C||_F bounds every block's spectral radius: blocks shifted by 3 ||C||_F never overlap. A device, not a
    # function of theta: no derivative through it (the norm's derivative is singular at C = 0).
    offset = level * 3.0 * jax.lax.stop_gradient(jnp.linalg.norm(c))
    return jnp.where(active, _linalg.eigvalsh(c + jnp.diag(offset)) - offset, 0.0)


class _Perturbation(NamedTuple):
    """Data at the roots (n,) for their derivatives: null vectors u (n, R) (orthonormal within a level), phi = G0 u
    (n, R), G0^2 (n, R, R) at each root's level, first (n,) from :func:`level_clusters`, found (n,) (not padding),
    shared (n,) (a root of a degenerate level)."""

    u: jax.Array
    phi: jax.Array
    g2: jax.Array
    first: jax.Array
    found: jax.Array
    shared: jax.Array


def _single_slopes(p: _Perturbation, dv: jax.Array) -> jax.Array:
    """(n,) dE along the potential change dv (R, R) for roots alone in their level, the Hellmann-Feynman ratio
    phi^dagger dV phi / u^dagger G0^2 u of the module docstring (linear in dv); 0 on padding."""
    num = jnp.real(jnp.einsum("nr,rs,ns->n", p.phi.conj(), dv, p.phi))
    den = jnp.real(jnp.einsum("nr,nrs,ns->n", p.u.conj(), p.g2, p.u))
    return jnp.where(p.found, num / den, 0.0)


def _slopes(p: _Perturbation, dv: jax.Array) -> jax.Array:
    """(n,) one-sided derivatives of the sorted energies along the potential change dv (R, R), 0 on padding:
    :func:`level_derivatives` on degenerate levels (not linear in dv there), the Hellmann-Feynman ratio on the
    others."""
    split = level_derivatives(p.phi, p.u, p.g2, dv, p.first, p.shared)
    return jnp.where(p.shared, split, _single_slopes(p, dv))


class ShibaEnergies:
    """theta (n_c,) -> all in-gap Shiba energies (R,), ascending, NaN-padded; differentiable in theta (custom jvp,
    degenerate levels by degenerate perturbation theory: see the module docstring).

    Args:
        model: the host (with a gap); couplings: :class:`~shibajax.fitting.Couplings`; kgrid: k-grid (tuple)
            or :class:`~shibajax.brillouin_zone.KMesh`.

    Raises:
        NoGapError: the host has no full gap (Delta = 0, or a nodal gap such as d-wave, even where the grid misses
            the nodes: :func:`~shibajax.bound_states.require_gap`): it has no Shiba energies to fit.

    Example:
        >>> import jax, shibajax
        >>> from shibajax.fitting import coupling_basis, ShibaEnergies
        >>> m = shibajax.models.square(mu=-1.0, delta=0.3)
        >>> f = ShibaEnergies(m, coupling_basis(m, [(0, 0)]), kgrid=(12, 12))
        >>> e = f(jax.numpy.array([0.0, 2.0]))      # K_0 = 0, J_0 = 2
        >>> bool(e[0] < 0 < e[1])
        True
    """

    def __init__(self, model: TightBindingModel, couplings: Couplings, *, kgrid, tol: float = ROOT_TOL):
        self.kgrid = validate_kgrid(kgrid, model.dim)
        # Shiba energies of a gapless host (Delta = 0, or nodes on the Fermi surface that the grid may miss) are
        # not reported: NoGapError here (a spectrum of such a host can still be fitted, with green_blocks)
        require_gap(model, self.kgrid)
        self.model = model
        self.couplings = couplings
        sites = couplings.sites
        self.disp, (self.idx_imp,) = unique_displacements(sites[:, None, :] - sites[None, :, :])
        m = model.nambu_dim
        r = couplings.basis.shape[-1]
        per_k = chunk_elements_per_k(m, r // 2 + 2, self.disp.shape[0], 2)
        self.chunk_size = int(default_chunk_size(n_points(self.kgrid), per_k))
        # the largest sum: G0 and G0^2 at every root (r of them) for the derivatives, before compiling it
        check_memory(
            green_sum_bytes(m, self.kgrid, model.dim, self.chunk_size, r, self.disp.shape[0], 2),
            f"ShibaEnergies ({sites.shape[0]} impurity sites, {r} channel directions, "
            f"{n_points(self.kgrid):.3g} k-points)",
            "Use a smaller k-grid or fewer impurity sites",
        )
        self.tol = float(tol)
        self._fn = self._build()
        self._g0_at = {}  # energy -> G0 (R, R) between the impurities: couplings_at's one BZ sum per energy

    def _roots(self, theta):
        """The search at couplings theta: :class:`~shibajax.bound_states.BoundStateBatch` (energies (R,))."""
        return energies_of_potential(
            self.model, self.couplings.potential(theta), self.couplings.sites,
            kgrid=self.kgrid, tol=self.tol, chunk_size=self.chunk_size,
        )  # fmt: skip

    def null_vectors(self, theta, energies, degeneracy=0.0):
        """u (n, R) with (1 - V G0(E)) u = 0, and G0(E), G0(E)^2 between the impurities, (n, R, R) each.

        Roots closer than ``degeneracy`` (energy units, :func:`level_clusters`) are one level of multiplicity m:
        all its roots get G0 at the level's mean energy, and its k-th root the k-th of the m smallest right
        singular vectors of 1 - V G0 there (an orthonormal basis of the level's null space). With the default
        0 every root is on its own and gets the smallest singular vector at its own energy.
        """
        v = self.couplings.potential(theta)
        first, rank, size = level_clusters(energies, degeneracy)
        same = first[:, None] == first[None, :]
        mean = jnp.sum(jnp.where(same, energies[None, :], 0.0), axis=1) / size  # exact for a root alone
        e = jnp.where(jnp.isfinite(mean), mean, 0.0)
        g1, g2 = bare_greens_sum(
            self.model, self.disp, e, kgrid=self.kgrid, chunk_size=self.chunk_size, max_power=2
        )  # fmt: skip
        g1, g2 = block_matrix(g1, self.idx_imp), block_matrix(g2, self.idx_imp)
        eye = jnp.eye(v.shape[0], dtype=jnp.complex128)
        _, _, vh = _linalg.svd(eye - v @ g1)
        # one decomposition per level (its first root's), so that the level's vectors are orthonormal
        g1, g2, vh = g1[first], g2[first], vh[first]
        column = v.shape[0] - size + rank  # singular values descend: the level's m smallest are the last m
        u = jnp.take_along_axis(vh, column[:, None, None], axis=1)[:, 0, :].conj()
        return u, g1, g2

    def _perturbation(self, theta, e, gap) -> _Perturbation:
        """What the derivatives at the roots e (n,) need, from theta alone (no direction)."""
        tol = DEGENERACY_TOL * gap
        u, g1, g2 = self.null_vectors(theta, e, tol)
        first, _, size = level_clusters(e, tol)
        found = jnp.isfinite(e)
        return _Perturbation(u, jnp.einsum("nrs,ns->nr", g1, u), g2, first, found, (size > 1) & found)

    def _build(self):
        @jax.custom_jvp
        def energies(theta):
            batch = self._roots(theta)
            return batch.energies, batch.gap_edge

        @jax.jit  # one program instead of dozens of small ones when called eagerly; inlined under jit
        def tangent(theta, dtheta, e, gap):
            p = self._perturbation(theta, e, gap)
            # a degenerate level: its one-sided partial derivatives along each coupling (from theta alone), combined
            # linearly, so that the tangent stays linear in dtheta (reverse mode transposes it)
            partials = jax.vmap(lambda b: _slopes(p, b), out_axes=1)(self.couplings.basis)  # (n, n_c)
            return jnp.where(p.shared, partials @ dtheta, _single_slopes(p, self.couplings.potential(dtheta)))

        @energies.defjvp
        def _jvp(primals, tangents):
            (theta,), (dtheta,) = primals, tangents
            e, gap = energies(theta)
            de = tangent(jax.lax.stop_gradient(theta), dtheta, e, jax.lax.stop_gradient(gap))
            return (e, gap), (de, jnp.zeros_like(gap))

        @jax.jit
        def directional(theta, direction):
            e, gap = energies(theta)
            return _slopes(self._perturbation(theta, e, gap), self.couplings.potential(direction))

        self._directional = directional
        return energies

    def directional_derivative(self, theta, direction) -> jax.Array:
        """One-sided derivative of the sorted energies along ``direction`` d (n_c,), lim_{h -> 0+} of
        (E(theta + h d) - E(theta)) / h: (R,) energy units per unit of theta, 0 on padding.

        The same as ``jax.jvp`` (a linear map, see the module docstring) except on a degenerate level split by a
        direction other than +theta_c (e.g. along -theta_c its derivatives are minus those along +theta_c, in
        reverse order): this gives the ascending eigenvalues of the level's pencil along ``direction`` itself.
        A value, not meant to be differentiated.
        """
        return self._directional(jnp.asarray(theta, jnp.float64), jnp.asarray(direction, jnp.float64))

    def __call__(self, theta) -> jax.Array:
        return self._fn(jnp.asarray(theta, jnp.float64))[0]

    def gap_edge(self, theta) -> float:
        """The grid's gap edge (energy units; it does not depend on theta)."""
        return float(self._roots(jnp.asarray(theta, jnp.float64)).gap_edge)

    def couplings_at(self, theta, name: str, energy: float) -> np.ndarray:
        """Exact inversion: the real values x of coupling ``name`` (the others as in ``theta``) that put a
        bound state exactly at ``energy``, ascending (energy units).

        det[1 - (V_rest + x B) G0(E)] = 0 with A = 1 - V_rest G0(E) is the pencil det(A - x B G0) = 0, so
        1/x are the nonzero eigenvalues of A^-1 B G0(E); one BZ sum per energy (kept), no root search. Use it for
        starts, or to check a fit (for one channel with K = 0 the smallest positive x is the weak-coupling branch).
        """
        names = self.couplings.names
        if name not in names:
            raise FitError(f"coupling {name!r} is not one of {list(names)}")
        i = names.index(name)
        theta = jnp.asarray(theta, jnp.float64).at[i].set(0.0)
        g = self._g0(float(energy))
        a = np.eye(g.shape[0]) - np.asarray(self.couplings.potential(theta)) @ g
        lam = np.linalg.eigvals(np.linalg.solve(a, np.asarray(self.couplings.basis[i]) @ g))
        scale = np.max(np.abs(lam))
        ok = (np.abs(lam) > 1e-9 * scale) & (np.abs(lam.imag) <= 1e-9 * scale)
        return np.sort(1.0 / lam[ok].real)

    def _g0(self, energy: float) -> np.ndarray:
        """G0(energy) (R, R) between the impurities (one BZ sum), kept for the last few energies: a profile over
        the other couplings (``fitting.anchored``) asks for the same energy many times."""
        if energy not in self._g0_at:
            (g,) = bare_greens_sum(
                self.model, self.disp, jnp.array([energy]), kgrid=self.kgrid, chunk_size=self.chunk_size
            )  # fmt: skip
            if len(self._g0_at) >= 8:
                self._g0_at.pop(next(iter(self._g0_at)))
            self._g0_at[energy] = np.asarray(block_matrix(g, self.idx_imp))[0]
        return self._g0_at[energy]

    def channel_weights(self, theta, energies) -> np.ndarray:
        """(n, n_channels) weight of each level on each channel (channels sorted by name, as in
        :meth:`EnergyProblem.assignment`), normalised to 1 per level: which channel makes which peak.

        The level's impurity amplitude u (1 - V G0 u = 0, so u = V G0 u lies in the span of the channels'
        coupling vectors) is written as u = sum_c Q_c a_c, with Q_c an orthonormal basis of the range of
        channel c's coupling matrices (its K and J on every site that shares the channel's name); the weight of
        c is |a_c|^2, normalised. For channels on separate orbitals or sites this is the weight of u on their
        orbitals. For orbital-shaped (adatom) channels, which share sites, Q_c are the channel's form-factor
        vectors d_c: the weight is that of the channel, not of the sites. Channels that overlap without being
        orthogonal (d_z2 and d_x2-y2 in a C2v hollow) still decompose u uniquely; then the weights, each
        |Q_c a_c|^2, are normalised to 1 but no longer add up to |u|^2 before that.

        Raises:
            FitError: the channels' coupling vectors are linearly dependent (a channel is a combination of the
                others, e.g. two channels of the same shape on the same adatom): the weights are not defined.
        """
        _, bases = self._channel_spaces()  # first: undefined weights fail before any BZ sum
        u, _, _ = self.null_vectors(jnp.asarray(theta, jnp.float64), jnp.asarray(energies))
        u = np.asarray(u)
        stacked = np.concatenate(bases, axis=1)  # (R, sum r_c), full column rank (checked)
        coeffs = np.linalg.lstsq(stacked, u.T, rcond=None)[0]  # (sum r_c, n)
        edges = np.cumsum([0] + [b.shape[1] for b in bases])
        w = np.stack([np.sum(np.abs(coeffs[a:b]) ** 2, axis=0) for a, b in zip(edges[:-1], edges[1:], strict=True)], 1)
        return w / w.sum(1, keepdims=True)

    def _channel_spaces(self) -> tuple[list[str], list[np.ndarray]]:
        """Channel names (sorted) and, per channel, an orthonormal basis (R, r_c) of the range of its coupling
        matrices; kept. Raises FitError when the channels' spaces are linearly dependent."""
        if getattr(self, "_spaces", None) is not None:
            return self._spaces
        basis = np.asarray(self.couplings.basis)
        names = self.couplings.names
        chans = sorted({n.split("_", 1)[1] for n in names})
        bases = []
        for c in chans:
            idx = [i for i, n in enumerate(names) if n.split("_", 1)[1] == c]
            q, sv, _ = np.linalg.svd(np.concatenate([basis[i] for i in idx], axis=1), full_matrices=False)
            bases.append(q[:, sv > CHANNEL_RANK_TOL * max(float(sv[0]), 1e-300)])
        stacked = np.concatenate(bases, axis=1)
        sv = np.linalg.svd(stacked, compute_uv=False)
        if stacked.shape[1] > stacked.shape[0] or sv[-1] < CHANNEL_RANK_TOL:
            pairs = [
                (a, b)
                for i, a in enumerate(chans)
                for j, b in enumerate(chans[i + 1 :], start=i + 1)
                if np.linalg.norm(bases[i].conj().T @ bases[j], 2) > 1.0 - CHANNEL_RANK_TOL
            ]
            which = (
                f"channels {pairs[0][0]!r} and {pairs[0][1]!r} share a coupling vector"
                if pairs
                else f"the coupling vectors of channels {chans} are linearly dependent"
            )
            raise FitError(
                f"channel weights are not defined: {which} (smallest singular value {sv[-1]:.2g} of the channels' "
                "stacked coupling vectors), so a state's amplitude cannot be split between them. Merge or drop one "
                "of them, or give them distinct shapes or orbitals"
            )
        self._spaces = (chans, bases)
        return self._spaces


def positive_energies(energies: jax.Array, n: int, fill: float) -> jax.Array:
    """The n lowest positive energies, ascending; missing ones are ``fill`` (e.g. the gap edge)."""
    pos = jnp.sort(jnp.where(jnp.isfinite(energies) & (energies > 0), energies, jnp.inf))[:n]
    return jnp.where(jnp.isfinite(pos), pos, fill)


class EnergyProblem:
    """Least squares on peak energies: loss = 1/2 sum_k ((E_k(theta) - target_k) / sigma)^2, both sorted.

    Sorting makes the loss independent of which channel makes which peak; :func:`assignment` reports it.

    Args:
        energies_fn: :class:`ShibaEnergies`. targets: (n,) positive energies (energy units).
        params: {coupling name: Parameter spec}, every coupling of ``energies_fn.couplings``.
        sigma: energy uncertainty (energy units), for the Laplace errors.
    """

    def __init__(self, energies_fn: ShibaEnergies, targets: Sequence[float], params, sigma: float = 1e-3):
        self.fn = energies_fn
        self.targets = np.sort(np.asarray(targets, float))
        if self.targets.ndim != 1 or self.targets.size == 0 or not np.all(self.targets > 0):
            raise FitError(f"targets {np.asarray(targets).tolist()} must be a non-empty list of positive energies")
        half = energies_fn.couplings.basis.shape[-1] // 2
        if self.targets.size > half:
            raise FitError(f"{self.targets.size} target energies, but the impurity has at most {half} positive levels")
        self.space = params if isinstance(params, ParameterSpace) else ParameterSpace(params)
        names = set(energies_fn.couplings.names)
        if set(self.space.params) != names:
            raise FitError(f"energy fits take exactly the couplings {sorted(names)} as parameters")
        self.sigma = float(sigma)
        self.sigma_given = True
        self.n_points = self.targets.size
        self.fill = 2.0 * float(np.max(self.targets))

    def predict_natural(self, x):
        values = self.space.values_from_natural(x)
        theta = jnp.stack([values[n] for n in self.fn.couplings.names])
        return positive_energies(self.fn(theta), self.targets.size, self.fill)

    def loss_natural(self, x):
        r = (self.predict_natural(x) - self.targets) / self.sigma
        return 0.5 * jnp.sum(r * r)

    def loss(self, u):
        return self.loss_natural(self.space.to_natural(u))

    def theta(self, values) -> jax.Array:
        return jnp.stack([jnp.asarray(values[n], jnp.float64) for n in self.fn.couplings.names])

    def gauss_newton(self, values, *, max_iter: int = 20, tol: float = 1e-9) -> tuple[dict, int]:
        """Refine the free parameters from ``values`` ({name: start}) by Gauss-Newton on the residuals
        E_k(theta) - target_k (the Jacobian by implicit differentiation); stops when the largest residual is
        below ``tol`` (energy units). Returns ({name: value}, Gauss-Newton steps taken). Needs a start that
        binds len(targets) positive levels (e.g. from the wide-band formula or :meth:`ShibaEnergies.couplings_at`).

        Raises:
            FitError: not converged within ``max_iter`` steps.
        """
        x = jnp.asarray([float(values[n]) for n in self.space.free], jnp.float64)
        step = jax.jit(lambda x: (self.predict_natural(x), jax.jacfwd(self.predict_natural)(x)))
        for it in range(max_iter + 1):
            e, jac = step(x)
            r = np.asarray(e) - self.targets
            if np.max(np.abs(r)) < tol:
                return {n: float(v) for n, v in self.space.values_from_natural(x).items()}, it
            x = x - jnp.asarray(np.linalg.lstsq(np.asarray(jac), r, rcond=None)[0])
        raise FitError(
            f"Gauss-Newton did not reach |E - target| < {tol:g} in {max_iter} steps (residuals {r.tolist()})"
        )

    def assignment(self, values) -> list[dict]:
        """For each fitted level: target, model energy, and the channel carrying most of its weight."""
        theta = self.theta(values)
        e = positive_energies(self.fn(theta), self.targets.size, self.fill)
        w = self.fn.channel_weights(theta, e)
        chans = sorted({n.split("_", 1)[1] for n in self.fn.couplings.names})
        return [
            {
                "target": float(t),
                "model": float(ei),
                "channel": chans[int(np.argmax(wi))],
                "weight": float(np.max(wi)),
            }
            for t, ei, wi in zip(self.targets, np.asarray(e), w, strict=True)
        ]
