"""Memory estimates before allocating (issue 12, defect 6): MemoryLimitError instead of an XLA out-of-memory
traceback, and energy grids summed in blocks when the result fits but one sum over all energies would not."""

from __future__ import annotations

import importlib
from unittest import mock

import jax.numpy as jnp
import numpy as np
import pytest

import shibajax
from shibajax import tmatrix
from shibajax.brillouin_zone import MEMORY_LIMIT_ENV, memory_limit
from shibajax.errors import MemoryLimitError, ShibajaxError
from shibajax.fitting import coupling_basis, green_blocks

MODEL = shibajax.models.square(mu=-1.0, delta=0.3)
IMPURITY = shibajax.Impurity((0, 0), K=0.2, J=1.0)
POSITIONS = [(0, 0), (1, 0), (2, 0)]
#: 10^10 k-points: the k-point array alone is 720 GB (k, weights and their padded copy, float64).
ABSURD = (100000, 100000)


@pytest.mark.parametrize(
    "call",
    [
        lambda: shibajax.bound_states(MODEL, IMPURITY, kgrid=ABSURD),
        lambda: shibajax.greens_function(MODEL, [(0, 0)], [0.0], kgrid=ABSURD),
        lambda: shibajax.ldos(MODEL, IMPURITY, [(0, 0)], [0.0], eta=0.01, kgrid=ABSURD),
    ],
    ids=["bound_states", "greens_function", "ldos"],
)
def test_absurd_grid_is_refused_before_anything_is_allocated(monkeypatch, call):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "64")  # more than most machines have: the grid is refused anyway
    with pytest.raises(MemoryLimitError, match=r"kgrid \(100000, 100000\) \(1e\+10 k-points\).*720 GB.*64 GB") as err:
        call()
    assert "smaller grid" in str(err.value) and isinstance(err.value, ShibajaxError)


def test_default_limit_is_a_fraction_of_the_available_memory(monkeypatch):
    monkeypatch.delenv(MEMORY_LIMIT_ENV, raising=False)
    limit, source = memory_limit()
    assert limit > 0 and MEMORY_LIMIT_ENV in source and "50%" in source


@pytest.mark.parametrize("value", ["abc", "0", "-2", "nan"])
def test_limit_variable_must_be_a_positive_number(monkeypatch, value):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, value)
    with pytest.raises(MemoryLimitError, match=f"{MEMORY_LIMIT_ENV}=.*positive number of GB"):
        shibajax.greens_function(MODEL, [(0, 0)], [0.0], kgrid=(4, 4))


def test_fine_energy_grid_ldos_is_summed_in_blocks_with_the_same_result(monkeypatch):
    """2000 energies at 3 positions: ~13 MB in one sum, more than a 10 MB limit; in blocks it fits."""
    energies = np.linspace(-0.5, 0.5, 2000)
    reference = shibajax.ldos(MODEL, IMPURITY, POSITIONS, energies, eta=0.01, kgrid=(8, 8))
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "0.01")
    calls = []
    core = tmatrix._ldos_core

    def counting(*args, **kwargs):
        calls.append(args[7].shape[0])  # energies of the block
        return core(*args, **kwargs)

    with mock.patch.object(tmatrix, "_ldos_core", counting):
        blocked = shibajax.ldos(MODEL, IMPURITY, POSITIONS, energies, eta=0.01, kgrid=(8, 8))
    assert len(calls) > 1 and len(set(calls)) == 1  # several blocks, one shape (one compilation)
    # The blocks sum k in other chunks: the same numbers up to rounding (LDOS ~ 1, 1e-12 leaves 100x margin).
    for name in ("electron", "hole", "spin_up", "spin_down", "orbital"):
        np.testing.assert_allclose(getattr(blocked, name), getattr(reference, name), rtol=0, atol=1e-12, err_msg=name)


def test_energy_grid_too_large_even_in_blocks_is_an_error(monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "0.0001")  # 100 kB: not even one energy's sum fits
    with pytest.raises(MemoryLimitError, match=r"ldos at 3 positions.*2000 energies.*fewer energies"):
        shibajax.ldos(MODEL, IMPURITY, POSITIONS, np.linspace(-0.5, 0.5, 2000), eta=0.01, kgrid=(8, 8))


def _counting(module, name, calls):
    """A wrapper of module.name that records the number of energies of each call (its z argument)."""
    original = getattr(module, name)

    def wrapper(model, disp, z, **kwargs):
        calls.append(z.shape[0])
        return original(model, disp, z, **kwargs)

    return mock.patch.object(module, name, wrapper)


def test_green_blocks_in_energy_blocks_equal_one_sum(monkeypatch):
    """1500 energies, 3 tip positions, 2 impurity sites: ~40 MB in one sum, summed in blocks under a 20 MB limit.

    The host is a d-wave one: gapless (no Shiba energies, tests/test_gapless.py), but its spectrum is fitted as
    any other, so the blocks are built without complaint."""
    d_wave = shibajax.models.square(mu=-1.0, delta=0.3, gap="d")
    energies = np.linspace(-0.4, 0.4, 1500)
    couplings = coupling_basis(d_wave, [(0, 0), (2, 0)])
    reference = green_blocks(d_wave, couplings, POSITIONS, energies, eta=0.02, kgrid=(6, 6))
    calls = []
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "0.02")
    with _counting(importlib.import_module("shibajax.fitting.spectrum"), "bare_greens_sum", calls):
        blocked = green_blocks(d_wave, couplings, POSITIONS, energies, eta=0.02, kgrid=(6, 6))
    assert len(calls) > 1 and len(set(calls)) == 1 and sum(calls) >= 1500
    # G0 ~ 1 / eta = 50 at most and the weights W ~ G0^2: 1e-9 is rounding of differently chunked k-sums
    for name in ("g_imp", "weights", "bare_trace"):
        np.testing.assert_allclose(getattr(blocked, name), getattr(reference, name), rtol=0, atol=1e-9, err_msg=name)
    ldos = np.asarray(blocked.ldos(jnp.array([0.2, 1.0])))  # K_0, J_0 on both sites
    assert ldos.shape == (1500, 3) and np.all(np.isfinite(ldos)) and np.all(ldos > 0)


def test_greens_function_result_too_large_is_an_error(monkeypatch):
    """The result itself (10^5 energies x 50 displacements x 16 complex numbers = 1.3 GB) cannot be blocked."""
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1")
    displacements = [(i, 0) for i in range(50)]
    with pytest.raises(MemoryLimitError, match=r"greens_function \(100000 energies, 50 displacements.*1 GB"):
        shibajax.greens_function(MODEL, displacements, np.linspace(-1, 1, 100000), eta=0.01, kgrid=(8, 8))


def test_bound_state_search_too_large_for_the_limit(monkeypatch):
    """A 20-site chain has 80 channel directions: its A(E) matrices at 40 roots alone are ~25 MB."""
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "0.02")
    chain = shibajax.clusters.helical_chain(20, pitch=np.pi / 3, J=1.5)
    with pytest.raises(MemoryLimitError, match=r"bound-state search \(20 impurity sites, 80 channel directions"):
        shibajax.bound_states(MODEL, chain, kgrid=(48, 48))
