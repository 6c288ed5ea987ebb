"""Compiled optimisers, many starts at once, and Laplace uncertainties.

* :func:`minimize_adam` (optax.adam, ``lax.scan``) and :func:`minimize_lbfgs` (optax.lbfgs with its zoom
  line search, ``lax.while_loop``): one start, jittable, no host syncs inside the loop.
* :func:`minimize_levenberg_marquardt`: Levenberg-Marquardt on a residual vector (forward-mode Jacobian), for a
  polish or a whole fit of least-squares problems (``method="lm"``); jittable and vmappable.
* :func:`multistart`: a batch of starts (n, n_free) vmapped in one compiled call per block, the block sharded
  over a 1-D mesh of ``jax.devices()`` (``NamedSharding``), a tqdm bar over blocks and an ``.npz`` checkpoint
  after each block, so an interrupted run resumes where it stopped.
* :func:`laplace`: covariance = H^-1 of the loss 1/2 chi^2 in the natural (untransformed) free parameters
  at the optimum; standard errors and correlations. With unknown sigma the covariance is rescaled by the
  reduced chi^2 = 2 loss / (n_points - n_free).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from shibajax.errors import FitError

METHODS = ("lbfgs", "adam", "lm")


def minimize_adam(loss: Callable, u0: jax.Array, *, steps: int = 500, learning_rate: float = 0.05):
    """Adam for ``steps`` steps; returns (u_best, loss_best, steps) of the best iterate seen."""
    opt = optax.adam(learning_rate)
    vg = jax.value_and_grad(loss)

    def body(carry, _):
        u, state, best_u, best_f = carry
        f, g = vg(u)
        better = f < best_f
        best_u = jnp.where(better, u, best_u)
        best_f = jnp.where(better, f, best_f)
        g = jnp.where(jnp.isfinite(g), g, 0.0)
        updates, state = opt.update(g, state, u)
        return (optax.apply_updates(u, updates), state, best_u, best_f), None

    init = (u0, opt.init(u0), u0, jnp.asarray(jnp.inf))
    (u, _, best_u, best_f), _ = jax.lax.scan(body, init, None, length=steps)
    f_last = loss(u)
    better = f_last < best_f
    return jnp.where(better, u, best_u), jnp.where(better, f_last, best_f), jnp.asarray(steps)


def minimize_lbfgs(loss: Callable, u0: jax.Array, *, max_iter: int = 200, tol: float = 1e-10):
    """L-BFGS (optax.lbfgs, zoom line search) until |grad| < tol or max_iter; returns (u, loss, iterations)."""
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        u, state = carry
        f, g = value_and_grad(u, state=state)
        updates, state = opt.update(g, state, u, value=f, grad=g, value_fn=loss)
        return optax.apply_updates(u, updates), state

    def cond(carry):
        _, state = carry
        k = otu.tree_get(state, "count")
        g = otu.tree_get(state, "grad")
        f = otu.tree_get(state, "value")
        err = otu.tree_norm(g)
        return (k == 0) | ((k < max_iter) & (err >= tol) & jnp.isfinite(f))

    u, state = jax.lax.while_loop(cond, step, (u0, opt.init(u0)))
    return u, loss(u), otu.tree_get(state, "count")


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

    def loss_of(x):
        r = residuals(x)
        return 0.5 * jnp.sum(r * r)

    def body(carry):
        x, f, lam, n_ok, it, _ = carry
        r, tangent = jax.linearize(residuals, x)  # forward mode: one primal, n tangents (= jax.jacfwd)
        jm = jax.vmap(tangent, out_axes=1)(jnp.eye(x.shape[0], dtype=x.dtype))
        h = jm.T @ jm
        g = jm.T @ r
        d = jnp.diag(h)
        step = jnp.linalg.solve(h + lam * jnp.diag(jnp.where(d > 0, d, 1.0)), -g)
        f_new = loss_of(x + step)
        ok = jnp.isfinite(f_new) & (f_new < f) & (f - f_new > tol * jnp.abs(f))
        converged = ok & (f - f_new <= ftol * jnp.abs(f))
        x = jnp.where(ok, x + step, x)
        return x, jnp.where(ok, f_new, f), jnp.where(ok, lam / 3.0, lam * 4.0), n_ok + ok, it + 1, converged

    def cond(carry):
        _, _, lam, _, it, converged = carry
        return (it < max_iter) & ~converged & (lam < max_damping)

    x0 = jnp.asarray(x0, jnp.float64)
    init = (x0, loss_of(x0), jnp.asarray(damping, jnp.float64), jnp.asarray(0), jnp.asarray(0), jnp.asarray(False))
    x, f, _, n_ok, _, _ = jax.lax.while_loop(cond, body, init)
    return x, f, n_ok


def _runner(loss, method, options):
    if method == "lbfgs":
        return lambda u0: minimize_lbfgs(loss, u0, **options)
    if method == "adam":
        return lambda u0: minimize_adam(loss, u0, **options)
    if method == "lm":  # ``loss`` is then the residual vector function
        return lambda u0: minimize_levenberg_marquardt(loss, u0, **options)
    raise FitError(f"method = {method!r}; use one of {METHODS}")


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
    **options,
) -> MultiStart:
    """Minimise ``loss`` from every row of ``starts`` (n, n_free): vmapped, sharded over devices, in blocks.

    Args:
        loss: u (n_free,) -> scalar, jax-traceable; for method "lm" the residual vector u -> r (m,) instead
            (loss = 1/2 |r|^2).
        starts: (n, n_free) unconstrained start points.
        method: "lbfgs" (options max_iter, tol), "adam" (options steps, learning_rate) or "lm"
            (Levenberg-Marquardt, options max_iter, ftol: least-squares problems).
        block: starts per compiled call (default all); each block is padded to a multiple of the device count.
        checkpoint: ``.npz`` path written after each block (finished starts and their results); if it exists
            and holds the same starts, finished blocks are skipped (resume).
        progress: show a tqdm bar over blocks.

    Returns:
        :class:`MultiStart`.
    """
    starts = np.asarray(starts, float)
    if starts.ndim != 2 or starts.shape[0] < 1:
        raise FitError(f"starts must have shape (n_starts, n_free); got {starts.shape}")
    n, d = starts.shape
    block = n if block is None else int(block)
    if block < 1:
        raise FitError(f"block = {block} must be >= 1")
    run = jax.jit(batched_over_starts(_runner(loss, method, options)))
    sharding, n_dev = _mesh_sharding()
    u_out = np.full((n, d), np.nan)
    f_out = np.full(n, np.nan)
    it_out = np.zeros(n, int)
    done = np.zeros(n, bool)
    tag = hashlib.sha256(starts.tobytes() + method.encode()).hexdigest()
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        saved = np.load(path)
        if str(saved["tag"]) == tag:
            u_out, f_out, it_out, done = saved["u"], saved["loss"], saved["iterations"], saved["done"]
    blocks = [range(i, min(i + block, n)) for i in range(0, n, block)]
    todo = [b for b in blocks if not done[b.start : b.stop].all()]
    t0 = time.perf_counter()
    bar = _progress(len(blocks), len(blocks) - len(todo), progress)
    for b in todo:
        chunk = starts[b.start : b.stop]
        pad = (-chunk.shape[0]) % n_dev
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)]) if pad else chunk
        u, f, it = run(jax.device_put(jnp.asarray(padded), sharding))
        k = chunk.shape[0]
        u_out[b.start : b.stop] = np.asarray(u)[:k]
        f_out[b.start : b.stop] = np.asarray(f)[:k]
        it_out[b.start : b.stop] = np.asarray(it)[:k]
        done[b.start : b.stop] = True
        if path is not None:
            _save_checkpoint(path, tag=tag, u=u_out, loss=f_out, iterations=it_out, done=done)
        if bar is not None:
            best = np.nanmin(f_out) if np.isfinite(f_out).any() else np.nan
            bar.set_postfix(best_loss=f"{best:.6g}")
            bar.update(1)
    if bar is not None:
        bar.close()
    return MultiStart(u_out, f_out, it_out, time.perf_counter() - t0)


def batched_over_starts(fn):
    """Lift ``fn`` (one start -> results) to a batch of starts: ``vmap`` on GPU/TPU, ``lax.map`` on CPU.

    On CPU, jaxlib 0.10's batched LAPACK kernels (eigh, solve inside a vmapped while_loop) can deadlock their own
    intra-op thread pool (seen in sweeps and fits on 2 cores, see shibajax/sweep.py); a sequential map over the
    starts has no batched kernels and is not slower on CPU, where a vmapped loop waits for its slowest start.
    """
    if jax.default_backend() == "cpu":
        return lambda xs: jax.lax.map(fn, xs)
    return jax.vmap(fn)


def _save_checkpoint(path: Path, **arrays):
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: an interrupted write never leaves a broken checkpoint


def _progress(total, initial, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="fit starts (blocks)", unit="block", leave=False)


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
