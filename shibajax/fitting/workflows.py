"""The common fits in one call: :func:`fit_spectrum` (one measured spectrum, any host).

The pieces stay public (:mod:`shibajax.fitting.hosts`, :func:`~shibajax.fitting.green_blocks`,
:class:`~shibajax.fitting.Problem`, :func:`~shibajax.fitting.fit`); this module chains them the way ``shibajax fit``
does, with Python objects instead of a TOML file.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from shibajax.errors import FitError
from shibajax.fitting.hosts import FitHost, host_from_config, resolve_host


@dataclasses.dataclass
class SpectrumFit:
    """The outcome of :func:`fit_spectrum`: the :class:`~shibajax.fitting.FitResult`, the problem it solved (data,
    model) and the host."""

    result: object
    problem: object
    host: FitHost
    source: str

    @property
    def values(self) -> dict:
        return self.result.values

    @property
    def errors(self) -> dict:
        return self.result.errors

    def summary(self) -> str:
        return f"{self.source}: {self.host.description}\n{self.result.summary()}"

    def plot(self, path=None):
        """Data, model and residuals (:func:`~shibajax.fitting.plot_fit`)."""
        from shibajax.fitting.fit import plot_fit

        return plot_fit(self.result, self.problem, path)

    def write_report(self, path) -> Path:
        from shibajax.fitting.fit import write_report

        return write_report(self.result, self.problem, path, extra={"data": self.source, "host": self.host.description})


def default_host() -> FitHost:
    """The host of ``shibajax fit`` without a [host] table (one-band square lattice in meV, 64 x 64)."""
    return host_from_config(resolve_host({}, {}))


def coupling_scale(normal_dos: float, n_orb: int) -> float:
    """1 / (pi N0) with N0 the normal-state DOS per spin and orbital at the tip (meV^-1): the J at which a
    classical spin's Shiba state crosses zero energy in the flat-band limit (alpha = pi N0 J = 1), the natural scale
    of the couplings' start values and bounds."""
    n0 = normal_dos / (2.0 * n_orb)
    if not (math.isfinite(n0) and n0 > 0):
        raise FitError(
            f"the host's normal-state DOS at the tip is {normal_dos!r}; it must be > 0 to scale the couplings"
        )
    return 1.0 / (math.pi * n0)


def fit_spectrum(
    path,
    host: FitHost | None = None,
    *,
    tip: str = "normal",
    params: dict | None = None,
    bias_window=None,
    direction: str = "forward",
    energy_step: float = 0.02,
    n_starts: int = 8,
    method: str = "lm",
    max_iter: int = 60,
    seed: int = 0,
    progress: bool = False,
) -> SpectrumFit:
    """Fit the channels' K, J (and scale) of ``host`` to the spectrum in ``path``, in one call.

    The same model and normalisation as ``shibajax fit`` (docs/conventions.md, "Fitting"): the data are divided by
    their mean over the outer 10 % of the window; temperature and lock-in come from the file's header (fixed);
    the G0 blocks are summed once on the host's k-mesh.

    Args:
        path: a measured spectrum (anything :func:`~shibajax.measurement.read_spectrum` reads).
        host: a :class:`~shibajax.fitting.hosts.FitHost` (:func:`~shibajax.fitting.hosts.fit_host`); default the
            one-band square lattice of ``shibajax fit``.
        tip: "normal" or "dynes" (then ``params`` must give tip_delta, tip_gamma).
        params: [params] entries as in the TOML config, {name: value | {value, lower, upper, fixed, tie}}. Couplings
            not given start at K_c = 0 in (-3 s, 3 s) and J_c = s in (0.05 s, 5 s), s = :func:`coupling_scale` of
            the host (the multistart samples inside these bounds).
        bias_window: [lo, hi] mV (default the whole file); direction: "forward", "backward" or "average".
        energy_step: meV, of the G0 energy grid; n_starts, method, max_iter, seed: of :func:`~shibajax.fitting.fit`.

    Returns:
        :class:`SpectrumFit` (``.values``, ``.errors``, ``.summary()``, ``.plot(path)``, ``.write_report(path)``).

    Example (a measured file; tests/test_fit_spectrum_call.py runs it on the shared MnPc/Pb(111) spectrum)::

        import shibajax
        from shibajax.fitting import fit_spectrum, fit_host
        host = fit_host(shibajax.models.square(t=10.0, mu=-20.0, delta=1.305), kgrid=(64, 64), eta=0.047)
        fit = fit_spectrum("MnPc_Spec001.dat", host, bias_window=[-2.5, 2.5])
        print(fit.summary())
    """
    from shibajax.fitting import Dataset, Problem, SpectrumModel, fit, green_blocks
    from shibajax.fitting.commands import (
        _energy_grid,
        _largest_lockin,
        _parameter,
        _parameters,
        _read_data,
        _spec,
        parameter_names,
        resolve_config,
    )

    host = default_host() if host is None else host
    if not isinstance(host, FitHost):
        raise FitError(f"host must be a FitHost (shibajax.fitting.fit_host(model, ...)); got {type(host).__name__}")
    n = host.n_channels
    user = dict(params or {})
    couplings = [f"{kind}_{i}" for i in range(n) for kind in ("K", "J")]
    placeholders = {name: 0.0 for name in couplings if name not in user}
    config = {
        "host": {"energy_step": energy_step, "channels": n},
        "tip": {"kind": tip},
        "data": {"direction": direction} | ({"bias_window": list(bias_window)} if bias_window is not None else {}),
        "fit": {"n_starts": n_starts, "method": method, "max_iter": max_iter, "seed": seed},
        "params": user | placeholders,
    }
    cfg = resolve_config(config)  # every value checked, with the CLI's messages
    path = Path(path)
    ds, bias, didv, window = _read_data(path, cfg)
    cfg["data"]["bias_window"] = window
    spec = _parameters(cfg, ds, path)
    energies = _energy_grid(*window, cfg, _largest_lockin(spec))
    blocks = green_blocks(host.model, host.couplings, [host.tip_site], energies, eta=host.eta, kgrid=host.kgrid)
    model = SpectrumModel(blocks, tip=tip)
    s = coupling_scale(model.normal_dos, host.model.n_orb)
    allowed = parameter_names(n, tip)
    for name in placeholders:
        start = (
            {"value": 0.0, "lower": -3 * s, "upper": 3 * s}
            if name[0] == "K"
            else {"value": s, "lower": 0.05 * s, "upper": 5 * s}
        )
        spec[name] = _parameter(name, start, allowed)
    problem = Problem(Dataset(model, bias, didv, label=path.name), {k: _spec(p) for k, p in spec.items()})
    options = {"steps" if method == "adam" else "max_iter": max_iter}
    result = fit(problem, n_starts=n_starts, method=method, seed=seed, progress=progress, **options)
    return SpectrumFit(result, problem, host, str(path))
