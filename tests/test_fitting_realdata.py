"""Issue 6, "Real data": one YSR channel (K, J) fitted to the MnPc-on-Pb(111) spectrum Spec001 (normal tip,
T = 1.06 K, 50 uV rms lock-in, from the header), with the host's Delta and broadening fixed first from the
bare-Pb spectrum of the same session (``..._grid1_001_bare-Pb.dat``, single Dynes gap, as in
tests/test_measurement_realdata.py).

Host: one-band square lattice in meV (t = 10, mu = -20), on-site s-wave pairing delta = the fitted Dynes Delta
(an on-site s-wave gap is the host's spectral gap for any mu inside the band), eta = the fitted Dynes gamma (the
retarded G0 at E + i eta gives the Dynes DOS). At eta ~ 0.05 meV a uniform k-grid would need L ~ 10^3 to resolve
the continuum outside the gap (uniform 24x24 .. 96x96 grids move the peaks by 0.3 mV and rho_N by 2x), so the
G0 blocks are summed on a Fermi-shell mesh (``fermi_shell_mesh``, base 16, resolution 1, ~1.9e4 points),
checked against a mesh with 4x the points.

Two fits. The measured peaks are flat-topped: maxima at -0.505 / +0.467 mV with outer shoulders at ~-0.57 /
+0.56 mV (an unresolved second state), which one channel cannot make. (1) The free whole-spectrum autodiff fit
(L-BFGS; K, J, scale, background, offset) puts the model's peaks at the centroids of the measured ones,
0.03 mV outward of the maxima. (2) The peak-anchored fit (``fitting.anchored``) takes the offset and E_b from the
maxima, ties J to K on E(K, J) = E_b and fits K (with scale and background) to the line shape: its peaks are
within 0.02 mV of the maxima, and K agrees with the free fit's. Both branches of J(K), either side of the quantum
phase transition, fit (chi^2 within 4 %), both with K < 0.
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np
import pytest
from shared_data import REALDATA

import shibajax
from shibajax.fermi_shell import fermi_shell_mesh
from shibajax.fitting import Dataset, Problem, ShibaEnergies, SpectrumModel, coupling_basis, fit, green_blocks
from shibajax.fitting.anchored import fit_anchored
from shibajax.measurement.deconvolution import calibrate_tip
from shibajax.measurement.dos import NormalDOS
from shibajax.measurement.peaks import shiba_pair
from shibajax.measurement.readers import read_spectrum

pytestmark = pytest.mark.realdata  # skipped without the shared data, a failure under CI=true (conftest.py)
BARE = REALDATA / "spectrafox_MnPc-Pb111_grid1_001_bare-Pb.dat"
YSR = REALDATA / "spectrafox_MnPc-Pb111_Spec001.dat"
WINDOW = 2.5  # mV: the gap, the YSR pair and the coherence peaks
# mV: parabola windows for the peak tops. NARROW (+-0.03 mV, 13 points): the measured maxima, -0.505 / +0.467 mV;
# the tops are flat over ~0.1 mV with outer shoulders at ~-0.57 / +0.56 mV (an unresolved second state), so a
# WIDE (+-0.1 mV) parabola averages top and shoulder (-0.529 / +0.488 mV). The same rule is applied to model
# and data.
NARROW, WIDE = 0.03, 0.1
ENERGIES = np.arange(-4.0, 4.0 + 1e-9, 0.02)  # meV; covers 2.5 mV + 8 k_B T + sqrt(2) 50 uV; step < eta / 2


def _read(path, **kwargs):
    if not path.is_file():
        pytest.fail(f"missing shared data file {path} (see shared/realdata/MANIFEST.md)")
    ds = read_spectrum(path, **kwargs)
    return ds, 1e3 * np.asarray(ds["bias"].values, float), np.asarray(ds["didv"].values, float)


def _peaks(bias, y, half_width):
    """((position mV, height), (position, height)) of the Shiba pair, negative bias first: the highest maximum
    with 0.2 < |V| < 1 mV on each side, refined by a parabola through the points within half_width."""
    return tuple((p.position, p.height) for p in shiba_pair(bias, y, search=(0.2, 1.0), half_width=half_width))


def _host(delta):
    return shibajax.models.square(t=10.0, mu=-20.0, delta=delta)


def _blocks(delta, eta, resolution):
    host = _host(delta)
    couplings = coupling_basis(host, [(0, 0)])
    mesh = fermi_shell_mesh(host, base=16, resolution=resolution)
    return SpectrumModel(green_blocks(host, couplings, [(0, 0)], ENERGIES, eta=eta, kgrid=mesh))


@pytest.fixture(scope="module")
def bare_pb():
    """Single-gap Dynes fit of the bare-Pb spectrum (400 points): Delta ~ 1.305 meV, gamma ~ 0.047 meV."""
    ds, bias, data = _read(BARE)
    temperature, rms = float(ds.attrs["temperature_K"]), 1e3 * float(ds.attrs["lockin_amplitude_V"])
    every = max(1, bias.size // 400)
    cal = calibrate_tip(
        bias[::every],
        data[::every],
        sample=NormalDOS(),
        lockin_rms=rms,
        fit=("delta", "gamma", "scale", "offset"),
        init={"delta": 1.4, "gamma": 0.02, "temperature": temperature},
    )
    assert cal.success
    delta, eta = cal.params["delta"], cal.params["gamma"]
    # the single-gap Pb values of tests/test_measurement_realdata.py (Delta 1.305, gamma 0.047)
    assert 1.25 < delta < 1.45 and 0.01 < eta < 0.1
    return cal.params


@pytest.fixture(scope="module")
def mnpc():
    """(temperature K, lock-in rms mV, bias mV, dI/dV with the normal state ~ 1) of Spec001 within WINDOW."""
    ds, bias, data = _read(YSR, sort=True)
    temperature, rms = float(ds.attrs["temperature_K"]), 1e3 * float(ds.attrs["lockin_amplitude_V"])
    assert (temperature, rms) == (1.06, 0.05)
    keep = np.abs(bias) < WINDOW
    bias, data = bias[keep], data[keep]
    n = bias.size // 10
    return temperature, rms, bias, data / (0.5 * (data[:n].mean() + data[-n:].mean()))


@pytest.fixture(scope="module")
def model(bare_pb):
    return _blocks(bare_pb["delta"], bare_pb["gamma"], resolution=1.0)


@pytest.fixture(scope="module")
def free_fit(mnpc, model):
    """Whole-spectrum autodiff fit of K, J, scale, background and bias offset (L-BFGS, four starts)."""
    temperature, rms, bias, data = mnpc
    sub_bias, sub_data = bias[::4], data[::4]  # 250 points
    params = {
        "K_0": {"value": 0.0, "lower": -30.0, "upper": 30.0},
        "J_0": {"value": 14.0, "lower": 2.0, "upper": 40.0},
        "scale": {"value": 1.0, "lower": 0.2, "upper": 5.0},
        "offset": {"value": 0.0, "fixed": True},
        "bg0": 0.0,
        "bg1": 0.0,
        "temperature": {"value": temperature, "fixed": True},
        "lockin": {"value": rms, "fixed": True},
    }
    # stage 1, bias offset held at 0: the tunnelling kernel is then computed once and a step is one product;
    # starts on both signs of K (the sign is what fixes the height asymmetry) and two J
    first = Problem(Dataset(model, sub_bias, sub_data, label="Spec001"), params)
    starts = np.array([[k, j, 1.0, 0.0, 0.0] for k in (-10.0, 10.0) for j in (10.0, 18.0)])
    r1 = fit(first, starts=first.space.from_natural(starts), max_iter=100, progress=False)
    # stage 2: the offset free too (the kernel is rebuilt every step), from the best stage-1 minimum
    params |= {n: {**params[n], "value": r1.values[n]} for n in ("K_0", "J_0", "scale")}
    params |= {"bg0": r1.values["bg0"], "bg1": r1.values["bg1"]}
    params["offset"] = {"value": 0.0, "lower": -0.1, "upper": 0.1}
    problem = Problem(Dataset(model, sub_bias, sub_data, label="Spec001"), params)
    result = fit(problem, n_starts=1, max_iter=40, progress=False)
    print(result.summary())
    return result


def _ratio_without_k(model, values, bias):
    """Hole / electron height ratio (side maxima) of the model with K = 0 and the same J."""
    no_k = np.asarray(model(values | {"K_0": jnp.asarray(0.0)}, jnp.asarray(bias)))
    side = (np.abs(bias) > 0.2) & (np.abs(bias) < 1.2)
    return no_k[side & (bias < 0)].max() / no_k[side & (bias > 0)].max()


def _sign_of_k_checks(model, values, bias, ratio):
    """Sign of K (docs/conventions.md, "Impurities" and "Fitting": V = K tau_z + J n.sigma, K > 0 repels
    electrons; with a normal tip the +E_b peak measures |u|^2, the -E_b peak |v|^2). On the weak-coupling
    branch the fits land on K < 0 (attractive for electrons) with J > 0, and it is K < 0 that makes the hole-like
    peak taller: with K = 0 and the same J the electron-like (positive-bias) side is the taller one (~0.3)."""
    assert float(values["K_0"]) < 0 < float(values["J_0"])
    ratio0 = _ratio_without_k(model, values, bias)
    print(f"K = 0, same J: height ratio {ratio0:.3f}")
    assert ratio0 < 1 < ratio


def test_mnpc_free_fit_puts_the_peaks_at_the_centroids(bare_pb, mnpc, model, free_fit):
    """The whole-spectrum fit: one symmetric peak per side lands on the centroid of the flat-topped measured
    peak, i.e. within 0.02 mV of the wide-parabola tops but outward of the narrow maxima (the shoulders)."""
    t0 = time.perf_counter()
    _, _, bias, data = mnpc
    values = {k: jnp.asarray(v) for k, v in free_fit.values.items()}
    fitted = np.asarray(model(values, jnp.asarray(bias)))
    residual = float(np.sqrt(np.mean((fitted - data) ** 2)))
    (m_neg, h_neg), (m_pos, h_pos) = _peaks(bias, fitted, WIDE)
    (d_neg, g_neg), (d_pos, g_pos) = _peaks(bias, data, WIDE)
    (n_neg, _), (n_pos, _) = _peaks(bias, data, NARROW)
    print(f"peaks model {m_neg:+.4f} / {m_pos:+.4f} mV, data (wide) {d_neg:+.4f} / {d_pos:+.4f} mV, "
          f"data maxima {n_neg:+.4f} / {n_pos:+.4f} mV")  # fmt: skip
    print(f"height ratio (hole / electron) model {h_neg / h_pos:.3f}, data {g_neg / g_pos:.3f}")
    print(f"residual rms {residual:.4f} (normal state = 1)")
    assert abs(m_neg - d_neg) < 0.02 and abs(m_pos - d_pos) < 0.02
    # the centroid lies outward of the maxima on both sides (seen: 0.028 and 0.030 mV)
    assert m_neg < n_neg - 0.01 and m_pos > n_pos + 0.01
    assert g_neg / g_pos > 1.5
    assert abs((h_neg / h_pos) / (g_neg / g_pos) - 1) < 0.25
    _sign_of_k_checks(model, values, bias, h_neg / h_pos)
    # residual: the flat-topped measured peaks (shoulders) and the single-gap host's coherence peaks (Pb has
    # two gaps) are what one channel cannot produce; seen 0.20 against peaks of height ~6.5
    assert residual < 0.3

    # k-mesh convergence: 4x the points moves the model peaks by < 0.005 mV (seen: < 1e-4 mV)
    finer = _blocks(bare_pb["delta"], bare_pb["gamma"], resolution=2.0)
    (f_neg, _), (f_pos, _) = _peaks(bias, np.asarray(finer(values, jnp.asarray(bias))), WIDE)
    assert abs(f_neg - m_neg) < 0.005 and abs(f_pos - m_pos) < 0.005
    print(f"{time.perf_counter() - t0:.1f} s")


@pytest.fixture(scope="module")
def anchored(bare_pb, mnpc, model):
    """Peak-anchored fits on both branches of J(K): offset and E_b from the measured maxima, J tied to K on
    E(K, J) = E_b, K (with scale and background) from the line shape."""
    temperature, rms, bias, data = mnpc
    neg, pos = shiba_pair(bias, data, search=(0.2, 1.0), half_width=NARROW)
    energy, offset = 0.5 * (pos.position - neg.position), 0.5 * (pos.position + neg.position)
    print(f"data maxima {neg.position:+.4f} +- {neg.error:.4f} / {pos.position:+.4f} +- {pos.error:.4f} mV")
    host = _host(bare_pb["delta"])
    mesh = fermi_shell_mesh(host, base=16, resolution=1.0)
    energies_fn = ShibaEnergies(host, coupling_basis(host, [(0, 0)]), kgrid=mesh)
    fits = {}
    for branch in (0, 1):
        fits[branch] = fit_anchored(
            model, energies_fn, bias, data,
            energy=energy, energy_error=0.5 * float(np.hypot(neg.error, pos.error)),
            values={"offset": offset, "temperature": temperature, "lockin": rms},
            grid=np.linspace(-30.0, 30.0, 31), branch=branch,
        )  # fmt: skip
        print(fits[branch].summary())
    return host, mesh, (neg, pos), fits


def _anchored_checks(model, mnpc, peaks, result):
    """The model's maxima within 0.02 mV of the measured maxima, and the height ratio within 10 %."""
    _, _, bias, data = mnpc
    neg, pos = peaks
    values = {k: jnp.asarray(v) for k, v in result.values.items()}
    fitted = np.asarray(model(values, jnp.asarray(bias)))
    residual = float(np.sqrt(np.mean((fitted - data) ** 2)))
    (m_neg, h_neg), (m_pos, h_pos) = _peaks(bias, fitted, NARROW)
    ratio, ratio_data = h_neg / h_pos, neg.height / pos.height
    print(f"branch {result.branch}: peaks model {m_neg:+.4f} / {m_pos:+.4f} mV, data {neg.position:+.4f} / "
          f"{pos.position:+.4f} mV; height ratio (hole / electron) model {ratio:.3f}, data {ratio_data:.3f}; "
          f"residual rms {residual:.4f}")  # fmt: skip
    # the target: model maxima within 0.02 mV of the measured maxima. Not automatic: the maxima of the
    # model move off offset -+ E_b by the slope of what lies under them (coherence-peak tails, background, the
    # other member of the pair); seen < 0.002 mV
    assert abs(m_neg - neg.position) < 0.02 and abs(m_pos - pos.position) < 0.02
    # the asymmetry is what fixes K: model ratio within 10 % of the data's (seen 1.8 against 1.75)
    assert ratio_data > 1.5 and abs(ratio / ratio_data - 1) < 0.1
    # the anchored line shape pays for the shoulders (seen 0.28 against 0.20 for the free fit)
    assert residual < 0.4
    return values, ratio


def test_mnpc_peak_anchored_fit(mnpc, model, free_fit, anchored):
    """Issue 6, "Real data", weak-coupling branch (the free fit's): the model's maxima within 0.02 mV of the
    measured ones, the height asymmetry through K < 0, and the same couplings as the free fit."""
    host, mesh, peaks, fits = anchored
    result = fits[0]
    values, ratio = _anchored_checks(model, mnpc, peaks, result)
    # the anchoring is exact in the solver: an independent bound-state search at the fitted (K, J) finds E_b
    impurity = shibajax.Impurity((0, 0), K=result.values["K_0"], J=result.values["J_0"])
    states = shibajax.bound_states(host, impurity, kgrid=mesh)
    assert np.min(np.abs(states.energies - result.energy)) < 1e-8
    _sign_of_k_checks(model, values, mnpc[2], ratio)
    # K > 0 fits far worse on this branch (seen: chi^2 > 5x the minimum)
    profile_k, chi_k = result.profile[:, 0], result.profile[:, 2]
    assert np.nanmin(chi_k[profile_k > 0]) > 5 * result.chi2
    # two routes to the same couplings: the free fit's K and J agree within 1 meV (seen -20.44 / 13.18)
    assert abs(result.values["K_0"] - free_fit.values["K_0"]) < 1.0
    assert abs(result.values["J_0"] - free_fit.values["J_0"]) < 1.0
    assert 0 < result.errors["K_0"] < 1.0 and 0 < result.errors["J_0"] < 1.0


def test_mnpc_strong_coupling_branch_fits_as_well(mnpc, model, anchored):
    """The fit is bimodal: past the quantum phase transition (larger J, the bound state's u and v swapped) a
    second (K, J) reproduces the same energy and, with a smaller |K|, the same asymmetry, with a chi^2 within
    10 % of the weak-coupling one. A normal-tip spectrum at one temperature cannot tell a free from a screened
    spin; MnPc on Pb(111) is seen on both sides of the transition across the moire (Franke et al., Science 332,
    940 (2011)). On this branch K = 0 already makes the hole-like peak the taller one, and K < 0 reduces it."""
    _, _, peaks, fits = anchored
    weak, strong = fits[0], fits[1]
    values, ratio = _anchored_checks(model, mnpc, peaks, strong)
    assert strong.values["J_0"] > weak.values["J_0"]
    assert float(values["K_0"]) < 0 < float(values["J_0"])
    assert _ratio_without_k(model, values, mnpc[2]) > ratio > 1
    assert abs(strong.chi2 / weak.chi2 - 1) < 0.1
    print(f"chi^2 weak {weak.chi2:.2f}, strong {strong.chi2:.2f}; branch minima {weak.branch_minima}")
