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
or the 3D (bulk) propagation. The d-orbital character enters through the adatom instead: Mn sits in the hollow
site between four Nb atoms (``NB110_HOLLOW`` = (a/2, 0), two Nb at a/2 along x and two at sqrt2 a/2 along y)
and couples through five d-shaped channels (:func:`mn_adatom`, :mod:`shibajax.adatoms`), whose Shiba states
carry the nodal patterns of their orbitals. The dimer constants below give the separations of the named dimers,
which are lattice vectors, so both adatoms of a dimer sit in equivalent hollow sites (:func:`mn_dimer`).

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
from shibajax.models.tight_binding import TightBindingModel, check_model_parameters, from_hoppings
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
    check_model_parameters("nb110", "meV", optional=("mu",), mu=mu, t_rashba=t_rashba, t1=t1, t2=t2, t3=t3)
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
    check_model_parameters("nb110", "meV", delta=delta)
    hop = nb110_hoppings(mu=mu, t_rashba=t_rashba, t1=t1, t2=t2, t3=t3)
    return from_hoppings(hop, n_orb=1, delta=delta, lattice_vectors=NB110_LATTICE_VECTORS, name="nb110")


#: The hollow (long-bridge) adsorption site of Mn on Nb(110), Cartesian pm: (a1 + a2) / 2 = (a/2, 0).
NB110_HOLLOW = (NB110_A / 2.0, 0.0)
#: Height of Mn above the Nb surface plane (pm): a Mn-Nb bond of about 270 pm to the Nb at a/2.
MN_HEIGHT = 210.0
#: Radial extent lambda of the Mn d - Nb overlap (pm), a little over half the nearest Mn-Nb distance.
MN_EXTENT = 150.0
#: Exchange J (meV) of the five d channels of the default Mn adatom. Illustrative values chosen so that all five
#: Shiba pairs lie inside the gap and apart (Beck et al. fitted theirs to the measured spectrum; their table is
#: not in shared/reference). The channels' pi N0 J are of order one (N0 = 0.7 /eV per spin).
MN_EXCHANGE = {"dz2": 620.0, "dx2-y2": 540.0, "dxy": 700.0, "dxz": 460.0, "dyz": 400.0}
#: Potential scattering K (meV) of the default Mn channels: zero. The electron (u^2) and hole (v^2) maps still differ:
#: the exchange alone separates u and v (the band is not particle-hole symmetric, the channels are non-local); with
#: these defaults the summed u^2 and v^2 maps of a state differ by up to 2.6x (Delta = 20 meV, 48 x 48 grid,
#: notebooks/05_mn_nb110.ipynb). K != 0 changes that asymmetry further.
MN_POTENTIAL = {"dz2": 0.0, "dx2-y2": 0.0, "dxy": 0.0, "dxz": 0.0, "dyz": 0.0}


def mn_adatom(
    position=NB110_HOLLOW,
    *,
    spin=(0.0, 0.0, 1.0),
    exchange: dict | None = None,
    potential: dict | None = None,
    height: float = MN_HEIGHT,
    extent: float = MN_EXTENT,
    cutoff: float | None = None,
):
    """A Mn-like adatom on Nb(110) with five d-shaped channels (meV, pm).

    Args:
        position: Cartesian (x, y) in pm; default the hollow site ``NB110_HOLLOW``.
        spin: classical spin direction (default out of plane, +z).
        exchange: J per channel {shape: meV}; default ``MN_EXCHANGE``. Shapes left out are not coupled.
        potential: K per channel {shape: meV}; default ``MN_POTENTIAL``.
        height, extent: pm (see :class:`shibajax.adatoms.Adatom`).
        cutoff: smallest Gaussian factor of a site kept in the channels (:class:`shibajax.adatoms.Adatom`);
            default ``shibajax.adatoms.GAUSSIAN_CUTOFF``.

    Returns:
        :class:`shibajax.adatoms.Adatom`.
    """
    from shibajax.adatoms import GAUSSIAN_CUTOFF, Adatom, OrbitalChannel

    exchange = dict(MN_EXCHANGE if exchange is None else exchange)
    potential = dict(MN_POTENTIAL if potential is None else potential)
    channels = [OrbitalChannel(shape, K=potential.get(shape, 0.0), J=j) for shape, j in exchange.items()]
    cutoff = GAUSSIAN_CUTOFF if cutoff is None else cutoff
    return Adatom(position, height=height, extent=extent, channels=channels, spin=spin, cutoff=cutoff)


def mn_dimer(name: str, order: str = "AFM", spin=(0.0, 0.0, 1.0), **kwargs) -> list:
    """Two Mn adatoms in hollow sites separated by a named dimer vector (``NB110_DIMERS_PM``).

    Args:
        name: "sqrt2a-[1-10]", "sqrt3a/2-[1-11]" or "2a-[001]".
        order: "FM" (parallel spins) or "AFM" (antiparallel).
        spin: direction of the first adatom's spin.
        **kwargs: passed to :func:`mn_adatom`.
    """
    if name not in NB110_DIMERS_PM:
        raise ValueError(f"unknown dimer {name!r}; choose one of {sorted(NB110_DIMERS_PM)}")
    if order not in ("FM", "AFM"):
        raise ValueError(f"order must be 'FM' or 'AFM'; got {order!r}")
    first = np.asarray(NB110_HOLLOW)
    second = first + np.asarray(NB110_DIMERS_PM[name])
    spin = np.asarray(spin, dtype=float)
    return [mn_adatom(first, spin=spin, **kwargs), mn_adatom(second, spin=spin if order == "FM" else -spin, **kwargs)]
