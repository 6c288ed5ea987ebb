"""Built-in lattices: square and triangular, one orbital, optional Rashba spin-orbit coupling.

Energies are in units of the nearest-neighbour hopping t when t = 1 (docs/conventions.md).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from shibajax.errors import ShapeError
from shibajax.models.tight_binding import TightBindingModel, check_model_parameters, from_hoppings
from shibajax.nambu import SIGMA_0, SIGMA_X, SIGMA_Y

#: Gap symmetries of the one-orbital lattices; value: {d: weight} with Delta(k) = delta * sum_d w_d e^{i k.d}.
SQUARE_GAPS = {
    "s": {(0, 0): 1.0},
    # Delta cos kx cos ky
    "s+-": {(1, 1): 0.25, (-1, -1): 0.25, (1, -1): 0.25, (-1, 1): 0.25},
    # (Delta / 2)(cos kx - cos ky): maximum |Delta(k)| = Delta
    "d": {(1, 0): 0.25, (-1, 0): 0.25, (0, 1): -0.25, (0, -1): -0.25},
    # (Delta / 2)(cos kx - cos ky) + i Delta sin kx sin ky (chiral d + id, singlet)
    "d+id": {
        (1, 0): 0.25,
        (-1, 0): 0.25,
        (0, 1): -0.25,
        (0, -1): -0.25,
        (1, 1): -0.25j,
        (-1, -1): -0.25j,
        (1, -1): 0.25j,
        (-1, 1): 0.25j,
    },
}


def rashba_hopping(bond_unit_vector, alpha_r):
    """Spinful Rashba term on a bond d with Cartesian unit vector d_hat: (i alpha/2)(d_x sigma_y - d_y sigma_x).

    Summed over +-d this gives alpha sin(k.d)(d_y sigma_x - d_x sigma_y); on the square lattice
    alpha (sin ky sigma_x - sin kx sigma_y).
    """
    dx, dy = float(bond_unit_vector[0]), float(bond_unit_vector[1])
    return 0.5j * alpha_r * (dx * jnp.asarray(SIGMA_Y) - dy * jnp.asarray(SIGMA_X))


def _one_orbital_lattice(name, lattice_vectors, bonds, t, mu, rashba, gap_terms, delta):
    lv = np.asarray(lattice_vectors, dtype=float)
    s0 = jnp.asarray(SIGMA_0)
    hop = {(0,) * lv.shape[0]: -mu * s0}
    for d in bonds:
        for sign in (1, -1):
            dd = tuple(sign * v for v in d)
            r = np.asarray(dd, dtype=float) @ lv
            unit = r / np.linalg.norm(r)
            hop[dd] = -t * s0 + rashba_hopping(unit, rashba)
    pairing = {d: delta * w for d, w in gap_terms.items()}
    return from_hoppings(hop, n_orb=1, pairing=pairing, lattice_vectors=lv, name=name)


def square(t=1.0, mu=0.0, delta=0.0, rashba=0.0, gap: str = "s") -> TightBindingModel:
    """Square lattice: h(k) = -2t(cos kx + cos ky) - mu + alpha_R (sin ky sigma_x - sin kx sigma_y).

    Args:
        t: nearest-neighbour hopping (energy unit).
        mu: chemical potential.
        delta: gap amplitude Delta.
        rashba: Rashba coupling alpha_R.
        gap: 's' (Delta), 's+-' (Delta cos kx cos ky), 'd' ((Delta/2)(cos kx - cos ky)) or 'd+id'.

    Parameters must be finite real numbers (else :class:`~shibajax.errors.ParameterError`) and may be JAX
    tracers (vmap over mu, delta, ...).

    Example:
        >>> import shibajax
        >>> shibajax.models.square(t=1.0, mu=-1.0, delta=0.3, rashba=0.4).nambu_dim
        4
    """
    if gap not in SQUARE_GAPS:
        raise ShapeError(f"unknown gap {gap!r} for the square lattice; choose one of {sorted(SQUARE_GAPS)}")
    check_model_parameters("square", t=t, mu=mu, delta=delta, rashba=rashba)
    bonds = [(1, 0), (0, 1)]
    return _one_orbital_lattice(f"square[{gap}]", np.eye(2), bonds, t, mu, rashba, SQUARE_GAPS[gap], delta)


def triangular(t=1.0, mu=0.0, delta=0.0, rashba=0.0) -> TightBindingModel:
    """Triangular lattice (a1 = (1, 0), a2 = (1/2, sqrt3/2)), s-wave gap, optional Rashba.

    h(k) = -2t [cos k1 + cos k2 + cos(k2 - k1)] - mu + Rashba, k in reduced coordinates.
    """
    check_model_parameters("triangular", t=t, mu=mu, delta=delta, rashba=rashba)
    lv = np.array([[1.0, 0.0], [0.5, np.sqrt(3.0) / 2.0]])
    bonds = [(1, 0), (0, 1), (-1, 1)]
    return _one_orbital_lattice("triangular[s]", lv, bonds, t, mu, rashba, {(0, 0): 1.0}, delta)
