"""Hosts of the fits beyond one band (shibajax.fitting.hosts): every built-in model, TOML hopping tables and adatoms
with orbital channels, checked against the library's own solver on the same host and against the models built
directly."""

import numpy as np
import pytest

import shibajax
from shibajax.adatoms import Adatom, OrbitalChannel
from shibajax.config import ConfigError
from shibajax.fitting import green_blocks
from shibajax.fitting.commands import resolve_config
from shibajax.fitting.hosts import adatom_couplings, fit_host, host_from_config, load_hopping_table, resolve_host

PARAMS = {"K_0": 1.0, "J_0": 10.0}


def test_adatom_couplings_reproduce_the_adatom_potential():
    # V(theta) = sum_c theta_c B_c must equal the adatom's own potential when theta holds its K_c, J_c: the basis is
    # linear in each channel's K and J and nothing else (exact up to rounding).
    model = shibajax.models.square(t=1.0, mu=-1.0, delta=0.2)
    shapes = [("dz2", 0.3, 1.1), ("dxy", -0.2, 0.7), ("s", 0.5, -0.4)]
    ad = Adatom((0.4, 0.2), height=0.5, extent=0.6, channels=[OrbitalChannel(s, K=k, J=j) for s, k, j in shapes])
    couplings = adatom_couplings(model, ad)
    theta = np.ravel([(k, j) for _, k, j in shapes])
    sites, v = ad.lattice_potential(model)
    assert couplings.names == ("K_dz2", "J_dz2", "K_dxy", "J_dxy", "K_s", "J_s")
    assert np.array_equal(couplings.sites, sites)
    # the fit host names them by channel index, in the adatom's order
    assert fit_host(model, ad, kgrid=(8, 8), eta=0.1).couplings.names == ("K_0", "J_0", "K_1", "J_1", "K_2", "J_2")
    assert np.max(np.abs(np.asarray(couplings.potential(theta)) - np.asarray(v))) < 1e-12


def test_hopping_table_equals_the_built_in_model(tmp_path):
    # A TOML table of the square lattice's nearest-neighbour hoppings (partners at -d filled in) with mu and delta
    # given in [host] is the built-in square model: the same BdG matrix at any k (exact).
    table = tmp_path / "square.toml"
    table.write_text("n_orb = 1\n[[hopping]]\nd = [1, 0]\nt = -10.0\n[[hopping]]\nd = [0, 1]\nt = -10.0\n")
    model = load_hopping_table(table, mu=-20.0, delta=1.35)
    ref = shibajax.models.square(t=10.0, mu=-20.0, delta=1.35)
    for k in np.random.default_rng(0).uniform(-np.pi, np.pi, size=(5, 2)):
        a = np.asarray(shibajax.models.bdg_hamiltonian(model, k))
        b = np.asarray(shibajax.models.bdg_hamiltonian(ref, k))
        assert np.max(np.abs(a - b)) < 1e-12
    # relative paths in a config are taken from the config's folder
    cfg = resolve_config({"host": {"model": "from_hoppings", "hoppings": "square.toml"}, "params": PARAMS}, tmp_path)
    assert cfg["host"]["hoppings"] == str(table)


def test_graser_host_is_the_published_model_in_mev():
    # The fits work in meV; Graser's table is in eV: the host's bands are 1000 times the model's at every k.
    resolved = resolve_host({"model": "graser2009", "mu": -27.2, "delta": 5.0, "kgrid": 8}, {"channels": [[0], [3]]})
    host = host_from_config(resolved)
    ref = shibajax.models.graser2009(mu=-0.0272, delta=0.005)
    k = np.array([0.3, -1.2])
    a = np.linalg.eigvalsh(np.asarray(shibajax.models.bdg_hamiltonian(host.model, k)))
    b = np.linalg.eigvalsh(np.asarray(shibajax.models.bdg_hamiltonian(ref, k)))
    assert np.max(np.abs(a - 1000.0 * b)) < 1e-9  # rounding of eV-scale eigenvalues times 1000
    assert host.couplings.names == ("K_0", "J_0", "K_1", "J_1") and host.channel_labels[1] == "orbitals (3,)"


def test_adatom_host_spectrum_equals_the_solver_ldos():
    # The G0 blocks of an adatom host, with the adatom's couplings, give the electron LDOS that shibajax.ldos computes
    # for the adatom itself at the tip site (an independent path: the T-matrix of the full potential).
    model = shibajax.models.square(t=1.0, mu=-1.0, delta=0.2, rashba=0.3)
    ad = Adatom(
        (0.3, 0.2), height=0.4, extent=0.5, channels=[OrbitalChannel("dz2", K=0.2, J=1.4), OrbitalChannel("dxz", J=0.6)]
    )
    host = fit_host(model, ad, kgrid=(12, 12), eta=0.02)
    energies = np.linspace(-0.5, 0.5, 11)
    blocks = green_blocks(model, host.couplings, [host.tip_site], energies, eta=host.eta, kgrid=host.kgrid)
    fitted = np.asarray(blocks.ldos(np.array([0.2, 1.4, 0.0, 0.6])))[:, 0]
    direct = np.asarray(shibajax.ldos(model, ad, [host.tip_site], energies, eta=0.02, kgrid=(12, 12)).electron)[:, 0]
    assert np.max(np.abs(fitted - direct)) < 1e-10 * np.max(np.abs(direct))


def test_mn_adatom_config_and_clear_errors(tmp_path):
    cfg = resolve_config({"host": {"model": "nb110"}, "impurity": {"adatom": "mn"}, "params": PARAMS | _five()})
    assert cfg["impurity"] == {"adatom": "mn"}
    cases = [
        ({"host": {"model": "pb111"}}, r"\[host\]\.model must be one of 'square', 'nb110'"),
        ({"host": {"model": "nb110", "t": 1.0}}, r"unknown config key '\[host\]\.t'; allowed keys in \[host\]"),
        ({"impurity": {"adatom": "mn"}}, r'adatom = "mn" is the Mn adatom of Nb\(110\): set \[host\]\.model'),
        ({"host": {"model": "from_hoppings"}}, r"\[host\]\.hoppings must name a TOML hopping table"),
        ({"impurity": {"channels": [0, 1]}}, r"\[impurity\]\.channels must be a list of orbital lists"),
        ({"impurity": {"adatom": {"position": [0, 0]}}}, r"\[impurity\]\.adatom needs height, extent, shapes"),
    ]
    for config, message in cases:
        with pytest.raises(ConfigError, match=message):
            resolve_config(config | {"params": PARAMS})
    bad = tmp_path / "bad.toml"
    bad.write_text("n_orb = 2\n[[hopping]]\nd = [1, 0]\nt = [[1.0, 2.0]]\n")
    with pytest.raises(ConfigError, match=r"hopping\[0\]\.t must be a number or a 2 x 2 matrix"):
        load_hopping_table(bad)


def _five():
    return {f"{kind}_{i}": 1.0 for i in range(1, 5) for kind in "KJ"}
