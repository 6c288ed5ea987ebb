"""Errors raised by shibajax.

Every error names the bad value, the form that was expected and, where there is one, the cure
(see ``docs/conventions.md`` for the conventions the checks enforce).
"""

from __future__ import annotations


class ShibajaxError(ValueError):
    """Base class of shibajax input errors (a ``ValueError``, so ``except ValueError`` catches it)."""


class HermiticityError(ShibajaxError):
    """A tight-binding model whose hoppings violate T_{-d} = T_d^dagger."""


class PairingSymmetryError(ShibajaxError):
    """A singlet pairing whose form factors violate D_{-d} = D_d^T (Delta(k) = Delta(-k)^T)."""


class ShapeError(ShibajaxError):
    """Arrays whose shapes do not fit together."""


class ImpurityError(ShibajaxError):
    """An impurity that cannot be placed or coupled as asked."""


class NoGapError(ShibajaxError):
    """A bound-state search on a model with no (or a vanishing) superconducting gap."""


class BroadeningError(ShibajaxError):
    """A non-positive or non-finite broadening eta."""
