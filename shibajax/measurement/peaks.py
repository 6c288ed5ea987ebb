"""Peak positions of a measured (or modelled) spectrum: the vertex of a parabola through the top of a peak.

A Shiba pair seen with a normal tip gives dI/dV maxima at offset -+ E_b (thermal and lock-in broadening are
even in the bias, so they move a maximum only through the slope of what lies under it). The maxima are the
model-independent positions that STM papers quote; fits of a line shape that misses a feature (an unresolved
second state, a shoulder) put the model's peak at the centroid of the measured one instead, which is why
``shibajax.fitting.anchored`` can pin the Shiba energy to these maxima.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from shibajax.errors import FitError
from shibajax.measurement.dos import check_finite


@dataclasses.dataclass(frozen=True)
class Peak:
    """One maximum: ``position`` (bias units), ``height`` (data units) and the standard error of the position
    from the parabola fit (the scatter of the points about the parabola as their noise)."""

    position: float
    height: float
    error: float


def peak_top(bias, y, *, search: tuple[float, float], half_width: float, iterations: int = 3) -> Peak:
    """The highest maximum with search[0] < bias < search[1], refined by a parabola through the points within
    ``half_width`` of it (re-centred ``iterations`` times).

    Args:
        bias: (n,) bias (any unit, e.g. mV), need not be sorted. y: (n,) dI/dV. search: the bias interval.
        half_width: half width of the parabola window (bias units): a fraction of the peak's width, and wide
            enough to hold >= 5 points, so that the vertex averages the noise.

    Returns:
        :class:`Peak`.

    Raises:
        FitError: shapes differ, fewer than 5 points in a window, or the top is not a maximum.

    Example:
        >>> import numpy as np
        >>> v = np.linspace(-1, 1, 401)
        >>> round(peak_top(v, 1 / (1 + ((v - 0.3) / 0.1) ** 2), search=(0, 1), half_width=0.0325).position, 6)
        0.3
    """
    bias, y = np.asarray(bias, float), np.asarray(y, float)
    if bias.ndim != 1 or bias.shape != y.shape:
        raise FitError(f"bias {bias.shape} and y {y.shape} must be equal 1D shapes")
    check_finite(search, "search", "peak_top", error=FitError)
    check_finite(half_width, "half_width", "peak_top", error=FitError)
    if not half_width > 0:
        raise FitError(f"peak_top: half_width = {half_width!r} must be > 0 (bias units)")
    lo, hi = search
    inside = np.flatnonzero((bias > lo) & (bias < hi) & np.isfinite(y))
    if inside.size < 5:
        raise FitError(f"fewer than 5 points with {lo} < bias < {hi}")
    centre = bias[inside[np.argmax(y[inside])]]
    for _ in range(iterations):
        near = np.abs(bias - centre) < half_width
        if near.sum() < 5:
            raise FitError(f"fewer than 5 points within {half_width} of the peak at {centre:.4g}: widen half_width")
        x0 = bias[near] - centre
        coef, cov = np.polyfit(x0, y[near], 2, cov="unscaled")
        if coef[0] >= 0:
            raise FitError(f"the top near {centre:.4g} is not a maximum (positive curvature)")
        shift = -coef[1] / (2 * coef[0])
        centre, height = centre + shift, float(np.polyval(coef, shift))
    dof = max(1, int(near.sum()) - 3)
    noise2 = float(np.sum((np.polyval(coef, x0) - y[near]) ** 2) / dof)
    # vertex x = -b / 2a: gradient (b / 2a^2, -1 / 2a) with respect to (a, b)
    grad = np.array([coef[1] / (2 * coef[0] ** 2), -1.0 / (2 * coef[0])])
    error = float(np.sqrt(noise2 * grad @ cov[:2, :2] @ grad))
    return Peak(float(centre), height, error)


def shiba_pair(bias, y, *, search: tuple[float, float], half_width: float) -> tuple[Peak, Peak]:
    """The (negative-bias, positive-bias) maxima of a Shiba pair, each the highest top with
    search[0] < |bias| < search[1] on its side (see :func:`peak_top`)."""
    lo, hi = search
    return (
        peak_top(bias, y, search=(-hi, -lo), half_width=half_width),
        peak_top(bias, y, search=(lo, hi), half_width=half_width),
    )
