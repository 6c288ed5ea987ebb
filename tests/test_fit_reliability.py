"""Fit reliability (issue 12, items 1 and 7): checkpoints are keyed on everything that fixes a fit's result and
refused for another problem; a fit resumes inside a block of starts (per batch of iterations) with the results
of an uninterrupted run; the ``shibajax fit`` config is checked key by key before any work, the output folder
is tested before the computation starts; the progress bar moves after every batch.

Host: the one-band s-wave square lattice in meV of tests/test_fitting.py on an 8 x 8 grid (exact for that
periodic lattice; synthetic data from the same model). Command-line cases use the measured MnPc and bare-Pb
spectra with a uniform 8 x 8 grid: only the checks and the bookkeeping are tested here, not the physics.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from shared_data import REALDATA

import shibajax
import shibajax.config
from shibajax.config import ConfigError
from shibajax.errors import FitError, OutputPathError, ShibajaxError
from shibajax.fitting import Dataset, Problem, SpectrumModel, coupling_basis, fit, green_blocks, optimise
from shibajax.fitting.commands import plan_fit, resolve_config
from shibajax.fitting.optimise import multistart

HOST = shibajax.models.square(t=10.0, mu=-20.0, delta=1.35)
ENERGIES = np.arange(-4.0, 4.0 + 1e-9, 0.08)
BIAS = np.linspace(-2.5, 2.5, 51)
NOISE = 0.02
TRUTH = {"K_0": 4.0, "J_0": 22.0, "scale": 1.0, "offset": 0.0, "bg0": 0.0, "bg1": 0.0}
TRUTH |= {"temperature": 1.2, "lockin": 0.03}
MNPC = REALDATA / "spectrafox_MnPc-Pb111_Spec001.dat"
BARE_PB = REALDATA / "spectrafox_MnPc-Pb111_grid1_001_bare-Pb.dat"


@pytest.fixture(scope="module")
def spectrum_model():
    couplings = coupling_basis(HOST, [(0, 0)])
    return SpectrumModel(green_blocks(HOST, couplings, [(0, 0)], ENERGIES, eta=0.08, kgrid=(8, 8)))


@pytest.fixture(scope="module")
def problem(spectrum_model):
    """One problem object for the whole module: fits of it share their compiled loops (cached per objective)."""
    return _problem(spectrum_model)


def _problem(model, shift=0.0, upper=15.0):
    clean = np.asarray(model({k: jnp.asarray(v) for k, v in TRUTH.items()}, jnp.asarray(BIAS)))
    data = clean + NOISE * np.random.default_rng(3).normal(size=BIAS.size) + shift
    params = {k: {"value": v, "fixed": True} for k, v in TRUTH.items()}
    params |= {
        "K_0": {"value": 2.0, "lower": -10.0, "upper": upper},
        "J_0": {"value": 20.0, "lower": 15.0, "upper": 30.0},
    }
    return Problem(Dataset(model, BIAS, data, sigma=NOISE), params)


class _Interrupt:
    """on_batch hook: records every batch report and raises KeyboardInterrupt after the ``after``-th batch."""

    def __init__(self, after=None):
        self.after, self.reports = after, []

    def __call__(self, info):
        self.reports.append(info)
        if self.after is not None and len(self.reports) == self.after:
            raise KeyboardInterrupt


# ------------------------------------------------------------------------- resuming inside a block of starts


def test_fit_killed_inside_its_block_resumes_to_the_uninterrupted_result(problem, tmp_path):
    """One block of three starts (Levenberg-Marquardt), two iterations per batch: killed after the first batch,
    the checkpoint holds every start's optimiser state; the resumed fit continues at iteration 2 (not from
    scratch) and ends where an uninterrupted run ends (with batches of another size), to 1e-12: the same
    compiled loop body runs the same iterations, only the loop is cut in other places."""
    whole = multistart(problem.residuals, problem.space.sample(4, 3), method="lm", max_iter=30, progress=False)
    common = {"n_starts": 3, "seed": 4, "method": "lm", "max_iter": 30, "batch_iter": 2, "progress": False}
    path = tmp_path / "fit.npz"
    with pytest.raises(KeyboardInterrupt):
        fit(problem, checkpoint=path, on_batch=_Interrupt(after=1), **common)
    saved = np.load(path)
    assert int(saved["partial_start"]) == 0 and int(saved["partial_limit"]) == 2 and not saved["done"].any()

    hook = _Interrupt()
    resumed = fit(problem, checkpoint=path, on_batch=hook, **common)
    assert hook.reports[0]["iterations"] == 4  # continued from the saved state of iteration 2
    assert np.any(whole.iterations > 2)  # (so the cut fell inside the run of some start)
    np.testing.assert_allclose(resumed.losses, np.sort(whole.loss), rtol=1e-12, atol=0)
    np.testing.assert_allclose(resumed.u, whole.u[whole.best], rtol=1e-12, atol=1e-12)
    assert np.load(path)["done"].all() and int(np.load(path)["partial_start"]) == -1


def test_lbfgs_state_survives_the_checkpoint(problem, tmp_path):
    """The same for L-BFGS, whose state is optax's pytree (memory of past steps, line-search state): killed
    after the second batch of three iterations, resumed, equal to the uninterrupted run to 1e-12."""
    starts = problem.space.sample(4, 2)
    common = {"method": "lbfgs", "max_iter": 12, "progress": False}
    whole = multistart(problem.loss, starts, batch_iter=5, **common)
    path = tmp_path / "fit.npz"
    with pytest.raises(KeyboardInterrupt):
        multistart(problem.loss, starts, checkpoint=path, batch_iter=3, on_batch=_Interrupt(after=2), **common)
    assert int(np.load(path)["partial_limit"]) == 6
    resumed = multistart(problem.loss, starts, checkpoint=path, batch_iter=3, **common)
    np.testing.assert_array_equal(resumed.iterations, whole.iterations)
    np.testing.assert_allclose(resumed.loss, whole.loss, rtol=1e-12, atol=0)
    np.testing.assert_allclose(resumed.u, whole.u, rtol=1e-12, atol=1e-12)
    # every batch of the three runs (fresh, killed, resumed from saved arrays) used one compilation
    fingerprint = optimise.objective_fingerprint(problem.loss, starts[0])
    _, _, advance = optimise._compiled(problem.loss, "lbfgs", {"max_iter": 12}, fingerprint)
    assert advance._cache_size() == 1


def test_progress_bar_and_batches_move_with_the_iterations(problem, monkeypatch):
    """The tqdm bar counts iterations and moves after every batch; with batch_iter=None the first batch is one
    iteration (a checkpoint and a bar update come right after the compilation) and batches then grow at most
    4 x per batch (aimed at BATCH_SECONDS each)."""
    bars = []

    class Bar:
        def __init__(self, total, initial, enabled, desc):
            self.total, self.n, self.updates = total, initial, []
            bars.append(self)

        def update(self, k):
            self.updates.append(k)
            self.n += k

        def set_postfix(self, **kwargs):
            self.postfix = kwargs

        def close(self):
            self.closed = True

    monkeypatch.setattr(optimise, "_progress", Bar)
    hook = _Interrupt()
    multistart(problem.residuals, problem.space.sample(1, 3), method="lm", max_iter=30, on_batch=hook)
    (bar,) = bars
    limits = [r["iterations"] for r in hook.reports]
    assert limits[0] == 1 and len(limits) == len(bar.updates) >= 2
    steps = np.diff([0, *limits])
    assert np.all(steps[1:] <= 4 * steps[:-1])
    assert bar.total == 30 and bar.n == 30 and bar.closed and "best_loss" in bar.postfix


# ------------------------------------------------------------------------- checkpoints of another problem


def test_library_fit_refuses_a_checkpoint_of_another_problem(problem, spectrum_model, tmp_path):
    """fit(..., checkpoint=) and multistart(..., checkpoint=) refuse a checkpoint written for other data, bounds,
    options or starts, naming what differs; nothing is computed before the refusal."""
    path = tmp_path / "fit.npz"
    with pytest.raises(KeyboardInterrupt):  # a checkpoint of this problem, left after its first batch
        fit(
            problem,
            checkpoint=path,
            n_starts=3,
            seed=4,
            method="lm",
            max_iter=30,
            batch_iter=1,
            progress=False,
            on_batch=_Interrupt(after=1),
        )
    before = path.read_bytes()
    cases = [
        (_problem(spectrum_model, shift=0.01), {}, r"fit\.datasets\[0\]\.data content differs"),
        (_problem(spectrum_model, upper=14.0), {}, r"fit\.parameters\.K_0\.upper: 15\.0 -> 14\.0"),
        (problem, {"max_iter": 31}, r"multistart\.options\.max_iter: 30 -> 31"),
        (problem, {"seed": 1}, r"fit\.seed: 4 -> 1.*start points differ"),
    ]
    for other, change, match in cases:
        kwargs = {"n_starts": 3, "seed": 4, "method": "lm", "max_iter": 30, "batch_iter": 1, "progress": False}
        kwargs |= change
        with pytest.raises(FitError, match=match) as err:
            fit(other, checkpoint=path, **kwargs)
        assert str(path) in str(err.value) and "--restart" in str(err.value)
    # multistart alone (no fit-level key): another objective is caught by its fingerprint
    starts = problem.space.sample(4, 3)
    with pytest.raises(FitError, match="the objective differs"):
        multistart(
            _problem(spectrum_model, shift=0.01).residuals,
            starts,
            method="lm",
            max_iter=30,
            checkpoint=path,
            progress=False,
        )
    assert path.read_bytes() == before  # a refused checkpoint is left as it was


def test_unreadable_or_keyless_checkpoints_are_refused(problem, tmp_path):
    old = tmp_path / "old.npz"
    np.savez(old, tag="0" * 64, u=np.zeros((2, 2)), loss=np.zeros(2), iterations=np.zeros(2), done=np.ones(2, bool))
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip file")
    for path, match in [(old, "no record of the problem"), (broken, "cannot be read")]:
        with pytest.raises(FitError, match=match):
            fit(problem, checkpoint=path, n_starts=2, method="lm", max_iter=5, progress=False)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_iter": -5}, "max_iter = -5 must be a positive integer"),
        ({"max_iter": 2.5}, "max_iter = 2.5 must be a positive integer"),
        ({"steps": 10}, "unknown option 'steps' of method 'lm'"),
        ({"ftol": float("nan")}, "ftol = nan must be a finite number >= 0"),
        ({"n_starts": 0}, "n_starts = 0 must be a positive integer"),
        ({"batch_iter": 0}, "batch_iter = 0 must be a positive integer"),
        ({"method": "newton"}, "method = 'newton'"),
    ],
)
def test_library_fit_options_are_checked_before_any_work(problem, options, match):
    """fit(max_iter=-5) used to return the start values as "the fit"."""
    kwargs = {"n_starts": 2, "method": "lm", "progress": False} | options
    with pytest.raises(FitError, match=match):
        fit(problem, **kwargs)


# ------------------------------------------------------------------------- shibajax fit: config and checkpoint

SMALL = {
    "host": {"t": 10.0, "mu": -20.0, "delta": 1.305, "eta": 0.08, "kgrid": 8, "energy_step": 0.05},
    "data": {"bias_window": [-2.5, 2.5]},
    "fit": {"n_starts": 2, "method": "lm", "max_iter": 6},
    "params": {
        "K_0": {"value": -10.0, "lower": -30.0, "upper": 30.0},
        "J_0": {"value": 14.0, "lower": 2.0, "upper": 40.0},
    },
}


def _data(path):
    if not path.is_file():
        pytest.fail(f"missing shared data file {path} (see shared/realdata/MANIFEST.md)")
    return path


def _with(table, key, value):
    cfg = json.loads(json.dumps(SMALL))
    if key is None:
        cfg[table] = value
    else:
        cfg.setdefault(table, {})[key] = value
    return cfg


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (_with("host", "energy_step", 0), r"\[host\]\.energy_step must be > 0; got 0"),
        (_with("host", "t", "10"), r"\[host\]\.t must be a finite number; got '10'"),
        (_with("host", "eta", -0.1), r"\[host\]\.eta must be > 0"),
        (_with("host", "mu", 50.0), r"\[host\]\.mu = 50\.0 lies outside the band"),
        (_with("host", "kgrid", 2), r"\[host\]\.kgrid must be an integer L >= 4"),
        (_with("host", "kgrid", 16.5), r"\[host\]\.kgrid must be a positive integer; got 16\.5"),
        (_with("host", "channels", 0), r"\[host\]\.channels must be a positive integer"),
        (_with("host", "fermi_shell", "yes"), r"\[host\]\.fermi_shell must be a finite number"),
        (_with("host", "muu", 1.0), r"unknown config key '\[host\]\.muu'; allowed keys in \[host\]: channels"),
        (_with("tip", "kind", "sc"), r"\[tip\]\.kind must be one of 'normal', 'dynes'; got 'sc'"),
        (_with("data", "bias_window", [1.0]), r"\[data\]\.bias_window must be a list of 2 numbers; got \[1\.0\]"),
        (_with("data", "bias_window", [2.0, -2.0]), r"lo < hi"),
        (_with("data", "direction", "up"), r"\[data\]\.direction must be one of"),
        (_with("fit", "max_iter", -5), r"\[fit\]\.max_iter must be a positive integer; got -5"),
        (_with("fit", "n_starts", "8"), r"\[fit\]\.n_starts must be a positive integer; got '8'"),
        (_with("fit", "method", "newton"), r"\[fit\]\.method must be one of 'lbfgs', 'adam', 'lm'"),
        (_with("fit", "seed", -1), r"\[fit\]\.seed must be an integer >= 0"),
        (_with("fit", "out", 3), r"\[fit\]\.out must be a folder name"),
        (_with("hots", None, {}), r"unknown config key 'hots'; allowed keys: data, fit, host, impurity, params, tip"),
        (_with("host", None, 3), r"\[host\] must be a table"),
        (_with("params", "K_9", 1.0), r"unknown config key '\[params\]\.K_9'; allowed keys in \[params\]: J_0, K_0"),
        (_with("params", "K_0", "x"), r"\[params\]\.K_0 must be a number \(a free start value\) or a table"),
        (_with("params", "K_0", {"value": 40.0, "lower": -30.0, "upper": 30.0}), r"K_0\.value = 40\.0 must lie"),
        (_with("params", "K_0", {"value": 1.0, "lower": 30.0, "upper": -30.0}), r"lower = 30\.0 must be below"),
        (_with("params", "K_0", {"value": 1.0, "fixd": True}), r"unknown config key '\[params\]\.K_0\.fixd'"),
        (_with("params", "K_0", {"value": 1.0, "fixed": "yes"}), r"\[params\]\.K_0\.fixed must be true or false"),
        (_with("params", "K_0", {"value": "1"}), r"\[params\]\.K_0\.value must be a finite number"),
        (_with("params", "K_0", {"tie": "K_7"}), r"\[params\]\.K_0\.tie must name another parameter"),
        (_with("params", "K_0", {"lower": 0.0}), r"\[params\]\.K_0 needs a start value"),
        (_with("params", "temperature", {"value": -1.0, "fixed": True}), r"temperature\.value must be > 0"),
        (_with("params", "temperature", {"value": 1.0, "lower": -1.0, "upper": 3.0}), r"lower bound >= 0"),
        (_with("params", None, {"K_0": 1.0}), r"\[params\] must set J_0"),
        (_with("tip", "kind", "dynes"), r"\[params\] must set tip_delta, tip_gamma"),
        ({k: v for k, v in SMALL.items() if k != "params"}, r"needs a \[params\] table"),
    ],
)
def test_fit_config_errors_name_the_key_the_value_and_the_fix(config, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(config)


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("config", "match"),
    [
        (_with("host", "energy_step", 1.0), r"energy_step = 1\.0 meV gives \d+ energies .* use a step between"),
        (_with("host", "energy_step", 1e-5), r"energy_step = 1e-05 meV gives \d+ energies"),
        (_with("data", "bias_window", [10.0, 20.0]), r"only 0 points of .* lie in bias_window = \[10\.0, 20\.0\]"),
    ],
)
def test_fit_config_errors_that_need_the_data(config, match, tmp_path):
    with pytest.raises(ShibajaxError, match=match):
        plan_fit(_data(MNPC), config, tmp_path / "out")


@pytest.mark.realdata
def test_cli_config_error_is_one_line_before_any_work(tmp_path, capsys):
    """``energy_step = 0`` used to end in a raw NumPy traceback."""
    from shibajax.cli import main

    cfg = tmp_path / "fit.toml"
    cfg.write_text("[host]\nenergy_step = 0\n[params]\nK_0 = 1.0\nJ_0 = 10.0\n")
    assert main(["fit", str(_data(MNPC)), "--config", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: [host].energy_step must be > 0; got 0") and "Traceback" not in err


@pytest.mark.realdata
def test_unwritable_output_folder_is_refused_before_the_computation(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OutputPathError, match=f"cannot write the fit output to '{blocker / 'out'}'"):
        plan_fit(_data(MNPC), SMALL, blocker / "out")
    plan = plan_fit(_data(MNPC), SMALL, tmp_path / "new" / "out")  # created, test-written, left empty
    assert plan.folder.is_dir() and not any(plan.folder.iterdir())


@pytest.mark.realdata
def test_cli_refuses_the_checkpoint_of_another_data_file_or_config(tmp_path, capsys, monkeypatch):
    """Issue 12, item 1: ``shibajax fit BARE_PB --out D`` after an MnPc fit in D used to return the MnPc values
    in 0.01 s. Now it is refused before any work, naming what differs; the same data and config resume;
    --restart discards the checkpoint. The command says where it writes before it starts, and a Ctrl-C says
    what was saved. (tests/test_fitting_workflow.py runs the command to its end.)"""
    from shibajax.cli import build_parser, main
    from shibajax.fitting import commands

    out = tmp_path / "out"
    cfg = tmp_path / "fit.toml"
    cfg.write_text(
        "[host]\nt = 10.0\nmu = -20.0\ndelta = 1.305\neta = 0.08\nkgrid = 8\nenergy_step = 0.05\n"
        '[data]\nbias_window = [-2.5, 2.5]\n[fit]\nn_starts = 2\nmethod = "lm"\nmax_iter = 6\n'
        "[params]\nK_0 = { value = -10.0, lower = -30.0, upper = 30.0 }\n"
        "J_0 = { value = 14.0, lower = 2.0, upper = 40.0 }\n"
    )
    assert resolve_config(shibajax.config.load_toml(cfg)) == resolve_config(SMALL)
    build = commands.build_problem

    def ctrl_c(*args, **kwargs):  # Ctrl-C as the computation starts
        raise KeyboardInterrupt

    command = ["fit", str(_data(MNPC)), "--config", str(cfg), "--out", str(out)]
    monkeypatch.setattr(commands, "build_problem", ctrl_c)
    assert main(command) == 130
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].endswith(f"writing fit_report.json, fit.png, fit_checkpoint.npz to {out}/")
    assert "interrupted: nothing was saved yet" in captured.err

    monkeypatch.setattr(commands, "build_problem", build)
    plan = plan_fit(_data(MNPC), cfg, out)
    with pytest.raises(KeyboardInterrupt):  # killed after its first batch: a checkpoint with optimiser states
        commands.execute_fit(plan, progress=False, batch_iter=1, on_batch=_Interrupt(after=1))
    assert int(np.load(plan.checkpoint)["partial_limit"]) == 1

    with pytest.raises(FitError, match="data file content differs") as err:
        plan_fit(_data(BARE_PB), SMALL, out)
    assert "--restart" in str(err.value) and "[host]" not in str(err.value)
    with pytest.raises(FitError, match=r"\[host\]\.delta: 1\.305 -> 1\.2"):
        plan_fit(_data(MNPC), _with("host", "delta", 1.2), out)
    with pytest.raises(FitError, match=r"\[params\]\.J_0\.upper: 40\.0 -> 30\.0"):
        plan_fit(_data(MNPC), _with("params", "J_0", {"value": 14.0, "lower": 2.0, "upper": 30.0}), out)
    with pytest.raises(FitError, match=r"\[fit\]\.max_iter: 6 -> 7"):
        plan_fit(_data(MNPC), _with("fit", "max_iter", 7), out)
    assert main(["fit", str(_data(BARE_PB)), "--config", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "data file content differs" in err and "--restart" in err and "Traceback" not in err

    assert plan_fit(_data(MNPC), cfg, out).resume  # same data and config: resumes
    monkeypatch.setattr(commands, "build_problem", ctrl_c)
    assert main(command) == 130
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1].startswith(f"resuming from {plan.checkpoint}")
    assert "holds the finished starts and the state of the others" in captured.err
    assert int(np.load(plan.checkpoint)["partial_limit"]) == 1  # left as it was

    assert build_parser().parse_args(["fit", "D", "--config", "C", "--restart"]).restart
    fresh = plan_fit(_data(BARE_PB), cfg, out, restart=True)  # what --restart does
    assert not fresh.resume and not fresh.checkpoint.exists()
