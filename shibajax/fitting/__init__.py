"""Fits of impurity channels (K, J per channel), tip, temperature and broadening to measured spectra and to
tables of Shiba energies, by automatic differentiation with optax.

Pipeline: :func:`coupling_basis` (V linear in K, J) -> :func:`green_blocks` (G0 summed over the Brillouin zone
once) -> :class:`SpectrumModel` (fast LDOS + tip convolution) -> :class:`Dataset` / :class:`Problem` (joint
fits, shared and tied parameters) -> :func:`fit` (many starts, vmapped and sharded, L-BFGS or Adam, Laplace
errors) -> :func:`write_report` / :func:`plot_fit`. Peak-energy fits: :class:`ShibaEnergies` (implicitly
differentiated) and :class:`EnergyProblem`. Units and conventions: docs/conventions.md, "Fitting".
"""

from shibajax.fitting.energies import EnergyProblem, ShibaEnergies, positive_energies
from shibajax.fitting.fit import GOOD_MINIMUM, FitResult, fit, plot_fit, write_report
from shibajax.fitting.grid import Anchor, GridProblem, PixelModel, fit_grid
from shibajax.fitting.hosts import FitHost, adatom_couplings, fit_host
from shibajax.fitting.model import Dataset, Problem, SpectrumModel
from shibajax.fitting.one_call import EnergyFit, EnergySolution, fit_energies
from shibajax.fitting.optimise import MultiStart, laplace, minimize_adam, minimize_lbfgs, multistart
from shibajax.fitting.parameters import Parameter, ParameterSpace
from shibajax.fitting.spectrum import Couplings, GreenBlocks, coupling_basis, green_blocks, impurity_ldos
from shibajax.fitting.workflows import SpectrumFit, fit_spectrum

__all__ = [
    "GOOD_MINIMUM",
    "Anchor",
    "Couplings",
    "Dataset",
    "EnergyFit",
    "EnergyProblem",
    "EnergySolution",
    "FitHost",
    "FitResult",
    "GreenBlocks",
    "GridProblem",
    "MultiStart",
    "Parameter",
    "ParameterSpace",
    "PixelModel",
    "Problem",
    "ShibaEnergies",
    "SpectrumFit",
    "SpectrumModel",
    "adatom_couplings",
    "coupling_basis",
    "fit",
    "fit_grid",
    "fit_energies",
    "fit_host",
    "fit_spectrum",
    "green_blocks",
    "impurity_ldos",
    "laplace",
    "minimize_adam",
    "minimize_lbfgs",
    "multistart",
    "plot_fit",
    "positive_energies",
    "write_report",
]
