"""Differentiable Shiba energies (implicit differentiation) and fits of couplings to tables of peak energies.

The energies are the zeros of det[1 - V(theta) G0(E)] found by ``shibajax.bound_states`` (eigenvalue
crossings of the Hermitian A(E) = Lambda^-1 - Q^dagger G0 Q). Their derivatives are not taken through the
root search: at a simple root, with u the null vector of 1 - V G0(E) (u = V G0 u) and phi = G0 u, the
Hermitian pencil H(E, theta) = V - V G0(E) V has phi as a null vector, and Hellmann-Feynman on its crossing
eigenvalue gives (G0' = -G0^2)

    d mu / d theta = -phi^dagger (dV/dtheta) phi,   d mu / dE = u^dagger G0(E)^2 u  (> 0),
    dE / d theta = -(d mu / d theta) / (d mu / dE) = phi^dagger (dV/dtheta) phi / u^dagger G0^2 u,

implemented as a ``jax.custom_jvp`` (so ``jax.grad``, ``jax.jacfwd`` and vmap all work). The formula needs a
non-degenerate level; degenerate levels (multiplicity > 1) get the derivative of one state of the level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from shibajax.bound_states import (
    DEGENERACY_TOL,
    EDGE_MARGIN,
    EIGENSYSTEM_CACHE_ELEMENTS,
    ROOT_TOL,
    _check_gap_input,
    _solve,
)
from shibajax.brillouin_zone import default_chunk_size, validate_kgrid
from shibajax.errors import FitError
from shibajax.fitting.parameters import ParameterSpace
from shibajax.fitting.spectrum import Couplings
from shibajax.greens_function import bare_greens_sum, chunk_elements_per_k
from shibajax.models.tight_binding import TightBindingModel
from shibajax.tmatrix import block_matrix, unique_displacements


class ShibaEnergies:
    """theta (n_c,) -> all in-gap Shiba energies (R,), ascending, NaN-padded; differentiable in theta.

    Args:
        model: the host (with a gap); couplings: :class:`~shibajax.fitting.Couplings`; kgrid: k-grid.

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
        _check_gap_input(model)
        self.model = model
        self.couplings = couplings
        self.kgrid = validate_kgrid(kgrid, model.dim)
        sites = couplings.sites
        self.disp, (self.idx_imp,) = unique_displacements(sites[:, None, :] - sites[None, :, :])
        m = model.nambu_dim
        r = couplings.basis.shape[-1]
        per_k = chunk_elements_per_k(m, r // 2 + 2, self.disp.shape[0], 2)
        self.chunk_size = int(default_chunk_size(math.prod(self.kgrid), per_k))
        self.cache = math.prod(self.kgrid) * m * m <= EIGENSYSTEM_CACHE_ELEMENTS
        self.tol = float(tol)
        self._fn = self._build()

    def _roots(self, theta):
        v = self.couplings.potential(theta)
        sites = jnp.asarray(self.couplings.sites, jnp.float64)
        batch = _solve(
            self.model, v, sites, self.disp, self.idx_imp, EDGE_MARGIN, self.tol, DEGENERACY_TOL,
            kgrid=self.kgrid, chunk_size=self.chunk_size, cache=self.cache,
        )  # fmt: skip
        return batch.energies, batch.gap_edge

    def null_vectors(self, theta, energies):
        """u (n, R) with (1 - V G0(E)) u = 0, and G0(E), G0(E)^2 between the impurities, (n, R, R) each."""
        v = self.couplings.potential(theta)
        e = jnp.where(jnp.isfinite(energies), energies, 0.0)
        g1, g2 = bare_greens_sum(
            self.model, self.disp, e, kgrid=self.kgrid, chunk_size=self.chunk_size, max_power=2
        )  # fmt: skip
        g1, g2 = block_matrix(g1, self.idx_imp), block_matrix(g2, self.idx_imp)
        eye = jnp.eye(v.shape[0], dtype=jnp.complex128)
        _, _, vh = jnp.linalg.svd(eye - v @ g1)
        return vh[:, -1, :].conj(), g1, g2

    def _build(self):
        @jax.custom_jvp
        def energies(theta):
            return self._roots(theta)[0]

        @energies.defjvp
        def _jvp(primals, tangents):
            (theta,), (dtheta,) = primals, tangents
            e = energies(theta)
            u, g1, g2 = self.null_vectors(jax.lax.stop_gradient(theta), e)
            phi = jnp.einsum("nrs,ns->nr", g1, u)
            dv = self.couplings.potential(dtheta)
            num = jnp.real(jnp.einsum("nr,rs,ns->n", phi.conj(), dv, phi))
            den = jnp.real(jnp.einsum("nr,nrs,ns->n", u.conj(), g2, u))
            return e, jnp.where(jnp.isfinite(e), num / den, 0.0)

        return energies

    def __call__(self, theta) -> jax.Array:
        return self._fn(jnp.asarray(theta, jnp.float64))

    def gap_edge(self, theta) -> float:
        return float(self._roots(jnp.asarray(theta, jnp.float64))[1])

    def couplings_at(self, theta, name: str, energy: float) -> np.ndarray:
        """Exact inversion: the real values x of coupling ``name`` (the others as in ``theta``) that put a
        bound state exactly at ``energy``, ascending (energy units).

        det[1 - (V_rest + x B) G0(E)] = 0 with A = 1 - V_rest G0(E) is the pencil det(A - x B G0) = 0, so
        1/x are the nonzero eigenvalues of A^-1 B G0(E); one BZ sum, no root search. Use it for starts, or
        to check a fit (for one channel with K = 0 the smallest positive x is the weak-coupling branch).
        """
        names = self.couplings.names
        if name not in names:
            raise FitError(f"coupling {name!r} is not one of {list(names)}")
        i = names.index(name)
        theta = jnp.asarray(theta, jnp.float64).at[i].set(0.0)
        (g,) = bare_greens_sum(
            self.model, self.disp, jnp.array([float(energy)]), kgrid=self.kgrid, chunk_size=self.chunk_size
        )  # fmt: skip
        g = np.asarray(block_matrix(g, self.idx_imp))[0]
        a = np.eye(g.shape[0]) - np.asarray(self.couplings.potential(theta)) @ g
        lam = np.linalg.eigvals(np.linalg.solve(a, np.asarray(self.couplings.basis[i]) @ g))
        scale = np.max(np.abs(lam))
        ok = (np.abs(lam) > 1e-9 * scale) & (np.abs(lam.imag) <= 1e-9 * scale)
        return np.sort(1.0 / lam[ok].real)

    def channel_weights(self, theta, energies) -> np.ndarray:
        """(n, n_channels) weight of each level's impurity amplitude chi = V G0 u ~ u on each channel's
        orbitals (normalised to 1 per level): which channel makes which peak."""
        u, _, _ = self.null_vectors(jnp.asarray(theta, jnp.float64), jnp.asarray(energies))
        u = np.asarray(u)
        basis = np.asarray(self.couplings.basis)
        names = self.couplings.names
        chans = sorted({n.split("_", 1)[1] for n in names})
        masks = []
        for c in chans:
            idx = [i for i, n in enumerate(names) if n.split("_", 1)[1] == c]
            masks.append(np.any(np.abs(basis[idx]).sum(0) > 0, axis=0) | np.any(np.abs(basis[idx]).sum(0) > 0, axis=1))
        w = np.stack([np.sum(np.abs(u[:, m]) ** 2, axis=1) for m in masks], axis=1)
        return w / w.sum(1, keepdims=True)


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
