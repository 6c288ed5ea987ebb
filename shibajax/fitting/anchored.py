"""Peak-anchored fits: the Shiba energy pinned to the measured maxima, the line shape fixing the rest.

A one-channel model has one symmetric peak shape per side. When the measured peaks carry a feature the model
lacks (the flat-topped MnPc/Pb(111) peaks hold an unresolved outer shoulder), a free least-squares fit puts
the model peak at the centroid of the measured one, not at its maximum. The maxima are model-independent
(thermal and lock-in broadening are even in the bias), so the physicist's procedure is:

1. offset and Shiba energy from the maxima: offset = (V+ + V-) / 2, E_b = (V+ - V-) / 2
   (``shibajax.measurement.peaks.shiba_pair``);
2. on the constraint E(K, J) = E_b, J is a function of K (exact inversion of det[1 - V G0(E_b)] = 0 by
   :meth:`ShibaEnergies.couplings_at`, one Brillouin-zone sum per K, no root search);
3. the particle-hole asymmetry of the heights fixes K: chi^2(K) profiled over the linear parameters
   (scale, bg0, bg1, by linear least squares), on a grid of K for every branch of J(K), then refined by
   Brent's method around the best grid point.

The standard error of K is the profile's curvature, sigma_K^2 = 2 s^2 / (d^2 chi^2 / dK^2), with s^2 the reduced
chi^2 when no noise level is given (as :func:`~shibajax.fitting.fit`); J's error adds dJ/dK sigma_K and
dJ/dE_b sigma_E in quadrature. Units: docs/conventions.md, "Fitting".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import minimize_scalar

from shibajax.errors import FitError
from shibajax.fitting.energies import ShibaEnergies
from shibajax.fitting.model import SpectrumModel

LINEAR = ("scale", "bg0", "bg1")


@dataclasses.dataclass(frozen=True)
class AnchoredFit:
    """Result of :func:`fit_anchored`.

    Attributes:
        values: every model parameter at the optimum (meV, mV, K).
        scan, solve: names of the scanned coupling (K) and of the one solved from the energy (J).
        energy: the anchored Shiba energy E_b (meV).
        errors: standard errors of ``scan`` and ``solve`` (meV).
        branch: which branch of solve(scan) (0: smallest positive J) holds the optimum.
        profile: (n_grid, 1 + 2 n_branch): scan value, then (solve value, chi^2) per branch (NaN: no solution).
        chi2, dof, reduced_chi2: at the optimum (chi^2 = sum of squared residuals over sigma).
        branch_minima: the smallest grid chi^2 of each branch (the other minima of a multimodal fit).
    """

    values: dict
    scan: str
    solve: str
    energy: float
    errors: dict
    branch: int
    profile: np.ndarray
    chi2: float
    dof: int
    reduced_chi2: float
    branch_minima: list

    def summary(self) -> str:
        lines = [f"peak-anchored fit: E_b = {self.energy:.5g} meV, branch {self.branch}"]
        for n in (self.scan, self.solve):
            lines.append(f"  {n:8s} = {self.values[n]:+.5g} +- {self.errors[n]:.2g}")
        for n in LINEAR:
            lines.append(f"  {n:8s} = {self.values[n]:+.5g}")
        lines.append(f"  reduced chi^2 = {self.reduced_chi2:.4g} ({self.dof} dof)")
        return "\n".join(lines)


def _solutions(energies_fn, theta, solve_name, energy, sign):
    """Values of ``solve`` (sign-restricted, ascending in |x|) that put a state at ``energy`` for this theta."""
    x = energies_fn.couplings_at(jnp.asarray(theta), solve_name, energy)
    x = x[np.sign(x) == sign]
    return x[np.argsort(np.abs(x))]


def fit_anchored(
    model: SpectrumModel,
    energies_fn: ShibaEnergies,
    bias,
    data,
    *,
    energy: float,
    values: Mapping[str, float],
    scan: str = "K_0",
    solve: str = "J_0",
    grid: Sequence[float] = tuple(np.linspace(-30.0, 30.0, 61)),
    sign: int = 1,
    sigma=None,
    energy_error: float = 0.0,
    branch: int | None = None,
) -> AnchoredFit:
    """Fit ``scan`` (and the linear scale, bg0, bg1) with ``solve`` tied to it by E_Shiba = ``energy``.

    Args:
        model: the spectrum model (its G0 blocks fix the host and eta). energies_fn: :class:`ShibaEnergies` of
            the same host and couplings (its k-grid gives the exact in-gap G0).
        bias: (n,) mV. data: (n,) dI/dV (normal state ~ 1). energy: E_b (meV), e.g. from
            ``shibajax.measurement.peaks.shiba_pair``.
        values: every other model parameter (offset, temperature, lockin, tip, other couplings), fixed.
        grid: values of ``scan`` for the profile (meV). sign: the sign of ``solve`` (J > 0 by convention).
        sigma: noise per point (scalar or (n,)); None: 1, errors rescaled by the reduced chi^2.
        energy_error: standard error of ``energy`` (meV), propagated into the error of ``solve``.
        branch: which branch of solve(scan) to refine (0: smallest |J|, the weak-coupling side of the quantum
            phase transition; 1: the strong-coupling side, u and v swapped); None: the branch with the lowest
            grid chi^2. The branches are the multimodality of a one-channel fit: compare ``branch_minima``.

    Returns:
        :class:`AnchoredFit`.

    Raises:
        FitError: bad shapes, unknown names, or no branch of ``solve`` reaches ``energy`` on the grid.
    """
    names = energies_fn.couplings.names
    for n in (scan, solve):
        if n not in names:
            raise FitError(f"{n!r} is not a coupling of the model: {list(names)}")
    bias, data = np.asarray(bias, float), np.asarray(data, float)
    if bias.ndim != 1 or bias.shape != data.shape:
        raise FitError(f"bias {bias.shape} and data {data.shape} must be equal 1D shapes")
    w = 1.0 / np.broadcast_to(np.asarray(1.0 if sigma is None else sigma, float), bias.shape)
    missing = set(model.parameter_names) - set(values) - set(LINEAR) - {scan, solve}
    if missing:
        raise FitError(f"fixed values missing for {sorted(missing)}")
    base = {n: jnp.asarray(float(values[n]), jnp.float64) for n in model.parameter_names if n in values}
    base |= {"scale": jnp.asarray(1.0), "bg0": jnp.asarray(0.0), "bg1": jnp.asarray(0.0)}
    kernel = jnp.asarray(model.kernel(base, bias))
    i_scan = names.index(scan)
    theta0 = np.array([float(values.get(n, 0.0)) for n in names])

    @jax.jit
    def spectra(k, j):
        """Model spectra (n_kj, n) with scale 1 and no background at pairs (k, j) (n_kj,): one compiled call."""
        one = lambda k, j: model(base | {scan: k, solve: j}, jnp.asarray(bias), kernel=kernel)  # noqa: E731
        return jax.vmap(one)(k, j)

    def chi2_linear(y):
        """chi^2 of the spectrum y (n,) with scale, bg0, bg1 at their linear least-squares values; and those."""
        design = np.stack([y, np.ones_like(bias), bias], axis=1) * w[:, None]
        coef, *_ = np.linalg.lstsq(design, data * w, rcond=None)
        return float(np.sum((design @ coef - data * w) ** 2)), coef

    def chi2_at(k, j):
        return chi2_linear(np.asarray(spectra(jnp.array([k]), jnp.array([j])))[0])

    def theta_at(k):
        theta = theta0.copy()
        theta[i_scan] = k
        return theta

    def branch_value(k, b, e=energy):
        x = _solutions(energies_fn, theta_at(k), solve, e, sign)
        return x[b] if b < x.size else np.nan

    grid = np.asarray(grid, float)
    sols = [_solutions(energies_fn, theta_at(k), solve, energy, sign) for k in grid]
    n_branch = max((s.size for s in sols), default=0)
    if n_branch == 0:
        raise FitError(f"no value of {solve} puts a state at E = {energy} meV for {scan} in the grid")
    profile = np.full((grid.size, 1 + 2 * n_branch), np.nan)
    profile[:, 0] = grid
    rows, cols = zip(*[(i, b) for i, s in enumerate(sols) for b in range(s.size)], strict=True)
    rows, cols = np.array(rows), np.array(cols)
    j_grid = np.array([sols[i][b] for i, b in zip(rows, cols, strict=True)])
    profile[rows, 1 + 2 * cols] = j_grid
    profile[rows, 2 + 2 * cols] = [chi2_linear(y)[0] for y in np.asarray(spectra(grid[rows], j_grid))]
    chi_grid = profile[:, 2::2]
    branch_minima = [float(np.nanmin(c)) if np.isfinite(c).any() else np.nan for c in chi_grid.T]
    if branch is None:
        branch = int(np.nanargmin(branch_minima))
    elif not (0 <= branch < n_branch and np.isfinite(branch_minima[branch])):
        raise FitError(f"branch {branch} does not reach E = {energy} meV on the grid ({n_branch} branch(es))")
    i_best = int(np.nanargmin(chi_grid[:, branch]))
    lo, hi = grid[max(0, i_best - 1)], grid[min(grid.size - 1, i_best + 1)]

    def profile_at(k):
        j = branch_value(k, branch)
        return chi2_at(k, j)[0] if np.isfinite(j) else np.inf

    opt = minimize_scalar(profile_at, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6 * (hi - lo)})
    k_best = float(opt.x)
    j_best = float(branch_value(k_best, branch))
    chi2, coef = chi2_at(k_best, j_best)
    dof = max(1, bias.size - 4)  # scan + three linear parameters (solve is tied)
    rescale = chi2 / dof if sigma is None else 1.0
    h = 0.05 * (grid[1] - grid[0]) if grid.size > 1 else 0.1
    curvature = (profile_at(k_best + h) - 2 * chi2 + profile_at(k_best - h)) / h**2
    k_err = float(np.sqrt(2.0 * rescale / curvature)) if curvature > 0 else np.nan
    dj_dk = (branch_value(k_best + h, branch) - branch_value(k_best - h, branch)) / (2 * h)
    de = 1e-3 * abs(energy)
    dj_de = (branch_value(k_best, branch, energy + de) - branch_value(k_best, branch, energy - de)) / (2 * de)
    j_err = float(np.hypot(dj_dk * k_err, dj_de * energy_error if energy_error else 0.0))
    out = {n: float(v) for n, v in base.items()} | {scan: k_best, solve: j_best}
    out |= dict(zip(LINEAR, map(float, coef), strict=True))
    return AnchoredFit(
        values=out,
        scan=scan,
        solve=solve,
        energy=float(energy),
        errors={scan: k_err, solve: j_err},
        branch=branch,
        profile=profile,
        chi2=chi2,
        dof=dof,
        reduced_chi2=chi2 / dof,
        branch_minima=branch_minima,
    )
