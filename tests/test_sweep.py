"""Parameter sweeps (shibajax.sweep): vmapped sharded chunks, NetCDF output, resume, config errors, CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import xarray as xr

import shibajax
from shibajax import sweep
from shibajax.cli import main
from shibajax.clusters import impurities_at, spiral_spins

ROOT = Path(__file__).resolve().parents[1]
VARIABLES = ("energy", "multiplicity", "n_states", "gap_edge", "has_gap", "converged", "done")

BIG = {
    "kgrid": 8,
    "model": {"mu": -1.0, "delta": 0.3, "rashba": 0.3},
    "impurity": {"kind": "dimer", "separation": [2, 1], "K": 0.1},
    "sweep": {"J": np.linspace(0.5, 3.0, 40).tolist(), "angle": np.linspace(0.0, 180.0, 25).tolist()},
}
# Small, with a shape-changing parameter (two groups) and a chunk size that does not divide the groups.
SMALL = {
    "kgrid": [8, 8],
    "model": {"mu": -1.0, "delta": 0.3},
    "impurity": {"kind": "dimer", "J": 1.5},
    "sweep": {"separation": [[1, 0], [2, 1]], "angle": [0.0, 45.0, 90.0, 135.0, 180.0], "rashba": [0.0, 0.4]},
}
SMALL_CHUNK = 3


def reference(model_kw, sites, angle_deg, K, J, kgrid):
    model = shibajax.models.square(**model_kw)
    imps = impurities_at(np.asarray(sites), spiral_spins(len(sites), np.deg2rad(angle_deg)), K=K, J=J)
    return shibajax.bound_state_energies(model, imps, kgrid=kgrid)


def assert_same(a: xr.Dataset, b: xr.Dataset, atol=1e-12):
    assert dict(a.sizes) == dict(b.sizes)
    for name in VARIABLES:
        x, y = a[name].values, b[name].values
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, atol=atol, rtol=0, equal_nan=True, err_msg=name)
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """The 1000-point sweep, counting vmapped calls (one per chunk) and traces of the per-point solver."""
    out = tmp_path_factory.mktemp("big") / "big.nc"
    calls, traces = [], []
    evaluate, solver = sweep._evaluate, sweep.bound_state_energies

    def counting_evaluate(params, **kw):
        calls.append({k: v.shape for k, v in params.items()})
        return evaluate(params, **kw)

    def counting_solver(*args, **kw):
        traces.append(1)
        return solver(*args, **kw)

    with (
        mock.patch.object(sweep, "_evaluate", counting_evaluate),
        mock.patch.object(sweep, "bound_state_energies", counting_solver),
    ):
        sweep.run_sweep(BIG, out, chunk=256, progress=False)  # compiles
        out.unlink()
        calls.clear()
        traces.clear()
        start = time.perf_counter()
        ds = sweep.run_sweep(BIG, out, chunk=256, progress=False)
        seconds = time.perf_counter() - start
    print(f"\n1000-point sweep: {seconds:.2f} s, {ds['done'].size / seconds:.0f} configurations/s")
    return ds, out, calls, traces


def test_big_sweep_is_one_vmapped_call_per_chunk(big):
    ds, _, calls, traces = big
    assert ds["done"].size == 1000 and bool(ds["done"].all())
    assert len(calls) == math.ceil(1000 / 256)  # one call per chunk, not one per configuration
    assert all(shape == (256,) for c in calls for shape in c.values())  # the whole chunk in one batch
    # The solver is traced at most twice (a shape probe and, unless cached, one compilation: one group), never
    # called per configuration.
    assert len(traces) <= 2
    assert bool(ds["has_gap"].all()) and bool(ds["converged"].all())
    assert set(np.unique(ds["n_states"].values)) <= {0, 2, 4}
    assert int((ds["n_states"] > 0).sum()) > 500


def test_big_sweep_equals_per_point_calls(big):
    ds, out, _, _ = big
    on_disk = xr.load_dataset(out)
    assert_same(ds, on_disk, atol=0)
    rng = np.random.default_rng(0)
    for flat in rng.choice(1000, size=4, replace=False):
        i, j = np.unravel_index(flat, (40, 25))
        J, angle = BIG["sweep"]["J"][i], BIG["sweep"]["angle"][j]
        ref = reference({"mu": -1.0, "delta": 0.3, "rashba": 0.3}, [[0, 0], [2, 1]], angle, 0.1, J, (8, 8))
        point = on_disk.isel(J=i, angle=j)
        np.testing.assert_allclose(point["energy"].values, np.asarray(ref.energies), atol=1e-12, equal_nan=True)
        np.testing.assert_array_equal(point["multiplicity"].values, np.asarray(ref.multiplicity))
        assert int(point["n_states"]) == int(ref.n_states)
        np.testing.assert_allclose(float(point["gap_edge"]), float(ref.gap_edge), atol=1e-12)
    assert on_disk["energy"].attrs["units"] == sweep.ENERGY_UNIT
    assert json.loads(on_disk.attrs["config"]) == sweep.resolve_config(BIG)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "small.nc"
    return sweep.run_sweep(SMALL, out, chunk=SMALL_CHUNK, progress=False), out


def test_small_sweep_groups_by_separation(small):
    ds, _ = small
    assert list(ds["energy"].dims) == ["separation", "angle", "rashba", "state"]
    assert ds["separation_vector"].values.tolist() == [[1, 0], [2, 1]]
    ref = reference({"mu": -1.0, "delta": 0.3, "rashba": 0.4}, [[0, 0], [1, 0]], 135.0, 0.0, 1.5, (8, 8))
    got = ds.isel(separation=0, angle=3, rashba=1)
    np.testing.assert_allclose(got["energy"].values, np.asarray(ref.energies), atol=1e-12, equal_nan=True)


FOUR_DEVICES = textwrap.dedent(
    """
    import json, sys, jax
    from shibajax.sweep import run_sweep
    assert len(jax.devices()) == 4, jax.devices()
    run_sweep(json.loads(sys.argv[1]), sys.argv[2], chunk=int(sys.argv[3]), progress=False)
    print("OK")
    """
)


def test_four_devices_equal_one_device(small, tmp_path):
    ds, _ = small
    out = tmp_path / "four.nc"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    args = [sys.executable, "-c", FOUR_DEVICES, json.dumps(SMALL), str(out), str(SMALL_CHUNK)]
    run = subprocess.run(args, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "OK"
    four = xr.load_dataset(out)
    assert bool(four["done"].all())
    assert_same(ds, four, atol=1e-12)
    assert four.attrs["config"] == ds.attrs["config"]


def test_thousand_point_sweep_on_four_devices_equals_one_device(big, tmp_path):
    """The 1000-point sweep, sharded over four simulated CPU devices (3 full chunks of 256 and a padded one),
    equals the one-device run. Each device evaluates the same per-point program (lax.map on CPU) on its slice,
    so the results are expected bitwise equal; 1e-12 (relative to energies of order 0.3) is allowed only for
    a different instruction order in XLA's per-device compilation."""
    ds, _, _, _ = big
    out = tmp_path / "four_big.nc"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    args = [sys.executable, "-c", FOUR_DEVICES, json.dumps(BIG), str(out), "256"]
    start = time.perf_counter()
    run = subprocess.run(args, check=False, env=env, capture_output=True, text=True, timeout=300)
    print(f"\n1000-point sweep on 4 simulated devices (subprocess): {time.perf_counter() - start:.1f} s")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "OK"
    four = xr.load_dataset(out)
    assert four["done"].size == 1000 and bool(four["done"].all())
    assert_same(ds, four, atol=1e-12)
    assert four.attrs["config"] == ds.attrs["config"]


def test_interrupted_sweep_resumes_to_the_same_data(small, tmp_path):
    ds, _ = small
    out = tmp_path / "resumed.nc"

    def stop_after_two(chunks, points):
        if chunks == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(SMALL, out, chunk=SMALL_CHUNK, progress=False, on_chunk=stop_after_two)
    partial = xr.load_dataset(out)
    assert int(partial["done"].sum()) == 2 * SMALL_CHUNK  # every finished point is on disk
    assert np.all(np.isnan(partial["gap_edge"].values[~partial["done"].values.astype(bool)]))
    seen = []
    sweep.run_sweep(SMALL, out, chunk=SMALL_CHUNK, progress=False, on_chunk=lambda c, p: seen.append(p))
    assert seen[0] == 3 * SMALL_CHUNK  # resumed where it stopped
    assert seen[-1] == 20
    assert_same(ds, xr.load_dataset(out), atol=1e-12)
    # A complete file: nothing left to compute.
    seen.clear()
    sweep.run_sweep(SMALL, out, chunk=SMALL_CHUNK, progress=False, on_chunk=lambda c, p: seen.append(p))
    assert seen == []


def test_resume_with_a_different_config_is_rejected(small):
    _, out = small
    other = json.loads(json.dumps(SMALL))
    other["model"]["mu"] = -0.8
    with pytest.raises(sweep.SweepConfigError, match=r"different sweep config.*model\.mu"):
        sweep.run_sweep(other, out, progress=False)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"sweep": {"jj": [1.0]}}, "'sweep.jj'"),
        ({"model": {"muu": -1.0}}, "'model.muu'"),
        ({"impurity": {"pitch": 10.0}}, "'impurity.pitch'"),  # a chain key on a dimer
        ({"kgridd": 8}, "'kgridd'"),
        ({"sweep": {"J": []}}, "sweep.J"),
        ({"sweep": {"separation": [[0, 0]]}}, "sweep.separation[0]"),
        ({"impurity": {"kind": "trimer"}}, "impurity.kind"),
    ],
)
def test_config_errors_name_the_key(config, needle):
    with pytest.raises(sweep.SweepConfigError) as err:
        sweep.resolve_config(config)
    assert needle in str(err.value)


def test_cli_unknown_key_exits_2(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("kgrid = 8\n[sweep]\nangel = [0.0, 90.0]\n")
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "bad.nc")]) == 2
    err = capsys.readouterr().err
    assert "sweep.angel" in err and err.startswith("error:")
    assert not (tmp_path / "bad.nc").exists()


def test_cli_resume_with_other_config_exits_2(small, tmp_path, capsys):
    _, out = small
    cfg = tmp_path / "other.toml"
    cfg.write_text("kgrid = 8\n[sweep]\nangle = [0.0, 90.0]\n")
    assert main(["sweep", str(cfg), "--out", str(out)]) == 2
    assert "different sweep config" in capsys.readouterr().err


def test_cli_example_writes_a_readable_file(tmp_path, capsys):
    out = tmp_path / "tmp.nc"
    assert main(["sweep", str(ROOT / "examples" / "sweep_dimer.toml"), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    ds = xr.load_dataset(out)
    assert dict(ds["n_states"].sizes) == {"angle": 13, "rashba": 2}
    assert ds["angle"].values[[0, -1]].tolist() == [0.0, 180.0]
    assert ds["angle"].attrs["units"] == "degree"
    assert bool(ds["done"].all()) and bool(ds["converged"].all())
    # particle-hole symmetry at every point
    for row in ds["energy"].values.reshape(-1, ds.sizes["state"]):
        e = row[np.isfinite(row)]
        assert e.size == 4
        np.testing.assert_allclose(e, -e[::-1], atol=1e-10)


def test_chain_sweep_over_n_and_pitch(tmp_path):
    cfg = {
        "kgrid": 8,
        "impurity": {"kind": "chain", "spacing": 2, "J": 1.2},
        "sweep": {"n": [2, 3], "pitch": [0.0, 90.0, 180.0]},
    }
    ds = sweep.run_sweep(cfg, tmp_path / "chain.nc", chunk=4, progress=False)
    assert ds.sizes["state"] == 3 * 4  # the largest group: three sites, Nambu dimension 4
    assert np.all(np.isnan(ds["energy"].sel(n=2).values[:, 8:]))  # the two-site group is NaN-padded
    sites = [[0, 0], [2, 0], [4, 0]]
    ref = reference({"mu": -1.0, "delta": 0.3}, sites, 90.0, 0.0, 1.2, (8, 8))
    got = ds.sel(n=3, pitch=90.0)["energy"].values
    np.testing.assert_allclose(got, np.asarray(ref.energies), atol=1e-12, equal_nan=True)
