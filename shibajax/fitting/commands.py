"""``shibajax fit DATA --config fit.toml``: fit the channels (K, J per channel) of an impurity or adatom on any
built-in host (or a TOML hopping table) to a measured spectrum, in meV / mV / K.

Config (TOML; every table optional except [params], see examples/fit_mnpc.toml). Every key is checked for type
and range before any work (:class:`~shibajax.config.ConfigError` naming the key, the value and what it takes)::

    [host]    model = "square" (default) | "nb110" | "graser2009" | "from_hoppings" and the model's keys (meV);
              for the square lattice t (> 0), mu (inside the band, |mu| < 4 t), delta (> 0), rashba, channels
              (>= 1); for every model eta (> 0, the sample broadening, meV), kgrid (L >= 4), energy_step (meV,
              > 0: at least 10 energies across the bias window, at most 20001 in all), fermi_shell (resolution
              rho > 0: sum G0 on a Fermi-shell mesh with base grid kgrid instead of a uniform L x L grid; needed
              when eta << the band width, see shibajax.fermi_shell). Every key: shibajax.fitting.hosts.
    [impurity] site = [0, 0] and channels = [[0], [1, 2], ...] (orbital sets), or adatom = "mn" (Nb(110)) or
              an adatom table {position, height, extent, shapes, spin} (shibajax.fitting.hosts)
    [tip]     kind = "normal" | "dynes"
    [data]    bias_window = [lo, hi] (mV, lo < hi; default the whole file),
              direction = "forward" | "backward" | "average"
    [fit]     n_starts (>= 1), method ("lbfgs" | "adam" | "lm"), max_iter (>= 1), seed (>= 0), out (folder)
    [params]  name = value | {value, lower, upper, fixed, tie}; names K_<i>, J_<i> (one pair per channel, required),
              scale, offset, bg0, bg1, temperature, lockin, and tip_delta, tip_gamma (required) for a Dynes tip.
              "temperature" and "lockin" default to the file's header (fixed), "scale" to 1 in (0.2, 5),
              "offset", "bg0", "bg1" to 0 (fixed).

The data are normalised by their mean over the outer 10 % of the window (so the normal state is ~1). Writes
``fit_report.json``, ``fit.png`` and a checkpoint ``fit_checkpoint.npz`` after every batch of iterations: run
the same command again to resume. The checkpoint is keyed on everything that fixes the result (sha256 of the
data file, the whole resolved config and parameters, the starts, the objective, the shibajax version); a
checkpoint of another fit is refused with an error naming what differs (``--restart`` discards it).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from shibajax.config import (
    ConfigError,
    check_keys,
    is_number,
    load_toml,
    number,
    numbers,
    positive_int,
    writable_folder,
)
from shibajax.errors import FitError
from shibajax.fitting.hosts import COMMON, MODEL_KEYS, host_from_config, n_channels, resolve_host

#: Defaults of every table (a config overrides any key; [params] has its own defaults, see build_problem).
DEFAULTS = {
    "host": COMMON | MODEL_KEYS["square"],
    "impurity": {"site": [0, 0], "channels": None},
    "tip": {"kind": "normal"},
    "data": {"bias_window": None, "direction": "forward"},
    "fit": {"n_starts": 16, "method": "lbfgs", "max_iter": 200, "seed": 0, "out": "shibajax-fit"},
}
FIT_KEYS = tuple(DEFAULTS["fit"])
TIPS = ("normal", "dynes")
DIRECTIONS = ("forward", "backward", "average")
METHODS = ("lbfgs", "adam", "lm")
PARAM_KEYS = ("value", "lower", "upper", "fixed", "tie")
INSTRUMENT = ("scale", "offset", "bg0", "bg1", "temperature", "lockin")
#: Parameters that must stay >= 0 (temperature and tip gap > 0): their value and lower bound are checked.
NON_NEGATIVE = {"temperature": True, "lockin": False, "tip_delta": True, "tip_gamma": False}  # name: strictly > 0
#: The most energies of the G0 grid (a finer energy_step would make the sums over the Brillouin zone run for hours).
MAX_ENERGIES = 20001
#: The most starts of one fit.
MAX_STARTS = 100_000
CHECKPOINT = "fit_checkpoint.npz"
OUTPUTS = ("fit_report.json", "fit.png", CHECKPOINT)
#: Starts per compiled call (the starts of a block run together; a checkpoint after every batch of iterations).
BLOCK = 8


def _positive(value, key: str, strict: bool = True) -> float:
    x = number(value, key)
    if x < 0 or (strict and x == 0):
        raise ConfigError(f"{key} must be {'> 0' if strict else '>= 0'}; got {value!r}")
    return x


def _choice(value, key: str, allowed) -> str:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")
    return value


def _table(config: dict, name: str) -> dict:
    table = config.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table; got {name} = {table!r}")
    return table


def parameter_names(channels: int, tip: str) -> tuple[str, ...]:
    """The [params] names of a fit with ``channels`` channels and a ``tip`` ("normal" or "dynes")."""
    couplings = tuple(f"{kind}_{i}" for i in range(channels) for kind in ("K", "J"))
    return couplings + INSTRUMENT + (("tip_delta", "tip_gamma") if tip == "dynes" else ())


def _parameter(name: str, spec, allowed) -> dict:
    """One [params] entry as {value, lower, upper, fixed, tie} (bounds None when absent), checked."""
    key = f"[params].{name}"
    if not isinstance(spec, dict):
        if not is_number(spec):
            raise ConfigError(
                f"{key} must be a number (a free start value) or a table {{value, lower, upper, fixed, tie}}; "
                f"got {spec!r}"
            )
        spec = {"value": spec}
    check_keys(spec, PARAM_KEYS, key)
    out = {"value": None, "lower": None, "upper": None, "fixed": False, "tie": None}
    for bound in ("value", "lower", "upper"):
        if bound in spec:
            out[bound] = number(spec[bound], f"{key}.{bound}")
    if "fixed" in spec:
        if not isinstance(spec["fixed"], bool):
            raise ConfigError(f"{key}.fixed must be true or false; got {spec['fixed']!r}")
        out["fixed"] = spec["fixed"]
    if "tie" in spec:
        tie = spec["tie"]
        if not isinstance(tie, str) or tie not in allowed or tie == name:
            raise ConfigError(f"{key}.tie must name another parameter ({', '.join(allowed)}); got {tie!r}")
        if out["fixed"]:
            raise ConfigError(f"{key}: give either fixed = true or tie = {tie!r}, not both")
        out["tie"] = tie
        return out
    if out["value"] is None:
        raise ConfigError(f"{key} needs a start value: {name} = {{ value = ..., lower = ..., upper = ... }}")
    lo, hi, v = out["lower"], out["upper"], out["value"]
    if lo is not None and hi is not None and not lo < hi:
        raise ConfigError(f"{key}: lower = {lo} must be below upper = {hi}")
    if not out["fixed"] and not ((lo is None or lo < v) and (hi is None or v < hi)):
        raise ConfigError(f"{key}.value = {v} must lie strictly inside its bounds ({lo}, {hi}) (or set fixed = true)")
    if name in NON_NEGATIVE:
        strict = NON_NEGATIVE[name]
        want = "> 0" if strict else ">= 0"
        if v < 0 or (strict and v == 0):
            raise ConfigError(f"{key}.value must be {want}; got {v}")
        if not out["fixed"] and (lo is None or lo < 0):
            raise ConfigError(f"{key} is free, so it needs a lower bound >= 0; got lower = {lo}")
    return out


def resolve_config(config: dict, base: Path | None = None) -> dict:
    """A fit config (parsed TOML) checked key by key and completed with :data:`DEFAULTS`.

    [host] and [impurity] are those of :mod:`shibajax.fitting.hosts` (any built-in model, a TOML hopping table
    (relative paths from ``base``, the config's folder), adatoms with orbital channels).

    [params] entries come back as {value, lower, upper, fixed, tie} (None where absent); the defaults of the
    instrument parameters are filled in by :func:`build_problem` (they need the data file's header).

    Raises:
        ConfigError: an unknown table, key or parameter name, a value of the wrong type or out of range (the
            message names the key, the value and what it takes).
    """
    check_keys(config, ("host", "impurity", "tip", "data", "fit", "params"), "")
    out = copy.deepcopy(DEFAULTS)

    resolved = resolve_host(_table(config, "host"), _table(config, "impurity"), base=base)
    out["host"], out["impurity"] = resolved["host"], resolved["impurity"]
    channels = n_channels(resolved)

    tip_in = _table(config, "tip")
    check_keys(tip_in, ("kind",), "[tip]")
    if "kind" in tip_in:
        out["tip"]["kind"] = _choice(tip_in["kind"], "[tip].kind", TIPS)

    data_in = _table(config, "data")
    check_keys(data_in, ("bias_window", "direction"), "[data]")
    if "bias_window" in data_in:
        window = data_in["bias_window"]
        lo, hi = numbers(window, "[data].bias_window", 2)
        if not lo < hi:
            raise ConfigError(f"[data].bias_window = {window!r} must be [lo, hi] with lo < hi (mV)")
        out["data"]["bias_window"] = [lo, hi]
    if "direction" in data_in:
        out["data"]["direction"] = _choice(data_in["direction"], "[data].direction", DIRECTIONS)

    fit_in = _table(config, "fit")
    check_keys(fit_in, FIT_KEYS, "[fit]")
    fit = out["fit"]
    for name in ("n_starts", "max_iter"):
        if name in fit_in:
            fit[name] = positive_int(fit_in[name], f"[fit].{name}")
    if fit["n_starts"] > MAX_STARTS:
        raise ConfigError(
            f"[fit].n_starts = {fit['n_starts']} is more than {MAX_STARTS} (the starts and their optimiser states "
            f"are held in memory together); give n_starts <= {MAX_STARTS}"
        )
    if "seed" in fit_in:
        seed = fit_in["seed"]
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"[fit].seed must be an integer >= 0; got {seed!r}")
        fit["seed"] = seed
    if "method" in fit_in:
        fit["method"] = _choice(fit_in["method"], "[fit].method", METHODS)
    if "out" in fit_in:
        if not isinstance(fit_in["out"], str) or not fit_in["out"].strip():
            raise ConfigError(f"[fit].out must be a folder name; got {fit_in['out']!r}")
        fit["out"] = fit_in["out"]

    if "params" not in config:
        raise ConfigError(
            "the fit config needs a [params] table: start values and bounds of K_0, J_0, ... "
            "(see examples/fit_mnpc.toml)"
        )
    params_in = _table(config, "params")
    allowed = parameter_names(channels, out["tip"]["kind"])
    check_keys(params_in, allowed, "[params]")
    out["params"] = {name: _parameter(name, spec, allowed) for name, spec in params_in.items()}
    for name, p in out["params"].items():
        target = out["params"].get(p["tie"], {})
        if target.get("tie") is not None:
            raise ConfigError(
                f"[params].{name}.tie = {p['tie']!r}, which is itself tied to {target['tie']!r}: "
                f"tie {name} to {target['tie']!r} directly"
            )
    required = [n for n in allowed if n[:2] in ("K_", "J_") or n.startswith("tip_")]
    missing = [n for n in required if n not in out["params"]]
    if missing:
        raise ConfigError(
            f"[params] must set {', '.join(missing)} (start value and bounds, e.g. "
            f"{missing[0]} = {{ value = 1.0, lower = -30.0, upper = 30.0 }})"
        )
    return out


def _spec(p: dict) -> dict:
    """A resolved [params] entry as a ParameterSpace spec (absent bounds dropped)."""
    return {k: v for k, v in p.items() if v is not None and not (k == "fixed" and not v)}


@dataclasses.dataclass(frozen=True)
class FitPlan:
    """A checked ``shibajax fit`` run before any costly work: resolved config, data, where it writes."""

    data_path: Path
    config: dict
    bias: np.ndarray
    didv: np.ndarray
    params: dict
    folder: Path
    key: dict
    resume: bool

    @property
    def checkpoint(self) -> Path:
        return self.folder / CHECKPOINT

    def energies(self) -> np.ndarray:
        """The uniform energy grid of the G0 blocks (meV): the bias window plus thermal, lock-in and tip tails."""
        lo, hi = self.config["data"]["bias_window"]
        return _energy_grid(lo, hi, self.config, _largest_lockin(self.params))


def _largest_lockin(params: dict) -> float:
    """The largest lock-in amplitude the fit can reach (its value, or its upper bound when free; ties followed)."""
    p = params["lockin"]
    p = params[p["tie"]] if p["tie"] is not None else p
    return max(float(p["value"]), float(p["upper"]) if p["upper"] is not None and not p["fixed"] else 0.0)


def _margin(config: dict, lockin: float) -> float:
    # 10 k_B T at 2 K, 3 lock-in amplitudes and the tip gap (Dynes tip) beyond the bias window
    return 10 * 0.0862 * 2.0 + 3 * lockin + (2.0 if config["tip"]["kind"] == "dynes" else 0.0)


def _energy_grid(lo: float, hi: float, config: dict, lockin: float) -> np.ndarray:
    step = config["host"]["energy_step"]
    margin = _margin(config, lockin)
    n_e = int((hi - lo + 2 * margin) / step) + 1  # counted before np.arange allocates the grid
    if n_e > MAX_ENERGIES:
        raise ConfigError(
            f"[host].energy_step = {step} meV gives {n_e} energies over [{lo}, {hi}] mV and its tails, more than "
            f"{MAX_ENERGIES}; use a step of at least {(hi - lo + 2 * margin) / (MAX_ENERGIES - 1):.3g} meV"
        )
    return np.arange(lo - margin, hi + margin + step / 2, step)


def _read_data(data_path: Path, config: dict):
    from shibajax.measurement.readers import read_spectrum

    ds = read_spectrum(data_path, direction=config["data"]["direction"], sort=True)
    bias = np.asarray(ds["bias"].values, float) * 1e3  # V -> mV
    didv = np.asarray(ds["didv"].values, float)
    finite = np.isfinite(bias)
    if not finite.any():
        raise FitError(f"{data_path}: no finite bias value")
    window = config["data"]["bias_window"]
    lo, hi = window if window is not None else (float(bias[finite].min()), float(bias[finite].max()))
    keep = finite & (bias >= lo) & (bias <= hi) & np.isfinite(didv)
    bias, didv = bias[keep], didv[keep]
    if bias.size < 10:
        raise FitError(
            f"only {bias.size} points of {data_path} lie in bias_window = [{lo}, {hi}] mV (the file covers "
            f"[{np.nanmin(ds['bias'].values) * 1e3:.4g}, {np.nanmax(ds['bias'].values) * 1e3:.4g}] mV); "
            "widen [data].bias_window"
        )
    n = max(1, bias.size // 10)
    norm = 0.5 * (didv[:n].mean() + didv[-n:].mean())
    if not (np.isfinite(norm) and norm > 0):
        raise FitError(
            f"{data_path}: the dI/dV of the outer 10 % of the window averages to {norm:.4g}; the spectrum is "
            "normalised by it, so it must be > 0 (check the channel and [data].bias_window)"
        )
    return ds, bias, didv / norm, [float(lo), float(hi)]


def _parameters(config: dict, ds, data_path) -> dict:
    """Every fit parameter, resolved: the [params] entries over the defaults (temperature, lock-in: header)."""
    temperature = float(ds.attrs.get("temperature_K", np.nan))
    lockin = float(ds.attrs.get("lockin_amplitude_V", 0.0)) * 1e3
    blank = {"lower": None, "upper": None, "fixed": False, "tie": None}
    params = {"scale": blank | {"value": 1.0, "lower": 0.2, "upper": 5.0}}
    params |= {k: blank | {"value": 0.0, "fixed": True} for k in ("offset", "bg0", "bg1")}
    params |= {"temperature": blank | {"value": temperature, "fixed": True}}
    params |= {"lockin": blank | {"value": lockin, "fixed": True}}
    params |= config["params"]
    header = {"temperature": (temperature, "K", True), "lockin": (lockin, "rms mV", False)}
    for name, (value, unit, strict) in header.items():
        if name in config["params"]:
            continue
        if not np.isfinite(value) or value < 0 or (strict and value == 0):
            raise ConfigError(
                f"{data_path} gives {name} = {value} {unit} in its header, not {'> 0' if strict else '>= 0'}: "
                f"set [params] {name} = ... ({unit})"
            )
    return params


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare_output(folder) -> Path:
    """Create the fit's output ``folder`` and check that it is writable (:func:`shibajax.config.writable_folder`)."""
    return writable_folder(folder, "the fit output", "--out or [fit].out")


def plan_fit(data_path, config, out=None, *, restart: bool = False) -> FitPlan:
    """Check a ``shibajax fit`` run before any costly work: the config (a path or a parsed dict), the data file,
    the output folder (created and test-written) and the checkpoint there (refused if written for another fit,
    deleted with ``restart``). Returns the :class:`FitPlan` for :func:`execute_fit`."""
    from shibajax import __version__
    from shibajax.fitting.optimise import check_checkpoint

    base = Path(config).parent if isinstance(config, str | os.PathLike) else None
    config = load_toml(config) if isinstance(config, str | os.PathLike) else config
    cfg = resolve_config(config, base=base)
    data_path = Path(data_path)
    ds, bias, didv, window = _read_data(data_path, cfg)
    cfg["data"]["bias_window"] = window
    params = _parameters(cfg, ds, data_path)
    step = cfg["host"]["energy_step"]
    span = window[1] - window[0] + 2 * _margin(cfg, _largest_lockin(params))
    n_e = int(span / step) + 1  # counted before np.arange allocates the grid
    if n_e > MAX_ENERGIES or step > (window[1] - window[0]) / 10:
        fine = (window[1] - window[0] + 2 * _margin(cfg, _largest_lockin(params))) / (MAX_ENERGIES - 1)
        raise ConfigError(
            f"[host].energy_step = {step} meV gives {n_e} energies over the bias window [{window[0]}, {window[1]}] mV "
            f"and its tails; use a step between {fine:.3g} and {(window[1] - window[0]) / 10:.3g} meV "
            f"(at least 10 energies across the window, at most {MAX_ENERGIES} in all)"
        )
    folder = prepare_output(Path(out) if out is not None else Path(cfg["fit"]["out"]))
    determining = copy.deepcopy(cfg)
    determining["fit"].pop("out")  # where it writes does not change the result
    determining["params"] = params
    key = {"shibajax": __version__, "data file": {"sha256": _sha256_file(data_path)}, "config": determining}
    path = folder / CHECKPOINT
    if restart and path.exists():
        try:
            path.unlink()
        except OSError as err:
            raise ConfigError(f"--restart: cannot delete {path}: {err.strerror or err}") from err
    resume = check_checkpoint(path, key) is not None  # FitError naming what differs, before any costly work
    return FitPlan(data_path, cfg, bias, didv, params, folder, key, resume)


def build_problem(data_path, config: dict, *, plan: FitPlan | None = None):
    """(Problem, fit options, output folder) from a data file and a parsed config (or a :class:`FitPlan`).

    Sums G0 over the Brillouin zone on the fit's energy grid: the costly part of the set-up.
    """
    from shibajax.fitting import Dataset, Problem, SpectrumModel, green_blocks

    if plan is None:
        cfg = resolve_config(config)
        ds, bias, didv, window = _read_data(Path(data_path), cfg)
        cfg["data"]["bias_window"] = window
        params = _parameters(cfg, ds, data_path)
        folder = Path(cfg["fit"]["out"])
    else:
        cfg, bias, didv, params, folder = plan.config, plan.bias, plan.didv, plan.params, plan.folder
    host = host_from_config(cfg)
    energies = _energy_grid(*cfg["data"]["bias_window"], cfg, _largest_lockin(params))
    blocks = green_blocks(host.model, host.couplings, [host.tip_site], energies, eta=host.eta, kgrid=host.kgrid)
    spec = {name: _spec(p) for name, p in params.items()}
    dataset = Dataset(SpectrumModel(blocks, tip=cfg["tip"]["kind"]), bias, didv, label=Path(data_path).name)
    problem = Problem(dataset, spec)
    fitc = cfg["fit"]
    options = {"n_starts": fitc["n_starts"], "method": fitc["method"], "seed": fitc["seed"]}
    options["steps" if fitc["method"] == "adam" else "max_iter"] = fitc["max_iter"]
    return problem, options, folder


def execute_fit(plan: FitPlan, *, progress: bool = True, on_batch=None, batch_iter=None, log=None) -> tuple:
    """Run a :class:`FitPlan`: G0 blocks, the multistart fit (checkpointed), report and plot.

    Returns:
        (FitResult, output folder).
    """
    from shibajax.fitting import fit, plot_fit, write_report

    if log is not None:
        log(f"summing G0 on {plan.energies().size} energies ...")
    problem, options, folder = build_problem(plan.data_path, None, plan=plan)
    result = fit(
        problem,
        checkpoint=plan.checkpoint,
        checkpoint_key=plan.key,
        block=BLOCK,
        progress=progress,
        on_batch=on_batch,
        batch_iter=batch_iter,
        **options,
    )
    write_report(result, problem, folder / "fit_report.json", extra={"data": str(plan.data_path)})
    plot_fit(result, problem, folder / "fit.png")
    return result, folder


def run_fit(data_path, config_path, out=None, *, restart: bool = False, progress: bool = True, **kwargs) -> tuple:
    """Run the fit of the CLI (:func:`plan_fit`, then :func:`execute_fit`); returns (FitResult, output folder)."""
    return execute_fit(plan_fit(data_path, config_path, out, restart=restart), progress=progress, **kwargs)
