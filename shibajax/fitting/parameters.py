"""Fit parameters: bounds through smooth transforms, fixed values and ties.

Every free parameter p is a function of an unconstrained number u that the optimiser sees:

    lower and upper:  p = lo + (hi - lo) sigmoid(u)
    lower only:       p = lo + softplus(u)
    upper only:       p = hi - softplus(u)
    neither:          p = u

A fixed parameter keeps its value; a tied one (``tie="J_0"``) equals another parameter (shared K/J of an
adatom and its dimer, one temperature for several spectra).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from shibajax.errors import FitError


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One fit parameter: start ``value``, optional bounds, ``fixed`` or ``tie`` (name of another parameter)."""

    value: float
    lower: float = -math.inf
    upper: float = math.inf
    fixed: bool = False
    tie: str | None = None

    @classmethod
    def of(cls, spec) -> Parameter:
        """From a Parameter, a number (free, unbounded) or a mapping {value, lower, upper, fixed, tie}."""
        if isinstance(spec, Parameter):
            return spec
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"value", "lower", "upper", "fixed", "tie", "bounds"}
            if unknown:
                raise FitError(f"unknown parameter keys {sorted(unknown)}; use value, lower, upper, fixed, tie")
            spec = dict(spec)
            if "bounds" in spec:
                spec["lower"], spec["upper"] = spec.pop("bounds")
            if "value" not in spec and spec.get("tie") is None:
                raise FitError(f"parameter {spec} needs a start 'value'")
            spec.setdefault("value", 0.0)
            return cls(**{k: (float(v) if k in ("value", "lower", "upper") else v) for k, v in spec.items()})
        try:
            return cls(float(spec))
        except (TypeError, ValueError) as err:
            raise FitError(f"parameter spec {spec!r} must be a number, a mapping or a Parameter") from err


def _softplus(u):
    return jnp.logaddexp(u, 0.0)


def _inv_softplus(y):
    return y + np.log(-np.expm1(-y))


class ParameterSpace:
    """Named parameters -> unconstrained vector u (n_free,) and back.

    Args:
        params: {name: Parameter | number | mapping}.

    Raises:
        FitError: start outside its bounds, lower >= upper, a tie to an unknown or tied parameter.

    Example:
        >>> from shibajax.fitting import ParameterSpace
        >>> ps = ParameterSpace({"J_0": {"value": 1.0, "lower": 0.0}, "K_0": 0.2, "scale": {"value": 1, "fixed": True}})
        >>> ps.free, [round(float(v), 6) for v in ps.unpack(ps.initial()).values()]
        (('J_0', 'K_0'), [1.0, 0.2, 1.0])
    """

    def __init__(self, params: Mapping[str, object]):
        self.params = {str(k): Parameter.of(v) for k, v in params.items()}
        for name, p in self.params.items():
            if p.tie is not None:
                if p.tie not in self.params:
                    raise FitError(f"parameter {name!r} is tied to {p.tie!r}, which is not a parameter")
                if self.params[p.tie].tie is not None:
                    raise FitError(f"parameter {name!r} is tied to {p.tie!r}, itself tied: tie to {p.tie!r}'s target")
                continue
            if not p.lower < p.upper:
                raise FitError(f"parameter {name!r}: lower = {p.lower} must be below upper = {p.upper}")
            if not p.fixed and not p.lower < p.value < p.upper:
                raise FitError(
                    f"parameter {name!r}: start value {p.value} must lie strictly inside ({p.lower}, {p.upper})"
                )
        self.free = tuple(n for n, p in self.params.items() if not p.fixed and p.tie is None)
        self.lower = np.array([self.params[n].lower for n in self.free])
        self.upper = np.array([self.params[n].upper for n in self.free])

    @property
    def n_free(self) -> int:
        return len(self.free)

    def to_natural(self, u: jax.Array) -> jax.Array:
        """Unconstrained u (..., n_free) -> free parameter values (..., n_free)."""
        lo, hi = self.lower, self.upper
        both = np.isfinite(lo) & np.isfinite(hi)
        only_lo = np.isfinite(lo) & ~np.isfinite(hi)
        only_hi = ~np.isfinite(lo) & np.isfinite(hi)
        lo_s, hi_s = np.where(np.isfinite(lo), lo, 0.0), np.where(np.isfinite(hi), hi, 0.0)
        x = jnp.where(both, lo_s + (hi_s - lo_s) * jax.nn.sigmoid(u), u)
        x = jnp.where(only_lo, lo_s + _softplus(u), x)
        return jnp.where(only_hi, hi_s - _softplus(u), x)

    def from_natural(self, x) -> np.ndarray:
        """Free parameter values (..., n_free) -> unconstrained u (NumPy; values must be inside the bounds)."""
        x = np.asarray(x, float)
        lo, hi = self.lower, self.upper
        with np.errstate(all="ignore"):
            both = np.log((x - lo) / (hi - x))
            u = np.where(np.isfinite(lo) & np.isfinite(hi), both, x)
            u = np.where(np.isfinite(lo) & ~np.isfinite(hi), _inv_softplus(x - lo), u)
            u = np.where(~np.isfinite(lo) & np.isfinite(hi), _inv_softplus(hi - x), u)
        if not np.all(np.isfinite(u)):
            raise FitError(f"start values {x.tolist()} of {list(self.free)} must lie strictly inside their bounds")
        return u

    def values_from_natural(self, x: jax.Array) -> dict[str, jax.Array]:
        """Free values (n_free,) -> every parameter by name (fixed and tied filled in)."""
        out = {n: x[i] for i, n in enumerate(self.free)}
        for n, p in self.params.items():
            if p.fixed and p.tie is None:
                out[n] = np.float64(p.value)  # concrete under jit: downstream code may precompute with it
        for n, p in self.params.items():
            if p.tie is not None:
                out[n] = out[p.tie]
        return {n: out[n] for n in self.params}

    def is_constant(self, name: str) -> bool:
        """True when ``name`` is fixed, or tied to a fixed parameter."""
        p = self.params[name]
        return self.params[p.tie].fixed if p.tie is not None else p.fixed

    def unpack(self, u: jax.Array) -> dict[str, jax.Array]:
        """Unconstrained u (n_free,) -> every parameter by name."""
        return self.values_from_natural(self.to_natural(u))

    def initial(self) -> np.ndarray:
        """u of the start values, (n_free,)."""
        return self.from_natural(np.array([self.params[n].value for n in self.free]))

    def sample(self, key, n: int, spread: float = 1.0) -> np.ndarray:
        """n random starts u (n, n_free): uniform inside finite bounds; start value +- spread * max(1, |value|)
        otherwise (clipped into one-sided bounds). The first row is the given start."""
        x0 = np.array([self.params[n_].value for n_ in self.free])
        width = spread * np.maximum(1.0, np.abs(x0))
        lo = np.where(np.isfinite(self.lower), self.lower, x0 - width)
        hi = np.where(np.isfinite(self.upper), self.upper, x0 + width)
        r = np.asarray(jax.random.uniform(jax.random.PRNGKey(int(key)), (n, self.n_free), jnp.float64))
        x = lo + (hi - lo) * (0.02 + 0.96 * r)  # stay off the bounds, where the transforms saturate
        x[0] = x0
        return self.from_natural(x)
