"""Efficiency of the G0 kernel: GFLOP/s and the fraction of a dense GEMM measured in the same run.

    python benchmarks/bench_kernel.py [--quick] [--json out.json] [--repeats 5] [--gemm-sizes 512 1024 2048]
                                      [--only five-orbital:LDOS ...]

What it measures, in one process:

1. **GEMM throughput** of this machine as JAX sees it: ``jnp.matmul`` of two n x n matrices, complex128 and float64,
   n = 512, 1024, 2048 (jitted, ``block_until_ready``, best of ``--repeats``), 8 n^3 and 2 n^3 real flops, before
   and after the kernel runs. The best rate of either type is "the GEMM" (real flops are real flops: a complex
   multiply-add is 8 of them). On a GPU the float64 GEMM measured there is also taken as the FP64 peak.
2. **The G0 kernel**, ``shibajax.greens_function.bare_greens_sum`` (warm, best of ``--repeats``), with the library's
   default k-chunk, on four workloads: the five-orbital model of ``bench_core.py`` (M = 20) and the one-orbital
   Rashba model ``square(t=1, mu=-1, delta=0.3, rashba=0.4)`` (M = 4), each with an LDOS-like 256 complex
   energies (eta = 0.01) and with the 9 real in-gap energies of a bound-state bracket, on the 3 displacements of a
   dimer at (0, 0) and (3, 1). Every result is checked against the plain NumPy reference (``numpy_reference.py``).
3. **Where the time goes**: the stages jitted separately on the shapes the kernel works on (Hamiltonian and eigh on
   one chunk; projectors and the product, with the resolvents, on one CPU sub-chunk), times their number.

Flop count per k-point: the real flops the kernel executes (M = 4 n_orb, n_z energies, n_d displacements, p powers,
R = p n_z). The kernel takes one of two routes for its product (``greens_function._green_kernel``, from the static
shapes), printed as "route":

* eigendecomposition of the complex Hermitian M x M matrix (LAPACK zheevd): ``EIGH_FLOPS_PER_M3`` M^3 = 19 M^3
  (zhetrd 16/3, divide and conquer 4/3, zlacrm 4 and zunmtr 8 M^3); none when read from a stored eigensystem;
* resolvents 1/(z - E_n) and their powers: 8 R M;
* route A (phases in the projectors; many energies on a small M): projectors exp(ik.d) |n><n| as [Re | Im],
  6 (n_d M^2 + n_d M^3); product (R, M) x (M, n_d M^2): 8 R n_d M^3 for complex energies ([Re; Im] x [Re | Im]),
  4 R n_d M^3 for real ones;
* route B (phases in the resolvent rows; few energies, or large M): Hermitian |n><n| packed into M^2 reals, 3 M^3;
  rows Re, Im of exp(ik.d) / (z - E)^p, 6 n_d R M; product (2 n_d R, M) x (M, M^2): 4 n_d R M^3 (half of route
  A's for complex energies: the packing uses |n><n| = |n><n|^dagger);
* the Hamiltonian build and the accumulation over chunks are not counted (both O(M^2) per k).

GFLOP/s is the counted flops of the real k-points (not the padding of the last chunk) over the kernel's time; the
fraction is that over the GEMM of (1). Timings are best-of-N: on a shared machine the spread is large.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy_reference
from environment import environment

import shibajax
from shibajax import _linalg
from shibajax.brillouin_zone import chunked_kpoints, n_points
from shibajax.models.tight_binding import bdg_hamiltonian

gf = importlib.import_module("shibajax.greens_function")  # the module (shibajax.greens_function is also a function)

#: Real flops of one complex Hermitian eigendecomposition with vectors, per M^3 (zheevd, see the module docstring).
EIGH_FLOPS_PER_M3 = 19.0
#: Agreement required with the NumPy reference, relative to max |G0| (both are exact sums over the same grid).
TOLERANCE = 1e-12
#: Number of energies of the LDOS-like and of the bound-state-bracket workloads, and the LDOS broadening.
N_LDOS, N_SEARCH, ETA = 256, 9, 0.01
#: Displacements of a dimer at (0, 0) and (3, 1): 0 and +-(3, 1).
DISPLACEMENTS = np.array([[0, 0], [3, 1], [-3, -1]])
FULL = {"five-orbital": 24, "one-orbital": 192}
QUICK = {"five-orbital": 8, "one-orbital": 16}
#: LDOS: 256 complex energies; search: the 9 real energies of a bound-state bracket, diagonalising chunk by chunk
#: (bare_greens_sum); search-cached: the same from the grid's stored eigensystem (greens_sum_from_eigensystem, as
#: the bound-state search does when the eigensystem fits in EIGENSYSTEM_CACHE_ELEMENTS): no eigh in the time.
TASKS = ("LDOS", "search", "search-cached")
WORKLOADS = tuple(f"{model}:{task}" for model in ("five-orbital", "one-orbital") for task in TASKS)
GEMM_FULL, GEMM_QUICK = (512, 1024, 2048), (512,)


def _model(name: str):
    """The five-orbital model of bench_core.py (imported only when needed) or the one-orbital Rashba model."""
    if name == "five-orbital":
        from bench_core import five_orbital_model

        return five_orbital_model()
    return shibajax.models.square(t=1.0, mu=-1.0, delta=0.3, rashba=0.4)


def _best(fn, repeats: int) -> tuple[float, object]:
    """(best wall time, result) of ``repeats`` block_until_ready'd calls after one warm-up call."""
    out = jax.block_until_ready(fn())
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best, out


def gemm_throughput(sizes, repeats: int) -> dict:
    """GFLOP/s of ``jnp.matmul`` on n x n complex128 (8 n^3 flops) and float64 (2 n^3 flops) matrices, for each n
    of ``sizes``; the best over the sizes is the GEMM throughput of each type."""
    matmul = jax.jit(jnp.matmul)
    rng = np.random.default_rng(0)
    out = {"sizes": list(sizes)}
    for name, dtype, flops in (("complex128", np.complex128, 8.0), ("float64", np.float64, 2.0)):
        rates = {}
        for n in sizes:
            a = rng.standard_normal((n, n)) + (1j * rng.standard_normal((n, n)) if flops == 8.0 else 0.0)
            b = rng.standard_normal((n, n)) + (1j * rng.standard_normal((n, n)) if flops == 8.0 else 0.0)
            a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
            t, _ = _best(lambda a=a, b=b: matmul(a, b), repeats)
            rates[n] = flops * n**3 / t / 1e9
        out[name] = {"gflops_by_size": rates, "gflops": max(rates.values())}
    out["best"] = max(out["complex128"]["gflops"], out["float64"]["gflops"])
    return out


def best_gemm(first: dict, last: dict) -> dict:
    """The better of two GEMM measurements (before and after the workloads: on a shared machine the rate moves)."""
    out = {"sizes": first["sizes"], "before": first, "after": last}
    for name in ("complex128", "float64"):
        rates = {n: max(first[name]["gflops_by_size"][n], last[name]["gflops_by_size"][n]) for n in first["sizes"]}
        out[name] = {"gflops_by_size": rates, "gflops": max(rates.values())}
    out["best"] = max(out["complex128"]["gflops"], out["float64"]["gflops"])
    return out


def kernel_flops(
    m: int, n_k: int, n_z: int, n_d: int, max_power: int, real: bool, eigh: bool = True, route: str = "A"
) -> dict:
    """Real flops one G0 sum executes, by stage (see the module docstring); ``eigh=False``: from a stored
    eigensystem; ``route``: that of ``shibajax.greens_function._green_kernel``."""
    rows = max_power * n_z
    if route == "A":  # phases in the projectors [Re | Im] (M, 2 n_d M^2)
        projector = 6.0 * (n_d * m * m + n_d * m**3)
        product = (4.0 if real else 8.0) * rows * m * n_d * m * m
    else:  # B: phases in the rows [Re; Im] (2 n_d p n_z, M), Hermitian projectors packed (M, M^2)
        projector = 3.0 * m**3 + 6.0 * n_d * rows * m
        product = 4.0 * n_d * rows * m**3
    per_k = {
        "eigh": EIGH_FLOPS_PER_M3 * m**3 if eigh else 0.0,
        "projector": projector,
        "resolvents": 8.0 * rows * m,
        "product": product,
    }
    out = {key: value * n_k for key, value in per_k.items()}
    out["total"] = sum(out.values())
    return out


def workloads(quick: bool, only=WORKLOADS) -> list[dict]:
    """The workloads named in ``only`` (all four by default): model, grid, energies, powers."""
    sizes = QUICK if quick else FULL
    rows = []
    for name in sizes:
        tasks = [task for task in TASKS if f"{name}:{task}" in only]
        if not tasks:
            continue
        model = _model(name)
        reference = numpy_reference.NumpyReference(model, (sizes[name],) * model.dim)  # grid eigensystem in NumPy
        gap = reference.gap  # the grid's gap edge, min |E_n(k)|
        ldos = np.linspace(-2 * gap, 2 * gap, N_LDOS) + 1j * ETA
        search = gap * np.linspace(-0.95, 0.95, N_SEARCH)
        for task, z in (("LDOS", ldos), ("search", search), ("search-cached", search)):
            if task in tasks:
                rows.append(
                    {
                        "model": name,
                        "task": task,
                        "L": sizes[name],
                        "z": z,
                        "max_power": 1,
                        "obj": model,
                        "ref": reference,
                    }
                )
    return rows


def _stage_functions(model, kernel, z):
    """The stages of the kernel, jitted separately: k -> H, H -> (E, U), (U, k, w) -> projectors (the GEMM's
    columns), (E, k, w, columns) -> resolvent rows and the GEMM."""
    hamiltonian = jax.jit(jax.vmap(partial(bdg_hamiltonian, model)))
    eigh = jax.jit(_linalg.eigh)
    projector = jax.jit(kernel.columns)
    product = jax.jit(lambda e, kc, wc, cols: kernel.rows(e, kc, wc, z) @ cols)
    return hamiltonian, eigh, projector, product


def run_workload(w: dict, repeats: int) -> dict:
    """Time one workload (whole kernel and its stages), count its flops, check it against NumPy."""
    model, z, p = w["obj"], w["z"], w["max_power"]
    kgrid = (w["L"],) * model.dim
    n_k = n_points(kgrid)
    m, n_z, n_d = model.nambu_dim, z.shape[0], DISPLACEMENTS.shape[0]
    real = not np.iscomplexobj(z)
    chunk = gf.green_chunk_size(model, kgrid, n_z, n_d, p)
    zj = jnp.asarray(z)
    disp = jnp.asarray(DISPLACEMENTS, jnp.float64)

    cached = w["task"] == "search-cached"
    if cached:
        eig = jax.block_until_ready(gf.bz_eigensystem(model, kgrid, chunk))  # stored beforehand, not timed
        from_eigensystem = jax.jit(partial(gf.greens_sum_from_eigensystem, n_k=float(n_k), max_power=p))

        def kernel():
            return from_eigensystem(eig, disp, zj)
    else:

        def kernel():
            return gf.bare_greens_sum(model, disp, zj, kgrid=kgrid, chunk_size=chunk, max_power=p)

    t_kernel, g = _best(kernel, repeats)
    ref = w["ref"].greens(DISPLACEMENTS, z)
    err = float(np.max(np.abs(np.asarray(g[0]) - ref)) / np.max(np.abs(ref)))

    # Stages on the shapes the kernel works on: the Hamiltonian and eigh on one chunk, the projectors and the
    # product on one sub-chunk (on CPU each chunk is multiplied in sub-chunks; on GPU whole), times their numbers.
    kpts, weights = chunked_kpoints(kgrid, chunk)
    n_chunks = kpts.shape[0]
    kernel_parts = gf._green_kernel(disp, m, n_z, not real, p)
    sub = gf.sub_chunk_size(chunk, kernel_parts.per_k) if jax.default_backend() == "cpu" else chunk
    pieces = -(-chunk // sub)
    kc, wc = kpts[0], weights[0]
    hamiltonian, eigh, projector, product = _stage_functions(model, kernel_parts, zj)
    t_h, h = _best(lambda: hamiltonian(kc), repeats)
    t_e, (e, u) = _best(lambda: eigh(h), repeats)
    if cached:
        t_h = t_e = 0.0  # read from the stored eigensystem
    ks, ws, es, us = kc[:sub], wc[:sub], e[:sub], u[:sub]
    t_p, proj = _best(lambda: projector(us, ks, ws), repeats)
    t_r, _ = _best(lambda: product(es, ks, ws, proj), repeats)
    stages = {"hamiltonian": n_chunks * t_h, "eigh": n_chunks * t_e}
    stages |= {"projector": n_chunks * pieces * t_p, "product": n_chunks * pieces * t_r}

    flops = kernel_flops(m, n_k, n_z, n_d, p, real, eigh=not cached, route=kernel_parts.route)
    gflops = flops["total"] / t_kernel / 1e9
    stage_gflops = {
        "eigh": flops["eigh"] / stages["eigh"] / 1e9 if stages["eigh"] > 0 else 0.0,
        "projector": flops["projector"] / stages["projector"] / 1e9,
        "product": (flops["product"] + flops["resolvents"]) / stages["product"] / 1e9,
    }
    return {
        "model": w["model"],
        "task": w["task"],
        "L": w["L"],
        "n_k": n_k,
        "M": m,
        "n_z": n_z,
        "n_d": n_d,
        "max_power": p,
        "real_energies": real,
        "chunk_size": chunk,
        "n_chunks": n_chunks,
        "sub_chunk": sub,
        "route": kernel_parts.route,
        "time": t_kernel,
        "flops": flops,
        "gflops": gflops,
        "stage_times": stages,
        "stage_gflops": stage_gflops,
        "max_rel_diff_numpy": err,
    }


def format_report(gemm: dict, rows: list[dict]) -> str:
    """Plain-text tables: the GEMM, then per workload the kernel and its stages."""
    lines = [
        f"GEMM (jnp.matmul, n = {gemm['sizes']}, before and after the kernels, best): complex128 "
        f"{gemm['complex128']['gflops']:.1f} GFLOP/s, "
        f"float64 {gemm['float64']['gflops']:.1f} GFLOP/s; the fractions below are of {gemm['best']:.1f} GFLOP/s",
        "",
    ]
    head = (
        f"{'model':<13} {'task':<13} {'L':>4} {'M':>3} {'n_z':>4} {'chunk':>6} {'sub':>5} {'route':>5} {'time s':>8} "
        f"{'GFLOP':>8} {'GFLOP/s':>8} {'of GEMM':>8} {'rel diff':>8}"
    )
    lines += [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<13} {r['task']:<13} {r['L']:>4} {r['M']:>3} {r['n_z']:>4} {r['chunk_size']:>6} "
            f"{r['sub_chunk']:>5} {r['route']:>5} {r['time']:>8.4f} {r['flops']['total'] / 1e9:>8.3f} "
            f"{r['gflops']:>8.2f} "
            f"{r['fraction']:>8.1%} {r['max_rel_diff_numpy']:>8.1e}"
        )
    lines += [
        "",
        "where the time goes (stages jitted separately: Hamiltonian and eigh on a chunk, projectors and product on a",
        "sub-chunk, times their numbers; GF/s of the flops counted for the stage):",
    ]
    stages = ("hamiltonian", "eigh", "projector", "product")
    head = f"{'model':<13} {'task':<13} " + " ".join(f"{s:>22}" for s in stages)
    lines += [head, "-" * len(head)]
    for r in rows:
        cells = []
        for s in stages:
            t = r["stage_times"][s]
            share = t / sum(r["stage_times"].values())
            rate = f" {r['stage_gflops'][s]:6.1f} GF/s" if s in r["stage_gflops"] and t > 0 else " " * 12
            cells.append(f"{t:>7.4f} s {share:>3.0%}{rate}")
        lines.append(f"{r['model']:<13} {r['task']:<13} " + " ".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Command-line entry point; returns the results dictionary (also for tests)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"small grids {QUICK} and GEMM n = {GEMM_QUICK}")
    parser.add_argument("--json", metavar="PATH", help="write all numbers to this JSON file")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats, best taken (default 5)")
    parser.add_argument("--only", nargs="+", metavar="MODEL:TASK", help=f"run only these of {WORKLOADS}")
    parser.add_argument("--gemm-sizes", type=int, nargs="+", help=f"n of the n x n GEMMs (default {GEMM_FULL})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only or ()) - set(WORKLOADS))
    if unknown:
        parser.error(f"--only {' '.join(unknown)}: unknown workload; choose from {' '.join(WORKLOADS)}")
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: must be at least 1")
    sizes = args.gemm_sizes or (GEMM_QUICK if args.quick else GEMM_FULL)

    first = gemm_throughput(sizes, args.repeats)
    rows = []
    for w in workloads(args.quick, tuple(args.only or WORKLOADS)):
        print(f"running {w['model']} {w['task']} L={w['L']} ...", file=sys.stderr, flush=True)
        rows.append(run_workload(w, args.repeats))
    gemm = best_gemm(first, gemm_throughput(sizes, args.repeats))
    for r in rows:
        r["gemm_gflops"] = gemm["best"]
        r["fraction"] = r["gflops"] / gemm["best"]
        r["stage_fractions"] = {key: value / gemm["best"] for key, value in r["stage_gflops"].items()}
    gpu = jax.default_backend() == "gpu"
    results = {"environment": environment(), "repeats": args.repeats, "gemm": gemm, "rows": rows, "gpu": gpu}
    print(format_report(gemm, rows))
    if gpu:
        peak = gemm["float64"]["gflops"]
        for r in rows:
            r["fraction_of_fp64_peak"] = r["gflops"] / peak
            print(f"{r['model']} {r['task']}: {r['fraction_of_fp64_peak']:.1%} of the FP64 peak ({peak:.0f} GFLOP/s)")
    worst = max(r["max_rel_diff_numpy"] for r in rows)
    print(f"max |G0 - G0_numpy| / max |G0| over all workloads: {worst:.1e} (tolerance {TOLERANCE:.0e})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    assert worst <= TOLERANCE, f"the kernel disagrees with the NumPy reference: {worst:.2e} > {TOLERANCE:.0e}"
    return results


if __name__ == "__main__":
    main()
