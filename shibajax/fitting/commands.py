"""``shibajax fit DATA --config fit.toml``: fit one channel set (K, J) of an adatom on a one-band s-wave host
to a measured spectrum, in meV / mV / K.

Config (TOML; every table optional except [params], see examples/fit_mnpc.toml)::

    [host]    t, mu, delta (meV), eta (meV, the sample broadening), kgrid (L), energy_step (meV), channels (1),
              fermi_shell (resolution rho: sum G0 on a Fermi-shell mesh with base grid kgrid instead of a
              uniform L x L grid; needed when eta << the band width, see shibajax.fermi_shell)
    [tip]     kind = "normal" | "dynes"
    [data]    bias_window = [lo, hi] (mV), direction = "forward" | "backward" | "average"
    [fit]     n_starts, method ("lbfgs" | "adam" | "lm"), max_iter, seed, out (folder)
    [params]  name = value | {value, lower, upper, fixed, tie}; "temperature" and "lockin" default to the
              file's header (fixed), "scale" to 1, "offset", "bg0", "bg1" to 0 (fixed).

The data are normalised by their mean over the outer 10 % of the window (so the normal state is ~1). Writes
``fit_report.json``, ``fit.png`` and a checkpoint ``fit_checkpoint.npz`` (rerun to resume).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shibajax.config import check_keys, load_toml
from shibajax.errors import FitError

HOST_KEYS = ("t", "mu", "delta", "eta", "kgrid", "energy_step", "channels", "fermi_shell")
FIT_KEYS = ("n_starts", "method", "max_iter", "seed", "out")


def build_problem(data_path, config: dict):
    """(Problem, fit options, output folder) from a data file and a parsed config."""
    import shibajax
    from shibajax.fitting import Dataset, Problem, SpectrumModel, coupling_basis, green_blocks
    from shibajax.measurement.readers import read_spectrum

    check_keys(config, ("host", "tip", "data", "fit", "params"), "fit config")
    host = dict(config.get("host", {}))
    check_keys(host, HOST_KEYS, "[host]")
    fitc = dict(config.get("fit", {}))
    check_keys(fitc, FIT_KEYS, "[fit]")
    datac = dict(config.get("data", {}))
    check_keys(datac, ("bias_window", "direction"), "[data]")
    tip = dict(config.get("tip", {})).get("kind", "normal")
    if "params" not in config:
        raise FitError("the fit config needs a [params] table (start values and bounds of K_0, J_0, ...)")

    ds = read_spectrum(data_path, direction=datac.get("direction", "forward"), sort=True)
    bias = np.asarray(ds["bias"].values, float) * 1e3  # V -> mV
    didv = np.asarray(ds["didv"].values, float)
    lo, hi = datac.get("bias_window", [float(bias.min()), float(bias.max())])
    keep = (bias >= lo) & (bias <= hi) & np.isfinite(didv)
    bias, didv = bias[keep], didv[keep]
    if bias.size < 10:
        raise FitError(f"only {bias.size} points of {data_path} lie in bias_window = [{lo}, {hi}] mV")
    n = max(1, bias.size // 10)
    didv = didv / (0.5 * (didv[:n].mean() + didv[-n:].mean()))

    model = shibajax.models.square(t=host.get("t", 10.0), mu=host.get("mu", -20.0), delta=host.get("delta", 1.35))
    couplings = coupling_basis(model, [(0, 0)], [(0,)] * int(host.get("channels", 1)), channel_names=None)
    temperature = float(ds.attrs.get("temperature_K", np.nan))
    lockin = float(ds.attrs.get("lockin_amplitude_V", 0.0)) * 1e3
    params = {"scale": {"value": 1.0, "lower": 0.2, "upper": 5.0}}
    params |= {k: {"value": 0.0, "fixed": True} for k in ("offset", "bg0", "bg1")}
    params |= {"temperature": {"value": temperature, "fixed": True}, "lockin": {"value": lockin, "fixed": True}}
    params |= dict(config["params"])
    if not np.isfinite(float(params["temperature"]["value"] if isinstance(params["temperature"], dict) else 0)):
        raise FitError(f"{data_path} gives no temperature: set [params] temperature = ... (K)")
    step = float(host.get("energy_step", 0.02))
    margin = 10 * 0.0862 * 2.0 + 3 * lockin + (2.0 if tip == "dynes" else 0.0)
    energies = np.arange(lo - margin, hi + margin + step / 2, step)
    kgrid = int(host.get("kgrid", 64))
    mesh = (kgrid, kgrid)
    if "fermi_shell" in host:
        from shibajax.fermi_shell import fermi_shell_mesh

        mesh = fermi_shell_mesh(model, base=kgrid, resolution=float(host["fermi_shell"]))
    blocks = green_blocks(model, couplings, [(0, 0)], energies, eta=float(host.get("eta", 0.05)), kgrid=mesh)
    problem = Problem(Dataset(SpectrumModel(blocks, tip=tip), bias, didv, label=Path(data_path).name), params)
    options = {
        "n_starts": int(fitc.get("n_starts", 16)),
        "method": str(fitc.get("method", "lbfgs")),
        "seed": int(fitc.get("seed", 0)),
        "max_iter": int(fitc.get("max_iter", 200)),
    }
    return problem, options, Path(fitc.get("out", "shibajax-fit"))


def run_fit(data_path, config_path, out=None) -> tuple:
    """Run the fit of the CLI; returns (FitResult, output folder)."""
    from shibajax.fitting import fit, plot_fit, write_report

    config = load_toml(config_path)
    problem, options, folder = build_problem(data_path, config)
    folder = Path(out) if out is not None else folder
    folder.mkdir(parents=True, exist_ok=True)
    if options["method"] == "adam":
        options["steps"] = options.pop("max_iter")
    result = fit(problem, checkpoint=folder / "fit_checkpoint.npz", block=8, **options)
    write_report(result, problem, folder / "fit_report.json", extra={"data": str(data_path)})
    plot_fit(result, problem, folder / "fit.png")
    return result, folder
