"""``shibajax convolve`` and ``shibajax deconvolve``: tunnelling spectra from the command line.

DOS specifications (``--tip``, ``--sample``), energies in meV:

* ``normal`` (flat, 1);
* ``dynes:delta=1.35,gamma=0.02``;
* ``multigap:deltas=1.25/1.40,gammas=0.01/0.01,weights=0.35/0.65`` (weights sum to 1).

``convolve`` writes ``bias (mV),didv`` (dI/dV in units of G_N); the sample DOS enters as cell averages over the
energy grid, so a BCS sample (``dynes:...,gamma=0``, infinite at |E| = delta) works and is exact in the integral.
``deconvolve`` reads any spectrum ``read_spectrum`` reads (bias in volts, converted to mV), divides dI/dV by
``--scale`` or by its mean over ``|V| >= --normalise-above`` mV, and writes ``energy_meV,dos,error``; lambda by
GCV, ``--regularisation lcurve``, ``discrepancy`` (with ``--noise``) or a number, and a DOS that fails the sanity
checks of :func:`~shibajax.measurement.deconvolution.deconvolve` is an error unless ``--no-check``.

Both commands check ``--out`` (create its folder, test-write it) before any work, say where they write before
they start, and end with a check that every number written is finite (else an error, and nothing is written).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from shibajax.errors import OutputPathError, TunnellingError
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
    if not all(np.isfinite((start, stop, third))):
        raise TunnellingError(f"{name} {text!r}: START, STOP and {'N' if count else 'STEP'} must be finite numbers")
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


def prepare_output(path: str | Path, flag: str = "--out") -> Path:
    """Check that ``path`` can be written before any work: create its folder and test-write it (a file created
    only for the test is removed again). Raises :class:`~shibajax.errors.OutputPathError` naming the path."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{flag} {path}: is a folder; give a file name, e.g. {path / 'out.csv'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputPathError(
            f"{flag} {path}: cannot create its folder {path.parent} ({err.strerror or err}); choose a writable path"
        ) from err
    existed = path.exists()
    try:
        with path.open("a"):
            pass
    except OSError as err:
        raise OutputPathError(
            f"{flag} {path}: cannot write there ({err.strerror or err}); choose a writable path"
        ) from err
    if not existed:
        path.unlink(missing_ok=True)
    return path


def check_output(what: str, values, axis, axis_name: str, cause: str, error=TunnellingError) -> None:
    """The final check of every command: its results are finite, or nothing is written and the error says where
    and why (``cause``)."""
    values = np.asarray(values, dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        at = np.asarray(axis, dtype=float)[bad.reshape(bad.shape[0], -1).any(axis=1)]
        shown = ", ".join(f"{x:.6g}" for x in at[:4]) + (" ..." if at.size > 4 else "")
        raise error(
            f"the computed {what} has {int(bad.sum())} non-finite value(s) (at {axis_name} = {shown}); {cause}. "
            "Nothing was written"
        )


def _finite_option(value, flag: str, *, positive: bool = False, unit: str = "") -> float:
    value = float(value)
    if not np.isfinite(value) or (value <= 0 if positive else value < 0):
        raise TunnellingError(
            f"{flag} = {value!r}{' ' + unit if unit else ''} must be finite and {'>' if positive else '>='} 0"
        )
    return value


def _read_sample_csv(path: str):
    try:
        table = np.loadtxt(path, delimiter=",", comments="#", skiprows=1, ndmin=2)
    except (OSError, ValueError) as err:
        raise TunnellingError(f"--sample-file {path}: cannot read two numeric CSV columns ({err})") from err
    if table.shape[1] < 2:
        raise TunnellingError(f"--sample-file {path}: need columns energy_meV,dos")
    bad = np.flatnonzero(~np.isfinite(table[:, :2]).all(axis=1))
    if bad.size:
        raise TunnellingError(
            f"--sample-file {path}: {bad.size} row(s) hold NaN or inf (first: data row {bad[0] + 1}); remove or "
            "interpolate them (for a BCS DOS give cell averages, which are finite)"
        )
    return table[:, 0], table[:, 1]


def cmd_convolve(args: argparse.Namespace) -> int:
    from shibajax.measurement.tunnelling import COVERAGE_KT, K_B_MEV_PER_K, didv

    temperature = _finite_option(args.temperature, "--temperature", unit="K")
    lockin_rms = _finite_option(args.lockin_rms, "--lockin-rms", unit="mV")
    energy_step = _finite_option(args.energy_step, "--energy-step", positive=True, unit="meV")
    tip = parse_dos(args.tip)
    bias = parse_range(args.bias, "--bias", count=True)
    out = prepare_output(args.out)
    if args.sample_file:
        energies, dos = _read_sample_csv(args.sample_file)
    else:
        reach = np.abs(bias).max() + COVERAGE_KT * K_B_MEV_PER_K * temperature
        reach += np.sqrt(2) * lockin_rms + 0.1
        n = int(np.ceil(reach / energy_step))
        energies = energy_step * np.arange(-n, n + 1)
        # cell averages: exact in the integral and finite also for a BCS sample (gamma = 0), whose point values are
        # infinite at |E| = delta (see shibajax.measurement.dos)
        dos = parse_dos(args.sample).cell_average(energies, energy_step)
    print(
        f"shibajax convolve: dI/dV at {bias.size} biases over a {np.size(energies)}-point sample grid -> {out}",
        flush=True,
    )
    g = np.asarray(didv(bias, energies, dos, tip, temperature=temperature, lockin_rms=lockin_rms))
    check_output(
        "dI/dV", g, bias, "bias (mV)", "the tip or sample DOS is singular there (a Dynes gamma = 0): give gamma > 0"
    )
    _write_csv(out, ["bias (mV)", "didv"], [bias, g])
    print(f"shibajax convolve: {bias.size} biases, dI/dV from {g.min():.4g} to {g.max():.4g} G_N -> {out}")
    return 0


def _regularisation(text: str):
    """``--regularisation``: a method name or a number (argparse type)."""
    from shibajax.measurement.deconvolution import REGULARISATION_METHODS

    if text in REGULARISATION_METHODS:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use one of {', '.join(REGULARISATION_METHODS)} or a number"
        ) from None


def cmd_deconvolve(args: argparse.Namespace) -> int:
    from shibajax.errors import DeconvolutionError
    from shibajax.measurement.deconvolution import deconvolve
    from shibajax.measurement.readers import read_spectrum

    temperature = _finite_option(args.temperature, "--temperature", unit="K")
    lockin_rms = _finite_option(args.lockin_rms, "--lockin-rms", unit="mV")
    tip = parse_dos(args.tip)
    energies = parse_range(args.energies, "--energies", count=False)
    out = prepare_output(args.out)
    print(f"shibajax deconvolve: {args.spectrum} -> {out}", flush=True)
    ds = read_spectrum(args.spectrum)
    if "didv" not in ds:
        raise TunnellingError(f"{args.spectrum}: no dI/dV channel found (see read_spectrum's channel choice)")
    bias = 1e3 * np.asarray(ds["bias"].values, dtype=float)
    data = np.asarray(ds["didv"].values, dtype=float)
    bad = np.flatnonzero(~np.isfinite(data))
    if bad.size:  # before the normalisation, which a NaN would turn into a NaN scale
        at = ", ".join(f"{b:.6g}" for b in bias[bad[:5]]) + (" ..." if bad.size > 5 else "")
        raise DeconvolutionError(
            f"{args.spectrum}: the spectrum has {bad.size} non-finite dI/dV value(s) (of {data.size}) at bias = {at} "
            "mV; remove or interpolate them"
        )
    if args.scale is not None:
        scale = args.scale
    else:
        outer = np.abs(bias) >= args.normalise_above
        if not outer.any():
            raise TunnellingError(f"--normalise-above {args.normalise_above} mV: no bias point that far out")
        scale = float(np.mean(data[outer]))
    if not (np.isfinite(scale) and scale > 0):
        raise TunnellingError(f"the normalisation scale {scale!r} must be finite and > 0 (use --scale)")
    reg = "gcv" if args.regularisation is None else args.regularisation
    how = f"lambda = {reg:g}" if isinstance(reg, float) else f"lambda chosen by {reg}"
    print(
        f"shibajax deconvolve: {bias.size} points onto {energies.size} energies ({how}); building the kernel and "
        "solving ...",
        flush=True,
    )
    res = deconvolve(
        bias,
        data / scale,
        tip,
        temperature=temperature,
        sample_energies=energies,
        lockin_rms=lockin_rms,
        regularisation=reg,
        nonnegative=args.nonnegative,
        noise=args.noise,
        check="warn" if args.no_check else "raise",
    )
    for what, values in (("DOS", res.dos), ("DOS error", res.error)):
        check_output(
            what,
            values,
            res.energies,
            "E (meV)",
            "the kernel is singular there (a tip with gamma = 0?)",
            DeconvolutionError,
        )
    _write_csv(out, ["energy_meV", "dos", "error"], [res.energies, res.dos, res.error])
    print(
        f"shibajax deconvolve: {bias.size} points, lambda = {res.regularisation:.3g} ({res.method}), noise = "
        f"{res.noise:.3g} G_N, residual rms = {res.residual_rms:.3g} G_N -> {out}"
    )
    for problem in res.problems:
        print(f"warning: {problem}", file=sys.stderr)
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
    dec.add_argument(
        "--regularisation",
        type=_regularisation,
        default=None,
        metavar="METHOD|LAMBDA",
        help="gcv (default), lcurve, discrepancy (needs the noise; default: estimated from the data) or a number",
    )
    dec.add_argument(
        "--noise", type=float, default=None, metavar="G_N", help="noise sigma of the normalised data (discrepancy)"
    )
    dec.add_argument("--nonnegative", action="store_true", help="impose rho_s >= 0")
    dec.add_argument(
        "--no-check",
        action="store_true",
        help="write the DOS even when it fails the sanity checks (bounded, non-negative, determined by the data)",
    )
    dec.add_argument("--out", default="dos.csv", metavar="FILE.csv", help="output (default %(default)s)")
    dec.set_defaults(func=cmd_deconvolve)
