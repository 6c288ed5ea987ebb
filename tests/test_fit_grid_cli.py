"""``shibajax fit-grid``: a folder/list of real MnPc/Pb(111) spectra fitted from the command line, maps written, the
NetCDF resumed on a second run, and config errors named (the physics of fit_grid: tests/test_fit_grid.py)."""

import numpy as np
import pytest
import xarray as xr
from shared_data import REALDATA

from shibajax.cli import main
from shibajax.measurement import shiba_pairs

GRID = REALDATA / "mnpc_grid1"
# bare Pb (001) and two pixels with a strong Shiba pair (045, 046; in-gap maximum > 5x the normal state)
PIXELS = ["MnPc-grid1_001.dat", "MnPc-grid1_045.dat", "MnPc-grid1_046.dat"]
# a coarse host (16 x 16 grid, eta = 0.1 meV) and short fits: this tests the command, not the converged fit
CONFIG = """
[host]
t = 10.0
mu = -20.0
delta = 1.305
eta = 0.1
kgrid = 16
energy_step = 0.05
[data]
bias_window = [-2.5, 2.5]
[fit]
n_starts = 2
method = "lm"
max_iter = 20
[params]
K_0 = { value = -8.0, lower = -30.0, upper = 30.0 }
J_0 = { value = 28.0, lower = 2.0, upper = 45.0 }
offset = { value = 0.0, lower = -0.1, upper = 0.1 }
[plot]
pixels = ["MnPc-grid1_001.dat", "MnPc-grid1_045.dat"]
"""


@pytest.mark.realdata
def test_fit_grid_command_writes_maps_and_resumes(tmp_path, capsys):
    cfg = tmp_path / "grid.toml"
    cfg.write_text(CONFIG)
    files = [str(GRID / name) for name in PIXELS]
    out = tmp_path / "out"
    assert main(["fit-grid", *files, "--config", str(cfg), "--out", str(out)]) == 0
    for name in ("grid_fit.nc", "maps.png", "pixels.png"):
        assert (out / name).stat().st_size > 0, name
    first = xr.load_dataset(out / "grid_fit.nc")
    classes = dict(zip(first["name"].values.tolist(), first["class"].values.astype(str).tolist(), strict=True))
    assert classes == {PIXELS[0]: "bare", PIXELS[1]: "shiba", PIXELS[2]: "shiba"}
    # the fitted E_b lies near the model-independent peak maxima: within 0.05 meV on this coarse host (eta =
    # 0.1 meV broadens the peaks by more than the 20 ueV of the converged fit, tests/test_fit_grid.py)
    bias = np.asarray(first["bias"].values)
    pairs = shiba_pairs(bias, np.asarray(first["didv"].values), search=(0.2, 1.0), half_width=0.05)
    shiba = first["class"].values.astype(str) == "shiba"
    assert np.all(np.abs(first["E_b"].values[shiba] - pairs.energy[shiba]) < 0.05)
    assert "E_b" in capsys.readouterr().out
    # a second run finds every pixel done in grid_fit.nc: the same Dataset, nothing refitted
    assert main(["fit-grid", *files, "--config", str(cfg), "--out", str(out)]) == 0
    again = xr.load_dataset(out / "grid_fit.nc")
    for name in ("E_b", "K_0", "J_0", "chi2"):
        np.testing.assert_array_equal(again[name].values, first[name].values)


def test_fit_grid_config_errors_are_named(tmp_path, capsys):
    cfg = tmp_path / "grid.toml"
    cfg.write_text(CONFIG.replace("[plot]", "[plot]\ncolour = 1"))
    assert main(["fit-grid", str(GRID), "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "[plot] takes one key" in capsys.readouterr().err
    cfg.write_text(CONFIG.replace("n_starts = 2", "n_starts = 2\nbic_threshold = 'high'"))
    assert main(["fit-grid", str(GRID), "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "[fit].bic_threshold must be a finite number" in capsys.readouterr().err
