"""shibajax: a GPU-accelerated, differentiable, multi-orbital Shiba (Yu-Shiba-Rusinov) solver in JAX.

The pipeline reads model -> Brillouin zone -> Green's function -> T-matrix -> bound states:

    >>> import shibajax
    >>> model = shibajax.models.square(t=1.0, mu=-1.0, delta=0.3, rashba=0.4)
    >>> states = shibajax.bound_states(model, shibajax.Impurity(site=(0, 0), J=1.5), kgrid=(16, 16))

``import shibajax`` switches JAX to float64/complex128 (see docs/conventions.md).
"""

import importlib

from shibajax import (
    _precision,  # noqa: F401  (first: float64 before any array is made)
    _threads,
    adatoms,  # shibajax.adatoms.Adatom(...) after a plain import shibajax
    clusters,  # shibajax.clusters.helical_chain(...) likewise
    models,
)
from shibajax._compilation_cache import enable_compilation_cache
from shibajax.bands import band_structure, filling, high_symmetry_path, normal_state_dos
from shibajax.bound_states import (
    BoundStateBatch,
    BoundStates,
    bound_state_energies,
    bound_states,
    energies_of_potential,
)
from shibajax.brillouin_zone import gap_edge, monkhorst_pack
from shibajax.greens_function import greens_function
from shibajax.impurities import Channel, Impurity, impurity_potential
from shibajax.ray_mesh import physical_gap_bound_states
from shibajax.tmatrix import LDOS, greens_function_with_impurities, ldos, t_matrix

__version__ = "0.1.0"

_threads.limit_lapack_threads()  # one LAPACK thread inside XLA's CPU pool (see shibajax/_threads.py)

#: Subpackages and modules imported on first use as attributes (``shibajax.plotting.plot_bands``, ...), so that a
#: plain ``import shibajax`` reaches every name the README uses without importing matplotlib or the fitting code.
_LAZY_SUBMODULES = ("bands", "chains", "data", "fermi_shell", "fitting", "maps", "measurement", "plotting", "sweep")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"shibajax.{name}")
    raise AttributeError(f"module 'shibajax' has no attribute {name!r}")


__all__ = [
    "LDOS",
    "BoundStateBatch",
    "BoundStates",
    "Channel",
    "Impurity",
    "__version__",
    "adatoms",
    "band_structure",
    "bound_state_energies",
    "bound_states",
    "clusters",
    "enable_compilation_cache",
    "physical_gap_bound_states",
    "energies_of_potential",
    "filling",
    "gap_edge",
    "greens_function",
    "greens_function_with_impurities",
    "high_symmetry_path",
    "impurity_potential",
    "ldos",
    "models",
    "monkhorst_pack",
    "normal_state_dos",
    "t_matrix",
]
