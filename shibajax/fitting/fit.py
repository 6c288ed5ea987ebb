"""High-level fits: many starts, best kept, spread of good minima, Laplace errors, JSON report and plot."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from shibajax.errors import FitError
from shibajax.fitting.model import Problem
from shibajax.fitting.optimise import laplace, multistart

#: A start is a "good minimum" when its loss is within this of the best: Delta(chi^2 / 2) <= 0.5 + 1e-3 |best|,
#: i.e. within one unit of chi^2 (the 1-sigma region of one parameter) up to optimiser tolerance.
GOOD_MINIMUM = (0.5, 1e-3)


@dataclasses.dataclass
class FitResult:
    """Outcome of :func:`fit`.

    Attributes:
        values: every parameter by name (fixed and tied included). errors: standard errors of the free ones.
        correlation: (n_free, n_free), in the order of ``free``. loss: chi^2 / 2 at the best start.
        reduced_chi2: 2 loss / dof. n_good: starts within :data:`GOOD_MINIMUM` of the best.
        spread: per free parameter, min / max / std over the good minima (multimodality shows here).
        losses: (n_starts,) final losses, sorted.
    """

    values: dict
    free: tuple
    errors: dict
    correlation: np.ndarray
    loss: float
    reduced_chi2: float
    dof: int
    n_starts: int
    n_good: int
    spread: dict
    losses: np.ndarray
    method: str
    seconds: float
    u: np.ndarray

    def to_dict(self) -> dict:
        return {
            "values": {k: float(v) for k, v in self.values.items()},
            "errors": {k: float(v) for k, v in self.errors.items()},
            "free": list(self.free),
            "correlation": np.asarray(self.correlation).tolist(),
            "loss": float(self.loss),
            "reduced_chi2": float(self.reduced_chi2),
            "dof": int(self.dof),
            "n_starts": int(self.n_starts),
            "n_good": int(self.n_good),
            "spread_of_good_minima": self.spread,
            "best_losses": [float(x) for x in self.losses[:10]],
            "method": self.method,
            "seconds": float(self.seconds),
        }

    def summary(self) -> str:
        lines = [
            f"best loss (chi^2/2) {self.loss:.6g}, reduced chi^2 {self.reduced_chi2:.4g}, "
            f"{self.n_good}/{self.n_starts} starts reached it ({self.method}, {self.seconds:.2f} s)"
        ]
        for n, v in self.values.items():
            err = f" +- {self.errors[n]:.3g}" if n in self.errors else " (fixed/tied)"
            lines.append(f"  {n:>12} = {float(v):+.6g}{err}")
        return "\n".join(lines)


def fit(
    problem: Problem,
    *,
    n_starts: int = 64,
    method: str = "lbfgs",
    seed: int = 0,
    spread: float = 1.0,
    starts=None,
    block: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    batch_iter: int | None = None,
    on_batch=None,
    checkpoint_key: dict | None = None,
    **options,
) -> FitResult:
    """Fit ``problem`` from ``n_starts`` random starts (first = the given start values).

    Args:
        problem: a :class:`~shibajax.fitting.model.Problem` (or anything with ``space``, ``loss``,
            ``loss_natural``, ``n_points`` and ``sigma_given``).
        n_starts, seed, spread: random starts, see :meth:`ParameterSpace.sample`; or ``starts`` (n, n_free)
            unconstrained.
        method, block, checkpoint, progress, batch_iter, on_batch, options: see
            :func:`~shibajax.fitting.optimise.multistart`; "lm" (Levenberg-Marquardt) fits least-squares problems
            (``problem.residuals``), usually in far fewer iterations than L-BFGS (benchmarks/README.md, "K/J
            fits"). The checkpoint is keyed on the problem (parameter spec, the hashes of every dataset's bias,
            data and sigma, the objective's fingerprint), the starts, method and options: one written for
            another fit is refused with a :class:`FitError` that names what differs.
        checkpoint_key: more JSON-able entries for that key (``shibajax fit`` adds the data file and config).

    Returns:
        :class:`FitResult`.
    """
    space = problem.space
    if space.n_free == 0:
        raise FitError("nothing to fit: every parameter is fixed or tied")
    sampled = starts is None
    if sampled:
        if not isinstance(n_starts, int | np.integer) or isinstance(n_starts, bool) or n_starts < 1:
            raise FitError(f"n_starts = {n_starts!r} must be a positive integer")
        starts = space.sample(seed, n_starts, spread)
    objective = problem.loss
    if method == "lm":
        if not hasattr(problem, "residuals"):
            kind = type(problem).__name__
            raise FitError(f"method 'lm' needs a least-squares problem with residuals; {kind} has none")
        objective = problem.residuals
    key = None
    if checkpoint is not None:
        key = dict(checkpoint_key or {})
        key["fit"] = _problem_key(problem) | ({"n_starts": n_starts, "seed": seed, "spread": spread} if sampled else {})
    ms = multistart(
        objective,
        starts,
        method=method,
        block=block,
        checkpoint=checkpoint,
        progress=progress,
        batch_iter=batch_iter,
        key=key,
        on_batch=on_batch,
        **options,
    )
    if not np.isfinite(ms.loss).any():
        raise FitError("every start ended with a non-finite loss: check the data, bounds and start values")
    ib = ms.best
    x_best = np.asarray(space.to_natural(jnp.asarray(ms.u[ib])))
    best = float(ms.loss[ib])
    dof = max(1, int(problem.n_points) - space.n_free)
    rescale = 1.0 if problem.sigma_given else 2.0 * best / dof
    _, err, corr = laplace(problem.loss_natural, x_best, rescale=rescale)
    good = np.isfinite(ms.loss) & (ms.loss - best <= GOOD_MINIMUM[0] + GOOD_MINIMUM[1] * abs(best))
    x_good = np.asarray(jax.vmap(space.to_natural)(jnp.asarray(ms.u[good])))
    spread_out = {
        n: {"min": float(x_good[:, i].min()), "max": float(x_good[:, i].max()), "std": float(x_good[:, i].std())}
        for i, n in enumerate(space.free)
    }
    values = {k: float(v) for k, v in space.values_from_natural(jnp.asarray(x_best)).items()}
    return FitResult(
        values=values,
        free=space.free,
        errors={n: float(e) for n, e in zip(space.free, err, strict=True)},
        correlation=corr,
        loss=best,
        reduced_chi2=2.0 * best / dof,
        dof=dof,
        n_starts=int(ms.loss.size),
        n_good=int(good.sum()),
        spread=spread_out,
        losses=np.sort(ms.loss[np.isfinite(ms.loss)]),
        method=method,
        seconds=ms.seconds,
        u=ms.u[ib],
    )


def _sha256(array) -> str:
    a = np.ascontiguousarray(np.asarray(array, float))
    return hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()


def _problem_key(problem) -> dict:
    """What of ``problem`` fixes a fit's result, for the checkpoint key: the parameter spec by name and, per
    dataset, its name map, tip and the sha256 of its bias, data and sigma (the objective's own
    fingerprint, added by multistart, covers the rest: G0 blocks, kernels, fixed values)."""
    key = {
        "parameters": {
            name: {"value": p.value, "lower": p.lower, "upper": p.upper, "fixed": p.fixed, "tie": p.tie}
            for name, p in problem.space.params.items()
        }
    }
    datasets = getattr(problem, "datasets", None)
    if datasets is not None:
        key["datasets"] = [
            {
                "names": dict(getattr(ds, "names", {})),
                "tip": str(getattr(getattr(ds, "model", None), "tip", "")),
                "bias": {"sha256": _sha256(ds.bias)},
                "data": {"sha256": _sha256(ds.data)},
                "sigma": {"sha256": "none" if ds.sigma is None else _sha256(ds.sigma)},
            }
            for ds in datasets
        ]
    return key


def write_report(result: FitResult, problem: Problem, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Fit report as JSON: the result, and per dataset the residual rms (data units)."""
    path = Path(path)
    report = result.to_dict()
    preds = problem.predict_values({k: jnp.asarray(v) for k, v in result.values.items()})
    report["datasets"] = [
        {
            "label": ds.label,
            "n_points": int(np.size(ds.bias)),
            "residual_rms": float(np.sqrt(np.mean((np.asarray(p) - np.asarray(ds.data)) ** 2))),
            "data_rms": float(np.sqrt(np.mean(np.asarray(ds.data) ** 2))),
        }
        for ds, p in zip(problem.datasets, preds, strict=True)
    ]
    if extra:
        report.update(extra)
    path.write_text(json.dumps(report, indent=2))
    return path


def plot_fit(result: FitResult, problem: Problem, path: str | os.PathLike | None = None):
    """Data, model and residuals of every dataset (one column each); saved to ``path`` when given."""
    import matplotlib.pyplot as plt

    preds = problem.predict_values({k: jnp.asarray(v) for k, v in result.values.items()})
    n = len(problem.datasets)
    fig, axes = plt.subplots(2, n, figsize=(4.5 * n, 5), sharex="col", squeeze=False, height_ratios=(3, 1))
    for i, (ds, p) in enumerate(zip(problem.datasets, preds, strict=True)):
        order = np.argsort(ds.bias)
        b, d, m = np.asarray(ds.bias)[order], np.asarray(ds.data)[order], np.asarray(p)[order]
        axes[0, i].plot(b, d, ".", ms=2, color="0.5", label="data")
        axes[0, i].plot(b, m, "-", color="C3", label="model")
        axes[0, i].set_title(ds.label)
        axes[0, i].legend(frameon=False)
        axes[1, i].plot(b, d - m, ".", ms=2, color="C0")
        axes[1, i].axhline(0.0, color="k", lw=0.5)
        axes[1, i].set_xlabel("bias (mV)")
    axes[0, 0].set_ylabel("dI/dV")
    axes[1, 0].set_ylabel("residual")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
