"""Grid fits: ``fit_grid`` (every pixel in one compiled call per block) against a Python loop of single-pixel fits.

    python benchmarks/bench_grid_fit.py            # the 50 MnPc pixels; loop over all 50; 50, 200, 800 pixels
    python benchmarks/bench_grid_fit.py --quick    # 8 of the pixels, a loop over 2; 8 and 16 pixels (~1 minute)

Data: shared/realdata/mnpc_grid1 (50 Nanonis spectra of MnPc on Pb(111), T = 1.06 K, 50 uV rms lock-in), +-2.5 mV,
every 4th bias point (250 points a pixel, 0.02 mV apart). Host: the one-band square lattice of examples/fit_mnpc.toml
(t = 10, mu = -20 meV, Delta = 1.305, eta = 0.047 meV), G0 on a Fermi-shell mesh (base 16, resolution 1, 18 720
k-points), 401 energies; Shiba energies on the same mesh. Every pixel: the impurity model (K_0, J_0, scale, offset,
bg0) and the bare model (scale, offset, bg0) from ``--starts`` seeded starts each, Levenberg-Marquardt with
``max_iter`` = 60 and its ftol stop; then the Laplace errors and E_b.

Rows:
* ``fit_grid``: wall time of one call on the whole grid (compilation included), and of a second call (compiled
  program reused: the cost of the fits themselves); pixels / s of each.
* ``loop of fitting.fit``: for each pixel, ``fitting.fit`` on the pixel's Problem (``GridProblem.problem``: the same
  model, data, parameters, starts and stopping rule) for the impurity and the bare model, and its Shiba energies
  (``ShibaEnergies``): what a user writes without fit_grid. Every Problem is a new objective, so every pixel
  compiles its optimiser anew. ``--loop-pixels`` of them are timed; the rate is per pixel.
* ``fit_grid block=1``: the grid's own compiled program called pixel by pixel (no recompiling): the gain that is
  left once compilation is shared, i.e. batching and dispatch alone.
* scaling: cost per pixel at 50, 200 and 800 pixels (the 50 replicated; the compiled program of the rows above
  serves every size: the same host, bias axis, starts and block).

Accuracy next to time: the largest difference between fit_grid's and the loop's K_0, J_0 and chi^2 on the looped
pixels (they solve the same problems: rounding only), and the classes found.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import xarray as xr  # noqa: E402

import shibajax  # noqa: E402
from shibajax.fermi_shell import fermi_shell_mesh  # noqa: E402
from shibajax.fitting import ShibaEnergies, SpectrumModel, coupling_basis, fit, green_blocks  # noqa: E402
from shibajax.fitting.grid import GridProblem, fit_grid  # noqa: E402

PARAMS = {"K_0": {"value": 0.0, "lower": -30.0, "upper": 30.0}, "J_0": {"value": 14.0, "lower": 2.0, "upper": 40.0}}
MAX_ITER = 60


def read_grid_folder(folder: Path, every: int = 4) -> xr.Dataset:
    """The (pixel, bias) Dataset of a folder of Nanonis spectra (read_spectrum each; x, y from the headers)."""
    from shibajax.measurement.readers import header_of, read_spectrum

    files = sorted(folder.glob("*.dat"))
    if not files:
        raise SystemExit(f"no spectra in {folder}: the benchmark needs shared/realdata/mnpc_grid1 (README 'Real data')")
    rows, x, y = [], [], []
    for f in files:
        ds = read_spectrum(f, sort=True)
        header = header_of(ds)
        rows.append(ds["didv"].values)
        x.append(float(header["X (m)"]))
        y.append(float(header["Y (m)"]))
    coords = {"bias": ("bias", ds["bias"].values, {"units": "V"}), "name": ("pixel", [f.stem[-3:] for f in files])}
    coords |= {"x": ("pixel", x), "y": ("pixel", y)}
    grid = xr.Dataset({"didv": (("pixel", "bias"), np.array(rows))}, coords=coords, attrs=dict(ds.attrs))
    return grid.sel(bias=slice(-2.5e-3, 2.5e-3)).isel(bias=slice(None, None, every))


def replicate(grid: xr.Dataset, n: int) -> xr.Dataset:
    idx = np.resize(np.arange(grid.sizes["pixel"]), n)
    out = grid.isel(pixel=idx)
    return out.assign_coords(name=("pixel", [f"{v}#{i}" for i, v in enumerate(out["name"].values)]))


def host():
    model = shibajax.models.square(t=10.0, mu=-20.0, delta=1.305)
    couplings = coupling_basis(model, [(0, 0)])
    mesh = fermi_shell_mesh(model, base=16, resolution=1.0)
    energies = np.arange(-4.0, 4.0 + 1e-9, 0.02)
    spectrum = SpectrumModel(green_blocks(model, couplings, [(0, 0)], energies, eta=0.047, kgrid=mesh))
    return spectrum, ShibaEnergies(model, couplings, kgrid=mesh)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def loop_of_fits(grid, spectrum, shiba, pixels, n_starts):
    """fitting.fit on each pixel's Problem (impurity and bare) and its Shiba energies: per-pixel results."""
    gp = GridProblem(grid, spectrum, PARAMS)
    out = []
    for i in pixels:
        imp = fit(gp.problem(i), n_starts=n_starts, seed=0, method="lm", max_iter=MAX_ITER, progress=False)
        bare = fit(gp.problem(i, bare=True), n_starts=n_starts, seed=0, method="lm", max_iter=MAX_ITER, progress=False)
        theta = jnp.asarray([imp.values[n] for n in shiba.couplings.names])
        e = np.asarray(shiba(theta))
        e_b = float(np.min(e[e > 0])) if np.any(e > 0) else np.nan
        row = {"K_0": imp.values["K_0"], "J_0": imp.values["J_0"], "E_b": e_b}
        out.append(row | {"chi2": 2 * imp.loss, "chi2_bare": 2 * bare.loss})
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--starts", type=int, default=4)
    parser.add_argument("--loop-pixels", type=int, default=None, help="pixels in the loop of fitting.fit")
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="grid sizes for the scaling rows")
    parser.add_argument("--data", default=None, help="folder of spectra (default shared/realdata/mnpc_grid1)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from shibajax.data import realdata_dir

    folder = Path(args.data) if args.data else realdata_dir(Path(__file__).resolve().parent.parent) / "mnpc_grid1"
    full = read_grid_folder(folder)
    grid = full.isel(pixel=slice(0, None, 6)) if args.quick else full  # quick: 001, 007, ... 049: edge and centre
    n_grid = grid.sizes["pixel"]
    loop_n = args.loop_pixels or (2 if args.quick else n_grid)
    sizes = args.sizes or ([8, 16] if args.quick else [50, 200, 800])
    warnings.simplefilter("ignore", UserWarning)

    (spectrum, shiba), t_host = timed(host)
    kw = {"shiba": shiba, "n_starts": args.starts, "method": "lm", "max_iter": MAX_ITER, "progress": False}
    first, t_first = timed(lambda: fit_grid(grid, spectrum, PARAMS, **kw))
    second, t_second = timed(lambda: fit_grid(grid, spectrum, PARAMS, **kw))
    # quick: the edge pixel 001 (bare Pb) and 043 (near the centre: a Shiba pair)
    loop_pixels = [0, 7][:loop_n] if args.quick else list(range(min(loop_n, n_grid)))
    loop, t_loop = timed(lambda: loop_of_fits(grid, spectrum, shiba, loop_pixels, args.starts))
    fit_grid(grid.isel(pixel=[0]), spectrum, PARAMS, block=1, **kw)  # compile the block=1 program
    one, t_one = timed(lambda: fit_grid(grid.isel(pixel=loop_pixels), spectrum, PARAMS, block=1, **kw))
    loop_n = len(loop_pixels)
    diffs = {  # couplings where the grid reports them (shiba pixels), chi^2 everywhere
        n: max((abs(float(second[n][i]) - r[n]) / max(1.0, abs(r[n])) for i, r in zip(loop_pixels, loop, strict=True)
                if str(second["class"].values[i]) == "shiba" or n.startswith("chi2")), default=float("nan"))
        for n in ("K_0", "J_0", "chi2", "chi2_bare", "E_b")
    }  # fmt: skip
    scaling = []  # the program compiled above serves every size (same host, bias axis, starts and block)
    for n in sizes:
        g = replicate(full, n)
        _, t_n = timed(lambda g=g: fit_grid(g, spectrum, PARAMS, **kw))
        scaling.append({"pixels": n, "seconds": t_n, "per_pixel_s": t_n / n})
    per_loop = t_loop / loop_n
    per_grid_first, per_grid = t_first / n_grid, t_second / n_grid
    out = {
        "quick": args.quick,
        "devices": [str(d) for d in jax.devices()],
        "pixels": n_grid,
        "bias_points": int(grid.sizes["bias"]),
        "starts": args.starts,
        "host_s": t_host,
        "fit_grid_first_s": t_first,
        "fit_grid_second_s": t_second,
        "pixels_per_s_first": n_grid / t_first,
        "pixels_per_s": n_grid / t_second,
        "loop_pixels": loop_n,
        "loop_s": t_loop,
        "loop_pixels_per_s": 1.0 / per_loop,
        "ratio_loop_over_grid_first": per_loop / per_grid_first,
        "ratio_loop_over_grid": per_loop / per_grid,
        "block1_s": t_one,
        "ratio_block1_over_grid": (t_one / loop_n) / per_grid,
        "max_relative_difference_grid_vs_loop": diffs,
        "classes": {c: int((second["class"].values == c).sum()) for c in ("shiba", "bare", "skipped", "failed")},
        "scaling": scaling,
        "cpu_count": os.cpu_count(),
    }
    print(f"{n_grid} pixels x {out['bias_points']} points, {args.starts} starts, LM max_iter {MAX_ITER}, devices "
          f"{out['devices']}; host (G0 blocks) {t_host:.1f} s")  # fmt: skip
    print(f"fit_grid: {t_first:.1f} s first call ({out['pixels_per_s_first']:.2f} pixels/s), {t_second:.1f} s "
          f"compiled ({out['pixels_per_s']:.2f} pixels/s); classes {out['classes']}")  # fmt: skip
    print(f"loop of fitting.fit over {loop_n} pixels: {t_loop:.1f} s ({out['loop_pixels_per_s']:.3f} pixels/s): "
          f"ratio {out['ratio_loop_over_grid_first']:.1f}x against the first call, "
          f"{out['ratio_loop_over_grid']:.1f}x against the compiled one")  # fmt: skip
    print(f"fit_grid block=1 (compiled, pixel by pixel) over {loop_n} pixels: {t_one:.1f} s, "
          f"{out['ratio_block1_over_grid']:.2f}x the batched cost per pixel")  # fmt: skip
    print(f"grid vs loop, largest relative difference: {diffs}")
    for row in scaling:
        print(f"  {row['pixels']:5d} pixels (replicated): {row['seconds']:7.1f} s, {1e3 * row['per_pixel_s']:.0f} ms a "
              f"pixel (compiled program reused)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
