"""Tight-binding models in BdG form: built-in lattices and user hoppings."""

from shibajax.models.builtin import SQUARE_GAPS, rashba_hopping, square, triangular
from shibajax.models.tight_binding import (
    TightBindingModel,
    bdg_hamiltonian,
    electron_hamiltonian,
    from_hoppings,
    pairing_matrix,
)

__all__ = [
    "SQUARE_GAPS",
    "TightBindingModel",
    "bdg_hamiltonian",
    "electron_hamiltonian",
    "from_hoppings",
    "pairing_matrix",
    "rashba_hopping",
    "square",
    "triangular",
]
