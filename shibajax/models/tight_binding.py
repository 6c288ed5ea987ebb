"""Tight-binding models in the electron sector and their Bogoliubov-de Gennes (BdG) form.

A model is a Bravais lattice with ``n_orb`` orbitals per cell and hoppings

    H = sum_{r, d} c+_r T_d c_{r+d}      =>      h(k) = sum_d T_d exp(i k . d),

with d in integer lattice coordinates and k in reduced coordinates (k . d = sum_i k_i d_i, k_i in [0, 2 pi)).
Singlet pairing is given the same way, Delta(k) = sum_d D_d exp(i k . d) with orbital matrices D_d, so that

    H_BdG(k) = [[ h(k),                        Delta(k) (x) sigma_0   ],
                [ Delta(k)^dagger (x) sigma_0,  -sigma_y h(-k)* sigma_y ]]

in the Nambu basis of :mod:`shibajax.nambu` (docs/conventions.md). Hermiticity of H requires
T_{-d} = T_d^dagger; singlet (even-parity) pairing requires D_{-d} = D_d^T. Both are checked when a model is
built from concrete arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from shibajax import _precision  # noqa: F401  (float64 before any array is made)
from shibajax._checks import check_finite, check_real
from shibajax.errors import HermiticityError, PairingSymmetryError, ShapeError
from shibajax.nambu import SIGMA_0, SIGMA_Y

Displacement = tuple[int, ...]

#: Relative tolerance of the Hermiticity and pairing-symmetry checks (rounding of user-typed floats).
SYMMETRY_RTOL = 1e-10


@dataclasses.dataclass(frozen=True)
class TightBindingModel:
    """A BdG tight-binding model; a JAX pytree (arrays are leaves, structure is static).

    Attributes:
        hoppings: (n_hop, 2 n_orb, 2 n_orb) complex, spinful electron-sector matrices T_d.
        pairing: (n_pair, n_orb, n_orb) complex, singlet form factors D_d (energy units).
        hop_displacements: n_hop integer tuples d (length ``dim``).
        pair_displacements: n_pair integer tuples d.
        lattice_vectors: (dim, dim) Cartesian lattice vectors as rows (for positions and plots).
        n_orb: orbitals per unit cell.
        name: a label.
    """

    hoppings: jax.Array
    pairing: jax.Array
    hop_displacements: tuple[Displacement, ...]
    pair_displacements: tuple[Displacement, ...]
    lattice_vectors: tuple[tuple[float, ...], ...]
    n_orb: int
    name: str = "custom"

    @property
    def dim(self) -> int:
        """Spatial dimension of the lattice (2 or 3)."""
        return len(self.lattice_vectors)

    @property
    def nambu_dim(self) -> int:
        """Size M = 4 n_orb of the BdG matrix of one cell."""
        return 4 * self.n_orb

    def replace(self, **changes: Any) -> TightBindingModel:
        """A copy with some fields changed (no re-validation)."""
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    TightBindingModel,
    data_fields=["hoppings", "pairing"],
    meta_fields=["hop_displacements", "pair_displacements", "lattice_vectors", "n_orb", "name"],
)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_model_parameters(
    model: str, unit: str = "energy units", vectors: tuple[str, ...] = (), optional: tuple[str, ...] = (), **params
) -> None:
    """Raise :class:`~shibajax.errors.ParameterError` unless every parameter is a finite real number.

    For the built-in model constructors: ``check_model_parameters("square", t=t, mu=mu, ...)`` names the bad
    parameter and its value (``mu = 'abc' is a string ...``). Parameters listed in ``vectors`` may also be 1-D
    arrays (e.g. one gap per orbital), those in ``optional`` may be None (their default); JAX tracers are not
    checked.
    """
    for name, value in params.items():
        if value is None and name in optional:
            continue
        hint = f" (a parameter of {model}(), {unit})"
        check_real(name, value, max_ndim=1 if name in vectors else 0, hint=hint)


def _as_displacement(d, dim: int | None) -> Displacement:
    arr = np.asarray(d)
    if arr.ndim != 1 or not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ShapeError(f"hopping displacement {d!r} must be a tuple of integer lattice coordinates, e.g. (1, 0)")
    out = tuple(int(v) for v in arr)
    if dim is not None and len(out) != dim:
        raise ShapeError(f"displacement {out} has {len(out)} coordinates but the lattice has dim = {dim}")
    return out


def _spinful(matrix, n_orb: int, d: Displacement):
    """Expand an (n_orb, n_orb) spinless matrix with sigma_0; pass (2 n_orb, 2 n_orb) through."""
    m = jnp.asarray(matrix, dtype=jnp.complex128)
    if m.ndim == 0 and n_orb == 1:
        m = m.reshape(1, 1)
    if m.shape == (n_orb, n_orb):
        return jnp.kron(m, jnp.asarray(SIGMA_0))
    if m.shape == (2 * n_orb, 2 * n_orb):
        return m
    raise ShapeError(
        f"hopping matrix at d={d} has shape {m.shape}; with n_orb = {n_orb} it must be "
        f"({n_orb}, {n_orb}) (spinless, expanded with sigma_0) or ({2 * n_orb}, {2 * n_orb}) (spinful)"
    )


def _orbital_matrix(matrix, n_orb: int, d: Displacement):
    m = jnp.asarray(matrix, dtype=jnp.complex128)
    if m.ndim == 0:
        return m * jnp.eye(n_orb, dtype=jnp.complex128)
    if m.ndim == 1 and m.shape == (n_orb,):
        return jnp.diag(m)
    if m.shape == (n_orb, n_orb):
        return m
    raise ShapeError(
        f"pairing at d={d} has shape {m.shape}; expected a scalar, ({n_orb},) (orbital-diagonal) or ({n_orb}, {n_orb})"
    )


def _check_partners(mats: dict, kind: str, relation, relation_text: str, error_cls):
    """Check mats[-d] == relation(mats[d]) for every d, with a message that names d."""
    for d, m in mats.items():
        if not _is_concrete(m):
            continue
        minus = tuple(-v for v in d)
        if minus not in mats:
            raise error_cls(
                f"{kind} at d={d} has no partner at d={minus}: the model must contain {relation_text} "
                f"(add the {minus} term, or halve and symmetrise the {d} term)"
            )
        partner = mats[minus]
        if not _is_concrete(partner):
            continue
        want = np.asarray(relation(np.asarray(m)))
        have = np.asarray(partner)
        scale = max(1.0, float(np.max(np.abs(want))), float(np.max(np.abs(have))))
        dev = float(np.max(np.abs(have - want)))
        if dev > SYMMETRY_RTOL * scale:
            raise error_cls(
                f"{kind} violates {relation_text} at d={d}: max |deviation| = {dev:.3g}. "
                "A Hermitian H = sum c+_r T_d c_{r+d} needs both terms; check signs and complex conjugation"
            )


def from_hoppings(
    hoppings: Mapping[Any, Any],
    *,
    n_orb: int | None = None,
    pairing: Mapping[Any, Any] | None = None,
    delta=None,
    lattice_vectors=None,
    name: str = "custom",
) -> TightBindingModel:
    """Build a model from electron-sector hoppings {d: T_d} and a singlet pairing.

    Args:
        hoppings: {d: T_d}, d an integer tuple (length dim), T_d of shape (n_orb, n_orb) (spinless, expanded
            with sigma_0) or (2 n_orb, 2 n_orb) (spinful, index 2 * orbital + spin), or a scalar when n_orb = 1.
            On-site energies (including -mu) are T_0. Must satisfy T_{-d} = T_d^dagger.
        n_orb: orbitals per cell; default: the size of the first matrix (spinless).
        pairing: {d: D_d} singlet pairing form factors (scalar, (n_orb,) diagonal or (n_orb, n_orb)),
            Delta(k) = sum_d D_d exp(i k.d); must satisfy D_{-d} = D_d^T.
        delta: shorthand for on-site pairing {0: delta} (scalar or one value per orbital).
        lattice_vectors: (dim, dim) Cartesian rows; default the identity.
        name: label.

    Returns:
        TightBindingModel.

    Raises:
        HermiticityError, PairingSymmetryError, ShapeError; ParameterError for entries that are not finite numbers
        (strings, NaN, inf).

    Example:
        >>> import shibajax
        >>> m = shibajax.models.from_hoppings({(0, 0): 1.0, (1, 0): -1.0, (-1, 0): -1.0}, delta=0.1)
        >>> m.n_orb, m.dim
        (1, 2)
    """
    if not hoppings:
        raise ShapeError("a model needs at least one hopping term (use {(0, 0): -mu} for on-site only)")
    items = list(hoppings.items())
    dim = len(_as_displacement(items[0][0], None))
    for d, t in items:
        check_finite(f"hopping T_d at d={d}", t, max_ndim=2, hint=" (a scalar or a matrix, energy units)")
    if n_orb is None:
        first = np.shape(items[0][1])
        n_orb = 1 if len(first) == 0 else int(first[0])
    elif isinstance(n_orb, bool) or not isinstance(n_orb, int | np.integer) or n_orb < 1:
        raise ShapeError(f"n_orb = {n_orb!r} must be a positive integer (orbitals per cell)")
    hop = {}
    for d, t in items:
        dd = _as_displacement(d, dim)
        if dd in hop:
            raise ShapeError(f"displacement {dd} is given twice")
        hop[dd] = _spinful(t, n_orb, dd)
    _check_partners(hop, "hopping T_d", lambda m: m.conj().T, "T_{-d} = T_d^dagger", HermiticityError)

    pair_in: dict = {}
    if delta is not None:
        check_finite("delta", delta, max_ndim=1, hint=" (a scalar or one gap per orbital, energy units)")
        pair_in[(0,) * dim] = delta
    if pairing:
        for d, D in pairing.items():
            check_finite(f"pairing D_d at d={d}", D, max_ndim=2, hint=" (a scalar, (n_orb,) or a matrix)")
            dd = _as_displacement(d, dim)
            pair_in[dd] = D if dd not in pair_in else jnp.asarray(pair_in[dd]) + jnp.asarray(D)
    if not pair_in:
        pair_in[(0,) * dim] = 0.0
    pair = {_as_displacement(d, dim): _orbital_matrix(D, n_orb, d) for d, D in pair_in.items()}
    _check_partners(pair, "pairing D_d", lambda m: m.T, "D_{-d} = D_d^T (singlet, even parity)", PairingSymmetryError)

    if lattice_vectors is None:
        lattice_vectors = np.eye(dim)
    check_real("lattice_vectors", lattice_vectors, error=ShapeError, max_ndim=2, hint=" (Cartesian rows)")
    lv = np.asarray(lattice_vectors, dtype=float)
    if lv.shape != (dim, dim):
        raise ShapeError(f"lattice_vectors has shape {lv.shape}; a {dim}D lattice needs ({dim}, {dim})")
    if abs(np.linalg.det(lv)) < 1e-12:
        raise ShapeError("lattice_vectors are linearly dependent")

    hop_d = tuple(sorted(hop))
    pair_d = tuple(sorted(pair))
    return TightBindingModel(
        hoppings=jnp.stack([hop[d] for d in hop_d]),
        pairing=jnp.stack([pair[d] for d in pair_d]),
        hop_displacements=hop_d,
        pair_displacements=pair_d,
        lattice_vectors=tuple(tuple(float(x) for x in row) for row in lv),
        n_orb=int(n_orb),
        name=name,
    )


def electron_hamiltonian(model: TightBindingModel, k: jax.Array) -> jax.Array:
    """h(k) = sum_d T_d exp(i k.d); k (dim,) reduced coordinates -> (2 n_orb, 2 n_orb) complex."""
    d = jnp.asarray(model.hop_displacements, dtype=jnp.float64)
    phases = jnp.exp(1j * (d @ k))
    return jnp.einsum("h,hab->ab", phases, model.hoppings)


def pairing_matrix(model: TightBindingModel, k: jax.Array) -> jax.Array:
    """Delta(k) = sum_d D_d exp(i k.d); k (dim,) -> (n_orb, n_orb) complex (energy units)."""
    d = jnp.asarray(model.pair_displacements, dtype=jnp.float64)
    phases = jnp.exp(1j * (d @ k))
    return jnp.einsum("h,hab->ab", phases, model.pairing)


def bdg_hamiltonian(model: TightBindingModel, k: jax.Array) -> jax.Array:
    """H_BdG(k) for one k (dim,) in reduced coordinates -> (4 n_orb, 4 n_orb) Hermitian complex128.

    Blocks: h(k), Delta(k) (x) sigma_0, its adjoint, and the hole block -sigma_y h(-k)* sigma_y
    (docs/conventions.md). Lift over k-points with ``jax.vmap``.
    """
    n = model.n_orb
    sy = jnp.kron(jnp.eye(n), jnp.asarray(SIGMA_Y))
    h = electron_hamiltonian(model, k)
    hole = -sy @ electron_hamiltonian(model, -k).conj() @ sy
    pair = jnp.kron(pairing_matrix(model, k), jnp.asarray(SIGMA_0))
    return jnp.block([[h, pair], [pair.conj().T, hole]])
