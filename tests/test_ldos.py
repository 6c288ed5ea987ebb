"""LDOS: positivity, peaks at the bound states with the bound states' weights, particle-hole symmetry, sum rules."""

from __future__ import annotations

import numpy as np
import pytest

import shibajax

L = 16
MODEL = {"t": 1.0, "mu": -1.0, "delta": 0.3, "rashba": 0.4}
IMPS = [
    shibajax.Impurity((0, 0), K=0.4, J=1.5, spin=(0, 0, 1)),
    shibajax.Impurity((2, 1), K=-0.2, J=1.2, spin=(1, 0, 1)),
]
POSITIONS = [(0, 0), (1, 0), (2, 1), (5, 7)]


@pytest.fixture(scope="module")
def model():
    return shibajax.models.square(**MODEL)


def test_non_negative_and_spin_resolved_sums(model):
    energies = np.linspace(-5.0, 5.0, 401)
    res = shibajax.ldos(model, IMPS, POSITIONS, energies, eta=0.05, kgrid=(L, L), spin_axis=(1, 1, 0))
    for name in ("electron", "hole", "spin_up", "spin_down"):
        assert np.min(np.asarray(getattr(res, name))) > -1e-12, name
    np.testing.assert_allclose(res.spin_up + res.spin_down, res.electron, atol=1e-12)
    np.testing.assert_allclose(np.asarray(res.orbital).sum(-1), res.electron, atol=1e-12)
    assert res.electron.shape == (401, len(POSITIONS))


def test_particle_hole_symmetry(model):
    """Hole-block spectral function at E equals the electron-block one at -E (BdG particle-hole symmetry)."""
    energies = np.linspace(-1.0, 1.0, 81)
    res = shibajax.ldos(model, IMPS, POSITIONS, energies, eta=0.02, kgrid=(L, L))
    np.testing.assert_allclose(np.asarray(res.hole), np.asarray(res.electron)[::-1], atol=1e-10)
    states = shibajax.bound_states(model, IMPS, kgrid=(L, L))
    np.testing.assert_allclose(states.all_energies, -states.all_energies[::-1], atol=1e-12)


def test_peaks_at_bound_states_with_their_weights(model):
    """pi eta LDOS(E_b) -> |u(r)|^2 of the bound state as eta -> 0 (Lorentzian of weight |u|^2 at E_b)."""
    states = shibajax.bound_states(model, IMPS, kgrid=(L, L))
    assert len(states.energies) == 4
    eta = 1e-6  # the nearest other pole is >= 0.02 away: background ~ eta / 0.02 relative
    res = shibajax.ldos(model, IMPS, POSITIONS, states.energies, eta=eta, kgrid=(L, L))
    psi = states.wavefunctions(POSITIONS)
    for i, level in enumerate(psi):
        u2 = (np.abs(level[:, :, :2]) ** 2).sum(axis=(0, 2))
        v2 = (np.abs(level[:, :, 2:]) ** 2).sum(axis=(0, 2))
        np.testing.assert_allclose(np.pi * eta * np.asarray(res.electron[i]), u2, rtol=1e-3, atol=1e-9)
        np.testing.assert_allclose(np.pi * eta * np.asarray(res.hole[i]), v2, rtol=1e-3, atol=1e-9)
    # and they are maxima: the LDOS falls off on both sides of every peak at the impurity site
    for e in states.energies:
        around = shibajax.ldos(model, IMPS, [(0, 0)], [e - 0.003, e, e + 0.003], eta=0.001, kgrid=(L, L)).electron
        assert around[1, 0] > around[0, 0] and around[1, 0] > around[2, 0]


def test_u_and_v_differ_when_K_nonzero(model):
    """Potential scattering makes the electron and hole weights of a Shiba state unequal."""
    states = shibajax.bound_states(model, IMPS[0], kgrid=(L, L))
    level = states.wavefunctions([(0, 0)])[-1]
    u2, v2 = (np.abs(level[..., :2]) ** 2).sum(), (np.abs(level[..., 2:]) ** 2).sum()
    assert abs(u2 - v2) > 0.05 * (u2 + v2)


def test_weight_sum_rule(model):
    """int LDOS dE = 2 n_orb per site (completeness of the BdG eigenstates), with and without impurities.

    Energies E = w tan(theta) on a uniform theta grid cover the whole real line; for a Lorentzian of width eta
    the trapezoid rule on this grid is accurate to ~1e-6 with 4001 points.
    """
    theta = np.linspace(-np.pi / 2, np.pi / 2, 4003)[1:-1]
    w = 4.0
    energies = w * np.tan(theta)
    jac = w / np.cos(theta) ** 2
    for imps in ([], IMPS):
        res = shibajax.ldos(model, imps, POSITIONS, energies, eta=0.1, kgrid=(L, L))
        for block in (res.electron, res.hole):
            total = np.trapezoid(np.asarray(block) * jac[:, None], theta, axis=0)
            np.testing.assert_allclose(total, 2.0, atol=1e-4)


def test_bare_ldos_is_translation_invariant_and_matches_eigenvalues(model):
    """Without impurities the LDOS is the same on every site and equals the Lorentzian-broadened DOS."""
    energies = np.linspace(-1.0, 1.0, 21)
    eta = 0.05
    res = shibajax.ldos(model, [], POSITIONS, energies, eta=eta, kgrid=(L, L))
    e = np.asarray(res.electron)
    np.testing.assert_allclose(e, e[:, :1].repeat(len(POSITIONS), 1), atol=1e-12)
    # electron-block weight of each BdG eigenstate, from the model's H(k) directly
    from shibajax.brillouin_zone import bdg_eigensystem, monkhorst_pack

    ek, uk = bdg_eigensystem(model, monkhorst_pack((L, L)))
    weight = (np.abs(np.asarray(uk)[:, :2, :]) ** 2).sum(1)  # (N, M)
    lor = eta / np.pi / ((energies[:, None, None] - np.asarray(ek)[None]) ** 2 + eta**2)
    want = (lor * weight[None]).sum(axis=(1, 2)) / L**2
    np.testing.assert_allclose(e[:, 0], want, atol=1e-12)
