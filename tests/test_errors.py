"""Bad input gets a clear error (never a silent NaN); batches flag instead of raising."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import shibajax
from shibajax.errors import (
    BroadeningError,
    HermiticityError,
    ImpurityError,
    NoGapError,
    PairingSymmetryError,
    ShapeError,
)


@pytest.fixture(scope="module")
def model():
    return shibajax.models.square(mu=-1.0, delta=0.3)


def test_non_hermitian_hoppings():
    with pytest.raises(HermiticityError, match=r"T_\{-d\} = T_d\^dagger at d=\(1, 0\)"):
        shibajax.models.from_hoppings({(0, 0): 0.0, (1, 0): -1.0, (-1, 0): -0.9})
    with pytest.raises(HermiticityError, match=r"at d=\(1, 0\) has no partner at d=\(-1, 0\)"):
        shibajax.models.from_hoppings({(0, 0): 0.0, (1, 0): -1.0})
    with pytest.raises(HermiticityError, match=r"d=\(0, 0\)"):
        shibajax.models.from_hoppings({(0, 0): np.array([[0.0, 1.0], [0.5, 0.0]])})
    soc = 0.1j * np.array([[0, -1j], [1j, 0]])  # i * sigma_y on +x needs -i * sigma_y on -x
    with pytest.raises(HermiticityError):
        shibajax.models.from_hoppings({(1, 0): soc, (-1, 0): soc}, n_orb=1)


def test_pairing_must_be_even():
    with pytest.raises(PairingSymmetryError, match=r"D_\{-d\} = D_d\^T"):
        shibajax.models.from_hoppings({(0, 0): -1.0}, pairing={(1, 0): 0.1, (-1, 0): -0.1})


def test_eta_must_be_positive(model):
    for bad in (0.0, -0.01, float("nan")):
        with pytest.raises(BroadeningError, match="eta > 0"):
            shibajax.greens_function(model, [(0, 0)], [0.1], eta=bad, kgrid=(8, 8))
        with pytest.raises(BroadeningError, match="eta > 0"):
            shibajax.ldos(model, [], [(0, 0)], [0.1], eta=bad, kgrid=(8, 8))


def test_zero_spin_vector():
    with pytest.raises(ImpurityError, match="zero length"):
        shibajax.Impurity((0, 0), J=1.0, spin=(0, 0, 0))


def test_orbital_out_of_range(model):
    imp = shibajax.Impurity((0, 0), J=1.0, orbitals=[1])
    with pytest.raises(ImpurityError, match=r"orbital 1, but the model has n_orb = 1"):
        shibajax.bound_states(model, imp, kgrid=(8, 8))


def test_impurity_off_the_lattice(model):
    with pytest.raises(ImpurityError, match="off the lattice"):
        shibajax.Impurity((0.5, 0), J=1.0)
    with pytest.raises(ImpurityError, match="3 coordinates; the lattice is 2D"):
        shibajax.bound_states(model, shibajax.Impurity((0, 0, 0), J=1.0), kgrid=(8, 8))
    with pytest.raises(ImpurityError, match="two impurities on site"):
        shibajax.bound_states(model, [shibajax.Impurity((0, 0), J=1.0), shibajax.Impurity((0, 0), K=1.0)], kgrid=(8, 8))


def test_mismatched_shapes(model):
    with pytest.raises(ShapeError, match=r"must be \(2, 2\) \(spinless"):
        shibajax.models.from_hoppings({(0, 0): np.eye(3)}, n_orb=2)
    with pytest.raises(ShapeError, match="has 3 coordinates but the lattice has dim = 2"):
        shibajax.models.from_hoppings({(0, 0): 0.0, (1, 0, 0): -1.0})
    with pytest.raises(ShapeError, match=r"positions must have shape \(n, 2\)"):
        shibajax.ldos(model, [], [(0, 0, 0)], [0.1], eta=0.1, kgrid=(8, 8))
    with pytest.raises(ShapeError, match="kgrid"):
        shibajax.greens_function(model, [(0, 0)], [0.1], eta=0.1, kgrid=(8, 8, 8))
    with pytest.raises(ShapeError, match="spin must be a 3-vector"):
        shibajax.Impurity((0, 0), J=1.0, spin=(0, 1))
    with pytest.raises(ShapeError, match="same length"):
        shibajax.Impurity.per_orbital((0, 0), K=[0.1, 0.2], J=[1.0])
    with pytest.raises(ShapeError, match="energies must be a scalar or a 1D array"):
        shibajax.greens_function(model, [(0, 0)], np.zeros((2, 2)), eta=0.1, kgrid=(8, 8))
    with pytest.raises(ShapeError, match="unknown gap"):
        shibajax.models.square(gap="p")


def test_delta_zero_in_bound_state_search():
    normal = shibajax.models.square(mu=-1.0, delta=0.0)
    with pytest.raises(NoGapError, match="Delta = 0"):
        shibajax.bound_states(normal, shibajax.Impurity((0, 0), J=1.0), kgrid=(8, 8))


def test_nodal_gap_on_grid_is_an_error():
    """d-wave at half filling: the nodes (k_x = +-k_y on the Fermi surface) are grid points."""
    dwave = shibajax.models.square(mu=0.0, delta=0.3, gap="d")
    with pytest.raises(NoGapError, match="nodes on this k-grid"):
        shibajax.bound_states(dwave, shibajax.Impurity((0, 0), J=1.0), kgrid=(8, 8))


def test_batch_flags_instead_of_raising():
    """A vmapped batch with a set without states and a set without a gap completes and flags them."""

    def solve(delta, J):
        model = shibajax.models.square(mu=-1.0, delta=delta)
        return shibajax.bound_state_energies(model, shibajax.Impurity((0, 0), J=J), kgrid=(12, 12))

    out = jax.vmap(solve)(jnp.array([0.3, 0.3, 0.0]), jnp.array([2.0, 0.0, 2.0]))
    np.testing.assert_array_equal(out.n_states, [2, 0, 0])
    np.testing.assert_array_equal(out.has_gap, [True, True, False])
    assert np.all(np.isnan(np.asarray(out.energies)[1:]))
    assert np.all(np.isfinite(np.asarray(out.energies)[0, :2]))
    # the batched energies equal the one-at-a-time ones
    single = shibajax.bound_states(
        shibajax.models.square(mu=-1.0, delta=0.3), shibajax.Impurity((0, 0), J=2.0), kgrid=(12, 12)
    )
    np.testing.assert_allclose(np.asarray(out.energies)[0, :2], single.all_energies, atol=1e-12)


def test_jit_of_batch_api_matches_host_api():
    """The fixed-shape API traces under jit with J as an argument and gives the host API's energies."""
    model = shibajax.models.square(mu=-1.0, delta=0.3)
    f = jax.jit(lambda J: shibajax.bound_state_energies(model, shibajax.Impurity((0, 0), J=J), kgrid=(12, 12)).energies)
    np.testing.assert_allclose(
        np.asarray(f(2.0))[:2],
        shibajax.bound_states(model, shibajax.Impurity((0, 0), J=2.0), kgrid=(12, 12)).all_energies,
        atol=1e-12,
    )
