"""Magnetic impurities: classical spins with one or more scattering channels.

A channel couples to a set of orbitals of the impurity's cell with

    V = K tau_z + J tau_0 (n . sigma)        (x) P_orbitals

in the Nambu basis of docs/conventions.md: K > 0 is a repulsive potential for electrons, and an electron
with spin along n has its energy raised by J. ``J`` here is the "J S / 2" of the literature, i.e. the
exchange H = J_sd S . s (s = sigma / 2) with a classical spin of length S gives J = J_sd S / 2; the Shiba
energy of one channel in the wide-band limit is E = Delta (1 - a^2 + b^2) / sqrt((1 - a^2 + b^2)^2 + 4 a^2),
a = pi N0 J, b = pi N0 K (Yu 1965, Shiba 1968, Rusinov 1969; Salkola, Balatsky & Schrieffer,
Phys. Rev. B 55, 12648 (1997)).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from shibajax import _precision  # noqa: F401
from shibajax._checks import check_real as check_real  # re-exported, with check_separations, for tmatrix
from shibajax._checks import check_separations as check_separations  # re-export: bound_states, tmatrix
from shibajax.errors import ImpurityError, ShapeError
from shibajax.models.tight_binding import TightBindingModel
from shibajax.nambu import SIGMA, SIGMA_0, TAU_0, TAU_Z


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _is_index(o) -> bool:
    """An integer-valued real scalar (not a bool, a string or a sequence)."""
    if isinstance(o, str | bytes | bool | np.bool_) or np.ndim(o) != 0:
        return False
    try:
        return bool(np.isfinite(o)) and float(o) == int(o)
    except (TypeError, ValueError, OverflowError):
        return False


def spin_direction(spin=None, theta=None, phi=None) -> jax.Array:
    """Unit vector n (3,) from a spin vector (any finite length > 0) or from polar angles theta, phi (radians).

    A concrete spin vector is normalised without overflow or underflow (it is scaled by its largest component
    first), so ``spin=(1e200, 1e200, 0)`` points along (1, 1, 0) / sqrt2 instead of collapsing to zero. Refused
    (:class:`~shibajax.errors.ImpurityError`): components or angles that are not finite real numbers (NaN, inf,
    complex, strings), and the zero vector, even with J = 0 (for a non-magnetic impurity keep any direction and
    set J = 0).
    """
    if spin is not None and (theta is not None or phi is not None):
        raise ImpurityError("give the spin either as a vector (spin=) or as angles (theta=, phi=), not both")
    if spin is None:
        for name, angle in (("theta", theta), ("phi", phi)):
            if angle is not None:
                check_real(f"spin angle {name}", angle, error=ImpurityError, hint=" (radians)")
        th = 0.0 if theta is None else theta
        ph = 0.0 if phi is None else phi
        return jnp.stack([jnp.sin(th) * jnp.cos(ph), jnp.sin(th) * jnp.sin(ph), jnp.cos(th) + 0.0 * ph])
    check_real("spin", spin, error=ImpurityError, max_ndim=None, hint=" (a 3-vector (sx, sy, sz))")  # tracers pass
    n = jnp.asarray(spin, dtype=jnp.float64)
    if n.shape != (3,):
        raise ShapeError(f"spin must be a 3-vector (sx, sy, sz); got shape {n.shape}")
    if not _concrete(n):
        return n / jnp.linalg.norm(n)
    host = np.asarray(n)
    largest = float(np.max(np.abs(host)))
    if not largest > 0.0:
        raise ImpurityError(
            f"spin vector {host.tolist()} has zero length: a classical spin needs a direction. "
            "For a non-magnetic impurity set J = 0 and keep any spin direction"
        )
    norm = jnp.linalg.norm(n)
    if not (np.isfinite(float(norm)) and float(norm) > 1e-150):  # |n|^2 overflowed or underflowed: scale first
        scaled = n / largest
        return scaled / jnp.linalg.norm(scaled)
    return n / norm


class Channel:
    """One scattering channel: potential K and exchange J on a set of orbitals (None: all orbitals).

    A JAX pytree: K and J are leaves (differentiable, vmappable), orbitals are static.
    """

    def __init__(self, K=0.0, J=0.0, orbitals: int | Sequence[int] | None = None):
        if orbitals is not None:
            orbitals = (orbitals,) if np.ndim(orbitals) == 0 else tuple(orbitals)
            if not orbitals:
                raise ImpurityError("orbitals = () of a channel is empty: give at least one orbital index (None: all)")
            for o in orbitals:
                if not _is_index(o):
                    raise ImpurityError(
                        f"orbital index {o!r} must be an integer (orbitals: an index or a list of them)"
                    )
            orbitals = tuple(int(o) for o in orbitals)
            if len(set(orbitals)) != len(orbitals):
                raise ImpurityError(f"orbitals {orbitals} of a channel repeat an index")
        for name, v in (("K", K), ("J", J)):
            check_real(f"channel {name}", v, error=ImpurityError, max_ndim=None, hint=" (energy units)")
        self.K = jnp.asarray(K, dtype=jnp.float64)
        self.J = jnp.asarray(J, dtype=jnp.float64)
        self.orbitals = orbitals
        for name, v in (("K", self.K), ("J", self.J)):
            if v.shape != ():
                raise ShapeError(f"channel {name} must be a scalar; got shape {v.shape}")

    def __repr__(self) -> str:
        return f"Channel(K={self.K}, J={self.J}, orbitals={self.orbitals})"


jax.tree_util.register_pytree_node(
    Channel,
    lambda c: ((c.K, c.J), c.orbitals),
    lambda orbitals, kj: _new_channel(kj[0], kj[1], orbitals),
)


def _new_channel(K, J, orbitals):
    c = object.__new__(Channel)
    c.K, c.J, c.orbitals = K, J, orbitals
    return c


class Impurity:
    """A classical spin at a lattice site with one or more scattering channels.

    Args:
        site: integer lattice coordinates of the impurity's cell, e.g. (0, 0).
        K: potential scattering (single-channel form; energy units).
        J: exchange, the "J S/2" of the literature (single-channel form; energy units).
        spin: direction of the classical spin (any finite nonzero 3-vector; normalised), default +z.
        theta, phi: polar and azimuthal angle of the spin (radians), instead of ``spin``.
        orbitals: orbitals of the single channel (default: all orbitals of the cell).
        channels: a sequence of :class:`Channel` (multi-channel form; then K, J, orbitals are not given).

    K, J, the spin and the angles must be finite real numbers (else :class:`~shibajax.errors.ImpurityError`
    naming the parameter); tracers (jit / vmap) are not checked. On a uniform ``kgrid`` the solvers refuse
    impurities farther apart along an axis than half the grid, ``|d_i| > L_i / 2``: on that grid's periodic
    lattice they would interact through the closer periodic image (:func:`check_separations`; a
    :class:`~shibajax.brillouin_zone.KMesh` has no periodic image and is not checked).

    Example:
        >>> import shibajax
        >>> imp = shibajax.Impurity(site=(0, 0), K=0.2, J=1.0, spin=(0, 0, 1))
        >>> two = shibajax.Impurity(site=(0, 0), channels=[shibajax.Channel(J=1.0, orbitals=0),
        ...                                                shibajax.Channel(K=0.3, J=0.5, orbitals=1)])
    """

    def __init__(self, site, K=None, J=None, spin=None, *, theta=None, phi=None, orbitals=None, channels=None):
        check_real("impurity site", site, error=ImpurityError, max_ndim=1, hint=" (integer lattice coordinates)")
        site_arr = np.asarray(site)
        if site_arr.ndim != 1 or not np.all(np.isfinite(site_arr)) or not np.all(np.equal(np.mod(site_arr, 1), 0)):
            raise ImpurityError(
                f"impurity site {site!r} is off the lattice: a site is a tuple of integer lattice coordinates "
                "(for a hollow or bridge position, build a model whose basis has an orbital there)"
            )
        self.site = tuple(int(v) for v in site_arr)
        if channels is not None:
            if K is not None or J is not None or orbitals is not None:
                raise ImpurityError("give either channels=[...] or the single-channel K, J, orbitals, not both")
            channels = tuple(channels)
            if not channels or not all(isinstance(c, Channel) for c in channels):
                raise ImpurityError("channels must be a non-empty sequence of shibajax.Channel")
            self.channels = channels
        else:
            self.channels = (Channel(0.0 if K is None else K, 0.0 if J is None else J, orbitals),)
        self.spin = spin_direction(spin, theta, phi)

    @classmethod
    def per_orbital(cls, site, K, J, spin=None, *, theta=None, phi=None, orbitals=None) -> Impurity:
        """One channel per orbital: K[i], J[i] act on orbital orbitals[i] (default 0, 1, ...)."""
        for name, value in (("K", K), ("J", J)):
            check_real(f"per-orbital {name}", value, error=ImpurityError, max_ndim=1, hint=" (one per orbital)")
        K = np.atleast_1d(K) if _concrete(K) else K
        J = np.atleast_1d(J) if _concrete(J) else J
        if len(K) != len(J):
            raise ShapeError(f"per-orbital K and J must have the same length; got {len(K)} and {len(J)}")
        orbitals = range(len(K)) if orbitals is None else orbitals
        if len(orbitals) != len(K):
            raise ShapeError(f"{len(K)} channels but {len(orbitals)} orbitals")
        chans = [Channel(K[i], J[i], o) for i, o in enumerate(orbitals)]
        return cls(site, spin=spin, theta=theta, phi=phi, channels=chans)

    def __repr__(self) -> str:
        return f"Impurity(site={self.site}, spin={np.asarray(self.spin).round(6).tolist()}, channels={self.channels})"


jax.tree_util.register_pytree_node(
    Impurity,
    lambda imp: ((imp.channels, imp.spin), imp.site),
    lambda site, leaves: _new_impurity(site, *leaves),
)


def _new_impurity(site, channels, spin):
    imp = object.__new__(Impurity)
    imp.site, imp.channels, imp.spin = site, tuple(channels), spin
    return imp


def _is_scatterer(obj) -> bool:
    """An Impurity, or an object with ``lattice_potential(model)`` (e.g. :class:`shibajax.adatoms.Adatom`)."""
    return isinstance(obj, Impurity) or callable(getattr(obj, "lattice_potential", None))


def as_impurity_list(impurities) -> list:
    """Accept one Impurity (or Adatom) or a sequence of them; reject anything else with a clear message."""
    if _is_scatterer(impurities):
        return [impurities]
    try:
        imps = list(impurities)
    except TypeError:
        imps = []
    if not imps or not all(_is_scatterer(i) for i in imps):
        raise ImpurityError(
            "impurities must be a shibajax.Impurity or shibajax.adatoms.Adatom, or a non-empty list of them"
        )
    return imps


def channel_potential(channel: Channel, spin: jax.Array, n_orb: int) -> jax.Array:
    """V of one channel in one cell, (4 n_orb, 4 n_orb): K tau_z (x) P (x) sigma_0 + J tau_0 (x) P (x) n.sigma."""
    orbitals = range(n_orb) if channel.orbitals is None else channel.orbitals
    for o in orbitals:
        if not 0 <= o < n_orb:
            raise ImpurityError(
                f"channel couples to orbital {o}, but the model has n_orb = {n_orb} (valid: 0 .. {n_orb - 1})"
            )
    proj = np.zeros((n_orb, n_orb))
    proj[list(orbitals), list(orbitals)] = 1.0
    n_sigma = jnp.einsum("i,iab->ab", spin.astype(jnp.complex128), jnp.asarray(SIGMA))
    pot = jnp.kron(jnp.asarray(TAU_Z), jnp.kron(proj, jnp.asarray(SIGMA_0))) * channel.K
    exch = jnp.kron(jnp.asarray(TAU_0), jnp.kron(proj, n_sigma)) * channel.J
    return pot + exch


def impurity_potential(impurities, model: TightBindingModel) -> tuple[np.ndarray, jax.Array]:
    """Sites and the block-diagonal impurity potential.

    Returns:
        sites: (n_imp, dim) int array of lattice coordinates.
        V: (n_imp * M, n_imp * M) complex128, M = 4 n_orb, block i acting on site i.
    """
    imps = as_impurity_list(impurities)
    if not all(isinstance(i, Impurity) for i in imps):
        return _cluster_potential(imps, model)
    sites = []
    for imp in imps:
        if len(imp.site) != model.dim:
            raise ImpurityError(
                f"impurity site {imp.site} has {len(imp.site)} coordinates; the lattice is {model.dim}D"
            )
        if imp.site in sites:
            raise ImpurityError(f"two impurities on site {imp.site}: put their couplings into channels of one Impurity")
        sites.append(imp.site)
    blocks = [sum(channel_potential(c, imp.spin, model.n_orb) for c in imp.channels) for imp in imps]
    return np.asarray(sites, dtype=np.int64), jax.scipy.linalg.block_diag(*blocks)


def _cluster_potential(scatterers, model: TightBindingModel) -> tuple[np.ndarray, jax.Array]:
    """Union of the sites of impurities and adatoms, with their potentials added where clusters overlap."""
    parts = []
    single_sites = set()
    for obj in scatterers:
        if isinstance(obj, Impurity):
            if len(obj.site) != model.dim:
                raise ImpurityError(
                    f"impurity site {obj.site} has {len(obj.site)} coordinates; the lattice is {model.dim}D"
                )
            if obj.site in single_sites:
                raise ImpurityError(
                    f"two impurities on site {obj.site}: put their couplings into channels of one Impurity"
                )
            single_sites.add(obj.site)
            block = sum(channel_potential(c, obj.spin, model.n_orb) for c in obj.channels)
            parts.append((np.asarray([obj.site], dtype=np.int64), block))
        else:
            parts.append(obj.lattice_potential(model))
    index: dict[tuple[int, ...], int] = {}
    for sites, _ in parts:
        for s in map(tuple, sites.tolist()):
            index.setdefault(s, len(index))
    m = model.nambu_dim
    total = jnp.zeros((len(index) * m, len(index) * m), jnp.complex128)
    for sites, v in parts:
        rows = np.concatenate([index[tuple(s)] * m + np.arange(m) for s in sites.tolist()])
        total = total.at[np.ix_(rows, rows)].add(v)
    return np.asarray(list(index), dtype=np.int64), total
