"""Normal-state and BdG band structure: the "model -> Brillouin zone" step of the pipeline.

k-points are in reduced coordinates (radians), k_i = k_cart . a_i, so that k . d = sum_i k_i d_i for integer d
(docs/conventions.md). With the lattice vectors a_i as the rows of A, the reciprocal vectors are the rows of
B = 2 pi (A^-1)^T and a reduced k maps to the Cartesian k_cart = A^-1 k (as a column), i.e. ``k @ B / (2 pi)``
for rows. Path lengths and Fermi-surface plots use Cartesian k, so |k| is physical (inverse lattice units).

Brillouin-zone sums (density of states, filling) run on Gamma-centred Monkhorst-Pack grids, chunk by chunk with
``lax.scan`` like the rest of the library, so memory is bounded by the chunk size whatever the grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from shibajax import (
    _linalg,
    _precision,  # noqa: F401
)
from shibajax.brillouin_zone import chunked_kpoints, default_chunk_size, n_points, normalisation, validate_kgrid
from shibajax.errors import ShapeError
from shibajax.greens_function import validate_eta
from shibajax.models.tight_binding import TightBindingModel, bdg_hamiltonian, electron_hamiltonian

#: Broadening kernels of :func:`normal_state_dos`.
DOS_KINDS = ("lorentzian", "gaussian")

#: Eigenvalues with |E| below this (relative to the band scale) count as half-filled in :func:`filling`.
FILLING_TIE_RTOL = 1e-12


class BandPath(NamedTuple):
    """A piecewise-straight path through the Brillouin zone.

    Attributes:
        kpoints: (n_k, dim) reduced coordinates (radians).
        distance: (n_k,) cumulative Cartesian path length (inverse lattice units), starting at 0.
        tick_positions: (n_points,) distance of each corner point.
        tick_labels: the corner labels, e.g. ("Gamma", "X", "M", "Gamma").
    """

    kpoints: np.ndarray
    distance: np.ndarray
    tick_positions: np.ndarray
    tick_labels: tuple[str, ...]


def reciprocal_vectors(model: TightBindingModel) -> np.ndarray:
    """Reciprocal lattice vectors as rows, B = 2 pi (A^-1)^T, so that a_i . b_j = 2 pi delta_ij.

    Example:
        >>> import shibajax
        >>> reciprocal_vectors(shibajax.models.square()) / np.pi
        array([[2., 0.],
               [0., 2.]])
    """
    a = np.asarray(model.lattice_vectors, dtype=float)
    return 2.0 * np.pi * np.linalg.inv(a).T


def reduced_to_cartesian(model: TightBindingModel, k) -> np.ndarray:
    """Cartesian k (..., dim) of reduced k (..., dim): k_cart = sum_i (k_i / 2 pi) b_i.

    Example:
        >>> import shibajax
        >>> tri = shibajax.models.triangular()
        >>> k_cart = reduced_to_cartesian(tri, [4 * np.pi / 3, 2 * np.pi / 3])  # the K point
        >>> np.round(3 * k_cart / np.pi, 9) + 0.0  # (4 pi / 3, 0)
        array([4., 0.])
    """
    return np.asarray(k, dtype=float) @ reciprocal_vectors(model) / (2.0 * np.pi)


def _is_square(model: TightBindingModel) -> bool:
    if model.dim != 2:
        return False
    a = np.asarray(model.lattice_vectors, dtype=float)
    gram = a @ a.T
    return bool(np.allclose(gram, gram[0, 0] * np.eye(2), rtol=1e-10, atol=1e-12 * gram[0, 0]))


#: Default path of a square lattice (reduced coordinates, valid for any lattice constant and orientation).
SQUARE_PATH = (("Gamma", (0.0, 0.0)), ("X", (np.pi, 0.0)), ("M", (np.pi, np.pi)), ("Gamma", (0.0, 0.0)))


def high_symmetry_path(
    model: TightBindingModel,
    points: Mapping[str, Sequence[float]] | Sequence[tuple[str, Sequence[float]]] | None = None,
    n_per_segment: int = 100,
) -> BandPath:
    """k-points along straight segments between labelled points, with the Cartesian path length.

    Args:
        model: the model (its ``lattice_vectors`` fix the Cartesian metric).
        points: the corners in order, as {label: k_reduced} (a dict cannot repeat a label, so to return to a
            point use the sequence form) or a sequence of (label, k_reduced). k in reduced coordinates (radians,
            k_i = k_cart . a_i). Default for a 2D square lattice: Gamma-X-M-Gamma; otherwise required.
        n_per_segment: k-points per segment (the end point of the last segment is added once).

    Returns:
        BandPath(kpoints (n_seg * n_per_segment + 1, dim), distance, tick_positions, tick_labels).

    Raises:
        ShapeError: no default path for this lattice, fewer than two points, wrong dimension, or
            n_per_segment < 1.

    Example:
        >>> import shibajax
        >>> path = high_symmetry_path(shibajax.models.square(), n_per_segment=10)
        >>> path.kpoints.shape, path.tick_labels
        ((31, 2), ('Gamma', 'X', 'M', 'Gamma'))
        >>> np.round(path.tick_positions / np.pi, 6)
        array([0.      , 1.      , 2.      , 3.414214])
    """
    if points is None:
        if not _is_square(model):
            raise ShapeError(
                f"no default path for model {model.name!r} (dim = {model.dim}, lattice_vectors = "
                f"{model.lattice_vectors}); pass points, e.g. [('Gamma', (0, 0)), ('X', (np.pi, 0))] "
                "in reduced coordinates k_i = k_cart . a_i"
            )
        points = SQUARE_PATH
    items = list(points.items()) if isinstance(points, Mapping) else [tuple(p) for p in points]
    if len(items) < 2 or any(len(p) != 2 for p in items):
        raise ShapeError(f"points must give at least two (label, k) corners; got {points!r}")
    n_per_segment = int(n_per_segment)
    if n_per_segment < 1:
        raise ShapeError(f"n_per_segment = {n_per_segment} must be a positive integer")
    labels = tuple(str(label) for label, _ in items)
    corners = np.asarray([np.asarray(k, dtype=float) for _, k in items])
    if corners.ndim != 2 or corners.shape[1] != model.dim:
        raise ShapeError(f"each k must have {model.dim} reduced coordinates; got shape {corners.shape[1:]}")

    t = np.arange(n_per_segment) / n_per_segment
    segments = [a + t[:, None] * (b - a) for a, b in zip(corners[:-1], corners[1:], strict=True)]
    kpoints = np.concatenate([*segments, corners[-1:]])
    steps = np.linalg.norm(np.diff(reduced_to_cartesian(model, kpoints), axis=0), axis=-1)
    distance = np.concatenate([[0.0], np.cumsum(steps)])
    ticks = distance[::n_per_segment].copy()
    return BandPath(kpoints, distance, ticks, labels)


def _hamiltonian_fn(model, bdg: bool):
    return partial(bdg_hamiltonian, model) if bdg else partial(electron_hamiltonian, model)


@partial(jax.jit, static_argnames=("bdg",))
def _band_energies(model, kpoints, bdg):
    return _linalg.eigvalsh(jax.vmap(_hamiltonian_fn(model, bdg))(kpoints))


def band_structure(model: TightBindingModel, kpoints, bdg: bool = False) -> jax.Array:
    """Band energies at k-points: (n_k, 2 n_orb) for h(k), or (n_k, 4 n_orb) for H_BdG(k) with ``bdg=True``.

    Args:
        model: the model.
        kpoints: (n_k, dim) reduced coordinates, or a :class:`BandPath`.
        bdg: diagonalise the BdG matrix instead of the electron-sector h(k).

    Returns:
        Ascending eigenvalues per k (energy units), float64.

    Example:
        >>> import shibajax
        >>> e = band_structure(shibajax.models.square(t=1.0, mu=0.5), [[0.0, 0.0], [np.pi, np.pi]])
        >>> np.asarray(e)
        array([[-4.5, -4.5],
               [ 3.5,  3.5]])
    """
    if isinstance(kpoints, BandPath):
        kpoints = kpoints.kpoints
    k = jnp.asarray(kpoints, dtype=jnp.float64)
    if k.ndim == 1 and model.dim == 1:
        k = k[:, None]
    if k.ndim != 2 or k.shape[1] != model.dim:
        raise ShapeError(f"kpoints must have shape (n_k, {model.dim}) (reduced coordinates); got {k.shape}")
    return _band_energies(model, k, bool(bdg))


def bands_on_grid(model: TightBindingModel, kgrid=(200, 200), bdg: bool = False):
    """Bands on a closed plotting mesh k_i in [-pi, pi] (endpoints included), for contour plots.

    Not a Brillouin-zone sum grid (its edges are counted twice); use it for pictures, e.g. the Fermi surface
    as the zero contours of each band. Cartesian coordinates: :func:`reduced_to_cartesian`.

    Args:
        model: the model.
        kgrid: mesh points per dimension.
        bdg: BdG bands instead of h(k).

    Returns:
        (k, energies): k (*kgrid, dim) reduced coordinates, energies (*kgrid, n_bands) ascending.

    Example:
        >>> import shibajax
        >>> k, e = bands_on_grid(shibajax.models.square(rashba=0.3), kgrid=(5, 5))
        >>> k.shape, e.shape
        ((5, 5, 2), (5, 5, 2))
    """
    kgrid = validate_kgrid(kgrid, model.dim)
    axes = [np.linspace(-np.pi, np.pi, n) for n in kgrid]
    k = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    e = band_structure(model, k.reshape(-1, model.dim), bdg=bdg)
    return k, np.asarray(e).reshape(*kgrid, -1)


def _kernel(x, eta, kind):
    if kind == "lorentzian":
        return (eta / jnp.pi) / (x**2 + eta**2)
    return jnp.exp(-0.5 * (x / eta) ** 2) / (math.sqrt(2.0 * math.pi) * eta)


@partial(jax.jit, static_argnames=("kgrid", "chunk_size", "kind"))
def _dos(model, energies, eta, kgrid, chunk_size, kind):
    kpts, weights = chunked_kpoints(kgrid, chunk_size)
    h_of_k = jax.vmap(partial(electron_hamiltonian, model))

    def body(acc, xs):
        kc, wc = xs
        eps = _linalg.eigvalsh(h_of_k(kc))  # (c, 2 n_orb)
        contrib = _kernel(energies[:, None, None] - eps[None], eta, kind)  # (n_E, c, 2 n_orb)
        return acc + jnp.einsum("ecn,c->e", contrib, wc), None

    total, _ = jax.lax.scan(body, jnp.zeros(energies.shape[0]), (kpts, weights))
    return total / normalisation(kgrid)


def normal_state_dos(
    model: TightBindingModel,
    energies,
    *,
    kgrid,
    eta,
    per_spin: bool = True,
    kind: str = "lorentzian",
    chunk_size: int | None = None,
) -> jax.Array:
    """Broadened normal-state density of states of h(k) per unit cell (per spin by default).

    rho(E) = (1 / N_k) sum_k sum_n delta_eta(E - eps_n(k)), divided by 2 when ``per_spin``, with delta_eta a
    Lorentzian (eta / pi) / (x^2 + eta^2) (= -Im G(E + i eta) / pi) or a Gaussian of standard deviation eta.
    The per-spin DOS integrates to n_orb. Resolving the bands needs eta larger than the level spacing of the
    grid, |grad eps| 2 pi / L; the Lorentzian also shifts smooth parts by O(eta / bandwidth) and rounds off van
    Hove peaks on the scale eta.

    Args:
        model: the model (only h(k) is used; the pairing is ignored).
        energies: (n_E,) real energies (energy units).
        kgrid: Gamma-centred grid per dimension.
        eta: broadening, > 0.
        per_spin: divide by the 2 spin species (both spins when False).
        kind: "lorentzian" or "gaussian".
        chunk_size: k-points per chunk (default from the memory budget).

    Returns:
        (n_E,) float64, states per energy unit per cell.

    Raises:
        BroadeningError: eta <= 0 or not finite. ShapeError: bad kgrid or energies. ValueError: unknown kind.

    Example:
        >>> import shibajax
        >>> rho = normal_state_dos(shibajax.models.square(), [-1.0, 0.5], kgrid=(64, 64), eta=0.1)
        >>> rho.shape
        (2,)
    """
    eta = validate_eta(eta)
    if kind not in DOS_KINDS:
        raise ValueError(f"kind = {kind!r}; choose one of {DOS_KINDS}")
    kgrid = validate_kgrid(kgrid, model.dim)
    e = jnp.atleast_1d(jnp.asarray(energies, dtype=jnp.float64))
    if e.ndim != 1:
        raise ShapeError(f"energies must be a 1D array; got shape {e.shape}")
    n_k = n_points(kgrid)
    n_bands = 2 * model.n_orb
    if chunk_size is None:
        chunk_size = default_chunk_size(n_k, max(4 * n_bands**2, 2 * n_bands * e.shape[0]))
    rho = _dos(model, e, jnp.asarray(eta), kgrid, int(chunk_size), kind)
    return rho / 2.0 if per_spin else rho


@partial(jax.jit, static_argnames=("kgrid", "chunk_size"))
def _filling(model, kgrid, chunk_size):
    kpts, weights = chunked_kpoints(kgrid, chunk_size)
    h_of_k = jax.vmap(partial(electron_hamiltonian, model))
    scale = jnp.maximum(1.0, jnp.max(jnp.abs(model.hoppings)))
    tol = FILLING_TIE_RTOL * scale

    def body(acc, xs):
        kc, wc = xs
        eps = _linalg.eigvalsh(h_of_k(kc))
        occ = jnp.where(eps < -tol, 1.0, jnp.where(eps <= tol, 0.5, 0.0))
        return acc + jnp.sum(occ * wc[:, None]), None

    total, _ = jax.lax.scan(body, jnp.asarray(0.0), (kpts, weights))
    return total  # occupied states on the grid (an exact multiple of 1/2)


def filling(model: TightBindingModel, *, kgrid, chunk_size: int | None = None) -> jax.Array:
    """Electrons per unit cell (both spins) at T = 0: the fraction of h(k) eigenvalues below E_F = 0, times 2 n_orb.

    States with |eps| <= 1e-12 x (largest hopping) sit at the Fermi level and count one half, so a band that is
    particle-hole symmetric on the grid gives exactly half filling (e.g. the square lattice at mu = 0 on an even
    grid, where k -> k + (pi, pi) maps the grid onto itself; odd grids miss that symmetry by O(1/L^2)).

    Args:
        model: the model (the chemical potential is in its on-site term).
        kgrid: Gamma-centred grid per dimension.
        chunk_size: k-points per chunk (default from the memory budget).

    Returns:
        Scalar float64 in [0, 2 n_orb].

    Example:
        >>> import shibajax
        >>> float(filling(shibajax.models.square(mu=0.0), kgrid=(32, 32)))
        1.0
    """
    kgrid = validate_kgrid(kgrid, model.dim)
    if chunk_size is None:
        chunk_size = default_chunk_size(n_points(kgrid), 4 * (2 * model.n_orb) ** 2)
    # Divide outside the jit: XLA may turn x / N into x * (1 / N), which is not exact.
    return _filling(model, kgrid, int(chunk_size)) / normalisation(kgrid)
