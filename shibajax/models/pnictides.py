"""Iron-pnictide models: five-orbital tight-binding models of LaOFeAs (Graser et al. 2009) and LiFeAs.

Reference: S. Graser, T. A. Maier, P. J. Hirschfeld, D. J. Scalapino, "Near-degeneracy of several pairing
channels in multiorbital models for the Fe pnictides", New J. Phys. 11, 025016 (2009), Table 1 and Appendix.

Energies are in **eV**, the unit of the published table (docs/conventions.md: material models keep their
source's unit). The lattice is the square 1-Fe lattice, lattice constant 1 = Fe-Fe distance, x and y along the
Fe-Fe bonds; k is in the unfolded 1-Fe Brillouin zone. Orbital order: d_xz, d_yz, d_x2-y2, d_xy, d_3z2-r2.

The k-space Hamiltonian is H0(k)_ij = xi_ij(k) + delta_ij eps_i with the published forms xi_ij(k) (harmonics up to
|d_x|, |d_y| <= 2); the real-space hoppings T_d are its exact Fourier coefficients, obtained once on an 8 x 8
Gamma-centred grid and checked against H0(k) at random k when the module is first used.

Also: :func:`lifeas2017`, the five-orbital 3D LiFeAs model of the simulations in Chi et al., Nat. Commun. 8,
15996 (2017) (eV, same construction on an 8 x 8 x 8 grid).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from shibajax.errors import ShapeError
from shibajax.models.tight_binding import TightBindingModel, check_model_parameters, from_hoppings

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
    check_model_parameters("graser2009", "eV", vectors=("delta",), mu=mu, delta=delta)
    if np.ndim(delta) not in (0, 1) or (np.ndim(delta) == 1 and np.shape(delta) != (5,)):
        raise ShapeError(f"delta must be a scalar or a length-5 array (one per orbital); got shape {np.shape(delta)}")
    hop = {d: jnp.asarray(t) for d, t in graser2009_hoppings().items()}
    hop[(0, 0)] = hop[(0, 0)] - mu * jnp.eye(5)
    dlt = jnp.asarray(delta)
    pairing = {d: dlt * w for d, w in PNICTIDE_GAPS[gap].items()}
    return from_hoppings(hop, n_orb=5, pairing=pairing, lattice_vectors=np.eye(2), name=f"graser2009[{gap}]")


# ---------------------------------------------------------------------------------------------------------------
# LiFeAs: the five-orbital 3D model of the simulations in Chi et al., Nat. Commun. 8, 15996 (2017)
# ---------------------------------------------------------------------------------------------------------------

#: Orbital-pair rows of the LiFeAs tables (1-based orbitals, order of the source's ``tin``/``tout`` arrays).
LIFEAS2017_PAIRS = ("11", "22", "33", "44", "55", "12", "13", "14", "15", "23", "24", "25", "34", "35", "45")

#: In-plane parameters (eV) as stored in the source (``tin``): columns 1..8 hoppings, column 9 on-site energy.
#: Exact copy of shared/reference/lifeas_chi2017_5orbital.json (``tin_eV``), before C4 symmetrisation.
LIFEAS2017_TIN = {
    "11": (-0.024, -0.024, -0.04, -0.01, -0.01, 0.0, 0.0, -0.015, -0.43),
    "22": (0.38, 0.051, 0.26, -0.075, 0.0137, -0.022, 0.045, 0.038, 0.0088),
    "33": (0.051, 0.38, 0.26, 0.014, -0.075, 0.045, -0.022, 0.038, 0.0088),
    "44": (0.0, 0.0, 0.076, 0.0, 0.0, 0.029, 0.029, -0.034, -0.13),
    "55": (-0.4, -0.4, -0.032, -0.049, -0.049, 0.0, 0.0, 0.021, -0.4),
    "12": (-0.17, 0.0, -0.13, 0.013, 0.0, 0.012, 0.013, -0.02, 0.0),
    "13": (0.0, -0.17, -0.13, 0.0, 0.013, 0.013, 0.012, -0.02, 0.0),
    "14": (0.0, 0.0, 0.078, 0.0, 0.0, 0.0, 0.0, -0.015, 0.0),
    "15": (-0.34, 0.34, 0.0, 0.032, -0.032, -0.01, 0.01, 0.0, 0.0),
    "23": (0.0, 0.0, 0.11, 0.0, 0.0, 0.03, 0.03, 0.048, 0.0),
    "24": (0.0, -0.28, 0.087, 0.0, 0.011, -0.015, -0.015, -0.009, 0.0),
    "25": (0.4, 0.0, 0.1, -0.0061, 0.0, 0.016, -0.032, 0.0, 0.0),
    "34": (-0.28, 0.0, 0.087, 0.011, 0.0, -0.015, -0.015, -0.009, 0.0),
    "35": (0.0, -0.4, -0.1, 0.0, 0.0061, 0.032, -0.016, 0.0, 0.0),
    "45": (0.0, 0.0, 0.0, 0.0, 0.0, 0.018, -0.018, 0.0, 0.0),
}

#: Out-of-plane (kz) parameters (eV) as stored in the source (``tout``, columns 1..10); JSON ``tout_eV``.
LIFEAS2017_TOUT = {
    "11": (-0.056, -0.0306, -0.0306, 0.0041, -0.013, 0.0, 0.0, 0.0, 0.0, 0.0),
    "22": (0.0078, 0.035, 0.0, 0.0, 0.0096, 0.025, -0.01, 0.014, -0.0058, 0.0),
    "33": (0.0078, 0.0, 0.035, 0.0, 0.0096, -0.01, 0.025, -0.0058, 0.014, 0.0),
    "44": (0.055, -0.049, -0.049, 0.0, 0.036, 0.031, 0.031, -0.014, -0.014, -0.0063),
    "55": (-0.037, 0.0079, 0.0078, 0.0, 0.016, -0.01, -0.01, 0.0, 0.0, 0.0),
    "12": (0.0, 0.03, 0.0, 0.0, 0.015, 0.0066, 0.0, 0.0, 0.0, 0.0),
    "13": (0.0, 0.0, 0.03, 0.0, 0.015, 0.0, 0.0066, 0.0, 0.0, 0.0),
    "14": (0.0, 0.0, 0.0, 0.0, -0.013, 0.0, 0.0, -0.0081, -0.0081, 0.0),
    "15": (0.0, 0.016, -0.016, 0.0, 0.0, 0.008, -0.008, 0.0, 0.0, 0.0),
    "23": (0.0,) * 10,
    "24": (0.0, 0.0, 0.0077, 0.0, -0.0075, 0.0, 0.0, -0.012, 0.0, 0.0),
    "25": (0.0, -0.01, 0.0, 0.0, 0.0, 0.016, 0.0, 0.0, 0.0, 0.0),
    "34": (0.0, 0.0077, 0.0, 0.0, -0.0075, 0.0, 0.0, 0.0, -0.012, 0.0),
    "35": (0.0, 0.0, 0.01, 0.0, 0.0, 0.0, -0.016, 0.0, 0.0, 0.0),
    "45": (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0094, -0.0094, 0.0),
}

#: The two C4 partners that the source table gives with different values (0.3 meV and 0.1 meV apart), as
#: (table, pair, column (1-based)) couples, and the common value used by :func:`lifeas2017` (their mean): the
#: cos 2ky term of orbital 2 vs the cos 2kx term of orbital 3 (0.0137 vs 0.014), and the cos kx cos kz vs
#: cos ky cos kz terms of orbital 5 (0.0079 vs 0.0078). Left as printed, they split the d_xz/d_yz doublet at
#: Gamma (+71.0 and +71.6 meV) and break C4 by up to 0.62 meV in the band energies.
LIFEAS2017_C4_FIXES = (
    ((("tin", "22", 5), ("tin", "33", 4)), 0.01385),
    ((("tout", "55", 2), ("tout", "55", 3)), 0.00785),
)

#: Orbital order of :func:`lifeas2017` (the source's order; assignment inferred from the hopping pattern, see there).
LIFEAS2017_ORBITALS = ("d_3z2-r2", "d_xz", "d_yz", "d_xy", "d_x2-y2")

#: Chemical potentials (eV): 0 is the source's (its simulations add no mu); n = 6.000 electrons per Fe at -0.0102.
LIFEAS2017_MU_SOURCE = 0.0
LIFEAS2017_MU_N6 = -0.0102

#: Electrons per Fe (both spins, T = 0) at mu = 0, kz-averaged (400 x 400 x 32 grid), and per kz plane (200 x 200).
LIFEAS2017_FILLING_MU0 = {"3D": 6.0217, "kz=0": 5.908, "kz=pi/2": 6.014, "kz=pi": 6.151}

#: Gap amplitude Delta0 (eV) of the source's simulations, Delta(k) = Delta0 cos kx cos ky on every orbital.
LIFEAS2017_DELTA0_SOURCE = 0.014

_LIFEAS_FOURIER_L = 8  # exact for harmonics |d_i| <= 2 in all three directions (needs L >= 5)


def _lifeas2017_tables(symmetrize: bool = True) -> tuple[dict, dict]:
    """(tin, tout) as {pair: list}, with the :data:`LIFEAS2017_C4_FIXES` applied when ``symmetrize``."""
    tables = {"tin": {p: list(v) for p, v in LIFEAS2017_TIN.items()}}
    tables["tout"] = {p: list(v) for p, v in LIFEAS2017_TOUT.items()}
    if symmetrize:
        for entries, value in LIFEAS2017_C4_FIXES:
            for table, pair, col in entries:
                tables[table][pair][col - 1] = value
    return tables["tin"], tables["tout"]


def lifeas2017_h0(kx, ky, kz, *, symmetrize: bool = True) -> np.ndarray:
    """H0(k) of the LiFeAs model without mu: (..., 5, 5) complex numpy array (eV); kx, ky in 1/a, kz in 1/c.

    Matrix elements as coded in the source (func_five_band_model.m of github ShunChi100/LiFeAs_IET_matlab_code),
    written with a(p, c) = tin[p][c], b(p, c) = tout[p][c] (1-based columns), cx = cos kx, c2x = cos 2kx, ...:

        H11 = -2 a1 cx - 2 a2 cy + 4 a3 cx cy + 2 a4 c2x + 2 a5 c2y + 4 a8 c2x c2y + a9
              + 2 b1 cz + 2 b4 c2z - 4 b2 cx cz - 4 b3 cy cz + 8 b5 cx cy cz
        H22 = -2 a1 cx - 2 a2 cy + 4 a3 cx cy + 2 a4 c2x + 2 a5 c2y - 4 a6 c2x cy - 4 a7 cx c2y + 4 a8 c2x c2y + a9
              + 2 b1 cz - 4 b2 cx cz + 8 b5 cx cy cz + 4 b6 c2x cz + 4 b7 c2y cz - 8 b8 c2x cy cz - 8 b9 cx c2y cz
        H33 = as H22 with its own row, and -4 b3 cy cz in place of -4 b2 cx cz
        H44 = 4 a3 cx cy - 4 a6 c2x cy - 4 a7 cx c2y + 4 a8 c2x c2y + a9 + 2 b1 cz - 4 b2 cx cz - 4 b3 cy cz
              + 8 b5 cx cy cz + 4 b6 c2x cz + 4 b7 c2y cz - 8 b8 c2x cy cz - 8 b9 cx c2y cz + 8 b10 c2x c2y cz
        H55 = -2 a1 cx - 2 a2 cy + 4 a3 cx cy + 2 a4 c2x + 2 a5 c2y + 4 a8 c2x c2y + a9
              + 2 b1 cz - 4 b2 cx cz - 4 b3 cy cz + 8 b5 cx cy cz + 4 b6 c2x cz + 4 b7 c2y cz
        H12 = i [-2 a1 sx + 2 a4 s2x + 4 a3 sx cy - 4 a6 s2x cy - 4 a7 sx c2y + 4 a8 s2x c2y
                 - 4 b2 sx cz + 8 b5 sx cy cz + 4 b6 s2x cz]
        H13 = H12 with x <-> y (a1 <-> a2, a4 <-> a5, a6 <-> a7, b2 <-> b3, b6 <-> b7), own row
        H14 = -4 a3 sx sy - 4 a8 s2x s2y - 8 b5 sx sy cz + 8 b8 s2x sy cz + 8 b9 sx s2y cz
        H15 = -2 a1 cx - 2 a2 cy + 2 a4 c2x + 2 a5 c2y - 4 a6 c2x cy - 4 a7 cx c2y
              - 4 b2 cx cz - 4 b3 cy cz + 4 b6 c2x cz + 4 b7 c2y cz
        H23 = -4 a3 sx sy - 4 a8 s2x s2y + 4 a6 s2x sy + 4 a7 sx s2y
        H24 = i [-2 a2 sy + 2 a5 s2y + 4 a3 cx sy - 4 a6 c2x sy - 4 a7 cx s2y + 4 a8 c2x s2y
                 - 4 b3 sy cz + 8 b5 cx sy cz - 8 b8 c2x sy cz]
        H25 = i [-2 a1 sx + 2 a4 s2x + 4 a3 sx cy - 4 a6 s2x cy - 4 a7 sx c2y - 4 b2 sx cz + 4 b6 s2x cz]
        H34 = i [-2 a1 sx + 2 a4 s2x + 4 a3 sx cy - 4 a6 s2x cy - 4 a7 sx c2y + 4 a8 s2x c2y
                 - 4 b2 sx cz + 8 b5 sx cy cz - 8 b9 sx c2y cz]
        H35 = i [-2 a2 sy + 2 a5 s2y + 4 a3 cx sy - 4 a6 c2x sy - 4 a7 cx s2y - 4 b3 sy cz + 4 b7 s2y cz]
        H45 = 4 a6 s2x sy + 4 a7 sx s2y + 8 b8 s2x sy cz + 8 b9 sx s2y cz

    and H_ji = conj(H_ij). Entries of the table that no form uses are zero in the table (checked in the tests).
    ``symmetrize=False`` uses the table exactly as printed (C4 broken by 0.6 meV, :data:`LIFEAS2017_C4_FIXES`).
    """
    tin, tout = _lifeas2017_tables(symmetrize)
    kx, ky, kz = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (kx, ky, kz)))
    cx, cy, cz = np.cos(kx), np.cos(ky), np.cos(kz)
    c2x, c2y, c2z = np.cos(2 * kx), np.cos(2 * ky), np.cos(2 * kz)
    sx, sy, s2x, s2y = np.sin(kx), np.sin(ky), np.sin(2 * kx), np.sin(2 * ky)

    def row(p):
        a = dict(enumerate(tin[p], start=1))
        b = dict(enumerate(tout[p], start=1))
        return a, b

    def inplane_diag(a):
        return (
            -2 * a[1] * cx
            - 2 * a[2] * cy
            + 4 * a[3] * cx * cy
            + 2 * a[4] * c2x
            + 2 * a[5] * c2y
            - 4 * a[6] * c2x * cy
            - 4 * a[7] * cx * c2y
            + 4 * a[8] * c2x * c2y
            + a[9]
        )

    def kz_diag(b):
        return (
            2 * b[1] * cz
            - 4 * b[2] * cx * cz
            - 4 * b[3] * cy * cz
            + 8 * b[5] * cx * cy * cz
            + 4 * b[6] * c2x * cz
            + 4 * b[7] * c2y * cz
            - 8 * b[8] * c2x * cy * cz
            - 8 * b[9] * cx * c2y * cz
            + 8 * b[10] * c2x * c2y * cz
        )

    h = {}
    a, b = row("11")  # a6, a7, b6..b10 are zero; the cos 2kz term is orbital 1's alone
    h[1, 1] = inplane_diag(a) + kz_diag(b) + 2 * b[4] * c2z
    for p in ("22", "33", "44", "55"):  # b4 is zero in these rows
        a, b = row(p)
        h[int(p[0]), int(p[1])] = inplane_diag(a) + kz_diag(b)
    a, b = row("12")
    h[1, 2] = 1j * (
        -2 * a[1] * sx
        + 2 * a[4] * s2x
        + 4 * a[3] * sx * cy
        - 4 * a[6] * s2x * cy
        - 4 * a[7] * sx * c2y
        + 4 * a[8] * s2x * c2y
        - 4 * b[2] * sx * cz
        + 8 * b[5] * sx * cy * cz
        + 4 * b[6] * s2x * cz
        - 8 * b[9] * sx * c2y * cz
    )
    for p, (i, j) in (("13", (1, 3)), ("24", (2, 4)), ("35", (3, 5))):
        a, b = row(p)
        h[i, j] = 1j * (
            -2 * a[2] * sy
            + 2 * a[5] * s2y
            + 4 * a[3] * cx * sy
            - 4 * a[6] * c2x * sy
            - 4 * a[7] * cx * s2y
            + 4 * a[8] * c2x * s2y
            - 4 * b[3] * sy * cz
            + 8 * b[5] * cx * sy * cz
            + 4 * b[7] * s2y * cz
            - 8 * b[8] * c2x * sy * cz
        )
    for p, (i, j) in (("25", (2, 5)), ("34", (3, 4))):
        a, b = row(p)
        h[i, j] = 1j * (
            -2 * a[1] * sx
            + 2 * a[4] * s2x
            + 4 * a[3] * sx * cy
            - 4 * a[6] * s2x * cy
            - 4 * a[7] * sx * c2y
            + 4 * a[8] * s2x * c2y
            - 4 * b[2] * sx * cz
            + 8 * b[5] * sx * cy * cz
            + 4 * b[6] * s2x * cz
            - 8 * b[9] * sx * c2y * cz
        )
    a, b = row("14")
    h[1, 4] = (
        -4 * a[3] * sx * sy
        - 4 * a[8] * s2x * s2y
        - 8 * b[5] * sx * sy * cz
        + 8 * (b[8] * s2x * sy + b[9] * sx * s2y) * cz
    )
    a, b = row("15")
    h[1, 5] = (
        -2 * a[1] * cx
        - 2 * a[2] * cy
        + 2 * a[4] * c2x
        + 2 * a[5] * c2y
        - 4 * a[6] * c2x * cy
        - 4 * a[7] * cx * c2y
        - 4 * b[2] * cx * cz
        - 4 * b[3] * cy * cz
        + 4 * b[6] * c2x * cz
        + 4 * b[7] * c2y * cz
    )
    a, b = row("23")
    h[2, 3] = -4 * a[3] * sx * sy - 4 * a[8] * s2x * s2y + 4 * a[6] * s2x * sy + 4 * a[7] * sx * s2y
    a, b = row("45")
    h[4, 5] = 4 * a[6] * s2x * sy + 4 * a[7] * sx * s2y + 8 * (b[8] * s2x * sy + b[9] * sx * s2y) * cz
    out = np.zeros(kx.shape + (5, 5), dtype=np.complex128)
    for (i, j), v in h.items():
        out[..., i - 1, j - 1] = v
        if i != j:
            out[..., j - 1, i - 1] = np.conj(v)
    return out


@functools.lru_cache(maxsize=2)
def lifeas2017_hoppings(symmetrize: bool = True) -> dict[tuple[int, int, int], np.ndarray]:
    """Real-space hoppings {d: T_d} (5 x 5, eV, without mu) of the LiFeAs model, exact Fourier coefficients.

    T_d = (1/N) sum_k H0(k) exp(-i k.d) on an 8 x 8 x 8 Gamma-centred grid (exact: H0 has harmonics |d_i| <= 2);
    terms with max |T_d| <= 1e-12 are dropped. Checked at random k: sum_d T_d exp(i k.d) = H0(k) to 1e-12.
    """
    L = _LIFEAS_FOURIER_L
    n = np.arange(L)
    k = 2 * np.pi * n / L
    hk = lifeas2017_h0(k[:, None, None], k[None, :, None], k[None, None, :], symmetrize=symmetrize)
    d_vals = np.where(n <= L // 2, n, n - L)  # -3 .. 4
    phase = np.exp(-1j * np.outer(k, d_vals))
    tmat = np.einsum("xyzab,xl,ym,zn->lmnab", hk, phase, phase, phase) / L**3
    hop = {}
    for a, dx in enumerate(d_vals):
        for b, dy in enumerate(d_vals):
            for c, dz in enumerate(d_vals):
                if np.max(np.abs(tmat[a, b, c])) > _CHECK_TOL:
                    hop[(int(dx), int(dy), int(dz))] = tmat[a, b, c]
    for d in hop:
        if max(abs(v) for v in d) > 2:
            raise AssertionError(f"LiFeAs Fourier transform: unexpected harmonic d = {d}")
    rng = np.random.default_rng(2017)
    kr = rng.uniform(-np.pi, np.pi, size=(64, 3))
    ds = np.array(list(hop), dtype=float)
    ts = np.stack(list(hop.values()))
    rebuilt = np.einsum("kd,dab->kab", np.exp(1j * kr @ ds.T), ts)
    dev = float(np.max(np.abs(rebuilt - lifeas2017_h0(*kr.T, symmetrize=symmetrize))))
    if dev > _CHECK_TOL:
        raise AssertionError(f"LiFeAs hoppings do not reproduce H0(k): max deviation {dev:.3g} eV")
    return hop


#: Gap shapes of :func:`lifeas2017` (3D displacements): "s+-" Delta cos kx cos ky, "s++" on-site Delta.
LIFEAS2017_GAPS = {
    "s+-": {(1, 1, 0): 0.25, (-1, -1, 0): 0.25, (1, -1, 0): 0.25, (-1, 1, 0): 0.25},
    "s++": {(0, 0, 0): 1.0},
}

#: Orbital-dependent s+- amplitudes (eV, orbital order :data:`LIFEAS2017_ORBITALS`) for the two gaps of LiFeAs,
#: Delta(k) = diag(amplitudes) cos kx cos ky: tuned (at mu = 0, kz = 0) so that the mean gap on the inner
#: d_xz/d_yz hole pocket at Gamma is 6.0 meV and on the d_xy hole pocket at M is 3.0 meV (the "about 6 meV and
#: 3 meV" of Chi et al. 2017). See :func:`lifeas2017` for the gaps this gives on every pocket.
LIFEAS2017_DELTA_TWO_GAP = (0.00618, 0.00618, 0.00618, 0.00535, 0.00618)


def lifeas2017(mu=LIFEAS2017_MU_SOURCE, delta=0.0, gap: str = "s+-", *, symmetrize: bool = True) -> TightBindingModel:
    """Five-orbital 3D model of LiFeAs used in the simulations of Chi et al., Nat. Commun. 8, 15996 (2017).

    Source: the tables ``tin`` (in-plane) and ``tout`` (kz) of Five_band_model.mat and the matrix elements of
    func_five_band_model.m in github ShunChi100/LiFeAs_IET_matlab_code (S. Chi, 2014-2016), as copied into
    shared/reference/lifeas_chi2017_5orbital.json. The original publication of this hopping fit is not
    named there (possibly a five-orbital form of the LiFeAs model of Wang, Kreisel et al., PRB 88, 174516 (2013)).

    h(k) = H0(k) - mu (5 x 5 per spin, spin-degenerate), H0 from :func:`lifeas2017_h0`; tetragonal 1-Fe lattice,
    in-plane lattice constant 1 = Fe-Fe distance, x, y along Fe-Fe bonds, one FeAs layer per cell along z (kz in
    1/c; ``lattice_vectors`` is the identity, the source gives no c/a). **Energies in eV.** Real-space hoppings:
    :func:`lifeas2017_hoppings` (range up to (2, 2, 2), 77 displacements). Use 3D grids ``kgrid=(L, L, Lz)``.

    Orbital order (the source's; :data:`LIFEAS2017_ORBITALS`): d_3z2-r2, d_xz, d_yz, d_xy, d_x2-y2. The source does
    not label its orbitals: this assignment is inferred from the hoppings (orbital 1 couples to 5 via
    cos kx - cos ky and to 4 via sin kx sin ky; 2 and 3 are a C4 pair dispersing along kx and ky) and from the
    bands (the Gamma doublet at +71 meV is orbitals 2, 3; the hole pocket at M is 91 % orbital 4).

    Corrections to the source: the table breaks C4 in two entries (0.0137 vs 0.014 and 0.0079 vs 0.0078 eV for
    terms that C4 maps onto each other, :data:`LIFEAS2017_C4_FIXES`); ``symmetrize=True`` (default) replaces each
    pair by its mean, so that the bands are C4 symmetric to rounding (as printed they differ by up to 0.62 meV).

    Filling (electrons per Fe, both spins, T = 0): n = 6.022 at mu = 0 (the source's value, "n ~ 6", stoichiometric
    LiFeAs; per kz plane 5.91, 6.01, 6.15 at kz = 0, pi/2, pi); n = 6.000 at mu = :data:`LIFEAS2017_MU_N6`
    (-0.0102 eV). At mu = 0, kz = 0: two hole pockets at Gamma (d_xz/d_yz, kF = 0.21 and 0.72), an electron
    pocket at X and at Y, and a d_xy hole pocket at M = (pi, pi) (kF ~ 1.0); the inner Gamma pocket closes
    before kz = pi/2.

    Gaps (intra-orbital, singlet):

    - "s+-": Delta(k) = Delta cos kx cos ky (D_d = Delta / 4 at d = (+-1, +-1, 0)), the source's form. With the
      source's Delta = 0.014 eV (:data:`LIFEAS2017_DELTA0_SOURCE`) the BdG gap on the Fermi surface at kz = 0 is
      13.7 meV (inner Gamma), 10.6 (outer Gamma), 9.9-11.6 (X) and 6.7-8.6 meV (M): about 2.3 times the measured
      6 and 3 meV that Chi et al. quote. Delta = 6.14 meV gives 6.0, 4.65, 4.3-5.1 and 2.9-3.8 meV.
    - "s++": on-site Delta(k) = Delta. (The source's "s++" switch uses |Delta cos kx cos ky|, which is not a
      finite sum of hoppings; it is not offered.)
    - two gaps: ``gap="s+-"`` with ``delta=LIFEAS2017_DELTA_TWO_GAP`` (orbital-dependent amplitudes, d_xy reduced)
      gives mean gaps 6.0 meV on the inner Gamma pocket and 3.0 meV (2.6-3.3) on the M (d_xy) pocket,
      4.7 meV on the outer Gamma pocket and 3.9-5.0 meV on the electron pockets (kz = 0, mu = 0).

    With the s+- form the kz = pi electron pockets reach the nodal lines |kx|, |ky| = pi/2: their gap dips to a few
    per cent of Delta there (0.2 meV at Delta = 6.14 meV).

    Args:
        mu: chemical potential (eV); default 0 (the source's).
        delta: gap amplitude (eV): a scalar or a length-5 array of orbital amplitudes.
        gap: "s+-" or "s++".
        symmetrize: apply :data:`LIFEAS2017_C4_FIXES` (default); False gives the table as printed.

    Returns:
        TightBindingModel with n_orb = 5, dim = 3 (``mu`` and ``delta`` may be JAX tracers).

    Example:
        >>> import shibajax
        >>> m = shibajax.models.lifeas2017(delta=shibajax.models.LIFEAS2017_DELTA_TWO_GAP)
        >>> m.n_orb, m.dim, m.nambu_dim
        (5, 3, 20)
    """
    if gap not in LIFEAS2017_GAPS:
        raise ShapeError(f"unknown gap {gap!r} for lifeas2017; choose one of {sorted(LIFEAS2017_GAPS)}")
    check_model_parameters("lifeas2017", "eV", vectors=("delta",), mu=mu, delta=delta)
    if np.ndim(delta) not in (0, 1) or (np.ndim(delta) == 1 and np.shape(delta) != (5,)):
        raise ShapeError(f"delta must be a scalar or a length-5 array (one per orbital); got shape {np.shape(delta)}")
    hop = {d: jnp.asarray(t) for d, t in lifeas2017_hoppings(bool(symmetrize)).items()}
    hop[(0, 0, 0)] = hop[(0, 0, 0)] - mu * jnp.eye(5)
    dlt = jnp.asarray(delta)
    pairing = {d: dlt * w for d, w in LIFEAS2017_GAPS[gap].items()}
    return from_hoppings(hop, n_orb=5, pairing=pairing, lattice_vectors=np.eye(3), name=f"lifeas2017[{gap}]")
