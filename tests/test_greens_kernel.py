"""The G0 kernel's internals (shibajax/greens_function.py) against plain NumPy sums written here.

The kernel multiplies real matrices by one of two routes (phases in the projectors [Re | Im], or phases in the
[Re; Im] resolvent rows times Hermitian-packed projectors), sums each chunk in CPU sub-chunks (the last padded with
weight-0 copies), and the channel-space kernel packs b b^dagger the same way. Each is checked against the
definition

    G0^p(d, z)_ab = sum_k w_k exp(i k.d) sum_n U_an(k) conj(U_bn(k)) / (z - E_n(k))^p

evaluated directly in NumPy. Tolerance: the same sums in another order, so rounding only (values are O(1) to
O(1/eta^p) and summed over a few dozen terms).
"""

from __future__ import annotations

import importlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import shibajax

gf = importlib.import_module("shibajax.greens_function")  # the module (shibajax.greens_function is also a function)

ROUNDING = 1e-13  # relative to the largest |G0|: the same finite sum in another order


def _random_eigensystem(c, m, seed=0):
    """Eigenvalues (c, m) and unitary eigenvectors (c, m, m) of random Hermitian matrices, k (c, 2), weights."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((c, m, m)) + 1j * rng.standard_normal((c, m, m))
    e, u = np.linalg.eigh(a + a.conj().transpose(0, 2, 1))
    k = rng.uniform(0, 2 * np.pi, (c, 2))
    w = rng.uniform(0.5, 1.5, c)
    w[2] = 0.0  # a padding point
    return e, u, k, w


@jax.jit
def _hamiltonians(model, k):
    return jax.vmap(partial(shibajax.models.bdg_hamiltonian, model))(k)


def _numpy_green(e, u, k, w, z, disp, power):
    """The definition, term by term: (n_z, n_d, M, M)."""
    phase = w[:, None] * np.exp(1j * k @ disp.T)  # (c, n_d)
    res = 1.0 / (z[:, None, None] - e[None]) ** power  # (n_z, c, M)
    return np.einsum("kd,zkn,kan,kbn->zdab", phase, res, u, u.conj())


FEW = np.array([-0.3 + 0.05j, 0.1 + 0.2j, 1.7 + 1e-3j])  # few energies: phases in the rows (route B)
MANY = np.linspace(-2.0, 2.0, 40) + 0.1j  # many on M = 4: phases in the projectors (route A)


@pytest.mark.parametrize(
    ("z", "route"),
    [(FEW, "B"), (FEW.real, "B"), (MANY, "A"), (MANY.real, "A")],
    ids=["few", "few-real", "many", "many-real"],
)
def test_sub_chunks_with_padding_equal_the_definition(z, route):
    """7 k-points in sub-chunks of 3 (the last padded by 2), powers 1 and 2, complex and real energies, both routes
    of the G0 product."""
    e, u, k, w = _random_eigensystem(7, 4)
    disp = np.array([[0.0, 0.0], [2.0, -1.0], [-1.0, 3.0]])  # 3: no axis of size 2 but the [Re, Im] ones
    zj = jnp.asarray(z)
    kernel = gf._green_kernel(jnp.asarray(disp), 4, z.shape[0], np.iscomplexobj(z), 2)
    assert kernel.route == route
    args = (jnp.asarray(e), jnp.asarray(u), jnp.asarray(k), jnp.asarray(w))
    split = jax.jit(lambda *a: kernel.finish(gf._sum_in_sub_chunks(kernel.raw, kernel.shape, 3, *a, z=zj)))(*args)
    for p in (1, 2):
        want = _numpy_green(e, u, k, w, z, disp, p)
        scale = np.max(np.abs(want))
        assert np.max(np.abs(np.asarray(split[p - 1]) - want)) <= ROUNDING * scale


def test_complex_resolvents_in_real_arithmetic():
    """[Re; Im] rows of 1/(z - E)^p from the real formula equal NumPy's complex division, also for eta = 1e-12
    and z next to a level (|z - E| ~ 1e-12, resolvents ~ 1e12): relative error of a few ulp."""
    e = np.array([[0.3, -1.0, 1e-12, 2.5]])
    z = np.array([1e-12j, 0.3 + 1e-12j, -1.0 + 0.5j])
    rows = np.asarray(
        jax.jit(gf._resolvent_rows, static_argnums=2)(jnp.asarray(e), jnp.asarray(z), 3)
    )  # (2 * 3 * 3, 4)
    for p in (1, 2, 3):
        want = (1.0 / (z[:, None] - e[0][None]) ** p).reshape(3, 4)
        got = rows[(p - 1) * 3 : p * 3] + 1j * rows[9 + (p - 1) * 3 : 9 + p * 3]
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)


def test_bare_greens_sum_in_sub_chunks_equals_direct_sum(monkeypatch):
    """The jitted sum with CPU sub-chunks of ~2 k-points (a tiny budget; a grid no other test uses, so it is
    traced afresh) against the definition summed in NumPy over the same grid."""
    model = shibajax.models.square(t=1.0, mu=-1.0, delta=0.3, rashba=0.4)
    kgrid = (5, 3)
    per_k = gf._green_kernel(jnp.zeros((3, 2)), 4, 2, True, 1).per_k
    monkeypatch.setattr(gf, "CPU_SUB_CHUNK_BYTES", 2 * 8 * per_k)  # 2 k-points per sub-chunk
    disp = np.array([[0, 0], [1, 2], [-1, -2]])
    z = np.array([-0.2 + 0.01j, 0.35 + 0.02j])
    (g,) = gf.bare_greens_sum(model, jnp.asarray(disp, jnp.float64), jnp.asarray(z), kgrid=kgrid, chunk_size=7)
    kx, ky = np.meshgrid(2 * np.pi * np.arange(5) / 5, 2 * np.pi * np.arange(3) / 3, indexing="ij")
    k = np.stack([kx.ravel(), ky.ravel()], -1)
    h = np.asarray(_hamiltonians(model, jnp.asarray(k)))
    e, u = np.linalg.eigh(h)
    want = _numpy_green(e, u, k, np.ones(15), z, disp.astype(float), 1) / 15
    assert np.max(np.abs(np.asarray(g) - want)) <= ROUNDING * np.max(np.abs(want))
    assert gf.sub_chunk_size(7, per_k) == 2  # it did split


@pytest.mark.parametrize("z", [np.array([0.2 + 0.1j, -0.4 + 0.3j]), np.array([0.2, -0.4])], ids=["complex", "real"])
def test_projected_kernel_is_q_dagger_g_q(z):
    """Q^dagger G0 Q from the channel kernel equals the G0 blocks between two sites projected by Q in NumPy."""
    m, r = 4, 3
    e, u, k, w = _random_eigensystem(6, m, seed=3)
    sites = np.array([[0.0, 0.0], [1.0, 2.0]])
    rng = np.random.default_rng(4)
    q = rng.standard_normal((2 * m, r)) + 1j * rng.standard_normal((2 * m, r))
    kernel = gf._projected_kernel(jnp.asarray(sites), jnp.asarray(q), m, 2, np.iscomplexobj(z), 1)
    args = (jnp.asarray(e), jnp.asarray(u), jnp.asarray(k), jnp.asarray(w), jnp.asarray(z))
    (got,) = jax.jit(lambda *a: kernel.finish(kernel.raw(*a)))(*args)
    disp = (sites[:, None] - sites[None]).reshape(-1, 2)  # (i, j) -> r_i - r_j
    g = _numpy_green(e, u, k, w, z, disp, 1).reshape(2, 2, 2, m, m).transpose(0, 1, 3, 2, 4).reshape(2, 2 * m, 2 * m)
    want = q.conj().T[None] @ g @ q[None]
    assert np.max(np.abs(np.asarray(got) - want)) <= ROUNDING * np.max(np.abs(want))
