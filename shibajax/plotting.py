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


def plot_sweep(x, energies=None, ax=None, xlabel: str | None = None, fixed: dict | None = None):
    """Shiba energies against one swept parameter (separation index, angle, J, ...), one line per state.

    Args:
        x: a sweep :class:`xarray.Dataset` (from :func:`shibajax.sweep.run_sweep`) with ``energies=None`` and
            ``xlabel`` the name of the dimension to plot along (other dimensions fixed by ``fixed``, e.g.
            ``{"rashba": 1}`` as indices, default index 0); or an array (n_x,) of parameter values.
        energies: (n_x, n_state) energies, NaN-padded (with an array ``x``).
        xlabel: axis label (with a Dataset: the dimension).

    Returns:
        The axes, with one line per state column (NaN where a point has fewer states).
    """
    if energies is None:
        ds = x
        dims = [d for d in ds["energy"].dims if d != "state"]
        dim = xlabel if xlabel is not None else dims[0]
        if dim not in dims:
            raise ShapeError(f"the sweep has no dimension {dim!r}; it has {', '.join(dims)}")
        index = {d: (fixed or {}).get(d, 0) for d in dims if d != dim}
        data = ds["energy"].isel(index).transpose(dim, "state")
        x = np.asarray(ds[dim].values)
        energies = np.asarray(data.values)
        units = ds[dim].attrs.get("units", "")
        xlabel = f"{dim} ({units})" if units and len(units) < 20 else dim
    x = np.asarray(x, dtype=float)
    energies = np.asarray(energies, dtype=float)
    if energies.ndim != 2 or energies.shape[0] != x.shape[0]:
        raise ShapeError(f"energies must be (n_x, n_state) with n_x = {x.shape[0]}; got shape {energies.shape}")
    ax = _axes(ax)
    keep = np.any(np.isfinite(energies), axis=0)
    for col in np.nonzero(keep)[0]:
        ax.plot(x, energies[:, col], "o-", color="C0", ms=3, lw=1.0)
    ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
    ax.set_xlabel(xlabel or "parameter")
    ax.set_ylabel(ENERGY_LABEL)
    return ax


def plot_shiba_bands(q, bands, ax=None):
    """Shiba bands E(q) of an infinite chain.

    Args:
        q: (n_q,) chain momenta (radians per period).
        bands: a :class:`shibajax.chains.ChainBands` (``energies`` (n_q, R) and ``gap_edge`` (n_q,)) or an
            (n_q, R) array of energies, NaN-padded.

    Returns:
        The axes: one line per band column, and the gap edge +-E_g(q) dashed when known.
    """
    q = np.asarray(q, dtype=float)
    energies = np.asarray(getattr(bands, "energies", bands), dtype=float)
    if energies.ndim != 2 or energies.shape[0] != q.shape[0]:
        raise ShapeError(f"bands must be (n_q, R) with n_q = {q.shape[0]}; got shape {energies.shape}")
    ax = _axes(ax)
    for col in np.nonzero(np.any(np.isfinite(energies), axis=0))[0]:
        ax.plot(q, energies[:, col], color="C0", lw=1.2)
    if hasattr(bands, "gap_edge"):
        edge = np.asarray(bands.gap_edge, dtype=float)
        ax.plot(q, edge, color="0.5", lw=0.8, ls="--")
        ax.plot(q, -edge, color="0.5", lw=0.8, ls="--")
    ax.set_xlabel("q (rad per chain period)")
    ax.set_ylabel(ENERGY_LABEL)
    return ax


def plot_chain_ldos(positions, energies, ldos, ax=None):
    """LDOS along a chain as a colour map, position (x) against energy (y).

    Args:
        positions: (n_pos,) positions along the chain (lattice units).
        energies: (n_E,) energies.
        ldos: (n_E, n_pos) LDOS (e.g. ``shibajax.ldos(...).electron``), states per energy per cell.

    Returns:
        The axes, holding one QuadMesh whose array is ``ldos``.
    """
    positions = np.asarray(positions, dtype=float)
    energies = np.asarray(energies, dtype=float)
    ldos = np.asarray(ldos, dtype=float)
    if ldos.shape != (energies.shape[0], positions.shape[0]):
        raise ShapeError(
            f"ldos must be (n_E, n_pos) = ({energies.shape[0]}, {positions.shape[0]}); got shape {ldos.shape}"
        )
    ax = _axes(ax)
    mesh = ax.pcolormesh(positions, energies, ldos, shading="nearest", cmap="viridis")
    ax.figure.colorbar(mesh, ax=ax, label="LDOS (states / energy / cell)")
    ax.set_xlabel("position along the chain (lattice units)")
    ax.set_ylabel(ENERGY_LABEL)
    return ax


def plot_map(x, y, values, ax=None, title: str | None = None, length_unit: str = "pm", sites=None):
    """Colour map of a quantity on a (n_y, n_x) grid of Cartesian points, e.g. a Shiba state's u^2 map from
    :func:`shibajax.maps.state_maps` reshaped to (len(y), len(x)); optional ``sites`` (n, 2) Cartesian positions
    of substrate atoms are drawn as dots.

    Args:
        x: (n_x,) and y: (n_y,) axes (length units); values: (n_y, n_x) or (n_y * n_x,).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    vals = np.asarray(values, dtype=float)
    if vals.size != x.size * y.size:
        raise ShapeError(f"map values have {vals.size} entries; the grid is {y.size} x {x.size}")
    vals = vals.reshape(y.size, x.size)
    ax = _axes(ax)
    mesh = ax.pcolormesh(x, y, vals, shading="nearest", cmap="viridis")
    ax.figure.colorbar(mesh, ax=ax)
    if sites is not None:
        s = np.asarray(sites, dtype=float).reshape(-1, 2)
        inside = (s[:, 0] >= x.min()) & (s[:, 0] <= x.max()) & (s[:, 1] >= y.min()) & (s[:, 1] <= y.max())
        ax.plot(s[inside, 0], s[inside, 1], "w.", markersize=4)
    ax.set_aspect("equal")
    ax.set_xlabel(f"x ({length_unit})")
    ax.set_ylabel(f"y ({length_unit})")
    if title:
        ax.set_title(title)
    return ax


def plot_measured_vs_model(bias, measured, model, ax=None, bias_unit: str = "mV", label_model: str = "model"):
    """Measured dI/dV against a model on the same bias points, with the residual below (two stacked axes).

    Args:
        bias: (n,) bias (any order; drawn sorted); measured, model: (n,) dI/dV in the same units.
        ax: None (new figure with two axes) or a pair (ax_spectrum, ax_residual).

    Returns:
        (ax_spectrum, ax_residual).
    """
    bias = np.asarray(bias, dtype=float)
    measured, model = np.asarray(measured, dtype=float), np.asarray(model, dtype=float)
    if not (bias.ndim == 1 and measured.shape == bias.shape and model.shape == bias.shape):
        raise ShapeError(f"bias, measured and model must be 1D of one length; got {bias.shape}, "
                         f"{measured.shape}, {model.shape}")  # fmt: skip
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(2, 1, sharex=True, figsize=(6, 5), gridspec_kw={"height_ratios": [3, 1]})
    ax_top, ax_res = ax
    order = np.argsort(bias, kind="stable")
    ax_top.plot(bias[order], measured[order], ".", markersize=2, label="measured")
    ax_top.plot(bias[order], model[order], "-", label=label_model)
    ax_top.set_ylabel("dI/dV")
    ax_top.legend()
    ax_res.plot(bias[order], (measured - model)[order], "k-", linewidth=0.8)
    ax_res.axhline(0.0, color="0.6", linewidth=0.5)
    ax_res.set_xlabel(f"bias ({bias_unit})")
    ax_res.set_ylabel("residual")
    return ax_top, ax_res
