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


class FitError(ShibajaxError):
    """A fit that cannot be set up as asked: unknown or inconsistent parameters, bounds, ties or data."""


class DataFileError(ShibajaxError):
    """A measured-data file that cannot be read as asked: malformed, truncated, or lacking the named channel.

    The message names the file, the line (text formats) and the problem, e.g.
    ``Spec001.dat: line 57: expected 7 columns, found 3``.
    """


class DOSParameterError(ShibajaxError):
    """A tip or sample density of states with impossible parameters (negative gap or broadening, bad weights)."""


class TunnellingError(ShibajaxError):
    """A tunnelling (dI/dV, I(V), lock-in) calculation that cannot be done as asked: negative temperature or
    lock-in amplitude, mismatched shapes, or a sample energy grid that is not uniform or does not cover the bias
    window plus the thermal and lock-in tails."""


class DeconvolutionError(ShibajaxError):
    """A tip calibration or deconvolution that cannot be set up as asked (unknown parameters, bad data)."""


class DataNotFoundError(ShibajaxError, FileNotFoundError):
    """The project's shared data folder (``reference/``, ``realdata/``) is not where it was looked for.

    Raised by :mod:`shibajax.data`; the message says where it looked and how to point at the data
    (``SHIBAJAX_DATA=/path/to/shared``). Also a ``FileNotFoundError``.
    """


class ParameterError(ShibajaxError):
    """A model parameter or an energy grid that is not what it must be: a string, a complex number, NaN or inf
    where a finite real number is needed (``mu="abc"``, ``t=1j``, ``energies=[nan]``). The message names the
    parameter, the bad value and the form expected."""


class OutputPathError(ShibajaxError):
    """An output path that cannot be written (a folder, no permission, a read-only disk): found before any work,
    and the message names the path."""


class MemoryLimitError(ShibajaxError):
    """A calculation whose estimated memory exceeds the limit: a fraction of the available host (or device) memory,
    or ``SHIBAJAX_MEMORY_LIMIT_GB``. Raised before anything is allocated or compiled; the message gives the
    estimate, the limit and what to reduce (the k-grid, ``chunk_size``, the number of energies or positions)."""
