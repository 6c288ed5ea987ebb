"""Benchmark of the shibajax core against a plain NumPy/SciPy reference, with an agreement check.

    python benchmarks/bench_core.py [--quick] [--json out.json] [--repeats 3] [--sizes 48 96 192]

Two systems:

* ``square-dimer``: one-orbital square lattice ``square(t=1, mu=-1, delta=0.3, rashba=0.4)`` with two magnetic
  impurities (K=0.3, J=1.5, spin along (1, 0, 1)) at (0, 0) and (3, 1);
* ``five-orbital``: a five-orbital square-lattice model built with ``from_hoppings`` (on-site energies over
  [-0.5, 0.5], nearest-neighbour hoppings of different magnitudes per orbital, inter-orbital hoppings 0.1,
  s-wave delta = 0.1 on every orbital, all five bands crossing E_F) with one five-channel impurity.

For each system and grid L x L two tasks are timed (time.perf_counter, best of ``--repeats``):

1. ``G0``: the bare Green's function on the impurity displacements for 64 real in-gap energies
   (``shibajax.greens_function`` vs ``numpy_reference.greens_function``; both from scratch: build H_BdG(k),
   diagonalise, sum over k);
2. ``bound states``: the full in-gap bound-state search (``shibajax.bound_state_energies`` vs
   ``numpy_reference.bound_state_energies``: eigendecomposition of the whole grid, sign scan of the eigenvalues of
   A(E) on 64 energies, brentq to 1e-14).

shibajax calls get a warm-up call first, so JIT compilation is excluded from the timing; the compile time is
reported separately as (first call) - (best call). Every result is block_until_ready'd. The answers must agree:
max |G0_shibajax - G0_numpy| <= 1e-10 and the sorted bound-state energies (with multiplicity) within 1e-10.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy_reference

import shibajax

#: Agreement required between shibajax and the NumPy reference (absolute, energy units).
TOLERANCE = 1e-10
#: Number of real in-gap energies of the G0 task.
N_ENERGIES = 64
FULL_SIZES = (48, 96, 192)
QUICK_SIZES = (24,)


def square_dimer():
    """One-orbital Rashba square lattice with a magnetic dimer at (0, 0) and (3, 1)."""
    model = shibajax.models.square(t=1.0, mu=-1.0, delta=0.3, rashba=0.4)
    impurities = [
        shibajax.Impurity((0, 0), K=0.3, J=1.5, spin=(1, 0, 1)),
        shibajax.Impurity((3, 1), K=0.3, J=1.5, spin=(1, 0, 1)),
    ]
    return model, impurities


def five_orbital_model(mu=0.2, delta=0.1):
    """Five orbitals on the square lattice: real (time-reversal symmetric) Hermitian hoppings, s-wave delta."""
    n = 5
    onsite = np.linspace(-0.5, 0.5, n)
    t_nn = np.array([1.0, 0.8, 0.6, 0.45, 0.3])  # intra-orbital NN hoppings, different per orbital
    signs = np.array(
        [
            [0, 1, -1, 1, 1],
            [1, 0, 1, -1, 1],
            [-1, 1, 0, 1, -1],
            [1, -1, 1, 0, 1],
            [1, 1, -1, 1, 0],
        ]
    )
    parity = np.fromfunction(lambda a, b: (-1.0) ** (a + b), (n, n))
    t_x = -np.diag(t_nn) + 0.1 * signs  # inter-orbital NN hoppings of magnitude 0.1
    t_y = -np.diag(t_nn) + 0.1 * signs * parity  # a different inter-orbital pattern along y
    hoppings = {
        (0, 0): np.diag(onsite) - mu * np.eye(n),
        (1, 0): t_x,
        (-1, 0): t_x.conj().T,
        (0, 1): t_y,
        (0, -1): t_y.conj().T,
    }
    return shibajax.models.from_hoppings(hoppings, n_orb=n, delta=delta, name="five-orbital")


def five_orbital():
    """The five-orbital model with one impurity with a channel on each orbital."""
    model = five_orbital_model()
    impurity = shibajax.Impurity.per_orbital(
        (0, 0), K=[0.2, -0.1, 0.3, 0.0, 0.15], J=[1.0, 0.8, 1.2, 0.6, 0.9], spin=(0, 0, 1)
    )
    return model, [impurity]


CASES = {"square-dimer": square_dimer, "five-orbital": five_orbital}


def bands_crossing_fermi_level(model, grid=48) -> int:
    """How many of the 2 n_orb spinful electron bands of h(k) (sorted by energy) cross E = 0."""
    k = numpy_reference.gamma_centred_grid((grid,) * model.dim)
    phase = np.exp(1j * k @ np.asarray(model.hop_displacements, dtype=float).T)
    bands = np.linalg.eigvalsh(np.einsum("kh,hab->kab", phase, np.asarray(model.hoppings)))
    crossing = (bands.min(axis=0) < 0) & (bands.max(axis=0) > 0)
    return int(np.sum(crossing))


def impurity_displacements(impurities) -> np.ndarray:
    """Unique displacements r_i - r_j between impurity sites, (n_d, dim)."""
    sites = np.array([imp.site for imp in impurities])
    return np.unique((sites[:, None, :] - sites[None, :, :]).reshape(-1, sites.shape[1]), axis=0)


def _best_of(fn, repeats: int):
    """(best wall time, last result) of ``repeats`` calls."""
    best, out = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _timed_jax(fn, repeats: int):
    """(best, first-call time, result) of a JAX function; the first call compiles and is not in ``best``."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    best, out = _best_of(lambda: jax.block_until_ready(fn()), repeats)
    return best, first, out


def run_case(name: str, size: int, repeats: int = 3) -> list[dict]:
    """Time and compare G0 and the bound-state search for one system on an L x L grid; two result rows."""
    model, impurities = CASES[name]()
    kgrid = (size,) * model.dim
    n_k = math.prod(kgrid)
    disp = impurity_displacements(impurities)
    gap = float(shibajax.gap_edge(model, kgrid))
    energies = gap * np.linspace(-0.95, 0.95, N_ENERGIES)
    common = {"model": name, "L": size, "n_k": n_k, "n_orb": model.n_orb, "n_impurities": len(impurities)}

    # (1) G0 on the impurity displacements for 64 in-gap energies.
    t_np, g_np = _best_of(lambda: numpy_reference.greens_function(model, disp, energies, kgrid), repeats)
    t_sj, first_sj, g_sj = _timed_jax(lambda: shibajax.greens_function(model, disp, energies, kgrid=kgrid), repeats)
    dg = float(np.max(np.abs(np.asarray(g_sj) - g_np)))
    g0_row = {
        **common,
        "task": "G0",
        "n_energies": N_ENERGIES,
        "n_displacements": int(disp.shape[0]),
        "time_shibajax": t_sj,
        "first_call_shibajax": first_sj,
        "compile_shibajax": max(0.0, first_sj - t_sj),
        "time_numpy": t_np,
        "ratio": t_np / t_sj,
        "max_diff": dg,
        "max_abs_value": float(np.max(np.abs(g_np))),
        "n_states": None,
    }

    # (2) The full bound-state search.
    t_np, ref = _best_of(lambda: numpy_reference.bound_state_energies(model, impurities, kgrid), repeats)
    t_sj, first_sj, batch = _timed_jax(lambda: shibajax.bound_state_energies(model, impurities, kgrid=kgrid), repeats)
    e_sj = np.asarray(batch.energies)
    e_sj = np.sort(e_sj[np.isfinite(e_sj)])
    e_np = ref["energies"]
    same_count = e_sj.shape == e_np.shape
    de = float(np.max(np.abs(e_sj - e_np), initial=0.0)) if same_count else math.inf
    bs_row = {
        **common,
        "task": "bound states",
        "time_shibajax": t_sj,
        "first_call_shibajax": first_sj,
        "compile_shibajax": max(0.0, first_sj - t_sj),
        "time_numpy": t_np,
        "ratio": t_np / t_sj,
        "max_diff": de,
        "n_states": int(e_sj.size),
        "n_states_numpy": int(e_np.size),
        "energies_shibajax": e_sj.tolist(),
        "energies_numpy": e_np.tolist(),
        "gap_shibajax": float(batch.gap_edge),
        "gap_numpy": float(ref["gap"]),
        "converged_shibajax": bool(batch.converged),
        "monotone_numpy": bool(ref["monotone"]),
    }
    return [g0_row, bs_row]


def check_agreement(rows: list[dict], tol: float = TOLERANCE) -> None:
    """Raise AssertionError unless every row agrees to ``tol`` (and the state counts match)."""
    for r in rows:
        where = f"{r['model']} L={r['L']} {r['task']}"
        if r["task"] == "bound states":
            assert r["n_states"] == r["n_states_numpy"], (
                f"{where}: shibajax found {r['n_states']} states, the NumPy reference {r['n_states_numpy']}: "
                f"{r['energies_shibajax']} vs {r['energies_numpy']}"
            )
            assert r["converged_shibajax"], f"{where}: shibajax reports a root that did not converge"
            assert abs(r["gap_shibajax"] - r["gap_numpy"]) <= tol, f"{where}: gap edges differ"
        assert r["max_diff"] <= tol, f"{where}: max difference {r['max_diff']:.3e} > {tol:.0e}"


def format_table(rows: list[dict]) -> str:
    """Plain-text table of the result rows."""
    head = (
        f"{'model':<13} {'L':>4} {'n_k':>6} {'task':<12} {'shibajax s':>11} {'compile s':>10} "
        f"{'numpy s':>9} {'numpy/sj':>9} {'max diff':>9} {'states':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        states = "" if r["n_states"] is None else str(r["n_states"])
        lines.append(
            f"{r['model']:<13} {r['L']:>4} {r['n_k']:>6} {r['task']:<12} {r['time_shibajax']:>11.4g} "
            f"{r['compile_shibajax']:>10.2f} {r['time_numpy']:>9.4g} {r['ratio']:>9.2f} {r['max_diff']:>9.1e} "
            f"{states:>6}"
        )
    return "\n".join(lines)


def environment() -> dict:
    """Where the numbers were measured."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "jax_devices": [str(d) for d in jax.devices()],
        "shibajax": shibajax.__version__,
    }


def run(sizes, repeats: int = 3, cases=tuple(CASES), verbose: bool = True) -> dict:
    """Run every case at every size; returns {'environment', 'sizes', 'repeats', 'rows', 'models'}."""
    rows = []
    for name in cases:
        for size in sizes:
            if verbose:
                print(f"running {name} L={size} ...", file=sys.stderr, flush=True)
            rows.extend(run_case(name, size, repeats))
    models = {}
    for name in cases:
        model, impurities = CASES[name]()
        models[name] = {
            "n_orb": model.n_orb,
            "impurity_sites": [list(imp.site) for imp in impurities],
            "bands_crossing_fermi_level": bands_crossing_fermi_level(model),
        }
    return {"environment": environment(), "sizes": list(sizes), "repeats": repeats, "rows": rows, "models": models}


def main(argv=None) -> dict:
    """Command-line entry point; returns the results dictionary (also for tests)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"grid sizes {QUICK_SIZES} instead of {FULL_SIZES}")
    parser.add_argument("--json", metavar="PATH", help="write all numbers to this JSON file")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats, best taken (default 3)")
    parser.add_argument("--sizes", type=int, nargs="+", help="grid sizes L (overrides --quick)")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES), help="systems to run")
    args = parser.parse_args(argv)
    sizes = tuple(args.sizes) if args.sizes else (QUICK_SIZES if args.quick else FULL_SIZES)

    results = run(sizes, args.repeats, tuple(args.cases))
    rows = results["rows"]
    print(format_table(rows))
    for name, info in results["models"].items():
        print(f"{name}: {info['bands_crossing_fermi_level']} of {2 * info['n_orb']} spinful bands cross E_F")
    for key in ("G0", "bound states"):
        worst = max(r["max_diff"] for r in rows if r["task"] == key)
        label = "max |dG0|" if key == "G0" else "max |dE|"
        print(f"{label} over all runs: {worst:.3e} (tolerance {TOLERANCE:.0e})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    check_agreement(rows)
    return results


if __name__ == "__main__":
    main()
