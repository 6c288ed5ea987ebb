"""Tight-binding models in BdG form: built-in lattices and user hoppings."""

from shibajax.models.builtin import SQUARE_GAPS, rashba_hopping, square, triangular
from shibajax.models.pnictides import (
    GRASER2009_FILLING,
    GRASER2009_HOPPINGS,
    GRASER2009_ONSITE,
    PNICTIDE_GAPS,
    graser2009,
    graser2009_h0,
    graser2009_hoppings,
)
from shibajax.models.tight_binding import (
    TightBindingModel,
    bdg_hamiltonian,
    electron_hamiltonian,
    from_hoppings,
    pairing_matrix,
)

__all__ = [
    "GRASER2009_FILLING",
    "GRASER2009_HOPPINGS",
    "GRASER2009_ONSITE",
    "PNICTIDE_GAPS",
    "SQUARE_GAPS",
    "TightBindingModel",
    "bdg_hamiltonian",
    "electron_hamiltonian",
    "from_hoppings",
    "graser2009",
    "graser2009_h0",
    "graser2009_hoppings",
    "pairing_matrix",
    "rashba_hopping",
    "square",
    "triangular",
]
