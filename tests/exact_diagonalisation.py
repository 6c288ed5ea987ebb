"""Real-space Bogoliubov-de Gennes matrices of finite periodic lattices, built with plain NumPy.

Independent of shibajax's k-space code: the only shared definition is the physics,
H = sum_{r,d} c+_r T_d c_{r+d} on an L x L torus, singlet pairing sum_{r,d} D_d between electron at r and
hole at r+d, the Nambu basis (c_up, c_down, c+_down, -c+_up) so that the hole block is -S_y H_e* S_y, and
an impurity V = K tau_z + J n.sigma on the orbitals of its channels.
"""

from __future__ import annotations

import itertools

import numpy as np

S0 = np.eye(2, dtype=complex)
SX = np.array([[0, 1], [1, 0]], dtype=complex)
SY = np.array([[0, -1j], [1j, 0]], dtype=complex)
SZ = np.array([[1, 0], [0, -1]], dtype=complex)


def square_hoppings(t, mu, alpha):
    """T_d of h(k) = -2t(cos kx + cos ky) - mu + alpha (sin ky sx - sin kx sy), written out by hand.

    sin kx = (e^{ikx} - e^{-ikx}) / 2i, so -alpha sin kx sy -> T_{+x} = +i alpha/2 sy, T_{-x} = -i alpha/2 sy;
    alpha sin ky sx -> T_{+y} = -i alpha/2 sx, T_{-y} = +i alpha/2 sx.
    """
    return {
        (0, 0): -mu * S0,
        (1, 0): -t * S0 + 0.5j * alpha * SY,
        (-1, 0): -t * S0 - 0.5j * alpha * SY,
        (0, 1): -t * S0 - 0.5j * alpha * SX,
        (0, -1): -t * S0 + 0.5j * alpha * SX,
    }


def bdg_lattice(L, hoppings, pairing, n_orb=1):
    """Real-space BdG matrix (4 n_orb L^2 square) of an L x L torus; electron index 2 n_orb * site + 2 orb + s."""
    n_sites = L * L
    ne = 2 * n_orb * n_sites

    def site(x, y):
        return (x % L) * L + (y % L)

    he = np.zeros((ne, ne), dtype=complex)
    de = np.zeros((ne, ne), dtype=complex)
    blk = 2 * n_orb
    for x, y in itertools.product(range(L), range(L)):
        i = site(x, y)
        for d, T in hoppings.items():
            j = site(x + d[0], y + d[1])
            he[blk * i : blk * i + blk, blk * j : blk * j + blk] += T
        for d, D in pairing.items():
            j = site(x + d[0], y + d[1])
            de[blk * i : blk * i + blk, blk * j : blk * j + blk] += np.kron(np.atleast_2d(D), S0)
    assert np.allclose(he, he.conj().T), "test model is not Hermitian"
    sy = np.kron(np.eye(n_orb * n_sites), SY)
    return np.block([[he, de], [de.conj().T, -sy @ he.conj() @ sy]])


def add_impurities(h, L, impurities, n_orb=1):
    """Add V = K tau_z + J n.sigma for impurities [(site, [(orbitals, K, J)], n)] to a copy of h."""
    h = h.copy()
    blk = 2 * n_orb
    ne = blk * L * L
    for (x, y), channels, spin in impurities:
        n = np.asarray(spin, dtype=float) / np.linalg.norm(spin)
        n_sigma = n[0] * SX + n[1] * SY + n[2] * SZ
        i = (x % L) * L + (y % L)
        for orbitals, K, J in channels:
            for o in orbitals:
                e = slice(blk * i + 2 * o, blk * i + 2 * o + 2)
                hh = slice(ne + blk * i + 2 * o, ne + blk * i + 2 * o + 2)
                h[e, e] += K * S0 + J * n_sigma
                h[hh, hh] += -K * S0 + J * n_sigma
    return h


def in_gap_states(h0, h, margin=1e-6):
    """Eigenpairs of h with |E| < (1 - margin) * (gap edge of h0), and that gap edge."""
    gap = np.min(np.abs(np.linalg.eigvalsh(h0)))
    e, v = np.linalg.eigh(h)
    keep = np.abs(e) < gap * (1 - margin)
    return e[keep], v[:, keep], gap


def cluster(energies, tol):
    """Distinct levels and multiplicities of sorted energies (same rule as the library)."""
    levels = []
    for e in np.sort(energies):
        if levels and e - levels[-1][-1] < tol:
            levels[-1].append(e)
        else:
            levels.append([e])
    return np.array([np.mean(g) for g in levels]), np.array([len(g) for g in levels])
