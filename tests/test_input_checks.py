"""Input checks of the solver API (issue 12): no silent surprises, no raw JAX/NumPy tracebacks.

Each bad input gets a ShibajaxError that names the parameter and the bad value; tracers under jit / vmap are never
checked (they flag instead). Also: the adatom cut-off argument, channel weights of orbital-shaped channels, and the
error estimate of ``converged_bound_states`` (base grid varied as well as the resolution).
"""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import shibajax
from shibajax import fermi_shell
from shibajax._checks import check_separations
from shibajax.adatoms import GAUSSIAN_CUTOFF, Adatom, OrbitalChannel, cartesian, shape_function
from shibajax.bound_states import BoundStates
from shibajax.brillouin_zone import KMesh
from shibajax.errors import FitError, ImpurityError, ParameterError, ShapeError, ShibajaxError
from shibajax.fitting import ShibaEnergies
from shibajax.fitting.spectrum import Couplings

SQUARE = shibajax.models.square(mu=-1.0, delta=0.3)


# ----------------------------------------------------------------------------------------------- model parameters
@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: shibajax.models.square(mu="abc"), r"mu = 'abc' is a string.*square\(\)"),
        (lambda: shibajax.models.square(t=1j), r"t = 1j is complex"),
        (lambda: shibajax.models.square(delta=float("nan")), r"delta = nan is not finite"),
        (lambda: shibajax.models.triangular(rashba=np.inf), r"rashba = inf is not finite.*triangular\(\)"),
        (lambda: shibajax.models.nb110(mu="abc"), r"mu = 'abc' is a string.*nb110\(\), meV"),
        (lambda: shibajax.models.nb110(t1=float("nan")), r"t1 = nan"),
        (lambda: shibajax.models.nb110(delta=2j), r"delta = 2j is complex"),
        (lambda: shibajax.models.graser2009(mu="abc"), r"mu = 'abc'.*graser2009\(\), eV"),
        (lambda: shibajax.models.lifeas2017(delta=[0.01, 0.01, np.nan, 0.01, 0.01]), r"delta = \[0.01, 0.01, nan"),
        (lambda: shibajax.models.from_hoppings({(0, 0): "abc"}), r"hopping T_d at d=\(0, 0\) = 'abc'"),
        (lambda: shibajax.models.from_hoppings({(0, 0): np.nan}), r"hopping T_d at d=\(0, 0\) = nan is not finite"),
        (lambda: shibajax.models.from_hoppings({(0, 0): -1.0}, delta="x"), r"delta = 'x'"),
        (lambda: shibajax.models.from_hoppings({(0, 0): -1.0}, pairing={(0, 0): np.inf}), r"pairing D_d at d=\(0, 0\)"),
    ],
)
def test_model_parameters_must_be_finite_real_numbers(build, match):
    with pytest.raises(ParameterError, match=match):
        build()


def test_model_parameters_may_still_be_traced():
    """vmap over mu and delta: tracers pass the checks (they are never checked)."""
    hop = jax.vmap(lambda mu, d: shibajax.models.square(mu=mu, delta=d).pairing)(jnp.array([0.0, -1.0]), jnp.ones(2))
    assert hop.shape[0] == 2
    with pytest.raises(ShapeError, match="n_orb = 'two' must be a positive integer"):
        shibajax.models.from_hoppings({(0, 0): -1.0}, n_orb="two")


# ---------------------------------------------------------------------------------------------------- impurities
@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: shibajax.Channel(J=1 + 2j), r"channel J = \(1\+2j\) is complex"),
        (lambda: shibajax.Impurity((0, 0), K="abc"), r"channel K = 'abc' is a string"),
        (lambda: shibajax.Impurity((0, 0), J=np.nan), r"channel J = nan is not finite"),
        (
            lambda: shibajax.Impurity.per_orbital((0, 0), K=[0.1, "x"], J=[1.0, 1.0]),
            r"per-orbital K = \[0.1, 'x'\] \(dtype <U",
        ),
        (lambda: shibajax.Impurity((0, 0), J=1.0, theta=np.nan), r"spin angle theta = nan is not finite"),
        (lambda: shibajax.Impurity((0, 0), J=1.0, phi="x"), r"spin angle phi = 'x' is a string"),
        (lambda: shibajax.Impurity((0, 0), J=1.0, theta=1j), r"spin angle theta = 1j is complex"),
        (lambda: shibajax.Impurity((0, 0), J=1.0, spin=(np.inf, 0, 0)), r"spin = \[inf, 0.0, 0.0\] is not finite"),
        (lambda: shibajax.Impurity((0, 0), J=1.0, spin=("a", 0, 1)), r"spin = \('a', 0, 1\)"),
        (lambda: shibajax.Impurity((0, 0), J=0.0, spin=(0, 0, 0)), r"zero length.*set J = 0"),
        (lambda: shibajax.clusters.helical_chain(3, pitch="x", J=1.0), r"pitch = 'x' is a string"),
        (lambda: shibajax.clusters.spiral_spins(3, 0.5, axis=(np.nan, 0, 1)), r"axis = \[nan, 0.0, 1.0\]"),
    ],
)
def test_impurity_parameters_must_be_finite_real_numbers(build, match):
    with pytest.raises(ImpurityError, match=match):
        build()


def test_huge_and_tiny_spin_vectors_keep_their_direction():
    """|spin|^2 overflows (1e200) or underflows (1e-300): the direction must survive. Before the fix a norm of inf
    turned spin=(1e200, 1e200, 0) into (0, 0, 0), a non-magnetic impurity, without a word."""
    big = shibajax.Impurity((0, 0), J=1.0, spin=(1e200, 1e200, 0.0)).spin
    tiny = shibajax.Impurity((0, 0), J=1.0, spin=(1e-300, 0.0, -1e-300)).spin
    np.testing.assert_allclose(np.asarray(big), [2**-0.5, 2**-0.5, 0.0], atol=1e-15)
    np.testing.assert_allclose(np.asarray(tiny), [2**-0.5, 0.0, -(2**-0.5)], atol=1e-15)
    # an ordinary vector is normalised exactly as before
    np.testing.assert_array_equal(
        np.asarray(shibajax.Impurity((0, 0), spin=(1.0, 2.0, 2.0)).spin), np.array([1, 2, 2]) / 3
    )
    # traced spins (a helix under vmap) are not checked and still normalised
    spins = jax.vmap(lambda a: shibajax.Impurity((0, 0), J=1.0, spin=(3 * jnp.sin(a), 0.0, 3 * jnp.cos(a))).spin)(
        jnp.array([0.0, 1.0])
    )
    np.testing.assert_allclose(np.linalg.norm(np.asarray(spins), axis=1), 1.0, atol=1e-15)


# ------------------------------------------------------------------------------------------------------ energies
@pytest.mark.parametrize(
    ("energies", "error", "match"),
    [
        ([], ShapeError, "energies is empty"),
        (np.zeros((2, 2)), ShapeError, "energies must be a scalar or a 1D array"),
        ([0.1, np.nan], ParameterError, "1 non-finite value.*index 1"),
        ([np.inf], ParameterError, "non-finite"),
        ("abc", ParameterError, "energies = 'abc' is a string"),
        ([0.1 + 0.01j], ParameterError, "complex.*eta="),
    ],
)
def test_energies_must_be_a_non_empty_finite_real_1d_array(energies, error, match):
    with pytest.raises(error, match=match):
        shibajax.greens_function(SQUARE, [(0, 0)], energies, eta=0.05, kgrid=(4, 4))
    with pytest.raises(error, match=match):
        shibajax.ldos(SQUARE, [], [(0, 0)], energies, eta=0.05, kgrid=(4, 4))


def test_traced_energies_are_not_checked():
    g = jax.jit(lambda e: shibajax.greens_function(SQUARE, [(0, 0)], e, eta=0.05, kgrid=(4, 4)))(jnp.array([0.1]))
    assert g.shape == (1, 1, 4, 4) and bool(jnp.all(jnp.isfinite(g)))


# --------------------------------------------------------------------------------------------------- separations
def test_impurities_farther_apart_than_half_the_grid_are_refused():
    """On an 8 x 8 grid a separation of 5 is the periodic image -3: refused by every entry point, with the sites,
    the grid and a grid that works in the message. 4 (= L / 2, both images equally far) is allowed."""
    far = [shibajax.Impurity((0, 0), J=2.0), shibajax.Impurity((5, 0), J=2.0)]
    match = r"\(0, 0\) and \(5, 0\) are 5 cells apart.*kgrid=\(8, 8\).*kgrid=\(10, 8\)"
    with pytest.raises(ImpurityError, match=match):
        shibajax.bound_states(SQUARE, far, kgrid=(8, 8))
    with pytest.raises(ImpurityError, match=match):
        shibajax.bound_state_energies(SQUARE, far, kgrid=8)
    with pytest.raises(ImpurityError, match=match):
        shibajax.ldos(SQUARE, far, [(0, 0)], [0.1], eta=0.05, kgrid=(8, 8))
    with pytest.raises(ImpurityError, match=match):
        shibajax.greens_function_with_impurities(SQUARE, far, [(0, 0)], [(0, 0)], [0.1], eta=0.05, kgrid=(8, 8))
    sites, v = shibajax.impurity_potential(far, SQUARE)
    with pytest.raises(ImpurityError, match=match):
        shibajax.energies_of_potential(SQUARE, v, sites, kgrid=(8, 8))
    with pytest.raises(ImpurityError, match=r"along axis 1"):  # the other axis, on a rectangular grid
        shibajax.bound_states(
            SQUARE, [shibajax.Impurity((0, 0), J=2.0), shibajax.Impurity((0, -3), J=2.0)], kgrid=(8, 4)
        )
    assert check_separations(np.array([(0, 0), (4, 0), (2, -4)]), (8, 8)) is None  # L / 2 on both axes: allowed


def test_a_kmesh_has_no_periodic_image_and_is_not_checked():
    """A non-uniform mesh approximates the infinite lattice: no periodic-image check (documented in
    shibajax._checks.check_separations); the same far dimer passes, on a uniform grid it does not."""
    sites = np.array([(0, 0), (5, 0)])
    mesh = KMesh(np.zeros((1, 2)), np.ones(1), "one point")
    assert check_separations(sites, mesh) is None
    with pytest.raises(ImpurityError, match="more than half the k-grid"):
        check_separations(sites, (8, 8))


# ------------------------------------------------------------------------------------------------ adatom cut-off
def _brute_force_form_factors(model, adatom, cutoff, shape):
    """Normalised f(R) = Y(R - r_a) exp(-|R - r_a|^2 / 2 lambda^2) over a large box of sites, the sites whose
    Gaussian factor is >= cutoff kept (the definition of the cut-off, written out independently)."""
    n = np.arange(-12, 13)
    sites = np.stack(np.meshgrid(n, n, indexing="ij"), -1).reshape(-1, 2)
    d2 = cartesian(model, sites) - np.asarray(adatom.position)
    d = np.concatenate([d2, np.full((len(sites), 1), -adatom.height)], axis=1)
    gauss = np.exp(-np.sum(d**2, axis=1) / (2 * adatom.extent**2))
    keep = gauss >= cutoff
    f = shape_function(shape, d[keep]) * gauss[keep]
    return {tuple(s): v for s, v in zip(sites[keep].tolist(), f / np.linalg.norm(f), strict=True)}


def test_adatom_cutoff_argument():
    """The default cut-off reproduces the form factors of the former module constant (brute-force reference);
    a larger cut-off keeps fewer sites and changes the potential; bad cut-offs are refused."""
    chans = [OrbitalChannel("dz2", J=2.0)]
    default = Adatom((0.5, 0.5), height=0.4, extent=0.6, channels=chans)
    coarse = Adatom((0.5, 0.5), height=0.4, extent=0.6, channels=chans, cutoff=1e-3)
    assert default.cutoff == GAUSSIAN_CUTOFF == 1e-10
    for ad in (default, coarse):
        sites, f = ad.form_factors(SQUARE)
        want = _brute_force_form_factors(SQUARE, ad, ad.cutoff, "dz2")
        assert {tuple(s) for s in sites.tolist()} == set(want)
        np.testing.assert_allclose(f[0], [want[tuple(s)] for s in sites.tolist()], atol=1e-14)
    s_default, v_default = default.lattice_potential(SQUARE)
    s_coarse, v_coarse = coarse.lattice_potential(SQUARE)
    assert len(s_coarse) < len(s_default)
    # the potential on the sites both keep differs (the normalisation moves weight onto fewer sites)
    index = {tuple(s): i for i, s in enumerate(s_default.tolist())}
    rows = np.concatenate([4 * index[tuple(s)] + np.arange(4) for s in s_coarse.tolist()])
    assert np.max(np.abs(np.asarray(v_default)[np.ix_(rows, rows)] - np.asarray(v_coarse))) > 1e-6
    # the cut-off travels with the pytree
    leaves, tree = jax.tree_util.tree_flatten(coarse)
    assert jax.tree_util.tree_unflatten(tree, leaves).cutoff == 1e-3
    assert shibajax.models.mn_adatom(cutoff=1e-4).cutoff == 1e-4
    for bad in (0.0, 1.0, -1e-3, np.nan, "small"):
        with pytest.raises(ImpurityError, match="cutoff"):
            Adatom((0.5, 0.5), height=0.4, extent=0.6, channels=chans, cutoff=bad)


# --------------------------------------------------------------------------------------- channel weights (adatom)
#: A small adatom for the channel-weight tests: in the hollow (0.5, 0.5) of the square lattice, extent 0.5, height
#: 0.3, cut-off 1e-2: its channels touch the four sites around the hollow (a C4v cluster, R = 16).
SMALL = {"height": 0.3, "extent": 0.5, "cutoff": 1e-2}


def _adatom_couplings(model, shapes, names=None):
    """Couplings K_<name>, J_<name> of orbital-shaped channels of one adatom (unit K or J, shared sites)."""
    names = list(shapes) if names is None else names
    labels, basis, sites = [], [], None
    for name, shape in zip(names, shapes, strict=True):
        for kind in ("K", "J"):
            ch = OrbitalChannel(shape, K=float(kind == "K"), J=float(kind == "J"))
            s, v = Adatom((0.5, 0.5), channels=[ch], **SMALL).lattice_potential(model)
            assert sites is None or np.array_equal(s, sites)
            sites = s
            labels.append(f"{kind}_{name}")
            basis.append(v)
    return Couplings(tuple(labels), jnp.stack(basis), sites, tuple(() for _ in labels))


def test_channel_weights_of_orbital_shaped_channels():
    """d_xy and d_z2 channels of one adatom in a C4v hollow share every site but are orthogonal (different
    irreps), so the two-channel spectrum is the union of the one-channel spectra (the reference: each channel
    alone) and each state lies in one channel: its weights are one-hot, on the channel whose spectrum holds its
    energy (1e-8: exact by symmetry, up to the rounding of the null vector). The old site-based weights were
    0.5 / 0.5 for every level, and named the same channel for all."""
    couplings = _adatom_couplings(SQUARE, ["dxy", "dz2"])
    assert len(couplings.sites) == 4
    fn = ShibaEnergies(SQUARE, couplings, kgrid=(8, 8))

    def positive(theta):
        e = np.asarray(fn(jnp.asarray(theta)))
        return e[np.isfinite(e) & (e > 0)]

    both = positive([0.0, 2.0, 0.0, 1.5])  # K_dxy, J_dxy, K_dz2, J_dz2
    named = sorted(
        [(e, "dxy") for e in positive([0.0, 2.0, 0.0, 0.0])] + [(e, "dz2") for e in positive([0, 0, 0, 1.5])]
    )
    assert {shape for _, shape in named} == {"dxy", "dz2"}
    np.testing.assert_allclose(both, [e for e, _ in named], atol=1e-9)
    w = fn.channel_weights(jnp.array([0.0, 2.0, 0.0, 1.5]), jnp.asarray(both))
    np.testing.assert_allclose(np.sort(w, axis=1), np.tile([0.0, 1.0], (both.size, 1)), atol=1e-8)
    assert [["dxy", "dz2"][int(np.argmax(wi))] for wi in w] == [shape for _, shape in named]  # sorted by name


def test_channel_weights_are_refused_for_linearly_dependent_channels():
    """Two channels of the same shape on the same adatom: a state's amplitude cannot be split between them."""
    couplings = _adatom_couplings(SQUARE, ["dz2", "dz2"], names=["a", "b"])
    fn = ShibaEnergies(SQUARE, couplings, kgrid=(8, 8))
    with pytest.raises(FitError, match=r"channels 'a' and 'b' share a coupling vector"):
        fn.channel_weights(jnp.array([0.0, 1.0, 0.0, 1.0]), jnp.array([0.1]))


# ------------------------------------------------------------------------------------- converged_bound_states
def test_converged_error_estimate_varies_the_base_grid_too(monkeypatch):
    """The error estimate is the larger of the resolution difference and the base-grid difference (a base 3/2 as
    fine). Mesh and solver are replaced by stand-ins whose energy depends on (base, rho) as chosen here, so the
    combination rule itself is tested: before the fix the base-grid share (0.1 here) was missing."""
    calls = []

    def fake_mesh(model, *, base, resolution, gauss):
        calls.append((tuple(base), resolution))
        return (tuple(base), resolution)

    energy = {((64, 64), 1.0): 0.30, ((64, 64), 0.5): 0.31, ((96, 96), 1.0): 0.20}

    def fake_solve(model, impurities, *, kgrid, **kwargs):
        e = energy[kgrid]
        return BoundStates(
            np.array([-e, e]), np.array([1, 1]), (), 1.0, np.zeros((1, 2), int), kgrid, True, model
        )  # fmt: skip

    monkeypatch.setattr(fermi_shell, "fermi_shell_mesh", fake_mesh)
    monkeypatch.setattr(fermi_shell, "bound_states", fake_solve)
    out = fermi_shell.converged_bound_states(SQUARE, [], base=64, resolution=0.5)
    assert sorted(calls) == [((64, 64), 0.5), ((64, 64), 1.0), ((96, 96), 1.0)]
    np.testing.assert_allclose(out.energies, [-0.30, 0.30])
    np.testing.assert_allclose(out.energy_errors, [0.10, 0.10], atol=1e-15)
    calls.clear()
    only = fermi_shell.converged_bound_states(SQUARE, [], base=64, resolution=0.5, vary_base=False)
    assert len(calls) == 2
    np.testing.assert_allclose(only.energy_errors, [0.01, 0.01], atol=1e-15)

    def four_levels_on_the_finer_base(model, impurities, *, kgrid, **kwargs):
        if kgrid != ((96, 96), 1.0):
            return fake_solve(model, impurities, kgrid=kgrid)
        e = np.array([-0.2, -0.1, 0.1, 0.2])
        return BoundStates(e, np.ones(4, int), (), 1.0, np.zeros((1, 2), int), kgrid, True, model)

    monkeypatch.setattr(fermi_shell, "bound_states", four_levels_on_the_finer_base)  # meshes disagree: inf
    assert np.all(np.isinf(fermi_shell.converged_bound_states(SQUARE, [], base=64, resolution=0.5).energy_errors))


# ------------------------------------------------------------------------------------------------ plain import
def test_submodules_are_attributes_after_a_plain_import():
    """README: ``shibajax.clusters.helical_chain(20, pitch=np.pi / 3, J=1.5)`` after ``import shibajax`` alone (a
    fresh interpreter: here the test session has imported shibajax.clusters already)."""
    code = (
        "import numpy as np, shibajax\n"
        "chain = shibajax.clusters.helical_chain(20, pitch=np.pi / 3, J=1.5)\n"
        "assert len(chain) == 20 and chain[3].site == (3, 0)\n"
        "assert callable(shibajax.adatoms.Adatom) and callable(shibajax.plotting.plot_bands)\n"
        "assert callable(shibajax.fermi_shell.converged_bound_states) and callable(shibajax.maps.state_maps)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    with pytest.raises(AttributeError, match="no attribute 'not_a_module'"):
        shibajax.not_a_module  # noqa: B018


def test_every_check_is_a_shibajax_error():
    """So ``except ValueError`` / ``except ShibajaxError`` catch them all."""
    for cls in (ParameterError, ImpurityError, ShapeError, FitError):
        assert issubclass(cls, ShibajaxError) and issubclass(cls, ValueError)
