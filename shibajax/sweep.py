"""Parameter sweeps of Shiba energies: a grid of configurations, evaluated in sharded vmapped chunks, to NetCDF.

A sweep is a model, an impurity configuration and named parameters on a grid (the Cartesian product of 1D value
lists). A config (the content of a TOML file) reads::

    kgrid = 16                  # an L x L grid, or [Lx, Ly]

    [model]                     # the square lattice, shibajax.models.square
    t = 1.0
    mu = -1.0
    delta = 0.3
    rashba = 0.0
    gap = "s"                   # "s", "s+-", "d" or "d+id"

    [impurity]
    kind = "dimer"              # impurities at (0, 0) and at `separation`, spins at `angle` (degrees)
    separation = [2, 0]
    angle = 0.0
    K = 0.0
    J = 1.5
    # kind = "chain": n sites at (j * spacing, 0), a spin spiral of `pitch` degrees between neighbours

    [sweep]                     # parameter -> list of values; the grid is their Cartesian product
    angle = [0.0, 90.0, 180.0]
    rashba = [0.0, 0.4]

Sweepable parameters: ``t, mu, delta, rashba`` (model), ``K, J`` and ``angle`` (dimer) or ``pitch`` (chain), and
the shape-changing ``separation`` (dimer; a list of [dx, dy] vectors) or ``n`` and ``spacing`` (chain; positive
integers). Values in ``[sweep]`` replace the fixed value of the same name. Angles are in degrees (the spins turn
in the x-z plane, from +z towards +x, see :func:`shibajax.clusters.spiral_spins`); energies are in the unit of
the model's parameters (t = 1 by default, docs/conventions.md).

Evaluation. Configurations that share the impurity geometry (same separation, or same n and spacing) form a
group: :func:`run_sweep` loops over groups in Python and, inside a group, over chunks of at most ``chunk``
configurations. Each chunk is ONE call of a jitted ``jax.shard_map`` of :func:`shibajax.bound_state_energies`
lifted over the flattened parameter sets, with the batch sharded along its only axis over all devices
(``Mesh(jax.devices(), ("batch",))``, ``P("batch")``; the chunk is padded to a multiple of the device count by
repeating its last point). Each device works on its own slice with no communication; inside a device the points
are vmapped on accelerators and mapped one by one (``jax.lax.map``) on CPU (see :func:`_batched` for why). The
jitted function is cached per group shape and mesh, so a chunk costs one compilation per group and run.

Results are an :class:`xarray.Dataset` with one dimension per swept parameter (in ``[sweep]`` order) and
``state``: ``energy`` (NaN-padded, ascending), ``multiplicity``, ``n_states``, ``gap_edge``, ``has_gap``,
``converged`` and ``done`` (the point was computed), the resolved config as a JSON string in
``attrs["config"]``. After every chunk the whole dataset is written to ``out_path`` atomically (a temporary
file, then ``os.replace``), so a sweep killed midway loses no finished point, and :func:`run_sweep` on the
partial file computes only the points not yet ``done`` (after checking that its config equals the file's).

Several hosts (``jax.distributed``). The same code runs on a multi-host cluster: call
``jax.distributed.initialize()`` in every process before :func:`run_sweep` (on SLURM or Cloud TPU it finds the
coordinator itself; otherwise pass ``coordinator_address``, ``num_processes`` and ``process_id``). Every process
then reads the same config and runs :func:`run_sweep`; ``jax.devices()`` lists the devices of all hosts, so the
mesh is global and each chunk is split over every device of the cluster. Inputs are built with
``jax.make_array_from_callback`` (each process fills only its addressable shards), results are gathered with
``jax.experimental.multihost_utils.process_allgather``, and only the process with ``jax.process_index() == 0``
writes (and reads back for resuming) the NetCDF file; the others hold the same arrays in memory. Put
``out_path`` on a file system that process 0 can write, and start every process with the same ``chunk``.

Example:
    >>> from shibajax.sweep import resolve_config
    >>> cfg = resolve_config({"kgrid": 8, "sweep": {"J": [1.0, 2.0], "angle": [0.0, 90.0]}})
    >>> cfg["kgrid"], list(cfg["sweep"])
    ([8, 8], ['J', 'angle'])
"""

from __future__ import annotations

import copy
import functools
import json
import math
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from shibajax._files import write_netcdf_atomic
from shibajax.bound_states import bound_state_energies
from shibajax.clusters import chain_sites, impurities_at, spiral_spins
from shibajax.config import ConfigError, check_keys, load_toml, number, positive_int
from shibajax.models import square

#: Default configuration; a config overrides any of it (same names and nesting).
DEFAULTS: dict[str, Any] = {
    "kgrid": [16, 16],
    "model": {"name": "square", "t": 1.0, "mu": -1.0, "delta": 0.3, "rashba": 0.0, "gap": "s"},
    "impurity": {"kind": "dimer", "K": 0.0, "J": 1.5},
    "sweep": {},
}
#: Defaults of each impurity kind (beyond K and J).
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "dimer": {"separation": [2, 0], "angle": 0.0},
    "chain": {"n": 4, "spacing": 1, "pitch": 0.0},
}
MODEL_PARAMS = ("t", "mu", "delta", "rashba")
#: Continuous parameters of each impurity kind (vmapped) and the shape-changing ones (grouped).
CONTINUOUS = {"dimer": ("K", "J", "angle"), "chain": ("K", "J", "pitch")}
SHAPE = {"dimer": ("separation",), "chain": ("n", "spacing")}
GAPS = ("s", "s+-", "d", "d+id")
#: Default number of configurations per chunk.
DEFAULT_CHUNK = 256
ENERGY_UNIT = "energy unit of the model (the unit of t, mu, delta, K, J; t = 1 by default)"


SweepConfigError = ConfigError  # one error class for every configuration


def check_chunk(value, key: str = "chunk") -> int:
    """A chunk size: a positive integer (else :class:`SweepConfigError` naming ``key``)."""
    return positive_int(value, key)


def _separation(value, key: str) -> list[int]:
    ok = isinstance(value, list) and len(value) == 2
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok:
        raise SweepConfigError(f"{key} must be two integers [dx, dy]; got {value!r}")
    if value == [0, 0]:
        raise SweepConfigError(f"{key} must be nonzero: the two impurities of a dimer sit on different sites")
    return [int(v) for v in value]


def _value(key: str, value, where: str):
    """Check one (fixed or swept) parameter value."""
    if key == "separation":
        return _separation(value, where)
    if key in ("n", "spacing"):
        return positive_int(value, where)
    return number(value, where)


def resolve_config(config: dict | None = None) -> dict:
    """Merge a user config (e.g. a parsed TOML file) into :data:`DEFAULTS`, checking every key and value.

    An unknown key or a value of the wrong kind raises :class:`SweepConfigError` naming it.
    """
    config = {} if config is None else config
    check_keys(config, DEFAULTS, "")
    out = copy.deepcopy(DEFAULTS)
    if "kgrid" in config:
        k = config["kgrid"]
        if isinstance(k, list):
            if len(k) != 2:
                raise SweepConfigError(f"kgrid must be an integer L or a list [Lx, Ly]; got {k!r}")
            out["kgrid"] = [positive_int(v, "kgrid") for v in k]
        else:
            out["kgrid"] = [positive_int(k, "kgrid")] * 2

    model_in = config.get("model", {})
    check_keys(model_in, DEFAULTS["model"], "model")
    model = out["model"]
    if model_in.get("name", "square") != "square":
        raise SweepConfigError(f"model.name must be 'square' (the only sweep model); got {model_in['name']!r}")
    if "gap" in model_in:
        if model_in["gap"] not in GAPS:
            raise SweepConfigError(f"model.gap must be one of {', '.join(GAPS)}; got {model_in['gap']!r}")
        model["gap"] = model_in["gap"]
    for key in MODEL_PARAMS:
        if key in model_in:
            model[key] = number(model_in[key], f"model.{key}")

    imp_in = config.get("impurity", {})
    if not isinstance(imp_in, dict):
        raise SweepConfigError(f"impurity must be a table; got {imp_in!r}")
    kind = imp_in.get("kind", "dimer")
    if not isinstance(kind, str) or kind not in KIND_DEFAULTS:
        raise SweepConfigError(f"impurity.kind must be one of {', '.join(KIND_DEFAULTS)}; got {kind!r}")
    imp = {"kind": kind, "K": DEFAULTS["impurity"]["K"], "J": DEFAULTS["impurity"]["J"], **KIND_DEFAULTS[kind]}
    check_keys(imp_in, imp, "impurity")
    for key, value in imp_in.items():
        if key != "kind":
            imp[key] = _value(key, value, f"impurity.{key}")
    out["impurity"] = imp

    sweep_in = config.get("sweep", {})
    allowed = MODEL_PARAMS + CONTINUOUS[kind] + SHAPE[kind]
    check_keys(sweep_in, allowed, "sweep")
    for key, values in sweep_in.items():
        if not isinstance(values, list) or not values:
            raise SweepConfigError(f"sweep.{key} must be a non-empty list of values; got {values!r}")
        checked = [_value(key, v, f"sweep.{key}[{i}]") for i, v in enumerate(values)]
        if len({json.dumps(v) for v in checked}) != len(checked):
            raise SweepConfigError(f"sweep.{key} repeats a value: {values!r}")
        out["sweep"][key] = checked
    return out


load_config = load_toml


def _config_json(cfg: dict) -> str:
    return json.dumps(cfg, sort_keys=True)


# ------------------------------------------------------------------------------------------- evaluation


def _point(params: dict, *, kind: str, shape: tuple, kgrid: tuple, gap: str):
    """Bound states of one configuration (all parameters scalars, possibly tracers)."""
    model = square(t=params["t"], mu=params["mu"], delta=params["delta"], rashba=params["rashba"], gap=gap)
    if kind == "dimer":
        (sep,) = shape
        sites = np.array([[0, 0], list(sep)])
        spins = spiral_spins(2, jnp.deg2rad(params["angle"]))
    else:
        n, spacing = shape
        sites = chain_sites(n, direction=(spacing, 0))
        spins = spiral_spins(n, jnp.deg2rad(params["pitch"]))
    impurities = impurities_at(sites, spins, K=params["K"], J=params["J"])
    return bound_state_energies(model, impurities, kgrid=kgrid)


@functools.lru_cache(maxsize=64)
def _batched(kind: str, shape: tuple, kgrid: tuple, gap: str, mesh):
    """The compiled chunk function of one group: ``shard_map`` over ``mesh`` of a map of :func:`_point`.

    Every device evaluates its own slice of the batch with no communication between devices. A plain ``jit`` of
    the vmap over a sharded batch makes XLA all-reduce the stopping condition of the batched Newton
    ``while_loop`` across devices at every step (one synchronisation per iteration). Inside a device, points are
    lifted with ``jax.vmap`` on accelerators and with ``jax.lax.map`` (one point after the other) on CPU: on
    CPU a vmapped chunk gains nothing (the vmapped loop runs until its slowest point converges) and its large
    batched LAPACK ``eigh`` calls can deadlock jaxlib 0.10's CPU thread pool when several (simulated) devices
    run at once (each pool thread waits for batch sub-tasks queued behind it). ``mesh=None``: one device, no
    sharding. Cached per group and mesh, so a run compiles once per group and chunk size.
    """
    point = partial(_point, kind=kind, shape=shape, kgrid=kgrid, gap=gap)
    devices = jax.devices() if mesh is None else list(mesh.devices.flat)
    if devices[0].platform == "cpu":

        def local(params):
            return jax.lax.map(point, params)

    else:
        local = jax.vmap(point)
    if mesh is None:
        return jax.jit(local)
    spec = jax.sharding.PartitionSpec("batch")
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec,), out_specs=spec, check_vma=False))


def _evaluate(params: dict, *, kind: str, shape: tuple, kgrid: tuple, gap: str, mesh=None):
    """One chunk: every parameter array is (batch,), sharded along ``mesh``'s ``batch`` axis (or None: one
    device); returns a :class:`shibajax.bound_states.BoundStateBatch` of (batch, ...) arrays."""
    return _batched(kind, shape, kgrid, gap, mesh)(params)


def _shape_key(kind: str, values: dict) -> tuple:
    if kind == "dimer":
        return (tuple(values["separation"]),)
    return (int(values["n"]), int(values["spacing"]))


class _Grid:
    """The flattened sweep grid: the parameter values of every point, grouped by impurity geometry."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.kind = cfg["impurity"]["kind"]
        self.names = list(cfg["sweep"])
        self.values = [cfg["sweep"][k] for k in self.names]
        self.shape = tuple(len(v) for v in self.values)
        self.size = math.prod(self.shape)
        fixed = {**{k: cfg["model"][k] for k in MODEL_PARAMS}, **cfg["impurity"]}
        index = np.indices(self.shape).reshape(len(self.shape), -1) if self.shape else np.zeros((0, 1), int)
        self.continuous = {}
        for key in MODEL_PARAMS + CONTINUOUS[self.kind]:
            if key in self.names:
                axis = self.names.index(key)
                self.continuous[key] = np.asarray(self.values[axis], np.float64)[index[axis]]
            else:
                self.continuous[key] = np.full(self.size, fixed[key], np.float64)
        keys = []
        for flat in range(self.size):
            point = dict(fixed)
            for axis, key in enumerate(self.names):
                if key in SHAPE[self.kind]:
                    point[key] = self.values[axis][index[axis, flat]]
            keys.append(_shape_key(self.kind, point))
        self.groups: dict[tuple, np.ndarray] = {}
        for key in dict.fromkeys(keys):
            self.groups[key] = np.array([i for i, k in enumerate(keys) if k == key], dtype=np.int64)

    def n_states(self) -> int:
        """Size of the ``state`` axis: the largest R = n_imp * Nambu dimension over the groups."""
        kgrid = tuple(self.cfg["kgrid"])
        params = {k: jax.ShapeDtypeStruct((1,), jnp.float64) for k in self.continuous}
        sizes = []
        for key in self.groups:
            kw = {"kind": self.kind, "shape": key, "kgrid": kgrid, "gap": self.cfg["model"]["gap"]}
            sizes.append(jax.eval_shape(jax.vmap(partial(_point, **kw)), params).energies.shape[1])
        return max(sizes)


def _empty_dataset(grid: _Grid, n_state: int):
    import xarray as xr

    dims = tuple(grid.names)
    shape = grid.shape
    cfg = grid.cfg
    coords: dict[str, Any] = {}
    for key, values in zip(grid.names, grid.values, strict=True):
        if key == "separation":
            coords[key] = ("separation", np.arange(len(values)), {"long_name": "index of the dimer separation"})
            coords["separation_vector"] = (
                ("separation", "xy"),
                np.asarray(values, np.int64),
                {"long_name": "lattice vector from the first impurity to the second"},
            )
        else:
            units = {"angle": "degree", "pitch": "degree", "n": "1", "spacing": "lattice constant"}.get(key, "")
            coords[key] = (key, np.asarray(values), {"units": units or ENERGY_UNIT})
    coords["state"] = ("state", np.arange(n_state))

    def full(value, dtype, extra=()):
        return np.full(shape + extra, value, dtype)

    data = {
        "energy": (dims + ("state",), full(np.nan, np.float64, (n_state,)), {"units": ENERGY_UNIT}),
        "multiplicity": (dims + ("state",), full(0, np.int32, (n_state,)), {"units": "1"}),
        "n_states": (dims, full(0, np.int32), {"units": "1", "long_name": "bound states found (with multiplicity)"}),
        "gap_edge": (dims, full(np.nan, np.float64), {"units": ENERGY_UNIT}),
        "has_gap": (
            dims,
            full(False, bool),
            {
                "long_name": "the host (infinite lattice) has a full gap: False for delta = 0 and for nodes on the "
                "Fermi surface, even where the k-grid misses them (then no states)"
            },
        ),
        "converged": (dims, full(False, bool), {"long_name": "every root met the tolerance"}),
        "done": (dims, full(False, bool), {"long_name": "the point has been computed"}),
    }
    data["energy"][2]["long_name"] = "Shiba energies, ascending, NaN-padded"
    attrs = {
        "title": "shibajax sweep: Shiba bound-state energies",
        "config": _config_json(cfg),
        "energy_unit": ENERGY_UNIT,
        "model": f"square[{cfg['model']['gap']}]",
        "impurity_kind": grid.kind,
        "kgrid": list(cfg["kgrid"]),
    }
    from shibajax import __version__

    attrs["shibajax_version"] = __version__
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def _open_existing(path: Path, config_json: str):
    import xarray as xr

    try:
        with xr.open_dataset(path) as stored_ds:
            ds = stored_ds.load()
    except Exception as err:  # noqa: BLE001  (any unreadable file is an input error here)
        raise SweepConfigError(f"cannot resume from {str(path)!r}: not a readable NetCDF file ({err})") from err
    stored = ds.attrs.get("config")
    if stored is None or "done" not in ds:
        raise SweepConfigError(f"cannot resume from {str(path)!r}: it is not a shibajax sweep file")
    if stored != config_json:
        diff = _differences(json.loads(stored), json.loads(config_json))
        raise SweepConfigError(
            f"cannot resume: {str(path)!r} was written by a different sweep config (differs in "
            f"{', '.join(diff) or 'its layout'}); delete the file or write to another --out"
        )
    for name in ("has_gap", "converged", "done"):
        ds[name] = ds[name].astype(bool)
    return ds


_STATE = ("energy", "multiplicity", "n_states", "gap_edge", "has_gap", "converged", "done")


def _initial_dataset(path: Path, grid: _Grid, config_json: str, writer: bool):
    """The dataset to fill: the partial file to resume (its config checked) or a new empty one, written at once.

    Only process 0 (the writer) touches the file. In a multi-process run (``jax.distributed``) it then broadcasts
    its state (the ``done`` mask and every result so far) to the other processes, so that all of them split the
    remaining points identically and no process needs to see the file (nor a shared file system), and an error
    of process 0 (a foreign or unreadable file, an unwritable folder) stops every process instead of leaving the
    others waiting in a collective.
    """
    error = None
    ds = None
    if writer:
        try:
            if path.exists():
                ds = _open_existing(path, config_json)
            else:
                ds = _empty_dataset(grid, grid.n_states())
                path.parent.mkdir(parents=True, exist_ok=True)
                write_netcdf_atomic(ds, path)
        except (OSError, SweepConfigError) as err:
            error = err
    if jax.process_count() == 1:
        if error is not None:
            if isinstance(error, OSError):
                raise SweepConfigError(f"cannot write the sweep file {str(path)!r}: {error}") from error
            raise error
        return ds
    from jax.experimental import multihost_utils

    failed = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if failed:
        if error is not None and not isinstance(error, OSError):
            raise error
        raise SweepConfigError(
            f"process 0 could not open or create the sweep file {str(path)!r}"
            + (f": {error}" if error is not None else "; its error message says why")
        )
    if ds is None:
        ds = _empty_dataset(grid, grid.n_states())
    state = {name: np.asarray(ds[name].values, np.float64) for name in _STATE}
    state = multihost_utils.broadcast_one_to_all(state)
    for name in _STATE:
        ds[name].values[...] = np.asarray(state[name]).astype(ds[name].dtype)
    return ds


def _sharded(host: np.ndarray, sharding):
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _to_host(x) -> np.ndarray:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def run_sweep(config: dict, out_path, *, chunk: int = DEFAULT_CHUNK, progress: bool = True, on_chunk=None):
    """Run a sweep (or resume a partial one) and write it to the NetCDF file ``out_path``.

    Args:
        config: the sweep config (a parsed TOML file; see the module docstring), checked by
            :func:`resolve_config`.
        out_path: NetCDF file, rewritten atomically after every chunk. If it exists, it must hold the same
            config and only its points not yet ``done`` are computed.
        chunk: configurations per vmapped call (rounded up to a multiple of the device count).
        progress: show a tqdm progress bar (only when stderr is a terminal).
        on_chunk: called as ``on_chunk(chunks_done, points_done)`` after each chunk has been written (a hook
            for tests and logging; an exception raised there stops the sweep with the file consistent).

    Returns:
        The complete :class:`xarray.Dataset` (also written to ``out_path``).
    """
    from tqdm.auto import tqdm

    chunk = positive_int(chunk, "chunk")
    cfg = resolve_config(config)
    path = Path(out_path)
    if path.exists() and path.is_dir():
        raise SweepConfigError(f"output path {str(path)!r} is a folder; give a file name such as sweep.nc")
    writer = jax.process_index() == 0
    grid = _Grid(cfg)
    ds = _initial_dataset(path, grid, _config_json(cfg), writer)
    n_state = ds.sizes["state"]
    done_flat = ds["done"].values.reshape(-1).copy()
    columns = {
        name: ds[name].values.reshape((grid.size, -1) if name in ("energy", "multiplicity") else (grid.size,)).copy()
        for name in ("energy", "multiplicity", "n_states", "gap_edge", "has_gap", "converged")
    }

    devices = jax.devices()
    mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    n_dev = len(devices)
    kgrid = tuple(cfg["kgrid"])
    bar = tqdm(
        total=grid.size,
        initial=int(done_flat.sum()),
        unit="config",
        desc="sweep",
        disable=not (progress and sys.stderr.isatty()),
    )
    chunks_done = 0
    try:
        for key, members in grid.groups.items():
            todo = members[~done_flat[members]]
            if todo.size == 0:
                continue
            size = -(-min(chunk, members.size) // n_dev) * n_dev  # fixed per group: one compilation
            for start in range(0, todo.size, size):
                idx = todo[start : start + size]
                padded = np.concatenate([idx, np.full(size - idx.size, idx[-1])])
                params = {k: _sharded(v[padded], sharding) for k, v in grid.continuous.items()}
                batch = _evaluate(params, kind=grid.kind, shape=key, kgrid=kgrid, gap=cfg["model"]["gap"], mesh=mesh)
                r = batch.energies.shape[1]
                n = idx.size
                energies = np.full((n, n_state), np.nan)
                energies[:, :r] = _to_host(batch.energies)[:n]
                mult = np.zeros((n, n_state), np.int32)
                mult[:, :r] = _to_host(batch.multiplicity)[:n]
                columns["energy"][idx] = energies
                columns["multiplicity"][idx] = mult
                columns["n_states"][idx] = _to_host(batch.n_states)[:n]
                columns["gap_edge"][idx] = _to_host(batch.gap_edge)[:n]
                columns["has_gap"][idx] = _to_host(batch.has_gap)[:n]
                columns["converged"][idx] = _to_host(batch.converged)[:n]
                done_flat[idx] = True
                for name, col in columns.items():
                    ds[name].values[...] = col.reshape(ds[name].shape)
                ds["done"].values[...] = done_flat.reshape(ds["done"].shape)
                if writer:
                    write_netcdf_atomic(ds, path)
                chunks_done += 1
                bar.update(n)
                if on_chunk is not None:
                    on_chunk(chunks_done, int(done_flat.sum()))
    finally:
        bar.close()
    return ds


def summary(ds, path, seconds: float) -> str:
    """The report ``shibajax sweep`` prints."""
    cfg = json.loads(ds.attrs["config"])
    dims = ", ".join(f"{k} ({ds.sizes[k]})" for k in cfg["sweep"]) or "a single point"
    n = int(ds["done"].size)
    found = int((ds["n_states"].values > 0).sum())
    lines = [
        f"shibajax sweep: {ds.attrs['model']} with a {cfg['impurity']['kind']}, k-grid "
        f"{cfg['kgrid'][0]} x {cfg['kgrid'][1]}",
        f"  grid: {dims} = {n} configurations on {len(jax.devices())} device(s)",
        f"  points with bound states: {found} of {n}; not converged: {int((~ds['converged'].values).sum())}; "
        f"gapless: {int((~ds['has_gap'].values).sum())}",
        f"  wrote {path} in {seconds:.2f} s",
    ]
    return "\n".join(lines)


def output_path(config_path, out_path=None) -> Path:
    """Where ``shibajax sweep CONFIG [--out FILE]`` writes: FILE, or CONFIG's stem + ``.nc`` here."""
    return Path(out_path) if out_path is not None else Path(Path(config_path).stem + ".nc")


def initialize_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Join a multi-process run (``jax.distributed.initialize``); call before any other JAX work.

    On SLURM, Open MPI or Kubernetes the three arguments may be None (JAX detects them); elsewhere give them (or
    set ``JAX_COORDINATOR_ADDRESS``). CPU processes exchange results through gloo, JAX's CPU collectives.
    """
    if num_processes is not None and num_processes < 1:
        raise SweepConfigError(f"--num-processes must be a positive integer; got {num_processes}")
    if process_id is not None and (process_id < 0 or (num_processes is not None and process_id >= num_processes)):
        raise SweepConfigError(f"--process-id must be in 0 .. num_processes - 1; got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    except (RuntimeError, ValueError) as err:
        raise SweepConfigError(
            f"cannot join the multi-process run ({err}); outside SLURM/Open MPI/Kubernetes give --coordinator "
            "HOST:PORT, --num-processes and --process-id"
        ) from err


def run_from_file(config_path, out_path=None, *, chunk: int = DEFAULT_CHUNK, progress: bool = True):
    """Load a TOML config and run :func:`run_sweep`; returns (dataset, out_path, seconds)."""
    config = load_config(config_path)
    resolve_config(config)  # check before any work
    out = output_path(config_path, out_path)
    start = time.perf_counter()
    ds = run_sweep(config, out, chunk=chunk, progress=progress)
    return ds, out, time.perf_counter() - start
