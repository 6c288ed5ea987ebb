"""Tunnelling spectra: I(V) and dI/dV(V) of an STM junction with thermal and lock-in broadening.

Conventions (docs/conventions.md, "Measurement"): energies in meV measured from each electrode's Fermi level,
bias V in mV **applied to the sample** (e = 1, so eV in meV), temperatures in K, conductances in units of the
normal-state conductance G_N (both DOS -> 1 gives dI/dV = 1), currents in G_N * mV. At positive bias electrons
tunnel from the tip into **empty sample states**: the sample state at energy E lines up with the tip state at
E - V, and

    I(V)     = int rho_s(E) rho_t(E - V) [f(E - V) - f(E)] dE,
    dI/dV(V) = int rho_s(E) { -rho_t'(E - V) [f(E - V) - f(E)] - rho_t(E - V) f'(E - V) } dE,

(Tersoff-Hamann / Bardeen with constant matrix element; the issue's formula with E + eV -> E - eV, i.e. with the
bias on the sample). With a normal tip at T -> 0, dI/dV(V) = rho_s(V): a Shiba state whose electron-like
(u^2) peak is at +eps shows at positive bias. With a superconducting tip of gap Delta_t it shows at
V = +(Delta_t + eps), and at finite T a thermal replica at V = +(Delta_t - eps) from its hole-like (v^2)
partner.

Numerics. The sample DOS is given on a **uniform** grid E_j = E_0 + j h; the tip is a callable DOS
(``shibajax.measurement.dos``), evaluated at E_j - V, with rho_t' from ``jax.jvp`` of the callable. The
integral is the rectangle/trapezoid rule over the grid (the integrand vanishes at both ends, see below).

* Resolution: the trapezoid rule converges exponentially, error ~ exp(-2 pi w / h), for an integrand analytic
  in a strip of half-width w: w = min(Dynes gammas of tip and sample, width of the sample's sharpest peak,
  pi k_B T). Use h <= w / 2 (then the error is below 2e-3 relative; h <= w / 4: 1e-6).
* Low temperature: when k_B T < h the Fermi factors cannot be sampled at points. Then the grid values are
  replaced by exact integrals over the grid's linear-interpolation ("hat") basis: the -f' term by the second
  difference of G(x) = k_B T log(1 + e^{x / k_B T}) (at T = 0: max(x, 0), so dI/dV is rho_s linearly
  interpolated at V), and f in the window by its average over the cell of width h. This keeps T = 0 exact to
  O(h^2) and the normal-state sum rule exact at every T.
* Coverage: the integrand vanishes outside [min(0, V) - a, max(0, V) + a] with a = 8 k_B T + sqrt(2) V_rms
  (the Fermi window and the thermal tail; the tip gap does not enlarge it: rho_t only multiplies the window).
  The grid must contain this interval for every bias (the neglected tail is < e^-8 ~ 3.4e-4 G_N), else
  :class:`~shibajax.errors.TunnellingError` is raised.

Lock-in. The modulation V + sqrt(2) V_rms cos(w t) (Nanonis headers give V_rms) and the X output of the first
harmonic divided by the peak amplitude A = sqrt(2) V_rms give, exactly (integrate by parts),

    dI/dV_LI(V) = (2 / (pi A)) int_0^pi I(V + A cos t) cos t dt
                = int_{-A}^{A} dI/dV(V + u) (2 / (pi A^2)) sqrt(A^2 - u^2) du,

a semicircle kernel of unit area and variance A^2 / 4 = V_rms^2 / 2 (full width at half maximum
sqrt(3) A = 2.45 V_rms). It is evaluated by Gauss-Chebyshev quadrature of the second kind. For A >= 4 h the
dI/dV kernel is first computed at the grid energies as biases (Toeplitz in E_j - V: 2 n_e - 1 tip values)
and its cubic (Catmull-Rom) interpolant is averaged (error ~1e-5 relative on the Pb spectra of the tests);
for A < 4 h dI/dV is evaluated directly at the nodes. Reference: Klein, Leger, Belin, Defourneau & Sangster,
Phys. Rev. B 7, 2336 (1973).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from shibajax import _precision  # noqa: F401
from shibajax.errors import TunnellingError
from shibajax.measurement.dos import check_finite, concrete

K_B_MEV_PER_K = 0.08617333262
"""Boltzmann constant in meV per kelvin (CODATA 2018, exact)."""

COVERAGE_KT = 8.0
"""The sample grid must reach this many k_B T beyond the Fermi window (the missing tail is < e^-8 = 3.4e-4 G_N)."""

DEFAULT_LOCKIN_NODES = 48
"""Gauss-Chebyshev nodes of a direct lock-in average when the amplitude is not known at trace time."""

GRID_LOCKIN_NODES = 2048
"""Gauss-Chebyshev nodes of the lock-in average of the interpolated grid kernel (cheap: 4 weights per node)."""

_ROWS_PER_CHUNK = 2**21  # elements (bias x nodes x energies) per lax.map batch: bounds the memory to ~100 MB
_GRID_METHOD_MAX = 6000  # largest sample grid for the Toeplitz lock-in method (n_e^2 float64 = 288 MB)


def fermi(E, temperature) -> jax.Array:
    """Fermi function 1 / (1 + exp(E / k_B T)), stable for any E / k_B T; T = 0 gives the step (1/2 at E = 0).

    Args:
        E: energies (meV), any shape.
        temperature: T (K) >= 0, broadcast against E.

    Example:
        >>> float(fermi(0.0, 1.0)), float(fermi(-1.0, 0.0)), float(fermi(1e6, 1.0))
        (0.5, 1.0, 0.0)
    """
    t = check_finite(temperature, "temperature", "fermi", error=TunnellingError, unit="K")
    if t is not None and np.any(t < 0):
        raise TunnellingError(f"temperature = {t!r} K must be >= 0")
    kt = K_B_MEV_PER_K * jnp.asarray(temperature, dtype=float)
    E = jnp.asarray(E, dtype=float)
    safe = jnp.where(kt > 0, kt, 1.0)
    return jnp.where(kt > 0, 0.5 * (1.0 - jnp.tanh(E / (2.0 * safe))), 0.5 * (1.0 - jnp.sign(E)))


def _flush(x):
    """Subnormal (and tiny) values to 0: |x| < 1e-200 carries no information here and is slow to compute with."""
    return jnp.where(jnp.abs(x) < 1e-200, 0.0, x)


def _thermal(x, kt, h):
    """Grid weights of the Fermi factors at x = E_j - V (or E_j): (f_window, minus_fprime), each x.shape.

    k_B T >= h: point values f(x), -f'(x). k_B T < h (incl. T = 0): the cell average of f over [x - h/2, x + h/2]
    and the exact integral of -f' against the hat function of node x, divided by h.
    """
    safe = jnp.where(kt > 0, kt, 1.0)

    def point(y):
        # -f' is set to 0 beyond |y| = 80 k_B T (< 1e-34 / k_B T): no subnormal numbers, which would slow every
        # later product (a 500 x 1000 SVD of such a kernel took 10 s instead of 0.1 s)
        u = y / (2.0 * safe)
        far = jnp.abs(u) > 40.0
        mfp = jnp.where(far, 0.0, 0.25 / (safe * jnp.cosh(jnp.where(far, 0.0, u)) ** 2))
        return 0.5 * (1.0 - jnp.tanh(u)), mfp

    def cell(y):
        def antiderivative_f(z):  # F' = f; F(z) = -k_B T log(1 + e^{-z / k_B T}) -> min(z, 0) at T = 0
            return jnp.where(kt > 0, -safe * jax.nn.softplus(-z / safe), jnp.minimum(z, 0.0))

        def ramp(z):  # G'' = -f'; G(z) = k_B T log(1 + e^{z / k_B T}) -> max(z, 0) at T = 0
            return jnp.where(kt > 0, safe * jax.nn.softplus(z / safe), jnp.maximum(z, 0.0))

        f_cell = (antiderivative_f(y + 0.5 * h) - antiderivative_f(y - 0.5 * h)) / h
        mfp = (ramp(y + h) - 2.0 * ramp(y) + ramp(y - h)) / h**2
        return _flush(f_cell), _flush(mfp)

    return jax.lax.cond(kt >= h, point, cell, x)


def _row(v, energies, f_e, h, kt, tip, current):
    """Kernel row for one bias v: (n_e,) weights w_j with dI/dV(v) (or I(v)) = sum_j w_j rho_s(E_j).

    ``f_e``: the (grid) Fermi factors of the sample energies, (n_e,), computed once for all biases.
    """
    x = energies - v
    rho_t, drho_t = jax.jvp(tip, (x,), (jnp.ones_like(x),))
    rho_t, drho_t = _flush(rho_t), _flush(drho_t)
    f_x, mfp_x = _thermal(x, kt, h)
    if current:
        return h * rho_t * (f_x - f_e)
    return h * (-drho_t * (f_x - f_e) + rho_t * mfp_x)


def _lockin_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Chebyshev (2nd kind) nodes x_k in (-1, 1) and weights c_k (sum 1) for the semicircle average."""
    k = np.arange(1, n + 1)
    theta = k * np.pi / (n + 1)
    return np.cos(theta), 2.0 / (n + 1) * np.sin(theta) ** 2


def _grid_profiles(energies, h, kt, tip):
    """a(x), -b(x) = rho_t'(x) at the 2 n_e - 1 grid offsets x = (j - m) h (see :func:`_grid_kernel`)."""
    n = energies.shape[0]
    offsets = h * jnp.arange(-(n - 1), n, dtype=float)
    rho_t, drho_t = jax.jvp(tip, (offsets,), (jnp.ones_like(offsets),))
    rho_t, drho_t = _flush(rho_t), _flush(drho_t)
    f_x, mfp_x = _thermal(offsets, kt, h)
    return _flush(-drho_t * f_x + rho_t * mfp_x), drho_t


def _grid_kernel(energies, f_e, h, kt, tip):
    """dI/dV kernel rows at the biases V_m = E_m of the grid itself, (n_e, n_e), from 2 n_e - 1 tip values.

    Row m, column j depends on E_j - E_m = (j - m) h and on E_j only: W_mj = h [a((j - m) h) - b((j - m) h) f_j]
    with a = -rho_t' f + rho_t (-f'), b = -rho_t' (a Toeplitz structure).
    """
    n = energies.shape[0]
    a, drho_t = _grid_profiles(energies, h, kt, tip)
    idx = jnp.arange(n)[None, :] - jnp.arange(n)[:, None] + (n - 1)
    return h * (a[idx] + drho_t[idx] * f_e[None, :])


def _correlate(x, profile):
    """c[..., m] = sum_j x[..., j] profile[j - m + n - 1] for m < n (x (..., n), profile (2n - 1,)), by FFT."""
    n = x.shape[-1]
    size = 1 << (3 * n - 2).bit_length()
    spectrum = jnp.fft.rfft(x, size) * jnp.fft.rfft(profile[::-1], size)
    return jnp.fft.irfft(spectrum, size)[..., n - 1 : 2 * n - 1]


def _grid_apply(dos, energies, f_e, h, kt, tip):
    """dI/dV at the biases V_m = E_m, (..., n_e): the grid kernel applied to dos in O(n_e log n_e)."""
    a, drho_t = _grid_profiles(energies, h, kt, tip)
    return h * (_correlate(dos, a) + _correlate(dos * f_e, drho_t))


def _lockin_interpolation(bias, amp, energies, h, n_nodes):
    """(n_v, n_e) weights P: sum_m P_vm g(E_m) = semicircle average at V_v of the cubic (Catmull-Rom)
    interpolant of g. The interpolant reproduces quadratics, so the average adds no variance (a linear one would
    add h^2 / 6) and is C^1 in V and A (smooth gradients for fits of the offset and the lock-in amplitude)."""
    n = energies.shape[0]
    nodes, weights = _lockin_rule(n_nodes)
    chunk = min(n_nodes, 256)
    pad = -n_nodes % chunk  # zero-weight nodes fill the last chunk
    nodes = jnp.asarray(np.r_[nodes, np.zeros(pad)]).reshape(-1, chunk)
    weights = jnp.asarray(np.r_[weights, np.zeros(pad)]).reshape(-1, chunk)
    rows = jnp.broadcast_to(jnp.arange(bias.shape[0])[:, None], (bias.shape[0], chunk))

    def add(out, nodes_weights):
        x, c = nodes_weights
        t = (bias[:, None] + amp * x[None, :] - energies[0]) / h  # (n_v, chunk)
        i = jnp.clip(jnp.floor(t), 1, n - 3).astype(int)
        u = t - i
        cubic = (
            (-(u**3) + 2 * u**2 - u) / 2,
            (3 * u**3 - 5 * u**2 + 2) / 2,
            (-3 * u**3 + 4 * u**2 + u) / 2,
            (u**3 - u**2) / 2,
        )
        for shift, b in zip((-1, 0, 1, 2), cubic, strict=True):
            out = out.at[rows, i + shift].add(c * b)
        return out, None

    out, _ = jax.lax.scan(add, jnp.zeros((bias.shape[0], n)), (nodes, weights))
    return out


@partial(jax.jit, static_argnames=("tip_static", "treedef", "n_nodes", "method", "current"))
def _kernel_factors(bias, energies, kt, amp, tip_dynamic, *, tip_static, treedef, n_nodes, method, current):
    """The kernel as (P, K) with W = P @ K ("grid": P (n_v, n_e) lock-in weights, K (n_e, n_e) grid kernel) or
    (None, W) ("direct"); applying the factors to rho_s in turn avoids the n_v n_e^2 product."""
    tip = _merge(tip_dynamic, tip_static, treedef)
    h = energies[1] - energies[0]
    n_e = energies.shape[0]
    f_e, _ = _thermal(energies, kt, h)
    if method == "grid":
        return _lockin_interpolation(bias, amp, energies, h, n_nodes), _grid_kernel(energies, f_e, h, kt, tip)
    if n_nodes == 0:
        row = partial(_row, energies=energies, f_e=f_e, h=h, kt=kt, tip=tip, current=current)
        batch = max(1, _ROWS_PER_CHUNK // n_e)
    else:
        nodes, weights = (jnp.asarray(a) for a in _lockin_rule(n_nodes))

        def row(v):
            rows = jax.vmap(lambda u: _row(v + amp * u, energies, f_e, h, kt, tip, current))(nodes)
            return weights @ rows

        batch = max(1, _ROWS_PER_CHUNK // (n_e * n_nodes))
    return None, jax.lax.map(row, bias, batch_size=min(batch, bias.shape[0]))


@partial(jax.jit, static_argnames=("tip_static", "treedef", "n_nodes", "method"))
def _didv_apply(dos, bias, energies, kt, amp, tip_dynamic, *, tip_static, treedef, n_nodes, method):
    """dI/dV (..., n_v) without building the kernel when the lock-in uses the grid method (FFT correlation)."""
    if method != "grid":
        _, kernel = _kernel_factors(
            bias,
            energies,
            kt,
            amp,
            tip_dynamic,
            tip_static=tip_static,
            treedef=treedef,
            n_nodes=n_nodes,
            method=method,
            current=False,
        )
        return dos @ kernel.T
    tip = _merge(tip_dynamic, tip_static, treedef)
    h = energies[1] - energies[0]
    f_e, _ = _thermal(energies, kt, h)
    return _grid_apply(dos, energies, f_e, h, kt, tip) @ _lockin_interpolation(bias, amp, energies, h, n_nodes).T


def _is_dynamic(leaf) -> bool:
    return isinstance(leaf, jax.Array | np.ndarray | np.generic | float | int) and not isinstance(leaf, bool)


def _partition(tip):
    """Split a DOS callable into array leaves (traced) and everything else (static, hashable)."""
    leaves, treedef = jax.tree_util.tree_flatten(tip)
    dynamic = [jnp.asarray(leaf, dtype=float) if _is_dynamic(leaf) else None for leaf in leaves]
    static = tuple((i, leaf) for i, leaf in enumerate(leaves) if not _is_dynamic(leaf))
    try:
        hash(static)
    except TypeError as err:
        raise TunnellingError(
            f"tip {tip!r}: its non-array parts must be hashable (use a DOS from shibajax.measurement.dos or a "
            "plain function)"
        ) from err
    return dynamic, static, treedef


def _merge(dynamic, static, treedef):
    leaves = list(dynamic)
    for i, leaf in static:
        leaves[i] = leaf
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _check_grid(sample_energies) -> jax.Array:
    e = concrete(sample_energies)
    if e is None:
        return jnp.asarray(sample_energies, dtype=float)
    if e.ndim != 1 or e.size < 3:
        raise TunnellingError(f"sample_energies must be a 1-d grid of >= 3 points, got shape {e.shape}")
    check_finite(e, "sample_energies", error=TunnellingError, unit="meV")
    step = np.diff(e)
    if not (step[0] > 0 and np.allclose(step, step[0], rtol=1e-8, atol=0)):
        raise TunnellingError(
            "sample_energies must be uniform and increasing (E_j = E_0 + j h, e.g. np.linspace); got steps from "
            f"{step.min():.6g} to {step.max():.6g} meV"
        )
    return jnp.asarray(e)


def _check_scalar(value, name: str, unit: str):
    v = concrete(value)
    if v is None:
        return None
    if v.shape != ():
        raise TunnellingError(f"{name} must be a scalar ({unit}), got shape {v.shape}")
    check_finite(v, name, error=TunnellingError, unit=unit)
    if v < 0:
        raise TunnellingError(f"{name} = {float(v)!r} {unit} must be finite and >= 0")
    return float(v)


def _lockin_plan(lockin_nodes, amp, h, n_e):
    """(method, nodes) of the lock-in average: ("direct", 0) without lock-in; "direct" evaluates dI/dV at
    V + A x_k for n nodes (A < 4 h: n = 2 pi A / h, >= 8); "grid" evaluates it once at every grid energy (a
    Toeplitz kernel, 2 n_e - 1 tip values) and averages its cubic interpolant over GRID_LOCKIN_NODES nodes (node
    spacing pi A / 2049 < h / 4 for A < 160 h; the same number whether A is known or traced, so gradients equal
    the derivative of the values): cheaper by ~n_nodes; used up to n_e = 6000 (memory n_e^2)."""
    if lockin_nodes is not None and not (isinstance(lockin_nodes, int | np.integer) and lockin_nodes >= 1):
        raise TunnellingError(f"lockin_nodes = {lockin_nodes!r} must be a positive integer")
    if amp == 0.0:
        return "direct", 0
    grid_ok = n_e <= _GRID_METHOD_MAX
    if amp is not None and (amp < 4 * h or not grid_ok):
        return "direct", int(lockin_nodes or min(512, max(8, math.ceil(2 * math.pi * amp / h))))
    if amp is None and not grid_ok:  # traced amplitude
        return "direct", int(lockin_nodes or DEFAULT_LOCKIN_NODES)
    return "grid", int(lockin_nodes or GRID_LOCKIN_NODES)


def didv_kernel(bias, sample_energies, tip, *, temperature, lockin_rms=0.0, lockin_nodes=None, current=False):
    """The linear map rho_s -> dI/dV: a matrix W (n_v, n_e) with dI/dV(V_i) = sum_j W_ij rho_s(E_j).

    W is the Jacobian of :func:`didv` with respect to ``sample_dos`` (dI/dV is linear in rho_s); it includes
    the grid weights, the Fermi factors and the lock-in average. ``current=True`` gives the kernel of
    :func:`current` instead (no lock-in). Arguments as in :func:`didv`.

    Returns:
        (n_v, n_e) float64 array (units G_N per unit DOS; G_N * mV for the current kernel).
    """
    *args, static = _factors(bias, sample_energies, tip, temperature, lockin_rms, lockin_nodes, current)
    if args[0].shape[0] == 0:
        return jnp.zeros((0, args[1].shape[0]))
    p, k = _kernel_factors(*args, **static, current=current)
    return _check_result(k if p is None else p @ k, "the dI/dV kernel")


def _factors(bias, sample_energies, tip, temperature, lockin_rms, lockin_nodes, current):
    energies = _check_grid(sample_energies)
    bias_arr = jnp.asarray(bias, dtype=float)
    if bias_arr.ndim != 1:
        raise TunnellingError(f"bias must be 1-d (n_v,) in mV, got shape {bias_arr.shape}")
    temp = _check_scalar(temperature, "temperature", "K")
    rms = _check_scalar(lockin_rms, "lockin_rms", "mV (rms)")
    amp = None if rms is None else math.sqrt(2.0) * rms
    e = concrete(energies)
    v = concrete(bias_arr)
    if v is not None:
        check_finite(v, "bias", error=TunnellingError, unit="mV")
    h = None if e is None else float(e[1] - e[0])
    _check_tip(tip, h)
    if current and not (rms == 0.0 and lockin_nodes is None):
        raise TunnellingError("the current kernel has no lock-in: leave lockin_rms = 0")
    if e is not None and v is not None and temp is not None and amp is not None and v.size:
        tail = COVERAGE_KT * K_B_MEV_PER_K * temp + amp
        lo, hi = min(0.0, v.min()) - tail, max(0.0, v.max()) + tail
        if lo < e[0] or hi > e[-1]:
            raise TunnellingError(
                f"the sample energy grid [{e[0]:.4g}, {e[-1]:.4g}] meV does not cover the Fermi window of the bias "
                f"range [{v.min():.4g}, {v.max():.4g}] mV plus {COVERAGE_KT:g} k_B T and the lock-in amplitude: it "
                f"needs [{lo:.4g}, {hi:.4g}] meV; extend sample_energies"
            )
    method, n_nodes = ("direct", 0) if current else _lockin_plan(lockin_nodes, amp, h or 0.01, energies.shape[0])
    dynamic, static, treedef = _partition(tip)
    kt = K_B_MEV_PER_K * jnp.asarray(temperature, dtype=float)
    amp_arr = math.sqrt(2.0) * jnp.asarray(lockin_rms, dtype=float)
    return (
        bias_arr,
        energies,
        kt,
        amp_arr,
        dynamic,
        {
            "tip_static": static,
            "treedef": treedef,
            "n_nodes": n_nodes,
            "method": method,
        },
    )


def _check_dos(sample_dos, energies):
    dos = jnp.asarray(sample_dos, dtype=float)
    if dos.ndim < 1 or dos.shape[-1] != energies.shape[0]:
        raise TunnellingError(
            f"sample_dos must have shape (..., n_e) with n_e = {energies.shape[0]} (the sample_energies grid), got "
            f"{dos.shape}"
        )
    values, e = concrete(dos), concrete(energies)
    if values is not None and not np.all(np.isfinite(values)):
        bad = ~np.isfinite(values)
        at = e[np.flatnonzero(bad.reshape(-1, bad.shape[-1]).any(axis=0))] if e is not None else np.array([])
        where = f" at E = {', '.join(f'{x:.6g}' for x in at[:4])}{' ...' if at.size > 4 else ''} meV" if at.size else ""
        raise TunnellingError(
            f"sample_dos has {int(bad.sum())} non-finite value(s){where}. A BCS DOS (Dynes gamma = 0) is infinite at "
            "|E| = delta: pass its cell averages (DynesDOS(delta, 0).cell_average(E), finite and exact in the "
            "integral) or give gamma > 0"
        )
    return dos


def _check_tip(tip, h):
    """A concrete Dynes tip with gamma = 0 (BCS) cannot be sampled: the tunnelling sums take rho_t and rho_t' at
    points, and both are infinite at |E| = delta_t. Ask for a Dynes gamma instead of returning NaN or inf."""
    for name in ("gamma", "gammas"):
        g = concrete(getattr(tip, name, None))
        if g is not None and np.any(g == 0):
            floor = f" >= 2 h = {2 * h:.3g} meV (the resolution rule)" if h else " > 0"
            raise TunnellingError(
                f"tip {name} = {g.tolist()!r} meV: a BCS tip (gamma = 0) is singular at |E| = delta (rho_t and its "
                f"derivative are infinite there) and the tunnelling sums sample it at points; give the tip a Dynes "
                f"gamma{floor}"
            )


def _check_result(out, what: str):
    """Host-side check of a concrete result: never hand back NaN or inf silently (tracers pass)."""
    values = concrete(out)
    if values is not None and not np.all(np.isfinite(values)):
        raise TunnellingError(
            f"{what} has {int(np.size(values) - np.count_nonzero(np.isfinite(values)))} non-finite value(s) although "
            "every input was finite: a tip DOS that is infinite somewhere (e.g. a TabulatedDOS or a function with a "
            "pole) cannot be sampled; broaden it"
        )
    return out


def didv(bias, sample_energies, sample_dos, tip, *, temperature, lockin_rms=0.0, lockin_nodes=None) -> jax.Array:
    """Differential conductance dI/dV(V) in units of G_N, with thermal and (optionally) lock-in broadening.

    Args:
        bias: (n_v,) sample bias (mV), any order, non-uniform allowed.
        sample_energies: (n_e,) uniform, increasing sample energy grid (meV), covering the Fermi window of every
            bias plus 8 k_B T and the lock-in amplitude (see the module docstring); fine enough to resolve the
            sample's and the tip's sharpest features (h <= half the smallest width).
        sample_dos: (..., n_e) sample DOS on that grid, normalised to the normal state (batch dims kept).
        tip: a DOS callable (``DynesDOS``, ``MultiGapDOS``, ``NormalDOS``, ``TabulatedDOS`` or any elementwise,
            JAX-differentiable function of E in meV).
        temperature: T (K) >= 0, the same for tip and sample.
        lockin_rms: lock-in modulation V_rms (mV, rms; peak amplitude sqrt(2) V_rms) >= 0; 0: no lock-in.
        lockin_nodes: Gauss-Chebyshev nodes of the lock-in average; default: 2048 on the interpolated grid
            kernel (A >= 4 h, or A traced), else 2 pi A / h (>= 8) direct evaluations.

    Returns:
        (..., n_v) dI/dV / G_N.

    Example:
        >>> import numpy as np
        >>> from shibajax.measurement.dos import DynesDOS, NormalDOS
        >>> E = np.linspace(-3.0, 3.0, 1201)
        >>> g = didv([0.0, 2.0], E, DynesDOS(1.0, 0.01)(E), NormalDOS(), temperature=0.0)
        >>> np.round(np.asarray(g), 3)
        array([0.01 , 1.155])
    """
    energies = _check_grid(sample_energies)
    dos = _check_dos(sample_dos, energies)
    *args, static = _factors(bias, energies, tip, temperature, lockin_rms, lockin_nodes, False)
    if args[0].shape[0] == 0:
        return jnp.zeros((*dos.shape[:-1], 0))
    return _check_result(_didv_apply(dos, *args, **static), "dI/dV")


def current(bias, sample_energies, sample_dos, tip, *, temperature) -> jax.Array:
    """Tunnelling current I(V) in units of G_N * mV (I = V for two normal electrodes).

    Arguments as in :func:`didv` (no lock-in). Returns (..., n_v).

    Example:
        >>> import numpy as np
        >>> from shibajax.measurement.dos import NormalDOS
        >>> E = np.linspace(-3.0, 3.0, 601)
        >>> np.round(np.asarray(current([-1.0, 0.5], E, np.ones(601), NormalDOS(), temperature=1.0)), 12)
        array([-1. ,  0.5])
    """
    energies = _check_grid(sample_energies)
    dos = _check_dos(sample_dos, energies)
    return _check_result(dos @ didv_kernel(bias, energies, tip, temperature=temperature, current=True).T, "I(V)")


def model_spectrum(spectrum, *, position: int = 0, energy_scale: float = 1.0, normal_dos=None):
    """A solver LDOS as a normalised sample DOS for :func:`didv`.

    Args:
        spectrum: a :class:`shibajax.LDOS` (from ``shibajax.ldos``) on a uniform energy grid; its ``electron``
            part (summed over orbitals and spins: what a normal tip sees) is used.
        position: index of the tip position in ``spectrum.positions``.
        energy_scale: meV per model energy unit (1 for meV models such as ``nb110``; 1000 for eV models).
        normal_dos: the normal-state LDOS (per model energy unit) to divide by; default: the mean of the
            LDOS over the outer 10 % of the grid on each side, so that rho_s -> 1 far from the gap.

    Returns:
        (energies (n_E,) in meV, sample_dos (n_E,) dimensionless).
    """
    check_finite(energy_scale, "energy_scale", "model_spectrum", error=TunnellingError, unit="meV per unit")
    if normal_dos is not None:
        check_finite(normal_dos, "normal_dos", "model_spectrum", error=TunnellingError)
    energies = np.asarray(spectrum.energies, dtype=float) * float(energy_scale)
    electron = jnp.asarray(spectrum.electron)
    if electron.ndim != 2 or electron.shape[0] != energies.size:
        raise TunnellingError(f"spectrum.electron must be (n_E, n_pos), got {electron.shape}")
    if not 0 <= position < electron.shape[1]:
        raise TunnellingError(f"position {position} out of range: the LDOS has {electron.shape[1]} positions")
    energies = np.asarray(_check_grid(energies))
    rho = electron[:, position]
    if normal_dos is None:
        n = max(1, energies.size // 10)
        normal_dos = 0.5 * (jnp.mean(rho[:n]) + jnp.mean(rho[-n:]))
    return jnp.asarray(energies), rho / normal_dos
