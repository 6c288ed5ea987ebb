"""The ``shibajax demo`` job: Shiba states of a two-channel adatom on a two-orbital s-wave superconductor.

The default model is a square lattice with two orbitals per site (nearest-neighbour hoppings t = (1.0, 0.6),
inter-orbital hopping 0.1 on the same bonds, on-site energies (0.0, 0.2), mu = -1.0 so that both bands cross
the Fermi level, s-wave Delta = 0.2 on both orbitals, no Rashba term). A classical spin along z at (0, 0)
couples to orbital 0 with (K, J) = (0.2, 1.0) and to orbital 1 with (K, J) = (-0.1, 0.6): two channels, two
Shiba pairs +-E_1, +-E_2. Energies are in units of t = 1 (the hopping of orbital 0).

The job writes ``bound_states.json`` (energies and all parameters), ``ldos.csv`` and ``ldos.png`` (LDOS on
the impurity site and its neighbour). A TOML file may override any parameter of :data:`DEFAULTS`, e.g.::

    kgrid = 48
    eta = 0.004             # LDOS broadening (units of t); default 0.01 x the gap edge

    [model]
    t = [1.0, 0.5]          # nearest-neighbour hopping of orbital 0 and 1
    mu = -0.8

    [impurity]
    channels = [{J = 1.5}, {K = 0.0, J = 0.4}]

Each entry of ``impurity.channels`` starts from the default channel at the same position (or from
K = J = 0 on all orbitals beyond the second) and the list replaces the default list.

Example:
    >>> from shibajax.demo import resolve_config
    >>> resolve_config({"model": {"mu": -0.8}}, kgrid=32)["kgrid"]
    32
"""

from __future__ import annotations

import copy
import csv
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import shibajax
from shibajax.config import ConfigError, check_keys, load_toml, number, numbers, positive_int, writable_folder
from shibajax.models import from_hoppings, rashba_hopping

#: Default parameters of the demo; a TOML config overrides any of them (same names and nesting).
DEFAULTS: dict[str, Any] = {
    "kgrid": 64,  # L: an L x L Monkhorst-Pack grid (exact for the L x L periodic lattice)
    "eta": None,  # LDOS broadening (units of t); None: 0.01 x the gap edge
    "n_energies": 301,  # LDOS energies from -1.5 to +1.5 gap edges
    "model": {
        "t": [1.0, 0.6],  # nearest-neighbour hopping of orbital 0 and orbital 1
        "t_inter": 0.1,  # inter-orbital nearest-neighbour hopping
        "onsite": [0.0, 0.2],  # on-site energies of the two orbitals
        "mu": -1.0,  # chemical potential
        "delta": 0.2,  # s-wave gap, one number (both orbitals) or one per orbital
        "rashba": 0.0,  # Rashba coupling alpha_R (both orbitals)
    },
    "impurity": {
        "site": [0, 0],
        "spin": [0.0, 0.0, 1.0],
        "channels": [
            {"orbitals": 0, "K": 0.2, "J": 1.0},
            {"orbitals": 1, "K": -0.1, "J": 0.6},
        ],
    },
}

#: Lattice positions (relative to the origin) at which the demo computes the LDOS.
LDOS_POSITIONS = ((0, 0), (1, 0))
#: Half-width of the LDOS energy window, in units of the gap edge.
WINDOW = 1.5
#: Default LDOS broadening, in units of the gap edge.
ETA_OVER_GAP = 0.01


def _channel(entry, default, key: str) -> dict:
    check_keys(entry, ("orbitals", "K", "J"), key)
    out = dict(default)
    out.update(entry)
    orbitals = out["orbitals"]

    def is_index(o):
        return isinstance(o, int) and not isinstance(o, bool)

    is_list = isinstance(orbitals, list) and len(orbitals) > 0 and all(map(is_index, orbitals))
    if not (orbitals is None or is_index(orbitals) or is_list):
        raise ConfigError(
            f"{key}.orbitals must be an orbital index (0 or 1) or a non-empty list of them; got {orbitals!r}"
        )
    return {"orbitals": orbitals, "K": number(out["K"], f"{key}.K"), "J": number(out["J"], f"{key}.J")}


def resolve_config(config: dict | None = None, *, kgrid: int | None = None) -> dict:
    """Merge a user config (e.g. a parsed TOML file) and a command-line ``kgrid`` into :data:`DEFAULTS`.

    Every key is checked; an unknown key or a value of the wrong kind raises :class:`ConfigError` naming it.
    """
    config = {} if config is None else config
    out = copy.deepcopy(DEFAULTS)
    check_keys(config, DEFAULTS, "")
    if "kgrid" in config:
        out["kgrid"] = positive_int(config["kgrid"], "kgrid")
    if kgrid is not None:
        out["kgrid"] = positive_int(kgrid, "--kgrid")
    if "eta" in config:
        eta = number(config["eta"], "eta")
        if eta <= 0:
            raise ConfigError(f"eta must be > 0 (a broadening in units of t); got {eta!r}")
        out["eta"] = eta
    if "n_energies" in config:
        out["n_energies"] = positive_int(config["n_energies"], "n_energies")

    model_in = config.get("model", {})
    check_keys(model_in, DEFAULTS["model"], "model")
    model = out["model"]
    for key in ("t", "onsite"):
        if key in model_in:
            model[key] = numbers(model_in[key], f"model.{key}", 2)
    for key in ("t_inter", "mu", "rashba"):
        if key in model_in:
            model[key] = number(model_in[key], f"model.{key}")
    if "delta" in model_in:
        d = model_in["delta"]
        model["delta"] = numbers(d, "model.delta", 2) if isinstance(d, list) else number(d, "model.delta")

    imp_in = config.get("impurity", {})
    check_keys(imp_in, DEFAULTS["impurity"], "impurity")
    imp = out["impurity"]
    if "site" in imp_in:
        site = imp_in["site"]
        ints = isinstance(site, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in site)
        if not ints or len(site) != 2:
            raise ConfigError(f"impurity.site must be two integers [x, y]; got {site!r}")
        imp["site"] = list(site)
    if "spin" in imp_in:
        imp["spin"] = numbers(imp_in["spin"], "impurity.spin", 3)
    if "channels" in imp_in:
        chans = imp_in["channels"]
        if not isinstance(chans, list) or not chans:
            raise ConfigError(f"impurity.channels must be a non-empty list of tables; got {chans!r}")
        blank = {"orbitals": None, "K": 0.0, "J": 0.0}
        defaults = DEFAULTS["impurity"]["channels"]
        imp["channels"] = [
            _channel(c, defaults[i] if i < len(defaults) else blank, f"impurity.channels[{i}]")
            for i, c in enumerate(chans)
        ]
    return out


load_config = load_toml


# ------------------------------------------------------------------------------------------------ model


def build_model(params: dict) -> shibajax.models.TightBindingModel:
    """The two-orbital square-lattice superconductor of the demo from ``params`` (the ``model`` table)."""
    t0, t1 = params["t"]
    t01 = params["t_inter"]
    e0, e1 = params["onsite"]
    mu = params["mu"]
    s0 = np.eye(2)
    nn = -np.array([[t0, t01], [t01, t1]])  # real symmetric, so T_{-d} = T_d^dagger
    hop = {(0, 0): np.kron(np.diag([e0 - mu, e1 - mu]), s0)}
    for d in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        hop[d] = np.kron(nn, s0) + np.kron(np.eye(2), np.asarray(rashba_hopping(d, params["rashba"])))
    return from_hoppings(hop, n_orb=2, delta=params["delta"], name="two-orbital square lattice, s-wave")


def build_impurity(params: dict) -> shibajax.Impurity:
    """The multi-channel magnetic impurity of the demo from ``params`` (the ``impurity`` table)."""
    channels = [shibajax.Channel(K=c["K"], J=c["J"], orbitals=c["orbitals"]) for c in params["channels"]]
    return shibajax.Impurity(tuple(params["site"]), channels=channels, spin=tuple(params["spin"]))


# -------------------------------------------------------------------------------------------------- run


@dataclass
class DemoResult:
    """What :func:`run_demo` computed and wrote."""

    states: shibajax.BoundStates
    ldos: shibajax.LDOS
    config: dict
    files: dict[str, Path]
    timings: dict[str, float]

    def report(self) -> str:
        """The summary ``shibajax demo`` prints."""
        c = self.config
        m = c["model"]
        lines = [
            f"shibajax {shibajax.__version__} demo: {self.states.model.name}",
            (
                f"  model: t = {m['t']}, t_inter = {m['t_inter']}, onsite = {m['onsite']}, mu = {m['mu']}, "
                f"delta = {m['delta']}, rashba = {m['rashba']}"
            ),
            f"  impurity at {tuple(c['impurity']['site'])}, spin {c['impurity']['spin']}, channels:",
        ]
        for ch in c["impurity"]["channels"]:
            lines.append(f"    orbitals {ch['orbitals']}: K = {ch['K']}, J = {ch['J']}")
        lines.append(f"  k-grid {c['kgrid']} x {c['kgrid']}, LDOS broadening eta = {c['eta']:.4g}")
        lines.append("")
        lines.append("Bound states (energies in units of t):")
        lines.append(self.states.summary())
        if not self.states.converged:
            lines.append("  WARNING: some roots did not reach the tolerance")
        lines.append("")
        lines.append("Files written:")
        for path in self.files.values():
            lines.append(f"  {path}")
        t = self.timings
        lines.append("")
        lines.append(
            f"Wall time {t['total']:.2f} s (bound states {t['bound_states']:.2f} s, LDOS {t['ldos']:.2f} s, "
            f"output {t['output']:.2f} s)"
        )
        return "\n".join(lines)


def _shiba_pairs(energies: np.ndarray, multiplicities: np.ndarray) -> int:
    return int(np.sum(multiplicities[np.asarray(energies) > 0]))


def run_demo(out_dir="shibajax-demo", *, kgrid: int | None = None, config: dict | None = None) -> DemoResult:
    """Run the demo and write its three files into ``out_dir`` (created if needed).

    Args:
        out_dir: output folder.
        kgrid: L of the L x L grid (overrides the config; default 64).
        config: overrides of :data:`DEFAULTS` (e.g. a parsed TOML file).

    Returns:
        :class:`DemoResult`.
    """
    start = time.perf_counter()
    cfg = resolve_config(config, kgrid=kgrid)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {str(out)!r} exists and is not a folder")
    writable_folder(out, "the demo output")  # before the computation, not after it
    model = build_model(cfg["model"])
    imp = build_impurity(cfg["impurity"])
    L = cfg["kgrid"]

    t0 = time.perf_counter()
    states = shibajax.bound_states(model, imp, kgrid=(L, L))
    t1 = time.perf_counter()
    gap = states.gap_edge
    if cfg["eta"] is None:
        cfg["eta"] = ETA_OVER_GAP * gap
    energies = np.linspace(-WINDOW * gap, WINDOW * gap, cfg["n_energies"])
    site = np.asarray(cfg["impurity"]["site"])
    positions = [tuple(int(v) for v in site + np.asarray(p)) for p in LDOS_POSITIONS]
    result = shibajax.ldos(model, imp, positions=positions, energies=energies, eta=cfg["eta"], kgrid=(L, L))
    ldos_values = np.asarray(result.total)
    t2 = time.perf_counter()

    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "bound_states.json", "csv": out / "ldos.csv", "png": out / "ldos.png"}
    record = states.to_dict()
    record.update(
        {
            "energy_unit": "t (nearest-neighbour hopping of orbital 0)",
            "shiba_pairs": _shiba_pairs(states.energies, states.multiplicities),
            "model_parameters": cfg["model"],
            "impurity": cfg["impurity"],
            "ldos": {
                "positions": [list(p) for p in positions],
                "eta": cfg["eta"],
                "energy_min": float(energies[0]),
                "energy_max": float(energies[-1]),
                "n_energies": int(energies.size),
                "quantity": "electron LDOS -(1/pi) Im Tr G_ee(r, r, E + i eta), states per t per cell",
            },
            "shibajax_version": shibajax.__version__,
            "python_version": platform.python_version(),
        }
    )
    files["json"].write_text(json.dumps(record, indent=2) + "\n")
    _write_csv(files["csv"], energies, ldos_values, positions)
    _plot(files["png"], energies, ldos_values, positions, states, cfg["eta"])
    t3 = time.perf_counter()
    timings = {"bound_states": t1 - t0, "ldos": t2 - t1, "output": t3 - t2, "total": t3 - start}
    return DemoResult(states, result, cfg, files, timings)


def _write_csv(path: Path, energies, values, positions) -> None:
    header = ["energy [t]"] + [f"ldos at ({p[0]} {p[1]}) [states per t per cell]" for p in positions]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for e, row in zip(energies, values, strict=True):
            writer.writerow([repr(float(e))] + [repr(float(v)) for v in row])


def _plot(path: Path, energies, values, positions, states, eta) -> None:
    # A bare Figure renders with Agg and leaves pyplot's global backend alone.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for i, p in enumerate(positions):
        ax.plot(energies, values[:, i], lw=1.2, label=f"r = ({p[0]}, {p[1]})")
    for j, e in enumerate(states.all_energies):
        ax.axvline(e, color="k", ls="--", lw=0.8, label="bound states" if j == 0 else None)
    for s in (-1, 1):
        ax.axvline(s * states.gap_edge, color="0.6", ls=":", lw=0.8, label="gap edge" if s < 0 else None)
    ax.set_yscale("log")
    ax.set_xlim(energies[0], energies[-1])
    ax.set_xlabel("energy (units of t)")
    ax.set_ylabel("LDOS (states per t per cell)")
    ax.set_title(f"Shiba states, {states.kgrid[0]}x{states.kgrid[1]} k-grid, eta = {eta:.2g} t", fontsize=10)
    ax.legend(fontsize=8, loc="upper center")
    fig.savefig(path, dpi=120)
