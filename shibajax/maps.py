"""LDOS maps at continuum positions (what an STM tip scanning a 50-100 pm grid sees), and Shiba-state maps.

The tip at Cartesian r couples to the substrate orbitals around it with an s-wave overlap
phi(r - R) = exp(-|r - R|^2 / (2 w^2)) (Tersoff-Hamann with a tip of effective width w, length units), so

    LDOS(r, E) = -(1/pi) Im sum_{R, R'} phi(r - R) phi(r - R') tr_e G(R, R', E + i eta),
    u^2_n(r) = sum_s |sum_R phi(r - R) u_n(R, s)|^2,     v^2_n(r) likewise with the hole part v_n,

with G the full Green's function with impurities/adatoms and (u_n, v_n) the bound states of
:meth:`shibajax.BoundStates.wavefunctions`. The electron (u^2) and hole (v^2) maps of a Shiba state differ when
K != 0. :func:`nine_point_positions` gives the average of Beck et al., Nat. Commun. 12, 2040 (2021): spectra
averaged over r_i = r_0 + a (cos i pi/4, sin i pi/4), i = 1..8, and r_9 = r_0.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from shibajax import _precision  # noqa: F401
from shibajax.adatoms import cartesian, sites_near
from shibajax.errors import ShapeError
from shibajax.greens_function import complex_energies
from shibajax.models.tight_binding import TightBindingModel
from shibajax.tmatrix import greens_function_with_impurities

#: Sites whose tip overlap is below this (relative to 1) are left out of a map.
TIP_CUTOFF = 1e-8


def map_grid(centre, half_width: float, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A square grid of Cartesian points around ``centre``: x (n_x,), y (n_y,) and points (n_y * n_x, 2).

    Example:
        >>> x, y, pts = map_grid((0.0, 0.0), 100.0, 50.0)
        >>> x.tolist(), pts.shape
        ([-100.0, -50.0, 0.0, 50.0, 100.0], (25, 2))
    """
    if not (step > 0 and half_width >= 0):
        raise ShapeError(f"map grid needs step > 0 and half_width >= 0; got {step}, {half_width}")
    n = int(math.floor(half_width / step + 1e-9))
    offsets = step * np.arange(-n, n + 1)
    cx, cy = (float(c) for c in centre)
    x, y = cx + offsets, cy + offsets
    xx, yy = np.meshgrid(x, y, indexing="xy")
    return x, y, np.stack([xx.ravel(), yy.ravel()], axis=1)


def nine_point_positions(centre, a: float) -> np.ndarray:
    """(9, 2) positions r_0 + a (cos i pi/4, sin i pi/4), i = 1..8, and r_0 (Beck et al. 2021)."""
    angles = np.arange(1, 9) * np.pi / 4.0
    ring = np.asarray(centre, dtype=np.float64) + a * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return np.concatenate([ring, np.asarray(centre, dtype=np.float64)[None]], axis=0)


def tip_overlaps(model: TightBindingModel, points, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Sites seen by the tip at any of ``points`` and the overlaps phi: sites (n_s, 2) int, phi (n_p, n_s)."""
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.all(np.isfinite(pts)):
        raise ShapeError(f"map points must be finite Cartesian (n, 2); got shape {pts.shape}")
    if not (np.isfinite(width) and width > 0):
        raise ShapeError(f"tip width {width!r} must be > 0 (length units)")
    if model.dim != 2:
        raise ShapeError("continuum maps need a 2D (surface) model")
    radius = width * math.sqrt(2.0 * math.log(1.0 / TIP_CUTOFF))
    found: dict[tuple[int, ...], None] = {}
    for p in pts:
        for s in map(tuple, sites_near(model, p, radius).tolist()):
            found.setdefault(s, None)
    sites = np.asarray(list(found), dtype=np.int64)
    d = pts[:, None, :] - cartesian(model, sites)[None]
    phi = np.exp(-np.sum(d**2, axis=-1) / (2.0 * width**2))
    return sites, phi


def state_maps(states, points, *, width: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Electron (u^2) and hole (v^2) maps of every bound-state level at continuum points.

    Args:
        states: :class:`shibajax.BoundStates` (of impurities or adatoms) on a 2D model.
        points: (n_p, 2) Cartesian positions (length units).
        width: tip overlap width w (length units).

    Returns:
        (u2, v2): lists with one (m_i, n_p) array per level (one row per degenerate state), in the units of
        |psi|^2 times phi^2; the maps of a level with multiplicity m are summed over its orthonormal basis by
        ``u2[i].sum(0)``.
    """
    sites, phi = tip_overlaps(states.model, points, width)
    psi = states.wavefunctions(sites)  # list of (m, n_s, M)
    n_e = 2 * states.model.n_orb
    u2, v2 = [], []
    for p in psi:
        amp = np.einsum("ps,msa->mpa", phi, p)
        u2.append(np.sum(np.abs(amp[..., :n_e]) ** 2, axis=-1))
        v2.append(np.sum(np.abs(amp[..., n_e:]) ** 2, axis=-1))
    return u2, v2


def continuum_ldos(
    model: TightBindingModel, impurities, points, energies, *, eta: float, kgrid, width: float, chunk_size=None
) -> tuple[np.ndarray, np.ndarray]:
    """Electron and hole LDOS at continuum points: each (n_E, n_p).

    Args:
        model: 2D BdG model.
        impurities: Impurity/Adatom (or list), or [] for the clean surface.
        points: (n_p, 2) Cartesian positions (length units), e.g. from :func:`map_grid`.
        energies: (n_E,) energies; eta: broadening > 0.
        kgrid: grid or :class:`~shibajax.brillouin_zone.KMesh`.
        width: tip overlap width w (length units).
    """
    complex_energies(energies, eta)  # checks eta > 0 and the energies' shape
    sites, phi = tip_overlaps(model, points, width)
    g = greens_function_with_impurities(
        model, impurities, sites, sites, energies, eta=eta, kgrid=kgrid, chunk_size=chunk_size
    )  # (n_E, n_s, n_s, M, M)
    n_e = 2 * model.n_orb
    tr_e = jnp.trace(g[..., :n_e, :n_e], axis1=-2, axis2=-1)
    tr_h = jnp.trace(g[..., n_e:, n_e:], axis1=-2, axis2=-1)
    phi = jnp.asarray(phi)

    def project(tr):
        return np.asarray(-jnp.einsum("pa,zab,pb->zp", phi, tr, phi).imag / jnp.pi)

    return project(tr_e), project(tr_h)
