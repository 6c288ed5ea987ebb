"""Adatoms at continuum positions with orbital-shaped scattering channels (d_xy, d_xz, d_yz, d_z2, d_x2-y2, s).

A channel mu of an adatom at Cartesian position r_a (height h above the surface plane z = 0) is the normalised
combination of substrate orbitals that the adatom's orbital chi_mu overlaps,

    d_mu = sum_R f_mu(R) c_R,        f_mu(R) = N_mu  Y_mu(R - r_a)  exp(-|R - r_a|^2 / (2 lambda^2)),

with R - r_a a 3D vector (z component -h), Y_mu the real quadratic form of the d orbital (x y, x z, y z,
(3 z^2 - r^2) / (2 sqrt3), (x^2 - y^2) / 2) or 1 for s, lambda the radial extent and N_mu such that
sum_R f_mu(R)^2 = 1. This is exactly the overlap <chi_mu | w_R> of a Gaussian-type orbital
chi_mu(r) = Y_mu(r) exp(-r^2 / 2 s^2) with s-like substrate Wannier functions w_R(r) = exp(-|r - R|^2 / 2 s_w^2)
(Gaussian product theorem; lambda^2 = s^2 + s_w^2 and the traceless Y_mu picks up no constant), i.e. the
plane-wave (k + G) form factor F_mu(k) = sum_R f_mu(R) e^{-i k.R} of Beck et al., Nat. Commun. 12, 2040 (2021) and
Choi et al., Nat. Commun. 8, 15175 (2017), summed in real space, where it converges after a few shells.

The channel's potential (docs/conventions.md) acts on the sites it touches,

    V = sum_mu |d_mu> [K_mu tau_z sigma_0 + J_mu tau_0 (n . sigma)] <d_mu|,

a non-local potential on a small cluster of sites; the T-matrix, bound-state search and LDOS treat it like any
other impurity potential (its rank is 4 per channel and orbital, so the search space stays small). With orbital
shapes the bound states inherit the symmetry of their channel: under the mirrors of the adsorption site a
d_xy state is odd in x and in y, a d_xz state odd in x, a d_yz state odd in y.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from shibajax import _precision  # noqa: F401
from shibajax._checks import check_real
from shibajax.errors import ImpurityError
from shibajax.impurities import Channel, channel_potential, spin_direction
from shibajax.models.tight_binding import TightBindingModel

#: Names of the orbital shapes, and the symmetric 3x3 matrix M of the quadratic form Y(r) = r^T M r.
ORBITAL_SHAPES = ("s", "dxy", "dxz", "dyz", "dz2", "dx2-y2")
_S3 = math.sqrt(3.0)
_FORMS = {
    "dxy": np.array([[0, 0.5, 0], [0.5, 0, 0], [0, 0, 0]]),
    "dxz": np.array([[0, 0, 0.5], [0, 0, 0], [0.5, 0, 0]]),
    "dyz": np.array([[0, 0, 0], [0, 0, 0.5], [0, 0.5, 0]]),
    "dz2": np.diag([-1.0, -1.0, 2.0]) / (2.0 * _S3),
    "dx2-y2": np.diag([0.5, -0.5, 0.0]),
}
D_ORBITALS = ("dxy", "dxz", "dyz", "dz2", "dx2-y2")
#: Default cut-off: sites with a Gaussian factor below this are left out of a channel (relative to 1 at the adatom);
#: :class:`Adatom` takes its own (``cutoff=``).
GAUSSIAN_CUTOFF = 1e-10
#: A channel whose unnormalised overlap with all sites is below this is decoupled: an error, not a zero.
MIN_OVERLAP = 1e-12


def shape_function(shape: str, displacement: np.ndarray) -> np.ndarray:
    """Angular factor Y_shape(d) of displacements d (..., 3) (Cartesian, length units)."""
    if shape == "s":
        return np.ones(displacement.shape[:-1])
    if shape not in _FORMS:
        raise ImpurityError(f"unknown orbital shape {shape!r}; choose one of {ORBITAL_SHAPES}")
    return np.einsum("...i,ij,...j->...", displacement, _FORMS[shape], displacement)


class OrbitalChannel:
    """One scattering channel of an :class:`Adatom`: an orbital shape with potential K and exchange J.

    Args:
        shape: one of ``ORBITAL_SHAPES``.
        K: potential scattering (energy units; > 0 repulsive for electrons, docs/conventions.md).
        J: exchange (energy units; sign convention of docs/conventions.md).
        orbitals: substrate orbitals it couples to (default all).
    """

    def __init__(self, shape: str, K=0.0, J=0.0, orbitals: int | Sequence[int] | None = None):
        if shape not in ORBITAL_SHAPES:
            raise ImpurityError(f"unknown orbital shape {shape!r}; choose one of {ORBITAL_SHAPES}")
        self.shape = shape
        self.channel = Channel(K=K, J=J, orbitals=orbitals)

    @property
    def K(self):
        return self.channel.K

    @property
    def J(self):
        return self.channel.J

    def __repr__(self) -> str:
        return f"OrbitalChannel({self.shape!r}, K={self.K}, J={self.J})"


jax.tree_util.register_pytree_node(
    OrbitalChannel,
    lambda c: ((c.channel,), c.shape),
    lambda shape, leaves: _new_orbital_channel(shape, leaves[0]),
)


def _new_orbital_channel(shape, channel):
    out = object.__new__(OrbitalChannel)
    out.shape, out.channel = shape, channel
    return out


class Adatom:
    """A magnetic adatom at a continuum position with orbital-shaped channels.

    Args:
        position: Cartesian (x, y) in the model's length units (e.g. pm for :func:`shibajax.models.nb110`).
        height: height above the surface atoms' plane (length units, >= 0).
        extent: radial extent lambda of the overlap (length units, > 0).
        channels: list of :class:`OrbitalChannel`.
        spin / theta, phi: classical spin direction (as for :class:`shibajax.Impurity`).
        cutoff: sites whose Gaussian factor exp(-|R - r_a|^2 / 2 lambda^2) is below ``cutoff`` are left out of
            the channels, i.e. the cluster holds the sites within sqrt(2 lambda^2 ln(1 / cutoff) - h^2) of the
            adatom; 0 < cutoff < 1, default ``GAUSSIAN_CUTOFF`` = 1e-10. A larger cut-off gives a smaller
            cluster (cheaper, and it fits a smaller k-grid) at the price of the overlap's tail.

    Example:
        >>> import shibajax
        >>> from shibajax.adatoms import Adatom, OrbitalChannel
        >>> m = shibajax.models.square(mu=-1.0, delta=0.3)
        >>> mn = Adatom((0.5, 0.5), height=0.5, extent=0.6, channels=[OrbitalChannel("dxy", J=2.0)])
        >>> sites, v = mn.lattice_potential(m)
        >>> v.shape == (4 * len(sites), 4 * len(sites))
        True
    """

    def __init__(self, position, *, height, extent, channels, spin=None, theta=None, phi=None, cutoff=GAUSSIAN_CUTOFF):
        check_real("adatom position", position, error=ImpurityError, max_ndim=1, hint=" (Cartesian (x, y))")
        check_real("adatom height", height, error=ImpurityError, hint=" (length units)")
        check_real("adatom extent", extent, error=ImpurityError, hint=" (length units)")
        pos = np.asarray(position, dtype=np.float64)
        if pos.ndim != 1 or not np.all(np.isfinite(pos)):
            raise ImpurityError(f"adatom position {position!r} must be a finite Cartesian vector")
        if not (np.isfinite(height) and height >= 0):
            raise ImpurityError(f"adatom height {height!r} must be >= 0 (length units)")
        if not (np.isfinite(extent) and extent > 0):
            raise ImpurityError(f"adatom extent {extent!r} must be > 0 (length units)")
        check_real("adatom cutoff", cutoff, error=ImpurityError, hint=" between 0 and 1")
        if not 0.0 < float(cutoff) < 1.0:
            raise ImpurityError(
                f"adatom cutoff = {cutoff!r} must lie between 0 and 1 (exclusive): it is the smallest Gaussian factor "
                f"exp(-|R - r_a|^2 / 2 lambda^2) of a site kept in the channels (default {GAUSSIAN_CUTOFF:g})"
            )
        channels = list(channels)
        if not channels or not all(isinstance(c, OrbitalChannel) for c in channels):
            raise ImpurityError("an Adatom needs a non-empty list of OrbitalChannel")
        self.position = tuple(float(x) for x in pos)
        self.height, self.extent = float(height), float(extent)
        self.cutoff = float(cutoff)
        self.channels = tuple(channels)
        self.spin = spin_direction(spin, theta, phi)

    def __repr__(self) -> str:
        shapes = ", ".join(c.shape for c in self.channels)
        return f"Adatom(position={self.position}, height={self.height}, channels=[{shapes}])"

    def form_factors(self, model: TightBindingModel) -> tuple[np.ndarray, np.ndarray]:
        """Sites touched and the normalised overlaps: sites (n_s, dim) int, f (n_channels, n_s) float."""
        return _form_factors(self, model)

    def lattice_potential(self, model: TightBindingModel) -> tuple[np.ndarray, jax.Array]:
        """Sites (n_s, dim) and the potential on them, (n_s M, n_s M) complex128, M = 4 n_orb."""
        sites, f = _form_factors(self, model)
        v = 0.0
        for c, fc in zip(self.channels, f, strict=True):
            block = channel_potential(c.channel, self.spin, model.n_orb)
            v = v + jnp.kron(jnp.asarray(np.outer(fc, fc)), block)
        return sites, v


jax.tree_util.register_pytree_node(
    Adatom,
    lambda a: ((a.channels, a.spin), (a.position, a.height, a.extent, a.cutoff)),
    lambda aux, leaves: _new_adatom(aux, *leaves),
)


def _new_adatom(aux, channels, spin):
    out = object.__new__(Adatom)
    out.position, out.height, out.extent, out.cutoff = aux
    out.channels, out.spin = tuple(channels), spin
    return out


def cartesian(model: TightBindingModel, sites) -> np.ndarray:
    """Cartesian positions (n, dim) of integer lattice sites (n, dim)."""
    return np.asarray(sites, dtype=np.float64) @ np.asarray(model.lattice_vectors, dtype=np.float64)


def sites_near(model: TightBindingModel, centre, radius: float) -> np.ndarray:
    """All lattice sites within ``radius`` (length units) of a Cartesian point, (n, dim) int, sorted by distance."""
    lat = np.asarray(model.lattice_vectors, dtype=np.float64)
    centre = np.asarray(centre, dtype=np.float64)
    reduced = np.linalg.solve(lat.T, centre)
    # the reduced coordinates of a ball of radius r span at most r * |row of lat^-T| around the centre
    span = np.ceil(radius * np.linalg.norm(np.linalg.inv(lat), axis=0)).astype(int) + 1
    axes = [np.arange(math.floor(c) - s, math.floor(c) + s + 2) for c, s in zip(reduced, span, strict=True)]
    cand = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))
    dist = np.linalg.norm(cartesian(model, cand) - centre, axis=1)
    keep = dist <= radius
    order = np.argsort(dist[keep], kind="stable")
    return cand[keep][order].astype(np.int64)


def _form_factors(adatom: Adatom, model: TightBindingModel) -> tuple[np.ndarray, np.ndarray]:
    if model.dim != 2:
        raise ImpurityError("adatoms with orbital-shaped channels need a 2D (surface) model")
    if len(adatom.position) != 2:
        raise ImpurityError(f"adatom position {adatom.position} must be (x, y) for a 2D model")
    lam = adatom.extent
    radius_sq = max(0.0, 2.0 * lam**2 * math.log(1.0 / adatom.cutoff) - adatom.height**2)
    sites = sites_near(model, adatom.position, math.sqrt(radius_sq))
    if sites.shape[0] == 0:
        raise ImpurityError(
            f"adatom at height {adatom.height} with extent {lam} overlaps no substrate site above the cutoff "
            f"{adatom.cutoff:g}: raise the extent (or lower the cutoff)"
        )
    d2 = cartesian(model, sites) - np.asarray(adatom.position)
    d = np.concatenate([d2, np.full((d2.shape[0], 1), -adatom.height)], axis=1)
    gauss = np.exp(-np.sum(d**2, axis=1) / (2.0 * lam**2))
    f = np.stack([shape_function(c.shape, d) * gauss for c in adatom.channels])
    norms = np.linalg.norm(f, axis=1)
    for c, n in zip(adatom.channels, norms, strict=True):
        if n < MIN_OVERLAP * lam**2:
            raise ImpurityError(
                f"channel {c.shape} of the adatom at {adatom.position} overlaps no substrate orbital (the sites "
                "lie on its nodes): it decouples; drop it or move the adatom"
            )
    return sites, f / norms[:, None]
