"""``shibajax convolve`` and ``shibajax deconvolve``: tunnelling spectra from the command line.

DOS specifications (``--tip``, ``--sample``), energies in meV:

* ``normal`` (flat, 1);
* ``dynes:delta=1.35,gamma=0.02``;
* ``multigap:deltas=1.25/1.40,gammas=0.01/0.01,weights=0.35/0.65`` (weights sum to 1).

``convolve`` writes ``bias (mV),didv`` (dI/dV in units of G_N); ``deconvolve`` reads any spectrum
``read_spectrum`` reads (bias in volts, converted to mV), divides dI/dV by ``--scale`` or by its mean over
``|V| >= --normalise-above`` mV, and writes ``energy_meV,dos,error``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from shibajax.errors import TunnellingError
from shibajax.measurement.dos import DynesDOS, MultiGapDOS, NormalDOS


def parse_dos(spec: str):
    """A DOS callable from a command-line specification (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    fields = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise TunnellingError(f"DOS spec {spec!r}: expected key=value, got {item!r}")
        try:
            fields[key.strip()] = [float(x) for x in value.split("/")]
        except ValueError as err:
            raise TunnellingError(f"DOS spec {spec!r}: {key} = {value!r} is not a number (or a/b/... list)") from err
    forms = {"normal": (), "dynes": ("delta", "gamma"), "multigap": ("deltas", "gammas", "weights")}
    if kind not in forms:
        raise TunnellingError(f"DOS spec {spec!r}: kind must be one of {sorted(forms)}")
    if set(fields) != set(forms[kind]):
        raise TunnellingError(f"DOS spec {spec!r}: {kind} needs exactly {forms[kind] or 'no parameters'}")
    if kind == "normal":
        return NormalDOS()
    if kind == "dynes":
        if len(fields["delta"]) != 1 or len(fields["gamma"]) != 1:
            raise TunnellingError(f"DOS spec {spec!r}: dynes takes one delta and one gamma")
        return DynesDOS(fields["delta"][0], fields["gamma"][0])
    return MultiGapDOS(np.array(fields["deltas"]), np.array(fields["gammas"]), np.array(fields["weights"]))


def parse_range(text: str, name: str, *, count: bool) -> np.ndarray:
    """``START:STOP:N`` (count=True, N points) or ``START:STOP:STEP`` (count=False) as an array."""
    parts = text.split(":")
    try:
        start, stop, third = (float(p) for p in parts)
    except ValueError as err:
        raise TunnellingError(f"{name} {text!r}: expected START:STOP:{'N' if count else 'STEP'}") from err
    if not stop > start:
        raise TunnellingError(f"{name} {text!r}: STOP must be larger than START")
    if count:
        if third < 2 or third != int(third):
            raise TunnellingError(f"{name} {text!r}: N must be an integer >= 2")
        return np.linspace(start, stop, int(third))
    if not third > 0:
        raise TunnellingError(f"{name} {text!r}: STEP must be > 0")
    n = int(round((stop - start) / third))
    return start + third * np.arange(n + 1)


def _write_csv(path: Path, header, columns) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(zip(*(np.asarray(c).tolist() for c in columns), strict=True))


def _read_sample_csv(path: str):
    try:
        table = np.loadtxt(path, delimiter=",", comments="#", skiprows=1, ndmin=2)
    except (OSError, ValueError) as err:
        raise TunnellingError(f"--sample-file {path}: cannot read two numeric CSV columns ({err})") from err
    if table.shape[1] < 2:
        raise TunnellingError(f"--sample-file {path}: need columns energy_meV,dos")
    return table[:, 0], table[:, 1]


def cmd_convolve(args: argparse.Namespace) -> int:
    from shibajax.measurement.tunnelling import COVERAGE_KT, K_B_MEV_PER_K, didv

    tip = parse_dos(args.tip)
    bias = parse_range(args.bias, "--bias", count=True)
    if args.sample_file:
        energies, dos = _read_sample_csv(args.sample_file)
    else:
        reach = np.abs(bias).max() + COVERAGE_KT * K_B_MEV_PER_K * args.temperature
        reach += np.sqrt(2) * args.lockin_rms + 0.1
        n = int(np.ceil(reach / args.energy_step))
        energies = args.energy_step * np.arange(-n, n + 1)
        dos = parse_dos(args.sample)(energies)
    g = np.asarray(didv(bias, energies, dos, tip, temperature=args.temperature, lockin_rms=args.lockin_rms))
    out = Path(args.out)
    _write_csv(out, ["bias (mV)", "didv"], [bias, g])
    print(f"shibajax convolve: {bias.size} biases, dI/dV from {g.min():.4g} to {g.max():.4g} G_N -> {out}")
    return 0


def cmd_deconvolve(args: argparse.Namespace) -> int:
    from shibajax.measurement.deconvolution import deconvolve
    from shibajax.measurement.readers import read_spectrum

    tip = parse_dos(args.tip)
    ds = read_spectrum(args.spectrum)
    if "didv" not in ds:
        raise TunnellingError(f"{args.spectrum}: no dI/dV channel found (see read_spectrum's channel choice)")
    bias = 1e3 * np.asarray(ds["bias"].values, dtype=float)
    data = np.asarray(ds["didv"].values, dtype=float)
    if args.scale is not None:
        scale = args.scale
    else:
        outer = np.abs(bias) >= args.normalise_above
        if not outer.any():
            raise TunnellingError(f"--normalise-above {args.normalise_above} mV: no bias point that far out")
        scale = float(np.mean(data[outer]))
    if not scale > 0:
        raise TunnellingError(f"the normalisation scale {scale!r} must be > 0 (use --scale)")
    energies = parse_range(args.energies, "--energies", count=False)
    reg = "gcv" if args.regularisation is None else args.regularisation
    res = deconvolve(
        bias,
        data / scale,
        tip,
        temperature=args.temperature,
        sample_energies=energies,
        lockin_rms=args.lockin_rms,
        regularisation=reg,
        nonnegative=args.nonnegative,
    )
    out = Path(args.out)
    _write_csv(out, ["energy_meV", "dos", "error"], [res.energies, res.dos, res.error])
    print(
        f"shibajax deconvolve: {bias.size} points, lambda = {res.regularisation:.3g}, noise = {res.noise:.3g} G_N, "
        f"residual rms = {res.residual_rms:.3g} G_N -> {out}"
    )
    return 0


def add_parsers(sub) -> None:
    """Register the ``convolve`` and ``deconvolve`` subcommands on an argparse subparsers object."""
    conv = sub.add_parser(
        "convolve",
        help="dI/dV of a sample DOS measured with a tip (thermal and lock-in broadening)",
        description="Compute dI/dV(V) in units of G_N for a sample DOS (a spec or a CSV energy_meV,dos on a "
        "uniform grid) and a tip DOS; bias applied to the sample, energies in meV (docs/conventions.md).",
    )
    conv.add_argument(
        "--tip", default="normal", help="tip DOS spec (default: normal), e.g. dynes:delta=1.35,gamma=0.02"
    )
    src = conv.add_mutually_exclusive_group(required=True)
    src.add_argument("--sample", help="sample DOS spec, e.g. multigap:deltas=1.25/1.4,gammas=0.01/0.01,weights=0.4/0.6")
    src.add_argument("--sample-file", metavar="FILE.csv", help="CSV with a header and columns energy_meV,dos")
    conv.add_argument(
        "--bias", default="-4:4:801", metavar="START:STOP:N", help="bias grid in mV (default %(default)s)"
    )
    conv.add_argument("--temperature", type=float, required=True, metavar="K", help="temperature (K)")
    conv.add_argument("--lockin-rms", type=float, default=0.0, metavar="MV", help="lock-in V_rms in mV (default 0)")
    conv.add_argument("--energy-step", type=float, default=0.002, metavar="MEV", help="sample grid step (meV)")
    conv.add_argument("--out", default="didv.csv", metavar="FILE.csv", help="output (default %(default)s)")
    conv.set_defaults(func=cmd_convolve)

    dec = sub.add_parser(
        "deconvolve",
        help="recover the sample DOS from a measured spectrum and a known tip (Tikhonov, GCV)",
        description="Deconvolve a measured dI/dV (any file read_spectrum reads) with a known tip DOS: a "
        "Tikhonov-regularised linear inversion with the regularisation chosen by generalised cross-validation.",
    )
    dec.add_argument("spectrum", metavar="SPECTRUM", help="measured spectrum (Nanonis .dat, CSV, ...)")
    dec.add_argument("--tip", required=True, help="tip DOS spec, e.g. dynes:delta=1.35,gamma=0.02")
    dec.add_argument("--temperature", type=float, required=True, metavar="K", help="temperature (K)")
    dec.add_argument("--lockin-rms", type=float, default=0.0, metavar="MV", help="lock-in V_rms in mV (default 0)")
    dec.add_argument("--energies", required=True, metavar="START:STOP:STEP", help="sample energy grid (meV)")
    norm = dec.add_mutually_exclusive_group()
    norm.add_argument("--scale", type=float, default=None, help="divide dI/dV by this (its G_N value)")
    norm.add_argument(
        "--normalise-above",
        type=float,
        default=3.0,
        metavar="MV",
        help="divide dI/dV by its mean over |V| >= MV (default %(default)s)",
    )
    dec.add_argument("--regularisation", type=float, default=None, help="lambda (default: chosen by GCV)")
    dec.add_argument("--nonnegative", action="store_true", help="impose rho_s >= 0")
    dec.add_argument("--out", default="dos.csv", metavar="FILE.csv", help="output (default %(default)s)")
    dec.set_defaults(func=cmd_deconvolve)
