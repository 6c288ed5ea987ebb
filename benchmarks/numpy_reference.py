"""Plain NumPy/SciPy reference for the shibajax core: BdG Hamiltonian, bare Green's function, Shiba energies.

Written from the formulas of docs/conventions.md, independently of the shibajax implementation (it only reads
a model's arrays and an impurity's couplings as input data):

* BdG basis per cell: index = tau * (2 n_orb) + 2 * orbital + spin.
* h(k) = sum_d T_d exp(i k.d), Delta(k) = sum_d D_d exp(i k.d), d integer lattice coordinates, k reduced
  coordinates on the Gamma-centred grid k_i = 2 pi n_i / L_i, n_i = 0 .. L_i - 1.
* H_BdG(k) = [[h(k), Delta(k) (x) sigma_0], [Delta(k)^dagger (x) sigma_0, -S_y h(-k)* S_y]], S_y = 1_orb (x) sigma_y.
* G0(d, z) = (1/N) sum_k exp(i k.d) [z - H_BdG(k)]^-1, evaluated from the eigendecomposition of every H_BdG(k).
* Impurity potential per site: V = K tau_z (x) P (x) sigma_0 + J tau_0 (x) P (x) (n.sigma), P the projector on a
  channel's orbitals.
* Bound states: zeros of det[1 - V G_imp(E)] for |E| < gap. With V = Q Lambda Q^dagger (nonzero eigenvalues only)
  this is det A(E) = 0, A(E) = Lambda^-1 - Q^dagger G_imp(E) Q Hermitian; each sorted eigenvalue lambda_k(E) of A
  increases monotonically inside the gap, so its zero is found by scanning a coarse energy grid for a sign change
  and refining with ``scipy.optimize.brentq``. Roots are counted with multiplicity (one per crossing eigenvalue).

Everything is vectorised over k with NumPy (``np.linalg.eigh`` of the stacked (N, M, M) matrices); the
eigendecomposition of all k-points is computed once per :class:`NumpyReference` and cached. This is a reference,
meant to be simple and clear, not memory-bounded.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq

SIGMA_0 = np.eye(2, dtype=np.complex128)
SIGMA_X = np.array([[0, 1], [1, 0]], dtype=np.complex128)
SIGMA_Y = np.array([[0, -1j], [1j, 0]], dtype=np.complex128)
SIGMA_Z = np.array([[1, 0], [0, -1]], dtype=np.complex128)
TAU_0, TAU_Z = SIGMA_0, SIGMA_Z

#: Eigenvalues of V below this times max |eig V| are treated as zero (channel directions that do not couple).
ZERO_COUPLING = 1e-12


def gamma_centred_grid(kgrid) -> np.ndarray:
    """All k-points (N, dim) of the grid k_i = 2 pi n_i / L_i, n_i = 0 .. L_i - 1, first axis slowest."""
    axes = [2.0 * np.pi * np.arange(n) / n for n in kgrid]
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1)


def bdg_hamiltonians(hoppings, hop_displacements, pairing, pair_displacements, n_orb: int, k) -> np.ndarray:
    """Stacked H_BdG(k), (N, 4 n_orb, 4 n_orb), for k-points (N, dim).

    hoppings: (n_hop, 2 n_orb, 2 n_orb) spinful T_d; pairing: (n_pair, n_orb, n_orb) singlet D_d.
    """
    t = np.asarray(hoppings, dtype=np.complex128)
    dmat = np.asarray(pairing, dtype=np.complex128)
    k = np.asarray(k, dtype=np.float64)
    phase_h = np.exp(1j * k @ np.asarray(hop_displacements, dtype=np.float64).T)  # (N, n_hop)
    phase_p = np.exp(1j * k @ np.asarray(pair_displacements, dtype=np.float64).T)  # (N, n_pair)
    h_k = np.einsum("kh,hab->kab", phase_h, t)  # h(k)
    h_minus_k = np.einsum("kh,hab->kab", phase_h.conj(), t)  # h(-k): exp(-i k.d) = conj(exp(i k.d))
    s_y = np.kron(np.eye(n_orb), SIGMA_Y)
    hole = -s_y @ h_minus_k.conj() @ s_y
    delta_k = np.einsum("kh,hab->kab", phase_p, dmat)  # (N, n_orb, n_orb)
    n_k, n2 = k.shape[0], 2 * n_orb
    # Delta(k) (x) sigma_0 with index 2 * orbital + spin.
    pair = np.einsum("kab,st->kasbt", delta_k, SIGMA_0).reshape(n_k, n2, n2)
    h_bdg = np.zeros((n_k, 2 * n2, 2 * n2), dtype=np.complex128)
    h_bdg[:, :n2, :n2] = h_k
    h_bdg[:, :n2, n2:] = pair
    h_bdg[:, n2:, :n2] = pair.conj().transpose(0, 2, 1)
    h_bdg[:, n2:, n2:] = hole
    return h_bdg


def impurity_potential(impurities, n_orb: int) -> tuple[np.ndarray, np.ndarray]:
    """Sites (n_imp, dim) and the block-diagonal potential (n_imp M, n_imp M), rebuilt from the couplings.

    Reads only ``imp.site``, ``imp.spin`` and each channel's ``K``, ``J``, ``orbitals`` (None: all orbitals).
    """
    m = 4 * n_orb
    sites = np.array([imp.site for imp in impurities], dtype=np.int64)
    v = np.zeros((len(impurities) * m, len(impurities) * m), dtype=np.complex128)
    for i, imp in enumerate(impurities):
        n = np.asarray(imp.spin, dtype=np.float64)
        n = n / np.linalg.norm(n)
        n_sigma = n[0] * SIGMA_X + n[1] * SIGMA_Y + n[2] * SIGMA_Z
        block = np.zeros((m, m), dtype=np.complex128)
        for ch in imp.channels:
            orbitals = range(n_orb) if ch.orbitals is None else ch.orbitals
            proj = np.zeros((n_orb, n_orb))
            for o in orbitals:
                proj[o, o] = 1.0
            block += float(ch.K) * np.kron(TAU_Z, np.kron(proj, SIGMA_0))
            block += float(ch.J) * np.kron(TAU_0, np.kron(proj, n_sigma))
        v[i * m : (i + 1) * m, i * m : (i + 1) * m] = block
    return sites, v


class NumpyReference:
    """BdG eigensystem of a whole k-grid (cached) and everything computed from it.

    Args:
        model: a shibajax TightBindingModel (only its arrays and displacements are read) or any object with
            ``hoppings``, ``hop_displacements``, ``pairing``, ``pair_displacements`` and ``n_orb``.
        kgrid: grid size per dimension.
    """

    def __init__(self, model, kgrid):
        self.kgrid = tuple(int(v) for v in kgrid)
        self.n_orb = int(model.n_orb)
        self.k = gamma_centred_grid(self.kgrid)
        self.n_k = self.k.shape[0]
        h_bdg = bdg_hamiltonians(
            np.asarray(model.hoppings),
            model.hop_displacements,
            np.asarray(model.pairing),
            model.pair_displacements,
            self.n_orb,
            self.k,
        )
        self.energies, self.vectors = np.linalg.eigh(h_bdg)  # (N, M), (N, M, M)
        self.m = self.energies.shape[1]
        # U as an (M, N M) matrix [a, (k, n)] and its adjoint, so that a BZ sum is one matrix product.
        self._u_rows = np.ascontiguousarray(self.vectors.transpose(1, 0, 2).reshape(self.m, -1))
        self._u_rows_h = np.ascontiguousarray(self._u_rows.conj().T)
        self.gap = float(np.min(np.abs(self.energies)))

    def greens(self, displacements, energies) -> np.ndarray:
        """G0(d, z) for displacements (n_d, dim) and energies (n_z,): (n_z, n_d, M, M) complex128.

        G0(d, z)_ab = (1/N) sum_{k, n} exp(i k.d) U_an(k) conj(U_bn(k)) / (z - E_n(k)).
        """
        disp = np.atleast_2d(np.asarray(displacements, dtype=np.float64))
        z = np.atleast_1d(np.asarray(energies)).astype(np.complex128)
        phase = np.exp(1j * self.k @ disp.T) / self.n_k  # (N, n_d)
        out = np.empty((z.shape[0], disp.shape[0], self.m, self.m), dtype=np.complex128)
        for i, zi in enumerate(z):
            weight = phase[:, :, None] / (zi - self.energies)[:, None, :]  # (N, n_d, M)
            weight = weight.transpose(1, 0, 2).reshape(disp.shape[0], 1, -1)  # (n_d, 1, N M)
            out[i] = (self._u_rows[None] * weight) @ self._u_rows_h  # (n_d, M, M)
        return out

    def impurity_block(self, sites, energies) -> np.ndarray:
        """G_imp(E): (n_z, n_imp M, n_imp M), block (i, j) = G0(r_i - r_j, E)."""
        sites = np.asarray(sites, dtype=np.int64)
        n_imp = sites.shape[0]
        pairs = (sites[:, None, :] - sites[None, :, :]).reshape(-1, sites.shape[1])
        uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
        g = self.greens(uniq, energies)[:, inverse.reshape(-1)]  # (n_z, n_imp^2, M, M)
        g = g.reshape(-1, n_imp, n_imp, self.m, self.m).transpose(0, 1, 3, 2, 4)
        return g.reshape(-1, n_imp * self.m, n_imp * self.m)

    def bound_states(self, impurities, *, edge_margin=1e-6, n_scan=64, xtol=1e-14) -> dict:
        """All in-gap zeros of det[1 - V G_imp(E)], with multiplicity.

        Scans |E| <= gap (1 - edge_margin) on ``n_scan`` equally spaced energies (both ends included), finds the
        sign changes of every sorted eigenvalue of A(E) and refines each by brentq to ``xtol``.

        Returns:
            dict with ``energies`` (sorted roots, one per crossing), ``gap``, ``scan`` (the energy grid),
            ``eigenvalues`` (n_scan, R) of A on the grid and ``monotone`` (whether every eigenvalue was
            non-decreasing on the grid, up to rounding).
        """
        sites, v = impurity_potential(list(impurities), self.n_orb)
        lam, q = np.linalg.eigh(v)
        keep = np.abs(lam) > ZERO_COUPLING * np.max(np.abs(lam))
        lam, q = lam[keep], q[:, keep]
        inv_lam = np.diag(1.0 / lam)

        def a_matrix(energies):
            g = self.impurity_block(sites, energies)
            a = inv_lam[None] - q.conj().T[None] @ g @ q[None]
            return 0.5 * (a + a.conj().transpose(0, 2, 1))

        def eigenvalue(e, idx):
            return float(np.linalg.eigvalsh(a_matrix([e])[0])[idx])

        e_max = self.gap * (1.0 - edge_margin)
        scan = np.linspace(-e_max, e_max, n_scan)
        lam_scan = np.linalg.eigvalsh(a_matrix(scan))  # (n_scan, R)
        roots = []
        for idx in range(lam_scan.shape[1]):
            s = lam_scan[:, idx]
            for i in np.nonzero((s[:-1] < 0) & (s[1:] >= 0))[0]:
                if s[i + 1] == 0.0:
                    roots.append(float(scan[i + 1]))
                else:
                    roots.append(brentq(eigenvalue, scan[i], scan[i + 1], args=(idx,), xtol=xtol))
        scale = max(1.0, float(np.max(np.abs(lam_scan))))
        monotone = bool(np.all(np.diff(lam_scan, axis=0) > -1e-9 * scale))
        return {
            "energies": np.sort(np.asarray(roots, dtype=np.float64)),
            "gap": self.gap,
            "scan": scan,
            "eigenvalues": lam_scan,
            "monotone": monotone,
        }


def greens_function(model, displacements, energies, kgrid) -> np.ndarray:
    """G0(d, E) on a grid from scratch (build, diagonalise, sum): (n_E, n_d, M, M)."""
    return NumpyReference(model, kgrid).greens(displacements, energies)


def bound_state_energies(model, impurities, kgrid, **kwargs) -> dict:
    """Shiba energies from scratch (build, diagonalise, scan, brentq); see :meth:`NumpyReference.bound_states`."""
    return NumpyReference(model, kgrid).bound_states(impurities, **kwargs)


def _sector_host(model, kgrid):
    """xi_k, Delta_k (N,) of a one-orbital spin-invariant host on the grid (ValueError for anything else)."""
    t, d = np.asarray(model.hoppings), np.asarray(model.pairing)
    if t.shape[1:] != (2, 2) or np.max(np.abs(t[:, 0, 1])) > 0 or np.max(np.abs(t[:, 0, 0] - t[:, 1, 1])) > 0:
        raise ValueError("the spin-sector reference needs a one-orbital host with spin-independent hoppings")
    k = gamma_centred_grid(kgrid)
    xi = np.real(np.exp(1j * k @ np.asarray(model.hop_displacements, float).T) @ t[:, 0, 0])
    delta = np.exp(1j * k @ np.asarray(model.pair_displacements, float).T) @ d[:, 0, 0]
    return xi, delta


def spin_sector_greens(model, energies, kgrid) -> np.ndarray:
    """G0(0, E) (n_E, 1, 4, 4) of a one-orbital spin-invariant host from its 2 x 2 spin sector: G0_loc(E) =
    mean_k (E + H(k)) / (E^2 - E_k^2) on the sector indices (0, 2) (c_up, c+_down) and (1, 3) (c_down, -c+_up)."""
    xi, delta = _sector_host(model, kgrid)
    e = np.asarray(energies, dtype=np.float64)[:, None]
    inverse = 1.0 / (e**2 - xi[None] ** 2 - np.abs(delta[None]) ** 2)
    s = np.stack(
        [inverse.mean(1), (inverse * xi).mean(1), (inverse * delta.real).mean(1), (inverse * delta.imag).mean(1)]
    )
    g_loc = e[:, 0, None, None] * s[0, :, None, None] * SIGMA_0 + (
        s[1, :, None, None] * SIGMA_Z + s[2, :, None, None] * SIGMA_X - s[3, :, None, None] * SIGMA_Y
    )
    out = np.zeros((e.shape[0], 1, 4, 4), dtype=np.complex128)
    for sector in ((0, 2), (1, 3)):
        out[:, 0, np.array(sector)[:, None], np.array(sector)[None, :]] = g_loc
    return out


def spin_sector_energies(model, impurity, kgrid, *, edge_margin=1e-6, n_scan=64, xtol=1e-14) -> dict:
    """Shiba energies of one impurity on a one-orbital spin-invariant host, from the two 2 x 2 spin sectors.

    Host: T_d = t_d sigma_0 (no spin-orbit coupling) and singlet Delta_k; impurity: K tau_z + J n_z tau_0 sigma_z (its
    spin along +-z, one channel). The Nambu space splits into the sectors sigma = +1 (c_up, c+_down) and sigma = -1
    (c_down, -c+_up), both with H(k) = xi_k tau_z + Re Delta_k tau_x - Im Delta_k tau_y, H(k)^2 = E_k^2 =
    xi_k^2 + |Delta_k|^2, so that

        G0_loc(E) = mean_k (E + H(k)) / (E^2 - E_k^2),      V_sigma = K tau_z + sigma J n_z,

    and the bound states are the zeros of det[1 - V_sigma G0_loc(E)] for |E| < gap (1 - edge_margin), both sectors
    searched on the whole gap: a sign scan of the eigenvalues of V_sigma^-1 - G0_loc(E) (on the coupled directions)
    on ``n_scan`` energies, then ``brentq`` to ``xtol``. Returns {"energies" (sorted, with multiplicity), "gap"}.
    """
    spin = np.asarray(impurity.spin, dtype=np.float64)
    if len(impurity.channels) != 1 or np.max(np.abs(spin[:2])) > 1e-15:
        raise ValueError("spin_sector_energies needs one channel and the spin along +-z")
    xi, delta = _sector_host(model, kgrid)
    e2 = xi**2 + np.abs(delta) ** 2
    features = np.stack([np.ones_like(xi), xi, delta.real, delta.imag], axis=1) / xi.size  # (N, 4)
    gap = float(np.sqrt(e2.min()))

    def g_loc(energies):  # (n_E,) -> (n_E, 2, 2), 8 energies at a time (memory ~8 N floats)
        blocks = np.split(energies, range(8, energies.size, 8))
        s = np.concatenate([(1.0 / (e[:, None] ** 2 - e2[None])) @ features for e in blocks])[:, :, None, None]
        return energies[:, None, None] * s[:, 0] * SIGMA_0 + s[:, 1] * SIGMA_Z + s[:, 2] * SIGMA_X - s[:, 3] * SIGMA_Y

    e_max = gap * (1.0 - edge_margin)
    scan = np.linspace(-e_max, e_max, n_scan)
    g_scan = g_loc(scan)
    channel = impurity.channels[0]
    roots = []
    for sigma in (1.0, -1.0):
        exchange = sigma * float(channel.J) * spin[2]
        v = np.array([float(channel.K) + exchange, -float(channel.K) + exchange])  # V_sigma is diagonal
        keep = np.abs(v) > ZERO_COUPLING * np.max(np.abs(v))
        if not keep.any():
            continue

        def eigenvalues(g, v=v, keep=keep):  # sorted eigenvalues of V^-1 - G on the coupled directions, (n_E, r)
            return np.linalg.eigvalsh(np.diag(1.0 / v[keep])[None] - g[:, keep][:, :, keep])

        lam = eigenvalues(g_scan)
        for idx in range(lam.shape[1]):
            s = lam[:, idx]
            for i in np.nonzero((s[:-1] < 0) & (s[1:] >= 0))[0]:

                def f(e, idx=idx, eigenvalues=eigenvalues):
                    return float(eigenvalues(g_loc(np.array([e])))[0, idx])

                roots.append(scan[i + 1] if s[i + 1] == 0 else brentq(f, scan[i], scan[i + 1], xtol=xtol))
    return {"energies": np.sort(np.asarray(roots, dtype=np.float64)), "gap": gap}
