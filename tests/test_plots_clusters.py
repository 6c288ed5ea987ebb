"""Plots of sweeps, Shiba bands and chain LDOS: the data on the Axes equal the input arrays (read back)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402

import shibajax  # noqa: E402
from shibajax import plotting  # noqa: E402
from shibajax.chains import shiba_bands  # noqa: E402
from shibajax.errors import ShapeError  # noqa: E402


def _lines(ax):
    return [(np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)) for line in ax.get_lines()]


def test_plot_sweep_from_dataset_draws_each_state_column():
    angle = np.array([0.0, 90.0, 180.0])
    energy = np.full((3, 2, 4), np.nan)
    energy[:, 1, :2] = [[-0.2, 0.2], [-0.1, 0.1], [-0.05, 0.05]]  # rashba index 1; columns 2, 3 all NaN
    ds = xr.Dataset(
        {"energy": (("angle", "rashba", "state"), energy)},
        coords={"angle": ("angle", angle, {"units": "degree"}), "rashba": [0.0, 0.4], "state": np.arange(4)},
    )
    fig, ax = plt.subplots()
    plotting.plot_sweep(ds, ax=ax, xlabel="angle", fixed={"rashba": 1})
    lines = _lines(ax)[:-1]  # the last line is the E = 0 guide
    assert len(lines) == 2  # all-NaN state columns are not drawn
    for col, (x, y) in enumerate(lines):
        np.testing.assert_array_equal(x, angle)
        np.testing.assert_array_equal(y, energy[:, 1, col])
    assert ax.get_xlabel() == "angle (degree)"
    with pytest.raises(ShapeError, match="no dimension 'J'"):
        plotting.plot_sweep(ds, xlabel="J")
    with pytest.raises(ShapeError, match="energies must be"):
        plotting.plot_sweep(angle, np.zeros((2, 2)))
    plt.close(fig)


def test_plot_shiba_bands_draws_the_computed_bands():
    model = shibajax.models.square(mu=-1.0, delta=0.3)
    q = np.linspace(0.0, np.pi, 5)
    bands = np.asarray(shiba_bands(model, shibajax.Impurity((0, 0), J=1.2), q, spacing=2, n_perp=16))
    fig, ax = plt.subplots()
    plotting.plot_shiba_bands(q, bands, ax=ax)
    drawn = _lines(ax)
    cols = np.nonzero(np.any(np.isfinite(bands), axis=0))[0]
    assert len(drawn) == cols.size > 0
    for col, (x, y) in zip(cols, drawn, strict=True):
        np.testing.assert_array_equal(x, q)
        np.testing.assert_array_equal(y, bands[:, col])
    with pytest.raises(ShapeError, match="bands must be"):
        plotting.plot_shiba_bands(q, bands[:2])
    plt.close(fig)


def test_plot_chain_ldos_colour_map_holds_the_ldos():
    positions = np.arange(6.0)
    energies = np.linspace(-0.3, 0.3, 7)
    ldos = np.random.default_rng(0).random((7, 6))
    fig, ax = plt.subplots()
    plotting.plot_chain_ldos(positions, energies, ldos, ax=ax)
    (mesh,) = ax.collections
    np.testing.assert_array_equal(np.asarray(mesh.get_array()).reshape(7, 6), ldos)
    np.testing.assert_allclose(ax.get_xlim(), (-0.5, 5.5))  # 'nearest' shading centres cells on the positions
    np.testing.assert_allclose(ax.get_ylim(), (-0.35, 0.35))
    with pytest.raises(ShapeError, match=r"ldos must be \(n_E, n_pos\)"):
        plotting.plot_chain_ldos(positions, energies, ldos.T)
    plt.close(fig)
