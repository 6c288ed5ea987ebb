"""Measured-spectrum model and fit problems (one spectrum or several sharing parameters).

A :class:`SpectrumModel` maps named parameters to dI/dV on a bias grid (meV, mV, K; docs/conventions.md):

    rho_s(E) = LDOS(r_p, E; K, J) / rho_N                       (fast T-matrix LDOS, G0 blocks fixed)
    dI/dV(V) = scale * didv(V - offset, E, rho_s, tip, T, lock-in) + bg0 + bg1 V

with ``didv`` from ``shibajax.measurement.tunnelling`` (normal or Dynes tip, Fermi functions, lock-in
kernel) and rho_N the bare host LDOS averaged over the outer 10 % of the energy grid on each side, so that
rho_s -> 1 far from the gap. Parameter names: the couplings ("K_0", "J_0", ...), "scale", "offset" (mV),
"bg0", "bg1" (per mV), "temperature" (K), "lockin" (rms, mV) and, for a Dynes tip, "tip_delta",
"tip_gamma" (meV).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from shibajax.errors import FitError
from shibajax.fitting.parameters import ParameterSpace
from shibajax.fitting.spectrum import GreenBlocks

TIPS = ("normal", "dynes")
INSTRUMENT = ("scale", "offset", "bg0", "bg1", "temperature", "lockin")


def _tunnelling():
    try:
        from shibajax.measurement import dos, tunnelling
    except ImportError as err:  # pragma: no cover  (the measurement layer ships with the package)
        raise FitError("spectrum fits need shibajax.measurement (dos, tunnelling)") from err
    return dos, tunnelling


@dataclasses.dataclass(frozen=True)
class SpectrumModel:
    """dI/dV of one tip position from precomputed G0 blocks.

    Attributes:
        blocks: :class:`GreenBlocks` on a uniform energy grid (meV) that covers the bias range plus the tip gap
            and a few k_B T and lock-in amplitudes.
        position: which of ``blocks.positions`` the tip is at.
        tip: "normal" or "dynes" (a BCS/Dynes superconducting tip with parameters tip_delta, tip_gamma).
    """

    blocks: GreenBlocks
    position: int = 0
    tip: str = "normal"

    def __post_init__(self):
        if self.tip not in TIPS:
            raise FitError(f"tip = {self.tip!r}; use one of {TIPS}")
        n_pos = self.blocks.positions.shape[0]
        if not 0 <= self.position < n_pos:
            raise FitError(f"position index {self.position} out of range: the blocks hold {n_pos} tip positions")
        e = self.blocks.energies
        if e.size < 3 or not np.allclose(np.diff(e), e[1] - e[0], rtol=1e-9, atol=0):
            raise FitError("the blocks' energy grid must be uniform with at least 3 points (a convolution grid)")
        bare = np.asarray(-np.asarray(self.blocks.bare_trace)[:, self.position].imag / np.pi)
        n = max(1, bare.size // 10)
        object.__setattr__(self, "_normal_dos", float(0.5 * (bare[:n].mean() + bare[-n:].mean())))

    @property
    def parameter_names(self) -> tuple[str, ...]:
        tip = ("tip_delta", "tip_gamma") if self.tip == "dynes" else ()
        return self.blocks.couplings.names + INSTRUMENT + tip

    @property
    def normal_dos(self) -> float:
        """rho_N: the bare LDOS averaged over the outer 10 % of the grid on each side."""
        return self._normal_dos

    def sample_dos(self, values: Mapping[str, jax.Array]) -> jax.Array:
        """rho_s(E) (n_E,), normalised to the bare normal-state value."""
        theta = jnp.stack([values[n] for n in self.blocks.couplings.names])
        return self.blocks.ldos(theta)[:, self.position] / self.normal_dos

    @property
    def kernel_parameters(self) -> tuple[str, ...]:
        """The parameters that fix the tunnelling kernel (dI/dV is linear in rho_s for fixed values of them)."""
        return ("offset", "temperature", "lockin") + (("tip_delta", "tip_gamma") if self.tip == "dynes" else ())

    def _tip(self, values):
        dos, _ = _tunnelling()
        return dos.DynesDOS(values["tip_delta"], values["tip_gamma"]) if self.tip == "dynes" else dos.NormalDOS()

    def kernel(self, values: Mapping[str, float], bias) -> np.ndarray:
        """The (n_v, n_E) matrix W with dI/dV / G_N = W rho_s, for fixed kernel parameters (computed once)."""
        _, tunnelling = _tunnelling()
        return np.asarray(
            tunnelling.didv_kernel(
                np.asarray(bias, float) - float(values["offset"]),
                self.blocks.energies,
                self._tip(values),
                temperature=float(values["temperature"]),
                lockin_rms=float(values["lockin"]),
            )
        )

    def __call__(self, values: Mapping[str, jax.Array], bias: jax.Array, kernel=None) -> jax.Array:
        """dI/dV (n_v,) at bias (n_v,) mV for parameter values by name (``kernel``: a precomputed
        :meth:`kernel` for these values, which makes a step one matrix-vector product)."""
        rho = self.sample_dos(values)
        if kernel is not None:
            y = kernel @ rho
        else:
            _, tunnelling = _tunnelling()
            y = tunnelling.didv(
                bias - values["offset"],
                jnp.asarray(self.blocks.energies),
                rho,
                self._tip(values),
                temperature=values["temperature"],
                lockin_rms=values["lockin"],
            )
        return values["scale"] * y + values["bg0"] + values["bg1"] * bias


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One measured spectrum and its model.

    Attributes:
        model: :class:`SpectrumModel`. bias: (n_v,) mV. data: (n_v,) dI/dV (any unit; ``scale`` absorbs it).
        sigma: noise per point (scalar or (n_v,)); None: 1, and the covariance is rescaled by the reduced chi^2.
        names: {model parameter name: fit parameter name}; missing names map to themselves. Two datasets
            that map a name to the same fit parameter share it.
        label: a name for reports.
    """

    model: SpectrumModel
    bias: np.ndarray
    data: np.ndarray
    sigma: object = None
    names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    label: str = "spectrum"

    def fit_name(self, name: str) -> str:
        return self.names.get(name, name)


class Problem:
    """A (joint) least-squares problem: loss(u) = 1/2 sum_s sum_v ((model_s - data_s) / sigma_s)^2.

    Args:
        datasets: one or more :class:`Dataset`.
        params: {fit parameter name: Parameter spec}; must cover every name the datasets use, and no more.
    """

    def __init__(self, datasets: Dataset | Sequence[Dataset], params):
        self.datasets = (datasets,) if isinstance(datasets, Dataset) else tuple(datasets)
        if not self.datasets:
            raise FitError("a fit needs at least one dataset")
        self.space = params if isinstance(params, ParameterSpace) else ParameterSpace(params)
        needed = set()
        self._arrays = []
        for ds in self.datasets:
            needed |= {ds.fit_name(n) for n in ds.model.parameter_names}
            bias = np.asarray(ds.bias, float)
            data = np.asarray(ds.data, float)
            if bias.ndim != 1 or bias.shape != data.shape or bias.size < 2:
                raise FitError(f"{ds.label}: bias {bias.shape} and data {data.shape} must be equal 1D shapes")
            if not (np.all(np.isfinite(bias)) and np.all(np.isfinite(data))):
                raise FitError(f"{ds.label}: bias and data must be finite (drop NaN points before fitting)")
            sigma = np.broadcast_to(np.asarray(1.0 if ds.sigma is None else ds.sigma, float), bias.shape)
            if not np.all(sigma > 0):
                raise FitError(f"{ds.label}: sigma must be > 0")
            self._arrays.append((jnp.asarray(bias), jnp.asarray(data), jnp.asarray(sigma)))
        have = set(self.space.params)
        if needed - have:
            raise FitError(f"parameters missing from the fit: {sorted(needed - have)} (give each a value)")
        if have - needed:
            raise FitError(f"unknown fit parameters {sorted(have - needed)}; the models use {sorted(needed)}")
        self._kernels = []
        for ds, (bias, _, _) in zip(self.datasets, self._arrays, strict=True):
            names = [ds.fit_name(n) for n in ds.model.kernel_parameters]
            if all(self.space.is_constant(n) for n in names):
                fixed = self.space.values_from_natural(jnp.zeros(self.space.n_free))
                local = {n: fixed[ds.fit_name(n)] for n in ds.model.kernel_parameters}
                self._kernels.append(jnp.asarray(ds.model.kernel(local, np.asarray(bias))))
            else:
                self._kernels.append(None)
        self.sigma_given = all(ds.sigma is not None for ds in self.datasets)
        self.n_points = sum(a[0].shape[0] for a in self._arrays)

    def predict_values(self, values: Mapping[str, jax.Array]) -> list[jax.Array]:
        """Model spectra (one (n_v,) per dataset) for fit parameter values by name."""
        out = []
        for ds, (bias, _, _), kern in zip(self.datasets, self._arrays, self._kernels, strict=True):
            local = {n: values[ds.fit_name(n)] for n in ds.model.parameter_names}
            out.append(ds.model(local, bias, kernel=kern))
        return out

    def residuals_natural(self, x: jax.Array) -> jax.Array:
        """Weighted residuals (n_points,) for free values x (n_free,)."""
        values = self.space.values_from_natural(x)
        preds = self.predict_values(values)
        return jnp.concatenate(
            [(p - d) / s for p, (_, d, s) in zip(preds, self._arrays, strict=True)]
        )  # fmt: skip

    def loss_natural(self, x: jax.Array) -> jax.Array:
        r = self.residuals_natural(x)
        return 0.5 * jnp.sum(r * r)

    def loss(self, u: jax.Array) -> jax.Array:
        """Loss of unconstrained u (n_free,): what the optimisers minimise."""
        return self.loss_natural(self.space.to_natural(u))

    def residuals(self, u: jax.Array) -> jax.Array:
        """Weighted residuals (n_points,) of unconstrained u (n_free,): what Levenberg-Marquardt minimises."""
        return self.residuals_natural(self.space.to_natural(u))
