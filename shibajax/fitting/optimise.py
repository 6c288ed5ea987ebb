"""Compiled optimisers, many starts at once, and Laplace uncertainties.

* :func:`minimize_adam` (optax.adam) and :func:`minimize_lbfgs` (optax.lbfgs with its zoom line search): one
  start, ``lax.while_loop``, jittable, no host syncs inside the loop.
* :func:`minimize_levenberg_marquardt`: Levenberg-Marquardt on a residual vector (forward-mode Jacobian), for a
  polish or a whole fit of least-squares problems (``method="lm"``); jittable and vmappable.
* :func:`multistart`: a batch of starts (n, n_free) vmapped in one compiled call per block, the block sharded
  over a 1-D mesh of ``jax.devices()`` (``NamedSharding``), run in batches of iterations with a tqdm bar and an
  ``.npz`` checkpoint after each batch (optimiser states included), so an interrupted run resumes where it
  stopped, with the results of an uninterrupted one. The checkpoint holds a key of everything that fixes the
  result (objective fingerprint, starts, method, options, version, and what the caller adds); a checkpoint of
  another problem is refused (:func:`check_checkpoint`), never silently reused.
* :func:`laplace`: covariance = H^-1 of the loss 1/2 chi^2 in the natural (untransformed) free parameters
  at the optimum; standard errors and correlations. With unknown sigma the covariance is rescaled by the
  reduced chi^2 = 2 loss / (n_points - n_free).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from shibajax import _linalg
from shibajax.errors import FitError

METHODS = ("lbfgs", "adam", "lm")


@dataclasses.dataclass(frozen=True)
class _Stepper:
    """One optimiser as pure functions of the state of one start (a pytree), so that a run can stop after any
    iteration, be saved, and go on with bit-identical results (the same compiled loop body either way).

    ``init(u0)`` -> state; ``step(state)`` -> state (one iteration); ``running(state)``: the optimiser has not
    stopped; ``count(state)``: iterations done; ``result(state)`` -> (u, loss, iterations); ``max_iter``: the
    most iterations it runs.
    """

    init: Callable
    step: Callable
    running: Callable
    count: Callable
    result: Callable
    max_iter: int

    def advance(self, state, limit):
        """Iterate until the optimiser stops or ``count(state) == limit`` (a traced int: no recompilation)."""
        return jax.lax.while_loop(lambda s: self.running(s) & (self.count(s) < limit), self.step, state)

    def run(self, u0):
        """The whole run: (u, loss, iterations)."""
        return self.result(self.advance(self.init(u0), self.max_iter))


def _adam_stepper(loss: Callable, *, steps: int = 500, learning_rate: float = 0.05) -> _Stepper:
    opt = optax.adam(learning_rate)
    vg = jax.value_and_grad(loss)

    def step(carry):
        u, state, best_u, best_f, i = carry
        f, g = vg(u)
        better = f < best_f
        best_u = jnp.where(better, u, best_u)
        best_f = jnp.where(better, f, best_f)
        g = jnp.where(jnp.isfinite(g), g, 0.0)
        updates, state = opt.update(g, state, u)
        return optax.apply_updates(u, updates), state, best_u, best_f, i + 1

    def result(carry):
        u, _, best_u, best_f, i = carry
        f_last = loss(u)
        better = f_last < best_f
        return jnp.where(better, u, best_u), jnp.where(better, f_last, best_f), i

    return _Stepper(
        init=lambda u0: (u0, opt.init(u0), u0, jnp.asarray(jnp.inf), jnp.asarray(0)),
        step=step,
        running=lambda carry: carry[4] < steps,
        count=lambda carry: carry[4],
        result=result,
        max_iter=int(steps),
    )


def minimize_adam(loss: Callable, u0: jax.Array, *, steps: int = 500, learning_rate: float = 0.05):
    """Adam for ``steps`` steps; returns (u_best, loss_best, steps) of the best iterate seen."""
    return _adam_stepper(loss, steps=steps, learning_rate=learning_rate).run(u0)


def _lbfgs_stepper(loss: Callable, *, max_iter: int = 200, tol: float = 1e-10) -> _Stepper:
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        u, state = carry
        f, g = value_and_grad(u, state=state)
        updates, state = opt.update(g, state, u, value=f, grad=g, value_fn=loss)
        return optax.apply_updates(u, updates), state

    def count(carry):
        return otu.tree_get(carry[1], "count")

    def running(carry):
        _, state = carry
        k = count(carry)
        err = otu.tree_norm(otu.tree_get(state, "grad"))
        f = otu.tree_get(state, "value")
        return (k == 0) | ((k < max_iter) & (err >= tol) & jnp.isfinite(f))

    return _Stepper(
        init=lambda u0: (u0, opt.init(u0)),
        step=step,
        running=running,
        count=count,
        result=lambda carry: (carry[0], loss(carry[0]), count(carry)),
        max_iter=int(max_iter),
    )


def minimize_lbfgs(loss: Callable, u0: jax.Array, *, max_iter: int = 200, tol: float = 1e-10):
    """L-BFGS (optax.lbfgs, zoom line search) until |grad| < tol or max_iter; returns (u, loss, iterations)."""
    return _lbfgs_stepper(loss, max_iter=max_iter, tol=tol).run(u0)


def _lm_stepper(
    residuals: Callable,
    *,
    max_iter: int = 50,
    damping: float = 1e-3,
    tol: float = 1e-12,
    ftol: float = 1e-10,
    max_damping: float = 1e10,
) -> _Stepper:
    def loss_of(x):
        r = residuals(x)
        return 0.5 * jnp.sum(r * r)

    def step(carry):
        x, f, lam, n_ok, it, _ = carry
        r, tangent = jax.linearize(residuals, x)  # forward mode: one primal, n tangents (= jax.jacfwd)
        jm = jax.vmap(tangent, out_axes=1)(jnp.eye(x.shape[0], dtype=x.dtype))
        h = jm.T @ jm
        g = jm.T @ r
        d = jnp.diag(h)
        dx = _linalg.solve(h + lam * jnp.diag(jnp.where(d > 0, d, 1.0)), -g)
        f_new = loss_of(x + dx)
        ok = jnp.isfinite(f_new) & (f_new < f) & (f - f_new > tol * jnp.abs(f))
        converged = ok & (f - f_new <= ftol * jnp.abs(f))
        x = jnp.where(ok, x + dx, x)
        return x, jnp.where(ok, f_new, f), jnp.where(ok, lam / 3.0, lam * 4.0), n_ok + ok, it + 1, converged

    def running(carry):
        _, _, lam, _, it, converged = carry
        return (it < max_iter) & ~converged & (lam < max_damping)

    def init(x0):
        x0 = jnp.asarray(x0, jnp.float64)
        lam = jnp.asarray(damping, jnp.float64)
        return x0, loss_of(x0), lam, jnp.asarray(0), jnp.asarray(0), jnp.asarray(False)

    return _Stepper(
        init=init,
        step=step,
        running=running,
        count=lambda carry: carry[4],
        result=lambda carry: (carry[0], carry[1], carry[3]),
        max_iter=int(max_iter),
    )


def minimize_levenberg_marquardt(
    residuals: Callable,
    x0: jax.Array,
    *,
    max_iter: int = 50,
    damping: float = 1e-3,
    tol: float = 1e-12,
    ftol: float = 1e-10,
    max_damping: float = 1e10,
):
    """Levenberg-Marquardt on loss = 1/2 |r(x)|^2 with the Jacobian of ``residuals`` in forward mode.

    Marquardt's scaled damping (J^T J + lam diag(J^T J)) dx = -J^T r; a step is kept only when it lowers the
    loss by more than ``tol`` relative (lam / 3), else lam * 4. ``lax.while_loop`` (jittable and vmappable):
    stops after ``max_iter`` iterations, or once a kept step lowered the loss by less than ``ftol`` relative
    (scipy's ftol test), or once lam exceeds ``max_damping`` (no descent step left: a minimum to rounding).

    Args:
        residuals: x (n,) -> r (m,), jax-traceable. x0: (n,) start. max_iter: iterations; damping: start lam.

    Returns:
        (x (n,), loss, accepted steps).
    """
    stepper = _lm_stepper(residuals, max_iter=max_iter, damping=damping, tol=tol, ftol=ftol, max_damping=max_damping)
    return stepper.run(x0)


_STEPPERS = {"lbfgs": _lbfgs_stepper, "adam": _adam_stepper, "lm": _lm_stepper}
#: Options of each method and their kind: "int" a positive integer, "positive" a number > 0, "tolerance" >= 0.
_OPTIONS = {
    "lbfgs": {"max_iter": "int", "tol": "tolerance"},
    "adam": {"steps": "int", "learning_rate": "positive"},
    "lm": {
        "max_iter": "int",
        "damping": "positive",
        "tol": "tolerance",
        "ftol": "tolerance",
        "max_damping": "positive",
    },
}


def _stepper(loss: Callable, method: str, options: dict) -> _Stepper:
    """The :class:`_Stepper` of ``method`` with ``options`` checked on the host (FitError names the bad one)."""
    if method not in _STEPPERS:
        raise FitError(f"method = {method!r}; use one of {METHODS}")
    allowed = _OPTIONS[method]
    for name, value in options.items():
        if name not in allowed:
            raise FitError(f"unknown option {name!r} of method {method!r}; its options are {', '.join(allowed)}")
        kind = allowed[name]
        if kind == "int":
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise FitError(f"{name} = {value!r} must be a positive integer (the most iterations of a start)")
            continue
        ok = isinstance(value, int | float | np.number) and not isinstance(value, bool) and np.isfinite(value)
        if not ok or value < 0 or (kind == "positive" and value == 0):
            want = "a finite number > 0" if kind == "positive" else "a finite number >= 0"
            raise FitError(f"{name} = {value!r} must be {want}")
    return _STEPPERS[method](loss, **options)


@dataclasses.dataclass(frozen=True)
class MultiStart:
    """Results of all starts: u (n, n_free) final points, loss (n,), iterations (n,), seconds."""

    u: np.ndarray
    loss: np.ndarray
    iterations: np.ndarray
    seconds: float

    @property
    def best(self) -> int:
        return int(np.nanargmin(np.where(np.isfinite(self.loss), self.loss, np.nan)))


def _mesh_sharding():
    devices = np.array(jax.devices())
    return NamedSharding(Mesh(devices, ("starts",)), PartitionSpec("starts")), devices.size


def multistart(
    loss: Callable,
    starts,
    *,
    method: str = "lbfgs",
    block: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    batch_iter: int | None = None,
    key: dict | None = None,
    on_batch: Callable | None = None,
    **options,
) -> MultiStart:
    """Minimise ``loss`` from every row of ``starts`` (n, n_free): vmapped, sharded over devices, in blocks.

    Each block of starts runs in batches of iterations: one compiled call advances every start of the block by
    at most ``batch_iter`` iterations (the iteration limit is an argument of the call, so every batch reuses one
    compilation), then the optimiser state of every start is saved. An interrupted run (a kill, Ctrl-C) loses at
    most one batch, and its resumed results equal those of an uninterrupted run (the same compiled loop body runs
    the same iterations; only the loop is cut in different places).

    Args:
        loss: u (n_free,) -> scalar, jax-traceable; for method "lm" the residual vector u -> r (m,) instead
            (loss = 1/2 |r|^2).
        starts: (n, n_free) unconstrained start points.
        method: "lbfgs" (options max_iter, tol), "adam" (options steps, learning_rate) or "lm"
            (Levenberg-Marquardt, options max_iter, damping, tol, ftol, max_damping: least-squares problems).
        block: starts per compiled call (default all); each block is padded to a multiple of the device count.
        checkpoint: ``.npz`` path, written at the start, after every batch and after every block: the results of
            finished starts and the optimiser state of the block in progress. If it exists, it must belong to
            this problem (see ``key``), else :class:`FitError` says what differs; finished blocks are then skipped
            and the block in progress continues from its saved state.
        progress: show a tqdm bar over iterations (it moves after every batch).
        batch_iter: iterations per batch; default None: adapted so that a batch takes about
            :data:`BATCH_SECONDS` (starting from one iteration, so the first checkpoint comes soon).
        key: JSON-able description of what else determines the result (a fit adds its parameter spec and data
            hashes, ``shibajax fit`` the data file and config), stored in the checkpoint with multistart's own:
            the shibajax version, method, options, block, the start points and a fingerprint of the objective
            (its jaxpr and every constant array it holds: data, G0 blocks, kernels, fixed values).
        on_batch: called after every batch (once its checkpoint is written) with a dict: block, n_blocks,
            iterations (the iteration limit reached), running (starts of the block not yet stopped), best_loss.
            An exception raised there stops the run, e.g. KeyboardInterrupt to test resuming.

    Returns:
        :class:`MultiStart`.
    """
    starts = np.asarray(starts, float)
    if starts.ndim != 2 or starts.shape[0] < 1:
        raise FitError(f"starts must have shape (n_starts, n_free); got {starts.shape}")
    if not np.all(np.isfinite(starts)):
        raise FitError("starts must be finite (unconstrained start points: see ParameterSpace.sample)")
    n, d = starts.shape
    block = n if block is None else _positive_int(block, "block")
    if batch_iter is not None:
        batch_iter = _positive_int(batch_iter, "batch_iter")
    fingerprint = objective_fingerprint(loss, starts[0])
    stepper, init_batch, advance_batch = _compiled(loss, method, options, fingerprint)
    sharding, n_dev = _mesh_sharding()
    u_out = np.full((n, d), np.nan)
    f_out = np.full(n, np.nan)
    it_out = np.zeros(n, int)
    done = np.zeros(n, bool)
    partial = None  # (first start of the block in progress, iteration limit reached, state leaves (k, ...))
    path = Path(checkpoint) if checkpoint is not None else None
    key_json = None
    if path is not None:
        own = {
            "shibajax": _version(),
            "checkpoint format": CHECKPOINT_FORMAT,
            "multistart": {
                "method": method,
                "options": dict(sorted(options.items())),
                "block": block,
                "starts": {"shape": [n, d], "sha256": _sha256(starts)},
                "objective": {"sha256": fingerprint},
            },
        }
        full = {**_canonical(key or {}), **_canonical(own)}
        key_json = json.dumps(full, sort_keys=True)
        saved = check_checkpoint(path, full)
        if saved is not None:
            u_out, f_out = np.array(saved["u"], float), np.array(saved["loss"], float)
            it_out, done = np.array(saved["iterations"], int), np.array(saved["done"], bool)
            if int(saved.get("partial_start", -1)) >= 0:
                n_leaves = int(saved["partial_leaves"])
                leaves = [saved[f"state_{i}"] for i in range(n_leaves)]
                partial = (int(saved["partial_start"]), int(saved["partial_limit"]), leaves)
        else:
            _write_checkpoint(path, key_json, u_out, f_out, it_out, done, None)

    blocks = [range(i, min(i + block, n)) for i in range(0, n, block)]
    cap = stepper.max_iter
    position = sum(cap for b in blocks if done[b.start : b.stop].all())
    if partial is not None:
        position += min(partial[1], cap)
    t0 = time.perf_counter()
    bar = _progress(len(blocks) * cap, position, progress, f"fit: {n} starts ({method})")
    n_iter = batch_iter or 1
    try:
        for ib, b in enumerate(blocks):
            if done[b.start : b.stop].all():
                continue
            chunk = starts[b.start : b.stop]
            k = chunk.shape[0]
            padded = _pad_rows(chunk, n_dev)
            x = jax.device_put(jnp.asarray(padded), sharding)
            if partial is not None and partial[0] == b.start:
                states = _restore_states(path, jax.eval_shape(init_batch, x), partial[2], k, n_dev, sharding)
                limit = partial[1]
            else:
                states, limit = init_batch(x), 0
            reached = min(limit, cap)
            while True:
                limit += n_iter
                tick = time.perf_counter()
                states = jax.device_put(states, sharding)  # the same placement every call (no recompilation)
                states, running, u, f, it = advance_batch(states, limit)
                running = np.asarray(running)[:k]
                finished = not running.any()
                if finished:
                    u_out[b.start : b.stop] = np.asarray(u)[:k]
                    f_out[b.start : b.stop] = np.asarray(f)[:k]
                    it_out[b.start : b.stop] = np.asarray(it)[:k]
                    done[b.start : b.stop] = True
                if path is not None:
                    state = None if finished else (b.start, limit, [np.asarray(a)[:k] for a in jax.tree.leaves(states)])
                    _write_checkpoint(path, key_json, u_out, f_out, it_out, done, state)
                f_now = np.asarray(f)[:k]
                seen = np.concatenate([f_out[np.isfinite(f_out)], f_now[np.isfinite(f_now)]])
                best = float(seen.min()) if seen.size else np.nan
                new_reached = cap if finished else min(limit, cap)
                if bar is not None:
                    bar.set_postfix(block=f"{ib + 1}/{len(blocks)}", best_loss=f"{best:.6g}")
                    bar.update(new_reached - reached)
                reached = new_reached
                if on_batch is not None:
                    on_batch(
                        {
                            "block": ib,
                            "n_blocks": len(blocks),
                            "iterations": min(limit, cap),
                            "running": int(running.sum()),
                            "best_loss": best,
                        }
                    )
                if finished:
                    break
                if batch_iter is None:  # about BATCH_SECONDS per batch; the first (compiling) call keeps it small
                    dt = max(time.perf_counter() - tick, 1e-3)
                    n_iter = int(min(max(n_iter * BATCH_SECONDS / dt, 1), 4 * n_iter, cap))
            partial = None
    finally:
        if bar is not None:
            bar.close()
    return MultiStart(u_out, f_out, it_out, time.perf_counter() - t0)


def _compiled(loss: Callable, method: str, options: dict, fingerprint: str):
    """(stepper, jitted init of a batch of starts, jitted advance of a batch by up to ``limit`` iterations).

    Cached per (loss, method, options, objective fingerprint) when ``loss`` is hashable (a function or a bound
    method such as ``problem.residuals``), so that a rerun on the same objective, e.g. resuming in the same
    session, reuses the compiled loop instead of compiling it again; the fingerprint makes an objective whose
    data were changed in place compile anew.
    """
    stepper = _stepper(loss, method, options)  # checks the options
    try:
        return _compiled_cached(loss, method, tuple(sorted(options.items())), fingerprint)
    except TypeError:  # an unhashable loss or option value
        return _build_compiled(stepper)


@functools.lru_cache(maxsize=16)
def _compiled_cached(loss, method, options, fingerprint):
    return _build_compiled(_stepper(loss, method, dict(options)))


def _build_compiled(stepper: _Stepper):
    lift = batched_over_starts

    def advance(states, limit):
        def one(state):
            state = stepper.advance(state, limit)
            u, f, it = stepper.result(state)
            return state, stepper.running(state), u, f, it

        return lift(one)(states)

    def init(xs):  # strong types, as the states advance returns: one compilation serves every batch
        return jax.tree.map(lambda a: jax.lax.convert_element_type(a, a.dtype), lift(stepper.init)(xs))

    return stepper, jax.jit(init), jax.jit(advance)


def batched_over_starts(fn):
    """Lift ``fn`` (one start -> results) to a batch of starts: ``vmap`` on GPU/TPU, ``lax.map`` on CPU.

    On CPU, jaxlib 0.10's batched LAPACK kernels (eigh, solve inside a vmapped while_loop) can deadlock their own
    intra-op thread pool (seen in sweeps and fits on 2 cores, see shibajax/sweep.py); a sequential map over the
    starts has no batched kernels and is not slower on CPU, where a vmapped loop waits for its slowest start.
    """
    if jax.default_backend() == "cpu":
        return lambda xs: jax.lax.map(fn, xs)
    return jax.vmap(fn)


# ------------------------------------------------------------------------------------------- checkpoints

#: Version of the checkpoint layout (part of its key: a file of another layout is refused, not misread).
CHECKPOINT_FORMAT = 2
#: Target duration of one batch of iterations when ``batch_iter`` is None (seconds).
BATCH_SECONDS = 2.0
#: How to get past a refused checkpoint (library and command line).
RESTART_HINT = (
    "Delete it to start over (shibajax fit: run again with --restart), or write elsewhere (another checkpoint "
    "path; shibajax fit: another --out)."
)
_ADDRESS = re.compile(r"\s*at 0x[0-9a-fA-F]+|0x[0-9a-fA-F]+")
_ABSENT = "(not set)"
#: Readable names of key entries in the message of a refused checkpoint.
_PHRASES = {
    ("data file", "sha256"): "data file content differs",
    ("multistart", "objective", "sha256"): "the objective differs (its computation or a constant array in it: "
    "data, G0 blocks, kernels, fixed values)",
    ("multistart", "starts", "sha256"): "the start points differ",
}


def _positive_int(value, name: str) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise FitError(f"{name} = {value!r} must be a positive integer")
    return int(value)


def _version() -> str:
    from shibajax import __version__

    return __version__


def _sha256(array) -> str:
    a = np.ascontiguousarray(np.asarray(array))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def objective_fingerprint(fn: Callable, u0) -> str:
    """sha256 of what ``fn`` computes at inputs shaped like ``u0``: its jaxpr (printed, memory addresses
    dropped) and the bytes of every constant array it closes over (data, G0 blocks, kernels, fixed values).

    Two objectives with the same fingerprint compute the same function of u, so a checkpoint keyed on it is
    not reused for another problem. Tracing costs one abstract evaluation of ``fn`` (no compilation).
    """
    closed = jax.make_jaxpr(fn)(jnp.asarray(u0))
    h = hashlib.sha256(_ADDRESS.sub("", str(closed.jaxpr)).encode())
    for const in closed.consts:
        h.update(_sha256(const).encode())
    return h.hexdigest()


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray | jax.Array):
        return _jsonable(np.asarray(obj).tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def _canonical(key: dict) -> dict:
    """``key`` as JSON would give it back (tuples -> lists, NumPy scalars -> numbers), for comparisons."""
    try:
        return json.loads(json.dumps(_jsonable(key), sort_keys=True))
    except TypeError as err:
        raise FitError(f"checkpoint key must be JSON-able (numbers, strings, lists, dicts): {err}") from err


def _differences(old, new, path=()):
    """(path, old, new) of every leaf where two canonical keys differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            yield from _differences(old.get(k, _ABSENT), new.get(k, _ABSENT), (*path, k))
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            yield from _differences(a, b, (*path, i))
    elif json.dumps(old, sort_keys=True) != json.dumps(new, sort_keys=True):
        yield path, old, new


def _path_name(path) -> str:
    parts = [str(p) for p in path]
    if parts and parts[0] == "config" and len(parts) > 2:  # a table of a config file: [host].delta
        name = f"[{parts[1]}]"
        rest = path[2:]
    else:
        name, rest = "", path
    for p in rest:
        name += f"[{p}]" if isinstance(p, int) else (f".{p}" if name else str(p))
    return name


def _short(value) -> str:
    text = value if value == _ABSENT else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_differences(old: dict, new: dict) -> list[str]:
    """Readable differences of two checkpoint keys, e.g. ``data file content differs``, ``[host].delta: 1.35 ->
    1.2``."""
    out = []
    for path, a, b in _differences(old, new):
        if tuple(path) in _PHRASES:
            out.append(_PHRASES[tuple(path)])
        elif path and path[-1] == "sha256":
            out.append(f"{_path_name(path[:-1])} content differs")
        else:
            out.append(f"{_path_name(path)}: {_short(a)} -> {_short(b)}")
    return out


def _read_checkpoint(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            saved = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise FitError(f"checkpoint {path} cannot be read ({err}). {RESTART_HINT}") from err
    if "key" not in saved:
        raise FitError(
            f"checkpoint {path} holds no record of the problem it was written for (an older shibajax wrote it), "
            f"so it cannot be checked against this fit. {RESTART_HINT}"
        )
    return saved


def check_checkpoint(path: str | os.PathLike, key: dict) -> dict | None:
    """Refuse a checkpoint written for another problem: :class:`FitError` naming what differs.

    Only the top-level entries of ``key`` are compared, so a caller can check its own part before the costly
    set-up (``shibajax fit`` checks the data file and config before summing G0). Returns the checkpoint's
    arrays, or None when there is no file at ``path``.
    """
    path = Path(path)
    if not path.exists():
        return None
    saved = _read_checkpoint(path)
    try:
        old = json.loads(str(saved["key"]))
    except json.JSONDecodeError as err:
        raise FitError(f"checkpoint {path} has a broken key ({err}). {RESTART_HINT}") from err
    new = _canonical(key)
    old = {k: old.get(k, _ABSENT) for k in new} if isinstance(old, dict) else {"key": old}
    diffs = describe_differences(old, new)
    if diffs:
        more = f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else ""
        raise FitError(
            f"checkpoint {path} was written for a different fit: {'; '.join(diffs[:8])}{more}. {RESTART_HINT}"
        )
    return saved


def _write_checkpoint(path: Path, key_json, u, loss, iterations, done, partial):
    arrays = {"key": np.array(key_json), "u": u, "loss": loss, "iterations": iterations, "done": done}
    if partial is None:
        arrays["partial_start"] = np.array(-1)
    else:
        start, limit, leaves = partial
        arrays |= {"partial_start": np.array(start), "partial_limit": np.array(limit)}
        arrays["partial_leaves"] = np.array(len(leaves))
        arrays |= {f"state_{i}": leaf for i, leaf in enumerate(leaves)}
    try:
        _save_checkpoint(path, **arrays)
    except OSError as err:
        raise FitError(f"cannot write the checkpoint {path}: {err.strerror or err}; choose a writable path") from err


def _pad_rows(rows: np.ndarray, multiple: int) -> np.ndarray:
    """Pad a batch (k, ...) to a multiple of ``multiple`` rows by repeating its last row."""
    pad = (-rows.shape[0]) % multiple
    return np.concatenate([rows, np.repeat(rows[-1:], pad, axis=0)]) if pad else rows


def _restore_states(path, structure, leaves, k, n_dev, sharding):
    """Optimiser states of a block from a checkpoint's leaves (k rows each), padded and placed like a fresh one."""
    want = jax.tree.leaves(structure)
    if len(leaves) != len(want):
        raise FitError(
            f"checkpoint {path}: its optimiser state has {len(leaves)} arrays, not {len(want)}. {RESTART_HINT}"
        )
    out = []
    for saved, spec in zip(leaves, want, strict=True):
        if saved.shape != (k, *spec.shape[1:]) or saved.dtype != spec.dtype:
            raise FitError(
                f"checkpoint {path}: optimiser state {saved.dtype}{saved.shape} does not fit "
                f"{spec.dtype}{(k, *spec.shape[1:])}. {RESTART_HINT}"
            )
        out.append(_pad_rows(saved, n_dev))
    return jax.device_put(jax.tree.unflatten(jax.tree.structure(structure), out), sharding)


def _save_checkpoint(path: Path, **arrays):
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: an interrupted write never leaves a broken checkpoint


def _progress(total, initial, enabled, desc):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="it", leave=False, mininterval=0.5)


def laplace(loss_natural: Callable, x: jax.Array, *, rescale: float = 1.0):
    """Covariance from the Hessian of loss_natural (= chi^2 / 2) at x (n_free,).

    Returns:
        (covariance (n, n), standard errors (n,), correlation (n, n)); a singular Hessian gives inf errors.
    """
    h = np.asarray(jax.jit(jax.hessian(loss_natural))(jnp.asarray(x)))
    h = 0.5 * (h + h.T)
    try:
        cov = np.linalg.inv(h) * rescale
    except np.linalg.LinAlgError:
        cov = np.full_like(h, np.inf)
    var = np.diag(cov)
    err = np.sqrt(np.where(var > 0, var, np.inf))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(err, err)
    return cov, err, corr
