"""``shibajax fit-grid DIR|GLOB|FILE.3ds --config grid.toml``: fit every pixel of a measured grid, write maps.

The config has the tables of ``shibajax fit`` (:mod:`shibajax.fitting.commands`: [host], [impurity], [tip],
[data], [fit], [params]; the [params] are those of one pixel, every pixel starting from them) and in [fit] also

    bic_threshold   Delta BIC above which a pixel has an in-gap state (default 10; shibajax.fitting.grid)
    block           pixels per compiled call (default: shibajax.fitting.grid.BLOCK_PER_DEVICE per device)
    mode            "free" (default) or "anchored": E_b and the bias offset pinned to each pixel's measured peak
                    pair, J solved from E(K, J) = E_b, K fitted to the line shape (as fitting.anchored)

an optional [anchor] table for the anchored mode (shibajax.fitting.grid.Anchor): search = [lo, hi] (mV, the |bias|
range of each peak), half_width (mV, of the parabola through each peak top), branch (0, 1, or absent: the better
per pixel), and an optional [plot] table: ``pixels = ["name", ...]`` (at most 6; default: the pixels of lowest and
highest E_b
and a bare one). Writes to the output folder ``grid_fit.nc`` (the xarray Dataset of
:func:`~shibajax.fitting.grid.fit_grid`, rewritten after every block of pixels: run the same command again to
resume; a file of another fit is refused, ``--restart`` discards it), ``maps.png`` (E_b, K_0, J_0 and the reduced
chi^2 over the grid) and ``pixels.png`` (data and model of a few pixels). Example: ``examples/fit_grid_mnpc.toml``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np

from shibajax.config import ConfigError, check_keys, is_number, load_toml, number, numbers, positive_int
from shibajax.errors import FitError

GRID_FIT_KEYS = ("bic_threshold", "block", "mode")
MODES = ("free", "anchored")
ANCHOR_KEYS = ("search", "half_width", "branch")
NETCDF = "grid_fit.nc"
OUTPUTS = (NETCDF, "maps.png", "pixels.png")
MAX_PLOT_PIXELS = 6


def resolve_grid_config(config: dict, base: Path | None = None) -> dict:
    """A fit-grid config checked key by key: :func:`~shibajax.fitting.commands.resolve_config` for the tables
    of ``shibajax fit``, and the grid's own keys ([fit] bic_threshold, block; [plot] pixels)."""
    from shibajax.fitting.commands import resolve_config
    from shibajax.fitting.grid import BIC_THRESHOLD

    config = copy.deepcopy(config)
    plot = config.pop("plot", {})
    anchor = config.pop("anchor", {})
    fit = config.get("fit", {})
    grid = {"bic_threshold": BIC_THRESHOLD, "block": None, "mode": "free"}
    if isinstance(fit, dict):
        for key in GRID_FIT_KEYS:
            if key in fit:
                grid[key] = fit.pop(key)
    out = resolve_config(config, base=base)
    if not is_number(grid["bic_threshold"]):
        raise ConfigError(f"[fit].bic_threshold must be a finite number (Delta BIC); got {grid['bic_threshold']!r}")
    if grid["block"] is not None:
        grid["block"] = positive_int(grid["block"], "[fit].block")
    if grid["mode"] not in MODES:
        raise ConfigError(f"[fit].mode must be one of {', '.join(repr(m) for m in MODES)}; got {grid['mode']!r}")
    check_keys(anchor, ANCHOR_KEYS, "[anchor]")
    resolved_anchor = {}
    if "search" in anchor:
        lo, hi = numbers(anchor["search"], "[anchor].search", 2)
        if not 0 <= lo < hi:
            raise ConfigError(f"[anchor].search = {anchor['search']!r} must be [lo, hi] with 0 <= lo < hi (mV)")
        resolved_anchor["search"] = (lo, hi)
    if "half_width" in anchor:
        resolved_anchor["half_width"] = number(anchor["half_width"], "[anchor].half_width")
        if resolved_anchor["half_width"] <= 0:
            raise ConfigError(f"[anchor].half_width must be > 0 (mV); got {anchor['half_width']!r}")
    if "branch" in anchor:
        if anchor["branch"] not in (0, 1) or isinstance(anchor["branch"], bool):
            raise ConfigError(f"[anchor].branch must be 0 or 1 (or absent: per pixel); got {anchor['branch']!r}")
        resolved_anchor["branch"] = int(anchor["branch"])
    if resolved_anchor and grid["mode"] != "anchored":
        raise ConfigError('an [anchor] table needs [fit].mode = "anchored"')
    if not isinstance(plot, dict) or set(plot) - {"pixels"}:
        raise ConfigError(f'[plot] takes one key, pixels = ["name", ...]; got {plot!r}')
    pixels = plot.get("pixels", [])
    if not isinstance(pixels, list) or not all(isinstance(p, str) for p in pixels) or len(pixels) > MAX_PLOT_PIXELS:
        raise ConfigError(f"[plot].pixels must be a list of at most {MAX_PLOT_PIXELS} pixel names; got {pixels!r}")
    out["grid"] = grid | {"plot_pixels": pixels, "anchor": resolved_anchor}
    if out["fit"]["out"] == "shibajax-fit":
        out["fit"]["out"] = "shibajax-fit-grid"
    return out


def read_grid_source(source, direction: str = "forward"):
    """The grid as one (pixel, bias) Dataset: a Nanonis ``.3ds`` file, a folder, a glob pattern or a list of
    single-spectrum files (:func:`~shibajax.measurement.read_grid`)."""
    from shibajax.measurement.readers import pixel_grid, read_grid

    if isinstance(source, str | os.PathLike) and str(source).lower().endswith(".3ds"):
        return pixel_grid(read_grid(source))
    return read_grid(source, direction=direction)


def run_fit_grid(source, config, out=None, *, restart: bool = False, progress: bool = True, on_block=None, log=None):
    """Fit a measured grid as the CLI does; returns (results Dataset, output folder).

    Args:
        source: ``.3ds`` file, folder, glob or list of spectra. config: a TOML path or a parsed dict.
        out: output folder (default [fit].out). restart: discard ``grid_fit.nc`` there first.
        progress: a progress bar over pixels; on_block: see :func:`~shibajax.fitting.grid.fit_grid`.
    """
    from shibajax.fitting import ShibaEnergies, SpectrumModel, green_blocks
    from shibajax.fitting.commands import _energy_grid, _largest_lockin, _parameters, _spec, prepare_output
    from shibajax.fitting.grid import Anchor, fit_grid
    from shibajax.fitting.hosts import host_from_config

    base = Path(config).parent if isinstance(config, str | os.PathLike) else None
    raw = load_toml(config) if isinstance(config, str | os.PathLike) else config
    cfg = resolve_grid_config(raw, base=base)
    folder = prepare_output(Path(out) if out is not None else Path(cfg["fit"]["out"]))
    grid = read_grid_source(source, cfg["data"]["direction"])
    bias = np.asarray(grid["bias"].values, float) * 1e3  # V -> mV
    window = cfg["data"]["bias_window"] or [float(np.nanmin(bias)), float(np.nanmax(bias))]
    cfg["data"]["bias_window"] = window
    params = _parameters(cfg, grid, source)
    energies = _energy_grid(*window, cfg, _largest_lockin(params))
    host = host_from_config(cfg)
    if log is not None:
        log(f"{grid.sizes['pixel']} pixels; {host.description}; summing G0 on {energies.size} energies ...")
    blocks = green_blocks(host.model, host.couplings, [host.tip_site], energies, eta=host.eta, kgrid=host.kgrid)
    model = SpectrumModel(blocks, tip=cfg["tip"]["kind"])
    shiba = ShibaEnergies(host.model, host.couplings, kgrid=host.kgrid)
    fitc = cfg["fit"]
    options = {"steps" if fitc["method"] == "adam" else "max_iter": fitc["max_iter"]}
    result = fit_grid(
        grid, model, {k: _spec(p) for k, p in params.items()}, shiba=shiba, bias_window=window,
        n_starts=fitc["n_starts"], seed=fitc["seed"], method=fitc["method"],
        bic_threshold=cfg["grid"]["bic_threshold"], block=cfg["grid"]["block"], out=folder / NETCDF,
        mode=cfg["grid"]["mode"], anchor=Anchor(**cfg["grid"]["anchor"]),
        restart=restart, progress=progress, on_block=on_block, **options,
    )  # fmt: skip
    result.attrs["host"] = host.description
    result.attrs["channels"] = ", ".join(host.channel_labels)
    plot_maps(result, folder / "maps.png")
    plot_pixels(result, folder / "pixels.png", names=cfg["grid"]["plot_pixels"])
    return result, folder


def _image(result, values):
    """(extent-free) image of a per-pixel array on (row, col) when the grid has them, else None."""
    if "row" not in result.coords or "col" not in result.coords:
        return None
    rows = np.asarray(result["row"].values, int)
    cols = np.asarray(result["col"].values, int)
    img = np.full((rows.max() + 1, cols.max() + 1), np.nan)
    img[rows, cols] = values
    return img


def plot_maps(result, path=None):
    """E_b, K_0, J_0 and the reduced chi^2 of every pixel, on the grid's (row, col) layout (or at the pixels' x, y
    when the positions are not on a lattice); bare pixels blank in E_b, K_0, J_0."""
    import matplotlib.pyplot as plt

    panels = [("E_b", "E_b (meV)"), ("K_0", "K_0 (meV)"), ("J_0", "J_0 (meV)"), ("reduced_chi2", "reduced chi^2")]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    x = np.asarray(result["x"].values, float) * 1e9 if "x" in result.coords else None
    y = np.asarray(result["y"].values, float) * 1e9 if "y" in result.coords else None
    for ax, (name, label) in zip(axes, panels, strict=True):
        values = np.asarray(result[name].values, float) if name in result else np.full(result.sizes["pixel"], np.nan)
        img = _image(result, values)
        if img is not None:
            shown = ax.imshow(img, origin="lower", cmap="viridis", interpolation="nearest")
            ax.set_xlabel("column")
            ax.set_ylabel("row")
        elif x is not None and np.all(np.isfinite(x)):
            shown = ax.scatter(x, y, c=values, s=60, cmap="viridis")
            ax.set_xlabel("x (nm)")
            ax.set_ylabel("y (nm)")
            ax.set_aspect("equal")
        else:
            shown = ax.plot(values, ".")[0]
            ax.set_xlabel("pixel")
        if hasattr(shown, "get_cmap"):
            fig.colorbar(shown, ax=ax, label=label)
        ax.set_title(label)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def _default_pixels(result) -> list[int]:
    cls = np.asarray(result["class"].values).astype(str)
    e_b = np.asarray(result["E_b"].values, float)
    picks = []
    shiba = np.flatnonzero((cls == "shiba") & np.isfinite(e_b))
    if shiba.size:
        picks += [int(shiba[np.argmin(e_b[shiba])]), int(shiba[np.argmax(e_b[shiba])])]
    bare = np.flatnonzero(cls == "bare")
    if bare.size:
        picks.append(int(bare[0]))
    return list(dict.fromkeys(picks)) or [0]


def plot_pixels(result, path=None, names=()):
    """Data and model of a few pixels (by name; default the lowest and highest E_b and a bare pixel)."""
    import matplotlib.pyplot as plt

    all_names = [str(n) for n in np.asarray(result["name"].values)] if "name" in result.coords else []
    if names:
        missing = [n for n in names if n not in all_names]
        if missing:
            raise FitError(f"[plot].pixels {missing} are not pixels of this grid (names: {all_names[:4]} ...)")
        picks = [all_names.index(n) for n in names]
    else:
        picks = _default_pixels(result)
    fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 3.4), squeeze=False)
    bias = np.asarray(result["bias"].values, float)
    for ax, i in zip(axes[0], picks, strict=True):
        pixel = result.isel(pixel=i)
        ax.plot(bias, np.asarray(pixel["didv"].values), ".", ms=2, color="0.5", label="data")
        ax.plot(bias, np.asarray(pixel["didv_model"].values), "-", color="C3", label="model")
        e_b = float(pixel["E_b"].values)
        title = all_names[i] if all_names else f"pixel {i}"
        ax.set_title(f"{title}: {str(pixel['class'].values)}" + (f", E_b = {e_b:.3f} meV" if np.isfinite(e_b) else ""))
        ax.set_xlabel("bias (mV)")
        ax.legend(frameon=False)
    axes[0, 0].set_ylabel("dI/dV (normalised)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
