"""The command line: --help, info, demo (files, physics of its output) and config errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from shibajax.cli import main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "info" in out


def test_info_json_reports_float64(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["precision"]["complex"] == "complex128"
    assert info["precision"]["real"] == "float64"
    assert info["devices"]
    assert set(info["packages"]) >= {"jax", "numpy", "scipy", "optax", "matplotlib"}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--kgrid", "24"]) == 0
    return out


def test_demo_writes_bound_states_json(demo_dir):
    data = json.loads((demo_dir / "bound_states.json").read_text())
    states = data.get("bound_states", data)
    energies = np.array(states["energies"])
    mults = np.array(states["multiplicities"])
    all_e = np.repeat(energies, mults)
    assert all_e.size == 4  # two channels, two Shiba pairs
    np.testing.assert_allclose(np.sort(all_e), -np.sort(all_e)[::-1], atol=1e-10)  # particle-hole pairs
    assert np.all(np.abs(all_e) < states["gap_edge"])


def test_demo_writes_ldos_csv_and_png(demo_dir):
    with open(demo_dir / "ldos.csv") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 302  # header + 301 energies
    values = np.array(rows[1:], dtype=float)
    assert np.all(values[:, 1:] >= 0)
    assert (demo_dir / "ldos.png").stat().st_size > 10_000


def test_demo_config_with_unknown_key_is_rejected(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[model]\nmuu = -1.0\n")
    assert main(["demo", "--out", str(tmp_path / "o"), "--config", str(cfg)]) == 2
    assert "muu" in capsys.readouterr().err


def test_demo_config_overrides_model(tmp_path):
    cfg = tmp_path / "ok.toml"
    cfg.write_text("kgrid = 16\n[impurity]\nchannels = [{J = 1.4}, {K = 0.0, J = 0.0}]\n")
    assert main(["demo", "--out", str(tmp_path / "o"), "--config", str(cfg)]) == 0
    data = json.loads((tmp_path / "o" / "bound_states.json").read_text())
    states = data.get("bound_states", data)
    assert sum(states["multiplicities"]) == 2  # only the first channel is magnetic now


def test_demo_refuses_an_unwritable_out_before_computing(tmp_path, capsys, monkeypatch):
    """An --out under a plain file cannot be created: one error line naming it, and no calculation first."""
    import shibajax

    def must_not_run(*args, **kwargs):
        raise AssertionError("the demo computed before checking its output folder")

    monkeypatch.setattr(shibajax, "bound_states", must_not_run)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["demo", "--out", str(blocker / "sub"), "--kgrid", "8"]) == 2
    err = capsys.readouterr().err
    assert str(blocker / "sub") in err and "writable" in err
