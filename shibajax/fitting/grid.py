"""Grid fits: every pixel of a measured grid of spectra fitted in one compiled call.

An STM grid is hundreds of spectra of the same impurity host, each with its own couplings. The host's G0 blocks
(:func:`~shibajax.fitting.green_blocks`) are summed over the Brillouin zone **once** and shared by every pixel;
each pixel has its own couplings (K_c, J_c per channel), scale, background and bias offset, while the temperature,
lock-in amplitude, host broadening eta and tip are the same for the whole grid (fixed; by default temperature
and lock-in from the grid's attrs, as ``shibajax fit`` takes them from the file header).

The loss of one pixel is written for one pixel (the residuals of :class:`~shibajax.fitting.Problem`) and lifted
over pixels x starts (``vmap`` on GPU/TPU, ``lax.map`` on CPU: ``optimise.batched_over_starts``), inside one
``jit`` per block of pixels whose pixel axis is sharded over all devices (``shard_map``, no communication
between devices). Per pixel, in that one call:

1. the impurity model from ``n_starts`` seeded starts (the same starts and stopping rule for every pixel, the
   optimisers of :func:`~shibajax.fitting.fit`), best start kept;
2. the bare model (no impurity: every coupling fixed at 0, only the instrument parameters free), the same way;
3. the Laplace errors of both (Hessian of chi^2 / 2 in the natural parameters, rescaled by the reduced chi^2 when
   no noise level is given, as :func:`~shibajax.fitting.fit`);
4. the Shiba energies of the fitted couplings: the in-gap roots of det[1 - V G0(E)] found by
   :class:`~shibajax.fitting.ShibaEnergies` on its own k-mesh (pass the one of the blocks: the same host), E_b the
   lowest positive one, its error from the implicit derivative dE_b/dx and the covariance, sigma_E^2 = g^T C g.

**Model comparison.** A pixel is class ``"shiba"`` when the impurity model lowers the Bayesian information
criterion by more than ``bic_threshold`` (default :data:`BIC_THRESHOLD` = 10):

    Delta BIC = chi^2_bare - chi^2 - (k - k_bare) ln n                (noise sigma given)
    Delta BIC = n ln(RSS_bare / RSS) - (k - k_bare) ln n              (sigma unknown: the Gaussian likelihood with
                                                                       sigma^2 at its maximum RSS / n)

with n points and k, k_bare free parameters. BIC rather than a chi^2 or F test: the impurity model's extra
couplings are not identifiable when there is no state (J -> 0 or a state merged with the coherence peak), where
the chi^2 and F distributions of nested models do not hold, and its ln n penalty grows with the number of points,
so that a dense spectrum cannot buy a "state" from small line-shape mismatches; Delta BIC > 10 is "very strong"
evidence (Kass & Raftery, J. Am. Stat. Assoc. 90, 773 (1995)). And the state must be in the gap: a pixel whose
impurity fit has no state below gap edge - ``in_gap_margin`` (default :func:`line_width`, the model's peak width) is
``"bare"`` whatever its chi^2. On bare Pb (mnpc_grid1 pixel 001) the free fit puts a state at the gap edge that
mimics Pb's second gap, missing from a single-gap host, and lowers the BIC by ~30-70 at 250-1000 points: a line-shape
mismatch, not a Shiba state. Bare pixels report the bare fit's instrument parameters and NaN couplings and E_b;
pixels with a NaN in the fitted window (or a normalisation that is not > 0) are ``"skipped"``, listed in
``attrs["skipped"]`` and a warning; pixels whose fits all ended non-finite are ``"failed"``.

**Bias offset.** dI/dV(V) = scale g(V - offset) + bg0 + bg1 V with g(s) = sum_j W(s, E_j) rho_s(E_j), the tunnelling
kernel W at fixed temperature, lock-in and tip (:class:`PixelModel`). With the offset fixed, W is computed once at
the measured biases (as :class:`~shibajax.fitting.SpectrumModel`, exact). With it free, W is computed once at the
grid's own energies, s = E_m, and g interpolated at V - offset by a Lagrange polynomial through
:data:`INTERPOLATION_NODES` grid points: g is thermally smoothed (features no narrower than ~k_B T), so this is
accurate to ~1e-10 relative at h ~ k_B T / 4 (1.06 K, h = 0.02 meV), and checked against the exact kernel when the
fit is set up (:data:`INTERPOLATION_TOL`); building the exact kernel at every step instead costs ~20x more. The
T-matrix of every step is inverted by ``shibajax._linalg.small_inv`` (plain array operations, vectorised over the
energies) instead of one LAPACK call per energy (~3x faster on CPU; the same numbers to rounding), in every fit.

**Output and checkpoints.** An ``xarray.Dataset`` on the grid's pixel coordinates (see :func:`fit_grid`), written to
NetCDF after every block of pixels (atomically: an interruption loses at most the block in progress). The file
holds a key of everything that fixes the results (sha256 of the data, of the G0 blocks and of the host and k-mesh
of the Shiba energies, the parameter spec, the starts, method, options, criterion and shibajax version): rerunning
with the same inputs skips the finished pixels and returns the Dataset of an uninterrupted run; a file written for
other inputs is refused with a :class:`~shibajax.errors.FitError` naming what differs (``restart=True`` discards it).

Peak-anchored mode (``mode="anchored"``, as :func:`~shibajax.fitting.anchored.fit_anchored`, per pixel and
vectorised over the pixels): see :func:`fit_grid`. Units: docs/conventions.md, "Fitting".
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from shibajax._files import write_netcdf_atomic
from shibajax._linalg import SMALL_R
from shibajax.errors import FitError
from shibajax.fitting.energies import ShibaEnergies
from shibajax.fitting.fit import GOOD_MINIMUM
from shibajax.fitting.model import Dataset, Problem, SpectrumModel
from shibajax.fitting.optimise import (
    _canonical,
    _sha256,
    _stepper,
    batched_over_starts,
    describe_differences,
)
from shibajax.fitting.parameters import Parameter, ParameterSpace
from shibajax.fitting.spectrum import t_matrix_trace

#: Lagrange interpolation of g(s) at s = V - offset through this many energy-grid points (even; centred).
INTERPOLATION_NODES = 12
#: Largest relative error max|g_interp - g_exact| / max|g_exact| accepted when a free-offset fit is set up: below
#: the tunnelling sums' own discretisation error at their resolution rule (h <= w / 2: 2e-3, measurement.tunnelling)
#: and the noise of any measured spectrum. Seen: 3e-11 at h = 0.02 meV, 8e-7 at h = 0.05 meV (1.06 K, 50 uV).
INTERPOLATION_TOL = 1e-4
#: Delta BIC above which a pixel is "shiba" (very strong evidence, Kass & Raftery 1995).
BIC_THRESHOLD = 10.0
#: Version of the NetCDF layout (part of the checkpoint key).
GRID_FORMAT = 1
#: The parameters shared by every pixel: they fix the tunnelling kernel and must be fixed.
SHARED = ("temperature", "lockin", "tip_delta", "tip_gamma")
#: Classes of a pixel.
CLASSES = ("shiba", "bare", "skipped", "failed")
MODES = ("free", "anchored")
#: Pixels per compiled call and device (the default ``block`` is this times the device count).
BLOCK_PER_DEVICE = 8


# ------------------------------------------------------------------------------------ the pixel model


def _lagrange(g: jax.Array, e0: float, h: float, s: jax.Array, nodes: int) -> jax.Array:
    """g (n_e,) sampled at e0 + j h, interpolated at s (n,) by the Lagrange polynomial through ``nodes`` points
    centred on each s (piecewise polynomial, continuous in s; its derivative in s is that of the polynomial)."""
    half = nodes // 2
    offsets = np.arange(-half + 1, half + 1)  # (nodes,)
    t = (s - e0) / h
    i0 = jnp.clip(jnp.floor(t), half - 1, g.shape[0] - half - 1)
    u = t - i0  # in [0, 1) inside the table
    i0 = jax.lax.stop_gradient(i0).astype(int)
    diff = u[:, None] - offsets[None, :]  # (n, nodes)
    denom = np.array([np.prod([k - m for m in offsets if m != k]) for k in offsets], float)
    eye = np.eye(nodes, dtype=bool)
    num = jnp.prod(jnp.where(eye[None, :, :], 1.0, diff[:, None, :]), axis=-1)  # prod over m != k
    return jnp.sum(num / denom * g[i0[:, None] + offsets[None, :]], axis=-1)


class PixelArrays(NamedTuple):
    """The arrays of a pixel model, passed to compiled code as arguments (new values of the same shapes, e.g.
    another host or temperature, reuse the compiled fit): G0 blocks g_imp (n_E, R, R), weights (n_E, n_pos, R, R),
    bare_trace (n_E, n_pos), coupling basis (n_c, R, R), the tunnelling kernel ((n_E, n_E) table or (n_v, n_E)),
    bias (n_v,) mV, normal_dos, and the energy grid's first point e0 and step h (meV)."""

    g_imp: jax.Array
    weights: jax.Array
    bare_trace: jax.Array
    basis: jax.Array
    kernel: jax.Array
    bias: jax.Array
    normal_dos: jax.Array
    e0: jax.Array
    h: jax.Array


def _evaluate(a: PixelArrays, values: Mapping, *, names, position: int, shifted: bool, nodes: int) -> jax.Array:
    """dI/dV (n_v,) of :class:`PixelModel` from its arrays and the parameter values by name."""
    theta = jnp.stack([jnp.asarray(values[n], jnp.float64) for n in names])
    v = jnp.einsum("c,crs->rs", theta.astype(jnp.complex128), a.basis)  # Couplings.potential
    trace = t_matrix_trace(v, a.g_imp, a.weights)  # small_inv for R <= SMALL_R
    rho = -(a.bare_trace + trace).imag[:, position] / jnp.pi / a.normal_dos
    g = a.kernel @ rho
    if shifted:
        g = _lagrange(g, a.e0, a.h, a.bias - values["offset"], nodes)
    return values["scale"] * g + values["bg0"] + values["bg1"] * a.bias


@dataclasses.dataclass(frozen=True)
class PixelModel:
    """dI/dV of one pixel: a :class:`~shibajax.fitting.SpectrumModel` with its kernel computed once per grid.

    dI/dV(V) = scale g(V - offset) + bg0 + bg1 V,   g(s) = sum_j W(s, E_j) rho_s(E_j),

    with W the kernel of ``measurement.tunnelling.didv_kernel`` at the shared temperature, lock-in and tip, and
    rho_s the T-matrix LDOS of the G0 blocks (inverse by :func:`small_inv` for R <= :data:`SMALL_R`, the same
    numbers as SpectrumModel to rounding). ``shifted=False`` (a fixed offset): W at the measured biases V - offset,
    exactly SpectrumModel. ``shifted=True`` (a free offset): W at the biases s = E_m of the blocks' own energy grid,
    an (n_E, n_E) table, and g interpolated at V - offset through ``nodes`` grid points (:func:`_lagrange`); rows
    whose Fermi window the grid does not cover are 0 (not NaN: reverse-mode derivatives multiply every row by its
    cotangent), so V - offset must stay inside the :meth:`covered` rows, which :class:`GridProblem` checks for the
    offset's bounds. The parameter names and call of SpectrumModel, so it goes into
    :class:`~shibajax.fitting.Dataset` and :class:`~shibajax.fitting.Problem` unchanged (with ``shifted``,
    ``kernel_parameters`` no longer holds "offset": a fit with a free offset still computes its kernel once).

    Attributes:
        spectrum: the SpectrumModel (G0 blocks, tip position, tip kind). shifted: see above. nodes: even, >= 4.
    """

    spectrum: SpectrumModel
    shifted: bool = True
    nodes: int = INTERPOLATION_NODES

    def __post_init__(self):
        if not (isinstance(self.nodes, int) and self.nodes >= 4 and self.nodes % 2 == 0):
            raise FitError(f"nodes = {self.nodes!r} must be an even integer >= 4 (interpolation points)")

    @property
    def blocks(self):
        return self.spectrum.blocks

    @property
    def tip(self) -> str:
        return self.spectrum.tip

    @property
    def position(self) -> int:
        return self.spectrum.position

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return self.spectrum.parameter_names

    @property
    def normal_dos(self) -> float:
        return self.spectrum.normal_dos

    @property
    def kernel_parameters(self) -> tuple[str, ...]:
        names = self.spectrum.kernel_parameters
        return tuple(n for n in names if n != "offset") if self.shifted else names

    @property
    def static(self) -> dict:
        """The static arguments of :func:`_evaluate`."""
        names = self.blocks.couplings.names
        return {"names": names, "position": int(self.position), "shifted": bool(self.shifted), "nodes": self.nodes}

    def arrays(self, kernel, bias) -> PixelArrays:
        """The :class:`PixelArrays` of this model with ``kernel`` (from :meth:`kernel`) at ``bias`` (n_v,) mV."""
        b = self.blocks
        e = b.energies
        return PixelArrays(
            b.g_imp, b.weights, b.bare_trace, b.couplings.basis, jnp.asarray(kernel), jnp.asarray(bias, jnp.float64),
            jnp.asarray(self.normal_dos), jnp.asarray(float(e[0])), jnp.asarray(float(e[1] - e[0])),
        )  # fmt: skip

    def sample_dos(self, values: Mapping[str, jax.Array]) -> jax.Array:
        """rho_s(E) (n_E,) normalised to the bare normal-state value, as SpectrumModel.sample_dos (the identity
        kernel of :func:`_evaluate` with scale 1 and no background)."""
        n = self.blocks.energies.size
        a = self.arrays(jnp.eye(n), jnp.zeros(n))
        static = self.static | {"shifted": False}
        return _evaluate(a, dict(values) | {"scale": 1.0, "bg0": 0.0, "bg1": 0.0}, **static)

    def covered(self, values: Mapping[str, float]) -> np.ndarray:
        """(n_E,) bool: the energies E_m whose Fermi window (8 k_B T plus the lock-in amplitude, the rule of
        ``measurement.tunnelling``) lies inside the energy grid, i.e. the rows of the shifted table."""
        from shibajax.measurement.tunnelling import COVERAGE_KT, K_B_MEV_PER_K

        e = self.blocks.energies
        tail = COVERAGE_KT * K_B_MEV_PER_K * float(values["temperature"]) + math.sqrt(2.0) * float(values["lockin"])
        tail *= 1.0 + 1e-9
        return (np.minimum(0.0, e) - tail >= e[0]) & (np.maximum(0.0, e) + tail <= e[-1])

    def kernel(self, values: Mapping[str, float], bias=None) -> jax.Array:
        """Shifted: the (n_E, n_E) table, row m the kernel at bias s = E_m (0 where not covered; ``bias`` unused).
        Else SpectrumModel.kernel: (n_v, n_E) at bias - offset."""
        if not self.shifted:
            return jnp.asarray(self.spectrum.kernel(values, bias))
        e = self.blocks.energies
        rows = np.flatnonzero(self.covered(values))
        table = np.zeros((e.size, e.size))
        if rows.size:
            table[rows] = np.asarray(self.spectrum.kernel(dict(values) | {"offset": 0.0}, e[rows]))
        return jnp.asarray(table)

    def __call__(self, values: Mapping[str, jax.Array], bias: jax.Array, kernel=None) -> jax.Array:
        """dI/dV (n_v,) at bias (n_v,) mV (``kernel``: from :meth:`kernel`, computed once)."""
        if kernel is None:
            kernel = self.kernel({n: values[n] for n in self.kernel_parameters}, bias)
        return _evaluate(self.arrays(kernel, bias), values, **self.static)


# ------------------------------------------------------------------------------------ the grid as data


def _pixel_layout(grid) -> tuple[np.ndarray, np.ndarray, dict, str]:
    """(bias (n_v,) in mV, didv (P, n_v), coords {name: (P,) array}, bias units) from a grid Dataset."""
    import xarray as xr

    if not isinstance(grid, xr.Dataset):
        raise FitError(f"grid must be an xarray.Dataset with a 'didv' variable; got {type(grid).__name__}")
    if "didv" not in grid.data_vars:
        raise FitError(f"grid has no 'didv' variable (it has {sorted(grid.data_vars)}); read it with read_grid")
    if "bias" not in grid.coords:
        raise FitError("grid has no 'bias' coordinate (volts): the spectra need their bias axis")
    didv = grid["didv"]
    dims = didv.dims
    coords = {}
    if dims == ("pixel", "bias") or set(dims) == {"pixel", "bias"}:
        didv = didv.transpose("pixel", "bias")
        n = didv.sizes["pixel"]
        for name, c in grid.coords.items():
            if c.dims == ("pixel",):
                coords[name] = np.asarray(c.values)
        coords.setdefault("pixel", np.arange(n))
    elif set(dims) == {"y", "x", "bias"}:
        didv = didv.transpose("y", "x", "bias")
        ny, nx = didv.sizes["y"], didv.sizes["x"]
        row, col = np.divmod(np.arange(ny * nx), nx)
        coords = {"pixel": np.arange(ny * nx), "row": row, "col": col}
        for name, c in grid.coords.items():
            if c.dims == ("y",):
                coords[name] = np.asarray(c.values)[row]
            elif c.dims == ("x",):
                coords[name] = np.asarray(c.values)[col]
            elif set(c.dims) == {"y", "x"}:
                coords[name] = np.asarray(c.transpose("y", "x").values).reshape(-1)
        didv = didv.values.reshape(ny * nx, -1)
    else:
        raise FitError(
            f"grid didv has dims {dims}; fit_grid takes (pixel, bias) or (y, x, bias) (read_grid gives either)"
        )
    units = str(grid["bias"].attrs.get("units", "V"))
    scale = {"V": 1e3, "mV": 1.0}.get(units)
    if scale is None:
        raise FitError(f"grid bias has units {units!r}; give it in 'V' (as read_grid does) or 'mV'")
    bias = np.asarray(grid["bias"].values, float) * scale
    if bias.ndim != 1:
        raise FitError(f"grid bias must be one axis shared by every pixel; got shape {bias.shape}")
    return bias, np.asarray(getattr(didv, "values", didv), float), coords, units


def _normalise(data: np.ndarray) -> np.ndarray:
    """Per pixel, the mean of the outer 10 % of the window on each side (the rule of ``shibajax fit``)."""
    n = max(1, data.shape[-1] // 10)
    return 0.5 * (data[..., :n].mean(-1) + data[..., -n:].mean(-1))


DEFAULT_PARAMS = {
    "scale": {"value": 1.0, "lower": 0.2, "upper": 5.0},
    "offset": {"value": 0.0, "lower": -0.1, "upper": 0.1},
    "bg0": {"value": 0.0},
    "bg1": {"value": 0.0, "fixed": True},
}


class GridProblem:
    """A grid of spectra prepared for :func:`fit_grid`: data (normalised per pixel), parameters and the pixel model.

    Args:
        grid: ``xarray.Dataset`` with ``didv`` (pixel, bias) or (y, x, bias) and a ``bias`` coordinate in V (as
            ``measurement.read_grid``); attrs ``temperature_K`` and ``lockin_amplitude_V`` give the defaults of
            the shared temperature and lock-in.
        model: the :class:`~shibajax.fitting.SpectrumModel` (its G0 blocks and tip) of every pixel.
        params: {name: Parameter spec} of one pixel (the same start values and bounds for every pixel): the
            couplings (required), and any of scale, offset, bg0, bg1 (defaults :data:`DEFAULT_PARAMS`),
            temperature and lockin (default: fixed at the attrs' values), tip_delta, tip_gamma (Dynes tip).
            The shared ones (:data:`SHARED`) must be fixed.
        sigma: noise per point in the grid's didv units: a number, (n_bias,) on the grid's bias axis as given, or
            (P, n_bias) per pixel; windowed and sorted with the data and divided by each pixel's normalisation;
            None: unknown (errors rescaled by the reduced chi^2).
        bias_window: (lo, hi) mV; default the whole bias axis.
        normalise: divide each pixel by its mean over the outer 10 % of the window on each side.

    Attributes:
        bias (n_v,) mV, sorted; data (P, n_v) as fitted; sigma (P, n_v); norm (P,); fitted (P,) bool;
        skipped {pixel index: reason}; space, bare_space; pixel_model; kernel; coords.
    """

    def __init__(self, grid, model: SpectrumModel, params: Mapping, *, sigma=None, bias_window=None, normalise=True):
        if not isinstance(model, SpectrumModel):
            raise FitError(f"model must be a SpectrumModel (G0 blocks and tip); got {type(model).__name__}")
        bias, raw, coords, _ = _pixel_layout(grid)
        n_axis = bias.size
        order = np.argsort(bias, kind="stable")
        bias, raw = bias[order], raw[:, order]
        keep = np.ones(bias.size, bool)
        if not np.all(np.isfinite(bias)):
            raise FitError("grid bias has non-finite values")
        if bias_window is not None:
            lo, hi = (float(v) for v in bias_window)
            if not lo < hi:
                raise FitError(f"bias_window = {bias_window!r} must be (lo, hi) with lo < hi (mV)")
            keep = (bias >= lo) & (bias <= hi)
            if keep.sum() < 10:
                raise FitError(
                    f"only {int(keep.sum())} biases lie in bias_window = {bias_window!r} mV (the grid covers "
                    f"[{bias.min():.4g}, {bias.max():.4g}] mV); widen it"
                )
            bias, raw = bias[keep], raw[:, keep]
        self.grid_attrs = dict(grid.attrs)
        self.coords = coords
        self.n_pixels = raw.shape[0]
        self.names = np.asarray(coords.get("name", [f"pixel {i}" for i in range(self.n_pixels)])).astype(str)
        self.bias = bias
        self.raw = raw
        self.normalised = bool(normalise)
        self.skipped: dict[int, str] = {}
        finite = np.isfinite(raw)
        for i in np.flatnonzero(~finite.all(axis=1)):
            self.skipped[int(i)] = f"{int((~finite[i]).sum())} non-finite didv value(s) in the window"
        good = finite.all(axis=1)
        norm = np.ones(self.n_pixels)
        if normalise:
            with np.errstate(invalid="ignore"):
                norm = _normalise(np.where(finite, raw, np.nan))
            for i in np.flatnonzero(good & ~(np.isfinite(norm) & (norm > 0))):
                self.skipped[int(i)] = f"normalisation (outer 10 % mean) = {norm[i]:.4g}, not > 0"
            good &= np.isfinite(norm) & (norm > 0)
        self.norm = np.where(good, norm, np.nan)
        self.fitted = good
        self.data = np.where(good[:, None], raw / np.where(good, norm, 1.0)[:, None], np.nan)
        if sigma is None:
            self.sigma_given = False
            self.sigma = np.ones_like(raw)
        else:
            s = np.asarray(sigma, float)
            if s.ndim > 2 or (s.ndim >= 1 and s.shape[-1] != n_axis) or (s.ndim == 2 and s.shape[0] != self.n_pixels):
                raise FitError(
                    f"sigma has shape {s.shape}; give a number, ({n_axis},) on the grid's bias axis or "
                    f"({self.n_pixels}, {n_axis}) per pixel (noise per point in the grid's didv units)"
                )
            if s.ndim:
                s = s[..., order][..., keep]  # the data's order and window
            s = np.broadcast_to(s, raw.shape)
            if not np.all((s > 0) | ~good[:, None]):
                raise FitError("sigma must be > 0 (noise per point, in the grid's didv units)")
            self.sigma_given = True
            self.sigma = s / np.where(good, norm, 1.0)[:, None]
        self.sigma_key = None if sigma is None else _sha256(np.asarray(sigma, float))
        self.params = self._resolve(model, params)
        self.space = ParameterSpace(self.params)
        free = [n for n in SHARED if n in self.space.params and not self.space.is_constant(n)]
        if free:
            raise FitError(
                f"{free[0]} is shared by every pixel of the grid (it fixes the tunnelling kernel) and must be "
                f"fixed: set {free[0]} = {{value = ..., fixed = true}} (fit it on one spectrum first)"
            )
        couplings = model.blocks.couplings.names
        self.couplings = couplings
        bare = {n: Parameter(0.0, fixed=True) if n in couplings else p for n, p in self.space.params.items()}
        for n, p in bare.items():
            if p.tie in couplings:
                raise FitError(f"parameter {n!r} is tied to the coupling {p.tie!r}: the bare model has no couplings")
        self.bare_space = ParameterSpace(bare)
        self.model = model
        self.pixel_model = PixelModel(model, shifted=not self.space.is_constant("offset"))
        fixed = self.space.values_from_natural(jnp.zeros(self.space.n_free))
        self.shared = {n: float(fixed[n]) for n in SHARED if n in fixed}
        kernel_values = {n: float(fixed[n]) for n in self.pixel_model.kernel_parameters}  # a fixed offset too
        self.kernel = jnp.asarray(self.pixel_model.kernel(kernel_values, self.bias))
        if self.pixel_model.shifted:
            self._check_table(fixed)
        self.arrays = self.pixel_model.arrays(self.kernel, self.bias)

    def _resolve(self, model: SpectrumModel, params: Mapping) -> dict:
        if not isinstance(params, Mapping):
            raise FitError(f"params must be a mapping {{name: spec}}; got {type(params).__name__}")
        out = {n: Parameter.of(v) for n, v in DEFAULT_PARAMS.items()}
        temperature = float(self.grid_attrs.get("temperature_K", np.nan))
        lockin = float(self.grid_attrs.get("lockin_amplitude_V", np.nan)) * 1e3
        for name, value, unit, strict in (("temperature", temperature, "K", True), ("lockin", lockin, "rms mV", False)):
            if name in params:
                continue
            if not np.isfinite(value) or value < 0 or (strict and value == 0):
                attr = "temperature_K" if name == "temperature" else "lockin_amplitude_V"
                raise FitError(
                    f"the grid's attrs give {attr} = {self.grid_attrs.get(attr)!r}, so {name} has no default: "
                    f"give params[{name!r}] = {{'value': ..., 'fixed': True}} ({unit})"
                )
            out[name] = Parameter(value, fixed=True)
        out |= {str(n): Parameter.of(v) for n, v in params.items()}
        names = set(model.parameter_names)
        missing = sorted(names - set(out))
        if missing:
            raise FitError(f"params must give {missing} (start value and bounds, e.g. {{'value': 1.0, 'lower': ...}})")
        unknown = sorted(set(out) - names)
        if unknown:
            raise FitError(f"unknown parameters {unknown}; the model's are {sorted(names)}")
        return {n: out[n] for n in model.parameter_names}

    def _check_table(self, fixed):
        """The shifted biases must lie inside the table, and the interpolation be accurate (vs the exact kernel)."""
        p = self.space.params["offset"]
        if p.tie is not None:
            p = self.space.params[p.tie]
        if not (np.isfinite(p.lower) and np.isfinite(p.upper)):
            raise FitError(
                "offset is free without bounds: give it lower and upper bounds (mV), e.g. "
                "{'value': 0.0, 'lower': -0.1, 'upper': 0.1}, so that the kernel table covers every shifted bias"
            )
        e = self.model.blocks.energies
        h = float(e[1] - e[0])
        rows = e[self.pixel_model.covered(self.shared)]
        half = self.pixel_model.nodes // 2
        lo, hi = self.bias.min() - p.upper, self.bias.max() - p.lower
        if rows.size == 0 or lo - (half - 1) * h < rows[0] - 1e-9 or hi + half * h > rows[-1] + 1e-9:
            span = (rows[0], rows[-1]) if rows.size else "none"
            raise FitError(
                f"the bias window [{self.bias.min():.4g}, {self.bias.max():.4g}] mV shifted by the offset bounds "
                f"({p.lower}, {p.upper}) needs the kernel at biases [{lo - (half - 1) * h:.4g}, {hi + half * h:.4g}] "
                f"mV, but the energy grid of the G0 blocks covers the Fermi window of only {span}: extend the blocks' "
                "energies (or narrow bias_window)"
            )
        values = {n: jnp.asarray(v) for n, v in fixed.items()}
        test = np.linspace(lo, hi, rows.size)  # the table's shape: the kernel's compiled code is reused
        exact = np.asarray(self.model.kernel(self.shared | {"offset": 0.0}, test) @ self.model.sample_dos(values))
        g = self.kernel @ self.model.sample_dos(values)
        approx = np.asarray(_lagrange(g, float(e[0]), h, jnp.asarray(test), self.pixel_model.nodes))
        err = float(np.max(np.abs(approx - exact)) / max(np.max(np.abs(exact)), 1e-300))
        self.interpolation_error = err
        if not err <= INTERPOLATION_TOL:
            raise FitError(
                f"the kernel interpolation in the bias offset is off by {err:.2g} (relative) on this energy grid "
                f"(step {h:.4g} meV at T = {self.shared.get('temperature')} K): use a finer energy grid for the G0 "
                f"blocks (error ~ step^{self.pixel_model.nodes // 2}), or fix the offset"
            )

    # ---------------------------------------------------------------------------------- one pixel

    def residuals(self, space: ParameterSpace, arrays: PixelArrays, u, data, sigma) -> jax.Array:
        """Weighted residuals (n_v,) of one pixel at unconstrained u (n_free of ``space``): Problem.residuals."""
        return self.residuals_natural(space, arrays, space.to_natural(u), data, sigma)

    def residuals_natural(self, space: ParameterSpace, arrays: PixelArrays, x, data, sigma) -> jax.Array:
        return (self.predict(space, arrays, x) - data) / sigma

    def predict(self, space: ParameterSpace, arrays: PixelArrays, x) -> jax.Array:
        """The model (n_v,) at natural free values x (the arithmetic of PixelModel, from ``arrays``)."""
        values = space.values_from_natural(x)
        return _evaluate(arrays, {n: values[n] for n in self.pixel_model.parameter_names}, **self.pixel_model.static)

    def problem(self, pixel: int, *, bare: bool = False) -> Problem:
        """The single-spectrum :class:`~shibajax.fitting.Problem` of one pixel: the same model, data and parameters
        (``bare``: the couplings fixed at 0), e.g. to refit it with :func:`~shibajax.fitting.fit` and plot it."""
        if not self.fitted[pixel]:
            raise FitError(f"pixel {pixel} ({self.names[pixel]}) is skipped: {self.skipped.get(pixel)}")
        sigma = self.sigma[pixel] if self.sigma_given else None
        ds = Dataset(self.pixel_model, self.bias, self.data[pixel], sigma=sigma, label=str(self.names[pixel]))
        return Problem(ds, self.bare_space if bare else self.space)

    def key(self) -> dict:
        """What of the data, model and parameters fixes the results (for the checkpoint key)."""
        blocks = self.model.blocks
        return {
            "grid": {
                "bias": {"sha256": _sha256(self.bias)},
                "didv": {"sha256": _sha256(self.raw)},
                "sigma": {"sha256": self.sigma_key or "none"},
                "pixels": int(self.n_pixels),
                "normalise": self.normalised,
            },
            "model": {
                "blocks": {
                    "sha256": _sha256_many(
                        blocks.energies, blocks.g_imp, blocks.weights, blocks.bare_trace, blocks.couplings.basis,
                        blocks.positions,
                    ),
                    "eta": float(blocks.eta),
                },
                "couplings": list(blocks.couplings.names),
                "tip": self.model.tip,
                "position": int(self.model.position),
                "interpolation": self.pixel_model.nodes if self.pixel_model.shifted else 0,
                "small_inverse": SMALL_R,
            },
            "parameters": {
                n: {"value": p.value, "lower": p.lower, "upper": p.upper, "fixed": p.fixed, "tie": p.tie}
                for n, p in self.space.params.items()
            },
        }  # fmt: skip


def _sha256_many(*arrays) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        h.update(_sha256(np.asarray(a)).encode())
    return h.hexdigest()


def _shiba_key(shiba: ShibaEnergies | None) -> dict | str:
    if shiba is None:
        return "none"
    mesh = shiba.kgrid
    mesh_key = list(mesh) if isinstance(mesh, tuple) else {"sha256": _sha256_many(mesh.points, mesh.weights)}
    leaves, treedef = jax.tree.flatten(shiba.model)
    return {
        "host": {"sha256": _sha256_many(*[np.asarray(x) for x in leaves]), "structure": str(treedef)},
        "kgrid": mesh_key,
        "couplings": {"sha256": _sha256(shiba.couplings.basis)},
        "tol": shiba.tol,
    }


# ------------------------------------------------------------------------------------ the compiled block


def _lift(fn):
    return batched_over_starts(fn)


def _best_of(loss):
    """Index of the best start per pixel (first minimum among finite losses, as FitResult) and the good count."""
    fin = jnp.isfinite(loss)
    masked = jnp.where(fin, loss, jnp.inf)
    best = jnp.argmin(masked, axis=1)
    f_best = jnp.take_along_axis(masked, best[:, None], axis=1)[:, 0]
    good = fin & (loss - f_best[:, None] <= GOOD_MINIMUM[0] + GOOD_MINIMUM[1] * jnp.abs(f_best[:, None]))
    return best, f_best, jnp.sum(good, axis=1)


def _fit_block(gp: GridProblem, space, arrays, starts, method, options, data, sigma):
    """Every (pixel, start) pair of a block: best start per pixel, its natural values, loss, Hessian, model."""
    n_s = starts.shape[0]
    n_pix = data.shape[0]

    def one(i):
        d, s = data[i // n_s], sigma[i // n_s]
        res = functools.partial(gp.residuals, space, arrays, data=d, sigma=s)
        objective = res if method == "lm" else (lambda u: 0.5 * jnp.sum(res(u) ** 2))
        stepper = _stepper(objective, method, options)
        state = stepper.advance(stepper.init(starts[i % n_s]), stepper.max_iter)
        u, f, it = stepper.result(state)
        return u, f, it, stepper.count(state)

    u, f, it, count = _lift(one)(jnp.arange(n_pix * n_s))
    u = u.reshape(n_pix, n_s, -1)
    f, it, count = (a.reshape(n_pix, n_s) for a in (f, it, count))
    best, f_best, n_good = _best_of(f)
    pick = lambda a: jnp.take_along_axis(a, best[:, None], axis=1)[:, 0]  # noqa: E731
    x = space.to_natural(jnp.take_along_axis(u, best[:, None, None], axis=1)[:, 0])

    def post(args):
        xi, d, s = args

        def loss_natural(y):
            r = gp.residuals_natural(space, arrays, y, d, s)
            return 0.5 * jnp.sum(r * r)

        return jax.hessian(loss_natural)(xi), gp.predict(space, arrays, xi)

    hess, pred = _lift(post)((x, data, sigma))
    return {"x": x, "loss": f_best, "n_good": n_good, "iterations": pick(it), "count": pick(count), "hess": hess,
            "model": pred}  # fmt: skip


class _ShibaLevels:
    """theta (B, n_c) -> positive in-gap energies (B, n_levels), ascending, NaN-padded, and dE_b/dtheta (B, n_c) of
    the lowest one (E_b): :class:`ShibaEnergies` (implicit derivatives, one tangent per coupling from one
    linearisation), one compiled call per block for the free and the anchored couplings alike."""

    def __init__(self, shiba: ShibaEnergies):
        n_levels = shiba.couplings.basis.shape[-1] // 2

        def lowest(theta):
            e = shiba(theta)
            pos = jnp.where(jnp.isfinite(e) & (e > 0), e, jnp.inf)
            return jnp.min(pos), jnp.sort(pos)[:n_levels]

        def one(theta):
            (e_b, levels), lin = jax.linearize(lowest, theta)
            eye = jnp.eye(theta.shape[0], dtype=theta.dtype)
            grad = jax.lax.map(lambda v: lin(v)[0], eye)  # one tangent per coupling (no vmap of LAPACK calls)
            levels = jnp.where(jnp.isfinite(levels), levels, jnp.nan)
            return levels, jnp.where(jnp.isfinite(e_b), grad, jnp.nan)

        self._fn = jax.jit(_lift(one))

    def __call__(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bad = ~np.all(np.isfinite(theta), axis=-1)
        levels, grad = (np.array(a) for a in self._fn(jnp.asarray(np.where(bad[:, None], 0.0, theta))))
        levels[bad], grad[bad] = np.nan, np.nan
        return levels, grad


def _coupling_values(gp: GridProblem, space: ParameterSpace, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """theta (B, n_c) of natural free values x (B, n_free), and d theta / dx (n_c, n_free) (0 or 1: the natural
    values are copied, ties followed)."""
    values = _parameter_values(gp, space, x, np.zeros_like(x))
    theta = np.stack([values[n][0] for n in gp.couplings], axis=1)
    jac = np.zeros((len(gp.couplings), space.n_free))
    for c, n in enumerate(gp.couplings):
        target = space.params[n].tie or n
        if target in space.free:
            jac[c, space.free.index(target)] = 1.0
    return theta, jac


def _program(gp: GridProblem, method, options, mesh):
    """The jitted block function (arrays, starts, bare starts, data (B, n_v), sigma (B, n_v)) -> dict of per-pixel
    results; the pixel axis sharded with shard_map when ``mesh`` is given (the rest replicated). Host arrays, starts,
    data and noise are arguments: any grid with the same shapes, parameter spaces and settings reuses it."""

    def local(arrays, starts, bare_starts, data, sigma):
        out = {"imp": _fit_block(gp, gp.space, arrays, starts, method, options, data, sigma)}
        out["bare"] = _fit_block(gp, gp.bare_space, arrays, bare_starts, method, options, data, sigma)
        return out

    if mesh is None:
        return jax.jit(local)
    spec, rep = jax.sharding.PartitionSpec("pixels"), jax.sharding.PartitionSpec()
    shard = jax.shard_map(local, mesh=mesh, in_specs=(rep, rep, rep, spec, spec), out_specs=spec, check_vma=False)
    return jax.jit(shard)


_PROGRAMS: dict = {}


def _compiled(key_json: str, build: Callable):
    """The block program (and the anchoring's compiled pieces), kept for the last few keys: a resumed run in the
    same session compiles nothing."""
    if key_json not in _PROGRAMS:
        if len(_PROGRAMS) >= 8:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
        _PROGRAMS[key_json] = build()
    return _PROGRAMS[key_json]


# ------------------------------------------------------------------------------------ host-side statistics


def _covariance(hess: np.ndarray, rescale: np.ndarray) -> np.ndarray:
    """(B, n, n) inverse of the symmetrised Hessians times rescale (B,); a singular one gives inf (as laplace)."""
    h = 0.5 * (hess + np.swapaxes(hess, -1, -2))
    try:
        cov = np.linalg.inv(h)
    except np.linalg.LinAlgError:
        cov = np.empty_like(h)
        for i, hi in enumerate(h):  # only on a singular Hessian in the block: the rest stay exact
            try:
                cov[i] = np.linalg.inv(hi)
            except np.linalg.LinAlgError:
                cov[i] = np.inf
    return cov * rescale[:, None, None]


def _errors(cov: np.ndarray) -> np.ndarray:
    var = np.diagonal(cov, axis1=-2, axis2=-1)
    with np.errstate(invalid="ignore"):
        return np.sqrt(np.where(var > 0, var, np.inf))


def delta_bic(chi2: np.ndarray, chi2_bare: np.ndarray, n_points: int, extra: int, sigma_given: bool) -> np.ndarray:
    """BIC(bare) - BIC(impurity): > 0 favours the impurity (see the module docstring for the two forms)."""
    penalty = extra * math.log(n_points)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = chi2_bare - chi2 if sigma_given else n_points * np.log(chi2_bare / chi2)
    return gain - penalty


# ------------------------------------------------------------------------------------ peak-anchored mode


@dataclasses.dataclass(frozen=True)
class Anchor:
    """Settings of the peak-anchored mode (``fit_grid(mode="anchored")``, per pixel as
    :func:`~shibajax.fitting.anchored.fit_anchored`).

    Attributes:
        search: (lo, hi) mV, the |bias| interval of each peak of the pair (``measurement.peaks.shiba_pair``).
        half_width: mV, half width of the parabola through each peak top (>= 5 points of the fitted data).
        scan, solve: the coupling fitted to the line shape (K) and the one solved from E(K, J) = E_b (J); the other
            couplings stay at the free fit's values.
        grid: values of ``scan`` for the profile (meV). sign: the sign of ``solve`` (J > 0 by convention).
        branch: which branch of solve(scan) (0: smallest |J|); None: per pixel, the branch of lowest grid chi^2.
        retry: pixels whose pair is not found with ``half_width`` (a flat or doubled top, where the parabola opens
            upwards) are tried once more with ``retry * half_width``.
    """

    search: tuple = (0.2, 1.0)
    half_width: float = 0.03
    scan: str = "K_0"
    solve: str = "J_0"
    grid: tuple = tuple(np.linspace(-30.0, 30.0, 61))
    sign: int = 1
    branch: int | None = None
    retry: float = 5.0 / 3.0

    def key(self) -> dict:
        return {
            "search": [float(v) for v in self.search],
            "half_width": float(self.half_width),
            "scan": self.scan,
            "solve": self.solve,
            "grid": {"sha256": _sha256(np.asarray(self.grid, float))},
            "sign": int(self.sign),
            "branch": self.branch,
            "retry": float(self.retry),
        }


#: Golden-section steps of the anchored refinement: the bracket shrinks to 0.618^30 ~ 5e-7 of its width, the
#: tolerance of fit_anchored's bounded Brent search (1e-6 of the bracket).
GOLDEN_STEPS = 30
LINEAR = ("scale", "bg0", "bg1")


def _spectra_of(arrays: PixelArrays, theta, offset, *, static):
    """Model spectra (N, n_v) with scale 1 and no background at couplings theta (N, n_c) and offsets (N,)."""

    def one(args):
        th, off = args
        values = {"scale": 1.0, "bg0": 0.0, "bg1": 0.0, "offset": off}
        return _evaluate(arrays, values | {n: th[i] for i, n in enumerate(static["names"])}, **static)

    return _lift(one)((theta, offset))


class _Anchoring:
    """The vectorised peak-anchored fit of a block of pixels (see :func:`fit_grid`); compiled pieces cached."""

    def __init__(self, gp: GridProblem, shiba: ShibaEnergies, anchor: Anchor, block: int):
        names = shiba.couplings.names
        for n in (anchor.scan, anchor.solve):
            if n not in names:
                raise FitError(f"anchor {n!r} is not a coupling of the model: {list(names)}")
        if anchor.scan == anchor.solve:
            raise FitError(f"anchor scan and solve must be two couplings; both are {anchor.scan!r}")
        if anchor.sign not in (-1, 1):
            raise FitError(f"anchor sign = {anchor.sign!r} must be +1 or -1 (the sign of {anchor.solve})")
        grid = np.asarray(anchor.grid, float)
        if grid.ndim != 1 or grid.size < 3 or not np.all(np.diff(grid) > 0):
            raise FitError(f"anchor grid must be >= 3 increasing values of {anchor.scan} (meV)")
        for n in LINEAR:
            p = gp.space.params[n]
            if p.tie is not None:
                raise FitError(f"anchored mode fits {n} by linear least squares: it cannot be tied ({n}.tie = {p.tie})")
        self.gp, self.shiba, self.anchor, self.block, self.grid = gp, shiba, anchor, block, grid
        self.i_scan, self.i_solve = names.index(anchor.scan), names.index(anchor.solve)
        self.linear = [n for n in LINEAR if not gp.space.is_constant(n)]
        fixed = gp.space.values_from_natural(jnp.zeros(gp.space.n_free))
        self.fixed_linear = {n: float(fixed[n]) for n in LINEAR if gp.space.is_constant(n)}
        self.model = gp.pixel_model if gp.pixel_model.shifted else PixelModel(gp.model, shifted=True)
        self.table = gp.kernel if self.model is gp.pixel_model else jnp.asarray(self.model.kernel(gp.shared))
        e = gp.model.blocks.energies
        self.rows = e[self.model.covered(gp.shared)]
        self.h = float(e[1] - e[0])
        self.basis = np.asarray(shiba.couplings.basis)
        self.n_branch = self.basis.shape[-1] // 2
        self.dof = max(1, gp.bias.size - 1 - len(self.linear))
        static = self.model.static
        self.arrays = self.model.arrays(self.table, gp.bias)
        key = json.dumps(_canonical(static | {"names": list(static["names"])}), sort_keys=True) + "|spectra"
        self._spectra = _compiled(key, lambda: jax.jit(functools.partial(_spectra_of, static=static)))

    def peaks(self, data: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(E_b, its error, offset, its error) (P,) from the measured maxima of the pixels ``use`` (NaN: not used,
        or no pair: ``shiba_pair`` finds no maximum on a side)."""
        from shibajax.measurement.peaks import shiba_pairs

        out = np.full((data.shape[0], 4), np.nan)
        rows = np.flatnonzero(use)
        if rows.size == 0:
            return out[:, 0], out[:, 1], out[:, 2], out[:, 3]
        positions = np.full((rows.size, 2), np.nan)
        errors = np.full((rows.size, 2), np.nan)
        missing = np.ones(rows.size, bool)
        # a flat or doubled top defeats a narrow parabola: such pixels are retried once with a wider one
        for half_width in (self.anchor.half_width, self.anchor.retry * self.anchor.half_width):
            if not missing.any():
                break
            pairs = shiba_pairs(self.gp.bias, data[rows[missing]], search=self.anchor.search, half_width=half_width)
            idx = np.flatnonzero(missing)[pairs.found]
            positions[idx], errors[idx] = pairs.positions[pairs.found], pairs.errors[pairs.found]
            missing[idx] = False
        err = 0.5 * np.hypot(errors[:, 0], errors[:, 1])
        out[rows] = np.stack(
            [0.5 * (positions[:, 1] - positions[:, 0]), err, 0.5 * (positions[:, 1] + positions[:, 0]), err], axis=1
        )
        return out[:, 0], out[:, 1], out[:, 2], out[:, 3]

    def _g0(self, energies: np.ndarray) -> np.ndarray:
        """G0 (n, R, R) between the impurities at real in-gap energies (one BZ sum on the Shiba k-mesh, padded to a
        multiple of the block so that its shape repeats)."""
        from shibajax.greens_function import bare_greens_sum
        from shibajax.tmatrix import block_matrix

        s = self.shiba
        e = np.where(np.isfinite(energies), energies, 0.0)
        pad = -e.size % self.block
        e = np.concatenate([e, np.zeros(pad)])
        (g,) = bare_greens_sum(s.model, s.disp, jnp.asarray(e), kgrid=s.kgrid, chunk_size=s.chunk_size)
        return np.asarray(block_matrix(g, s.idx_imp))[: energies.size]

    def solutions(self, theta: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Values of ``solve`` (..., n_branch) that put a state at the energy of g (..., R, R), sign-restricted and
        ascending in |x|, NaN-padded: ShibaEnergies.couplings_at batched (1/x = eigenvalues of A^-1 B G0)."""
        theta = np.array(theta, float)
        theta[..., self.i_solve] = 0.0
        v = np.einsum("...c,crs->...rs", theta, self.basis)
        a = np.eye(g.shape[-1]) - v @ g
        lam = np.linalg.eigvals(np.linalg.solve(a, self.basis[self.i_solve] @ g))
        scale = np.max(np.abs(lam), axis=-1, keepdims=True)
        ok = (np.abs(lam) > 1e-9 * scale) & (np.abs(lam.imag) <= 1e-9 * scale)
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.where(ok, 1.0 / np.where(ok, lam.real, 1.0), np.nan)
        x = np.where(np.sign(x) == self.anchor.sign, x, np.nan)
        order = np.argsort(np.where(np.isfinite(x), np.abs(x), np.inf), axis=-1)
        return np.take_along_axis(x, order, axis=-1)[..., : self.n_branch]

    def spectra(self, theta: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """Model spectra (..., n_v) with scale 1 and no background, in chunks of one fixed size (no recompiling)."""
        shape = theta.shape[:-1]
        theta = theta.reshape(-1, theta.shape[-1])
        offset = np.broadcast_to(offset, shape).reshape(-1)
        bad = ~np.all(np.isfinite(theta), axis=-1)
        theta = np.where(bad[:, None], 0.0, theta)
        n = theta.shape[0]
        size = self.block if n <= self.block else self.block * self.grid.size  # two shapes, two compilations
        pad = -n % size
        theta = np.concatenate([theta, np.zeros((pad, theta.shape[1]))])
        offset = np.concatenate([offset, np.zeros(pad)])
        out = np.concatenate(
            [np.asarray(self._spectra(self.arrays, jnp.asarray(theta[i : i + size]), jnp.asarray(offset[i : i + size])))
             for i in range(0, theta.shape[0], size)]
        )[:n]  # fmt: skip
        out[bad] = np.nan
        return out.reshape(*shape, -1)

    def linear_fit(self, y: np.ndarray, data: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """chi^2 (...) of spectra y (..., n_v) with the free linear parameters at their least-squares values, and
        those (..., n_lin); fixed ones at their values (the profile of fit_anchored)."""
        bias = self.gp.bias
        columns = {"scale": y, "bg0": np.ones_like(y), "bg1": np.broadcast_to(bias, y.shape)}
        target = data - sum(self.fixed_linear.get(n, 0.0) * columns[n] for n in LINEAR)
        design = np.stack([columns[n] for n in self.linear], axis=-1) * w[..., None]
        rhs = target * w
        normal = np.einsum("...vi,...vj->...ij", design, design)
        with np.errstate(invalid="ignore"):
            coef = np.linalg.solve(np.where(np.isfinite(normal), normal, np.eye(len(self.linear))),
                                   np.einsum("...vi,...v->...i", design, rhs)[..., None])[..., 0]  # fmt: skip
        chi2 = np.sum((np.einsum("...vi,...i->...v", design, coef) - rhs) ** 2, axis=-1)
        return np.where(np.isfinite(chi2), chi2, np.nan), coef

    def fit(self, data, sigma, theta0, e_b, offset):
        """The anchored fit of pixels (P,) with energies e_b and offsets from their peaks; theta0 (P, n_c) the other
        couplings. Returns a dict of (P,) arrays: scan, solve, their errors, linear values, chi2, branch, ok."""
        n_pix = data.shape[0]
        w = 1.0 / sigma
        dat, ww = data[:, None, None, :], w[:, None, None, :]
        g = self._g0(e_b)  # (P, R, R)
        grid = self.grid
        theta = np.repeat(theta0[:, None, :], grid.size, axis=1)
        theta[:, :, self.i_scan] = grid[None, :]
        sols = self.solutions(theta, g[:, None])  # (P, n_K, n_b)
        th = np.repeat(theta[:, :, None, :], self.n_branch, axis=2)
        th[..., self.i_solve] = sols
        chi2, _ = self.linear_fit(self.spectra(th, offset[:, None, None]), dat, ww)  # (P, n_K, n_b)
        chi2 = np.where(np.isfinite(sols), chi2, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN branches
            minima = np.nanmin(chi2, axis=1)  # (P, n_b)
        if self.anchor.branch is None:
            branch = np.argmin(np.where(np.isfinite(minima), minima, np.inf), axis=1)
        else:
            branch = np.full(n_pix, int(self.anchor.branch))
            if not 0 <= self.anchor.branch < self.n_branch:
                raise FitError(f"anchor branch = {self.anchor.branch} must be in 0 .. {self.n_branch - 1}")
        ok = np.isfinite(np.take_along_axis(minima, branch[:, None], axis=1)[:, 0]) & np.isfinite(e_b)
        half = self.model.nodes // 2  # the shifted biases must stay inside the kernel table
        bias = self.gp.bias
        ok &= (bias.min() - offset - (half - 1) * self.h >= self.rows[0]) & (
            bias.max() - offset + half * self.h <= self.rows[-1]
        )
        chib = np.take_along_axis(chi2, branch[:, None, None], axis=2)[:, :, 0]
        i_best = np.argmin(np.where(np.isfinite(chib), chib, np.inf), axis=1)
        lo = grid[np.maximum(0, i_best - 1)]
        hi = grid[np.minimum(grid.size - 1, i_best + 1)]

        def solve_at(k, e_g=g):
            t = theta0.copy()
            t[:, self.i_scan] = k
            x = self.solutions(t, e_g)
            return np.take_along_axis(x, branch[:, None], axis=1)[:, 0], t

        def profile(k):
            j, t = solve_at(k)
            t[:, self.i_solve] = j
            c, coef = self.linear_fit(self.spectra(t, offset), data, w)
            return np.where(np.isfinite(j), c, np.inf), coef, j

        # golden-section search on [lo, hi], every pixel at once (fit_anchored: scipy's bounded Brent, one pixel)
        ratio = (math.sqrt(5.0) - 1.0) / 2.0
        a, b = lo.copy(), hi.copy()
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        fc, fd = profile(c)[0], profile(d)[0]
        for _ in range(GOLDEN_STEPS):
            left = fc < fd
            b = np.where(left, d, b)
            a = np.where(left, a, c)
            d_new = np.where(left, c, a + ratio * (b - a))
            c_new = np.where(left, b - ratio * (b - a), d)
            fd_new, fc_new = np.where(left, fc, np.nan), np.where(left, np.nan, fd)
            probe = np.where(left, c_new, d_new)
            fp = profile(probe)[0]
            c, d = c_new, d_new
            fc, fd = np.where(left, fp, fc_new), np.where(left, fd_new, fp)
        k_best = 0.5 * (a + b)
        chi2_best, coef, j_best = profile(k_best)
        t_best = theta0.copy()
        t_best[:, self.i_scan], t_best[:, self.i_solve] = k_best, j_best
        y = self.spectra(t_best, offset)
        columns = {"scale": y, "bg0": np.ones_like(y), "bg1": np.broadcast_to(self.gp.bias, y.shape)}
        values = {n: coef[:, i] for i, n in enumerate(self.linear)}
        values |= {n: np.full(n_pix, v) for n, v in self.fixed_linear.items()}
        model = sum(values[n][:, None] * columns[n] for n in LINEAR)
        # errors as fit_anchored: the profile's curvature for K; J adds dJ/dK sigma_K and dJ/dE sigma_E
        step = 0.05 * (grid[1] - grid[0])
        up, down = profile(k_best + step)[0], profile(k_best - step)[0]
        curvature = (up - 2.0 * chi2_best + down) / step**2
        rescale = chi2_best / self.dof if not self.gp.sigma_given else 1.0
        with np.errstate(invalid="ignore", divide="ignore"):
            k_err = np.where(curvature > 0, np.sqrt(2.0 * rescale / curvature), np.nan)
        dj_dk = (solve_at(k_best + step)[0] - solve_at(k_best - step)[0]) / (2.0 * step)
        de = 1e-3 * np.abs(np.where(np.isfinite(e_b), e_b, 1.0))
        g_up, g_down = self._g0(e_b + de), self._g0(e_b - de)
        dj_de = (solve_at(k_best, g_up)[0] - solve_at(k_best, g_down)[0]) / (2.0 * de)
        ok &= np.isfinite(j_best) & np.isfinite(chi2_best)
        return {
            "scan": k_best, "solve": j_best, "scan_error": k_err, "dj_dk": dj_dk, "dj_de": dj_de, "linear": values,
            "chi2": chi2_best, "branch": branch, "ok": ok, "theta": t_best, "model": model,
        }  # fmt: skip


# ------------------------------------------------------------------------------------ the Dataset

_INT = ("n_good", "n_good_bare", "iterations", "iterations_bare")
_BOOL = ("converged", "converged_bare", "done")


def _empty(gp: GridProblem, n_levels: int, attrs: dict, anchored: bool):
    import xarray as xr

    n = gp.n_pixels
    nan = np.full(n, np.nan)
    coords = {k: ("pixel", np.asarray(v)) for k, v in gp.coords.items() if k != "pixel"}
    coords["pixel"] = ("pixel", np.asarray(gp.coords["pixel"]))
    coords["bias"] = ("bias", gp.bias, {"units": "mV"})
    names = [n_ for n_ in gp.space.params if n_ not in gp.shared]
    units = {"offset": "mV", "bg1": "per mV", "scale": "1", "bg0": "1"}
    data = {
        "class": ("pixel", np.where(gp.fitted, "", "skipped").astype("<U7"),
                  {"long_name": "shiba | bare | skipped | failed (shibajax.fitting.grid)"}),
        "E_b": ("pixel", nan.copy(), {"units": "meV", "long_name": "lowest positive Shiba energy of the fitted "
                                      "couplings (ShibaEnergies)"}),
        "E_b_error": ("pixel", nan.copy(), {"units": "meV"}),
        "energies": (("pixel", "level"), np.full((n, n_levels), np.nan),
                     {"units": "meV", "long_name": "positive in-gap energies, ascending, NaN-padded"}),
    }  # fmt: skip
    for p in names:
        unit = "meV" if p in gp.couplings else units.get(p, "")
        data[p] = ("pixel", nan.copy(), {"units": unit})
        data[f"{p}_error"] = ("pixel", nan.copy(), {"units": unit, "long_name": "standard error (Laplace)"})
    docs = {
        "chi2": "chi^2 of the free impurity model (squared residuals over sigma; sigma = 1 when not given)",
        "chi2_bare": "chi^2 of the bare model (couplings 0)",
        "reduced_chi2": "chi^2 / dof of the reported model",
        "delta_bic": "BIC(bare) - BIC(impurity)",
        "norm": "normalisation of the pixel's didv (outer 10 % mean; 1 when not normalised)",
    }
    if anchored:
        docs |= {
            "E_anchor": "E_b from the measured maxima, (V+ - V-) / 2 (meV)",
            "E_anchor_error": "its standard error from the parabola fits (meV)",
            "chi2_anchored": "chi^2 of the peak-anchored fit",
        }
    for v, doc in docs.items():
        data[v] = ("pixel", gp.norm.copy() if v == "norm" else nan.copy(), {"long_name": doc})
    flags = {
        "converged": "the impurity fit's best start stopped by its own test before the iteration cap",
        "converged_bare": "the same for the bare fit",
        "done": "the pixel has been fitted (or skipped)",
    }
    if anchored:
        flags["anchored"] = "the reported couplings are those of the peak-anchored fit"
    for v, doc in flags.items():
        data[v] = ("pixel", np.zeros(n, bool), {"long_name": doc})
    for v in _INT + (("branch",) if anchored else ()):
        data[v] = ("pixel", np.zeros(n, np.int64) - (v == "branch"))
    data["didv"] = (("pixel", "bias"), gp.data.copy(), {"long_name": "the data as fitted (normalised)"})
    data["didv_model"] = (("pixel", "bias"), np.full(gp.data.shape, np.nan), {"long_name": "the reported model"})
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    ds["done"].values[:] = ~gp.fitted
    return ds


def _canonical_ds(ds):
    """The same dtypes whether built here or read back from NetCDF (strings fixed-width, flags bool)."""
    ds["class"] = ds["class"].astype("<U7")
    if "name" in ds.coords:
        ds.coords["name"] = ds["name"].astype(str)
    for v in _BOOL + ("anchored",):
        if v in ds:
            ds[v] = ds[v].astype(bool)
    for v in _INT + ("branch",):
        if v in ds:
            ds[v] = ds[v].astype(np.int64)
    return ds


def _write_atomic(ds, path: Path) -> None:
    try:
        write_netcdf_atomic(ds, path)
    except OSError as err:
        raise FitError(f"cannot write the grid fit to {path}: {err.strerror or err}; choose a writable path") from err


RESTART_HINT_GRID = "Delete it (or pass restart=True) to start over, or write elsewhere (another out path)."


def _open_existing(path: Path, key: dict, template):
    import xarray as xr

    try:
        with xr.open_dataset(path) as stored:
            ds = stored.load()
    except Exception as err:  # noqa: BLE001  (any unreadable file is an input error here)
        raise FitError(f"cannot resume from {path}: not a readable NetCDF file ({err}). {RESTART_HINT_GRID}") from err
    if "key" not in ds.attrs or "done" not in ds:
        raise FitError(f"cannot resume from {path}: it is not a shibajax grid fit. {RESTART_HINT_GRID}")
    try:
        old = json.loads(str(ds.attrs["key"]))
    except json.JSONDecodeError as err:
        raise FitError(f"{path} has a broken key ({err}). {RESTART_HINT_GRID}") from err
    new = _canonical(key)
    old = {k: old.get(k, "(not set)") for k in new} if isinstance(old, dict) else {"key": old}
    diffs = describe_differences(old, new)
    if diffs:
        more = f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else ""
        raise FitError(
            f"{path} was written for a different grid fit: {'; '.join(diffs[:8])}{more}. {RESTART_HINT_GRID}"
        )
    if set(ds.data_vars) != set(template.data_vars) or dict(ds.sizes) != dict(template.sizes):
        raise FitError(f"{path} does not hold the variables of this grid fit. {RESTART_HINT_GRID}")
    ds = _canonical_ds(ds)
    ds.attrs = dict(template.attrs)
    return ds


# ------------------------------------------------------------------------------------ fit_grid


def line_width(temperature: float, lockin: float, eta: float) -> float:
    """FWHM (meV) of a Shiba peak of the model: the thermal -f' (3.525 k_B T) and the lock-in semicircle
    (2.449 V_rms) in quadrature, plus the host's Lorentzian (2 eta). A state closer than this to the gap edge cannot
    be told from the coherence peak, so :func:`fit_grid` does not count it as an in-gap state."""
    from shibajax.measurement.tunnelling import K_B_MEV_PER_K

    return float(np.hypot(3.525 * K_B_MEV_PER_K * temperature, math.sqrt(6.0) * lockin) + 2.0 * eta)


def fit_grid(
    grid,
    model: SpectrumModel,
    params: Mapping,
    *,
    shiba: ShibaEnergies | None,
    sigma=None,
    bias_window=None,
    normalise: bool = True,
    n_starts: int = 8,
    seed: int = 0,
    spread: float = 1.0,
    starts=None,
    method: str = "lm",
    bic_threshold: float = BIC_THRESHOLD,
    in_gap_margin: float | None = None,
    mode: str = "free",
    anchor: Anchor | None = None,
    out: str | os.PathLike | None = None,
    restart: bool = False,
    block: int | None = None,
    progress: bool = True,
    on_block: Callable | None = None,
    **options,
):
    """Fit every pixel of ``grid``: impurity and bare model per pixel, Shiba energies, errors and classes.

    Args:
        grid, model, params, sigma, bias_window, normalise: see :class:`GridProblem` (``params`` are those of
            one pixel; every pixel starts from the same starts).
        shiba: :class:`~shibajax.fitting.ShibaEnergies` of the same host and couplings (its k-mesh: the blocks'
            one) for E_b; None: no E_b (NaN), the classes then rest on Delta BIC alone.
        n_starts, seed, spread, starts: the starts of every pixel, as :func:`~shibajax.fitting.fit` draws them
            (``ParameterSpace.sample``; first row the given start values); the bare model draws its own with the
            same n_starts, seed and spread.
        method, options: optimiser and its options ("lm": max_iter, damping, tol, ftol, max_damping; "lbfgs":
            max_iter, tol; "adam": steps, learning_rate), the same stopping rule for every pixel and start.
        bic_threshold: Delta BIC above which a pixel is "shiba".
        in_gap_margin: a state counts only with E_b < gap edge - in_gap_margin (meV); default
            :func:`line_width` of the shared temperature, lock-in and the blocks' eta.
        mode: "free" (the whole-spectrum fit above) or "anchored": then, on every "shiba" pixel, the peak-anchored
            fit of :func:`~shibajax.fitting.anchored.fit_anchored` (offset and E_anchor from the measured maxima,
            ``solve`` tied to ``scan`` by E(K, J) = E_anchor, ``scan`` and the linear scale, bg0, bg1 from the line
            shape; the other couplings at the free fit's values, the bounds of K and J not applied) replaces the
            reported values where its peak pair is found (``anchored``); E_b stays the solver's energy of the
            reported couplings (equal to E_anchor to the root tolerance); E_b_error is then E_anchor's.
        anchor: :class:`Anchor` settings (default ``Anchor()``).
        out: NetCDF path, written after every block; if it exists it must hold this fit (else FitError naming
            what differs) and its finished pixels are not fitted again. restart: delete it first.
        block: pixels per compiled call (default :data:`BLOCK_PER_DEVICE` x devices; padded to a multiple of the
            device count; every block has the same shape, so one compilation serves the grid).
        progress: a tqdm bar over pixels. on_block: called after each block is written with a dict (block,
            n_blocks, pixels_done, pixels_total); an exception raised there stops the run (to test resuming).

    Returns:
        ``xarray.Dataset`` on dim ``pixel`` with the grid's pixel coordinates (``name``, ``x``, ``y``, and
        ``row``, ``col`` for a (y, x) grid), and ``bias`` (mV): ``class`` (:data:`CLASSES`), ``E_b``,
        ``E_b_error`` (meV), ``energies`` (pixel, level), every per-pixel parameter and ``<name>_error``
        (Laplace; NaN for fixed ones; couplings NaN on bare pixels, whose instrument values are the bare fit's),
        ``chi2``, ``chi2_bare``, ``reduced_chi2`` (of the reported model), ``delta_bic``, ``converged``,
        ``converged_bare``, ``n_good``, ``iterations`` (and ``_bare``), ``norm``, ``didv`` (the data as
        fitted) and ``didv_model`` (pixel, bias), ``done``; anchored mode adds ``anchored``, ``E_anchor``,
        ``E_anchor_error``, ``chi2_anchored`` and ``branch``. attrs: the shared parameters, the criterion, the
        skipped pixels (JSON) and the key.

    Raises:
        FitError: bad input (named), a checkpoint of another fit.

    Example (a one-channel adatom on the square host of the fitting notebook; ``grid`` from ``read_grid``)::

        host = shibajax.models.square(t=10.0, mu=-20.0, delta=1.305)
        couplings = coupling_basis(host, [(0, 0)])
        mesh = fermi_shell_mesh(host, base=16, resolution=1.0)
        blocks = green_blocks(host, couplings, [(0, 0)], np.arange(-4, 4.001, 0.02), eta=0.047, kgrid=mesh)
        maps = fit_grid(grid, SpectrumModel(blocks), {"K_0": {...}, "J_0": {...}},
                        shiba=ShibaEnergies(host, couplings, kgrid=mesh), out="grid_fit.nc")
    """
    t0 = time.perf_counter()
    if mode not in MODES:
        raise FitError(f"mode = {mode!r}; use one of {MODES}")
    gp = GridProblem(grid, model, params, sigma=sigma, bias_window=bias_window, normalise=normalise)
    if gp.space.n_free == 0:
        raise FitError("nothing to fit: every parameter is fixed or tied")
    if gp.bare_space.n_free == 0:
        raise FitError("the bare model has nothing to fit: free at least the scale (or a background)")
    if (
        isinstance(bic_threshold, bool)
        or not isinstance(bic_threshold, int | float)
        or not math.isfinite(bic_threshold)
    ):
        raise FitError(f"bic_threshold = {bic_threshold!r} must be a finite number (Delta BIC)")
    # checks method and options (FitError naming the bad one); the iteration cap of every start
    max_iter = _stepper(lambda u: u, method, options).max_iter
    gap = limit = None
    if shiba is not None:
        if not isinstance(shiba, ShibaEnergies):
            raise FitError(f"shiba must be a ShibaEnergies (or None); got {type(shiba).__name__}")
        c = model.blocks.couplings
        if shiba.couplings.names != c.names or not np.allclose(shiba.couplings.basis, c.basis):
            raise FitError(
                f"shiba's couplings {shiba.couplings.names} are not those of the model's G0 blocks {c.names}: "
                "build both from the same coupling_basis"
            )
        from shibajax.brillouin_zone import gap_edge

        gap = float(gap_edge(shiba.model, shiba.kgrid))  # the gap edge the Shiba energies' k-mesh sees
        if in_gap_margin is None:
            in_gap_margin = line_width(gp.shared["temperature"], gp.shared["lockin"], model.blocks.eta)
        if isinstance(in_gap_margin, bool) or not isinstance(in_gap_margin, int | float) or not in_gap_margin >= 0:
            raise FitError(f"in_gap_margin = {in_gap_margin!r} must be a number >= 0 (meV)")
        limit = gap - float(in_gap_margin)
    if mode == "anchored" and shiba is None:
        raise FitError("mode 'anchored' needs shiba (ShibaEnergies: it solves J from E(K, J) = E_b)")
    anchor = Anchor() if anchor is None else anchor
    if not isinstance(anchor, Anchor):
        raise FitError(f"anchor must be an Anchor; got {type(anchor).__name__}")
    sampled = starts is None
    if sampled:
        if not isinstance(n_starts, int | np.integer) or isinstance(n_starts, bool) or n_starts < 1:
            raise FitError(f"n_starts = {n_starts!r} must be a positive integer")
        starts = gp.space.sample(seed, int(n_starts), spread)
    starts = np.asarray(starts, float)
    if starts.ndim != 2 or starts.shape[1] != gp.space.n_free or not np.all(np.isfinite(starts)):
        raise FitError(f"starts must be finite with shape (n_starts, {gp.space.n_free}); got {starts.shape}")
    bare_starts = gp.bare_space.sample(seed, starts.shape[0], spread)
    devices = jax.devices()
    n_dev = len(devices)
    block = BLOCK_PER_DEVICE * n_dev if block is None else block
    if not isinstance(block, int | np.integer) or isinstance(block, bool) or block < 1:
        raise FitError(f"block = {block!r} must be a positive integer (pixels per compiled call)")
    block = int(-(-int(block) // n_dev) * n_dev)

    key = {
        "shibajax": _version(),
        "format": GRID_FORMAT,
        **gp.key(),
        "shiba": _shiba_key(shiba),
        "fit": {
            "method": method,
            "options": dict(sorted(options.items())),
            "starts": {"shape": list(starts.shape), "sha256": _sha256(starts)},
            "bare starts": {"sha256": _sha256(bare_starts)},
            "bic_threshold": float(bic_threshold),
            "in_gap_limit": limit,
            "bias_window": None if bias_window is None else [float(v) for v in bias_window],
            "mode": mode,
            "anchor": anchor.key() if mode == "anchored" else None,
        },
    }
    key = _canonical(key)
    key_json = json.dumps(key, sort_keys=True)
    n_levels = model.blocks.couplings.basis.shape[-1] // 2
    criterion = (
        f"shiba when Delta BIC = BIC(bare) - BIC(impurity) > {float(bic_threshold):g}"
        + (f" and the impurity fit has a state with E_b < {limit:.6g} meV (gap edge {gap:.6g} - margin "
           f"{float(in_gap_margin):.4g})" if limit is not None else "")
        + "; BIC = chi^2 + k ln n (sigma given) or n ln(RSS / n) + k ln n (sigma unknown)"
    )  # fmt: skip
    attrs = {
        "title": "shibajax fit_grid: impurity and bare model per pixel",
        "key": key_json,
        "mode": mode,
        "shared_parameters": json.dumps(gp.shared),
        "criterion": criterion,
        "bic_threshold": float(bic_threshold),
        "gap_edge": np.nan if gap is None else float(gap),
        "in_gap_limit": np.nan if limit is None else float(limit),
        "method": method,
        "n_starts": int(starts.shape[0]),
        "energy_source": "ShibaEnergies: in-gap roots of det[1 - V G0(E)] on its k-mesh" if shiba is not None
        else "none (E_b not computed)",
        "sigma": "given" if gp.sigma_given else "unknown (errors rescaled by the reduced chi^2)",
        "normalised": int(gp.normalised),
        "skipped": json.dumps([{"pixel": int(i), "name": str(gp.names[i]), "reason": r}
                               for i, r in sorted(gp.skipped.items())]),
        "n_skipped": len(gp.skipped),
        "units": "couplings, E_b: meV; offset: mV; bg1: per mV; temperature: K; lockin: rms mV; bias: mV",
        "shibajax_version": _version(),
    }  # fmt: skip
    if gp.skipped:
        listing = ", ".join(f"{gp.names[i]} ({r})" for i, r in sorted(gp.skipped.items())[:5])
        more = f" and {len(gp.skipped) - 5} more" if len(gp.skipped) > 5 else ""
        warnings.warn(f"fit_grid skips {len(gp.skipped)} pixel(s): {listing}{more}", stacklevel=2)

    template = _canonical_ds(_empty(gp, n_levels, attrs, mode == "anchored"))
    path = Path(out) if out is not None else None
    ds = template
    if path is not None:
        if restart and path.exists():
            try:
                path.unlink()
            except OSError as err:
                raise FitError(f"restart: cannot delete {path}: {err.strerror or err}") from err
        if path.exists():
            ds = _open_existing(path, key, template)
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise FitError(f"cannot create the folder of {path}: {err.strerror or err}") from err
            _write_atomic(ds, path)

    todo = np.flatnonzero(~ds["done"].values)
    chunks = [todo[i : i + block] for i in range(0, todo.size, block)]
    mesh = None if n_dev == 1 else jax.sharding.Mesh(np.array(devices), ("pixels",))
    # what the compiled program holds as constants: the per-pixel parameter spaces (bounds, fixed values, ties), the
    # model's static settings and the fit settings. The host's arrays, the bias axis, the starts, data and noise are
    # its arguments, so another grid or host of the same shapes reuses it in the same session (jit retraces for
    # new shapes by itself).
    static = gp.pixel_model.static
    shape_key = {
        "parameters": {n: v for n, v in key["parameters"].items() if n not in SHARED},
        "model": static | {"names": list(static["names"]), "small_inverse": SMALL_R},
        "fit": {"method": method, "options": key["fit"]["options"]},
        "block": block,
        "devices": n_dev,
    }
    shape_json = json.dumps(_canonical(shape_key), sort_keys=True)
    program = _compiled(shape_json + "|program", lambda: _program(gp, method, options, mesh))
    starts_j, bare_j = jnp.asarray(starts), jnp.asarray(bare_starts)
    levels_fn = None
    if shiba is not None:  # keyed on the host, mesh and couplings alone: any grid of this host reuses it
        levels_fn = _compiled(json.dumps(key["shiba"], sort_keys=True) + "|levels", lambda: _ShibaLevels(shiba))
    # built anew (it holds this grid's arrays); its compiled pieces are kept by shape
    anchoring = _Anchoring(gp, shiba, anchor, block) if mode == "anchored" else None
    sharding = None if mesh is None else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("pixels"))
    bar = _bar(gp.n_pixels, gp.n_pixels - todo.size, progress)
    settings = {"threshold": float(bic_threshold), "limit": limit, "max_iter": max_iter}
    try:
        for ib, idx in enumerate(chunks):
            padded = np.concatenate([idx, np.repeat(idx[-1:], block - idx.size)])
            data, sig = gp.data[padded], gp.sigma[padded]
            if sharding is not None:
                data, sig = jax.device_put(data, sharding), jax.device_put(sig, sharding)
            res = jax.tree.map(np.asarray, program(gp.arrays, starts_j, bare_j, jnp.asarray(data), jnp.asarray(sig)))
            if levels_fn is not None:  # the Shiba energies of the free fit's couplings, and dE_b/dx
                theta, jac = _coupling_values(gp, gp.space, res["imp"]["x"])
                res["levels"], grad = levels_fn(theta)
                res["grad"] = grad @ jac
            cls = _store(ds, gp, idx, jax.tree.map(lambda a, k=idx.size: a[:k], res), **settings)
            if anchoring is not None:
                _store_anchored(ds, gp, anchoring, levels_fn, idx, padded, res["imp"]["x"], cls == "shiba")
            if path is not None:
                _write_atomic(ds, path)
            if bar is not None:
                bar.update(idx.size)
            if on_block is not None:
                on_block({"block": ib, "n_blocks": len(chunks), "pixels_done": int(ds["done"].sum()),
                          "pixels_total": gp.n_pixels, "seconds": time.perf_counter() - t0})  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    return ds


def _parameter_values(gp: GridProblem, space: ParameterSpace, x: np.ndarray, err: np.ndarray):
    """{name: (values (B,), errors (B,))} of every per-pixel parameter (tied: the target's; fixed: NaN error)."""
    out = {}
    for n, p in space.params.items():
        if n in gp.shared:
            continue
        target = p.tie if p.tie is not None else n
        if target in space.free:
            j = space.free.index(target)
            out[n] = (x[:, j], err[:, j])
        else:
            out[n] = (np.full(x.shape[0], space.params[target].value), np.full(x.shape[0], np.nan))
    return out


def _store(ds, gp: GridProblem, idx, res, *, threshold: float, limit, max_iter: int) -> np.ndarray:
    """Write one block's results into ds (in place): statistics, errors, E_b, classes. Returns the classes."""
    n_v = gp.bias.size
    fits = {}
    for which, space in (("imp", gp.space), ("bare", gp.bare_space)):
        r = res[which]
        dof = max(1, n_v - space.n_free)
        chi2 = 2.0 * r["loss"]
        rescale = np.ones_like(chi2) if gp.sigma_given else chi2 / dof
        cov = _covariance(r["hess"], rescale)
        fits[which] = {
            "chi2": chi2,
            "cov": cov,
            "dof": dof,
            "values": _parameter_values(gp, space, r["x"], _errors(cov)),
        }
    imp, bare = fits["imp"], fits["bare"]
    dbic = delta_bic(imp["chi2"], bare["chi2"], n_v, gp.space.n_free - gp.bare_space.n_free, gp.sigma_given)
    finite = np.isfinite(imp["chi2"]) & np.isfinite(bare["chi2"])
    if limit is not None:
        levels, grad = res["levels"], res["grad"]
        e_b = levels[:, 0]
        with np.errstate(invalid="ignore"):
            e_err = np.sqrt(np.einsum("pi,pij,pj->p", grad, imp["cov"], grad))
        has_state = np.isfinite(e_b) & (e_b < limit)
    else:
        levels = np.full((idx.size, ds.sizes["level"]), np.nan)
        e_b = e_err = np.full(idx.size, np.nan)
        has_state = np.ones(idx.size, bool)
    shiba = finite & has_state & (dbic > threshold)
    cls = np.where(~finite, "failed", np.where(shiba, "shiba", "bare"))
    ds["class"].values[idx] = cls
    ds["E_b"].values[idx] = np.where(shiba, e_b, np.nan)
    ds["E_b_error"].values[idx] = np.where(shiba, e_err, np.nan)
    ds["energies"].values[idx] = np.where(shiba[:, None], levels, np.nan)
    for n, (vi, ei) in imp["values"].items():
        vb, eb = bare["values"][n]
        if n in gp.couplings:
            vb = eb = np.full(idx.size, np.nan)
        ds[n].values[idx] = np.where(shiba, vi, np.where(finite, vb, np.nan))
        ds[f"{n}_error"].values[idx] = np.where(shiba, ei, np.where(finite, eb, np.nan))
    ds["chi2"].values[idx] = imp["chi2"]
    ds["chi2_bare"].values[idx] = bare["chi2"]
    ds["reduced_chi2"].values[idx] = np.where(shiba, imp["chi2"] / imp["dof"], bare["chi2"] / bare["dof"])
    ds["delta_bic"].values[idx] = dbic
    for which, suffix in (("imp", ""), ("bare", "_bare")):
        r = res[which]
        ds[f"converged{suffix}"].values[idx] = np.isfinite(r["loss"]) & (r["count"] < max_iter)
        ds[f"n_good{suffix}"].values[idx] = r["n_good"]
        ds[f"iterations{suffix}"].values[idx] = r["iterations"]
    ds["didv_model"].values[idx] = np.where(shiba[:, None], res["imp"]["model"], res["bare"]["model"])
    ds["done"].values[idx] = True
    return cls


def _store_anchored(ds, gp: GridProblem, anchoring: _Anchoring, levels_fn, idx, padded, x, shiba) -> None:
    """The anchored fit of the block's "shiba" pixels (the whole padded block at once: fixed shapes)."""
    k = idx.size
    use = np.zeros(padded.size, bool)
    use[:k] = shiba
    e_b, e_err, offset, off_err = anchoring.peaks(gp.data[padded], use)
    values = _parameter_values(gp, gp.space, x, np.zeros_like(x))
    theta0 = np.stack([values[n][0] for n in anchoring.shiba.couplings.names], axis=1)
    use &= np.isfinite(e_b)
    r = anchoring.fit(gp.data[padded], gp.sigma[padded], theta0, e_b, np.where(use, offset, 0.0))
    ok = r["ok"] & use
    levels, _ = levels_fn(r["theta"])
    ok &= np.isfinite(levels[:, 0])
    sel = ok[:k]
    if not sel.any():
        return
    rows = idx[sel]
    scan, solve = anchoring.anchor.scan, anchoring.anchor.solve
    j_err = np.hypot(r["dj_dk"] * r["scan_error"], r["dj_de"] * e_err)
    ds["anchored"].values[rows] = True
    ds["E_anchor"].values[rows] = e_b[:k][sel]
    ds["E_anchor_error"].values[rows] = e_err[:k][sel]
    ds["chi2_anchored"].values[rows] = r["chi2"][:k][sel]
    ds["branch"].values[rows] = r["branch"][:k][sel]
    ds["E_b"].values[rows] = levels[:k, 0][sel]
    ds["E_b_error"].values[rows] = e_err[:k][sel]
    ds["energies"].values[rows] = levels[:k][sel]
    ds[scan].values[rows], ds[f"{scan}_error"].values[rows] = r["scan"][:k][sel], r["scan_error"][:k][sel]
    ds[solve].values[rows], ds[f"{solve}_error"].values[rows] = r["solve"][:k][sel], j_err[:k][sel]
    ds["offset"].values[rows], ds["offset_error"].values[rows] = offset[:k][sel], off_err[:k][sel]
    for n, v in r["linear"].items():
        ds[n].values[rows] = v[:k][sel]
        ds[f"{n}_error"].values[rows] = np.nan  # as fit_anchored: errors of scan and solve only
    ds["reduced_chi2"].values[rows] = r["chi2"][:k][sel] / anchoring.dof
    ds["didv_model"].values[rows] = r["model"][:k][sel]


def _bar(total, initial, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="fit_grid", unit="pixel", leave=False, mininterval=0.5)


def _version() -> str:
    from shibajax import __version__

    return __version__
