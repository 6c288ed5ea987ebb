"""Sweep throughput: shibajax.sweep.run_sweep against a plain NumPy loop over the same configurations.

System: the Rashba dimer of ``tests/test_sweep.py`` (``square(mu=-1, delta=0.3, rashba=0.3)``, impurities at
(0, 0) and (2, 1), K = 0.1), swept over J and the angle between the two spins, on an L x L grid. shibajax runs
the real sweep path (sharded chunks written to NetCDF); the reference builds the model's H_BdG on the grid,
diagonalises it and scans/brentq's det A(E) for every configuration in a Python loop
(``numpy_reference.bound_state_energies``). Every configuration's energies are compared (same number of
states, energies within 1e-10) before the ratio is printed.

    python benchmarks/bench_sweep.py            # 40 x 25 = 1000 configurations, L = 16
    python benchmarks/bench_sweep.py --quick    # 8 x 5 = 40 configurations, L = 8 (a few seconds)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import shibajax
from shibajax import sweep
from shibajax.clusters import impurities_at, spiral_spins

HERE = Path(__file__).resolve().parent
TOL = 1e-10  # energies agree to rounding of two root finders that both converge to ~1e-14
MODEL = {"mu": -1.0, "delta": 0.3, "rashba": 0.3}
SITES = [[0, 0], [2, 1]]
K = 0.1


def _numpy_reference():
    if "numpy_reference" in sys.modules:
        return sys.modules["numpy_reference"]
    spec = importlib.util.spec_from_file_location("numpy_reference", HERE / "numpy_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["numpy_reference"] = module
    spec.loader.exec_module(module)
    return module


def config(n_j: int, n_angle: int, L: int) -> dict:
    """The sweep config: J in [0.5, 3] (n_j values) x angle in [0, 180] degrees (n_angle values)."""
    return {
        "kgrid": L,
        "model": dict(MODEL),
        "impurity": {"kind": "dimer", "separation": SITES[1], "K": K},
        "sweep": {
            "J": np.linspace(0.5, 3.0, n_j).tolist(),
            "angle": np.linspace(0.0, 180.0, n_angle).tolist(),
        },
    }


def run_shibajax(cfg: dict, repeats: int) -> tuple[float, float, np.ndarray]:
    """Best wall time of run_sweep (compiled), first-call time, energies (n_j, n_angle, state)."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats + 1):
            out = Path(tmp) / f"sweep{i}.nc"
            start = time.perf_counter()
            ds = sweep.run_sweep(cfg, out, progress=False)
            times.append(time.perf_counter() - start)
    return min(times[1:]), times[0], ds["energy"].values


def run_numpy(cfg: dict) -> tuple[float, list[np.ndarray]]:
    """Wall time of the NumPy loop and the sorted energies of every configuration (flattened C order)."""
    ref = _numpy_reference()
    model = shibajax.models.square(**MODEL)
    kgrid = (cfg["kgrid"], cfg["kgrid"])
    out = []
    start = time.perf_counter()
    for J in cfg["sweep"]["J"]:
        for angle in cfg["sweep"]["angle"]:
            spins = np.asarray(spiral_spins(2, np.deg2rad(angle)))
            imps = impurities_at(np.asarray(SITES), spins, K=K, J=J)
            out.append(ref.bound_state_energies(model, imps, kgrid)["energies"])
    return time.perf_counter() - start, out


def compare(energies: np.ndarray, reference: list[np.ndarray]) -> float:
    """Max |dE| over all configurations; AssertionError if a state count differs or |dE| > TOL."""
    rows = energies.reshape(len(reference), -1)
    worst = 0.0
    for i, (row, ref) in enumerate(zip(rows, reference, strict=True)):
        mine = row[np.isfinite(row)]
        assert mine.size == ref.size, f"configuration {i}: {mine.size} states vs {ref.size} (NumPy)"
        if mine.size:
            worst = max(worst, float(np.max(np.abs(mine - ref))))
    assert worst <= TOL, f"energies differ by {worst:.3g} > {TOL}"
    return worst


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 configurations on an 8 x 8 grid")
    parser.add_argument("--L", type=int, default=None, help="grid size (default 16, quick 8)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    n_j, n_angle = (8, 5) if args.quick else (40, 25)
    L = args.L or (8 if args.quick else 16)
    cfg = config(n_j, n_angle, L)
    t_sj, first_sj, energies = run_shibajax(cfg, args.repeats)
    t_np, reference = run_numpy(cfg)
    worst = compare(energies, reference)
    n = n_j * n_angle
    result = {
        "configurations": n,
        "L": L,
        "devices": len(jax.devices()),
        "time_shibajax": t_sj,
        "first_call_shibajax": first_sj,
        "time_numpy": t_np,
        "throughput_shibajax": n / t_sj,
        "throughput_numpy": n / t_np,
        "ratio": t_np / t_sj,
        "max_diff": worst,
        "n_states": int(sum(r.size for r in reference)),
    }
    print(
        f"{n} configurations, {L} x {L} grid, {result['devices']} device(s) ({jax.devices()[0].platform})\n"
        f"  shibajax sweep: {t_sj:.3f} s ({result['throughput_shibajax']:.1f} configurations/s; first call "
        f"{first_sj:.2f} s with compilation)\n"
        f"  NumPy loop:     {t_np:.3f} s ({result['throughput_numpy']:.1f} configurations/s)\n"
        f"  throughput ratio shibajax/NumPy: {result['ratio']:.1f}x; max |dE| = {worst:.2g} "
        f"over {result['n_states']} states (tolerance {TOL})"
    )
    return result


if __name__ == "__main__":
    main()
