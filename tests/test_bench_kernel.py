"""Smoke test of benchmarks/bench_kernel.py: one small workload runs in-process, agrees with the NumPy reference,
counts its flops by the documented formula and prints a GEMM fraction that is a finite number in (0, 1.5]."""

from __future__ import annotations

import json
import math

from benchmark_loader import load_benchmark


def test_quick_kernel_benchmark_prints_a_sane_gemm_fraction(tmp_path, capsys):
    bench = load_benchmark("bench_kernel")
    out = tmp_path / "kernel.json"
    results = bench.main(["--quick", "--repeats", "1", "--only", "one-orbital:LDOS", "--json", str(out)])
    printed = capsys.readouterr().out
    (row,) = results["rows"]
    assert json.loads(out.read_text())["rows"][0]["fraction"] == row["fraction"]

    # the fraction as printed in the table ("23.4%"), and the GEMM it is a fraction of, measured in this run
    line = next(x for x in printed.splitlines() if x.startswith("one-orbital") and " LDOS " in x)
    fraction = float(line.split()[-2].rstrip("%")) / 100
    assert math.isfinite(fraction) and 0.0 < fraction <= 1.5, line
    assert abs(fraction - row["fraction"]) <= 1e-3
    assert results["gemm"]["best"] > 0 and "GFLOP/s" in printed.splitlines()[0]

    # the flop count of the module docstring, for M = 4, 256 complex energies, 3 displacements, power 1: many
    # energies on a small M take route A (phases in the projectors)
    assert row["route"] == "A"
    m, n_z, n_d, n_k = 4, 256, 3, row["n_k"]
    f = n_d * m * m
    per_k = 19 * m**3 + 6 * (n_d * m * m + n_d * m**3) + 8 * n_z * m + 8 * n_z * m * f
    assert row["n_k"] == bench.QUICK["one-orbital"] ** 2 and row["M"] == m and row["n_z"] == n_z
    assert math.isclose(row["flops"]["total"], n_k * per_k, rel_tol=1e-12)
    assert math.isclose(row["gflops"], row["flops"]["total"] / row["time"] / 1e9, rel_tol=1e-12)
    assert row["max_rel_diff_numpy"] <= 1e-12  # exact sums over the same grid: rounding only
