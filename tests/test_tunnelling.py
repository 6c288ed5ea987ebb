"""Tunnelling: DOS models, Fermi function, NIS/SIS dI/dV and I(V), thermal replicas of Shiba states, lock-in.

References: normal-state and sum-rule limits (exact), the BCS/Dynes DOS (Dynes et al., PRL 41, 1509 (1978)),
SIS peaks at +-(Delta_t + Delta_s) (Giaever & Megerle, Phys. Rev. 122, 1101 (1961)), Shiba thermal replicas with
Fermi-factor weights (Ruby et al., PRL 115, 087001 (2015)), the lock-in semicircle kernel (Klein et al.,
PRB 7, 2336 (1973)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

import shibajax  # noqa: F401  (float64)
from shibajax.errors import DOSParameterError, ShibajaxError, TunnellingError
from shibajax.measurement.dos import DynesDOS, MultiGapDOS, NormalDOS, TabulatedDOS, dynes_dos
from shibajax.measurement.tunnelling import (
    K_B_MEV_PER_K,
    current,
    didv,
    didv_kernel,
    fermi,
    model_spectrum,
)


def lorentzian(x, x0, width):
    return width / np.pi / ((x - x0) ** 2 + width**2)


# ---------------------------------------------------------------- DOS models and the Fermi function


def test_dynes_limits_sum_rule_and_multigap():
    """BCS form for gamma -> 0, -> 1 at large |E| on both sides, int (rho - 1) dE = 0 (states conserved)."""
    E = np.array([-5.0, -1.2, 0.3, 1.2, 5.0])
    bcs = np.where(np.abs(E) > 1.0, np.abs(E) / np.sqrt(np.maximum(E**2 - 1.0, 1e-300)), 0.0)
    np.testing.assert_allclose(dynes_dos(E, 1.0, 0.0), bcs, atol=1e-14)
    np.testing.assert_allclose(dynes_dos(np.array([-1e4, 1e4]), 1.0, 0.1), 1.0, atol=1e-8)
    # Dynes value at E = 0 is gamma / sqrt(gamma^2 + delta^2) exactly
    np.testing.assert_allclose(dynes_dos(0.0, 1.0, 0.05), 0.05 / np.sqrt(1.0025), rtol=1e-14)
    # sum rule: rho - 1 ~ delta^2 / (2 E^2) at large E; quad to infinity (integrand analytic, gamma = 0.1)
    missing = quad(lambda e: float(dynes_dos(e, 1.0, 0.1)) - 1.0, 0.0, np.inf, limit=400, points=None)[0]
    assert abs(missing) < 1e-6
    pb = MultiGapDOS(deltas=[1.25, 1.40], gammas=[0.01, 0.02], weights=[0.3, 0.7])
    np.testing.assert_allclose(pb(E), 0.3 * dynes_dos(E, 1.25, 0.01) + 0.7 * dynes_dos(E, 1.40, 0.02), rtol=1e-14)
    assert float(NormalDOS()(3.0)) == 1.0 and NormalDOS(2.0)(np.zeros(4)).shape == (4,)
    tab = TabulatedDOS([-1.0, 0.0, 2.0], [1.0, 0.0, 4.0])
    np.testing.assert_allclose(tab(np.array([-3.0, -0.5, 1.0, 9.0])), [1.0, 0.5, 2.0, 4.0], rtol=1e-14)


def test_dos_are_differentiable_pytrees():
    """grad in parameters agrees with central differences; DOS objects go through jit as pytrees."""
    f = jax.jit(lambda d, g: DynesDOS(d, g)(1.5))
    dd, dg = jax.grad(f, argnums=(0, 1))(1.2, 0.05)
    step = 1e-6  # central differences: error ~ step^2 * rho''' ~ 1e-10
    np.testing.assert_allclose(dd, (f(1.2 + step, 0.05) - f(1.2 - step, 0.05)) / (2 * step), rtol=1e-6)
    np.testing.assert_allclose(dg, (f(1.2, 0.05 + step) - f(1.2, 0.05 - step)) / (2 * step), rtol=1e-6)
    w = jax.grad(lambda w: MultiGapDOS(jnp.array([1.0, 2.0]), jnp.array([0.1, 0.1]), w)(0.5))(jnp.array([0.5, 0.5]))
    np.testing.assert_allclose(w, dynes_dos(0.5, np.array([1.0, 2.0]), 0.1), rtol=1e-12)


def test_fermi_function():
    E = np.array([-1e5, -1.0, 0.0, 1.0, 1e5])
    kt = K_B_MEV_PER_K * 2.0
    np.testing.assert_allclose(fermi(E[1:4], 2.0), 1 / (1 + np.exp(E[1:4] / kt)), rtol=1e-14)
    np.testing.assert_array_equal(np.asarray(fermi(E, 2.0))[[0, 4]], [1.0, 0.0])  # no overflow, no NaN
    np.testing.assert_array_equal(fermi(E, 0.0), [1.0, 1.0, 0.5, 0.0, 0.0])
    assert np.isfinite(jax.grad(lambda t: fermi(0.3, t))(1.0))


# ---------------------------------------------------------------- limits of dI/dV and I(V)


@pytest.mark.parametrize("temperature", [0.0, 0.05, 1.0, 10.0])
def test_normal_state_limit(temperature):
    """rho_t = rho_s = 1: dI/dV = 1 and I = V at every bias and temperature (the grid sum rule is exact up to the
    tails beyond the grid, < 1e-9 here: the grid reaches >= 18 k_B T beyond the window at 10 K)."""
    E = np.linspace(-20.0, 20.0, 2001)
    bias = np.array([-3.0, -0.77, 0.0, 0.01, 2.5])
    ones = np.ones_like(E)
    np.testing.assert_allclose(didv(bias, E, ones, NormalDOS(), temperature=temperature), 1.0, atol=1e-9)
    np.testing.assert_allclose(current(bias, E, ones, NormalDOS(), temperature=temperature), bias, atol=1e-9)


def test_nis_reproduces_sample_dos_at_zero_temperature():
    """Normal tip, T = 0: dI/dV(V) = rho_s(V), interpolated linearly between grid points, so the error is below
    h^2 / 8 max|rho_s''| (linear-interpolation bound) with rho_s'' from autodiff of the Dynes DOS."""
    h = 0.002
    E = np.arange(-3.0, 3.0 + h / 2, h)
    sample = DynesDOS(1.0, 0.02)
    bias = np.linspace(-2.5, 2.5, 997)  # not on the grid
    g = didv(bias, E, sample(E), NormalDOS(), temperature=0.0)
    curvature = jax.vmap(jax.grad(jax.grad(sample)))(jnp.linspace(-3, 3, 30001))
    bound = h**2 / 8 * float(jnp.max(jnp.abs(curvature)))
    err = float(jnp.max(jnp.abs(g - sample(bias))))
    assert err < bound, (err, bound)
    # at finite T it is the thermal convolution int rho_s(E) (-f'(E - V)) dE, checked against scipy quad
    T = 1.2
    kt = K_B_MEV_PER_K * T
    g = didv(np.array([0.0, 1.1, -1.4]), E, sample(E), NormalDOS(), temperature=T)
    for v, gv in zip([0.0, 1.1, -1.4], np.asarray(g), strict=True):
        ref = quad(
            lambda e, v=v: float(sample(e)) / (4 * kt * np.cosh((e - v) / (2 * kt)) ** 2),
            v - 30 * kt,
            v + 30 * kt,
            points=[-1.0, 1.0],
            limit=400,
        )[0]
        assert abs(gv - ref) < 1e-6, (v, gv, ref)  # trapezoid error ~ exp(-2 pi gamma / h) ~ 1e-27: quad-limited


def test_sis_peaks_at_sum_of_gaps_and_current_is_its_integral():
    """Two identical Dynes gaps (gamma = 0.01 meV, T = 0.3 K): peaks at +-2 Delta within 2 gamma; dI/dV is the
    bias derivative of I(V) (central differences, step 1e-4 mV)."""
    h = 0.002  # = gamma / 5
    E = np.arange(-4.0, 4.0 + h / 2, h)
    pb = DynesDOS(1.0, 0.01)
    bias = np.concatenate([np.linspace(-2.2, -1.8, 401), np.linspace(1.8, 2.2, 401)])
    g = np.asarray(didv(bias, E, pb(E), pb, temperature=0.3))
    for sign, part in ((-1, slice(0, 401)), (1, slice(401, None))):
        peak = bias[part][np.argmax(g[part])]
        assert abs(peak - sign * 2.0) <= 2 * 0.01, peak
    np.testing.assert_allclose(g[:401][::-1], g[401:], rtol=1e-9)  # identical tip and sample: dI/dV even in V
    v = np.array([0.5, 1.95, 2.3])
    step = 1e-4
    i_plus = current(v + step, E, pb(E), pb, temperature=0.3)
    i_minus = current(v - step, E, pb(E), pb, temperature=0.3)
    # central-difference error ~ step^2 I''' / 6 with I''' <~ 1 / gamma^2 * 10: < 1e-3 relative on the peak scale
    np.testing.assert_allclose((i_plus - i_minus) / (2 * step), didv(v, E, pb(E), pb, temperature=0.3), rtol=2e-3)


def test_shiba_state_with_sc_tip_main_peaks_and_thermal_replicas():
    """Sample: Dynes gap Delta_s plus a Shiba pair at +-eps (weights u^2 at +eps, v^2 at -eps); tip gap Delta_t.

    Main peaks at +-(Delta_t + eps), thermal replicas at +-(Delta_t - eps). With Fermi factors at the two
    aligned energies, the peak at +(Delta_t + eps) carries u^2 [f(-Delta_t) - f(eps)] = u^2 [1 - f(D_t) - f(eps)]
    and the one at +(Delta_t - eps) v^2 [f(eps) - f(Delta_t)] (the v^2 state at -eps is empty with probability
    f(eps)), both on the same tip coherence-peak line shape, so

        height(+(D_t - eps)) / height(+(D_t + eps)) = (v^2 / u^2) (f(eps) - f(D_t)) / (1 - f(D_t) - f(eps)),

    and the same with u <-> v at negative bias.
    """
    h = 0.0025
    E = np.arange(-4.0, 4.0 + h / 2, h)
    d_t, d_s, eps, width, u2, v2, T = 1.3, 1.1, 0.35, 0.005, 0.6, 0.4, 3.0
    background = DynesDOS(d_s, 0.002)(E)
    shiba = u2 * lorentzian(E, eps, width) + v2 * lorentzian(E, -eps, width)
    tip = DynesDOS(d_t, 0.01)
    kt = K_B_MEV_PER_K * T
    f = lambda x: 1.0 / (1.0 + np.exp(x / kt))  # noqa: E731
    expected = {1: v2 / u2, -1: u2 / v2}
    for sign in (1, -1):
        main_v = sign * (d_t + eps) + np.linspace(-0.1, 0.1, 201)
        rep_v = sign * (d_t - eps) + np.linspace(-0.1, 0.1, 201)
        both = np.concatenate([main_v, rep_v])
        total = np.asarray(didv(both, E, background + shiba, tip, temperature=T))
        # the peaks are there, within the line-shape offset (the -rho_t' peak sits ~ gamma_t inside the edge)
        assert abs(main_v[np.argmax(total[:201])] - sign * (d_t + eps)) < 0.02
        assert abs(rep_v[np.argmax(total[201:])] - sign * (d_t - eps)) < 0.02
        # weights: the Shiba part alone (dI/dV is linear in rho_s, so subtract the background's spectrum)
        only = total - np.asarray(didv(both, E, background, tip, temperature=T))
        ratio = only[201:].max() / only[:201].max()
        want = expected[sign] * (f(eps) - f(d_t)) / (1 - f(d_t) - f(eps))
        print(f"replica / main at sign {sign:+d}: {ratio:.5f}, Fermi-factor prediction {want:.5f}")
        # tolerance 1.5 %: the Lorentzian's heavy tails (weight 2 width / (pi d) beyond d) sample the Fermi factors
        # over ~k_B T, a relative correction of order width / k_B T = 0.02 (at width / k_B T = 0.06 it was 1.7 %)
        assert abs(ratio / want - 1) < 0.015, (sign, ratio, want)


# ---------------------------------------------------------------- lock-in


def _moments(v, y):
    area = np.trapezoid(y, v)
    mean = np.trapezoid(v * y, v) / area
    return area, mean, np.trapezoid((v - mean) ** 2 * y, v) / area


def test_lockin_conserves_area_and_adds_variance():
    """The first-harmonic kernel is a semicircle of radius A = sqrt(2) V_rms: unit area, variance A^2 / 4.
    A narrow peak keeps its area and its variance grows by V_rms^2 / 2; a broad feature changes by at most
    (A^2 / 8) max|g''| (second-order Taylor)."""
    h = 0.004  # = sigma / 5 of the narrow peak
    E = np.arange(-2.0, 2.0 + h / 2, h)
    rms = 0.05
    peak = 1.0 + 0.05 * np.exp(-((E - 0.3) ** 2) / (2 * 0.02**2)) / (np.sqrt(2 * np.pi) * 0.02)
    v = np.arange(-0.2, 0.8 + 1e-9, 0.004)
    plain = np.asarray(didv(v, E, peak, NormalDOS(), temperature=0.1)) - 1.0
    lock = np.asarray(didv(v, E, peak, NormalDOS(), temperature=0.1, lockin_rms=rms)) - 1.0
    a0, m0, var0 = _moments(v, plain)
    a1, m1, var1 = _moments(v, lock)
    np.testing.assert_allclose(a1, a0, rtol=1e-5)  # tails beyond the window: < 1e-6 of the area
    np.testing.assert_allclose(m1, m0, atol=1e-6)
    np.testing.assert_allclose(var1 - var0, rms**2 / 2, rtol=1e-3)  # 0.1 %: quadrature of the moments
    # broad feature: a Gaussian of sigma = 0.5 meV
    broad = 1.0 + 0.3 * np.exp(-(E**2) / (2 * 0.5**2))
    vb = np.linspace(-1.0, 1.0, 41)
    g0 = np.asarray(didv(vb, E, broad, NormalDOS(), temperature=0.1))
    g1 = np.asarray(didv(vb, E, broad, NormalDOS(), temperature=0.1, lockin_rms=rms))
    assert np.max(np.abs(g1 - g0)) <= (2 * rms**2 / 8) * 0.3 / 0.5**2 * 1.01


def test_lockin_grid_method_equals_direct_quadrature(monkeypatch):
    """The fast lock-in path (grid kernel + cubic interpolation, A >= 4 h) agrees with brute-force evaluation of
    dI/dV at 200 Gauss-Chebyshev nodes to 1e-5 relative (cubic interpolation error ~ h^4 g^(4) / 384)."""
    from shibajax.measurement import tunnelling

    h = 0.005
    E = np.arange(-3.5, 3.5 + h / 2, h)
    sample = DynesDOS(1.1, 0.03)(E)
    tip = DynesDOS(1.3, 0.03)
    v = np.linspace(-2.6, 2.6, 27)
    fast = np.asarray(didv(v, E, sample, tip, temperature=1.2, lockin_rms=0.04))
    monkeypatch.setattr(tunnelling, "_GRID_METHOD_MAX", 0)  # force the direct path
    slow = np.asarray(didv(v, E, sample, tip, temperature=1.2, lockin_rms=0.04, lockin_nodes=200))
    assert np.max(np.abs(fast - slow)) < 1e-5 * np.max(slow)


def test_bias_order_and_segments_do_not_matter():
    """dI/dV is evaluated point by point: shuffled, non-uniform and segmented bias grids give the same values."""
    h = 0.005
    E = np.arange(-3.5, 3.5 + h / 2, h)
    sample = DynesDOS(1.1, 0.03)(E)
    tip = MultiGapDOS([1.25, 1.4], [0.03, 0.03], [0.4, 0.6])
    sorted_v = np.linspace(-2.5, 2.5, 101)
    order = np.random.default_rng(0).permutation(101)
    kw = {"temperature": 1.2, "lockin_rms": 0.04}
    ref = np.asarray(didv(sorted_v, E, sample, tip, **kw))
    np.testing.assert_allclose(np.asarray(didv(sorted_v[order], E, sample, tip, **kw)), ref[order], rtol=1e-12)
    parts = [np.asarray(didv(sorted_v[s], E, sample, tip, **kw)) for s in (slice(0, 40), slice(40, None))]
    np.testing.assert_allclose(np.concatenate(parts), ref, rtol=1e-12)
    # a non-uniform, segmented grid (dense near the gap edges, one point at 0) through the same points
    dense = np.concatenate([np.linspace(-2.5, -2.0, 20), [0.0], np.linspace(2.0, 2.5, 20)])
    np.testing.assert_allclose(
        np.asarray(didv(dense, E, sample, tip, **kw))[[0, 19, 20, 21, 40]], ref[[0, 10, 50, 90, 100]], rtol=1e-12
    )


def test_kernel_is_the_jacobian_and_batches_broadcast():
    h = 0.02  # A = sqrt(2) 0.06 >= 4 h: the lock-in uses the grid (FFT) path, the kernel the explicit one
    E = np.arange(-2.3, 2.3 + h / 2, h)
    tip = DynesDOS(0.8, 0.05)
    v = np.array([-1.0, 0.2, 1.3])
    rho = DynesDOS(1.0, 0.05)(E)
    kernel = didv_kernel(v, E, tip, temperature=1.0, lockin_rms=0.06)
    jac = jax.jacfwd(lambda r: didv(v, E, r, tip, temperature=1.0, lockin_rms=0.06))(rho)
    np.testing.assert_allclose(kernel, jac, rtol=1e-12, atol=1e-15)
    batch = jnp.stack([rho, 2 * rho, jnp.ones_like(rho)]).reshape(3, 1, -1)
    out = didv(v, E, batch, tip, temperature=1.0, lockin_rms=0.06)
    assert out.shape == (3, 1, 3)
    np.testing.assert_allclose(out[1, 0], 2 * out[0, 0], rtol=1e-12)

    # differentiable in tip, temperature and lock-in; gradients match central differences
    def g(p):
        return didv(v, E, rho, DynesDOS(p[0], p[1]), temperature=p[2], lockin_rms=p[3])[1]

    p0 = jnp.array([0.8, 0.05, 1.0, 0.06])
    grad = jax.grad(g)(p0)
    for i in range(4):
        dp = jnp.zeros(4).at[i].set(1e-6)
        np.testing.assert_allclose(grad[i], (g(p0 + dp) - g(p0 - dp)) / 2e-6, rtol=1e-5, atol=1e-8)


def test_model_spectrum_from_solver_ldos():
    """A bare s-wave square lattice: the normalised LDOS -> 1 at the window edges and NIS at T=0 returns it."""
    model = shibajax.models.square(t=1.0, mu=-1.0, delta=0.3)
    energies = np.linspace(-1.0, 1.0, 201)
    spectrum = shibajax.ldos(model, [], [(0, 0)], energies, eta=0.03, kgrid=(24, 24))
    e, rho = model_spectrum(spectrum, energy_scale=1.0)
    np.testing.assert_allclose(0.5 * (rho[:20].mean() + rho[-20:].mean()), 1.0, rtol=1e-12)
    g = didv(np.array([0.0, 0.6]), e, rho, NormalDOS(), temperature=0.0)
    np.testing.assert_allclose(g, np.asarray(rho)[[100, 160]], rtol=1e-10)  # bias on grid points: exact at T = 0


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: DynesDOS(-1.0, 0.1), DOSParameterError, "delta = .* must be >= 0"),
        (lambda: DynesDOS(1.0, -0.1), DOSParameterError, "gamma = .* must be >= 0"),
        (lambda: dynes_dos(0.0, 1.0, -1.0), DOSParameterError, "gamma"),
        (lambda: MultiGapDOS([1.0, 2.0], [0.1, 0.1], [0.5, 0.6]), DOSParameterError, "sum to 1"),
        (lambda: MultiGapDOS([1.0, 2.0], [0.1], [0.5, 0.5]), DOSParameterError, "one length"),
        (lambda: TabulatedDOS([0.0, 0.0, 1.0], [1, 1, 1]), DOSParameterError, "strictly increasing"),
        (lambda: fermi(0.0, -1.0), TunnellingError, "temperature"),
    ],
)
def test_dos_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


E_OK = np.linspace(-3.0, 3.0, 601)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": -0.5}, "temperature = -0.5 K must be"),
        ({"lockin_rms": -0.01}, "lockin_rms"),
        ({"bias": np.array([2.9])}, "does not cover the Fermi window"),
        ({"temperature": 10.0}, "does not cover"),
        ({"sample_energies": np.r_[np.linspace(-3, 0, 300), np.linspace(0.02, 3, 300)]}, "uniform"),
        ({"sample_dos": np.ones(600)}, "sample_dos must have shape"),
        ({"bias": np.ones((2, 2))}, "bias must be 1-d"),
        ({"lockin_nodes": 0, "lockin_rms": 0.01}, "lockin_nodes"),
    ],
)
def test_tunnelling_errors(kwargs, match):
    args = {"bias": np.array([0.5]), "sample_energies": E_OK, "sample_dos": np.ones(601), "tip": NormalDOS()}
    args |= {"temperature": 1.0}
    args |= kwargs
    with pytest.raises(TunnellingError, match=match) as info:
        didv(**args)
    assert isinstance(info.value, ShibajaxError)
