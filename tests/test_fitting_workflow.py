"""Fitting workflow (issue 6, items 3, 5 and 6): joint fits of spectra that share couplings, interrupted
multistart fits that resume from their checkpoint, and ``shibajax fit`` on a measured file.

Host: the one-band s-wave square lattice in meV of tests/test_fitting.py on a 16 x 16 grid (exact for that
periodic lattice; synthetic data come from the same model, so no continuum limit is needed).
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from shared_data import REALDATA

import shibajax
from shibajax.errors import FitError
from shibajax.fitting import Dataset, Problem, SpectrumModel, coupling_basis, fit, green_blocks
from shibajax.fitting.optimise import multistart

HOST = shibajax.models.square(t=10.0, mu=-20.0, delta=1.35)
KGRID = (16, 16)
ENERGIES = np.arange(-4.0, 4.0 + 1e-9, 0.04)
BIAS = np.linspace(-2.5, 2.5, 201)
NOISE = 0.02


def _model(sites, tip="normal"):
    couplings = coupling_basis(HOST, sites)
    return SpectrumModel(green_blocks(HOST, couplings, [(0, 0)], ENERGIES, eta=0.08, kgrid=KGRID), tip=tip)


def _data(model, values, seed):
    clean = np.asarray(model({k: jnp.asarray(v) for k, v in values.items()}, jnp.asarray(BIAS)))
    return clean + NOISE * np.random.default_rng(seed).normal(size=BIAS.size)


@pytest.fixture(scope="module")
def adatom_and_dimer():
    """An adatom (normal tip, 1.2 K) and a dimer of the same adatoms 3 sites apart (FM, superconducting Dynes
    tip, 0.8 K): K = 4, J = 22 meV in both, per-spectrum scale, temperature and tip."""
    adatom, dimer = _model([(0, 0)]), _model([(0, 0), (3, 0)], tip="dynes")
    shared = {"K_0": 4.0, "J_0": 22.0, "offset": 0.0, "bg0": 0.0, "bg1": 0.0, "lockin": 0.03}
    truth_a = shared | {"scale": 1.0, "temperature": 1.2}
    truth_d = shared | {"scale": 0.7, "temperature": 0.8, "tip_delta": 1.3, "tip_gamma": 0.02}
    return adatom, dimer, truth_a, truth_d, _data(adatom, truth_a, 11), _data(dimer, truth_d, 12)


def test_joint_fit_of_adatom_and_dimer_shares_k_and_j(adatom_and_dimer):
    """Beck et al.'s procedure: the adatom and its dimer share K and J; each spectrum has its own scale (and its
    own tip and temperature, fixed). The joint fit recovers K, J and both scales within 2 sigma, and its errors
    on K and J are smaller than those of the adatom alone (more data on the same two numbers)."""
    adatom, dimer, truth_a, truth_d, data_a, data_d = adatom_and_dimer
    params = {
        "K_0": {"value": 2.0, "lower": -10.0, "upper": 15.0},
        "J_0": {"value": 20.0, "lower": 15.0, "upper": 30.0},
        "scale_adatom": {"value": 1.2, "lower": 0.3, "upper": 2.0},
    }
    params |= {n: {"value": truth_a[n], "fixed": True} for n in ("offset", "bg0", "bg1", "lockin", "temperature")}
    adatom_data = Dataset(adatom, BIAS, data_a, sigma=NOISE, names={"scale": "scale_adatom"}, label="adatom")
    alone = fit(Problem(adatom_data, params), n_starts=4, seed=1, method="lm", progress=False, max_iter=60)

    params["scale_dimer"] = {"value": 1.2, "lower": 0.3, "upper": 2.0}
    params["temperature_dimer"] = {"value": truth_d["temperature"], "fixed": True}
    params |= {n: {"value": truth_d[n], "fixed": True} for n in ("tip_delta", "tip_gamma")}
    dimer_names = {"scale": "scale_dimer", "temperature": "temperature_dimer"}
    joint = Problem([adatom_data, Dataset(dimer, BIAS, data_d, sigma=NOISE, names=dimer_names, label="dimer")], params)
    both = fit(joint, n_starts=4, seed=1, method="lm", progress=False, max_iter=60)
    print(both.summary())
    truth = {"K_0": 4.0, "J_0": 22.0, "scale_adatom": 1.0, "scale_dimer": 0.7}
    for name, want in truth.items():
        assert abs(both.values[name] - want) < 2 * both.errors[name], (name, both.values[name], both.errors[name])
    # chi^2 of 2 x 201 Gaussian residuals of the stated sigma: 1 within 4 sigma of its spread
    assert abs(both.reduced_chi2 - 1) < 4 * np.sqrt(2 / both.dof)

    assert both.errors["K_0"] < alone.errors["K_0"] and both.errors["J_0"] < alone.errors["J_0"]


def test_interrupted_multistart_resumes_from_its_checkpoint(tmp_path):
    """A fit interrupted after its first block resumes from the checkpoint: finished blocks are not run again
    (a marker written into the checkpoint survives), the rest gives the uninterrupted results exactly."""
    model = _model([(0, 0)])
    truth = {"K_0": 4.0, "J_0": 22.0, "scale": 1.0, "offset": 0.0, "bg0": 0.0, "bg1": 0.0}
    truth |= {"temperature": 1.2, "lockin": 0.03}
    params = {k: {"value": v, "fixed": True} for k, v in truth.items()}
    params |= {
        "K_0": {"value": 2.0, "lower": -10.0, "upper": 15.0},
        "J_0": {"value": 20.0, "lower": 15.0, "upper": 30.0},
    }
    problem = Problem(Dataset(model, BIAS, _data(model, truth, 5), sigma=NOISE), params)
    starts = problem.space.sample(2, 6)
    path = tmp_path / "fit.npz"
    full = multistart(problem.loss, starts, block=2, checkpoint=path, progress=False, max_iter=60)

    saved = dict(np.load(path))
    assert saved["done"].all()
    saved["done"][2:] = False  # as if killed after the first block
    saved["loss"][2:] = np.nan
    saved["loss"][:2] = -1.0  # marker: a finished block that is run again would overwrite it
    np.savez(path, **saved)
    resumed = multistart(problem.loss, starts, block=2, checkpoint=path, progress=False, max_iter=60)
    np.testing.assert_array_equal(resumed.loss[:2], [-1.0, -1.0])
    np.testing.assert_allclose(resumed.loss[2:], full.loss[2:], rtol=1e-12)
    np.testing.assert_allclose(resumed.u[2:], full.u[2:], rtol=1e-12)
    # other starts: the checkpoint is not theirs, so it is refused (never silently reused or overwritten)
    with pytest.raises(FitError, match="start points differ"):
        multistart(problem.loss, starts[:4], block=2, checkpoint=path, progress=False, max_iter=60)


@pytest.mark.realdata
def test_cli_fit_of_the_measured_mnpc_spectrum(tmp_path):
    """``shibajax fit`` on the MnPc spectrum (a small Fermi-shell mesh and two starts: a smoke run of the whole
    command): report JSON with values, errors and the reduced chi^2, a plot, a checkpoint; K < 0 < J as in
    tests/test_fitting_realdata.py."""
    from shibajax.cli import main

    data = REALDATA / "spectrafox_MnPc-Pb111_Spec001.dat"
    if not data.is_file():
        pytest.fail(f"missing shared data file {data} (see shared/realdata/MANIFEST.md)")
    cfg = tmp_path / "fit.toml"
    cfg.write_text(
        "[host]\nt = 10.0\nmu = -20.0\ndelta = 1.305\neta = 0.047\nkgrid = 16\nfermi_shell = 0.5\n"
        '[data]\nbias_window = [-2.5, 2.5]\n[fit]\nn_starts = 2\nmethod = "lm"\nmax_iter = 40\n'
        "[params]\nK_0 = { value = -10.0, lower = -30.0, upper = 30.0 }\n"
        "J_0 = { value = 14.0, lower = 2.0, upper = 40.0 }\nbg0 = 0.0\nbg1 = 0.0\n"
    )
    out = tmp_path / "out"
    assert main(["fit", str(data), "--config", str(cfg), "--out", str(out)]) == 0
    report = json.loads((out / "fit_report.json").read_text())
    print(json.dumps({k: report[k] for k in ("values", "errors", "reduced_chi2")}, indent=1))
    assert report["values"]["K_0"] < 0 < report["values"]["J_0"]
    assert all(np.isfinite(v) and v > 0 for v in report["errors"].values())
    # residual rms of the one-channel line shape ~0.2 (tests/test_fitting_realdata.py) with unit sigma
    assert 0 < report["reduced_chi2"] < 0.1
    assert (out / "fit.png").stat().st_size > 10_000 and (out / "fit_checkpoint.npz").is_file()
