"""Command line: ``shibajax demo`` (a multi-channel adatom calculation), ``shibajax sweep`` (parameter sweeps
to NetCDF) and ``shibajax info`` (versions).

Errors in the input (every :class:`shibajax.errors.ShibajaxError`) are printed as ``error: <message>``
with exit status 2, like argparse's own usage errors; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import warnings
from importlib import metadata

from shibajax import __version__
from shibajax._compilation_cache import CompilationCacheWarning, compilation_cache_report, enable_compilation_cache
from shibajax._compilation_cache import describe as describe_cache
from shibajax.errors import ShibajaxError

_PACKAGES = ("jax", "jaxlib", "numpy", "scipy", "optax", "matplotlib")


def _version_of(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        try:
            return str(__import__(package).__version__)
        except Exception:  # noqa: BLE001  (a missing optional package is reported, not raised)
            return "not installed"


def collect_info() -> dict:
    """Versions, JAX backend and devices, and the precision in force, as a JSON-ready dict."""
    import jax

    from shibajax._precision import precision_report
    from shibajax._threads import threading_report

    return {
        "shibajax": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version_of(name) for name in _PACKAGES},
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "precision": precision_report(),
        "threading": threading_report(),
        "compilation_cache": compilation_cache_report(),
    }


def _cmd_info(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    rows = [("shibajax", info["shibajax"]), ("python", info["python"]), ("platform", info["platform"])]
    rows += list(info["packages"].items())
    rows += [("jax backend", info["jax_backend"]), ("devices", ", ".join(info["devices"]))]
    p = info["precision"]
    rows.append(("precision", f"{p['real']} / {p['complex']} (jax_enable_x64 = {p['jax_enable_x64']})"))
    t = info["threading"]
    libs = ", ".join(f"{name} ({n} threads)" for name, n in t["lapack_libraries"].items()) or "none found"
    rows.append(("LAPACK threads", f"{t['lapack_threads']} in jaxlib's CPU kernels: {libs}"))
    rows.append(("compilation cache", describe_cache(info["compilation_cache"])))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from shibajax import demo

    config = demo.load_config(args.config) if args.config else None
    L = demo.resolve_config(config, kgrid=args.kgrid)["kgrid"]  # checks the config before any work
    print(f"shibajax demo: computing on a {L} x {L} k-grid, writing to {args.out}/ ...", flush=True)
    result = demo.run_demo(args.out, kgrid=args.kgrid, config=config)
    print(result.report())
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from shibajax import sweep

    if args.distributed:
        sweep.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    elif any(v is not None for v in (args.coordinator, args.num_processes, args.process_id)):
        raise sweep.SweepConfigError("--coordinator, --num-processes and --process-id need --distributed")
    config = sweep.load_config(args.config)
    cfg = sweep.resolve_config(config)  # checks the config before any work
    sweep.check_chunk(args.chunk, "--chunk")
    n = 1
    for values in cfg["sweep"].values():
        n *= len(values)
    out = sweep.output_path(args.config, args.out)
    print(
        f"shibajax sweep: {n} configurations on a {cfg['kgrid'][0]} x {cfg['kgrid'][1]} k-grid, writing {out} ...",
        flush=True,
    )
    ds, out, seconds = sweep.run_from_file(args.config, args.out, chunk=args.chunk)
    print(sweep.summary(ds, out, seconds))
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from shibajax.fitting.commands import OUTPUTS, execute_fit, plan_fit

    plan = plan_fit(args.data, args.config, args.out, restart=args.restart)  # checks everything before any work
    fitc = plan.config["fit"]
    print(
        f"shibajax fit: {plan.data_path.name}, {fitc['n_starts']} starts ({fitc['method']}, at most "
        f"{fitc['max_iter']} iterations each); writing {', '.join(OUTPUTS)} to {plan.folder}/",
        flush=True,
    )
    if plan.resume:
        print(f"resuming from {plan.checkpoint} (--restart discards it)", flush=True)
    try:
        result, folder = execute_fit(plan, log=lambda message: print(message, flush=True))
    except KeyboardInterrupt:
        saved = (
            f"{plan.checkpoint} holds the finished starts and the state of the others after their last batch of "
            "iterations; run the same command to resume"
            if plan.checkpoint.exists()
            else "nothing was saved yet (the fit had not started)"
        )
        print(f"\ninterrupted: {saved}", file=sys.stderr)
        return 130
    print(result.summary())
    print(f"report: {folder / 'fit_report.json'}, plot: {folder / 'fit.png'}")
    return 0


def _cmd_fit_grid(args: argparse.Namespace) -> int:
    import numpy as np

    from shibajax.fitting.grid_commands import NETCDF, OUTPUTS, run_fit_grid

    source = args.grid[0] if len(args.grid) == 1 else args.grid
    print(f"shibajax fit-grid: {', '.join(args.grid[:3])}{' ...' if len(args.grid) > 3 else ''}", flush=True)
    try:
        result, folder = run_fit_grid(
            source, args.config, args.out, restart=args.restart, log=lambda message: print(message, flush=True)
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {NETCDF} in the output folder holds every finished block of pixels; run the same "
            "command to resume",
            file=sys.stderr,
        )
        return 130
    classes = {str(c): int((result["class"] == c).sum()) for c in np.unique(result["class"].values)}
    e_b = result["E_b"].values[np.isfinite(result["E_b"].values)]
    span = f"E_b {e_b.min():.4f}-{e_b.max():.4f} meV" if e_b.size else "no pixel with an in-gap state"
    print(f"{result.sizes['pixel']} pixels: {classes}; {span}")
    print(f"wrote {', '.join(str(folder / name) for name in OUTPUTS)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``shibajax`` command."""
    parser = argparse.ArgumentParser(
        prog="shibajax",
        description="shibajax: Shiba (Yu-Shiba-Rusinov) bound states of magnetic impurities in superconductors, "
        "in JAX (float64).",
    )
    parser.add_argument("--version", action="version", version=f"shibajax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{convolve,deconvolve,demo,fit,fit-grid,info,sweep}")

    demo = sub.add_parser(
        "demo",
        help="two-channel adatom on a two-orbital s-wave superconductor: Shiba energies and LDOS",
        description="Compute the Shiba states and the LDOS of a two-channel magnetic adatom on a two-orbital "
        "square-lattice s-wave superconductor; write bound_states.json, ldos.csv and ldos.png.",
    )
    demo.add_argument("--out", default="shibajax-demo", metavar="DIR", help="output folder (default: %(default)s)")
    demo.add_argument("--kgrid", type=int, default=None, metavar="L", help="use an L x L k-grid (default: 64)")
    demo.add_argument(
        "--config",
        default=None,
        metavar="FILE.toml",
        help="TOML file overriding model parameters (t, t_inter, onsite, mu, delta, rashba), the impurity "
        "(spin, channels = [{K, J, orbitals}, ...]), kgrid, eta and n_energies; see shibajax/demo.py",
    )
    demo.set_defaults(func=_cmd_demo)

    sw = sub.add_parser(
        "sweep",
        help="Shiba energies of a dimer or chain over a grid of parameters, written to NetCDF",
        description="Evaluate the Shiba energies over the Cartesian product of the [sweep] lists of a TOML "
        "config (model, impurity, kgrid; see shibajax/sweep.py), in vmapped chunks sharded over all devices. "
        "The NetCDF file is rewritten after every chunk; rerunning on a partial file resumes it.",
    )
    sw.add_argument("config", metavar="CONFIG.toml", help="sweep configuration (TOML)")
    sw.add_argument("--out", default=None, metavar="FILE.nc", help="output NetCDF file (default: CONFIG.nc)")
    sw.add_argument(
        "--chunk", type=int, default=256, metavar="N", help="configurations per vmapped call (default: %(default)s)"
    )
    sw.add_argument(
        "--distributed",
        action="store_true",
        help="one of several processes (jax.distributed): on SLURM, Open MPI or Kubernetes the coordinator, the "
        "number of processes and this process's index are detected; elsewhere give them below or set "
        "JAX_COORDINATOR_ADDRESS. Every process runs the same command; process 0 writes the file",
    )
    sw.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (with --distributed)")
    sw.add_argument("--num-processes", type=int, metavar="N", help="number of processes (with --distributed)")
    sw.add_argument("--process-id", type=int, metavar="I", help="index of this process, 0..N-1 (with --distributed)")
    sw.set_defaults(func=_cmd_sweep)

    info = sub.add_parser("info", help="versions, JAX backend and devices, numerical precision")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=_cmd_info)

    from shibajax.measurement import commands as measurement_commands

    measurement_commands.add_parsers(sub)  # convolve, deconvolve

    ft = sub.add_parser(
        "fit",
        help="fit impurity couplings K, J (and tip, temperature, background) to a measured spectrum",
        description="Fit K, J of an adatom on a one-band s-wave host to a measured dI/dV spectrum (any format "
        "the readers support), from many starts; writes fit_report.json, fit.png and a resumable checkpoint. "
        "See shibajax/fitting/commands.py and examples/fit_mnpc.toml.",
    )
    ft.add_argument("data", metavar="DATA", help="measured spectrum (Nanonis .dat, Createc .VERT, CSV/TXT)")
    ft.add_argument("--config", required=True, metavar="FIT.toml", help="fit configuration (TOML)")
    ft.add_argument("--out", default=None, metavar="DIR", help="output folder (default: [fit] out of the config)")
    ft.add_argument(
        "--restart",
        action="store_true",
        help="discard the checkpoint in the output folder and start the fit over (by default a run resumes "
        "from it, and refuses one written for another data file or config)",
    )
    ft.set_defaults(func=_cmd_fit)

    fg = sub.add_parser(
        "fit-grid",
        help="fit every pixel of a measured grid (folder, glob or .3ds) and map E_b, K, J",
        description="Fit K, J, scale and offset of every pixel of a grid of spectra in one compiled call (G0 "
        "summed once for the host), classify pixels without an in-gap state by a model comparison, and write "
        "grid_fit.nc (resumable), maps.png and pixels.png. See shibajax/fitting/grid_commands.py and "
        "examples/fit_grid_mnpc.toml.",
    )
    fg.add_argument(
        "grid", nargs="+", metavar="GRID", help="a Nanonis .3ds grid, a folder or glob of spectra, or several files"
    )
    fg.add_argument("--config", required=True, metavar="GRID.toml", help="fit configuration (TOML)")
    fg.add_argument("--out", default=None, metavar="DIR", help="output folder (default: [fit] out of the config)")
    fg.add_argument(
        "--restart", action="store_true", help="discard grid_fit.nc in the output folder and fit every pixel again"
    )
    fg.set_defaults(func=_cmd_fit_grid)
    return parser


def _enable_cache() -> None:
    """JAX's persistent compilation cache for every subcommand (shibajax/_compilation_cache.py); an unusable
    folder is one ``warning:`` line on stderr, never an error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CompilationCacheWarning)
        enable_compilation_cache()
    for w in caught:
        if issubclass(w.category, CompilationCacheWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``shibajax`` command; returns the exit status (0 ok, 2 bad input).

    Turns on JAX's persistent compilation cache first (``$SHIBAJAX_COMPILATION_CACHE``: a folder, or ``off``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    _enable_cache()
    try:
        return args.func(args)
    except ShibajaxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
