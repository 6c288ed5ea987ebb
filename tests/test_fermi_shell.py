"""Non-uniform k-meshes (KMesh) and the adaptive Fermi-shell integration for physical gap sizes.

References: the uniform-grid code path (a KMesh of the same points must give identical results), quadrature of
trigonometric polynomials (exact), a uniform grid many coherence lengths large (the infinite-lattice limit the
Fermi-shell mesh approximates), and the point group of the band structure. The heavy convergence study at
Delta / W ~ 1e-3 (Nb(110)) is in benchmarks/bench_kmesh.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import shibajax
from shibajax.brillouin_zone import KMesh, monkhorst_pack
from shibajax.errors import ShapeError
from shibajax.fermi_shell import band_symmetries, converged_bound_states, fermi_shell_mesh


def test_kmesh_of_the_uniform_grid_reproduces_the_grid():
    """The same points with weights 1/N: bound states and G0 equal the kgrid path (to rounding)."""
    model = shibajax.models.square(mu=-1.0, delta=0.3, rashba=0.3)
    k = np.asarray(monkhorst_pack((12, 12)))
    mesh = KMesh(k, np.full(len(k), 1.0 / len(k)), "uniform 12x12")
    imp = [shibajax.Impurity((0, 0), K=0.3, J=2.0), shibajax.Impurity((1, 1), J=1.5, spin=(1, 0, 0))]
    a = shibajax.bound_states(model, imp, kgrid=(12, 12))
    b = shibajax.bound_states(model, imp, kgrid=mesh)
    np.testing.assert_allclose(b.energies, a.energies, atol=1e-13)
    g_a = shibajax.greens_function(model, [(0, 0), (2, 1)], [0.1], kgrid=(12, 12))
    g_b = shibajax.greens_function(model, [(0, 0), (2, 1)], [0.1], kgrid=mesh)
    np.testing.assert_allclose(g_b, g_a, atol=1e-13)
    assert "uniform 12x12" in str(b.to_dict()["kgrid"])


def test_fermi_shell_mesh_integrates_trigonometric_polynomials():
    """Weights sum to 1 and the leaves tile the zone: BZ averages of cos(k1) cos(k2) (0), cos^2 k1 (1/2) and
    cos^2 k1 cos^2 k2 (1/4). The 3-point Gauss rule errs by ~ h^6 f^(6) / 2e6 per unit area on a cell of size h:
    with h <= 2 pi / 32 that is ~ 1e-10, the tolerance."""
    model = shibajax.models.square(mu=-1.0, delta=0.05)
    mesh = fermi_shell_mesh(model, base=32, resolution=1.0)
    k, w = mesh.points, mesh.weights
    assert abs(w.sum() - 1.0) < 1e-13 and np.all(w > 0)
    assert abs(np.sum(w * np.cos(k[:, 0]) * np.cos(k[:, 1]))) < 1e-9
    assert abs(np.sum(w * np.cos(k[:, 0]) ** 2) - 0.5) < 1e-9
    assert abs(np.sum(w * np.cos(k[:, 0]) ** 2 * np.cos(k[:, 1]) ** 2) - 0.25) < 1e-9


def test_mesh_is_refined_at_the_fermi_surface_and_keeps_the_point_group():
    """Nb(110) with Rashba: the detected band symmetries are the four operations of C2v x time reversal on the
    reduced axes (k -> -k and the two mirrors (k1, k2) -> (k2, k1), (-k2, -k1)); the mesh is invariant under
    them, and its finest points lie at the Fermi surface (|xi| below a few Delta)."""
    model = shibajax.models.nb110(delta=20.0)  # a larger gap keeps the test mesh small; the logic is the same
    ops = band_symmetries(model, (32, 32))
    assert len(ops) == 4
    mesh = fermi_shell_mesh(model, base=32, resolution=1.0)
    key = {tuple(np.round(p, 9)) + (round(w, 15),) for p, w in zip(mesh.points, mesh.weights, strict=True)}
    for s in ops:
        image = np.mod(mesh.points @ s.T, 2 * np.pi)
        image = np.where(np.isclose(image, 2 * np.pi, atol=1e-9), 0.0, image)
        mapped = {tuple(np.round(p, 9)) + (round(w, 15),) for p, w in zip(image, mesh.weights, strict=True)}
        assert len(mapped & key) > 0.999 * len(key)  # rounding at the cell boundaries 0 / 2 pi aside
    finest = mesh.weights < 1.01 * mesh.weights.min()
    xi = np.asarray(shibajax.band_structure(model, mesh.points[finest]))
    assert np.max(np.min(np.abs(xi), axis=1)) < 10 * 20.0


def test_fermi_shell_converges_to_the_infinite_lattice():
    """Square lattice, Delta = 0.05 t (coherence length ~ 30 sites): the Fermi-shell answer agrees with a
    uniform 600 x 600 grid (20 coherence lengths, finite-size error ~ e^-20) within its own error estimate,
    which is below 1e-4 Delta. Its mesh has fewer points than that grid."""
    model = shibajax.models.square(mu=-1.0, delta=0.05)
    imp = shibajax.Impurity((0, 0), K=0.3, J=2.0)
    states = converged_bound_states(model, imp, base=32, resolution=1.0)
    reference = shibajax.bound_states(model, imp, kgrid=(600, 600))
    assert states.energy_errors is not None and np.all(states.energy_errors < 1e-4 * 0.05)
    assert np.all(np.abs(states.energies - reference.energies) <= 2 * states.energy_errors + 1e-9 * 0.05)
    assert "k-integration" in states.summary()
    assert len(fermi_shell_mesh(model, base=32, resolution=2.0)) < 600 * 600


def test_kmesh_and_fermi_shell_errors():
    with pytest.raises(ShapeError, match="sum to 1"):
        KMesh(np.zeros((3, 2)), np.ones(3))
    with pytest.raises(ShapeError, match="points"):
        KMesh(np.zeros((3, 2)), np.ones(2) / 2)
    model = shibajax.models.square(mu=-1.0, delta=0.05)
    with pytest.raises(ShapeError, match="resolution"):
        fermi_shell_mesh(model, base=16, resolution=0.0)
    with pytest.raises(ShapeError, match="max_points"):
        fermi_shell_mesh(model, base=16, resolution=4.0, max_points=5000)
    mesh3d = KMesh(np.zeros((1, 3)), np.ones(1))
    with pytest.raises(ShapeError, match="3D"):
        shibajax.bound_states(model, shibajax.Impurity((0, 0), J=1.0), kgrid=mesh3d)
