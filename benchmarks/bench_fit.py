"""Time to converge a K/J fit: shibajax (jitted L-BFGS, autodiff gradients) against scipy.optimize.least_squares
with a finite-difference Jacobian, on the same model, data and start.

    python benchmarks/bench_fit.py            # five channels, 2000-point spectrum
    python benchmarks/bench_fit.py --quick    # one channel, 200 points (smoke test)

Both minimise the same chi^2 of the same jitted forward model (fast T-matrix LDOS from precomputed G0 blocks
and a precomputed tunnelling kernel); the only difference is how the optimiser gets its derivatives. The first
call (compilation) is timed separately. Accuracy is recorded next to time: both final chi^2 values. A third row:
shibajax's Levenberg-Marquardt (minimize_levenberg_marquardt, forward-mode Jacobian), the same algorithm family as
least_squares, so that ratio isolates the cost of the derivatives. Its Jacobian is forward mode through the
T-matrix with the derivative written out (``fitting.spectrum.t_matrix_trace``: one extra product per energy for
all parameters), and it stops on scipy's ftol test.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

import shibajax
from shibajax.fitting import Dataset, Problem, SpectrumModel, coupling_basis, green_blocks
from shibajax.fitting.optimise import minimize_lbfgs, minimize_levenberg_marquardt


def host(n_channels: int):
    """n independent square-lattice bands in meV (Delta = 1.35 meV): one per channel."""
    ts = [8.0, 9.0, 10.0, 11.0, 12.0][:n_channels]
    mus = [-10.0, -6.0, -14.0, -4.0, -8.0][:n_channels]
    hop = {(0, 0): np.diag([-m for m in mus])}
    for d in [(1, 0), (-1, 0), (0, 1), (0, -1)]:
        hop[d] = -np.diag(ts)
    return shibajax.models.from_hoppings(hop, delta=1.35)


def build(quick: bool):
    n_ch = 1 if quick else 5
    model = host(n_ch)
    couplings = coupling_basis(model, [(0, 0)])
    energies = np.arange(-4.0, 4.0 + 1e-9, 0.04 if quick else 0.02)
    blocks = green_blocks(model, couplings, [(0, 0)], energies, eta=0.06, kgrid=(16, 16) if quick else (32, 32))
    sm = SpectrumModel(blocks, tip="normal")
    k_true = [5.0, -8.0, 3.0, -4.0, 6.0][:n_ch]
    j_true = [22.0, 27.0, 31.0, 36.0, 42.0][:n_ch]
    truth = {"scale": 1.0, "offset": 0.0, "bg0": 0.0, "bg1": 0.0, "temperature": 1.2, "lockin": 0.03}
    for i in range(n_ch):
        truth[f"K_{i}"], truth[f"J_{i}"] = k_true[i], j_true[i]
    bias = np.linspace(-2.5, 2.5, 200 if quick else 2000)
    clean = np.asarray(sm({k: jnp.asarray(v) for k, v in truth.items()}, jnp.asarray(bias)))
    data = clean + 0.02 * np.random.default_rng(0).normal(size=bias.size)
    params = {k: {"value": v, "fixed": True} for k, v in truth.items()}
    for i in range(n_ch):  # start 5 % off the truth, free K, J (unbounded: the same variables for both optimisers)
        params[f"K_{i}"] = k_true[i] + 0.5
        params[f"J_{i}"] = 1.05 * j_true[i]
    return Problem(Dataset(sm, bias, data, sigma=0.02), params)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    problem = build(args.quick)
    x0 = jnp.asarray(problem.space.initial())
    run = jax.jit(lambda u: minimize_lbfgs(problem.loss, u, max_iter=300, tol=1e-6))
    t = time.perf_counter()
    jax.block_until_ready(run(x0))
    first = time.perf_counter() - t
    t = time.perf_counter()
    _, loss_jax, iters = jax.block_until_ready(run(x0))
    t_jax = time.perf_counter() - t

    run_lm = jax.jit(lambda x: minimize_levenberg_marquardt(problem.residuals_natural, x, max_iter=100))
    jax.block_until_ready(run_lm(x0))
    t = time.perf_counter()
    _, loss_lm, steps_lm = jax.block_until_ready(run_lm(x0))
    t_lm = time.perf_counter() - t

    residuals = jax.jit(problem.residuals_natural)
    jax.block_until_ready(residuals(x0))
    t = time.perf_counter()
    sol = scipy.optimize.least_squares(lambda x: np.asarray(residuals(jnp.asarray(x))), np.asarray(x0), jac="2-point")
    t_scipy = time.perf_counter() - t
    out = {
        "quick": args.quick,
        "n_free": problem.space.n_free,
        "n_points": problem.n_points,
        "time_shibajax_s": t_jax,
        "first_call_shibajax_s": first,
        "iterations_shibajax": int(iters),
        "time_scipy_s": t_scipy,
        "nfev_scipy": int(sol.nfev),
        "ratio_scipy_over_shibajax": t_scipy / t_jax,
        "loss_shibajax": float(loss_jax),
        "loss_scipy": float(sol.cost),
        "time_shibajax_lm_s": t_lm,
        "steps_shibajax_lm": int(steps_lm),
        "loss_shibajax_lm": float(loss_lm),
        "ratio_scipy_over_shibajax_lm": t_scipy / t_lm,
    }
    print(
        f"{out['n_free']} free parameters, {out['n_points']} points: shibajax {t_jax:.3f} s "
        f"(+{first:.1f} s compile, {out['iterations_shibajax']} L-BFGS iterations), scipy least_squares "
        f"{t_scipy:.3f} s ({out['nfev_scipy']} evaluations): ratio {out['ratio_scipy_over_shibajax']:.2f}; "
        f"chi^2/2 {out['loss_shibajax']:.6g} vs {out['loss_scipy']:.6g}"
    )
    print(
        f"shibajax Levenberg-Marquardt (forward-mode Jacobian, {out['steps_shibajax_lm']} accepted steps): "
        f"{t_lm:.3f} s, ratio scipy / LM {out['ratio_scipy_over_shibajax_lm']:.2f}; "
        f"chi^2/2 {out['loss_shibajax_lm']:.6g}"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
