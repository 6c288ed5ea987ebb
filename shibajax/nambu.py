"""Pauli matrices and the Nambu basis (see docs/conventions.md).

Basis of the Bogoliubov-de Gennes (BdG) matrices, per unit cell, index = tau * (2 n_orb) + 2 * orbital + spin:

    Psi_k = (c_{k,o,up}, c_{k,o,down} for o = 0..n_orb-1 ;  c+_{-k,o,down}, -c+_{-k,o,up} for o = 0..n_orb-1)

so the first 2 n_orb components are the electron (u) block and the last 2 n_orb the hole (v) block.
In this basis singlet s-wave pairing is Delta tau_x, an exchange field J n.sigma is tau_0 (n.sigma) and a
potential K is K tau_z (Balian & Werthamer, Phys. Rev. 131, 1553 (1963)).
"""

from __future__ import annotations

import numpy as np

SIGMA_0 = np.eye(2, dtype=np.complex128)
SIGMA_X = np.array([[0, 1], [1, 0]], dtype=np.complex128)
SIGMA_Y = np.array([[0, -1j], [1j, 0]], dtype=np.complex128)
SIGMA_Z = np.array([[1, 0], [0, -1]], dtype=np.complex128)
SIGMA = np.stack([SIGMA_X, SIGMA_Y, SIGMA_Z])  # (3, 2, 2)

TAU_0, TAU_X, TAU_Y, TAU_Z = SIGMA_0, SIGMA_X, SIGMA_Y, SIGMA_Z


def nambu_dim(n_orb: int) -> int:
    """Size M = 4 n_orb of the BdG matrix of one unit cell."""
    return 4 * n_orb


def spin_dot(n) -> np.ndarray:
    """n . sigma for a 3-vector n, shape (2, 2). Works on NumPy and JAX arrays."""
    return n[0] * SIGMA_X + n[1] * SIGMA_Y + n[2] * SIGMA_Z


def electron_slice(n_orb: int) -> slice:
    """Indices of the electron (u) block in a BdG matrix of n_orb orbitals."""
    return slice(0, 2 * n_orb)


def hole_slice(n_orb: int) -> slice:
    """Indices of the hole (v) block in a BdG matrix of n_orb orbitals."""
    return slice(2 * n_orb, 4 * n_orb)
