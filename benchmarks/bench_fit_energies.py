"""Time of the one-call energy fit: ``fit_energies`` on the five Cr-in-Pb(111) energies (issue 14, item 5).

    python benchmarks/bench_fit_energies.py                 # grids 24, 48, 96
    python benchmarks/bench_fit_energies.py --quick         # grid 24 only
    python benchmarks/bench_fit_energies.py --optax 10      # also time the optax multistart (8 starts, 10 iterations)

Host: the five decoupled s-wave orbitals of tests/test_fitting_energies.py (Delta = 1.35 meV), one channel per
orbital, K = 0. ``fit_energies`` enumerates and checks all 5! x 2^5 = 3840 exact solutions. Timed: the first call
in the process (with compilation) and the best of three later calls. Accuracy next to time: the energies of the
five cyclic channel -> peak shifts on each uniform branch (ten reported solutions, which together hold every
(channel, peak, branch) root) recomputed by ``shibajax.bound_states``, max |E - target|.

``--optax N``: the route the issue timed at 23+ minutes (8 starts x 200 iterations, 24 x 24): ``fitting.fit`` on an
``EnergyProblem`` (sorted energies, L-BFGS, root search per step) with N iterations, for the cost per iteration.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import shibajax
from shibajax.fitting import EnergyProblem, ShibaEnergies, coupling_basis, fit, fit_energies

CR_PB111 = np.array([1.1, 0.9, 0.62, 0.45, 0.125])  # meV
T_HOP = np.array([6.0, 8.0, 10.0, 12.0, 14.0])  # meV
MU = np.array([-5.0, -8.0, -12.0, -15.0, -20.0])  # meV


def host():
    hop = {(0, 0): np.diag(-MU)}
    for d in [(1, 0), (-1, 0), (0, 1), (0, -1)]:
        hop[d] = -np.diag(T_HOP)
    return shibajax.models.from_hoppings(hop, delta=1.35, name="five decoupled s-wave orbitals")


def covering_error(model, res, size) -> float:
    """max |E - target| (meV) of the ten covering solutions, by bound_states."""
    by_key = {(tuple(s.assignment.values()), tuple(s.branches.values())): s for s in res.solutions}
    worst = 0.0
    for shift in range(5):
        for b in (0, 1):
            sol = by_key[(tuple((c + shift) % 5 for c in range(5)), (b,) * 5)]
            imp = shibajax.Impurity.per_orbital((0, 0), K=[0.0] * 5, J=[sol.values[f"J_{c}"] for c in range(5)])
            bs = shibajax.bound_states(model, imp, kgrid=(size, size))
            e = np.sort(bs.all_energies[bs.all_energies > 0])
            worst = max(worst, float(np.max(np.abs(e - np.sort(CR_PB111)))))
    return worst


def time_optax(model, size: int, iterations: int) -> dict:
    couplings = coupling_basis(model, [(0, 0)])
    fn = ShibaEnergies(model, couplings, kgrid=(size, size))
    params = {f"K_{c}": {"value": 0.0, "fixed": True} for c in range(5)}
    params |= {f"J_{c}": {"value": 15.0, "lower": 1.0, "upper": 60.0} for c in range(5)}
    prob = EnergyProblem(fn, CR_PB111, params)
    t = time.perf_counter()
    res = fit(prob, n_starts=8, progress=False, max_iter=iterations, tol=1e-12)
    seconds = time.perf_counter() - t
    return {"L": size, "starts": 8, "iterations": iterations, "seconds": seconds, "best_loss": float(res.loss)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--optax", type=int, default=0, metavar="N", help="also time fit() with N iterations")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    model = host()
    rows = []
    for size in (24,) if args.quick else (24, 48, 96):
        t = time.perf_counter()
        res = fit_energies(model, (0, 0), CR_PB111, kgrid=(size, size))
        first = time.perf_counter() - t
        warm = []
        for _ in range(3):
            t = time.perf_counter()
            res = fit_energies(model, (0, 0), CR_PB111, kgrid=(size, size))
            warm.append(time.perf_counter() - t)
        rows.append(
            {
                "L": size,
                "n_exact": res.n_exact,
                "first_call_s": first,
                "best_of_3_s": min(warm),
                "max_reported_residual_meV": max(s.residual for s in res.solutions),
                "bound_states_max_error_meV": covering_error(model, res, size),
            }
        )
        r = rows[-1]
        print(
            f"L = {size:4d}: {r['n_exact']} exact solutions, first call {r['first_call_s']:.2f} s, best of 3 "
            f"{r['best_of_3_s']:.3f} s; bound_states |E - target| <= {r['bound_states_max_error_meV']:.1e} meV"
        )
    out = {"rows": rows}
    if args.optax:
        out["optax"] = time_optax(model, 24, args.optax)
        o = out["optax"]
        print(f"optax multistart, 24 x 24, 8 starts x {o['iterations']} iterations: {o['seconds']:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
