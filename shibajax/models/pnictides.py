"""Iron-pnictide models: the five-orbital tight-binding model of Graser et al. (2009) for LaOFeAs.

Reference: S. Graser, T. A. Maier, P. J. Hirschfeld, D. J. Scalapino, "Near-degeneracy of several pairing
channels in multiorbital models for the Fe pnictides", New J. Phys. 11, 025016 (2009), Table 1 and Appendix.

Energies are in **eV** (not the meV of docs/conventions.md's material-model note: the published table is in
eV). The lattice is the square 1-Fe lattice, lattice constant 1 = Fe-Fe distance, x and y along the Fe-Fe bonds;
k is in the unfolded 1-Fe Brillouin zone. Orbital order: d_xz, d_yz, d_x2-y2, d_xy, d_3z2-r2.

The k-space Hamiltonian is H0(k)_ij = xi_ij(k) + delta_ij eps_i with the published forms xi_ij(k) (harmonics up to
|d_x|, |d_y| <= 2); the real-space hoppings T_d are its exact Fourier coefficients, obtained once on an 8 x 8
Gamma-centred grid and checked against H0(k) at random k when the module is first used.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from shibajax.errors import ShapeError
from shibajax.models.tight_binding import TightBindingModel, from_hoppings

#: On-site energies eps_i (eV), orbital order d_xz, d_yz, d_x2-y2, d_xy, d_3z2-r2.
GRASER2009_ONSITE = (0.13, 0.13, -0.22, 0.30, -0.211)

#: Hoppings t^{ij}_mu (eV) of Graser et al. (2009), Table 1; mu: x=(1,0), y=(0,1), xy=(1,1), xx=(2,0),
#: xxy=(2,1), xyy=(1,2), xxyy=(2,2). Symmetry-related hoppings follow from the forms xi_ij(k).
GRASER2009_HOPPINGS = {
    "t11x": -0.14,
    "t11y": -0.4,
    "t11xy": 0.28,
    "t11xx": 0.02,
    "t11xxy": -0.035,
    "t11xyy": 0.005,
    "t11xxyy": 0.035,
    "t33x": 0.35,
    "t33xy": -0.105,
    "t33xx": -0.02,
    "t44x": 0.23,
    "t44xy": 0.15,
    "t44xx": -0.03,
    "t44xxy": -0.03,
    "t44xxyy": -0.03,
    "t55x": -0.1,
    "t55xx": -0.04,
    "t55xxy": 0.02,
    "t55xxyy": -0.01,
    "t12xy": 0.05,
    "t12xxy": -0.015,
    "t12xxyy": 0.035,
    "t13x": -0.354,
    "t13xy": 0.099,
    "t13xxy": 0.021,
    "t14x": 0.339,
    "t14xy": 0.014,
    "t14xxy": 0.028,
    "t15x": -0.198,
    "t15xy": -0.085,
    "t15xxyy": -0.014,
    "t34xxy": -0.01,
    "t35x": -0.3,
    "t35xxy": -0.02,
    "t45xy": -0.15,
    "t45xxyy": 0.01,
}

#: Electrons per Fe (both spins) vs chemical potential mu (eV), T = 0 counting on a 600 x 600 grid.
GRASER2009_FILLING = {5.90: -0.0815, 5.95: -0.055, 6.00: -0.0272, 6.05: 0.0115, 6.10: 0.056, 6.20: 0.1518}

#: Gap shapes: "s+-" Delta cos kx cos ky, "s++" on-site Delta (weights w_d with D_d = Delta w_d).
PNICTIDE_GAPS = {
    "s+-": {(1, 1): 0.25, (-1, -1): 0.25, (1, -1): 0.25, (-1, 1): 0.25},
    "s++": {(0, 0): 1.0},
}

_FOURIER_L = 8  # grid of the Fourier transform: exact for harmonics |d_i| <= 2 (needs L >= 5)
_CHECK_TOL = 1e-12


def graser2009_h0(kx, ky) -> np.ndarray:
    """H0(k) of Graser et al. (2009) without mu: (..., 5, 5) complex numpy array (eV); k in 1/a, any shape.

    H0_ij = xi_ij(k) + delta_ij eps_i, H0_ji = conj(H0_ij), with the published forms (xi25 with + 2i t15x sin kx;
    t55xxyy with coefficient 4, four (+-2, +-2) neighbours).
    """
    t = GRASER2009_HOPPINGS
    kx, ky = np.broadcast_arrays(np.asarray(kx, dtype=float), np.asarray(ky, dtype=float))
    cx, cy, c2x, c2y = np.cos(kx), np.cos(ky), np.cos(2 * kx), np.cos(2 * ky)
    sx, sy, s2x, s2y = np.sin(kx), np.sin(ky), np.sin(2 * kx), np.sin(2 * ky)
    xi = {}
    xi[1, 1] = (
        2 * t["t11x"] * cx
        + 2 * t["t11y"] * cy
        + 4 * t["t11xy"] * cx * cy
        + 2 * t["t11xx"] * (c2x - c2y)
        + 4 * t["t11xxy"] * c2x * cy
        + 4 * t["t11xyy"] * c2y * cx
        + 4 * t["t11xxyy"] * c2x * c2y
    )
    xi[2, 2] = (
        2 * t["t11y"] * cx
        + 2 * t["t11x"] * cy
        + 4 * t["t11xy"] * cx * cy
        - 2 * t["t11xx"] * (c2x - c2y)
        + 4 * t["t11xyy"] * c2x * cy
        + 4 * t["t11xxy"] * c2y * cx
        + 4 * t["t11xxyy"] * c2x * c2y
    )
    xi[3, 3] = 2 * t["t33x"] * (cx + cy) + 4 * t["t33xy"] * cx * cy + 2 * t["t33xx"] * (c2x + c2y)
    xi[4, 4] = (
        2 * t["t44x"] * (cx + cy)
        + 4 * t["t44xy"] * cx * cy
        + 2 * t["t44xx"] * (c2x + c2y)
        + 4 * t["t44xxy"] * (c2x * cy + c2y * cx)
        + 4 * t["t44xxyy"] * c2x * c2y
    )
    xi[5, 5] = (
        2 * t["t55x"] * (cx + cy)
        + 2 * t["t55xx"] * (c2x + c2y)
        + 4 * t["t55xxy"] * (c2x * cy + c2y * cx)
        + 4 * t["t55xxyy"] * c2x * c2y
    )
    xi[1, 2] = -4 * t["t12xy"] * sx * sy - 4 * t["t12xxy"] * (s2x * sy + s2y * sx) - 4 * t["t12xxyy"] * s2x * s2y
    xi[1, 3] = 2j * t["t13x"] * sy + 4j * t["t13xy"] * sy * cx - 4j * t["t13xxy"] * (s2y * cx - c2x * sy)
    xi[2, 3] = -2j * t["t13x"] * sx - 4j * t["t13xy"] * sx * cy + 4j * t["t13xxy"] * (s2x * cy - c2y * sx)
    xi[1, 4] = 2j * t["t14x"] * sx + 4j * t["t14xy"] * cy * sx + 4j * t["t14xxy"] * s2x * cy
    xi[2, 4] = 2j * t["t14x"] * sy + 4j * t["t14xy"] * cx * sy + 4j * t["t14xxy"] * s2y * cx
    xi[1, 5] = 2j * t["t15x"] * sy - 4j * t["t15xy"] * sy * cx - 4j * t["t15xxyy"] * s2y * c2x
    xi[2, 5] = 2j * t["t15x"] * sx - 4j * t["t15xy"] * sx * cy - 4j * t["t15xxyy"] * s2x * c2y
    xi[3, 4] = 4 * t["t34xxy"] * (s2y * sx - s2x * sy)
    xi[3, 5] = 2 * t["t35x"] * (cx - cy) + 4 * t["t35xxy"] * (c2x * cy - c2y * cx)
    xi[4, 5] = 4 * t["t45xy"] * sx * sy + 4 * t["t45xxyy"] * s2x * s2y
    h = np.zeros(kx.shape + (5, 5), dtype=np.complex128)
    for i in range(5):
        h[..., i, i] = xi[i + 1, i + 1] + GRASER2009_ONSITE[i]
        for j in range(i + 1, 5):
            h[..., i, j] = xi[i + 1, j + 1]
            h[..., j, i] = np.conj(xi[i + 1, j + 1])
    return h


@functools.lru_cache(maxsize=1)
def graser2009_hoppings() -> dict[tuple[int, int], np.ndarray]:
    """Real-space hoppings {d: T_d} (5 x 5, eV, without mu) of Graser et al. (2009), exact Fourier coefficients.

    T_d = (1/N) sum_k H0(k) exp(-i k.d) on an 8 x 8 Gamma-centred grid (exact: H0 has harmonics |d_i| <= 2);
    terms with max |T_d| <= 1e-12 are dropped. Checked at random k: sum_d T_d exp(i k.d) = H0(k) to 1e-12.
    """
    L = _FOURIER_L
    n = np.arange(L)
    k = 2 * np.pi * n / L
    hk = graser2009_h0(k[:, None], k[None, :])  # (L, L, 5, 5)
    d_vals = np.where(n <= L // 2, n, n - L)  # -3 .. 4
    phase = np.exp(-1j * np.outer(k, d_vals))  # (L_k, L_d)
    tmat = np.einsum("xyab,xm,yn->mnab", hk, phase, phase) / L**2
    hop = {}
    for a, dx in enumerate(d_vals):
        for b, dy in enumerate(d_vals):
            if np.max(np.abs(tmat[a, b])) > _CHECK_TOL:
                hop[(int(dx), int(dy))] = tmat[a, b]
    for d in hop:
        if max(abs(d[0]), abs(d[1])) > 2:
            raise AssertionError(f"Graser 2009 Fourier transform: unexpected harmonic d = {d}")
    # build-time check: the reconstruction equals H0(k) at random k
    rng = np.random.default_rng(2009)
    kr = rng.uniform(-np.pi, np.pi, size=(64, 2))
    ds = np.array(list(hop), dtype=float)
    ts = np.stack(list(hop.values()))
    rebuilt = np.einsum("kd,dab->kab", np.exp(1j * kr @ ds.T), ts)
    dev = float(np.max(np.abs(rebuilt - graser2009_h0(kr[:, 0], kr[:, 1]))))
    if dev > _CHECK_TOL:
        raise AssertionError(f"Graser 2009 hoppings do not reproduce H0(k): max deviation {dev:.3g} eV")
    return hop


def graser2009(mu=-0.0272, delta=0.0, gap: str = "s+-") -> TightBindingModel:
    """Five-orbital model of LaOFeAs (Graser, Maier, Hirschfeld, Scalapino, New J. Phys. 11, 025016 (2009)).

    h(k) = H0(k) - mu, H0(k)_ij = xi_ij(k) + delta_ij eps_i (5 x 5 per spin, spin-degenerate), with the published
    on-site energies eps_i and hoppings t^{ij}_mu (:data:`GRASER2009_ONSITE`, :data:`GRASER2009_HOPPINGS`),
    orbital order d_xz, d_yz, d_x2-y2, d_xy, d_3z2-r2; square 1-Fe lattice, a = 1 = Fe-Fe distance.
    **Energies in eV.** Real-space hoppings: :func:`graser2009_hoppings` (range up to (2, 2)).

    Filling n (electrons per Fe, both spins, T = 0) vs mu:

        n     5.90     5.95     6.00     6.05    6.10    6.20
        mu  -0.0815  -0.0550  -0.0272  0.0115  0.0560  0.1518   (eV)

    (n = 6.0, the parent compound, at mu = -0.0272 eV; n = 6.1 at +0.0560 eV.) At n = 6.0 the Fermi surface has
    two hole pockets at Gamma, electron pockets at X = (pi, 0) and Y = (0, pi), and a small hole pocket at
    M = (pi, pi); N0 ~ 0.85 / eV per spin per Fe.

    Args:
        mu: chemical potential (eV).
        delta: gap amplitude Delta (eV): a scalar, or a length-5 array of orbital-dependent amplitudes.
        gap: "s+-": Delta(k) = Delta cos kx cos ky on every orbital (D_d = Delta / 4 at d = (+-1, +-1));
            "s++": on-site Delta(k) = Delta on every orbital.

    Returns:
        TightBindingModel with n_orb = 5 (``mu`` and ``delta`` may be JAX tracers).

    Example:
        >>> import shibajax
        >>> m = shibajax.models.graser2009(mu=-0.0272, delta=0.01, gap="s+-")
        >>> m.n_orb, m.nambu_dim
        (5, 20)
    """
    if gap not in PNICTIDE_GAPS:
        raise ShapeError(f"unknown gap {gap!r} for graser2009; choose one of {sorted(PNICTIDE_GAPS)}")
    if np.ndim(delta) not in (0, 1) or (np.ndim(delta) == 1 and np.shape(delta) != (5,)):
        raise ShapeError(f"delta must be a scalar or a length-5 array (one per orbital); got shape {np.shape(delta)}")
    hop = {d: jnp.asarray(t) for d, t in graser2009_hoppings().items()}
    hop[(0, 0)] = hop[(0, 0)] - mu * jnp.eye(5)
    dlt = jnp.asarray(delta)
    pairing = {d: dlt * w for d, w in PNICTIDE_GAPS[gap].items()}
    return from_hoppings(hop, n_orb=5, pairing=pairing, lattice_vectors=np.eye(2), name=f"graser2009[{gap}]")
