"""The physical-gap solver (shibajax.ray_mesh): exact quadrature checks, the lattice solver where both converge, the
Fermi-line (Delta / W -> 0) limit, and clear errors."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
import scipy.special

import shibajax
from shibajax.errors import ParameterError, ShapeError
from shibajax.greens_function import bare_greens_sum, projected_greens_sum
from shibajax.ray_mesh import (
    RayMesh,
    RaySettings,
    channel_sum,
    greens_sum,
    physical_gap_bound_states,
    ray_mesh,
)


def _uncompressed(mesh: RayMesh) -> RayMesh:
    """The same points and weights without the band-resolved form: every sum then uses the full BdG resolvent."""
    return RayMesh(mesh.points, mesh.weights, mesh.description, None, mesh.model_key, mesh.settings)


def test_weights_tile_the_zone_and_the_tiling_follows_the_pockets():
    # mu = -1: an electron pocket about Gamma; mu = +1: a hole pocket about (pi, pi), which leaves the Gamma-centred
    # zone through its edges, so the rays must start at M. The weights integrate a constant exactly (area of the
    # zone), and the mesh integrates the band energy to its exact BZ average -mu (cos k averages to 0).
    for mu, tiling in ((-1.0, "gamma"), (1.0, "m")):
        model = shibajax.models.square(t=1.0, mu=mu, delta=0.05)
        mesh = ray_mesh(model)
        assert f"tiling {tiling}" in mesh.description
        assert abs(mesh.weights.sum() - 1.0) < 1e-13
        band = -2.0 * (np.cos(mesh.points[:, 0]) + np.cos(mesh.points[:, 1])) - mu
        assert abs(np.dot(mesh.weights, band) + mu) < 1e-12  # exact for trigonometric polynomials of low degree


def test_compressed_sums_equal_the_full_resolvent_on_the_same_points():
    # The band-resolved form interpolates the smooth factors across each span; the full BdG resolvent at every
    # Gauss point is the reference. Rashba bands (two Fermi lines per ray), complex channel directions, two sites.
    model = shibajax.models.square(t=1.0, mu=-1.0, delta=0.01, rashba=0.3)
    mesh = ray_mesh(model, RaySettings(angular_panels=2))
    assert mesh.compressed is not None
    plain = _uncompressed(mesh)
    z = jnp.array([0.0, 0.004, 0.009])
    disp = np.array([[0, 0], [1, 0], [2, -1]])
    full = bare_greens_sum(model, disp, z, kgrid=plain, chunk_size=8192, max_power=2)
    fast = greens_sum(mesh.compressed, disp, z, 2)
    for a, b in zip(fast, full, strict=True):
        assert float(jnp.max(jnp.abs(a - b))) < 1e-10 * float(jnp.max(jnp.abs(b)))  # interpolation error ~1e-12
    sites = np.array([[0, 0], [2, -1]])
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.normal(size=(8, 5)) + 1j * rng.normal(size=(8, 5)))
    full = projected_greens_sum(model, sites, q, z, kgrid=plain, chunk_size=8192, max_power=2)
    fast = channel_sum(mesh.compressed, sites, q, z, 2)
    for a, b in zip(fast, full, strict=True):
        assert float(jnp.max(jnp.abs(a - b))) < 1e-10 * float(jnp.max(jnp.abs(b)))


def test_agrees_with_the_lattice_solver_where_both_converge():
    # Delta / W = 0.025: the coherence length is ~10 sites, so a 256 x 256 grid is converged to exp(-25) and equals
    # the infinite lattice; the ray mesh must give the same energies to 1e-8 (issue 13). Rashba host, a
    # non-collinear dimer with potential scattering (the general path).
    model = shibajax.models.square(t=1.0, mu=-1.0, delta=0.2, rashba=0.3)
    impurities = [
        shibajax.Impurity((0, 0), K=0.3, J=1.2, spin=(0, 0, 1)),
        shibajax.Impurity((2, 1), K=-0.2, J=1.0, spin=(1, 0, 1)),
    ]
    lattice = shibajax.bound_states(model, impurities, kgrid=(256, 256))
    rays = shibajax.bound_states(model, impurities, kgrid=ray_mesh(model))
    assert lattice.multiplicities.tolist() == rays.multiplicities.tolist()
    assert np.max(np.abs(lattice.energies - rays.energies)) < 1e-8
    # wavefunctions through the band-resolved sums equal those of the full resolvent on the same mesh
    positions = [(0, 0), (1, 0), (3, 2), (-4, 5)]
    fast = rays.wavefunctions(positions)
    slow = dataclasses.replace(rays, kgrid=_uncompressed(rays.kgrid)).wavefunctions(positions)
    for a, b in zip(fast, slow, strict=True):
        density_a = np.sum(np.abs(a) ** 2, axis=(0, 2))  # basis-independent within a degenerate level
        density_b = np.sum(np.abs(b) ** 2, axis=(0, 2))
        # the smooth factors exp(i k.d) are interpolated across each span: the error grows with |d|, ~1e-7 of the
        # density at |d| = 6 with the default 10 carrier nodes
        assert np.all(np.abs(density_a - density_b) < 1e-6 * density_b)


def test_pairing_that_is_not_band_diagonal_uses_the_full_resolvent():
    # Two orbitals with different gaps and an inter-orbital hopping: the pairing mixes the bands, so the mesh keeps
    # no band-resolved form, and the full resolvent on its points must still equal the converged lattice.
    hop = {(0, 0): np.array([[0.8, 0.2], [0.2, 1.0]])}  # both Fermi pockets about Gamma
    for d in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        hop[d] = -np.diag([1.0, 0.6])
    model = shibajax.models.from_hoppings(hop, delta=np.array([0.25, 0.15]))
    mesh = ray_mesh(model)
    assert mesh.compressed is None and "not band-diagonal" in mesh.description
    imp = shibajax.Impurity.per_orbital((0, 0), K=[0.2, 0.0], J=[1.5, 2.5], spin=(0, 0, 1))  # states deep in the gap
    lattice = shibajax.bound_states(model, imp, kgrid=(200, 200))
    rays = shibajax.bound_states(model, imp, kgrid=mesh)
    assert lattice.multiplicities.tolist() == rays.multiplicities.tolist()
    assert np.max(np.abs(lattice.energies - rays.energies)) < 1e-8


def _fermi_line_limit(delta, K, J, mu=-1.0, t=1.0):
    """Shiba energy of a single-site impurity in the Delta / W -> 0 limit of the square lattice (NumPy/SciPy).

    Local G0(E) per spin = -pi N0 (E + Delta tau_x) / sqrt(Delta^2 - E^2) + R tau_z, with N0 the square-lattice DOS
    (1 / 2 pi^2 t) K(1 - eps^2 / 16 t^2) at eps = mu and R = PV int rho(eps) / (mu - eps) (the normal-state real
    part at E_F); the state is the zero of det[1 - (K tau_z + s J) G0(E)] in one of the two spin sectors s = +-1.
    """

    def rho(eps):
        return scipy.special.ellipk(1.0 - eps**2 / (16.0 * t**2)) / (2.0 * np.pi**2 * t)

    n0 = rho(mu)
    # PV int rho / (eps - mu), with rho(mu) subtracted (the rest is regular; rho has an integrable log at eps = 0)
    regular = scipy.integrate.quad(lambda e: (rho(e) - n0) / (e - mu), -4 * t, 4 * t, points=[0.0, mu], limit=400)[0]
    pv = regular + n0 * np.log((4 * t - mu) / (4 * t + mu))
    r = -pv  # int rho / (mu - eps) = -PV int rho / (eps - mu)
    tz, tx, t0 = np.diag([1.0, -1.0]), np.array([[0.0, 1.0], [1.0, 0.0]]), np.eye(2)

    def det(e, s):
        om = np.sqrt(delta**2 - e**2)
        g = -np.pi * n0 * (e * t0 + delta * tx) / om + r * tz
        return np.linalg.det(t0 - (K * tz + s * J * t0) @ g)

    roots = []
    for s in (1.0, -1.0):
        grid = np.linspace(-0.999999, 0.999999, 2001) * delta
        values = np.array([det(e, s) for e in grid])
        for i in np.nonzero(np.sign(values[1:]) != np.sign(values[:-1]))[0]:
            roots.append(scipy.optimize.brentq(det, grid[i], grid[i + 1], args=(s,), xtol=1e-16 * delta))
    return np.sort(np.abs(roots))[-1]


def test_fermi_line_limit_is_reached_at_physical_gaps():
    # At Delta / W = 1e-4 (W = 8 t) the lattice differs from its Fermi-line limit only by O(Delta / W) (the energy
    # dependence of the normal-state DOS over Delta): the solver must land within 1e-3 Delta of it, and the
    # distance must shrink in proportion to Delta (ten times smaller gap: at least five times closer).
    K, J = 0.3, 1.2
    distance = {}
    for delta in (8e-3, 8e-4):
        model = shibajax.models.square(t=1.0, mu=-1.0, delta=delta)
        bs = physical_gap_bound_states(model, shibajax.Impurity((0, 0), K=K, J=J), estimate_error=False)
        assert bs.energies.size == 2
        distance[delta] = abs(bs.energies[-1] - _fermi_line_limit(delta, K, J)) / delta
    assert distance[8e-4] < 1e-3
    assert distance[8e-4] < distance[8e-3] / 5


def test_error_estimate_bounds_the_error_of_the_answer():
    # The estimate (difference to the finer mesh) must exceed the answer's true error, measured against a mesh
    # finer still; and at this gap (Delta / W = 1e-3) both are far below 1e-3 Delta (the 1 ueV on Nb).
    model = shibajax.models.square(t=1.0, mu=-1.0, delta=8e-3, rashba=0.2)
    imp = shibajax.Impurity((0, 0), K=0.2, J=1.1, spin=(1, 0, 0))
    coarse = RaySettings(angular_panels=2, angular_gauss=6, radial_gauss=4, carrier_nodes=6)
    answer = physical_gap_bound_states(model, imp, settings=coarse)
    reference = physical_gap_bound_states(model, imp, settings=coarse.finer().finer(), estimate_error=False)
    true_error = np.abs(answer.energies - reference.energies)
    assert np.all(np.isfinite(answer.energy_errors))
    assert np.all(true_error <= answer.energy_errors + 1e-14 * 8e-3)
    assert np.max(answer.energy_errors) < 1e-3 * 8e-3
    assert "+-" in answer.summary()


def test_clear_errors():
    square = shibajax.models.square(t=1.0, mu=-1.0, delta=0.05)
    with pytest.raises(ParameterError, match="full gap"):
        ray_mesh(shibajax.models.square(t=1.0, mu=-1.0, delta=0.0))
    with pytest.raises(ParameterError, match="grading"):
        ray_mesh(square, RaySettings(grading=1.0))
    with pytest.raises(ParameterError, match="angular_panels"):
        ray_mesh(square, RaySettings(angular_panels=0))
    with pytest.raises(ParameterError, match="tiling"):
        ray_mesh(square, tiling="hexagon")
    cubic = shibajax.models.from_hoppings(
        {(0, 0, 0): 1.0, **dict.fromkeys(((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)), -1.0)},
        delta=0.1,
        lattice_vectors=np.eye(3),
    )
    with pytest.raises(ShapeError, match="2D"):
        ray_mesh(cubic)
    # open Fermi lines (quasi one-dimensional band): no tile holds a star-shaped pocket
    chain = {(0, 0): 0.0, (1, 0): -1.0, (-1, 0): -1.0, (0, 1): -0.1, (0, -1): -0.1}
    with pytest.raises(ParameterError, match="star-shaped"):
        ray_mesh(shibajax.models.from_hoppings(chain, delta=0.05))
    # a mesh belongs to the model it was built for
    mesh = ray_mesh(square)
    other = shibajax.models.square(t=1.0, mu=-0.9, delta=0.05)
    with pytest.raises(ParameterError, match="another model"):
        shibajax.bound_states(other, shibajax.Impurity((0, 0), J=1.0), kgrid=mesh)


def test_series_tiers_are_the_fewest_terms_below_the_tolerance():
    # A far pair with E^2 / gap^2 = rho contributes sum_j (z^2 / E^2)^j with z^2 / E^2 <= 1 / rho: J terms leave a
    # remainder <= rho^-J of it. Each tier must meet SERIES_TOL, and one term fewer must not (the fewest terms);
    # pairs below SERIES_RATIO are summed exactly (0 terms).
    from shibajax.ray_mesh import SERIES_RATIO, SERIES_TIERS, SERIES_TOL, series_terms

    rho = np.logspace(np.log10(SERIES_RATIO), 12, 400)
    terms = series_terms(rho)
    assert np.all(rho ** (-terms.astype(float)) <= SERIES_TOL)
    fewer = np.array([max([j for j in SERIES_TIERS if j < t], default=0) for t in terms])
    assert np.all((fewer == 0) | (rho ** (-fewer.astype(float)) > SERIES_TOL))
    assert series_terms(np.array([0.5 * SERIES_RATIO]))[0] == 0


def test_bad_newton_starts_do_not_change_the_roots():
    # The finer mesh's Newton steps start from the coarse roots when they lie inside their brackets; guesses that
    # are wrong (or outside every bracket) must fall back to the bracket's interpolation and reach the same roots.
    from shibajax.bound_states import _bound_states, _levels

    model = shibajax.models.square(t=1.0, mu=-1.0, delta=0.02, rashba=0.3)
    mesh = ray_mesh(model, RaySettings(angular_panels=2))
    dimer = [shibajax.Impurity((0, 0), K=0.3, J=1.2), shibajax.Impurity((2, 1), K=0.3, J=1.2, spin=(1, 0, 0))]
    levels, mults, roots = _levels(model, dimer, mesh)
    assert roots.size >= 4  # two pairs at least: the test exercises several slots
    plain = _bound_states(model, dimer, mesh)
    for start in (roots, roots[::-1] * 0.5, np.full(roots.shape, 10.0)):
        hinted = _bound_states(model, dimer, mesh, start=start)
        assert hinted.multiplicities.tolist() == plain.multiplicities.tolist() == mults.tolist()
        # the root tolerance is 1e-12 of the gap: the same roots to that
        assert np.max(np.abs(hinted.energies - plain.energies)) < 1e-11 * plain.gap_edge
        assert np.max(np.abs(levels - plain.energies)) < 1e-11 * plain.gap_edge
