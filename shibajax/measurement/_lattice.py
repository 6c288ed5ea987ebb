"""The geometry of a grid of spectra: integer (row, col) of every pixel from its measured position.

Private: ``shibajax.measurement.readers.read_grid`` uses it and writes the result into the Dataset's coordinates
and attributes.

A scan grid is a 2D Bravais lattice, ``p = origin + col a1 + row a2``, possibly rotated, sheared and with holes
(skipped pixels). ``a1`` is the fast (within-row) step: the most common step between consecutive pixels of the
file order, the componentwise median of its cluster (robust against the jumps between rows, holes and a few
misplaced pixels); ``a2`` the most common short neighbour vector that is not parallel to ``a1``. The integer
coordinates are the rounded lattice coordinates; ``origin``, ``a1`` and ``a2`` are then refitted by least squares
on all pixels (three rounds), and ``a2`` is replaced by ``a2 + m a1`` (m integer) where that makes the columns
span least (the raster's rows of a sheared lattice). The positions are on a lattice when every pixel lies within
``tolerance`` (a fraction of the shorter step) of its lattice point, no two pixels share a lattice point, and the
pixels fill at least ``MIN_FILL`` of the bounding rectangle of (row, col).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.spatial import cKDTree

TOLERANCE = 0.25
"""A pixel farther than this fraction of the shorter lattice step from its lattice point: not a lattice."""
MIN_FILL = 0.25
"""Fewer pixels than this fraction of rows x cols: too sparse to call a regular grid (images would be mostly
holes)."""
MIN_RASTER = 0.4
"""The fast step must be at least this fraction of the steps between consecutive pixels (a raster order);
otherwise a1 is the most common nearest-neighbour vector."""
SHEAR_SEARCH = 8
"""a2 is replaced by a2 + m a1, |m| <= this, when that makes the columns span less."""
PARALLEL_SIN = 0.5
"""Neighbour vectors within 30 degrees (|sin| < 0.5) of ``a1`` count as parallel to it."""


@dataclasses.dataclass(frozen=True)
class Lattice:
    """Result of :func:`fit_lattice`. ``ok`` False: ``reason`` says why, the arrays are empty and steps NaN.

    ``row``, ``col``: (n,) int; ``a1`` (along a row: col + 1), ``a2`` (row + 1), ``origin`` (row = col = 0):
    (2,) in the positions' unit; ``residual``: largest distance of a pixel from its lattice point; ``shape``:
    (rows, cols)."""

    ok: bool
    reason: str
    row: np.ndarray
    col: np.ndarray
    a1: np.ndarray
    a2: np.ndarray
    origin: np.ndarray
    residual: float
    shape: tuple[int, int]


def _none(reason: str) -> Lattice:
    nan2 = np.full(2, np.nan)
    empty = np.zeros(0, dtype=np.int64)
    return Lattice(False, reason, empty, empty, nan2, nan2, nan2, np.nan, (0, 0))


def _dominant(vectors: np.ndarray, width: float) -> tuple[np.ndarray, float]:
    """The largest cluster (vector distance < width, each vector or its negative) of ``vectors`` (m, 2): its
    componentwise median, signed as the cluster's seed, and the fraction of the vectors in it. The seed is the
    vector with most others within ``width`` (of the first 500; ties: the shortest)."""
    seeds = vectors[:500]
    d_plus = np.linalg.norm(seeds[:, None, :] - vectors[None, :, :], axis=-1)
    d_minus = np.linalg.norm(seeds[:, None, :] + vectors[None, :, :], axis=-1)
    counts = (np.minimum(d_plus, d_minus) < width).sum(axis=1)
    best = np.flatnonzero(counts == counts.max())
    seed = seeds[best[np.argmin(np.linalg.norm(seeds[best], axis=1))]]
    signed = np.where((vectors @ seed >= 0)[:, None], vectors, -vectors)
    near = np.linalg.norm(signed - seed, axis=1) < width
    return np.median(signed[near], axis=0), float(near.mean())


def fit_lattice(xy, names=None, *, tolerance: float = TOLERANCE) -> Lattice:
    """(row, col) of every position ``xy`` (n, 2), in pixel order (the fast axis is the within-row step).

    ``names`` (n,) name pixels in the reasons. Positions must be finite (the caller says which are not).
    """
    xy = np.asarray(xy, dtype=np.float64)
    n = xy.shape[0]
    names = [str(k) for k in range(n)] if names is None else list(names)
    if n == 1:
        zero = np.zeros(1, dtype=np.int64)
        nan2 = np.full(2, np.nan)
        return Lattice(True, "", zero, zero, nan2, nan2, xy[0].copy(), 0.0, (1, 1))
    tree = cKDTree(xy)
    k = min(n, 13)  # enough neighbours to reach the next row of a lattice with rows up to ~6 steps apart
    dist, idx = tree.query(xy, k=k)
    dup = np.flatnonzero(dist[:, 1] == 0)
    if dup.size:
        i = int(dup[0])
        return _none(f"pixels {names[i]} and {names[int(idx[i, 1])]} have the same position")
    step = float(np.median(dist[:, 1]))

    # a1: the fast step, the most common step between consecutive pixels (a row change is a rare long jump)
    steps = np.diff(xy, axis=0)
    a1, share = _dominant(steps, 0.25 * float(np.median(np.linalg.norm(steps, axis=1))))
    if share < MIN_RASTER:  # not a raster order: the most common nearest-neighbour vector
        steps = xy[idx[:, 1]] - xy
        a1, _ = _dominant(steps, 0.2 * step)
    if (steps @ a1 < 0).sum() > (steps @ a1 > 0).sum():
        a1 = -a1  # col increases along the file order

    # a2: the most common short neighbour vector that is not parallel to a1
    vec = (xy[idx[:, 1:]] - xy[:, None, :]).reshape(-1, 2)
    vlen = np.linalg.norm(vec, axis=1)
    cross = a1[0] * vec[:, 1] - a1[1] * vec[:, 0]
    sideways = (vlen > 0.5 * step) & (np.abs(cross) > PARALLEL_SIN * np.linalg.norm(a1) * vlen)
    single_row = not sideways.any()
    if single_row:
        a2 = np.array([-a1[1], a1[0]])
    else:
        vec, vlen = vec[sideways], vlen[sideways]
        short = vec[vlen < 1.2 * vlen.min()]
        a2, _ = _dominant(short, 0.2 * float(np.linalg.norm(short, axis=1).min()))

    origin = xy[0].copy()
    for _ in range(3):
        basis = np.column_stack([a1, a2])
        if abs(np.linalg.det(basis)) < 1e-12 * float(np.linalg.norm(a1) * np.linalg.norm(a2)):
            return _none("the neighbour vectors are parallel (the positions lie on a line with uneven steps)")
        lattice = np.rint(np.linalg.solve(basis, (xy - origin).T).T)
        if single_row:
            lattice[:, 1] = 0.0
        design = np.column_stack([np.ones(n), lattice[:, 0]] + ([] if single_row else [lattice[:, 1]]))
        coef, *_ = np.linalg.lstsq(design, xy, rcond=None)
        origin, a1 = coef[0], coef[1]
        a2 = np.array([-a1[1], a1[0]]) if single_row else coef[2]
    basis = np.column_stack([a1, a2])
    lattice = np.rint(np.linalg.solve(basis, (xy - origin).T).T).astype(np.int64)
    if single_row:
        lattice[:, 1] = 0
    else:  # a2 + m a1 is as good a basis: take the one whose columns span least (the raster's rows)
        shifts = np.arange(-SHEAR_SEARCH, SHEAR_SEARCH + 1)
        spans = [np.ptp(lattice[:, 0] - m * lattice[:, 1]) for m in shifts]
        lengths = [float(np.linalg.norm(a2 + m * a1)) for m in shifts]
        m = int(shifts[min(range(shifts.size), key=lambda i: (spans[i], lengths[i]))])
        a2, lattice[:, 0] = a2 + m * a1, lattice[:, 0] - m * lattice[:, 1]
        basis = np.column_stack([a1, a2])
    fit = origin + lattice @ basis.T
    off = np.linalg.norm(xy - fit, axis=1)
    shortest = float(np.linalg.norm(a1) if single_row else min(np.linalg.norm(a1), np.linalg.norm(a2)))
    worst = int(np.argmax(off))
    if off[worst] > tolerance * shortest:
        return _none(
            f"the positions are not on a regular lattice: pixel {names[worst]} lies {off[worst]:.3g} from the "
            f"best-fitting lattice point, more than {tolerance:g} of the step {shortest:.3g}"
        )
    keys, counts = np.unique(lattice, axis=0, return_counts=True)
    if (counts > 1).any():
        clash = np.flatnonzero((lattice == keys[np.argmax(counts > 1)]).all(axis=1))
        return _none(f"pixels {names[clash[0]]} and {names[clash[1]]} fall on the same lattice point")

    col, row = lattice[:, 0], lattice[:, 1]
    half = max(1, n // 2)
    if row[half:].mean() < row[:half].mean():  # row increases along the file order
        row, a2 = -row, -a2
    origin = origin + col.min() * a1 + row.min() * a2
    col, row = col - col.min(), row - row.min()
    shape = (int(row.max()) + 1, int(col.max()) + 1)
    if n < MIN_FILL * shape[0] * shape[1]:
        return _none(
            f"the {n} positions fill only {n / (shape[0] * shape[1]):.1%} of a {shape[0]} x {shape[1]} lattice "
            f"(less than {MIN_FILL:.0%})"
        )
    return Lattice(True, "", row, col, a1, a2, origin, float(off.max()), shape)
