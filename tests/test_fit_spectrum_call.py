"""One-call spectrum fits (shibajax.fitting.fit_spectrum): the same problem and answer as ``shibajax fit`` with the
equivalent TOML config, on a real MnPc/Pb(111) spectrum, and clear errors."""

import jax.numpy as jnp
import numpy as np
import pytest
from shared_data import REALDATA

import shibajax
from shibajax.config import ConfigError, load_toml
from shibajax.errors import FitError
from shibajax.fitting import fit_host, fit_spectrum
from shibajax.fitting.commands import build_problem

SPECTRUM = REALDATA / "spectrafox_MnPc-Pb111_Spec001.dat"
CONFIG = """
[host]
t = 10.0
mu = -20.0
delta = 1.305
eta = 0.1
kgrid = 16
energy_step = 0.1
[data]
bias_window = [-2.5, 2.5]
[fit]
n_starts = 2
method = "lm"
max_iter = 15
[params]
K_0 = { value = -8.0, lower = -30.0, upper = 30.0 }
J_0 = { value = 28.0, lower = 2.0, upper = 40.0 }
offset = { value = 0.0, lower = -0.1, upper = 0.1 }
"""


@pytest.mark.realdata
def test_one_call_builds_the_command_line_problem_and_fits_it(tmp_path):
    # fit_spectrum chains the same pieces as `shibajax fit` (reader, normalisation, header temperature and lock-in,
    # energy grid, G0 blocks): with the same host and parameters its problem is the CLI's, point by point (the
    # same residuals at the fitted parameters, to rounding), and its fit lowers the loss of the start values.
    cfg = tmp_path / "fit.toml"
    cfg.write_text(CONFIG)
    cli_problem, _, _ = build_problem(SPECTRUM, load_toml(cfg))
    host = fit_host(shibajax.models.square(t=10.0, mu=-20.0, delta=1.305), kgrid=(16, 16), eta=0.1)
    params = {
        "K_0": {"value": -8.0, "lower": -30.0, "upper": 30.0},
        "J_0": {"value": 28.0, "lower": 2.0, "upper": 40.0},
        "offset": {"value": 0.0, "lower": -0.1, "upper": 0.1},
    }
    one = fit_spectrum(SPECTRUM, host, params=params, bias_window=[-2.5, 2.5], energy_step=0.1, n_starts=1, max_iter=15)
    x = jnp.asarray([one.values[name] for name in one.problem.space.free])
    assert one.problem.space.free == cli_problem.space.free
    a, b = np.asarray(one.problem.residuals_natural(x)), np.asarray(cli_problem.residuals_natural(x))
    assert a.shape == b.shape and np.max(np.abs(a - b)) < 1e-10 * np.max(np.abs(b))
    start = jnp.asarray([params[n]["value"] if n in params else 1.0 for n in one.problem.space.free])
    assert one.result.loss < float(cli_problem.loss_natural(start))
    assert "square" in one.summary() and "J_0" in one.summary()


def test_bad_input_is_named():
    with pytest.raises(FitError, match="host must be a FitHost"):
        fit_spectrum(SPECTRUM, host=shibajax.models.square(mu=-1.0, delta=0.3))
    with pytest.raises(ConfigError, match=r"\[params\]\.K_9"):
        fit_spectrum(SPECTRUM, params={"K_9": 1.0})
    with pytest.raises(FitError, match="eta = -1"):
        fit_host(shibajax.models.square(mu=-1.0, delta=0.3), kgrid=(8, 8), eta=-1)
