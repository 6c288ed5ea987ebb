"""Effective one-orbital (spinful) tight-binding model of the Nb(110) surface (energies in meV, lengths in pm).

Used for Shiba states of Mn adatoms and dimers on Nb(110), Beck et al., Nat. Commun. 12, 2040 (2021)
(reference values: ``shared/reference/paper_values.json``, entry ``"beck2021_mn_nb110"``).

Geometry. The bcc(110) surface is a centred-rectangular lattice with x along [001] and y along [1-10],
conventional cell a x sqrt2 a, a = 329.4 pm. Primitive vectors (rows of ``lattice_vectors``, in pm)

    a1 = (a/2,  sqrt2 a/2),      a2 = (a/2, -sqrt2 a/2),

so the site (n1, n2) sits at n1 a1 + n2 a2. Neighbour shells:

    1st (4, distance sqrt3 a/2 = 285.3 pm):  +-a1 = +-(1, 0),  +-a2 = +-(0, 1)      [1-11]-type bonds, hopping t1
    2nd (2, distance a = 329.4 pm):          +-(a1 + a2) = +-(1, 1), i.e. (+-a, 0)  [001] bonds,       hopping t2
    3rd (2, distance sqrt2 a = 465.8 pm):    +-(a1 - a2) = +-(1, -1), i.e. (0, +-sqrt2 a)  [1-10] bonds, hopping t3

With k in reduced coordinates (k1 = k . a1, k2 = k . a2; k1 + k2 = kx a, k1 - k2 = sqrt2 ky a) the band is

    eps(k) = -2 t1 (cos k1 + cos k2) - 2 t2 cos(k1 + k2) - 2 t3 cos(k1 - k2) - mu
           = -4 t1 cos(kx a/2) cos(ky a/sqrt2) - 2 t2 cos(kx a) - 2 t3 cos(sqrt2 ky a) - mu.

Rashba spin-orbit coupling on the nearest-neighbour bonds,

    H_R = i t_R sum_{r, d in NN} c+_r (d_hat x sigma)_z c_{r+d},   T_d += i t_R (d_x sigma_y - d_y sigma_x)
        = rashba_hopping(d_hat, 2 t_R),

with d_hat the Cartesian unit vector of the bond (the "t_R" of Beck et al., 7.5 meV). Summed over +-d this
adds g(k) . sigma with

    g(k) = 2 t_R sum_{d = a1, a2} sin(k . d) (d_hat_y, -d_hat_x)
         = 2 t_R ( sqrt(2/3) (sin k1 - sin k2),  -(sin k1 + sin k2) / sqrt3 ),

so the two spin-split bands are eps(k) +- |g(k)|. Pairing: on-site s-wave Delta = 1.50 meV (Beck et al.).

Parameters and why (defaults ``t1 = 300``, ``t2 = 100``, ``t3 = 50``, ``mu = NB110_MU = 200`` meV):

- What is fitted is N(E_F) = 1.4 states/eV/atom for both spins (0.70 per spin), the normal-state DOS of Nb at
  E_F. Beck et al. project a 9-band (5s, 5p, 4d) Slater-Koster bulk Nb model onto the states within
  E_F +- 10 Delta; for Shiba physics in that window what matters is N(E_F), the Fermi-surface shape and v_F,
  and an effective single band with the right N(E_F) is the minimal stand-in for it.
- t1 > t2 > t3 > 0 fall off with bond length (285, 329, 466 pm); t2 != t3 makes the band, and the Fermi
  pocket, anisotropic between [001] and [1-10], the two inequivalent in-plane directions of (110).
- The band width is W = 2.4 eV (-1.7 to +0.7 eV about E_F): a d-like band of a few eV. (The bulk Nb d band
  is 5-6 eV wide, but a single 2D band of that width has N ~ 1/W ~ 0.2/eV/spin: reaching 0.7/eV/spin needs a narrower
  band and E_F in its upper part, here 100 meV below the van Hove energy of the saddle points (+-pi, 0)
  (eps = +100 meV at mu = 200). Over E_F +- 10 Delta = +-15 meV the DOS changes by about +-4 %.)
- mu = 200 meV puts E_F 1.7 eV above the band bottom (filling 1.04 electrons per cell, both spins) with
  N(E_F) = 0.695 /eV/spin (Lorentzian eta = 5 meV on a 600 x 600 grid; ``tests/test_nb110.py``).
  (With t_R = 7.5 meV the DOS at E_F changes only at order (t_R / W)^2.)
  The Fermi surface is one closed electron pocket around Gamma (spin-split by the Rashba term), with
  k_F = 1.055 pi/a = 0.0101 /pm along [001] (zone boundary 1.5 pi/a) and 0.826 pi/a = 0.0079 /pm along [1-10]
  (zone boundary sqrt2 pi/a), for t_R = 0; in reduced coordinates k1 = k2 = 1.6567 and k1 = -k2 = 1.8353.

What it can and cannot represent. This is an effective model fitted to N(E_F), **not** a Slater-Koster model
of Nb: it has one orbital per site, so it gives the scale of the Shiba energies (through pi N0 J), the
anisotropic spatial extent and the SOC-induced splitting of dimer states, but not the d-orbital character of
the multiple Shiba pairs (alpha, beta, gamma, delta of Beck et al.), the multi-sheet bulk Fermi surface of Nb,
or the 3D (bulk) propagation. Mn sits in the hollow site between four Nb atoms; that needs continuum (off-site)
impurity positions and is out of scope: an :class:`~shibajax.Impurity` sits on a Nb site here. The dimer
constants below give the separations of the named dimers, which are lattice vectors.

Example:
    >>> import shibajax
    >>> m = shibajax.models.nb110()
    >>> m.n_orb, m.dim, len(m.hop_displacements)
    (1, 2, 9)
    >>> round(float(NB110_NN_DISTANCE), 1)
    285.3
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from shibajax.models.builtin import rashba_hopping
from shibajax.models.tight_binding import TightBindingModel, from_hoppings
from shibajax.nambu import SIGMA_0

#: Cubic lattice constant of Nb (pm), as used by Beck et al.
NB110_A = 329.4
#: Primitive vectors of the (110) surface (pm), rows a1 = (a/2, sqrt2 a/2), a2 = (a/2, -sqrt2 a/2).
NB110_LATTICE_VECTORS = (
    (NB110_A / 2.0, math.sqrt(2.0) * NB110_A / 2.0),
    (NB110_A / 2.0, -math.sqrt(2.0) * NB110_A / 2.0),
)
#: Nearest-neighbour distance sqrt3 a/2 (pm).
NB110_NN_DISTANCE = math.sqrt(3.0) * NB110_A / 2.0

#: Default hoppings (meV): t1 nearest neighbours (1, 0), (0, 1); t2 along [001] (1, 1); t3 along [1-10] (1, -1).
NB110_T1 = 300.0
NB110_T2 = 100.0
NB110_T3 = 50.0
#: Default chemical potential (meV): N(E_F) = 0.70 /eV per spin with the default hoppings.
NB110_MU = 200.0
#: Target normal-state DOS at E_F, per eV per atom for both spins (per spin: half).
NB110_DOS_EF_PER_EV = 1.4
#: s-wave gap (meV) and Rashba t_R (meV) of Beck et al.
NB110_DELTA = 1.5
NB110_T_RASHBA = 7.5

#: Named dimer separations in lattice coordinates (n1, n2) (all are lattice vectors).
NB110_DIMERS = {
    "sqrt2a-[1-10]": (1, -1),
    "sqrt3a/2-[1-11]": (1, 0),
    "2a-[001]": (2, 2),
}
#: The same separations in Cartesian pm (x along [001], y along [1-10]).
NB110_DIMERS_PM = {
    "sqrt2a-[1-10]": (0.0, math.sqrt(2.0) * NB110_A),
    "sqrt3a/2-[1-11]": (NB110_A / 2.0, math.sqrt(2.0) * NB110_A / 2.0),
    "2a-[001]": (2.0 * NB110_A, 0.0),
}

_NN = ((1, 0), (0, 1))
_SHELLS = {(1, 0): "t1", (0, 1): "t1", (1, 1): "t2", (1, -1): "t3"}


def nb110_hoppings(
    mu: float | None = None,
    t_rashba: float = NB110_T_RASHBA,
    t1: float = NB110_T1,
    t2: float = NB110_T2,
    t3: float = NB110_T3,
) -> dict:
    """Spinful hoppings {d: T_d} (meV, 2 x 2) of :func:`nb110`, d in lattice coordinates."""
    mu = NB110_MU if mu is None else mu
    lv = np.asarray(NB110_LATTICE_VECTORS)
    s0 = jnp.asarray(SIGMA_0, dtype=jnp.complex128)
    t = {"t1": t1, "t2": t2, "t3": t3}
    hop = {(0, 0): -mu * s0}
    for d, shell in _SHELLS.items():
        for sign in (1, -1):
            dd = (sign * d[0], sign * d[1])
            term = -t[shell] * s0
            if d in _NN:
                r = np.asarray(dd, dtype=float) @ lv
                term = term + rashba_hopping(r / np.linalg.norm(r), 2.0 * t_rashba)
            hop[dd] = term
    return hop


def nb110(
    mu: float | None = None,
    delta: float = NB110_DELTA,
    t_rashba: float = NB110_T_RASHBA,
    t1: float = NB110_T1,
    t2: float = NB110_T2,
    t3: float = NB110_T3,
) -> TightBindingModel:
    """Effective one-orbital Nb(110) surface model (meV, pm); see the module docstring for the fit.

    Args:
        mu: chemical potential (meV); default ``NB110_MU`` = 200 (N(E_F) = 0.70 /eV/spin).
        delta: on-site s-wave gap (meV), 1.5 for Nb.
        t_rashba: nearest-neighbour Rashba t_R (meV): T_d += i t_R (d_x sigma_y - d_y sigma_x).
        t1, t2, t3: hoppings (meV) to the 1st (sqrt3 a/2), 2nd (a, [001]) and 3rd (sqrt2 a, [1-10]) neighbours.

    Returns:
        TightBindingModel with n_orb = 1, lattice_vectors in pm.

    Example:
        >>> import shibajax
        >>> e = shibajax.band_structure(nb110(t_rashba=0.0), [[0.0, 0.0]])
        >>> np.asarray(e).round(6).tolist()
        [[-1700.0, -1700.0]]
    """
    hop = nb110_hoppings(mu=mu, t_rashba=t_rashba, t1=t1, t2=t2, t3=t3)
    return from_hoppings(hop, n_orb=1, delta=delta, lattice_vectors=NB110_LATTICE_VECTORS, name="nb110")
