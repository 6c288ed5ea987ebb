"""k-points needed for 1 ueV accuracy of a Mn-like adatom's Shiba energies on Nb(110) at the physical gap.

Nb(110) (shibajax.models.nb110: W = 2.4 eV, Delta = 1.5 meV, Delta / W = 6e-4, coherence length ~ 700 sites),
a Mn-like adatom in the hollow site with a d_z2-shaped channel (the deepest, A1, channel of the five; rank 4 so
that uniform grids up to 2048^2 stay affordable on a CPU). Compared:

- uniform Gamma-centred L x L grids (a periodic L x L lattice: converges only once L >> coherence length),
- Fermi-shell meshes (shibajax.fermi_shell) at resolutions rho, 3^2 Gauss points per cell,

against the finest Fermi-shell result. Prints and writes a Markdown table (k-points, |error| in ueV, seconds)
and JSON, row by row (an interrupted run keeps its rows).

    python benchmarks/bench_kmesh.py [--quick] [--out benchmarks/results/kmesh]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import shibajax
from shibajax.fermi_shell import fermi_shell_mesh
from shibajax.models.nb110 import mn_adatom


def _solve(model, adatom, kgrid):
    t0 = time.perf_counter()
    states = shibajax.bound_states(model, adatom, kgrid=kgrid)
    return states.energies[states.energies > 0], time.perf_counter() - t0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small grids, large gap (smoke test)")
    parser.add_argument("--out", default="benchmarks/results/kmesh", help="output prefix (.md, .json)")
    args = parser.parse_args(argv)
    delta = 30.0 if args.quick else 1.5
    if args.quick:
        model = shibajax.models.nb110(delta=delta)
        uniform, resolutions, reference_rho, base = (64, 128), (0.5, 1.0), 2.0, 16
    else:
        model = shibajax.models.nb110(delta=delta)
        uniform, resolutions, reference_rho, base = (256, 512, 1024, 2048), (0.25, 0.5, 1.0), 2.0, 64
    adatom = mn_adatom(exchange={"dz2": 620.0})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    mesh = fermi_shell_mesh(model, base=base, resolution=reference_rho)
    reference, t_ref = _solve(model, adatom, mesh)
    rows = []

    def record(kind, setting, n_k, energies, seconds):
        err = np.inf if energies.shape != reference.shape else float(np.max(np.abs(energies - reference)))
        rows.append({"method": kind, "setting": setting, "k_points": int(n_k), "error_ueV": err * 1e3,
                     "seconds": seconds, "energies_meV": energies.tolist()})  # fmt: skip
        lines = [
            f"Mn-like adatom (d_z2 channel, J = 620 meV) on Nb(110), Delta = {delta:g} meV. "
            f"Reference: Fermi-shell rho = {reference_rho}, {len(mesh)} points, E = "
            + ", ".join(f"{e:.6f}" for e in reference)
            + " meV.",
            "",
            "| method | setting | k-points | max error (ueV) | time (s) |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        lines += [f"| {r['method']} | {r['setting']} | {r['k_points']} | {r['error_ueV']:.3g} | {r['seconds']:.1f} |"
                  for r in rows]  # fmt: skip
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
        out.with_suffix(".json").write_text(json.dumps({"reference_meV": reference.tolist(), "rows": rows}, indent=1))
        print(lines[-1], flush=True)

    for rho in resolutions:
        t = time.perf_counter()
        m = fermi_shell_mesh(model, base=base, resolution=rho)
        t_mesh = time.perf_counter() - t
        e, t_solve = _solve(model, adatom, m)
        record("Fermi shell", f"base {base}, rho {rho}", len(m), e, t_mesh + t_solve)
    for L in uniform:
        e, seconds = _solve(model, adatom, (L, L))
        record("uniform", f"{L} x {L}", L * L, e, seconds)
    print(f"total {time.perf_counter() - t0:.0f} s; table in {out.with_suffix('.md')}")
    return {"reference": reference, "rows": rows}


if __name__ == "__main__":
    main()
