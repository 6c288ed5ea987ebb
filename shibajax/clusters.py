"""Clusters of magnetic impurities: chains and spin textures (ferromagnetic, antiferromagnetic, spirals, canted).

Helpers return plain lists of :class:`shibajax.Impurity`, so every solver accepts them. Spin directions are
built with ``jax.numpy``, so a pitch or an angle may be a JAX tracer: sweeps over angles are one
``jax.vmap`` (see docs/conventions.md for the spin conventions).

Example:
    >>> import numpy as np, shibajax
    >>> from shibajax.clusters import helical_chain
    >>> chain = helical_chain(4, pitch=np.pi / 2, J=1.5)
    >>> [imp.site for imp in chain]
    [(0, 0), (1, 0), (2, 0), (3, 0)]
    >>> np.round(np.asarray(chain[1].spin), 12).tolist()
    [1.0, 0.0, 0.0]
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from shibajax._checks import check_real
from shibajax.errors import ImpurityError, ShapeError
from shibajax.impurities import Channel, Impurity


def chain_sites(n: int, direction=(1, 0), start=(0, 0)) -> np.ndarray:
    """Sites start + j * direction, j = 0 .. n-1, in integer lattice coordinates; (n, dim) int array."""
    if int(n) != n or n < 1:
        raise ShapeError(f"a chain needs n >= 1 sites; got n = {n!r}")
    d = np.asarray(direction)
    s = np.asarray(start)
    if d.shape != s.shape or d.ndim != 1:
        raise ShapeError(f"direction {direction!r} and start {start!r} must be lattice vectors of one dimension")
    if not np.any(d):
        raise ShapeError("the chain direction must be a nonzero lattice vector")
    return s[None, :] + np.arange(int(n))[:, None] * d[None, :]


def _unit(v, name):
    check_real(name, v, error=ImpurityError, max_ndim=1, hint=" (a nonzero 3-vector)")
    v = np.asarray(v, dtype=float)
    if v.shape != (3,) or not np.linalg.norm(v) > 0:
        raise ImpurityError(f"{name} must be a nonzero 3-vector; got {v.tolist()}")
    return v / np.linalg.norm(v)


def spiral_spins(n: int, pitch, axis=(0.0, 0.0, 1.0), normal=(0.0, 1.0, 0.0), phase=0.0):
    """Spins n_j = cos(j q + phase) axis + sin(j q + phase) (normal x axis), j = 0 .. n-1; (n, 3).

    ``pitch`` q is the angle (radians) between neighbours; the spins rotate in the plane normal to ``normal``
    starting from ``axis`` (default: in the x-z plane, from +z towards +x). q = 0 is ferromagnetic, q = pi
    antiferromagnetic. q and phase may be JAX tracers.
    """
    check_real("pitch", pitch, error=ImpurityError, hint=" (radians between neighbours)")
    check_real("phase", phase, error=ImpurityError, hint=" (radians)")
    a = _unit(axis, "axis")
    nrm = _unit(normal, "normal")
    if abs(a @ nrm) > 1e-12:
        raise ImpurityError("the spiral's start axis must lie in its plane (axis perpendicular to normal)")
    b = np.cross(nrm, a)
    angle = jnp.arange(n) * pitch + phase
    return jnp.cos(angle)[:, None] * a[None, :] + jnp.sin(angle)[:, None] * b[None, :]


def ferromagnetic_spins(n: int, axis=(0.0, 0.0, 1.0)):
    """All n spins along axis; (n, 3)."""
    return spiral_spins(n, 0.0, axis=axis, normal=_perpendicular(axis))


def antiferromagnetic_spins(n: int, axis=(0.0, 0.0, 1.0)):
    """Spins alternating +axis, -axis; (n, 3)."""
    return spiral_spins(n, jnp.pi, axis=axis, normal=_perpendicular(axis))


def canted_pair_spins(angle, axis=(0.0, 0.0, 1.0), normal=(0.0, 1.0, 0.0)):
    """Two spins at relative angle (radians) in the plane normal to ``normal``; (2, 3)."""
    return spiral_spins(2, angle, axis=axis, normal=normal)


def _perpendicular(axis):
    a = _unit(axis, "axis")
    trial = np.array([0.0, 1.0, 0.0]) if abs(a[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    p = trial - (trial @ a) * a
    return p / np.linalg.norm(p)


def impurities_at(sites, spins, K=0.0, J=0.0, channels: list[Channel] | None = None) -> list[Impurity]:
    """One Impurity per site with the given spins; the same couplings (K, J or channels) on each."""
    sites = np.asarray(sites)
    if sites.ndim != 2 or spins.shape != (sites.shape[0], 3):
        raise ShapeError(
            f"{sites.shape[0] if sites.ndim == 2 else '?'} sites need spins of shape (n, 3); got {spins.shape}"
        )
    if channels is not None:
        return [Impurity(tuple(s), spin=spins[i], channels=channels) for i, s in enumerate(sites)]
    return [Impurity(tuple(s), K=K, J=J, spin=spins[i]) for i, s in enumerate(sites)]


def helical_chain(n: int, pitch, K=0.0, J=0.0, direction=(1, 0), start=(0, 0), **spiral) -> list[Impurity]:
    """A chain of n impurities along ``direction`` with a spin helix of the given pitch (one line of code)."""
    return impurities_at(chain_sites(n, direction, start), spiral_spins(n, pitch, **spiral), K=K, J=J)
