"""Matplotlib pictures of a model: bands along a path, Fermi surface, density of states.

Each function draws on ``ax`` (a new figure when None) and returns the axes. Nothing here picks a backend, so
the functions work headless with Agg (``MPLBACKEND=Agg``) as well as interactively.
"""

from __future__ import annotations

import numpy as np

from shibajax.bands import (
    BandPath,
    band_structure,
    bands_on_grid,
    high_symmetry_path,
    normal_state_dos,
    reduced_to_cartesian,
)
from shibajax.brillouin_zone import validate_kgrid
from shibajax.errors import ShapeError
from shibajax.models.tight_binding import TightBindingModel

ENERGY_LABEL = "energy (model units)"
_GREEK = {"gamma": r"$\Gamma$", "g": r"$\Gamma$", "Γ": r"$\Gamma$"}


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
    return ax


def _tick_label(label: str) -> str:
    return _GREEK.get(label.lower(), label)


def plot_bands(model: TightBindingModel, path: BandPath | None = None, ax=None, bdg: bool = False):
    """Bands along a high-symmetry path (default: Gamma-X-M-Gamma of a square lattice).

    Args:
        model: the model.
        path: a :class:`shibajax.bands.BandPath` (default :func:`high_symmetry_path` of the model).
        ax: matplotlib axes to draw on (default: a new figure).
        bdg: BdG quasiparticle bands instead of h(k).

    Returns:
        The axes; one line per band, the Fermi level dashed.
    """
    ax = _axes(ax)
    if path is None:
        path = high_symmetry_path(model)
    e = np.asarray(band_structure(model, path.kpoints, bdg=bdg))
    ax.plot(path.distance, e, color="C0", lw=1.2)
    ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
    for x in path.tick_positions:
        ax.axvline(x, color="0.8", lw=0.6)
    ax.set_xticks(path.tick_positions, [_tick_label(s) for s in path.tick_labels])
    ax.set_xlim(path.distance[0], path.distance[-1])
    ax.set_xlabel("k along path (1 / length unit of the lattice vectors)")
    ax.set_ylabel("quasiparticle " + ENERGY_LABEL if bdg else ENERGY_LABEL)
    ax.set_title(f"{model.name}: {'BdG' if bdg else 'normal-state'} bands")
    return ax


def plot_fermi_surface(model: TightBindingModel, kgrid=(200, 200), ax=None):
    """Fermi surface: the zero contour of each band of h(k) over k_i in [-pi, pi], in Cartesian k.

    Args:
        model: a 2D model.
        kgrid: plotting mesh per dimension.
        ax: matplotlib axes (default: a new figure).

    Returns:
        The axes, with one contour set per band that crosses E_F.
    """
    if model.dim != 2:
        raise ShapeError(f"plot_fermi_surface needs a 2D model; {model.name!r} has dim = {model.dim}")
    ax = _axes(ax)
    k, e = bands_on_grid(model, kgrid)
    kc = reduced_to_cartesian(model, k)
    for n in range(e.shape[-1]):
        band = e[..., n]
        if band.min() < 0.0 < band.max():
            ax.contour(kc[..., 0], kc[..., 1], band, levels=[0.0], colors=f"C{n % 10}", linewidths=1.2)
    corners = reduced_to_cartesian(model, np.pi * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1], [-1, -1]]))
    ax.plot(corners[:, 0], corners[:, 1], color="0.6", lw=0.8)
    ax.margins(0.05)
    ax.set_aspect("equal")
    ax.set_xlabel(r"$k_x$ (1 / length unit of the lattice vectors)")
    ax.set_ylabel(r"$k_y$ (1 / length unit of the lattice vectors)")
    ax.set_title(f"{model.name}: Fermi surface")
    return ax


def plot_dos(model: TightBindingModel, energies, kgrid, eta, ax=None, per_spin: bool = True, kind="lorentzian"):
    """Broadened normal-state DOS (per spin per cell by default), see :func:`shibajax.bands.normal_state_dos`.

    Returns:
        The axes, with one line.
    """
    ax = _axes(ax)
    kgrid = validate_kgrid(kgrid, model.dim)
    energies = np.asarray(energies, dtype=float)
    rho = np.asarray(normal_state_dos(model, energies, kgrid=kgrid, eta=eta, per_spin=per_spin, kind=kind))
    ax.plot(energies, rho, color="C0", lw=1.2)
    ax.axvline(0.0, color="0.5", lw=0.8, ls="--")
    ax.set_xlabel(ENERGY_LABEL)
    spin = "per spin " if per_spin else ""
    ax.set_ylabel(f"DOS (states / energy / cell {spin})".replace(" )", ")"))
    ax.set_title(f"{model.name}: DOS ({kind}, eta = {eta:g}, kgrid = {kgrid})")
    ax.set_ylim(bottom=0.0)
    return ax
