"""What an STM measures: tip and sample densities of states, tunnelling (NIS, SIS) with thermal and lock-in
broadening, tip calibration and deconvolution, and readers for measured spectra (Nanonis, Createc, CSV).

Units (docs/conventions.md): energies in meV, bias in mV (bias applied to the sample, e = 1), temperatures in
kelvin. Readers return bias in volts, as the files store it.
"""

from shibajax.measurement.deconvolution import (
    Deconvolution,
    SampleFit,
    TipCalibration,
    calibrate_tip,
    deconvolve,
    fit_sample_dos,
)
from shibajax.measurement.dos import DynesDOS, MultiGapDOS, NormalDOS, TabulatedDOS, dynes_dos
from shibajax.measurement.peaks import VISIBLE, ShibaPairs, in_gap_visibility, shiba_pairs
from shibajax.measurement.readers import (
    GridWarning,
    pixel_grid,
    read_grid,
    read_spectrum,
    sort_by_bias,
    to_image,
    write_spectrum_csv,
)
from shibajax.measurement.tunnelling import K_B_MEV_PER_K, current, didv, didv_kernel, fermi, model_spectrum

__all__ = [
    "K_B_MEV_PER_K",
    "VISIBLE",
    "Deconvolution",
    "DynesDOS",
    "GridWarning",
    "MultiGapDOS",
    "NormalDOS",
    "SampleFit",
    "ShibaPairs",
    "TabulatedDOS",
    "TipCalibration",
    "calibrate_tip",
    "current",
    "deconvolve",
    "fit_sample_dos",
    "in_gap_visibility",
    "didv",
    "didv_kernel",
    "dynes_dos",
    "fermi",
    "model_spectrum",
    "pixel_grid",
    "read_grid",
    "read_spectrum",
    "shiba_pairs",
    "sort_by_bias",
    "to_image",
    "write_spectrum_csv",
]
