"""Peak positions of a measured (or modelled) spectrum: the vertex of a parabola through the top of a peak.

A Shiba pair seen with a normal tip gives dI/dV maxima at offset -+ E_b (thermal and lock-in broadening are
even in the bias, so they move a maximum only through the slope of what lies under it). The maxima are the
model-independent positions that STM papers quote; fits of a line shape that misses a feature (an unresolved
second state, a shoulder) put the model's peak at the centroid of the measured one instead, which is why
``shibajax.fitting.anchored`` can pin the Shiba energy to these maxima.

For a grid of spectra, :func:`shiba_pairs` finds the pair of every pixel at once (NumPy over the pixel axis; the
same numbers as :func:`shiba_pair` pixel by pixel, a pixel where it would raise is flagged instead), and
:func:`in_gap_visibility` says whether a pixel shows an in-gap state at all: the in-gap maximum over the
normal-state signal, > ``VISIBLE`` (2) for "a visible Shiba pair".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from shibajax.errors import FitError
from shibajax.measurement.dos import check_finite

VISIBLE = 2.0
"""A Shiba pair is visible when the in-gap maximum exceeds twice the normal-state signal (:func:`in_gap_visibility`):
at 1 K a normal tip on bare Pb gives ~0.3-0.4 there (the thermal tails of the coherence peaks, at |V| ~ 1 mV), an
MnPc Shiba peak 2.5-6.5."""


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
        bias: (n,) bias (any unit, e.g. mV), need not be sorted. y: (n,) dI/dV (NaN or inf points are left out).
            search: the bias interval.
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
        near = (np.abs(bias - centre) < half_width) & np.isfinite(y)
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


@dataclasses.dataclass(frozen=True)
class ShibaPairs:
    """Result of :func:`shiba_pairs`, per pixel (leading shape ``P`` = ``didv.shape[:-1]``, e.g. ``(n_pix,)``).

    Unpacks as ``E_b, offset, heights, found = shiba_pairs(...)``.

    Attributes:
        energy: ``P`` E_b = (V+ - V-) / 2 (bias units: meV for a bias in mV); NaN where not ``found``.
        offset: ``P`` (V+ + V-) / 2, the bias offset; NaN where not ``found``.
        heights: ``P + (2,)`` the parabola heights (negative-bias peak, positive-bias peak), data units; NaN on a
            side where no maximum was found.
        found: ``P`` bool, a maximum on both sides (where :func:`shiba_pair` returns rather than raises).
        positions: ``P + (2,)`` (V-, V+); errors: ``P + (2,)`` their standard errors (see :func:`peak_top`).
    """

    energy: np.ndarray
    offset: np.ndarray
    heights: np.ndarray
    found: np.ndarray
    positions: np.ndarray
    errors: np.ndarray

    @property
    def energy_error(self) -> np.ndarray:
        """``P`` the standard error of E_b, hypot(error-, error+) / 2 (as the anchored fits use it)."""
        return 0.5 * np.hypot(self.errors[..., 0], self.errors[..., 1])

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.energy, self.offset, self.heights, self.found))


def _check_grid(bias, didv, owner: str) -> tuple[np.ndarray, np.ndarray]:
    bias, didv = np.asarray(bias, dtype=np.float64), np.asarray(didv, dtype=np.float64)
    if bias.ndim != 1 or didv.ndim < 1 or didv.shape[-1] != bias.size:
        raise FitError(
            f"{owner}: bias {bias.shape} must be 1D and didv {didv.shape} must end with the same length "
            "(didv is (n_pix, n_bias), or (n_bias,) for one spectrum)"
        )
    check_finite(bias, "bias", owner, error=FitError)
    return bias, didv


def _peak_tops(bias, y, lo: float, hi: float, half_width: float, iterations: int = 3):
    """:func:`peak_top` of every row of ``y`` (m, n): (position, height, error, ok), each (m,); NaN where not ok.

    The parabola of each pixel is the least-squares fit in u = (V - centre) / half_width (so that the 3 x 3 normal
    equations are well conditioned: u in (-1, 1)), from the masked moments sum u^k and sum u^k y, solved for all
    pixels at once; a = c_2 / hw^2, b = c_1 / hw, c = c_0 in the units of :func:`peak_top`.
    """
    m = y.shape[0]
    finite = np.isfinite(y)
    inside = (bias > lo) & (bias < hi) & finite
    ok = inside.sum(axis=1) >= 5
    first = np.argmax(np.where(inside, y, -np.inf), axis=1)  # first index of the maximum, as np.argmax in peak_top
    centre = bias[first]
    y0 = np.where(finite, y, 0.0)
    for _ in range(iterations):
        offset = bias[None, :] - centre[:, None]
        near = (np.abs(offset) < half_width) & finite  # as peak_top
        cols = near.any(axis=0)  # only the bias points in some pixel's window (the others weigh 0)
        w, u, yw = near[:, cols].astype(np.float64), offset[:, cols] / half_width, y0[:, cols]
        count = w.sum(axis=1)
        ok &= count >= 5
        u2 = u * u
        moments = [w.sum(axis=1), (w * u).sum(axis=1), (w * u2).sum(axis=1), (w * u2 * u).sum(axis=1)]
        moments.append((w * u2 * u2).sum(axis=1))
        rhs = np.stack([(w * u2 * yw).sum(axis=1), (w * u * yw).sum(axis=1), (w * yw).sum(axis=1)], axis=1)
        normal = np.stack([np.stack([moments[4 - i - j] for j in range(3)], axis=1) for i in range(3)], axis=1)
        normal = np.where(ok[:, None, None], normal, np.eye(3))  # dummies for failed pixels (no LinAlgError)
        coef = np.linalg.solve(normal, rhs[..., None])[..., 0]  # (c2, c1, c0) in u
        ok &= coef[:, 0] < 0  # a maximum: negative curvature
        coef[:, 0] = np.where(ok, coef[:, 0], -1.0)
        shift_u = -coef[:, 1] / (2 * coef[:, 0])
        height = (coef[:, 0] * shift_u + coef[:, 1]) * shift_u + coef[:, 2]
        centre = np.where(ok, centre + shift_u * half_width, centre)
    # residual noise of the last parabola (its points, about the centre before its shift), as peak_top
    resid = (coef[:, 0:1] * u + coef[:, 1:2]) * u + coef[:, 2:3] - yw
    noise2 = (w * resid**2).sum(axis=1) / np.maximum(1.0, count - 3)
    a, b = coef[:, 0] / half_width**2, coef[:, 1] / half_width
    scale = np.array([half_width**2, half_width])
    cov_ab = np.linalg.inv(normal)[:, :2, :2] / np.outer(scale, scale)  # unscaled covariance of (a, b)
    grad = np.stack([b / (2 * a**2), -1.0 / (2 * a)], axis=1)  # of the vertex -b / 2a
    error = np.sqrt(noise2 * np.einsum("mi,mij,mj->m", grad, cov_ab, grad))
    nan = np.full(m, np.nan)
    return np.where(ok, centre, nan), np.where(ok, height, nan), np.where(ok, error, nan), ok


def shiba_pairs(bias, didv, *, search: tuple[float, float], half_width: float) -> ShibaPairs:
    """The Shiba pair of every pixel of a grid: :func:`shiba_pair` vectorised over the pixels.

    Each side's maximum is the highest point with search[0] < |bias| < search[1] on that side, refined by three
    re-centred parabolas through the points within ``half_width`` (see :func:`peak_top`); a pixel where
    :func:`shiba_pair` would raise (fewer than 5 points in a window, or a top with positive curvature: no
    maximum, e.g. bare Pb whose highest in-gap point is the rising edge of a coherence peak) gets
    ``found = False`` instead. Whether a found pair is a real in-gap state is :func:`in_gap_visibility`'s
    question.

    Args:
        bias: (n_bias,) bias (e.g. mV), need not be sorted. didv: (n_pix, n_bias) (or (n_bias,)) dI/dV; NaN or
            inf points are left out of the windows.
        search: (lo, hi), 0 <= lo < hi, the |bias| interval of the peaks. half_width: as :func:`peak_top`.

    Returns:
        :class:`ShibaPairs` (unpacks as ``E_b, offset, heights, found``).

    Raises:
        FitError: shapes that do not fit, a non-finite bias, search or half_width.

    Example:
        >>> import numpy as np
        >>> v = np.linspace(-1, 1, 401)
        >>> gauss = lambda x0: np.exp(-(((v - x0) / 0.04) ** 2))
        >>> e_b, offset, heights, found = shiba_pairs(
        ...     v, np.stack([gauss(-0.5) + gauss(0.5), gauss(-0.41) + gauss(0.39), 0 * v]), search=(0.2, 0.8),
        ...     half_width=0.02)
        >>> np.round(e_b, 3).tolist(), np.round(offset, 3).tolist(), found.tolist()
        ([0.5, 0.4, nan], [0.0, -0.01, nan], [True, True, False])
    """
    bias, didv = _check_grid(bias, didv, "shiba_pairs")
    check_finite(search, "search", "shiba_pairs", error=FitError)
    check_finite(half_width, "half_width", "shiba_pairs", error=FitError)
    lo, hi = (float(v) for v in search)
    if not 0 <= lo < hi:
        raise FitError(f"shiba_pairs: search = {search!r} must be (lo, hi) with 0 <= lo < hi (|bias| units)")
    if not half_width > 0:
        raise FitError(f"shiba_pairs: half_width = {half_width!r} must be > 0 (bias units)")
    lead = didv.shape[:-1]
    y = didv.reshape(-1, bias.size)
    neg = _peak_tops(bias, y, -hi, -lo, float(half_width))
    pos = _peak_tops(bias, y, lo, hi, float(half_width))
    found = neg[3] & pos[3]
    energy = np.where(found, 0.5 * (pos[0] - neg[0]), np.nan)
    offset = np.where(found, 0.5 * (pos[0] + neg[0]), np.nan)

    def pair(k):
        return np.stack([neg[k], pos[k]], axis=-1).reshape(*lead, 2)

    return ShibaPairs(energy.reshape(lead), offset.reshape(lead), pair(1), found.reshape(lead), pair(0), pair(2))


def normal_state(bias, didv) -> np.ndarray:
    """The normal-state signal of each spectrum: the mean of the outer 10 % of the points (by bias) on each side,
    averaged, as the fits normalise (``shibajax fit``); ``didv.shape[:-1]``."""
    bias, didv = _check_grid(bias, didv, "normal_state")
    order = np.argsort(bias, kind="stable")
    n = max(1, bias.size // 10)
    y = didv[..., order]
    return 0.5 * (np.nanmean(y[..., :n], axis=-1) + np.nanmean(y[..., -n:], axis=-1))


def in_gap_visibility(bias, didv, gap) -> np.ndarray:
    """How visible an in-gap state is: the in-gap maximum of dI/dV over the normal-state signal, per pixel.

    visibility = max_{in gap} dI/dV / N, with N the mean of the outer 10 % of the points on each side of the
    window (the bias given: pass the fit window, e.g. |V| < 2.5 mV), averaged, as the fits normalise. A pixel
    shows a Shiba pair when visibility > ``VISIBLE`` = 2 (twice the normal state; issue 14's criterion). With a
    normal tip at 1 K, bare Pb gives ~0.3-0.4 for gap = 1 mV (the tails of the coherence peaks at 1.4 mV), a
    Shiba peak several units.

    Args:
        bias: (n_bias,) bias (e.g. mV), need not be sorted. didv: (n_pix, n_bias) or (n_bias,); NaN points are
            left out.
        gap: the in-gap region: ``hi`` (|bias| < hi) or ``(lo, hi)`` (lo < |bias| < hi), below the coherence
            peaks (e.g. 1.0 mV for Pb, whose peaks sit at ~1.4 mV); bias units.

    Returns:
        ``didv.shape[:-1]`` float; NaN where the normal-state signal is not > 0 or the gap holds no finite point.

    Raises:
        FitError: shapes that do not fit, a gap that is not finite with 0 <= lo < hi, or no bias point in it.

    Example:
        >>> import numpy as np
        >>> v = np.linspace(-3, 3, 601)
        >>> flat = np.where(np.abs(v) > 1.4, 1.0, 0.05)
        >>> peak = flat + 4 * np.exp(-(((np.abs(v) - 0.5) / 0.05) ** 2))
        >>> np.round(in_gap_visibility(v, np.stack([flat, peak]), 1.0), 3).tolist()
        [0.05, 4.05]
    """
    bias, didv = _check_grid(bias, didv, "in_gap_visibility")
    check_finite(gap, "gap", "in_gap_visibility", error=FitError)
    lo, hi = (0.0, float(gap)) if np.ndim(gap) == 0 else (float(v) for v in gap)
    if not 0 <= lo < hi:
        raise FitError(f"in_gap_visibility: gap = {gap!r} must be hi > 0 or (lo, hi) with 0 <= lo < hi (bias units)")
    inside = (np.abs(bias) < hi) & (np.abs(bias) > lo if lo > 0 else True)
    if not inside.any():
        raise FitError(
            f"in_gap_visibility: no bias point with {lo} < |bias| < {hi} (the bias covers "
            f"[{bias.min():.4g}, {bias.max():.4g}]); check the gap and the bias unit (mV)"
        )
    norm = normal_state(bias, didv)
    top = np.max(np.where(np.isfinite(didv[..., inside]), didv[..., inside], -np.inf), axis=-1)
    ok = (norm > 0) & np.isfinite(top)
    return np.where(ok, top / np.where(ok, norm, 1.0), np.nan)
