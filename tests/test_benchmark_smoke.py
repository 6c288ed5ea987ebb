"""Smoke test of benchmarks/bench_core.py: the quick benchmark runs, agrees with the NumPy reference to 1e-10
and produces a table of positive timings (a few seconds on 2 CPU cores)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from benchmark_loader import load_benchmark

import shibajax


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    bench = load_benchmark("bench_core")
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    results = bench.main(["--quick", "--json", str(out)])
    return bench, results, out


def test_quick_benchmark_agrees_and_times_are_positive(quick_results, capsys):
    bench, results, out = quick_results
    rows = results["rows"]
    assert {(r["model"], r["task"]) for r in rows} == {
        (case, task) for case in bench.CASES for task in ("G0", "bound states")
    }
    for r in rows:
        assert r["L"] in bench.QUICK_SIZES and r["n_k"] == r["L"] ** 2
        assert r["time_shibajax"] > 0 and r["time_numpy"] > 0 and r["ratio"] > 0
        assert r["first_call_shibajax"] >= r["time_shibajax"]
        assert r["max_diff"] <= 1e-10
        if r["task"] == "bound states":
            assert r["n_states"] == r["n_states_numpy"] > 0
            assert r["n_states"] % 2 == 0  # particle-hole symmetry: +-E pairs
            np.testing.assert_allclose(r["energies_shibajax"], r["energies_numpy"], rtol=0, atol=1e-10)
            assert r["converged_shibajax"] and r["monotone_numpy"]
    for info in results["models"].values():
        assert info["bands_crossing_fermi_level"] >= 2

    table = bench.format_table(rows)
    data_lines = table.splitlines()[2:]
    assert len(data_lines) == len(rows)
    for line in data_lines:
        fields = line.split()
        numbers = fields[fields.index("states") + 1 :] if "states" in fields else fields[fields.index("G0") + 1 :]
        t_shibajax, compile_s, t_numpy, ratio = (float(x) for x in numbers[:4])
        assert t_shibajax > 0 and t_numpy > 0 and ratio > 0 and compile_s >= 0, line

    saved = json.loads(out.read_text())
    assert saved["rows"][0]["time_shibajax"] == rows[0]["time_shibajax"]


def test_check_agreement_rejects_a_mismatch(quick_results):
    bench, results, _ = quick_results
    bad = [dict(results["rows"][1], max_diff=1e-6)]
    with pytest.raises(AssertionError):
        bench.check_agreement(bad)
    fewer = [dict(results["rows"][1], n_states_numpy=results["rows"][1]["n_states"] - 2)]
    with pytest.raises(AssertionError):
        bench.check_agreement(fewer)


def test_reference_hamiltonian_matches_library_convention():
    """The independent NumPy H_BdG(k) equals shibajax's at generic k (Rashba square and five-orbital models)."""
    bench = load_benchmark("bench_core")
    ref = load_benchmark("numpy_reference")
    from shibajax.models.tight_binding import bdg_hamiltonian

    k = np.array([[0.3, 1.7], [2.9, -0.4], [np.pi, 0.5]])
    for model in (shibajax.models.square(t=1.0, mu=-1.0, delta=0.3, rashba=0.4), bench.five_orbital_model()):
        mine = ref.bdg_hamiltonians(
            np.asarray(model.hoppings),
            model.hop_displacements,
            np.asarray(model.pairing),
            model.pair_displacements,
            model.n_orb,
            k,
        )
        theirs = np.asarray(jax.vmap(lambda kk, m=model: bdg_hamiltonian(m, kk))(k))
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-13)
        np.testing.assert_allclose(mine, mine.conj().transpose(0, 2, 1), rtol=0, atol=1e-13)


def test_quick_sweep_benchmark_agrees_with_numpy_loop(capsys):
    """bench_sweep --quick: the sweep and the NumPy loop find the same states (to 1e-10) and a positive ratio."""
    bench = load_benchmark("bench_sweep")
    result = bench.main(["--quick", "--repeats", "1"])
    assert result["configurations"] == 40 and result["L"] == 8
    assert result["n_states"] > 0 and result["n_states"] % 2 == 0  # +-E pairs
    assert result["max_diff"] <= bench.TOL
    assert result["time_shibajax"] > 0 and result["time_numpy"] > 0
    assert result["ratio"] == result["time_numpy"] / result["time_shibajax"]
    assert "throughput ratio shibajax/NumPy" in capsys.readouterr().out


def test_sweep_benchmark_comparison_rejects_a_mismatch():
    bench = load_benchmark("bench_sweep")
    energies = np.array([[-0.1, 0.1, np.nan]])
    assert bench.compare(energies, [np.array([-0.1, 0.1])]) == 0.0
    with pytest.raises(AssertionError, match="states"):
        bench.compare(energies, [np.array([0.1])])
    with pytest.raises(AssertionError, match="differ"):
        bench.compare(energies, [np.array([-0.1, 0.1 + 1e-8])])


def test_fit_benchmark_quick_converges_like_scipy():
    """benchmarks/bench_fit.py --quick: the jitted L-BFGS, Levenberg-Marquardt and scipy's finite-difference
    least_squares reach the same chi^2 (to 1e-6 relative: all stop on tight criteria), and every timing is
    positive."""
    out = load_benchmark("bench_fit").main(["--quick"])
    assert out["time_shibajax_s"] > 0 and out["time_scipy_s"] > 0 and out["ratio_scipy_over_shibajax"] > 0
    assert out["loss_shibajax"] == pytest.approx(out["loss_scipy"], rel=1e-6)
    assert out["loss_shibajax_lm"] == pytest.approx(out["loss_scipy"], rel=1e-6)
    # chi^2/2 of 200 points with Gaussian noise of the stated sigma: about 100, well inside 4 sigma (+-40)
    assert abs(2 * out["loss_shibajax"] - (out["n_points"] - out["n_free"])) < 4 * np.sqrt(2 * out["n_points"])
