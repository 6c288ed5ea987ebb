"""Tip calibration on a reference spectrum, and deconvolution of the sample DOS from a measured dI/dV.

Units as in :mod:`shibajax.measurement.tunnelling` (meV, mV, K; dI/dV in units of G_N after the scale).

* :func:`calibrate_tip` fits a Dynes tip (gap, broadening), the effective temperature, an overall scale (and
  optionally a bias offset) to a spectrum measured on a known sample (e.g. a Pb tip on Pb): nonlinear least
  squares (``scipy.optimize.least_squares``, trust-region reflective with bounds) on JAX residuals and their
  exact Jacobian (``jax.jacfwd``); standard errors from the Gauss-Newton covariance
  ``c s^2 (J^T J)^-1`` at the optimum with ``s^2 = sum r^2 / (n - p)`` (the covariance scaled by the reduced
  chi^2: errors grow with the misfit) and ``c = (1 + r_1) / (1 - r_1) >= 1`` the variance inflation of residuals
  correlated from point to point (lag-1 autocorrelation r_1 in bias order, an AR(1) model; a model that misses the
  data leaves smooth, strongly correlated residuals). The reduced chi^2 against the noise of the data (estimated
  from their point-to-point scatter) is reported, with a :class:`CalibrationWarning` when it is >> 1.
* :func:`fit_sample_dos` fits a two-gap Dynes sample (``MultiGapDOS``: gaps, broadenings, weight, scale, offset)
  measured with a known tip at a known temperature, the same way (e.g. the two gaps of Pb with a normal tip).
* :func:`deconvolve` recovers rho_s(E) from dI/dV measured with a known tip. dI/dV = W rho_s (+ noise) is linear,
  W from :func:`~shibajax.measurement.tunnelling.didv_kernel` (the exact Jacobian of ``didv``). The solve is
  Tikhonov regularised towards the normal state rho_s = ``prior`` (1):

      rho = prior + argmin_d  |W d - (y - W prior)|^2 + lambda^2 (|D2 d|^2 + eps^2 |d|^2),

  D2 the second difference (smoothness), eps = ``ridge`` a weak pull to the prior where the data say nothing
  (outside the Fermi windows). lambda is chosen by generalised cross-validation (GCV, Golub, Heath & Wahba,
  Technometrics 21, 215 (1979)), the corner of the L-curve (Hansen & O'Leary, SIAM J. Sci. Comput. 14, 1487
  (1993)) or the discrepancy principle (Morozov: |residual|^2 = n_v sigma^2 for a known noise sigma), from the SVD
  of W R^-1 (R^T R = D2^T D2 + eps^2 I), unless given. The result is checked (bounded, non-negative within its
  errors, determined by the data): a tip that does not match the data makes GCV choose a tiny lambda and a DOS of
  order 1e5; that raises :class:`~shibajax.errors.DeconvolutionError` (or warns) instead of passing. The noise
  level sigma^2 = |residual|^2 / (n_v - trace(influence)) and the pointwise error is the square root of the
  diagonal of the posterior covariance sigma^2 (W^T W + lambda^2 R^T R)^-1 (Gaussian noise and prior).
  Everything but the choice of lambda (an argmin) is differentiable in the data and the tip.
"""

from __future__ import annotations

import math
import warnings
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from shibajax import _precision  # noqa: F401
from shibajax.errors import DeconvolutionError
from shibajax.measurement.dos import DynesDOS, MultiGapDOS, check_finite
from shibajax.measurement.tunnelling import COVERAGE_KT, K_B_MEV_PER_K, didv, didv_kernel

TIP_PARAMETERS = ("delta", "gamma", "temperature", "scale", "offset")
"""Parameters of :func:`calibrate_tip`: tip gap and Dynes broadening (meV), temperature (K), the factor that
turns G_N units into the measured ones, and a bias offset (mV; the model is evaluated at V - offset)."""

DEFAULT_INIT = {"delta": 1.35, "gamma": 0.02, "temperature": 1.2, "scale": None, "offset": 0.0}
BOUNDS = {
    "delta": (1e-3, 20.0),
    "gamma": (1e-4, 2.0),
    "temperature": (0.02, 50.0),
    "scale": (0.0, np.inf),
    "offset": (-1.0, 1.0),
}


class CalibrationWarning(UserWarning):
    """A tip calibration or sample fit whose model misses the data (reduced chi^2 >> 1): its errors are
    statistical only and do not include the model's own error."""


class DeconvolutionWarning(UserWarning):
    """A deconvolution that failed its sanity checks, returned because ``check='warn'`` asked for it."""


CHI2_WARN = 5.0
"""Reduced chi^2 (against the point-to-point noise of the data) above which a fit warns that its model misses
the data. The noise estimate ignores correlations between neighbouring points (a lock-in time constant), which
raise chi^2_red of an adequate model on real data: the single-gap fit of bare Pb(111) (2000 points, every 5th
fitted) reads 2.95, while one gap on the SIS Pb/Pb spectrum, which misses Pb's second gap, reads 167."""


def noise_level(bias, data) -> float:
    """The noise sigma of a spectrum from its point-to-point scatter: q_25(|D2 y|) / (0.31864 sqrt(6)).

    ``D2 y`` is the second difference in bias order: for independent noise it is normal with variance 6 sigma^2
    (a smooth signal drops out), and 0.31864 is the lower quartile of |N(0, 1)|. The lower quartile, unlike the
    median, stays robust when up to ~3/4 of the points sit on sharp features (a spectrum full of Shiba and
    coherence peaks). Correlated noise (a lock-in time constant longer than the time per point) reads low.
    Returns 0 for fewer than 5 points.
    """
    bias = np.asarray(bias, dtype=float)
    data = np.asarray(data, dtype=float)
    if data.size < 5:
        return 0.0
    y = data[np.argsort(bias, kind="stable")]
    d2 = y[2:] - 2.0 * y[1:-1] + y[:-2]
    return float(np.quantile(np.abs(d2), 0.25) / (0.31864 * math.sqrt(6.0)))


class TipCalibration(NamedTuple):
    """Result of :func:`calibrate_tip`.

    params: every parameter by name (fitted or held), floats. errors: standard errors of the fitted ones
    (NaN for held parameters), from the covariance scaled by the reduced chi^2 and inflated for correlated
    residuals (see the module docstring). residual_rms: rms of (model - data) in the data's units. tip: the fitted
    :class:`DynesDOS`. bias, model: the points used (mV) and the fitted dI/dV there. success, message: from the
    optimiser. chi2_red: sum r^2 / ((n - p) sigma^2) with sigma the data's point-to-point noise
    (:func:`noise_level`); >> 1 means the model misses the data (a :class:`CalibrationWarning` says so).
    noise: that sigma (data units). error_inflation: the factor c >= 1 applied to the variances.
    """

    params: dict
    errors: dict
    residual_rms: float
    tip: DynesDOS
    bias: np.ndarray
    model: np.ndarray
    success: bool
    message: str
    chi2_red: float = math.nan
    noise: float = math.nan
    error_inflation: float = 1.0


def _validate_spectrum(bias, data):
    bias = np.asarray(bias, dtype=float)
    data = np.asarray(data, dtype=float)
    if bias.ndim != 1 or bias.shape != data.shape or bias.size < 5:
        raise DeconvolutionError(
            f"bias and dI/dV must be 1-d arrays of one length >= 5, got shapes {bias.shape} and {data.shape}"
        )
    bad_bias = np.flatnonzero(~np.isfinite(bias))
    if bad_bias.size:
        raise DeconvolutionError(
            f"the bias has {bad_bias.size} non-finite value(s) (first at point {bad_bias[0] + 1} of {bias.size}); "
            "remove those points"
        )
    bad = np.flatnonzero(~np.isfinite(data))
    if bad.size:
        at = ", ".join(f"{b:.6g}" for b in bias[bad[:5]]) + (" ..." if bad.size > 5 else "")
        raise DeconvolutionError(
            f"the spectrum has {bad.size} non-finite dI/dV value(s) (of {data.size}) at bias = {at} mV; remove or "
            "interpolate them"
        )
    return bias, data


def _check_parameters(owner: str, **values) -> None:
    """Every named float parameter must be finite (the message names it; see ``dos.check_finite``)."""
    for name, value in values.items():
        if value is not None:
            check_finite(value, name, owner, error=DeconvolutionError)


def _least_squares(model, data, names, x0, lower, upper, bias_order):
    """Bounded nonlinear least squares of ``model(theta) - data`` with the exact JAX Jacobian.

    Returns (scipy solution, {name: fitted value}, {name: standard error}, quality); errors from the
    Gauss-Newton covariance ``c s^2 (J^T J)^+`` at the optimum, ``s^2 = sum r^2 / (n - p)`` (the covariance scaled
    by the reduced chi^2) and ``c = (1 + r_1) / (1 - r_1)`` for residuals with lag-1 autocorrelation r_1 > 0 in
    bias order (AR(1) variance inflation, capped at (n - p) / 2: at least two independent points per dof).
    quality: {"chi2_red": s^2 / sigma^2 (sigma from :func:`noise_level`), "noise": sigma, "inflation": c}.
    """
    residual = jax.jit(lambda theta: model(theta) - data)
    jacobian = jax.jit(jax.jacfwd(residual))
    x0 = np.clip(np.asarray(x0, dtype=float), lower, upper)
    sol = scipy.optimize.least_squares(
        lambda x: np.asarray(residual(jnp.asarray(x))),
        x0,
        jac=lambda x: np.asarray(jacobian(jnp.asarray(x))),
        bounds=(lower, upper),
        x_scale="jac",
        method="trf",
    )
    r = sol.fun
    dof = max(1, r.size - len(names))
    s2 = float(r @ r / dof)
    order = np.argsort(np.asarray(bias_order), kind="stable")
    ro = r[order]
    r1 = float(ro[1:] @ ro[:-1] / (ro @ ro)) if ro @ ro > 0 else 0.0
    inflation = 1.0 if r1 <= 0 else min((1.0 + r1) / max(1.0 - r1, 1e-12), max(1.0, dof / 2.0))
    cov = np.linalg.pinv(sol.jac.T @ sol.jac) * s2 * inflation
    fitted = {n: float(x) for n, x in zip(names, sol.x, strict=True)}
    errors = {n: float(np.sqrt(max(cov[i, i], 0.0))) for i, n in enumerate(names)}
    sigma = noise_level(bias_order, data)
    chi2_red = s2 / sigma**2 if sigma > 0 else math.inf if s2 > 0 else math.nan
    return sol, fitted, errors, {"chi2_red": chi2_red, "noise": sigma, "inflation": inflation}


def _warn_misfit(owner: str, quality: dict, errors: dict, names) -> None:
    chi2 = quality["chi2_red"]
    if not chi2 > CHI2_WARN:
        return
    shown = ", ".join(f"{n} +- {errors[n]:.3g}" for n in names)
    warnings.warn(
        f"{owner}: the model misses the data: chi^2_red = {chi2:.3g} against the point-to-point noise "
        f"{quality['noise']:.3g} of the data (>> 1). The errors ({shown}) are scaled by the misfit and inflated "
        f"x{math.sqrt(quality['inflation']):.3g} for correlated residuals, but they are statistical only: the "
        "model's own error (a second gap, a wrong sample DOS, temperature or lock-in amplitude) is not in them. "
        "Look at the residual (model - data) and extend the model or restrict the bias range",
        CalibrationWarning,
        stacklevel=3,
    )


def calibrate_tip(
    bias,
    didv_measured,
    *,
    sample,
    init=None,
    fit=("delta", "gamma", "temperature", "scale"),
    lockin_rms=0.0,
    energy_step=0.004,
    max_points=400,
) -> TipCalibration:
    """Fit a Dynes tip, the temperature and a scale to a spectrum measured on a known sample.

    Model: ``scale * didv(bias - offset, E, rho_s(E), DynesDOS(delta, gamma), temperature, lockin_rms)``.

    Args:
        bias: (n,) bias (mV), any order.
        didv_measured: (n,) measured dI/dV (any unit: ``scale`` converts G_N to it).
        sample: the known sample DOS, a callable of E (meV) such as ``MultiGapDOS`` or ``NormalDOS``; or
            ``"same"``: the sample has the tip's DOS (a Pb tip on Pb, symmetric SIS junction).
        init: {name: start value}; defaults ``DEFAULT_INIT`` (scale: the mean |dI/dV| over the outer fifth of
            the bias range). Held (not fitted) parameters keep these values.
        fit: names of the fitted parameters, from ``TIP_PARAMETERS``.
        lockin_rms: lock-in modulation (mV rms), held fixed.
        energy_step: sample grid step h (meV); keep h <= gamma / 2 of the sharpest DOS (the tunnelling module's
            resolution rule). The grid covers the bias range, the offset bound, 8 k_B T at the temperature bound
            and the lock-in amplitude.
        max_points: at most this many bias points are fitted (every k-th point), for speed.

    Returns:
        :class:`TipCalibration`.
    """
    bias, data = _validate_spectrum(bias, didv_measured)
    _check_parameters("calibrate_tip", lockin_rms=lockin_rms, energy_step=energy_step)
    if not lockin_rms >= 0:
        raise DeconvolutionError(f"calibrate_tip: lockin_rms = {lockin_rms!r} mV (rms) must be >= 0")
    fit = tuple(fit)
    unknown = [name for name in fit if name not in TIP_PARAMETERS]
    if unknown or not fit or len(set(fit)) != len(fit):
        raise DeconvolutionError(f"fit = {fit!r}: name each of {TIP_PARAMETERS} at most once (at least one)")
    init = dict(init or {})
    bad = [name for name in init if name not in TIP_PARAMETERS]
    if bad:
        raise DeconvolutionError(f"init has unknown parameters {bad}; known: {TIP_PARAMETERS}")
    _check_parameters("calibrate_tip", **{f"init[{k!r}]": v for k, v in init.items()})
    if not (isinstance(sample, str) and sample == "same") and not callable(sample):
        raise DeconvolutionError(f"sample = {sample!r}: give a DOS callable (e.g. MultiGapDOS) or 'same'")
    if not energy_step > 0:
        raise DeconvolutionError(f"energy_step = {energy_step!r} meV must be > 0")
    if max_points < 5:
        raise DeconvolutionError(f"max_points = {max_points!r} must be >= 5")
    step = max(1, int(np.ceil(bias.size / max_points)))
    bias, data = bias[::step], data[::step]
    outer = np.abs(bias) >= 0.8 * np.abs(bias).max()
    values = {**DEFAULT_INIT, "scale": float(np.mean(np.abs(data[outer]))), **init}
    for name in TIP_PARAMETERS:
        lo, hi = BOUNDS[name]
        if not lo <= values[name] <= hi:
            raise DeconvolutionError(f"init {name} = {values[name]!r} is outside its bounds [{lo}, {hi}]")

    t_max = max(3.0 * values["temperature"], values["temperature"] + 2.0)
    reach = np.abs(bias).max() + BOUNDS["offset"][1] + COVERAGE_KT * K_B_MEV_PER_K * t_max
    reach += np.sqrt(2.0) * lockin_rms + 0.2
    energies = np.arange(-reach, reach + energy_step / 2, energy_step)
    bounds_t = (BOUNDS["temperature"][0], t_max)
    names = fit

    def model(theta):
        p = dict(values)
        p.update(zip(names, theta, strict=True))
        tip = DynesDOS(p["delta"], p["gamma"])
        rho_s = tip(energies) if isinstance(sample, str) else sample(energies)
        g = didv(bias - p["offset"], energies, rho_s, tip, temperature=p["temperature"], lockin_rms=lockin_rms)
        return p["scale"] * g

    lower = [bounds_t[0] if n == "temperature" else BOUNDS[n][0] for n in names]
    upper = [bounds_t[1] if n == "temperature" else BOUNDS[n][1] for n in names]
    sol, fitted, errs, quality = _least_squares(model, data, names, [values[n] for n in names], lower, upper, bias)
    _warn_misfit("calibrate_tip", quality, errs, names)
    r = sol.fun
    params = {**values, **fitted}
    errors = {n: float("nan") for n in TIP_PARAMETERS}
    errors.update(errs)
    return TipCalibration(
        params=params,
        errors=errors,
        residual_rms=float(np.sqrt(np.mean(r**2))),
        tip=DynesDOS(params["delta"], params["gamma"]),
        bias=bias,
        model=r + data,
        success=bool(sol.success),
        message=str(sol.message),
        chi2_red=float(quality["chi2_red"]),
        noise=float(quality["noise"]),
        error_inflation=float(quality["inflation"]),
    )


SAMPLE_PARAMETERS = ("delta1", "delta2", "gamma1", "gamma2", "weight", "scale", "offset")
"""Parameters of :func:`fit_sample_dos`: the two gaps and their Dynes broadenings (meV), the weight of gap 1
(gap 2 has ``1 - weight``), the G_N-to-data factor and a bias offset (mV)."""

SAMPLE_DEFAULT_INIT = {
    "delta1": 1.26,
    "delta2": 1.41,
    "gamma1": 0.02,
    "gamma2": 0.02,
    "weight": 0.5,
    "scale": None,
    "offset": 0.0,
}
SAMPLE_BOUNDS = {
    "delta1": BOUNDS["delta"],
    "delta2": BOUNDS["delta"],
    "gamma1": BOUNDS["gamma"],
    "gamma2": BOUNDS["gamma"],
    "weight": (0.0, 1.0),
    "scale": BOUNDS["scale"],
    "offset": BOUNDS["offset"],
}


class SampleFit(NamedTuple):
    """Result of :func:`fit_sample_dos`.

    params: every parameter of ``SAMPLE_PARAMETERS`` by name (fitted or held; with ``common_gamma`` gamma2 =
    gamma1), floats. errors: standard errors of the fitted ones (NaN for held or tied ones). residual_rms: rms
    of (model - data) in the data's units. sample: the fitted two-gap :class:`MultiGapDOS`. bias, model: the
    points used (mV) and the fitted dI/dV there. success, message: from the optimiser. chi2_red, noise,
    error_inflation: as in :class:`TipCalibration`.
    """

    params: dict
    errors: dict
    residual_rms: float
    sample: MultiGapDOS
    bias: np.ndarray
    model: np.ndarray
    success: bool
    message: str
    chi2_red: float = math.nan
    noise: float = math.nan
    error_inflation: float = 1.0


def fit_sample_dos(
    bias,
    didv_measured,
    *,
    tip,
    temperature,
    init=None,
    fit=("delta1", "delta2", "gamma1", "gamma2", "weight", "scale", "offset"),
    common_gamma=False,
    lockin_rms=0.0,
    energy_step=0.004,
    max_points=400,
) -> SampleFit:
    """Fit a two-gap Dynes sample (e.g. Pb) measured with a known tip, at a known temperature.

    Model: ``scale * didv(bias - offset, E, rho_s(E), tip, temperature, lockin_rms)`` with
    ``rho_s = w rho_Dynes(E; delta1, gamma1) + (1 - w) rho_Dynes(E; delta2, gamma2)`` (:class:`MultiGapDOS`;
    the two gaps of Pb: Ruby et al., PRL 114, 157001 (2015)). Least squares and standard errors as in
    :func:`calibrate_tip`. The labels are not ordered by the fit: ``delta1`` starts below ``delta2`` by default.

    Args:
        bias: (n,) bias (mV), any order. didv_measured: (n,) measured dI/dV (any unit: ``scale`` converts).
        tip: the tip DOS callable (``NormalDOS()`` for a normal tip, or a calibrated ``DynesDOS``).
        temperature: T (K), held fixed (e.g. the file header's value).
        init: {name: start value} over ``SAMPLE_PARAMETERS``; defaults ``SAMPLE_DEFAULT_INIT`` (scale: the mean
            |dI/dV| over the outer fifth of the bias range). Held parameters keep these values.
        fit: names of the fitted parameters, from ``SAMPLE_PARAMETERS``.
        common_gamma: one Dynes broadening for both gaps (gamma2 tied to gamma1; do not list gamma2 in ``fit``).
        lockin_rms: lock-in modulation (mV rms), held fixed.
        energy_step: sample grid step h (meV); the gammas are bounded below by 2 h (the resolution rule).
        max_points: at most this many bias points are fitted (every k-th point).

    Returns:
        :class:`SampleFit`.
    """
    bias, data = _validate_spectrum(bias, didv_measured)
    fit = tuple(fit)
    unknown = [name for name in fit if name not in SAMPLE_PARAMETERS]
    if unknown or not fit or len(set(fit)) != len(fit):
        raise DeconvolutionError(f"fit = {fit!r}: name each of {SAMPLE_PARAMETERS} at most once (at least one)")
    if common_gamma and "gamma2" in fit:
        raise DeconvolutionError("common_gamma=True ties gamma2 to gamma1: leave gamma2 out of fit")
    init = dict(init or {})
    bad = [name for name in init if name not in SAMPLE_PARAMETERS]
    if bad:
        raise DeconvolutionError(f"init has unknown parameters {bad}; known: {SAMPLE_PARAMETERS}")
    _check_parameters("fit_sample_dos", lockin_rms=lockin_rms, energy_step=energy_step, temperature=temperature)
    _check_parameters("fit_sample_dos", **{f"init[{k!r}]": v for k, v in init.items()})
    if not lockin_rms >= 0:
        raise DeconvolutionError(f"fit_sample_dos: lockin_rms = {lockin_rms!r} mV (rms) must be >= 0")
    if not callable(tip):
        raise DeconvolutionError(f"tip = {tip!r}: give a DOS callable (e.g. NormalDOS() or DynesDOS)")
    if not (np.isfinite(temperature) and temperature >= 0):
        raise DeconvolutionError(f"temperature = {temperature!r} K must be finite and >= 0")
    if not energy_step > 0:
        raise DeconvolutionError(f"energy_step = {energy_step!r} meV must be > 0")
    if max_points < 5:
        raise DeconvolutionError(f"max_points = {max_points!r} must be >= 5")
    step = max(1, int(np.ceil(bias.size / max_points)))
    bias, data = bias[::step], data[::step]
    outer = np.abs(bias) >= 0.8 * np.abs(bias).max()
    values = {**SAMPLE_DEFAULT_INIT, "scale": float(np.mean(np.abs(data[outer]))), **init}
    for name in SAMPLE_PARAMETERS:
        lo, hi = SAMPLE_BOUNDS[name]
        if not lo <= values[name] <= hi:
            raise DeconvolutionError(f"init {name} = {values[name]!r} is outside its bounds [{lo}, {hi}]")

    reach = np.abs(bias).max() + SAMPLE_BOUNDS["offset"][1] + COVERAGE_KT * K_B_MEV_PER_K * temperature
    reach += np.sqrt(2.0) * lockin_rms + 0.2
    energies = np.arange(-reach, reach + energy_step / 2, energy_step)
    names = fit

    def parameters(theta):
        p = dict(values)
        p.update(zip(names, theta, strict=True))
        if common_gamma:
            p["gamma2"] = p["gamma1"]
        return p

    def two_gap(p):
        w = p["weight"]
        return MultiGapDOS(
            jnp.stack([p["delta1"], p["delta2"]]), jnp.stack([p["gamma1"], p["gamma2"]]), jnp.stack([w, 1.0 - w])
        )

    def model(theta):
        p = parameters(theta)
        rho_s = two_gap({k: jnp.asarray(v, dtype=float) for k, v in p.items()})(energies)
        g = didv(bias - p["offset"], energies, rho_s, tip, temperature=temperature, lockin_rms=lockin_rms)
        return p["scale"] * g

    # resolution rule of the tunnelling module (h <= gamma / 2): a narrower Dynes peak is not resolved on the grid
    lower = [SAMPLE_BOUNDS[n][0] for n in names]
    lower = [max(lo, 2.0 * energy_step) if n.startswith("gamma") else lo for n, lo in zip(names, lower, strict=True)]
    upper = [SAMPLE_BOUNDS[n][1] for n in names]
    sol, fitted, errs, quality = _least_squares(model, data, names, [values[n] for n in names], lower, upper, bias)
    _warn_misfit("fit_sample_dos", quality, errs, names)
    params = parameters([fitted[n] for n in names])
    errors = {n: float("nan") for n in SAMPLE_PARAMETERS}
    errors.update(errs)
    r = sol.fun
    return SampleFit(
        params=params,
        errors=errors,
        residual_rms=float(np.sqrt(np.mean(r**2))),
        sample=MultiGapDOS(
            [params["delta1"], params["delta2"]],
            [params["gamma1"], params["gamma2"]],
            [params["weight"], 1.0 - params["weight"]],
        ),
        bias=bias,
        model=r + data,
        success=bool(sol.success),
        message=str(sol.message),
        chi2_red=float(quality["chi2_red"]),
        noise=float(quality["noise"]),
        error_inflation=float(quality["inflation"]),
    )


class Deconvolution(NamedTuple):
    """Result of :func:`deconvolve`.

    energies: (n_e,) meV. dos: (n_e,) recovered rho_s. error: (n_e,) one-sigma posterior errors.
    regularisation: lambda used. noise: estimated noise sigma of the data (G_N units). residual_rms: rms of
    W rho - data. model: (n_v,) W rho at the bias points. gcv: (n_lambda, 2) the curve lambda was chosen on,
    (lambda, criterion): GCV, the L-curve's curvature, or the mean squared residual (discrepancy); empty when
    lambda was given. method: how lambda was chosen ('gcv', 'lcurve', 'discrepancy', 'given').
    problems: the failed sanity checks (empty when the result passed them; see :func:`deconvolve`).
    """

    energies: np.ndarray
    dos: jax.Array
    error: jax.Array
    regularisation: float
    noise: float
    residual_rms: float
    model: jax.Array
    gcv: np.ndarray
    method: str = "given"
    problems: tuple = ()


REGULARISATION_METHODS = ("gcv", "lcurve", "discrepancy")
"""The automatic choices of lambda in :func:`deconvolve`."""

DOS_BOUND = 200.0
"""Largest |rho_s| (normal-state units) a deconvolution may return. The sharpest feature of a normalised DOS, a
BCS coherence peak averaged over a grid cell h, reaches sqrt(2 Delta / h): ~60 for Delta = 1.4 meV at h = 1 ueV,
and a dense deconvolution (n_e <= 6000 points over a window of a few Delta) cannot go much finer. An
under-regularised solve (a tip that does not match the data) oscillates with amplitudes of 1e2-1e5."""

ERROR_BOUND = 3.0
"""Largest median posterior error (normal-state units) over the bias window: beyond it the data do not fix the
DOS to within three times its normal-state value (a well-posed deconvolution has ~0.1-0.5; an under-regularised one
30-3000 in our tests)."""


@partial(jax.jit, static_argnums=0)
def _smoothness(n: int, ridge: float) -> jax.Array:
    """Upper-triangular R (n, n) with R^T R = D2^T D2 + ridge^2 I (D2 the (n - 2, n) second difference).

    All dense linear algebra here is done by JAX (XLA) rather than NumPy's LAPACK: mixing the two thread pools
    on a few cores right after JAX work slowed a 500 x 1000 SVD from 0.1 s to 10 s in our tests.
    """
    d2 = jnp.zeros((n - 2, n))
    i = jnp.arange(n - 2)
    d2 = d2.at[i, i].set(1.0).at[i, i + 1].set(-2.0).at[i, i + 2].set(1.0)
    return jnp.linalg.cholesky(d2.T @ d2 + ridge**2 * jnp.eye(n)).T


@jax.jit
def _standard_form(r_mat, kernel, rhs):
    """(s, beta, outside) of min |W d - b|^2 + lambda^2 |R d|^2 in standard form K = W R^-1 = U S V^T:
    singular values s, beta = U^T b, and |b|^2 - |beta|^2 (the part of b outside range(K))."""
    kernel_std = jax.scipy.linalg.solve_triangular(r_mat, kernel.T, trans="T", lower=False).T
    u, s, _ = jnp.linalg.svd(kernel_std, full_matrices=False)
    beta = u.T @ rhs
    return s, beta, jnp.maximum(rhs @ rhs - beta @ beta, 0.0)


def _filter_curves(s, beta, outside, lambdas):
    """(|residual|^2, |R d|^2, dof = n_v - trace(influence) offset by n_v) on a grid of lambdas (NumPy, 1-d)."""
    phi = s[None, :] ** 2 / (s[None, :] ** 2 + lambdas[:, None] ** 2)
    res2 = np.sum(((1 - phi) * beta[None, :]) ** 2, axis=1) + outside
    safe = np.where(s > 0, s, 1.0)
    semi2 = np.sum((np.where(s[None, :] > 0, phi / safe[None, :], 0.0) * beta[None, :]) ** 2, axis=1)
    return res2, semi2, phi.sum(axis=1)


def _gcv_curve(r_mat, kernel, rhs):
    """(lambdas, GCV(lambda)) for min |W d - b|^2 + lambda^2 |R d|^2, from the SVD of K = W R^-1 (standard form)."""
    s, beta, outside = (np.asarray(a) for a in _standard_form(r_mat, kernel, rhs))
    lambdas = s[0] * np.logspace(-9, 0, 81)
    res2, _, trace = _filter_curves(s, beta, outside, lambdas)
    return lambdas, res2 / (rhs.size - trace) ** 2


def _choose_lambda(method, s, beta, outside, n_v, noise):
    """lambda by 'gcv' (minimum of GCV), 'lcurve' (maximum curvature of (log |res|, log |R d|)) or 'discrepancy'
    (|res|^2 = n_v noise^2, solved in log lambda); returns (lambda, curve (n, 2) of (lambda, criterion))."""
    lambdas = s[0] * np.logspace(-9, 0, 81)
    res2, semi2, trace = _filter_curves(s, beta, outside, lambdas)
    if method == "gcv":
        curve = res2 / (n_v - trace) ** 2
        return float(lambdas[np.argmin(curve)]), np.stack([lambdas, curve], axis=1)
    if method == "lcurve":
        x, y, t = 0.5 * np.log(res2), 0.5 * np.log(np.maximum(semi2, 1e-300)), np.log(lambdas)
        dx, dy = np.gradient(x, t), np.gradient(y, t)
        ddx, ddy = np.gradient(dx, t), np.gradient(dy, t)
        kappa = (dx * ddy - dy * ddx) / np.maximum(dx**2 + dy**2, 1e-300) ** 1.5
        inner = kappa[2:-2]  # the ends of the grid have one-sided differences
        return float(lambdas[2 + np.argmax(inner)]), np.stack([lambdas, kappa], axis=1)
    target = n_v * noise**2  # discrepancy: res2(lambda) rises monotonically from res2(0) = outside

    def gap(log_lam):
        r2, _, _ = _filter_curves(s, beta, outside, np.array([math.exp(log_lam)]))
        return float(r2[0]) - target

    lo, hi = math.log(s[0] * 1e-12), math.log(s[0] * 1e3)
    if gap(lo) >= 0:
        raise DeconvolutionError(
            f"regularisation='discrepancy': even lambda -> 0 leaves a residual above the noise level noise = "
            f"{noise:.3g} G_N (rms {math.sqrt(max(gap(lo) + target, 0.0) / n_v):.3g}): the tip, temperature or "
            "lock-in amplitude do not match the data (recalibrate the tip), or the noise is larger than given"
        )
    if gap(hi) <= 0:
        raise DeconvolutionError(
            f"regularisation='discrepancy': noise = {noise:.3g} G_N is larger than the whole signal (the prior alone "
            "fits the data within it); give the noise of the data (G_N units)"
        )
    lam = math.exp(scipy.optimize.brentq(gap, lo, hi, xtol=1e-6))
    return lam, np.stack([lambdas, res2 / n_v], axis=1)


def _sanity(energies, bias, dos, error, prior) -> list[str]:
    """The failed checks of a recovered DOS over the Fermi windows of the biases, min(0, V) <= E <= max(0, V)."""
    inside = (energies >= min(0.0, bias.min())) & (energies <= max(0.0, bias.max()))
    if not inside.any():
        return []
    d, e = dos[inside], error[inside]
    problems = []
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(e))):
        return ["the DOS or its errors are not finite (the solve is numerically singular at so small a lambda)"]
    peak = float(np.max(np.abs(d)))
    if peak > DOS_BOUND:
        problems.append(f"|rho| reaches {peak:.3g} (a normalised DOS stays below {DOS_BOUND:g})")
    median_error = float(np.median(e))
    if median_error > ERROR_BOUND:
        problems.append(f"the median posterior error is {median_error:.3g} (the data do not fix the DOS)")
    negative = (d < -0.1 * abs(prior)) & (d + 3.0 * e < 0)
    if negative.sum() > max(2, 0.01 * d.size):
        problems.append(
            f"rho is negative beyond 3 sigma at {int(negative.sum())} of {d.size} energies (min {float(d.min()):.3g})"
        )
    return problems


def deconvolve(
    bias,
    didv_measured,
    tip,
    *,
    temperature,
    sample_energies,
    regularisation="gcv",
    lockin_rms=0.0,
    prior=1.0,
    ridge=0.05,
    nonnegative=False,
    noise=None,
    check="raise",
) -> Deconvolution:
    """Recover the sample DOS rho_s(E) from dI/dV measured with a known tip (linear, Tikhonov-regularised).

    Args:
        bias: (n_v,) bias (mV). didv_measured: (n_v,) dI/dV in units of G_N (divide by the calibrated scale).
        tip: the tip DOS callable (e.g. the ``tip`` of :func:`calibrate_tip`).
        temperature: K. lockin_rms: mV rms.
        sample_energies: (n_e,) uniform grid (meV) on which rho_s is recovered; it must cover the Fermi windows
            (see :func:`~shibajax.measurement.tunnelling.didv`). Its step sets the resolution.
        regularisation: "gcv" (choose lambda by generalised cross-validation), "lcurve" (the corner of the
            L-curve), "discrepancy" (the residual equals the noise: |W rho - y|^2 = n_v noise^2; the most robust
            when the noise is known) or a float lambda >= 0.
        prior: the DOS the solution relaxes to where the data do not constrain it (the normal state, 1).
        ridge: relative weight eps of |rho - prior|^2 against the curvature |D2 rho|^2 in the penalty.
        nonnegative: also impose rho_s >= 0 (bounded least squares at the chosen lambda; not differentiable).
        noise: the noise sigma of the data (G_N units) for "discrepancy"; default: :func:`noise_level` of the data.
        check: what a result that fails the sanity checks does: "raise" (DeconvolutionError, default), "warn"
            (DeconvolutionWarning; the result's ``problems`` list them) or "off". Over the bias window the DOS
            must stay below ``DOS_BOUND`` in modulus, be determined by the data (median posterior error below
            ``ERROR_BOUND``) and not be negative beyond 3 sigma at more than 1 % of the energies. A tip,
            temperature or lock-in amplitude that does not match the data (a tip gap off by 0.02 meV) makes GCV
            pick a lambda ~1e-7 and a DOS of order 1e5 that fails them.

    Returns:
        :class:`Deconvolution`.

    Raises:
        DeconvolutionError: bad input (the message names it), or a result that fails the sanity checks
            (``check="raise"``; the message gives lambda and the cures).
    """
    bias, data = _validate_spectrum(bias, didv_measured)
    _check_parameters("deconvolve", temperature=temperature, lockin_rms=lockin_rms, prior=prior, ridge=ridge)
    _check_parameters("deconvolve", sample_energies=sample_energies, noise=noise)
    energies = np.asarray(sample_energies, dtype=float)
    method = regularisation if isinstance(regularisation, str) else "given"
    if isinstance(regularisation, str):
        if regularisation not in REGULARISATION_METHODS:
            raise DeconvolutionError(
                f"regularisation = {regularisation!r}: use one of {REGULARISATION_METHODS} or a number >= 0"
            )
    else:
        try:
            lam = float(regularisation)
        except (TypeError, ValueError) as err:
            raise DeconvolutionError(
                f"regularisation = {regularisation!r}: use one of {REGULARISATION_METHODS} or a number >= 0"
            ) from err
        if not (np.isfinite(lam) and lam >= 0):
            raise DeconvolutionError(
                f"regularisation = {regularisation!r}: use one of {REGULARISATION_METHODS} or a number >= 0"
            )
    if check not in ("raise", "warn", "off"):
        raise DeconvolutionError(f"check = {check!r}: use 'raise', 'warn' or 'off'")
    if not ridge > 0:
        raise DeconvolutionError(f"ridge = {ridge!r} must be > 0 (it makes the penalty invertible)")
    if noise is not None and not noise > 0:
        raise DeconvolutionError(f"noise = {noise!r} G_N must be > 0 (the noise sigma of the data)")
    kernel = didv_kernel(bias, energies, tip, temperature=temperature, lockin_rms=lockin_rms)
    n_e = energies.size
    r_mat = _smoothness(n_e, ridge)
    y = jnp.asarray(data)
    rhs = y - kernel @ jnp.full(n_e, prior)
    gcv = np.zeros((0, 2))
    if method != "given":
        s, beta, outside = (np.asarray(a) for a in _standard_form(r_mat, kernel, rhs))
        sigma = float(noise) if noise is not None else noise_level(bias, data)
        if method == "discrepancy" and not sigma > 0:
            raise DeconvolutionError(
                "regularisation='discrepancy': the data show no point-to-point noise; give noise= (G_N units)"
            )
        lam, gcv = _choose_lambda(method, s, beta, outside, bias.size, sigma)
    penalty = jnp.asarray(r_mat.T @ r_mat)
    dos, error, noise_fit, model = regularised_solve(kernel, y, lam, penalty=penalty, prior=prior)
    if nonnegative:
        a = np.vstack([np.asarray(kernel), lam * np.asarray(r_mat)])
        b = np.concatenate([np.asarray(rhs), np.zeros(n_e)])
        sol = scipy.optimize.lsq_linear(a, b, bounds=(-prior, np.inf), method="trf", tol=1e-12)
        dos = prior + jnp.asarray(sol.x)
        model = kernel @ dos
    problems = () if check == "off" else tuple(_sanity(energies, bias, np.asarray(dos), np.asarray(error), prior))
    if problems:
        how = {"gcv": "chosen by GCV", "lcurve": "at the L-curve corner", "discrepancy": "by the discrepancy principle"}
        text = (
            f"deconvolve: the recovered DOS fails its sanity checks at lambda = {lam:.3g} "
            f"({how.get(method, 'as given')}): {'; '.join(problems)}. The tip, temperature or lock-in amplitude "
            "probably do not match the data (a tip gap off by 0.02 meV is enough): recalibrate the tip on a "
            "reference spectrum (calibrate_tip); or choose lambda by regularisation='discrepancy' with the noise of "
            "the data, or 'lcurve', or give a larger lambda (e.g. 10x this one); check='warn' returns the result "
            "anyway"
        )
        if check == "raise":
            raise DeconvolutionError(text)
        warnings.warn(text, DeconvolutionWarning, stacklevel=2)
    return Deconvolution(
        energies=energies,
        dos=dos,
        error=error,
        regularisation=lam,
        noise=float(noise_fit),
        residual_rms=float(jnp.sqrt(jnp.mean((model - y) ** 2))),
        model=model,
        gcv=gcv,
        method=method,
        problems=problems,
    )


@jax.jit
def regularised_solve(kernel, data, regularisation, *, penalty, prior=1.0):
    """The Tikhonov solve of :func:`deconvolve` for a given lambda, in JAX (differentiable in every argument).

    Args:
        kernel: (n_v, n_e) W. data: (n_v,) measured dI/dV (G_N). regularisation: lambda >= 0.
        penalty: (n_e, n_e) positive definite R^T R. prior: the DOS the solution relaxes to.

    Returns:
        (dos (n_e,), error (n_e,) posterior one-sigma, noise sigma (scalar), model W dos (n_v,)).
    """
    kernel = jnp.asarray(kernel)
    data = jnp.asarray(data)
    n_v, n_e = kernel.shape
    rhs = data - kernel @ jnp.full(n_e, prior)
    cho = jax.scipy.linalg.cho_factor(kernel.T @ kernel + regularisation**2 * jnp.asarray(penalty))
    dos = prior + jax.scipy.linalg.cho_solve(cho, kernel.T @ rhs)
    model = kernel @ dos
    inverse = jax.scipy.linalg.cho_solve(cho, jnp.eye(n_e))
    influence = jnp.trace(inverse @ (kernel.T @ kernel))
    noise2 = jnp.sum((model - data) ** 2) / jnp.maximum(n_v - influence, 1.0)
    return dos, jnp.sqrt(noise2 * jnp.diag(inverse)), jnp.sqrt(noise2), model
