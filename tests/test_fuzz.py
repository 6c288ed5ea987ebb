"""Fuzz suite (issue 12, "Systematic checks"): demo, sweep and fit configs, API arguments and data files.

A deterministic, generated table of cases (no hypothesis): every entry of every config table and every argument
of the main API calls gets wrong kinds (string, bool, list, table, date, None), non-finite numbers (NaN, +-inf),
zero, negative, fractional and huge values; every reader gets its format truncated, binary, empty, with NaN and
inf values, re-encoded (UTF-16, BOM, Latin-1, CR LF), with broken rows and huge. Each case must end in

* a **result** whose numbers are finite (no silent NaN), or
* a **clear error**: a :class:`shibajax.errors.ShibajaxError` (``ConfigError``, ``DataFileError``, ...) whose
  message names the offending key, parameter or file,

never in another exception (TypeError, IndexError, a JAX or NumPy error: a raw traceback), a hang or a memory
blow-up. ``expect="error"`` marks cases that only an error can answer (an unknown key, a NaN, a string for a
number), ``expect="ok"`` valid inputs. Cases run in-process under :func:`guard`: a soft time limit (SIGALRM), a
hard one (faulthandler ends the process if the soft one cannot interrupt compiled code) and, on CPU, a cap on
the address space so that a case asking for tens of GB fails with MemoryError instead of exhausting the machine.
A handful of cases run the real command line in a subprocess. Valid cases use tiny grids and share shapes, so
JAX compiles each kernel once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import faulthandler
import io
import math
import re
import signal
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import shibajax
from shibajax import demo, sweep
from shibajax.config import load_toml
from shibajax.errors import ShibajaxError
from shibajax.impurities import impurity_potential
from shibajax.measurement.readers import read_grid, read_spectrum

REPO = Path(__file__).resolve().parent.parent
NAN, INF = math.nan, math.inf

# ------------------------------------------------------------------------------------------------- the guard


class CaseTimeout(Exception):
    """A case ran past its time limit (a hang)."""


_MEMORY_HEADROOM = 3 << 30  # bytes of address space a case may add: ample for tiny grids, far below a machine


def _address_space() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@contextlib.contextmanager
def guard(seconds: float):
    """Run the body under a soft time limit (CaseTimeout via SIGALRM, main thread only), a hard one
    (faulthandler dumps the stacks and ends the process after 3x + 30 s: a hang inside compiled code) and, on
    CPU under Linux, an address-space cap of the current size + 3 GiB (a huge allocation raises MemoryError).
    The GPU runtime reserves far more address space than it uses, so no cap there."""
    main = threading.current_thread() is threading.main_thread()
    if main:

        def on_alarm(signum, frame):
            raise CaseTimeout(f"no result after {seconds} s")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(3 * seconds + 30, exit=True)
    limit = None
    try:
        import resource

        if jax.default_backend() == "cpu" and _address_space():
            limit = resource.getrlimit(resource.RLIMIT_AS)
            cap = _address_space() + _MEMORY_HEADROOM
            if limit[1] == resource.RLIM_INFINITY or cap < limit[1]:
                resource.setrlimit(resource.RLIMIT_AS, (cap, limit[1]))
            else:
                limit = None
    except (ImportError, ValueError, OSError):
        limit = None
    try:
        yield
    finally:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, limit)
        faulthandler.cancel_dump_traceback_later()
        if main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------------------------- the checks


@dataclasses.dataclass(frozen=True)
class Case:
    """One fuzz input: ``run(tmp_path)`` returns a result or raises; ``names``: words the error must contain
    (one of them, whole word, case-insensitive); ``expect``: ``"error"``, ``"ok"`` or ``"either"``."""

    id: str
    run: Callable[[Path], object]
    names: tuple[str, ...]
    expect: str = "either"
    timeout: float = 20.0


def _names(msg: str, names) -> bool:
    return any(re.search(rf"(?<!\w){re.escape(n)}(?!\w)", msg, re.IGNORECASE) for n in names)


def non_finite(obj, where: str = "result", depth: int = 0) -> list[str]:
    """Where ``obj`` (configs, arrays, datasets, solver results) holds NaN or inf."""
    if depth > 8:
        return []
    out: list[str] = []
    if isinstance(obj, bool | str | bytes | Path | type(None) | datetime.date):
        return out
    if isinstance(obj, int | float | complex | np.number):
        return [] if np.isfinite(obj) else [f"{where} = {obj!r}"]
    if isinstance(obj, np.ndarray | jax.Array):
        arr = np.asarray(obj)
        if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            return [f"{where}: {int(np.sum(~np.isfinite(arr)))} of {arr.size} values not finite"]
        return out
    if isinstance(obj, xr.Dataset):
        for name in ("bias", "didv", "current"):
            if name in obj.variables:
                out += non_finite(obj[name].values, f"{where}[{name!r}]", depth + 1)
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += non_finite(v, f"{where}[{k!r}]", depth + 1)
        return out
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            out += non_finite(v, f"{where}[{i}]", depth + 1)
        return out
    if isinstance(obj, shibajax.BoundStates):
        return non_finite({"energies": obj.energies, "gap_edge": obj.gap_edge}, where, depth + 1)
    if isinstance(obj, shibajax.LDOS):
        return non_finite({"electron": obj.electron, "hole": obj.hole}, where, depth + 1)
    return out


def _frame(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if "/shibajax/" in f.filename and "/tests/" not in f.filename] or frames
    f = ours[-1]
    return f"{Path(f.filename).name}:{f.lineno} ({f.name})"


def check_case(case: Case, tmp_path: Path) -> None:
    try:
        with guard(case.timeout):
            result = case.run(tmp_path)
    except ShibajaxError as err:
        msg = str(err)
        assert case.expect != "ok", f"{case.id}: a valid input was rejected: {type(err).__name__}: {msg}"
        assert _names(msg, case.names), f"{case.id}: the error does not name {case.names}: {msg}"
        return
    except Exception as err:  # noqa: BLE001  (every other exception is a failure of the case)
        pytest.fail(f"{case.id}: raw {type(err).__name__} at {_frame(err)}: {str(err)[:500]}", pytrace=False)
    accepted = f"{case.id}: accepted, but only an error naming {case.names} is right: {result!r}"
    assert case.expect != "error", accepted[:800]
    bad = non_finite(result)
    assert not bad, f"{case.id}: a result with non-finite numbers: {bad[:5]}"


# ------------------------------------------------------------------------------------------ bad values

DATE = datetime.date(2024, 1, 1)
#: wrong values of a finite real number (TOML can give each of them; None only from Python)
BAD_NUMBER = {
    "str": "1.0",
    "bool": True,
    "nan": NAN,
    "inf": INF,
    "-inf": -INF,
    "list": [1.0],
    "table": {"a": 1.0},
    "date": DATE,
    "none": None,
}
#: wrong values of a positive integer
BAD_POSINT = {
    "str": "8",
    "bool": True,
    "nan": NAN,
    "inf": INF,
    "float": 8.5,
    "zero": 0,
    "negative": -4,
    "list": [8],
    "table": {"a": 8},
    "none": None,
}


def bad_vector(n: int) -> dict:
    """Wrong values of a list of n finite numbers."""
    return {
        "short": [1.0] * (n - 1),
        "long": [1.0] * (n + 1),
        "empty": [],
        "str-elem": ["a"] * n,
        "nan-elem": [NAN] + [1.0] * (n - 1),
        "inf-elem": [1.0] * (n - 1) + [INF],
        "bool-elem": [True] * n,
        "nested": [[1.0]] * n,
        "scalar": 1.0,
        "str": "1, 2",
        "table": {"x": 1.0},
    }


def _set(config: dict, path: str, value) -> dict:
    """A deep copy of ``config`` with the dotted ``path`` set to ``value``."""
    import copy

    out = copy.deepcopy(config)
    node = out
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return out


def _key_names(key: str, tables: bool) -> tuple[str, ...]:
    """How an error may name ``key``: the dotted path; with ``tables`` (the fit config's messages say
    ``[host] kgrid``) also ``[host].kgrid``, ``[host] kgrid``, a bare key of 4+ letters and a parameter's name."""
    if not tables:
        return (key,)
    parts = key.split(".")
    names = [key, f"[{parts[0]}].{'.'.join(parts[1:])}", f"[{parts[0]}] {'.'.join(parts[1:])}"]
    if parts[0] == "params":
        names.append(parts[1])
    elif len(parts[-1]) >= 4:
        names.append(parts[-1])
    return tuple(names)


def _key_cases(prefix: str, run: Callable, base: dict, table: dict, tables: bool = False) -> list[Case]:
    """One case per (key, bad value): ``table`` maps a dotted key to {label: value} (all must be errors)."""
    cases = []
    for key, values in table.items():
        for label, value in values.items():
            cfg = _set(base, key, value)
            names = _key_names(key, tables)
            cases.append(Case(f"{prefix}:{key}={label}", lambda tmp, cfg=cfg: run(cfg, tmp), names, "error"))
    return cases


# ------------------------------------------------------------------------------------------------- demo


def _demo(config, tmp=None):
    """The demo's checks before any BZ sum: resolve the config, build model and impurity, place it."""
    cfg = demo.resolve_config(config)
    model = demo.build_model(cfg["model"])
    imp = demo.build_impurity(cfg["impurity"])
    sites, potential = impurity_potential(imp, model)
    return {"config": cfg, "potential": np.asarray(potential)}


DEMO_ERRORS = {
    "kgrid": BAD_POSINT,
    "n_energies": BAD_POSINT,
    "eta": {**BAD_NUMBER, "zero": 0.0, "negative": -0.01},
    "model.t": bad_vector(2),
    "model.onsite": bad_vector(2),
    "model.t_inter": BAD_NUMBER,
    "model.mu": BAD_NUMBER,
    "model.rashba": BAD_NUMBER,
    "model.delta": {**BAD_NUMBER, "vec-short": [0.2], "vec-nan": [0.2, NAN], "vec-str": ["a", "b"]},
    "impurity.site": {**bad_vector(2), "fraction": [0.5, 0], "float": [1.0, 0.0]},
    "impurity.spin": bad_vector(3),
}
DEMO_CHANNEL_ERRORS = {
    "not-a-list": "J = 1",
    "a-table": {"J": 1.0},
    "empty": [],
    "number-entry": [1.0],
    "unknown-key": [{"X": 1.0}],
    "K-nan": [{"K": NAN}],
    "J-str": [{"J": "1"}],
    "J-inf": [{"J": INF}],
    "orbitals-fraction": [{"orbitals": 1.5}],
    "orbitals-str": [{"orbitals": "0"}],
    "orbitals-bool": [{"orbitals": True}],
    "orbitals-negative": [{"orbitals": -1}],
    "orbitals-out-of-range": [{"orbitals": 2}],
    "orbitals-repeated": [{"orbitals": [0, 0]}],
    "orbitals-empty": [{"orbitals": []}],
    "orbitals-nested": [{"orbitals": [[0]]}],
}
DEMO_OTHER = [
    Case("demo:unknown-top-key", lambda tmp: _demo({"kgird": 8}), ("kgird",), "error"),
    Case("demo:unknown-model-key", lambda tmp: _demo({"model": {"tt": 1.0}}), ("model.tt",), "error"),
    Case("demo:unknown-impurity-key", lambda tmp: _demo({"impurity": {"K": 1.0}}), ("impurity.K",), "error"),
    Case("demo:model-not-table", lambda tmp: _demo({"model": 3}), ("model",), "error"),
    Case("demo:impurity-not-table", lambda tmp: _demo({"impurity": [1]}), ("impurity",), "error"),
    Case("demo:config-not-table", lambda tmp: _demo([("kgrid", 8)]), ("config",), "error"),
    Case("demo:spin-zero", lambda tmp: _demo({"impurity": {"spin": [0.0, 0.0, 0.0]}}), ("spin", "impurity.spin")),
    Case("demo:kgrid-arg-zero", lambda tmp: demo.resolve_config({}, kgrid=0), ("--kgrid", "kgrid"), "error"),
    Case("demo:kgrid-arg-str", lambda tmp: demo.resolve_config({}, kgrid="8"), ("--kgrid", "kgrid"), "error"),
    Case("demo:kgrid-huge", lambda tmp: _demo({"kgrid": 10**7}), ("kgrid",)),
    Case("demo:valid-empty", lambda tmp: _demo({}), (), "ok"),
    Case("demo:valid-none", lambda tmp: _demo(None), (), "ok"),
    Case("demo:valid-three-channels", lambda tmp: _demo({"impurity": {"channels": [{}, {}, {"J": 0.1}]}}), (), "ok"),
    Case("demo:valid-delta-per-orbital", lambda tmp: _demo({"model": {"delta": [0.2, 0.1]}}), (), "ok"),
    Case("demo:valid-orbital-list", lambda tmp: _demo({"impurity": {"channels": [{"orbitals": [0, 1]}]}}), (), "ok"),
    Case("demo:negative-delta", lambda tmp: _demo({"model": {"delta": -0.2}}), ("model.delta",)),
    Case("demo:n_energies-huge", lambda tmp: _demo({"n_energies": 10**9}), ("n_energies",)),
]
DEMO_CASES = (
    _key_cases("demo", _demo, {}, DEMO_ERRORS)
    + [
        Case(f"demo:impurity.channels={label}", lambda tmp, v=v: _demo({"impurity": {"channels": v}}),
             ("impurity.channels", "impurity.channels[0]", "orbital", "orbitals",
              "impurity.channels[0].orbitals", "impurity.channels[0].K", "impurity.channels[0].J",
              "impurity.channels[0].X"), "error")
        for label, v in DEMO_CHANNEL_ERRORS.items()
    ]
    + DEMO_OTHER
)  # fmt: skip


def _run_demo(config: dict, tmp: Path):
    """The whole demo job on an 8 x 8 grid with 11 LDOS energies (one compilation for every such case; the
    default job itself runs in tests/test_cli.py and .ci/run)."""
    config = {"kgrid": 8, "n_energies": 11, **config}
    result = demo.run_demo(tmp / "demo", config=config)
    return {"energies": result.states.energies, "gap": result.states.gap_edge, "ldos": np.asarray(result.ldos.total)}


DEMO_RUNS = [
    Case("demo-run:delta-zero", lambda tmp: _run_demo({"model": {"delta": 0.0}}, tmp), ("gap", "delta"), "error", 60),
    Case("demo-run:one-gapless-orbital", lambda tmp: _run_demo({"model": {"delta": [0.2, 0.0]}}, tmp),
         ("gap", "delta"), "either", 60),
    Case("demo-run:band-insulator", lambda tmp: _run_demo({"model": {"mu": -20.0}}, tmp), ("mu", "gap"), "either", 60),
]  # fmt: skip

# ------------------------------------------------------------------------------------------------ sweep

SWEEP_CHAIN = {"impurity": {"kind": "chain"}}
SWEEP_ERRORS = {
    "kgrid": {**BAD_POSINT, "list-short": [8], "list-long": [8, 8, 8], "list-str": [8, "a"], "list-zero": [8, 0],
              "list-fraction": [8, 8.5], "list-bool": [True, 8]},
    "model.name": {"triangular": "triangular", "number": 1, "empty": ""},
    "model.gap": {"p": "p", "upper": "S", "number": 1, "list": ["s"]},
    "model.t": BAD_NUMBER,
    "model.mu": BAD_NUMBER,
    "model.delta": BAD_NUMBER,
    "model.rashba": BAD_NUMBER,
    "impurity.K": BAD_NUMBER,
    "impurity.J": BAD_NUMBER,
    "impurity.angle": BAD_NUMBER,
    "impurity.separation": {**bad_vector(2), "zero": [0, 0], "fraction": [1.5, 0], "float": [2.0, 0.0]},
    "impurity.kind": {"trimer": "trimer", "number": 1, "list": ["dimer"]},
    "sweep.J": {"scalar": 1.0, "empty": [], "nan": [1.0, NAN], "str": ["a"], "repeat": [1.0, 1.0],
                "table": {"a": 1}, "nested": [[1.0]], "inf": [INF], "bool": [True, 2.0]},
    "sweep.angle": {"str": "0:90", "none": [None]},
    "sweep.separation": {"zero": [[0, 0]], "flat": [2, 0], "fraction": [[1.5, 0]], "repeat": [[2, 0], [2, 0]]},
    "sweep.K": {"date": [DATE]},
    "sweep.n": {"unknown-for-dimer": [2, 3]},
}  # fmt: skip
SWEEP_CHAIN_ERRORS = {
    "impurity.n": BAD_POSINT,
    "impurity.spacing": BAD_POSINT,
    "impurity.pitch": BAD_NUMBER,
    "impurity.separation": {"not-a-chain-key": [2, 0]},
    "sweep.n": {"zero": [0, 2], "fraction": [2.5], "repeat": [2, 2]},
    "sweep.angle": {"not-a-chain-key": [0.0]},
}


def _sweep(config, tmp=None):
    return sweep.resolve_config(config)


SWEEP_OTHER = [
    Case("sweep:unknown-top-key", lambda tmp: _sweep({"sweeep": {}}), ("sweeep",), "error"),
    Case("sweep:unknown-model-key", lambda tmp: _sweep({"model": {"tt": 1.0}}), ("model.tt",), "error"),
    Case("sweep:unknown-sweep-key", lambda tmp: _sweep({"sweep": {"eta": [1.0]}}), ("sweep.eta",), "error"),
    Case("sweep:model-not-table", lambda tmp: _sweep({"model": "square"}), ("model",), "error"),
    Case("sweep:impurity-not-table", lambda tmp: _sweep({"impurity": "dimer"}), ("impurity",), "error"),
    Case("sweep:sweep-not-table", lambda tmp: _sweep({"sweep": [1.0]}), ("sweep",), "error"),
    Case("sweep:config-not-table", lambda tmp: _sweep("kgrid = 8"), ("config",), "error"),
    Case("sweep:valid-empty", lambda tmp: _sweep({}), (), "ok"),
    Case("sweep:valid-chain", lambda tmp: _sweep({"impurity": {"kind": "chain"}, "sweep": {"n": [2, 3]}}), (), "ok"),
    Case("sweep:valid-example", lambda tmp: _sweep(load_toml(REPO / "examples" / "sweep_dimer.toml")), (), "ok"),
    Case("sweep:kgrid-huge", lambda tmp: _sweep({"kgrid": 10**6}), ("kgrid",)),
    Case("sweep:chain-huge", lambda tmp: _sweep({"impurity": {"kind": "chain", "n": 10**6}}), ("impurity.n",)),
    Case("sweep:many-values", lambda tmp: _sweep({"sweep": {"J": list(np.linspace(0, 3, 20000).tolist())}}),
         ("sweep.J",)),
    Case("sweep:huge-grid", lambda tmp: _sweep({"sweep": {k: np.linspace(0.1, 1, 1000).tolist() for k in
                                                          ("J", "K", "angle", "mu")}}), ("sweep",)),
]  # fmt: skip
SWEEP_CASES = (
    _key_cases("sweep", _sweep, {}, SWEEP_ERRORS)
    + _key_cases("sweep-chain", _sweep, SWEEP_CHAIN, SWEEP_CHAIN_ERRORS)
    + SWEEP_OTHER
)

# -------------------------------------------------------------------------------------------------- fit

FIT_BIAS = np.linspace(-3.0, 3.0, 121)  # mV


def _fit_data(tmp: Path) -> Path:
    """A synthetic NIS spectrum with a Shiba pair (CSV, bias in mV, T and lock-in in the header)."""
    path = tmp / "spectrum.csv"
    if not path.exists():
        v = FIT_BIAS
        g = 1.0 - 0.9 * np.exp(-(v / 1.2) ** 8) + 0.8 * np.exp(-((v - 0.5) / 0.08) ** 2)
        g += 0.5 * np.exp(-((v + 0.5) / 0.08) ** 2)
        lines = ["# temperature_K = 1.2", "# lockin_amplitude_V = 5e-05", "bias (mV),didv"]
        lines += [f"{a:.6g},{b:.6g}" for a, b in zip(v, g, strict=True)]
        path.write_text("\n".join(lines) + "\n")
    return path


FIT_BASE = {
    "host": {"t": 10.0, "mu": -20.0, "delta": 1.3, "eta": 0.1, "kgrid": 8, "energy_step": 0.1},
    "data": {"bias_window": [-2.5, 2.5]},
    "fit": {"n_starts": 2, "max_iter": 5},
    "params": {"K_0": {"value": -5.0, "lower": -30.0, "upper": 30.0}, "J_0": {"value": 14.0, "lower": 2.0,
                                                                                "upper": 40.0}},
}  # fmt: skip


def _fit(config, tmp: Path, data: Path | None = None):
    """build_problem on the synthetic spectrum, then the loss at the start values (must be finite)."""
    from shibajax.fitting.commands import build_problem

    problem, options, folder = build_problem(data or _fit_data(tmp), config)
    loss = float(problem.loss(jnp.asarray(problem.space.initial())))
    return {"options": options, "folder": folder, "loss": loss}


FIT_ERRORS = {
    "host.t": {**BAD_NUMBER, "zero": 0.0},
    "host.mu": BAD_NUMBER,
    "host.delta": {**BAD_NUMBER, "zero": 0.0, "negative": -1.3},
    "host.eta": {**BAD_NUMBER, "zero": 0.0, "negative": -0.1},
    "host.kgrid": {**BAD_POSINT, "huge": 10**6},
    "host.energy_step": {**BAD_NUMBER, "zero": 0.0, "negative": -0.1, "tiny": 1e-9},
    "host.channels": {**BAD_POSINT, "huge": 10**6},
    "host.fermi_shell": {**BAD_NUMBER, "zero": 0.0, "negative": -1.0},
    "tip.kind": {"sc": "sc", "number": 1, "list": ["normal"], "empty": ""},
    "data.bias_window": {"reversed": [2.5, -2.5], "empty": [0.0, 0.0], "short": [1.0], "str": "a", "nan": [NAN, 1.0],
                         "outside": [10.0, 20.0], "strs": ["a", "b"], "long": [-1.0, 0.0, 1.0], "table": {"lo": -1}},
    "data.direction": {"sideways": "sideways", "number": 1, "none": None},
    "fit.n_starts": {**BAD_POSINT, "huge": 10**9},
    "fit.method": {"newton": "newton", "number": 1, "upper": "LM", "list": ["lm"]},
    "fit.max_iter": BAD_POSINT,
    "fit.seed": {"str": "a", "fraction": 1.5, "nan": NAN, "list": [1]},
    "fit.out": {"number": 1, "list": ["a"], "table": {"a": 1}, "bool": True},
    "params.K_0": {"str": "a", "nan": NAN, "inf": INF, "list": [1.0], "bool": True, "date": DATE},
    "params.J_0.value": {"str": "a", "nan": NAN, "list": [1.0]},
    "params.J_0.lower": {"str": "a", "nan": NAN, "above-upper": 50.0, "above-value": 20.0},
    "params.J_0.fixed": {"str": "yes", "number": 2},
    "params.J_0.tie": {"unknown": "X_9", "number": 1, "self": "J_0"},
    "params.J_0.bounds": {"short": [1.0], "strs": ["a", "b"]},
    "params.J_0.extra": {"any": 1.0},
    "params.X_0": {"unknown-parameter": 1.0},
    "params.temperature": {"zero": 0.0, "negative": -1.0, "nan": NAN, "str": "1.2K"},
    "params.lockin": {"negative": -0.05, "nan": NAN},
    "params.scale": {"str": "1", "list": [1.0]},
}  # fmt: skip
FIT_OTHER = [
    Case("fit:valid", lambda tmp: _fit(FIT_BASE, tmp), (), "ok", 60.0),
    Case("fit:scale-zero", lambda tmp: _fit(_set(FIT_BASE, "params.scale", 0.0), tmp), ("scale",)),
    Case("fit:max-iter-huge", lambda tmp: _fit(_set(FIT_BASE, "fit.max_iter", 10**12), tmp), ("max_iter",)),
    Case("fit:no-params", lambda tmp: _fit({k: v for k, v in FIT_BASE.items() if k != "params"}, tmp), ("params",),
         "error"),
    Case("fit:params-not-table", lambda tmp: _fit(FIT_BASE | {"params": "K_0"}, tmp), ("params",), "error"),
    Case("fit:host-not-table", lambda tmp: _fit(FIT_BASE | {"host": 1}, tmp), ("host", "[host]"), "error"),
    Case("fit:tip-not-table", lambda tmp: _fit(FIT_BASE | {"tip": "dynes"}, tmp), ("tip", "[tip]"), "error"),
    Case("fit:unknown-top-key", lambda tmp: _fit(FIT_BASE | {"hots": {}}, tmp), ("hots",), "error"),
    Case("fit:unknown-host-key", lambda tmp: _fit(_set(FIT_BASE, "host.tt", 1.0), tmp), ("tt",), "error"),
    Case("fit:unknown-tip-key", lambda tmp: _fit(_set(FIT_BASE, "tip.delta", 1.0), tmp), ("delta", "tip.delta"),
         "error"),
    Case("fit:config-not-table", lambda tmp: _fit([1], tmp), ("config", "fit config"), "error"),
    Case("fit:data-missing", lambda tmp: _fit(FIT_BASE, tmp, tmp / "missing.dat"), ("missing.dat",), "error"),
    Case("fit:data-empty", lambda tmp: _fit(FIT_BASE, tmp, _write(tmp, "empty.csv", b"")), ("empty.csv",), "error"),
    Case("fit:data-binary", lambda tmp: _fit(FIT_BASE, tmp, _write(tmp, "noise.dat", _noise(4096))), ("noise.dat",),
         "error"),
    Case("fit:data-all-nan", lambda tmp: _fit(FIT_BASE, tmp, _write(tmp, "nan.csv", b"bias (mV),didv\n"
                                                                + b"".join(b"%g,nan\n" % v for v in FIT_BIAS))),
         ("nan.csv",), "error"),
    Case("fit:data-no-temperature", lambda tmp: _fit(FIT_BASE, tmp, _write(tmp, "not.csv", b"bias (mV),didv\n"
                                                                      + b"".join(b"%g,1\n" % v for v in FIT_BIAS))),
         ("temperature", "not.csv")),
]  # fmt: skip
FIT_CASES = _key_cases("fit", _fit, FIT_BASE, FIT_ERRORS, tables=True) + FIT_OTHER

# ----------------------------------------------------------------------------------------------- files


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _noise(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).bytes(n)


def nanonis_dat(n: int = 41) -> str:
    """A small Nanonis Generic 4.5 bias spectrum, the header keys the readers use, tab-separated."""
    head = [
        ("Experiment", "bias spectroscopy"),
        ("Date", "01.01.2000 00:00:00"),
        ("Bias>Bias (V)", "5E-3"),
        ("Bias Spectroscopy>Sweep Start (V)", "-5E-3"),
        ("Bias Spectroscopy>Sweep End (V)", "5E-3"),
        ("Bias Spectroscopy>Num Pixel", str(n)),
        ("Lock-in>Amplitude", "50E-6"),
        ("Lock-in>Modulated signal", "Bias (V)"),
        ("Lock-in>Frequency (Hz)", "912E+0"),
        ("Z-Controller>Setpoint", "200E-12"),
        ("Z-Controller>Setpoint unit", "A"),
        ("Temperature 1>Temperature 1 (K)", "1.2E+0"),
        ("NanonisMain>SW Version", "Generic 4.5"),
    ]
    lines = [f"{k}\t{v}\t" for k, v in head] + ["", "[DATA]", "Bias calc (V)\tCurrent (A)\tLockIn (V)"]
    for v in np.linspace(-5e-3, 5e-3, n):
        lines.append(f"{v:.6E}\t{1e-8 * v:.6E}\t{1.0 + 0.1 * np.cos(1e3 * v):.6E}")
    return "\n".join(lines) + "\n"


def csv_text(n: int = 41) -> str:
    lines = ["# temperature_K = 1.2", "bias (mV),didv,current (A)"]
    lines += [f"{v:.6g},{1 + 0.1 * v * v:.6g},{1e-9 * v:.6g}" for v in np.linspace(-5, 5, n)]
    return "\n".join(lines) + "\n"


def vert_text(n: int = 41) -> str:
    """A small Createc .VERT: [ParVERT32] header, DATA, a parameter line, rows index, bias (mV), channels."""
    head = ["[ParVERT32]", "BiasVoltage / BiasVolt.[mV]=2000.0", "Vpoint0.V=-5.0", "Vpoint1.V=5.0",
            "LockinFreq=543.00", "SetPoint=1.01E-10", "T-STM:=1.2", "DATA", f"    {n}   0   0   7   0"]  # fmt: skip
    rows = [f"{i}\t{v:.5E}\t{1e3 * v:.5E}\t{1.0 + 0.01 * v * v:.5E}\t" for i, v in enumerate(np.linspace(-5, 5, n))]
    return "\r\n".join(head + rows) + "\r\n"


def grid_3ds(nx: int = 2, ny: int = 2, points: int = 5, dims: str | None = None, extra: str = "") -> bytes:
    """A small Nanonis .3ds grid: key=value header, :HEADER_END:, big-endian float32 pixels."""
    params = ["Sweep Start", "Sweep End", "X (m)"]
    head = [f'Grid dim="{dims or f"{nx} x {ny}"}"', "Filetype=Linear", 'Sweep Signal="Bias (V)"',
            f'Fixed parameters="{";".join(params[:2])}"', f'Experiment parameters="{params[2]}"',
            f"# Parameters (4 byte)={len(params)}", f"Points={points}",
            'Channels="Current (A);LIX 1 omega (A)"', extra, ":HEADER_END:"]  # fmt: skip
    body = b""
    for _ in range(nx * ny):
        values = [-0.005, 0.005, 1e-9] + list(np.linspace(-1e-9, 1e-9, points)) + [1e-12] * points
        body += struct.pack(f">{len(values)}f", *values)
    return ("\r\n".join(h for h in head if h) + "\r\n").encode() + body


def _truncations(raw: bytes) -> dict[str, bytes]:
    n = len(raw)
    out = {f"cut-{int(100 * f)}pct": raw[: int(f * n)] for f in (0.02, 0.1, 0.3, 0.5, 0.8, 0.97)}
    out["cut-last-byte"] = raw[:-1]
    return out


def _text_mutations(text: str, sep: str, didv: int, bias: int) -> dict[str, bytes]:
    """Damaged copies of a text spectrum (``sep``: the column separator of its data rows; ``didv``, ``bias``: the
    columns of dI/dV and bias)."""
    raw = text.encode()
    lines = text.split("\n")
    rows = [i for i, line in enumerate(lines) if line[:1] in "-0123456789" and sep in line]
    first, mid, last = rows[0], rows[len(rows) // 2], rows[-1]

    def with_line(i: int, fn) -> bytes:
        new = list(lines)
        new[i] = fn(new[i])
        return "\n".join(new).encode()

    def field(i: int, j: int, value: str) -> bytes:
        return with_line(i, lambda s: sep.join(value if k == j else f for k, f in enumerate(s.split(sep))))

    out = {
        "empty": b"",
        "whitespace": b" \n\n\t\n",
        "one-newline": b"\n",
        "binary-1k": _noise(1024, 1),
        "binary-64k": _noise(65536, 2),
        "nul-bytes": b"\x00" * 4096,
        "nul-inside": raw[: len(raw) // 2] + b"\x00\x00\x00" + raw[len(raw) // 2 :],
        "utf16-le-bom": text.encode("utf-16"),
        "utf16-be": b"\xfe\xff" + text.encode("utf-16-be"),
        "utf16-le-nobom": text.encode("utf-16-le"),
        "utf8-bom": b"\xef\xbb\xbf" + raw,
        "latin1": text.replace("\n", " \xb5\n", 1).encode("latin-1"),
        "crlf": text.replace("\n", "\r\n").encode(),
        "cr-only": text.replace("\n", "\r").encode(),
        "header-only": "\n".join(lines[:first]).encode(),
        "one-row": "\n".join(lines[: first + 1]).encode(),
        "nan-didv": field(mid, didv, "NaN"),
        "nan-didv-all": "\n".join(
            sep.join("nan" if k == didv else f for k, f in enumerate(line.split(sep))) if i in rows else line
            for i, line in enumerate(lines)
        ).encode(),
        "inf-didv": field(mid, didv, "inf"),
        "overflow-didv": field(mid, didv, "1e400"),
        "nan-bias": field(mid, bias, "NaN"),
        "token": field(mid, didv, "abc"),
        "missing-column": with_line(mid, lambda s: sep.join(s.split(sep)[:2])),
        "extra-column": with_line(mid, lambda s: s.rstrip("\r") + sep + "1.0"),
        "blank-row-inside": with_line(mid, lambda s: ""),
        "duplicate-rows": with_line(mid, lambda s: s + "\n" + s),
        "reversed-rows": "\n".join(lines[:first] + lines[first : last + 1][::-1] + lines[last + 1 :]).encode(),
        "huge-number-line": raw + b"9" * 2_000_000 + b"\n",
        "many-rows": "\n".join(lines[: last + 1] + [lines[mid]] * 100_000).encode(),
    }
    out.update(_truncations(raw))
    return out


READERS = {
    "dat": (nanonis_dat, "\t", 2, 0, {}),
    "csv": (csv_text, ",", 1, 0, {}),
    "vert": (vert_text, "\t", 3, 1, {"channel": "column_3"}),
}


def _read(tmp: Path, name: str, data: bytes, **kwargs):
    return read_spectrum(_write(tmp, name, data), **kwargs)


def _file_cases() -> list[Case]:
    cases = []
    for ext, (make, sep, didv, bias, kwargs) in READERS.items():
        text = make()
        cases.append(Case(f"read:{ext}:pristine", lambda tmp, t=text, e=ext, k=kwargs: _read(tmp, f"ok.{e}",
                                                                                               t.encode(), **k),
                          (), "ok"))  # fmt: skip
        for label, data in _text_mutations(text, sep, didv, bias).items():
            name = f"{label}.{ext}"
            cases.append(Case(f"read:{ext}:{label}", lambda tmp, n=name, d=data, k=kwargs: _read(tmp, n, d, **k),
                              (name,)))  # fmt: skip
    # errors only: the message must name the file
    for label in ("empty", "binary-1k", "nul-bytes", "header-only", "token", "nan-didv-all", "huge-number-line"):
        cases = [dataclasses.replace(c, expect="error") if c.id.endswith(f":{label}") else c for c in cases]
    for label in ("utf16-le-bom", "utf8-bom", "crlf", "latin1", "reversed-rows"):
        cases = [dataclasses.replace(c, expect="ok") if c.id.endswith(f":{label}") and ":vert:" not in c.id else c
                 for c in cases]  # fmt: skip
    cases = [dataclasses.replace(c, expect="ok") if c.id == "read:csv:many-rows" else c for c in cases]
    sparse = Case("read:sparse-64MB", lambda tmp: read_spectrum(_sparse(tmp / "sparse.dat", 64 << 20)),
                  ("sparse.dat",), "error", 30.0)  # fmt: skip
    cases += [
        sparse,
        Case("read:missing", lambda tmp: read_spectrum(tmp / "nothere.dat"), ("nothere.dat",), "error"),
        Case("read:directory", lambda tmp: read_spectrum(_mkdir(tmp / "folder.dat")), ("folder.dat",), "error"),
        Case("read:bad-direction", lambda tmp: _read(tmp, "d.dat", nanonis_dat().encode(), direction="sideways"),
             ("d.dat", "direction"), "error"),
        Case("read:bad-channel", lambda tmp: _read(tmp, "c.dat", nanonis_dat().encode(), channel="nope"),
             ("c.dat", "nope"), "error"),
        Case("read:csv-bad-unit", lambda tmp: _read(tmp, "u.csv", csv_text().encode(), bias_unit="kV"),
             ("u.csv", "bias_unit"), "error"),
        Case("read:grid-as-spectrum", lambda tmp: _read(tmp, "g.3ds", grid_3ds()), ("g.3ds",), "error"),
        Case("read:text-as-grid", lambda tmp: read_grid(_write(tmp, "t.3ds", nanonis_dat().encode())), ("t.3ds",),
             "error"),
    ]  # fmt: skip
    grid = grid_3ds()
    at = grid.index(b":HEADER_END:") + len(b":HEADER_END:\r\n")
    grids = {
        "pristine": (grid, "ok"),
        "no-header-end": (grid[: at - 20], "error"),
        "cut-data": (grid[:-7], "error"),
        "extra-data": (grid + b"\x00" * 8, "error"),
        "empty": (b"", "error"),
        "binary": (_noise(5000, 3), "error"),
        "dims-zero": (grid_3ds(dims="0 x 0"), "either"),
        "dims-huge": (grid_3ds(dims="100000 x 100000"), "error"),
        "dims-garbage": (grid_3ds(dims="two x two"), "error"),
        "points-negative": (grid_3ds().replace(b"Points=5", b"Points=-5"), "error"),
        "points-fraction": (grid_3ds().replace(b"Points=5", b"Points=2.5"), "error"),
        "nparams-str": (grid_3ds().replace(b"(4 byte)=3", b"(4 byte)=abc"), "error"),
        "no-channels": (grid_3ds().replace(b'Channels="Current (A);LIX 1 omega (A)"', b'Channels=""'), "error"),
        "nan-pixels": (grid[:at] + struct.pack(">f", NAN) * ((len(grid) - at) // 4), "either"),
        "utf16-header": (grid[:at].decode().encode("utf-16") + grid[at:], "error"),
    }
    for label, (data, expect) in grids.items():
        name = f"{label}.3ds"
        cases.append(Case(f"grid:{label}", lambda tmp, n=name, d=data: _grid(tmp, n, d), (name,), expect))
    cases.append(Case("grid:partial-dims-huge", lambda tmp: read_grid(_write(tmp, "huge.3ds",
                                                                             grid_3ds(dims="100000 x 100000")),
                                                                      partial=True), ("huge.3ds",), "error", 30.0))
    return cases  # fmt: skip


def _grid(tmp: Path, name: str, data: bytes):
    """The grid's arrays; unmeasured pixels are NaN by design, so then only the counts (flagged in attrs)."""
    ds = read_grid(_write(tmp, name, data))
    if ds.attrs["n_pixels_measured"] < ds.attrs["n_pixels_total"]:
        return {k: ds.attrs[k] for k in ("n_pixels_measured", "n_pixels_total")}
    return {name: ds[name].values for name in ds.data_vars}


def _sparse(path: Path, size: int) -> Path:
    with path.open("wb") as fh:
        fh.truncate(size)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


FILE_CASES = _file_cases()

# -------------------------------------------------------------------------------------------------- API

KGRID = (8, 8)


def _model(**kw):
    return shibajax.models.square(**({"t": 1.0, "mu": -1.0, "delta": 0.3} | kw))


def _imp(**kw):
    imp = shibajax.Impurity(**({"site": (0, 0), "J": 1.0} | kw))
    impurity_potential(imp, _model())  # place it on the one-orbital model (orbital indices, site dimension)
    return {"site": imp.site, "spin": np.asarray(imp.spin), "K": [np.asarray(c.K) for c in imp.channels]}


def _channel(**kw):
    ch = shibajax.Channel(**kw)
    return {"K": np.asarray(ch.K), "J": np.asarray(ch.J)}


def _square(**kw):
    m = _model(**kw)
    return {"hoppings": np.asarray(m.hoppings)}


def _ldos(**kw):
    args = {"model": _model(), "impurities": shibajax.Impurity((0, 0), J=1.0), "positions": [(0, 0)],
            "energies": np.linspace(-0.5, 0.5, 7), "eta": 0.05, "kgrid": KGRID} | kw  # fmt: skip
    return shibajax.ldos(**args)


def _bound_states(**kw):
    args = {"model": _model(), "impurities": shibajax.Impurity((0, 0), J=1.0), "kgrid": KGRID} | kw
    model, imps = args.pop("model"), args.pop("impurities")
    return shibajax.bound_states(model, imps, **args)


API_VALUES = {
    "nan": NAN,
    "inf": INF,
    "str": "x",
    "list": [1.0, 2.0],
    "complex": 1j,
    "table": {"a": 1},
}
SITE_BAD = {"fraction": (0.5, 0), "nan": (NAN, 0), "inf": (INF, 0), "str": "ab", "none": None, "empty": (),
            "nested": [[0, 0]], "3d": (0, 0, 0), "1d": (0,), "complex": (1j, 0)}  # fmt: skip
SPIN_BAD = {"zero": (0, 0, 0), "nan": (NAN, 0, 1), "inf": (INF, 0, 0), "str": "z", "2d": (1, 0), "4d": (1, 0, 0, 0),
            "nested": [[0, 0, 1]], "complex": (1j, 0, 1)}  # fmt: skip
ORBITALS_BAD = {"negative": -1, "fraction": 1.5, "str": "0", "repeat": (0, 0), "empty": (), "out-of-range": 1,
                "nan": NAN, "nested": [[0]]}  # fmt: skip
KGRID_BAD = {"zero": 0, "negative": -8, "fraction": 8.5, "str": "8", "none": None, "1d": (8,), "3d": (8, 8, 8),
             "has-zero": (8, 0), "nan": NAN, "nested": [(8, 8)], "float-tuple": (8.5, 8.0), "complex": 8j}  # fmt: skip


def _api_cases() -> list[Case]:
    c: list[Case] = []
    for label, site in SITE_BAD.items():
        c.append(Case(f"Impurity:site={label}", lambda tmp, s=site: _imp(site=s), ("site",), "error"))
    for name in ("K", "J"):
        for label, value in API_VALUES.items():
            c.append(Case(f"Impurity:{name}={label}", lambda tmp, n=name, v=value: _imp(**{n: v}), (name,), "error"))
            c.append(Case(f"Channel:{name}={label}", lambda tmp, n=name, v=value: _channel(**{n: v}), (name,),
                          "error"))  # fmt: skip
    for label, spin in SPIN_BAD.items():
        c.append(Case(f"Impurity:spin={label}", lambda tmp, s=spin: _imp(spin=s), ("spin",), "error"))
    for name in ("theta", "phi"):
        for label, value in {"nan": NAN, "inf": INF, "str": "x", "list": [0.1, 0.2]}.items():
            c.append(Case(f"Impurity:{name}={label}", lambda tmp, n=name, v=value: _imp(**{n: v}), (name,), "error"))
    for label, orb in ORBITALS_BAD.items():
        c.append(Case(f"Impurity:orbitals={label}", lambda tmp, o=orb: _imp(orbitals=o), ("orbital", "orbitals"),
                      "error"))  # fmt: skip
        c.append(Case(f"Channel:orbitals={label}", lambda tmp, o=orb: _imp(J=None, channels=[shibajax.Channel(
            J=1.0, orbitals=o)]), ("orbital", "orbitals"), "error"))  # fmt: skip
    c += [
        Case("Impurity:spin-and-theta", lambda tmp: _imp(spin=(0, 0, 1), theta=0.3), ("spin", "theta"), "error"),
        Case("Impurity:channels-empty", lambda tmp: _imp(J=None, channels=[]), ("channels",), "error"),
        Case("Impurity:channels-numbers", lambda tmp: _imp(J=None, channels=[1.0]), ("channels",), "error"),
        Case("Impurity:channels-str", lambda tmp: _imp(J=None, channels="abc"), ("channels",), "error"),
        Case("Impurity:channels-and-K", lambda tmp: _imp(channels=[shibajax.Channel(J=1.0)]), ("channels", "K", "J"),
             "error"),
        Case("Impurity:valid", lambda tmp: _imp(K=0.3, J=1.2, spin=(1, 1, 0)), (), "ok"),
        Case("Impurity:valid-theta", lambda tmp: _imp(theta=0.3, phi=1.0), (), "ok"),
        Case("Impurity:huge-J", lambda tmp: _imp(J=1e300), ("J",)),
        Case("Impurity:far-site", lambda tmp: _imp(site=(10**12, 0)), ("site",)),
        Case("Impurity:bool-site", lambda tmp: _imp(site=(True, False)), ("site",)),
    ]  # fmt: skip
    for name in ("t", "mu", "delta", "rashba"):
        for label, value in {**API_VALUES, "none": None}.items():
            c.append(Case(f"square:{name}={label}", lambda tmp, n=name, v=value: _square(**{n: v}), (name,), "error"))
    for label, gap in {"p": "p", "none": None, "number": 1, "upper": "S"}.items():
        c.append(Case(f"square:gap={label}", lambda tmp, g=gap: _square(gap=g), ("gap",), "error"))
    c += [
        Case("square:valid", lambda tmp: _square(rashba=0.4, gap="d"), (), "ok"),
        Case("square:huge-t", lambda tmp: _square(t=1e300), ("t",)),
        Case("triangular:mu=nan", lambda tmp: {"h": np.asarray(shibajax.models.triangular(mu=NAN).hoppings)}, ("mu",),
             "error"),
        Case("triangular:delta=str", lambda tmp: shibajax.models.triangular(delta="x"), ("delta",), "error"),
    ]  # fmt: skip
    energies_bad = {"empty": [], "nan": [0.0, NAN], "inf": [INF], "2d": [[0.0, 0.1]], "str": "abc", "none": None,
                    "complex": [0.1j], "strs": ["0.1"]}  # fmt: skip
    for label, e in energies_bad.items():
        c.append(Case(f"ldos:energies={label}", lambda tmp, e=e: _ldos(energies=e), ("energies",), "error"))
    for label, eta in {"zero": 0.0, "negative": -1.0, "nan": NAN, "inf": INF, "str": "x", "none": None,
                       "list": [0.1, 0.2], "complex": 0.1j}.items():  # fmt: skip
        c.append(Case(f"ldos:eta={label}", lambda tmp, eta=eta: _ldos(eta=eta), ("eta",), "error"))
    for label, pos in {"empty": [], "fraction": [(0.5, 0)], "3d": [(0, 0, 0)], "str": "a", "nan": [[NAN, 0]],
                       "none": None}.items():  # fmt: skip
        c.append(Case(f"ldos:positions={label}", lambda tmp, p=pos: _ldos(positions=p), ("positions",), "error"))
    for label, k in KGRID_BAD.items():
        c.append(Case(f"ldos:kgrid={label}", lambda tmp, k=k: _ldos(kgrid=k), ("kgrid",), "error"))
        c.append(Case(f"bound_states:kgrid={label}", lambda tmp, k=k: _bound_states(kgrid=k), ("kgrid",), "error"))
    for label, chunk in {"zero": 0, "negative": -1, "fraction": 1.5, "str": "x"}.items():
        c.append(Case(f"ldos:chunk_size={label}", lambda tmp, n=chunk: _ldos(chunk_size=n), ("chunk_size",), "error"))
        c.append(Case(f"greens_function:chunk_size={label}", lambda tmp, n=chunk: shibajax.greens_function(
            _model(), [(0, 0)], [0.0, 0.1], eta=0.05, kgrid=KGRID, chunk_size=n), ("chunk_size",), "error"))
    for label, axis in {"zero": (0, 0, 0), "nan": (NAN, 0, 1), "str": "z", "2d": (0, 1)}.items():
        c.append(Case(f"ldos:spin_axis={label}", lambda tmp, a=axis: _ldos(spin_axis=a), ("spin_axis",), "error"))
    for label, imps in {"str": "a", "numbers": [1, 2], "dict": {"J": 1.0}}.items():
        c.append(Case(f"ldos:impurities={label}", lambda tmp, i=imps: _ldos(impurities=i), ("impurities",), "error"))
        c.append(Case(f"bound_states:impurities={label}", lambda tmp, i=imps: _bound_states(impurities=i),
                      ("impurities",), "error"))  # fmt: skip
    c += [
        Case("ldos:valid", lambda tmp: _ldos(), (), "ok", 60.0),
        Case("ldos:valid-bare", lambda tmp: _ldos(impurities=[]), (), "ok", 60.0),
        Case("ldos:impurities-none", lambda tmp: _ldos(impurities=None), ("impurities",), "either", 60.0),
        Case("ldos:scalar-energy", lambda tmp: _ldos(energies=0.1), ("energies",), "either", 60.0),
        Case("ldos:tiny-eta", lambda tmp: _ldos(eta=1e-300), ("eta",), "either", 60.0),
        Case("ldos:delta-zero", lambda tmp: _ldos(model=_model(delta=0.0)), (), "ok", 60.0),
        Case("ldos:impurity-off-lattice-dim", lambda tmp: _ldos(impurities=shibajax.Impurity((0, 0, 0), J=1.0)),
             ("site", "impurity"), "error"),
        Case("ldos:orbital-out-of-range", lambda tmp: _ldos(impurities=shibajax.Impurity((0, 0), J=1.0, orbitals=3)),
             ("orbital", "orbitals"), "error"),
    ]  # fmt: skip
    for name, values in {
        "edge_margin": {"negative": -0.5, "one": 1.0, "nan": NAN, "str": "x"},
        "tol": {"zero": 0.0, "negative": -1e-9, "nan": NAN, "str": "x"},
        "degeneracy_tol": {"negative": -1.0, "nan": NAN},
        "chunk_size": {"zero": 0, "negative": -1, "fraction": 1.5, "str": "x"},
    }.items():
        for label, value in values.items():
            c.append(Case(f"bound_states:{name}={label}", lambda tmp, n=name, v=value: _bound_states(**{n: v}),
                          (name,), "error"))  # fmt: skip
    c += [
        Case("bound_states:valid", lambda tmp: _bound_states(), (), "ok", 60.0),
        Case("bound_states:delta-zero", lambda tmp: _bound_states(model=_model(delta=0.0)), ("gap", "delta"), "error",
             60.0),
        # d-wave nodes fall between the points of the 8 x 8 grid: the 8 x 8 periodic lattice has a gap
        Case("bound_states:d-wave", lambda tmp: _bound_states(model=_model(gap="d")), ("gap", "nodes"), "either", 60.0),
        Case("bound_states:bare-none", lambda tmp: _bound_states(impurities=None), ("impurities",), "error"),
        Case("bound_states:band-insulator", lambda tmp: _bound_states(model=_model(mu=-10.0)), ("mu", "gap"),
             "either", 60.0),
        Case("bound_states:huge-J", lambda tmp: _bound_states(impurities=shibajax.Impurity((0, 0), J=1e12)), ("J",),
             "either", 60.0),
        Case("bound_states:huge-K", lambda tmp: _bound_states(impurities=shibajax.Impurity((0, 0), K=1e300, J=1.0)),
             ("K",), "either", 60.0),
        Case("bound_states:same-site-twice",
             lambda tmp: _bound_states(impurities=[shibajax.Impurity((0, 0), J=1.0)] * 2), ("site", "impurities"),
             "either", 60.0),
    ]  # fmt: skip
    return c


API_CASES = _api_cases()

# ----------------------------------------------------------------------------------- config files, CLI

TOML_FILES = {
    "empty": b"",
    "binary": _noise(2048, 4),
    "utf16": '[model]\nmu = -0.8\n'.encode("utf-16"),
    "truncated": b'[model]\nmu = -0.',
    "bad-syntax": b"[model\nmu = 1\n",
    "nan": b"[model]\nmu = nan\n",
    "inf": b"kgrid = inf\n",
    "duplicate-key": b"kgrid = 8\nkgrid = 9\n",
    "nul": b"kgrid = 8\x00\n",
    "huge-array": b"[sweep]\nJ = [" + b",".join(b"%d.0" % i for i in range(200_000)) + b"]\n",
}  # fmt: skip


def _toml_case(kind: str, label: str, data: bytes) -> Case:
    name = f"{label}.toml"

    def run(tmp: Path):
        config = load_toml(_write(tmp, name, data))
        if kind == "demo":
            return _demo(config)
        if kind == "sweep":
            return sweep.resolve_config(config)
        return _fit(config, tmp)

    expect = "ok" if (label == "empty" and kind == "demo") else "either"
    if label in ("binary", "truncated", "bad-syntax", "nan", "inf", "duplicate-key", "nul"):
        expect = "error"
    names = (name, "mu", "model.mu", "kgrid", "sweep.J", "params", "model") if label != "binary" else (name,)
    return Case(f"toml:{kind}:{label}", run, names, expect, 30.0)


def _cli(args: list[str]):
    """``shibajax ARGS`` in-process: (exit status, stderr). A ShibajaxError becomes status 2 and 'error: ...';
    argparse's usage errors exit with 2; anything else propagates (a raw traceback: the case fails)."""
    from shibajax.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(args)
        except SystemExit as exc:
            status = exc.code
    if status == 2:
        raise _CliError(err.getvalue())
    return {"status": status}


class _CliError(ShibajaxError):
    """The command line's exit status 2 with its message (a clear error when the message names the input)."""


def _cli_cases() -> list[Case]:
    good_sweep = b"kgrid = 4\n[sweep]\nJ = [1.0, 2.0]\n"
    cases = [
        Case("cli:demo-kgrid-str", lambda tmp: _cli(["demo", "--kgrid", "abc"]), ("--kgrid",), "error"),
        Case("cli:demo-kgrid-zero", lambda tmp: _cli(["demo", "--kgrid", "0"]), ("--kgrid",), "error"),
        Case("cli:demo-kgrid-negative", lambda tmp: _cli(["demo", "--kgrid", "-3"]), ("--kgrid",), "error"),
        Case("cli:demo-config-missing", lambda tmp: _cli(["demo", "--config", str(tmp / "no.toml")]), ("no.toml",),
             "error"),
        Case("cli:demo-config-folder", lambda tmp: _cli(["demo", "--config", str(_mkdir(tmp / "cfg.toml"))]),
             ("cfg.toml",), "error"),
        Case("cli:demo-config-binary", lambda tmp: _cli(["demo", "--config", str(_write(tmp, "b.toml", _noise(999)))]),
             ("b.toml",), "error"),
        Case("cli:sweep-missing", lambda tmp: _cli(["sweep", str(tmp / "no.toml")]), ("no.toml",), "error"),
        Case("cli:sweep-chunk-zero", lambda tmp: _cli(["sweep", str(_write(tmp, "s.toml", good_sweep)), "--chunk",
                                                       "0"]), ("--chunk",), "error"),
        Case("cli:sweep-chunk-str", lambda tmp: _cli(["sweep", str(_write(tmp, "s.toml", good_sweep)), "--chunk",
                                                      "x"]), ("--chunk",), "error"),
        Case("cli:sweep-out-is-folder", lambda tmp: _cli(["sweep", str(_write(tmp, "s.toml", b"kgrid = [4, 0]\n")),
                                                          "--out", str(_mkdir(tmp / "out.nc"))]),
             ("kgrid", "out.nc"), "error"),
        Case("cli:fit-no-config", lambda tmp: _cli(["fit", str(_fit_data(tmp))]), ("--config",), "error"),
        Case("cli:fit-config-binary", lambda tmp: _cli(["fit", str(_fit_data(tmp)), "--config",
                                                        str(_write(tmp, "f.toml", _noise(500, 5)))]),
             ("f.toml",), "error"),
        Case("cli:fit-data-binary", lambda tmp: _cli(["fit", str(_write(tmp, "x.dat", _noise(3000, 6))), "--config",
                                                      str(REPO / "examples" / "fit_mnpc.toml")]), ("x.dat",), "error"),
        Case("cli:unknown-command", lambda tmp: _cli(["frobnicate"]), ("frobnicate",), "error"),
        Case("cli:no-command", lambda tmp: _cli([]), ("usage", "shibajax"), "error"),
        Case("cli:deconvolve-missing", lambda tmp: _cli(["deconvolve", str(tmp / "none.dat"), "--tip",
                                                         "dynes:delta=1.3,gamma=0.02", "--temperature", "1.2",
                                                         "--energies=-3:3:0.1"]),
             ("none.dat",), "error"),
        Case("cli:convolve-bad-tip", lambda tmp: _cli(["convolve", "--tip", "dynes:delta=abc", "--sample",
                                                       "dynes:delta=1.3,gamma=0.01", "--temperature", "1.2"]),
             ("delta", "--tip", "tip"), "error"),
        Case("cli:convolve-nan-temperature", lambda tmp: _cli(["convolve", "--tip", "dynes:delta=1.3,gamma=0.02",
                                                               "--sample", "dynes:delta=1.3,gamma=0.01",
                                                               "--temperature", "nan"]),
             ("temperature", "--temperature"), "error"),
    ]  # fmt: skip
    return cases


CONFIG_FILE_CASES = [_toml_case(k, label, d) for k in ("demo", "sweep", "fit") for label, d in TOML_FILES.items()]
CLI_CASES = _cli_cases()

ALL_CASES = DEMO_CASES + SWEEP_CASES + FIT_CASES + FILE_CASES + API_CASES + CONFIG_FILE_CASES + CLI_CASES + DEMO_RUNS


def test_the_table_is_large_and_unique():
    ids = [c.id for c in ALL_CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    assert len(ids) >= 300, len(ids)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("index", range(len(ALL_CASES)), ids=[c.id for c in ALL_CASES])
def test_fuzz(index, fuzz_dir):
    case = ALL_CASES[index]
    folder = fuzz_dir / f"case{index}"  # one folder per case (cheaper than the tmp_path fixture, ~900 times)
    folder.mkdir()
    check_case(case, folder)


# ------------------------------------------------------------------------------ a few real command lines


def _shibajax(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shibajax", *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def test_cli_subprocess_rejects_a_binary_config_and_a_truncated_spectrum(tmp_path):
    """The real entry point: exit status 2, one 'error:' line naming the file, no traceback (two runs)."""
    toml = _write(tmp_path, "garbage.toml", _noise(700, 7))
    run = _shibajax(["demo", "--kgrid", "8", "--config", str(toml)], tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "error:" in run.stderr and "garbage.toml" in run.stderr, run.stderr
    data = _write(tmp_path, "cut.dat", nanonis_dat().encode()[:900])
    cfg = _write(tmp_path, "fit.toml", b"[host]\nkgrid = 8\n[params]\nK_0 = 1.0\nJ_0 = 10.0\n")
    run = _shibajax(["fit", str(data), "--config", str(cfg), "--out", str(tmp_path / "fit")], tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "cut.dat" in run.stderr, run.stderr


# ------------------------------------------------------------------------------------ the checks themselves


def test_the_checks_can_fail(tmp_path):
    """A raw exception, a NaN result, an error that names nothing, an accepted bad input: each fails its case."""

    def raise_(err):
        raise err

    with pytest.raises(pytest.fail.Exception, match="raw ZeroDivisionError"):
        check_case(Case("zero", lambda tmp: 1 / 0, ()), tmp_path)
    with pytest.raises(AssertionError, match="non-finite"):
        check_case(Case("nan", lambda tmp: {"x": [1.0, NAN]}, ()), tmp_path)
    with pytest.raises(AssertionError, match="does not name"):
        check_case(Case("unnamed", lambda tmp: raise_(ShibajaxError("bad value")), ("kgrid",)), tmp_path)
    with pytest.raises(AssertionError, match="accepted"):
        check_case(Case("accepted", lambda tmp: {"x": 1.0}, ("kgrid",), "error"), tmp_path)
    check_case(Case("named", lambda tmp: raise_(ShibajaxError("model.kgrid must be > 0")), ("model.kgrid",)), tmp_path)


def test_the_guard_stops_a_hang_and_a_huge_allocation():
    with pytest.raises(CaseTimeout), guard(0.2):
        while True:
            pass
    if jax.default_backend() != "cpu" or not _address_space():
        pytest.skip("the address-space cap is applied on CPU under Linux only")
    with pytest.raises(MemoryError), guard(10.0):
        np.empty(_MEMORY_HEADROOM // 8 * 2)  # twice the headroom (untouched pages: only the cap refuses it)
