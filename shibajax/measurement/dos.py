"""Densities of states of STM tips and samples (energies in meV, normalised to the normal state: rho -> 1).

Every DOS is a small immutable pytree (a ``NamedTuple`` whose fields are the parameters) with
``__call__(E) -> rho(E)`` elementwise in ``E``: JAX-differentiable in the energy (the tunnelling module takes
``d rho / dE`` by ``jax.jvp``) and in every parameter, usable under ``jit``/``vmap``/``grad``. Invariants are
checked where the object is built, on concrete values (tracers pass through unchecked).

The Dynes form (Dynes, McMullen & Garno, Phys. Rev. Lett. 41, 1509 (1978)) is

    rho(E) = Re[ (E + i gamma) / sqrt((E + i gamma)^2 - delta^2) ],

evaluated as ``Re(z / w)``, ``z = E + i gamma``, with ``w = sqrt(z - delta) sqrt(z + delta)`` (the root of
``z^2 - delta^2`` in the upper half plane), so that ``rho -> +1`` at both ``E -> +inf`` and ``E -> -inf``.
It conserves the number of states: ``int (rho - 1) dE = 0`` for ``gamma > 0``.

Its antiderivative is ``Re w``: ``d/dE sqrt(z^2 - delta^2) = z / sqrt(z^2 - delta^2)``, so the average over a grid
cell ``[E - h/2, E + h/2]`` is ``(Re w(E + h/2) - Re w(E - h/2)) / h`` (:func:`dynes_cell_average`). It is finite
for every ``gamma >= 0``, also for the BCS DOS (``gamma = 0``), whose point values are infinite (NaN) at
``|E| = delta`` but whose singularity ``1 / sqrt(E - delta)`` is integrable: a sample DOS given as cell averages is
exact in the integral, and the tunnelling sums converge with the grid step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from shibajax import _precision  # noqa: F401
from shibajax.errors import DOSParameterError


def concrete(x) -> np.ndarray | None:
    """``x`` as a float64 NumPy array when its value is known now, ``None`` for tracers and placeholders."""
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        arr = np.asarray(x)
    except Exception:  # noqa: BLE001  (tracers under grad/vmap, pytree placeholders)
        return None
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        return None
    return arr.astype(float)


def check_finite(value, name: str, owner: str = "", *, error: type[Exception] = DOSParameterError, unit: str = ""):
    """Raise ``error`` naming ``name`` when a concrete ``value`` holds NaN or inf; tracers pass (checked later).

    The one host-side finiteness check of ``shibajax.measurement``: every numerical entry point runs its float
    parameters through it before any work, so that a NaN (e.g. a lock-in amplitude a file header did not give)
    is reported by name instead of surfacing as an opaque NumPy/JAX error or a NaN result. Returns the value as a
    float64 array (``None`` for tracers).
    """
    arr = concrete(value)
    if arr is None:
        return None
    if not np.all(np.isfinite(arr)):
        where = f"{owner}: " if owner else ""
        shown = float(arr) if arr.ndim == 0 else arr.tolist() if arr.size <= 8 else f"array with {arr.size} values"
        n_bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        what = "" if arr.ndim == 0 else f" ({n_bad} of {arr.size} values are NaN or inf)"
        raise error(
            f"{where}{name} = {shown!r}{' ' + unit if unit else ''} must be finite{what}; a NaN often comes from a "
            "file header that does not state the value (give it explicitly)"
        )
    return arr


def _check_non_negative(value, name: str, owner: str) -> None:
    arr = check_finite(value, name, owner)
    if arr is None:
        return
    if np.any(arr < 0):
        raise DOSParameterError(f"{owner}: {name} = {arr!r} must be >= 0 (meV)")


def dynes_dos(E, delta, gamma) -> jax.Array:
    """Dynes density of states Re[(E + i gamma) / sqrt((E + i gamma)^2 - delta^2)] (dimensionless).

    Args:
        E: energies (meV), any shape.
        delta: gap (meV), >= 0, broadcast against ``E``.
        gamma: Dynes broadening (meV), >= 0 (``gamma = 0`` is the BCS DOS, singular (NaN) at ``|E| = delta``).

    Returns:
        rho(E), shape of ``broadcast(E, delta, gamma)``; -> 1 for ``|E| >> delta``, 0 inside a BCS gap.

    Example:
        >>> float(dynes_dos(10.0, 1.0, 0.0))  # 10 / sqrt(99)
        1.005037815259212
    """
    _check_non_negative(delta, "delta", "dynes_dos")
    _check_non_negative(gamma, "gamma", "dynes_dos")
    E = jnp.asarray(E, dtype=float)
    gamma = jnp.asarray(gamma, dtype=float)
    z = E + 1j * gamma
    # w = sqrt(z - delta) sqrt(z + delta) = the root of z^2 - delta^2 with w ~ z at large |z|: Im w >= 0 in the
    # upper half plane, and w = E (not |E|) on the real axis (gamma = 0). One complex sqrt (twice as fast).
    w = jnp.sqrt(z * z - jnp.asarray(delta, dtype=float) ** 2)
    w = jnp.where((w.imag < 0) | ((w.imag == 0) & (E < 0)), -w, w)
    return (E * w.real + gamma * w.imag) / (w.real**2 + w.imag**2)  # Re(z / w) = Re(z conj(w)) / |w|^2


def _dynes_antiderivative(E, delta, gamma) -> jax.Array:
    """Re sqrt((E + i gamma)^2 - delta^2) on the branch of :func:`dynes_dos` (d/dE of it is the Dynes DOS).

    At gamma = 0 it is sign(E) sqrt(E^2 - delta^2) outside the gap and 0 inside."""
    E = jnp.asarray(E, dtype=float)
    z = E + 1j * jnp.asarray(gamma, dtype=float)
    w = jnp.sqrt(z * z - jnp.asarray(delta, dtype=float) ** 2)
    w = jnp.where((w.imag < 0) | ((w.imag == 0) & (E < 0)), -w, w)
    return w.real


def dynes_cell_average(E, delta, gamma, h) -> jax.Array:
    """The Dynes DOS averaged over the cells [E - h/2, E + h/2]: (F(E + h/2) - F(E - h/2)) / h, F = Re w.

    Finite for every ``gamma >= 0`` (the BCS singularity at |E| = delta is integrable), exact in the integral
    (the cells of a uniform grid tile it), and -> :func:`dynes_dos` as h -> 0 (``rho + h^2 rho'' / 24``).

    Args:
        E: cell centres (meV), any shape. delta, gamma: as in :func:`dynes_dos`. h: cell width (meV) > 0,
            the step of a uniform grid ``E``.

    Example:
        >>> E = np.array([-1.0, 1.0])  # the BCS peaks themselves (gamma = 0), cells of 0.01 meV
        >>> np.round(np.asarray(dynes_cell_average(E, 1.0, 0.0, 0.01)), 4)  # sqrt(1.005^2 - 1) / 0.01
        array([10.0125, 10.0125])
    """
    _check_non_negative(delta, "delta", "dynes_cell_average")
    _check_non_negative(gamma, "gamma", "dynes_cell_average")
    step = check_finite(h, "h", "dynes_cell_average")
    if step is not None and not np.all(step > 0):
        raise DOSParameterError(f"dynes_cell_average: h = {step!r} meV must be > 0 (the grid step)")
    E = jnp.asarray(E, dtype=float)
    half = 0.5 * jnp.asarray(h, dtype=float)
    upper = _dynes_antiderivative(E + half, delta, gamma)
    lower = _dynes_antiderivative(E - half, delta, gamma)
    return (upper - lower) / (2.0 * half)


def grid_step(E) -> float:
    """The step h of a uniform, increasing 1-d energy grid (meV); raises DOSParameterError otherwise."""
    e = np.asarray(E, dtype=float)
    if e.ndim != 1 or e.size < 2 or not np.all(np.isfinite(e)):
        raise DOSParameterError(f"cell averages need a finite 1-d energy grid of >= 2 points, got shape {e.shape}")
    step = np.diff(e)
    if not (step[0] > 0 and np.allclose(step, step[0], rtol=1e-8, atol=0)):
        raise DOSParameterError("cell averages need a uniform, increasing energy grid (E_j = E_0 + j h)")
    return float(step[0])


class _DynesFields(NamedTuple):
    delta: jax.Array | float
    gamma: jax.Array | float


class DynesDOS(_DynesFields):
    """Single-gap Dynes DOS (tip or sample): ``delta`` and ``gamma`` in meV (scalars or broadcastable arrays).

    Example:
        >>> tip = DynesDOS(delta=1.35, gamma=0.02)
        >>> round(float(tip(0.0)), 4)  # gamma / delta inside the gap
        0.0148
    """

    __slots__ = ()

    def __new__(cls, delta, gamma):
        _check_non_negative(delta, "delta", "DynesDOS")
        _check_non_negative(gamma, "gamma", "DynesDOS")
        return super().__new__(cls, delta, gamma)

    def __call__(self, E) -> jax.Array:
        """rho(E) for energies ``E`` (meV), any shape."""
        return dynes_dos(E, self.delta, self.gamma)

    def cell_average(self, E, h=None) -> jax.Array:
        """Averages over the cells of width ``h`` (default: the step of the uniform grid ``E``) centred on ``E``:
        finite also for ``gamma = 0`` (see :func:`dynes_cell_average`); use it for a sample DOS on a grid."""
        return dynes_cell_average(E, self.delta, self.gamma, grid_step(E) if h is None else h)


class _MultiGapFields(NamedTuple):
    deltas: jax.Array
    gammas: jax.Array
    weights: jax.Array


class MultiGapDOS(_MultiGapFields):
    """Weighted sum of Dynes DOS, ``sum_i w_i rho_Dynes(E; delta_i, gamma_i)``, e.g. the two gaps of Pb.

    ``deltas``, ``gammas``, ``weights``: shape (n_gap,), meV, meV, dimensionless; weights >= 0 summing to 1 so
    that rho -> 1 in the normal state (Pb: delta ~ 1.25 and 1.40 meV, Ruby et al., PRL 114, 157001 (2015)).

    Example:
        >>> pb = MultiGapDOS(deltas=[1.25, 1.40], gammas=[0.01, 0.01], weights=[0.3, 0.7])
        >>> round(float(pb(20.0)), 3)
        1.002
    """

    __slots__ = ()

    def __new__(cls, deltas, gammas, weights):
        d, g, w = concrete(deltas), concrete(gammas), concrete(weights)
        check_finite(weights, "weights", "MultiGapDOS")
        if d is not None and g is not None and w is not None:
            if not (d.ndim == 1 and d.shape == g.shape == w.shape and d.size > 0):
                raise DOSParameterError(
                    f"MultiGapDOS: deltas, gammas and weights must be 1-d of one length, got shapes "
                    f"{d.shape}, {g.shape}, {w.shape}"
                )
            if np.any(w < 0) or abs(w.sum() - 1.0) > 1e-9:
                raise DOSParameterError(
                    f"MultiGapDOS: weights {w.tolist()} must be >= 0 and sum to 1 (the normal-state DOS is 1)"
                )
        _check_non_negative(deltas, "deltas", "MultiGapDOS")
        _check_non_negative(gammas, "gammas", "MultiGapDOS")
        as_array = jnp.asarray if d is not None else (lambda x: x)
        return super().__new__(cls, as_array(deltas), as_array(gammas), as_array(weights))

    def __call__(self, E) -> jax.Array:
        """rho(E) for energies ``E`` (meV), any shape."""
        E = jnp.asarray(E)
        parts = dynes_dos(E[..., None], self.deltas, self.gammas)  # (..., n_gap)
        return jnp.sum(parts * self.weights, axis=-1)

    def cell_average(self, E, h=None) -> jax.Array:
        """Cell averages as :meth:`DynesDOS.cell_average` (finite also for zero gammas)."""
        h = grid_step(E) if h is None else h
        E = jnp.asarray(E, dtype=float)
        parts = dynes_cell_average(E[..., None], self.deltas, self.gammas, h)
        return jnp.sum(parts * self.weights, axis=-1)


class _NormalFields(NamedTuple):
    value: jax.Array | float = 1.0


class NormalDOS(_NormalFields):
    """A normal-metal (flat) DOS, ``rho(E) = value`` (1 = the normal state of the conventions)."""

    __slots__ = ()

    def __new__(cls, value=1.0):
        check_finite(value, "value", "NormalDOS")
        return super().__new__(cls, value)

    def __call__(self, E) -> jax.Array:
        """rho(E) = value, shape of ``E``."""
        return jnp.zeros_like(jnp.asarray(E, dtype=float)) + self.value

    def cell_average(self, E, h=None) -> jax.Array:
        """The cell averages of a constant: ``value``."""
        return self(E)


class _TabulatedFields(NamedTuple):
    energies: jax.Array
    values: jax.Array


class TabulatedDOS(_TabulatedFields):
    """A DOS given on points: linear interpolation inside, constant (the end values) outside.

    ``energies`` (n,) strictly increasing (meV), ``values`` (n,). Its energy derivative is the piecewise-constant
    slope of the interpolant, so a tabulated tip should be tabulated finely (the tunnelling formula uses it).

    Example:
        >>> float(TabulatedDOS([0.0, 1.0], [0.0, 2.0])(0.25))
        0.5
    """

    __slots__ = ()

    def __new__(cls, energies, values):
        e, v = concrete(energies), concrete(values)
        if e is not None and v is not None:
            if e.ndim != 1 or e.shape != v.shape or e.size < 2:
                raise DOSParameterError(
                    f"TabulatedDOS: energies and values must be 1-d of one length >= 2, got shapes {e.shape}, {v.shape}"
                )
            check_finite(e, "energies", "TabulatedDOS")
            check_finite(v, "values", "TabulatedDOS")
            if not np.all(np.diff(e) > 0):
                raise DOSParameterError("TabulatedDOS: energies must be strictly increasing (sort them first)")
            return super().__new__(cls, jnp.asarray(energies, dtype=float), jnp.asarray(values, dtype=float))
        return super().__new__(cls, energies, values)

    def __call__(self, E) -> jax.Array:
        """rho(E) by linear interpolation (constant outside the table), shape of ``E``."""
        return jnp.interp(jnp.asarray(E, dtype=float), self.energies, self.values)
