"""Input checks shared by the models, the impurities and the Green's-function entry points.

Every check runs on concrete (host) values only and passes JAX tracers through untouched: inside ``jit`` /
``vmap`` nothing raises (batches flag instead, docs/conventions.md). Messages name the parameter, the bad value
and the form expected.
"""

from __future__ import annotations

import jax
import numpy as np

from shibajax.errors import ImpurityError, ParameterError, ShapeError


def is_traced(x) -> bool:
    """True for a JAX tracer (a value under jit / vmap / grad), which is never checked."""
    return isinstance(x, jax.core.Tracer)


def holds_tracer(value) -> bool:
    """True for a tracer, or a (nested) list / tuple holding one."""
    return _holds_tracer(value)


def check_real(name: str, value, *, error: type[Exception] = ParameterError, max_ndim: int | None = 0, hint: str = ""):
    """Raise ``error`` unless ``value`` is a finite real number (or an array of them); return ``value`` unchanged.

    Args:
        name: the parameter's name, as the caller spells it (e.g. ``"mu"``, ``"channel J"``).
        value: the value given; a JAX tracer is passed through unchecked.
        error: the error class (a :class:`~shibajax.errors.ShibajaxError`).
        max_ndim: largest number of array dimensions accepted (0: a scalar; None: any shape).
        hint: appended to the message (the cure, e.g. ``" (meV)"``).
    """
    return _check_number(name, value, error, max_ndim, hint, complex_ok=False)


def check_finite(name: str, value, *, error: type[Exception] = ParameterError, max_ndim: int | None = None, hint=""):
    """As :func:`check_real`, but complex values are accepted (hopping and pairing matrices): finite numbers."""
    return _check_number(name, value, error, max_ndim, hint, complex_ok=True)


def _holds_tracer(value) -> bool:
    if is_traced(value):
        return True
    return isinstance(value, list | tuple) and any(_holds_tracer(v) for v in value)


def _check_number(name, value, error, max_ndim, hint, *, complex_ok):
    if _holds_tracer(value):
        return value
    kind = "finite number" if complex_ok else "finite real number"
    if value is None:
        raise error(f"{name} is None; it must be a {kind}{hint}")
    if isinstance(value, str | bytes):
        raise error(f"{name} = {str(value)!r} is a string; it must be a {kind}{hint}")
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as err:  # ragged sequences, sequences holding tracers, and the like
        raise error(f"{name} = {value!r} must be a {kind}{hint}") from err
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype(np.complex128)
        except (TypeError, ValueError) as err:
            raise error(f"{name} = {value!r} must be a {kind}{hint}") from err
    if arr.dtype.kind == "c" and not complex_ok:
        if np.any(arr.imag != 0):
            raise error(f"{name} = {value!r} is complex; it must be a {kind}{hint}")
        arr = arr.real
    if arr.dtype.kind not in "biufc":
        raise error(f"{name} = {value!r} (dtype {arr.dtype}) must be a {kind}{hint}")
    if max_ndim is not None and arr.ndim > max_ndim:
        form = "a scalar" if max_ndim == 0 else f"an array of at most {max_ndim} dimension(s)"
        raise error(f"{name} must be {form}; got shape {arr.shape}{hint}")
    if not np.all(np.isfinite(arr)):
        shown = arr.tolist() if arr.size <= 8 else f"an array of shape {arr.shape} with NaN or inf"
        raise error(f"{name} = {shown!r} is not finite (NaN or inf); it must be a {kind}{hint}")
    return value


def check_energies(energies, name: str = "energies") -> None:
    """Raise unless ``energies`` is a real scalar or a non-empty 1-D array of finite real numbers (energy units).

    Called by :func:`shibajax.greens_function.complex_energies`, i.e. by ``greens_function``, ``ldos``,
    ``greens_function_with_impurities`` and the continuum maps. Traced energies are not checked.

    Raises:
        ShapeError: not a scalar or 1-D, or empty.
        ParameterError: strings, complex values (the broadening goes in ``eta=``), NaN or inf.
    """
    if _holds_tracer(energies):
        return
    if energies is None:
        raise ParameterError(f"{name} is None; give an array of energies, e.g. np.linspace(-1, 1, 201)")
    if isinstance(energies, str | bytes):
        raise ParameterError(
            f"{name} = {energies!r} is a string; give an array of energies, e.g. np.linspace(-1, 1, 201)"
        )
    try:
        arr = np.asarray(energies)
    except (TypeError, ValueError) as err:
        raise ShapeError(f"{name} must be a scalar or a 1D array of energies; got {energies!r}") from err
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype(np.complex128)
        except (TypeError, ValueError) as err:
            raise ParameterError(f"{name} must hold real numbers; got {energies!r}") from err
    if arr.dtype.kind == "c":
        if np.any(arr.imag != 0):
            raise ParameterError(
                f"{name} are complex ({arr.ravel()[:3].tolist()} ...): give real energies E and the broadening as "
                "eta= (z = E + i eta)"
            )
        arr = arr.real
    if arr.dtype.kind not in "biuf":
        raise ParameterError(f"{name} (dtype {arr.dtype}) must hold real numbers; got {energies!r}")
    arr = np.atleast_1d(arr)
    if arr.ndim != 1:
        raise ShapeError(f"{name} must be a scalar or a 1D array; got shape {arr.shape}")
    if arr.size == 0:
        raise ShapeError(f"{name} is empty: give at least one energy, e.g. np.linspace(-0.4, 0.4, 401)")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ParameterError(
            f"{name} hold {bad.size} non-finite value(s) (NaN or inf), first at index {int(bad[0])}: "
            f"{float(arr[bad[0]])}; every energy must be a finite real number"
        )


def check_separations(sites, kgrid, what: str = "impurity sites") -> None:
    """Refuse impurity sites whose separation along a grid axis exceeds half the k-grid.

    On a uniform ``(L_1, .., L_dim)`` grid every Brillouin-zone sum is that of the L-periodic lattice, so
    G0(d) = G0(d + n L): a displacement with ``|d_i| > L_i / 2`` is the same as its periodic image
    ``d_i -+ L_i``, which is closer. Two impurities farther apart than half the grid then interact through
    that image, not at the distance asked for, without a word. ``|d_i| = L_i / 2`` (the two images equally
    far) is allowed: it is the largest separation an L-periodic lattice holds.

    A :class:`~shibajax.brillouin_zone.KMesh` is not checked: a non-uniform mesh (e.g. the Fermi-shell mesh)
    approximates the integral over the continuous zone, i.e. the infinite lattice, and has no periodic image.
    Its error at large separations is a quadrature error instead (exp(i k.d) must be resolved by the mesh's
    cells): for a Fermi-shell mesh keep the base grid at least twice the largest separation, and check with
    ``converged_bound_states``.

    Args:
        sites: (n, dim) integer lattice coordinates (for adatoms: every site their channels touch).
        kgrid: the validated grid tuple, or a KMesh.
        what: how the message names the sites.

    Raises:
        ImpurityError: names the two sites, the grid and the fix.
    """
    if not isinstance(kgrid, tuple) or len(kgrid) == 0:
        return  # a KMesh (or anything that is not a uniform grid)
    arr = np.asarray(sites)
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] != len(kgrid):
        return
    span = arr.max(axis=0) - arr.min(axis=0)
    grid = np.asarray(kgrid)
    over = np.flatnonzero(2 * span > grid)
    if over.size == 0:
        return
    i = int(over[0])
    a = tuple(int(v) for v in arr[int(np.argmin(arr[:, i]))])
    b = tuple(int(v) for v in arr[int(np.argmax(arr[:, i]))])
    need = tuple(int(max(g, 2 * s)) for g, s in zip(grid, span, strict=True))
    raise ImpurityError(
        f"{what} {a} and {b} are {int(span[i])} cells apart along axis {i}, more than half the k-grid "
        f"kgrid={tuple(int(g) for g in grid)} (L_{i} / 2 = {grid[i] / 2:g}): on that grid's periodic lattice the "
        f"displacement is the same as its periodic image {int(span[i] - grid[i])}, which is closer, so they would "
        f"interact through the image. Use kgrid={need} or larger (L_i >= 2 |d_i|), or a non-uniform KMesh "
        "(shibajax.fermi_shell.fermi_shell_mesh, the infinite lattice). An adatom counts every site its channels "
        "touch: a larger cutoff= (shibajax.adatoms.Adatom) shrinks that cluster"
    )
