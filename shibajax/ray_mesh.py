"""Brillouin-zone quadrature that converges at physical gaps: rays from the pocket centres, graded at the Fermi line.

Why. Inside the gap the integrand of G0(d, E) = sum_k exp(i k.d) [E - H(k)]^-1 has poles at a distance
Omega / v_F from the real k axis on the whole Fermi line (Omega = sqrt(Delta^2 - E^2)), and is smooth everywhere
else. A uniform grid converges like exp(-L Omega / v_F): at Delta / W ~ 1e-3 it needs L ~ 10^4 per axis. Cells that
are refined in both directions (:mod:`shibajax.fermi_shell`) waste points along the Fermi line, where nothing is
sharp, and converge slowly.

How. The zone is cut into *tiles* (rectangles in reduced coordinates: the whole zone around Gamma or around
(pi, pi), or its four quarters around the four time-reversal-invariant momenta), each tile into four triangles
from its centre c to its edges, and each triangle is covered by rays

    k(t, rho) = c + rho [P0 + t (P1 - P0)],      t, rho in [0, 1],      d^2k = rho |det(P0, P1)| dt drho,

with P0, P1 two adjacent corners of the tile (relative to c). Along a ray the only sharp structure is where a
normal-state band xi_n crosses zero: every crossing rho_j (of every band, found by a sign scan and bisection) is a
breakpoint, and the rho-panels are graded geometrically towards it, from a half-width omega_min / |d xi / d rho| up
to the band scale, with Gauss-Legendre points on each panel. The ray-integrated function of t is then smooth
(analytic) wherever the rays cross the Fermi line transversally, which they do when every pocket is star-shaped
about the centre of its tile; t is integrated by Gauss-Legendre panels. Both rules converge exponentially (in the
number of t-panels and in the grading depth), so a mesh of ~10^5 points gives G0 to ~1e-10 at Delta / W = 1e-4
instead of the ~10^8 points of a uniform grid. The integrand is the full BdG resolvent: any pairing, any number of
bands and orbitals, every displacement and form factor; the mesh is a :class:`~shibajax.brillouin_zone.KMesh`, so
every solver takes it unchanged.

Limits (checked when the mesh is built, with a clear error): 2D models; every Fermi crossing transversal and away
from the tile edges (pockets star-shaped about their tile's centre, not touching the tile boundary); the finest
panel resolves energies down to ``omega_min`` (default 1e-3 of the gap), i.e. the search reaches the gap edge to
within (1 - sqrt(1 - 1e-6)).

Convergence diagnostic. :func:`physical_gap_bound_states` answers on a mesh and on a finer one (more t-panels,
deeper grading, more Gauss points) and reports the difference as ``BoundStates.energy_errors``: for an
exponentially convergent rule the coarser mesh's error, so an upper estimate of the answer's (the finer mesh's).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from shibajax import (
    _linalg,
    _precision,  # noqa: F401
)
from shibajax.brillouin_zone import KMesh, host_gap
from shibajax.errors import ParameterError, ShapeError
from shibajax.models.tight_binding import TightBindingModel, electron_hamiltonian, pairing_matrix

TWO_PI = 2.0 * math.pi


@dataclasses.dataclass(frozen=True)
class RaySettings:
    """Resolution of a ray mesh (all dimensionless).

    Attributes:
        angular_panels: Gauss-Legendre panels in t per triangle (each tile has four triangles).
        angular_gauss: Gauss points per t-panel.
        radial_gauss: Gauss points per rho-panel.
        grading: ratio of neighbouring rho-panels towards a Fermi crossing (> 1).
        omega_fraction: the finest panel resolves energies omega_min = omega_fraction * gap.
        smooth_panel: largest rho-panel away from the crossings (a fraction of the ray).
        samples: points per ray of the sign scan that finds the crossings.
        span: half-width (fraction of the ray) of the stretch about each crossing whose graded points are
            compressed onto ``carrier_nodes`` Gauss nodes (:class:`RayQuadrature`).
        carrier_nodes: interpolation nodes of the smooth factors on each span.
    """

    angular_panels: int = 4
    angular_gauss: int = 8
    radial_gauss: int = 6
    grading: float = 3.0
    omega_fraction: float = 1e-3
    smooth_panel: float = 0.25
    samples: int = 192
    span: float = 0.0625
    carrier_nodes: int = 10

    def finer(self) -> RaySettings:
        """A finer mesh for the error estimate: a third more t-panels (at least one), two more Gauss points per
        t-panel and one more per rho-panel, a gentler grading, a twice smaller finest panel, smaller smooth
        panels and two more carrier nodes (every resolution parameter refined)."""
        return dataclasses.replace(
            self,
            angular_panels=self.angular_panels + max(1, self.angular_panels // 3),
            angular_gauss=self.angular_gauss + 2,
            radial_gauss=self.radial_gauss + 1,
            grading=1.0 + (self.grading - 1.0) / 1.25,
            omega_fraction=self.omega_fraction / 2.0,
            smooth_panel=self.smooth_panel / 1.25,
            carrier_nodes=self.carrier_nodes + 2,
        )

    def check(self) -> None:
        ints = ("angular_panels", "angular_gauss", "radial_gauss", "samples", "carrier_nodes")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ParameterError(f"{name} = {value!r} must be a positive integer")
        if self.samples < 8:
            raise ParameterError(f"samples = {self.samples!r} must be at least 8 (points of the crossing scan)")
        if not (np.isfinite(self.grading) and self.grading > 1.0):
            raise ParameterError(f"grading = {self.grading!r} must be a number > 1 (ratio of neighbouring panels)")
        if not (np.isfinite(self.omega_fraction) and 0.0 < self.omega_fraction < 1.0):
            raise ParameterError(f"omega_fraction = {self.omega_fraction!r} must be in (0, 1) (a fraction of the gap)")
        if not (np.isfinite(self.span) and 0.0 < self.span <= 0.5):
            raise ParameterError(f"span = {self.span!r} must be in (0, 0.5] (a fraction of a ray)")
        if not (np.isfinite(self.smooth_panel) and 0.0 < self.smooth_panel <= 1.0):
            raise ParameterError(f"smooth_panel = {self.smooth_panel!r} must be in (0, 1] (a fraction of a ray)")


#: Tilings tried in order: (centre, half-widths) rectangles in reduced coordinates that tile the zone.
TILINGS = {
    "gamma": (((0.0, 0.0), (math.pi, math.pi)),),
    "m": (((math.pi, math.pi), (math.pi, math.pi)),),
    "trim": tuple(((cx, cy), (math.pi / 2.0, math.pi / 2.0)) for cx in (0.0, math.pi) for cy in (0.0, math.pi)),
}


#: Points per call of the mesh set-up kernels (:func:`_chunked`): one compiled shape for every mesh of a model.
SETUP_CHUNK = 4096


def _chunked(fn, model, k):
    """fn(model, k) for host points k (..., 2), evaluated SETUP_CHUNK points at a time (the last chunk padded), so
    that every mesh of a model (a mesh and its finer partner, every bisection step of the crossing search) runs one
    compiled program. Returns host arrays with the leading shape of k. (A set-up step, not a solver loop: the
    chunks are dispatched without host syncs in between, and gathered at the end.)"""
    flat = np.asarray(k, np.float64).reshape(-1, 2)
    n = flat.shape[0]
    n_chunks = max(1, -(-n // SETUP_CHUNK))
    padded = np.zeros((n_chunks * SETUP_CHUNK, 2))
    padded[:n] = flat
    parts = [fn(model, jnp.asarray(c)) for c in padded.reshape(n_chunks, SETUP_CHUNK, 2)]
    out = [np.concatenate([np.asarray(p[i]) for p in parts])[:n] for i in range(len(parts[0]))]
    return tuple(a.reshape(*np.shape(k)[:-1], *a.shape[1:]) for a in out)


@jax.jit
def _bands_flat(model, k):
    h = jax.vmap(partial(electron_hamiltonian, model))(k)
    return (_linalg.eigvalsh(h),)


def _bands(model, k):
    """Normal-state bands xi_n(k) (..., 2 n_orb), sorted, at host points k (..., 2): a host array."""
    return _chunked(_bands_flat, model, k)[0]


def _triangles(tiling):
    """(n_tri, 3, 2): centre c, corners P0, P1 (relative to c) of every triangle of the tiling."""
    out = []
    for (cx, cy), (hx, hy) in tiling:
        corners = [(hx, hy), (-hx, hy), (-hx, -hy), (hx, -hy)]
        for i in range(4):
            out.append([(cx, cy), corners[i], corners[(i + 1) % 4]])
    return np.asarray(out, dtype=np.float64)


def _gauss(n):
    x, w = np.polynomial.legendre.leggauss(int(n))
    return 0.5 * (x + 1.0), 0.5 * w  # on [0, 1]


@dataclasses.dataclass
class _Rays:
    """Every ray of a tiling: origin (n, 2), direction (n, 2) (k = origin + rho direction), the t-weight times the
    triangle's Jacobian |det(P0, P1)| (n,)."""

    origin: np.ndarray
    direction: np.ndarray
    weight: np.ndarray


def _rays(tiling, settings: RaySettings) -> _Rays:
    tri = _triangles(tiling)
    x, w = _gauss(settings.angular_gauss)
    edges = np.linspace(0.0, 1.0, settings.angular_panels + 1)
    t = (edges[:-1, None] + np.diff(edges)[:, None] * x[None]).ravel()
    wt = (np.diff(edges)[:, None] * w[None]).ravel()
    c, p0, p1 = tri[:, 0], tri[:, 1], tri[:, 2]
    direction = p0[:, None, :] + t[None, :, None] * (p1 - p0)[:, None, :]
    jac = np.abs(p0[:, 0] * p1[:, 1] - p0[:, 1] * p1[:, 0])
    origin = np.broadcast_to(c[:, None, :], direction.shape)
    weight = wt[None, :] * jac[:, None]
    return _Rays(origin.reshape(-1, 2), direction.reshape(-1, 2), weight.ravel())


def _crossings(model, rays: _Rays, samples: int):
    """Fermi crossings of every band on every ray: (ray index, rho, |d xi / d rho|) arrays, and the scan values.

    A sign scan on ``samples`` points of rho in [0, 1] brackets them; 60 bisection steps refine them to ~1e-16
    of the ray; the speed is the centred difference of xi over 1e-6 of the ray (the bands are smooth there).
    """
    rho = np.linspace(0.0, 1.0, samples)
    k = rays.origin[:, None, :] + rho[None, :, None] * rays.direction[:, None, :]
    xi = _bands(model, k)  # (n_rays, samples, n_bands)
    sign = xi > 0
    change = sign[:, 1:, :] != sign[:, :-1, :]
    ray, seg, band = np.nonzero(change)
    lo, hi = rho[seg], rho[seg + 1]
    f_lo = xi[ray, seg, band]
    origin, direction = rays.origin[ray], rays.direction[ray]

    def band_at(r):
        values = _bands(model, origin + r[:, None] * direction)
        return values[np.arange(r.shape[0]), band]

    for _ in range(60):
        mid = 0.5 * (lo + hi)
        f_mid = band_at(mid)
        left = np.sign(f_mid) == np.sign(f_lo)
        lo, f_lo = np.where(left, mid, lo), np.where(left, f_mid, f_lo)
        hi = np.where(left, hi, mid)
    root = 0.5 * (lo + hi)
    step = 1e-6
    speed = np.abs(band_at(root + step) - band_at(root - step)) / (2 * step)
    return ray, root, speed, band, xi


def _panels(roots, speeds, omega_min, settings: RaySettings):
    """Panel edges on [0, 1] for one ray, graded towards each root (sorted); returns an ascending edge array."""
    edges = [0.0, 1.0]
    for r, v in zip(roots, speeds, strict=True):
        half = omega_min / max(v, 1e-300)
        width = half
        edges += [r - half, r + half]
        while width < settings.smooth_panel:
            width *= settings.grading
            edges += [r - width, r + width]
    edges = np.unique(np.clip(np.asarray(edges), 0.0, 1.0))
    # split panels longer than smooth_panel
    out = [edges[0]]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        n = max(1, math.ceil((b - a) / settings.smooth_panel - 1e-12))
        out.extend(np.linspace(a, b, n + 1)[1:])
    return np.asarray(out)


def _edges_cross(model, tiling, samples) -> bool:
    """Whether any band changes sign along the boundary of any tile (a Fermi line leaves its tile)."""
    u = np.linspace(0.0, 1.0, 4 * samples, endpoint=False)
    for (cx, cy), (hx, hy) in tiling:
        corners = np.array([(hx, hy), (-hx, hy), (-hx, -hy), (hx, -hy), (hx, hy)]) + np.array([cx, cy])
        path = np.concatenate([a + u[:, None] * (b - a) for a, b in zip(corners[:-1], corners[1:], strict=True)])
        xi = _bands(model, path)
        if np.any(np.sign(xi) != np.sign(np.roll(xi, 1, axis=0))):
            return True
    return False


def _check_tiling(model, tiling, ray, root, speed, xi, samples, scale):
    """Why a tiling cannot be used (or None): a crossing on a tile edge, or a band touching zero without crossing."""
    if _edges_cross(model, tiling, samples) or np.any(root > 1.0 - 2.0 / samples):
        return "a Fermi line crosses the edge of a tile (a pocket is not inside its tile)"
    counts = np.bincount(ray, minlength=xi.shape[0]).reshape(4 * len(tiling), -1)  # (triangle, ray)
    if np.any(counts != counts[:, :1]):
        return "the number of Fermi crossings changes between rays (a pocket is not star-shaped)"
    if np.any(speed < 1e-6 * scale):
        return "a ray grazes the Fermi line (a pocket is not star-shaped about its tile's centre)"
    # a local minimum of |xi| close to zero without a sign change is a near-tangent ray
    a = np.abs(xi)
    interior = (a[:, 1:-1] < a[:, :-2]) & (a[:, 1:-1] < a[:, 2:])
    same = np.sign(xi[:, :-2]) == np.sign(xi[:, 2:])
    step = 1.0 / (samples - 1)
    graze = interior & same & (a[:, 1:-1] < 2.0 * step * np.max(np.abs(np.diff(xi, axis=1)), axis=1, keepdims=True))
    if np.any(graze):
        return "a ray passes close to the Fermi line without crossing it (a pocket is not star-shaped)"
    return None


# ---------------------------------------------------------------------------------------------------------------
# The compressed form: band-resolved weights on few nodes per ray
# ---------------------------------------------------------------------------------------------------------------


class RayQuadrature(NamedTuple):
    """A ray mesh in compressed, band-resolved form (for hosts whose pairing is diagonal in the band basis).

    In the band basis of h(k) (time-reversal-symmetric bands xi_n with eigenvectors u_n, pairing Delta_n = u_n^dagger
    (Delta(k) (x) sigma_0) u_n on band n) the BdG resolvent is a sum of 2 x 2 blocks,

        [z - H(k)]^-1 = sum_n (z + H_n) / (z^2 - E_n^2) on span{(u_n, 0), (0, u_n)},   H_n = [[xi_n, Delta_n],
                                                                                              [Delta_n^*, -xi_n]],

    whose only sharp k dependence is the scalar 1 / (z^2 - E_n^2) near the Fermi line, while u_n(k), exp(i k.d) and
    the impurity form factors vary on the band scale. So the graded (fine) points of a ray carry only scalars
    (xi_n, Delta_n, weights), and the smooth factors are interpolated from ``n_c`` Gauss nodes of the *span* of rho
    that holds the crossings (Lagrange weights ``fine_lagrange``). Points away from the crossings are nodes
    themselves (``node_weight`` > 0).

    Arrays: node_k (n_a, 2), node_u (n_a, B, 2 n_orb), node_xi (n_a, B), node_delta (n_a, B), node_weight (n_a,);
    span_nodes (n_s, n_c) int, fine_xi (n_s, F, B), fine_delta (n_s, F, B), fine_weight (n_s, F),
    fine_lagrange (n_s, F, n_c) (zero-padded fine points have weight 0). For searches inside the gap
    (:func:`channel_operator`): far (n_a, B) int, the number of series terms of each (node, band) pair far from the
    Fermi lines (E_n^2 >= SERIES_RATIO gap^2, :func:`series_terms`), 0 for the pairs summed exactly; near_nodes
    (n_near,) the nodes with a band that is not far, or on a span; near_spans (n_s, n_c) the span nodes' positions
    in near_nodes (host arrays).
    """

    node_k: jax.Array
    node_u: jax.Array
    node_xi: jax.Array
    node_delta: jax.Array
    node_weight: jax.Array
    span_nodes: jax.Array
    fine_xi: jax.Array
    fine_delta: jax.Array
    fine_weight: jax.Array
    fine_lagrange: jax.Array
    far: np.ndarray
    near_nodes: np.ndarray
    near_spans: np.ndarray


_ARRAY_FIELDS = RayQuadrature._fields[:10]


class RayMesh(KMesh):
    """A :class:`~shibajax.brillouin_zone.KMesh` built by :func:`ray_mesh`, with its compressed form.

    As a KMesh (``points``, ``weights``: every Gauss point of every ray) it is an exact quadrature rule that every
    solver takes. For the model it was built for, and when that model's pairing is diagonal in the band basis
    (s-wave or s+- with an orbital-independent form factor on a time-reversal-symmetric band structure),
    ``compressed`` holds the :class:`RayQuadrature` that the Green's-function sums use instead: the same integral,
    ~10x fewer matrix products. ``model_key`` identifies that model (its arrays' content).
    """

    __slots__ = ("compressed", "model_key", "settings")

    def __init__(self, points, weights, description, compressed, model_key, settings):
        super().__init__(points, weights, description)
        self.compressed, self.model_key, self.settings = compressed, model_key, settings


def model_key(model: TightBindingModel) -> str:
    """Content hash of a concrete model (hoppings, pairing, displacements)."""
    digest = hashlib.sha256()
    for arr in (model.hoppings, model.pairing):
        digest.update(np.ascontiguousarray(np.asarray(arr)).tobytes())
    digest.update(repr((model.hop_displacements, model.pair_displacements, model.n_orb)).encode())
    return digest.hexdigest()


def _runtime(rq: RayQuadrature) -> RayQuadrature:
    """The mesh's arrays behind an optimization barrier: under jit they are constants of the program, and XLA would
    otherwise spend seconds constant-folding products of them at compile time."""
    fields = {name: jax.lax.optimization_barrier(getattr(rq, name)) for name in _ARRAY_FIELDS}
    return rq._replace(**fields)


def compressed_for(kgrid, model) -> RayQuadrature | None:
    """The compressed form of ``kgrid`` usable for ``model`` (a RayMesh built for this concrete model), else None."""
    if not isinstance(kgrid, RayMesh) or kgrid.compressed is None:
        return None
    if any(isinstance(x, jax.core.Tracer) for x in (model.hoppings, model.pairing)):
        return _runtime(kgrid.compressed)  # under jit: the host-side entry points checked the model
    check_mesh_model(kgrid, model)
    return _runtime(kgrid.compressed)


def check_mesh_model(kgrid, model) -> None:
    """Raise ParameterError when ``kgrid`` is a RayMesh built for another (concrete) model: its rays are graded
    at that model's Fermi line, and it is accurate for no other."""
    if not isinstance(kgrid, RayMesh) or any(isinstance(x, jax.core.Tracer) for x in (model.hoppings, model.pairing)):
        return
    if model_key(model) != kgrid.model_key:
        raise ParameterError(
            "this ray mesh was built for another model (its rays are graded at that model's Fermi line): "
            "build one for this model with shibajax.ray_mesh.ray_mesh(model)"
        )


@jax.jit
def _band_data(model, k):
    """xi (n, B), u (n, B, 2 n_orb), Delta_n (n, B) and the band-diagonality residual (n,) at k (n, 2)."""
    n = model.n_orb
    h = jax.vmap(partial(electron_hamiltonian, model))(k)
    xi, u = _linalg.eigh(h)
    pair = jax.vmap(lambda q: jnp.kron(pairing_matrix(model, q), jnp.eye(2)))(k)
    delta_full = jnp.einsum("kan,kab,kbm->knm", u.conj(), pair, u)  # Delta in the band basis
    delta = jnp.diagonal(delta_full, axis1=1, axis2=2)
    # residual: off-diagonal pairing between bands, and the hole block against -h(k) (time reversal)
    sy = jnp.kron(jnp.eye(n), jnp.asarray([[0.0, -1j], [1j, 0.0]]))
    hole = jax.vmap(lambda q: -sy @ electron_hamiltonian(model, -q).conj() @ sy)(k)
    off = jnp.max(jnp.abs(delta_full - jax.vmap(jnp.diag)(delta)), axis=(1, 2))
    trs = jnp.max(jnp.abs(hole + h), axis=(1, 2))
    return xi, jnp.swapaxes(u, 1, 2), delta, jnp.maximum(off, trs)


def _lagrange(nodes: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Lagrange basis of ``nodes`` (n_c,) evaluated at x (..., ): (..., n_c)."""
    diff = x[..., None] - nodes  # (..., n_c)
    out = np.ones(diff.shape)
    for j in range(nodes.shape[0]):
        for m in range(nodes.shape[0]):
            if m != j:
                out[..., j] *= diff[..., m] / (nodes[j] - nodes[m])
    return out


def _spans(roots, half):
    """Merged intervals [r - half, r + half] (clipped to [0, 1]) around sorted roots: list of (lo, hi, roots)."""
    spans = []
    for r in roots:
        lo, hi = max(0.0, r - half), min(1.0, r + half)
        if spans and lo <= spans[-1][1]:
            spans[-1] = (spans[-1][0], hi, spans[-1][2] + [r])
        else:
            spans.append((lo, hi, [r]))
    return spans


def _select_tiling(model, settings, tiling, scale):
    names = [tiling] if tiling is not None else list(TILINGS)
    if tiling is not None and tiling not in TILINGS:
        raise ParameterError(f"tiling = {tiling!r}; choose one of {sorted(TILINGS)} or None (automatic)")
    reasons = {}
    for name in names:
        rays = _rays(TILINGS[name], settings)
        ray, root, speed, _, xi = _crossings(model, rays, settings.samples)
        reason = _check_tiling(model, TILINGS[name], ray, root, speed, xi, settings.samples, scale)
        if reason is None:
            return name, rays, ray, root, speed
        reasons[name] = reason
    detail = "; ".join(f"{k}: {v}" for k, v in reasons.items())
    raise ParameterError(
        f"ray_mesh found no tiling of the zone on which every pocket is star-shaped about its tile's centre "
        f"({detail}). Use shibajax.fermi_shell.fermi_shell_mesh for this Fermi surface"
    )


def ray_mesh(
    model: TightBindingModel,
    settings: RaySettings | None = None,
    *,
    tiling: str | None = None,
    gap: float | None = None,
) -> RayMesh:
    """Quadrature of the Brillouin zone on rays from pocket centres, graded towards every Fermi crossing.

    Args:
        model: a 2D BdG model with a full gap (concrete arrays).
        settings: :class:`RaySettings` (the default converges the bound states of s-wave hosts to ~1e-9 of the gap
            at Delta / W = 1e-4; :func:`physical_gap_bound_states` checks it).
        tiling: "gamma" (the whole zone about Gamma), "m" (about (pi, pi)) or "trim" (four quarters about the
            time-reversal-invariant momenta); default: the first of these on which every Fermi crossing is
            transversal and inside its tile.
        gap: the host's gap edge (energy units) that sets the finest panel; default from
            :func:`~shibajax.brillouin_zone.host_gap`.

    Returns:
        :class:`RayMesh`: a KMesh (reduced coordinates, weights summing to 1) usable wherever a ``kgrid`` is, with
        its compressed form when the pairing is diagonal in the band basis.

    Raises:
        ShapeError: not a 2D model.
        ParameterError: bad settings, a gapless host, or no tiling on which the pockets are star-shaped.

    Example:
        >>> import shibajax
        >>> from shibajax.ray_mesh import ray_mesh
        >>> mesh = ray_mesh(shibajax.models.square(mu=-1.0, delta=1e-3))
        >>> round(float(mesh.weights.sum()), 12), mesh.compressed is not None
        (1.0, True)
    """
    settings = RaySettings() if settings is None else settings
    settings.check()
    if model.dim != 2:
        raise ShapeError(f"ray_mesh covers 2D Brillouin zones; the model is {model.dim}D (use fermi_shell_mesh)")
    if any(isinstance(x, jax.core.Tracer) for x in (model.hoppings, model.pairing)):
        raise ParameterError("ray_mesh needs a concrete model (it is built on the host, before any jit or vmap)")
    if gap is None:
        info = host_gap(model, (32, 32))
        if not bool(info.has_gap):
            raise ParameterError(f"ray_mesh needs a host with a full gap: {info.reason}")
        gap = float(info.host)
    if isinstance(gap, bool) or not isinstance(gap, int | float | np.floating) or not (np.isfinite(gap) and gap > 0):
        raise ParameterError(f"gap = {gap!r} must be a positive energy (the host's gap edge)")
    scale = float(np.max(np.abs(np.asarray(model.hoppings))))
    name, rays, ray, root, speed = _select_tiling(model, settings, tiling, scale)
    omega_min = settings.omega_fraction * gap
    xg, wg = _gauss(settings.radial_gauss)
    xc, _ = _gauss(settings.carrier_nodes)
    order = np.lexsort((root, ray))
    ray, root, speed = ray[order], root[order], speed[order]
    starts = np.searchsorted(ray, np.arange(rays.weight.shape[0] + 1))
    direct_k, direct_w, carrier_k, fine_k, fine_w, fine_l = [], [], [], [], [], []

    def gauss_on(edges):
        rho = (edges[:-1, None] + np.diff(edges)[:, None] * xg[None]).ravel()
        return rho, (np.diff(edges)[:, None] * wg[None]).ravel()

    for i in range(rays.weight.shape[0]):
        sel = slice(starts[i], starts[i + 1])
        # panels graded geometrically towards every crossing, on the whole ray
        edges = _panels(root[sel], speed[sel], omega_min, settings)
        mids = 0.5 * (edges[:-1] + edges[1:])
        on_ray = lambda rho, i=i: rays.origin[i] + rho[:, None] * rays.direction[i]  # noqa: E731
        in_span = np.zeros(mids.shape, dtype=bool)
        for lo, hi, _ in _spans(root[sel], settings.span):
            in_span |= (mids > lo) & (mids < hi)
        # stretches of consecutive panels: outside the spans their Gauss points are nodes; inside, fine points
        # whose smooth factors are interpolated from carrier nodes on the stretch
        change = np.nonzero(np.diff(in_span.astype(int)))[0] + 1
        for block in np.split(np.arange(mids.shape[0]), change):
            block_edges = edges[block[0] : block[-1] + 2]
            rho, w = gauss_on(block_edges)
            if not in_span[block[0]]:
                direct_k.append(on_ray(rho))
                direct_w.append(rays.weight[i] * w * rho)
                continue
            lo, hi = block_edges[0], block_edges[-1]
            nodes = lo + (hi - lo) * xc
            carrier_k.append(on_ray(nodes))
            fine_k.append(on_ray(rho))
            fine_w.append(rays.weight[i] * w * rho)
            fine_l.append(_lagrange(nodes, rho))
    direct_k, direct_w = np.concatenate(direct_k), np.concatenate(direct_w)
    all_fine_w = np.concatenate(fine_w)
    points = np.mod(np.concatenate([direct_k, *fine_k]), TWO_PI)
    weights = np.concatenate([direct_w, all_fine_w]) / TWO_PI**2
    total = weights.sum()
    if abs(total - 1.0) > 1e-12:  # both rules are exact for the area: a mismatch is a bug, not an approximation
        raise AssertionError(f"ray mesh weights sum to {total!r}, not 1")
    label = (
        f"ray mesh: tiling {name}, {rays.weight.shape[0]} rays, {ray.shape[0]} crossings, "
        f"{settings.radial_gauss} Gauss points per panel, grading {settings.grading:g}, omega_min {omega_min:.3g}"
    )
    compressed = _compress(model, direct_k, direct_w, carrier_k, fine_k, fine_w, fine_l, scale, gap)
    if compressed is None:
        label += " (pairing not band-diagonal: full BdG resolvent at every point)"
    return RayMesh(points, weights / total, label, compressed, model_key(model), settings)


#: A host is treated in the band basis when its pairing couples bands and the hole block deviates from -h(k) by
#: less than this times the band scale (rounding: eigenvectors are exact to ~1e-15 of it).
BAND_DIAGONAL_RTOL = 1e-10


def _compress(model, direct_k, direct_w, carrier_k, fine_k, fine_w, fine_l, scale, gap) -> RayQuadrature | None:
    """The :class:`RayQuadrature` of the mesh, or None when the pairing is not diagonal in the band basis."""
    n_c = carrier_k[0].shape[0] if carrier_k else 0
    n_direct = direct_k.shape[0]
    node_k = np.concatenate([direct_k, *carrier_k]) if carrier_k else direct_k
    node_w = np.concatenate([direct_w, np.zeros(node_k.shape[0] - n_direct)]) / TWO_PI**2
    n_span = len(fine_k)
    size = max((f.shape[0] for f in fine_k), default=1)
    fk = np.zeros((n_span, size, 2))
    fw = np.zeros((n_span, size))
    fl = np.zeros((n_span, size, max(n_c, 1)))
    for s, (k, w, lag) in enumerate(zip(fine_k, fine_w, fine_l, strict=True)):
        fk[s, : k.shape[0]], fw[s, : k.shape[0]], fl[s, : k.shape[0]] = k, w / TWO_PI**2, lag
    xi, u, delta, res = _chunked(_band_data, model, node_k)
    fxi, _, fdelta, fres = _chunked(_band_data, model, fk.reshape(-1, 2))
    if max(res.max(), fres.max()) > BAND_DIAGONAL_RTOL * scale:
        return None
    b = xi.shape[1]
    span_nodes = n_direct + np.arange(n_span * n_c).reshape(n_span, n_c)  # last, in order (node_weights needs it)
    far = series_terms((xi**2 + np.abs(delta) ** 2) / gap**2) * (node_w[:, None] > 0)
    near = ~np.all(far > 0, axis=1)
    near[span_nodes.ravel()] = True
    near_nodes = np.nonzero(near)[0]
    position = np.full(node_k.shape[0], -1)
    position[near_nodes] = np.arange(near_nodes.shape[0])
    return RayQuadrature(
        jnp.asarray(node_k), jnp.asarray(u), jnp.asarray(xi), jnp.asarray(delta), jnp.asarray(node_w),
        jnp.asarray(span_nodes), jnp.asarray(fxi.reshape(n_span, size, b)),
        jnp.asarray(fdelta.reshape(n_span, size, b)), jnp.asarray(fw), jnp.asarray(fl),
        far, near_nodes, position[span_nodes],
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Green's-function sums on the compressed form
# ---------------------------------------------------------------------------------------------------------------


def _block_coefficients(xi, delta, z, power):
    """(z - H_n)^-p = alpha I + beta H_n for p = 1, 2: the four entries (ee, eh, he, hh), each (n_z, ...)."""
    zz = z.reshape((-1,) + (1,) * xi.ndim)
    e2 = xi**2 + jnp.abs(delta) ** 2
    d = zz**2 - e2
    if power == 1:
        alpha, beta = zz / d, 1.0 / d
    else:
        alpha, beta = (zz**2 + e2) / d**2, 2.0 * zz / d**2
    return jnp.stack([alpha + beta * xi, beta * delta, beta * delta.conj(), alpha - beta * xi], axis=-1)


def node_weights(rq: RayQuadrature, z, power: int, mask=None):
    """Band-resolved weights of every node at energies z (n_z,): (n_z, n_a, B, 4) (entries ee, eh, he, hh).

    A smooth node contributes its own weight times the block coefficients; a span's fine points add theirs, spread
    onto the span's nodes by the Lagrange weights (the interpolation of the smooth factors). ``mask`` (n_a, B):
    keep the nodes' own weights only there (the rest is summed elsewhere, :func:`channel_operator`)."""
    own = rq.node_weight[:, None] if mask is None else jnp.where(mask, rq.node_weight[:, None], 0.0)
    direct = own[None, :, :, None] * _block_coefficients(rq.node_xi, rq.node_delta, z, power)
    fine = _block_coefficients(rq.fine_xi, rq.fine_delta, z, power) * rq.fine_weight[None, :, :, None, None]
    lagrange = rq.fine_lagrange  # real: contracted with the real and imaginary parts (no complex copy of it)
    spread = jax.lax.complex(
        jnp.einsum("zsfbt,sfc->zscbt", fine.real, lagrange), jnp.einsum("zsfbt,sfc->zscbt", fine.imag, lagrange)
    )
    n_z, n_s, n_c = spread.shape[:3]
    # the span nodes are the last n_s n_c nodes, in order (ray_mesh builds them so): no scatter needed
    n_direct = rq.node_k.shape[0] - n_s * n_c
    spread = spread.reshape(n_z, n_s * n_c, *spread.shape[3:])
    return jnp.concatenate([direct[:, :n_direct].astype(spread.dtype), spread], axis=1)


def _in_chunks(x, axis, *, n_chunks, chunk, pad):
    """x with axis ``axis`` zero-padded by ``pad`` and split into (n_chunks, chunk)."""
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths).reshape(*x.shape[:axis], n_chunks, chunk, *x.shape[axis + 1 :])


def _node_chunks(rq: RayQuadrature, chunk: int):
    """(n_chunks, padding, chunk) for a scan over the nodes in chunks of at most ``chunk``."""
    n = rq.node_k.shape[0]
    n_chunks = max(1, math.ceil(n / chunk))
    chunk = math.ceil(n / n_chunks)
    return n_chunks, n_chunks * chunk - n, chunk


def channel_sum(rq: RayQuadrature, sites, q, z, max_power: int = 1, chunk: int = 4096):
    """Q^dagger G0(z)^p Q for p = 1..max_power, each (n_z, r, r), from the compressed ray mesh.

    sites (n_s, dim) lattice coordinates, q (n_s M, r) channel directions (M = 4 n_orb, docs/conventions.md basis).
    With B^tau_an = sum_i exp(i k_a.R_i) Q_{i,tau}^dagger u_n(k_a) (tau = electron, hole block of Q), the sum is
    sum_{a n tau tau'} W_{a n tau tau'}(z) B^tau_an B^tau'_an^dagger, chunked over nodes with lax.scan.
    """
    z = jnp.atleast_1d(z)
    sites = jnp.asarray(sites, jnp.float64)
    n_s = sites.shape[0]
    n2 = rq.node_u.shape[-1]
    r = q.shape[1]
    qs = q.reshape(n_s, 2, n2, r)  # (site, tau, orbital-spin, channel)
    weights = [node_weights(rq, z, p) for p in range(1, max_power + 1)]  # each (n_z, n_a, B, 4)
    n_chunks, pad, chunk = _node_chunks(rq, chunk)

    padded = partial(_in_chunks, n_chunks=n_chunks, chunk=chunk, pad=pad)

    ks, us = padded(rq.node_k, 0), padded(rq.node_u, 0)
    ws = jnp.stack([padded(w, 1) for w in weights])  # (P, n_z, n_chunks, chunk, B, 4)
    ws = jnp.moveaxis(ws, 2, 0)  # (n_chunks, P, n_z, chunk, B, 4)

    def body(acc, x):
        k, u, w = x
        phase = jnp.exp(1j * (k @ sites.T))  # (c, n_s)
        bvec = jnp.einsum("cs,star,cba->cbtr", phase, qs.conj(), u)  # (c, B, tau, r)
        wt = w.reshape(*w.shape[:-1], 2, 2)  # (P, n_z, c, B, tau, tau')
        left = jnp.einsum("pzcbtu,cbtr->pzcbur", wt, bvec)  # sum_tau W_{tau tau'} B^tau
        part = jnp.einsum("pzcbur,cbus->pzrs", left, bvec.conj())
        return acc + part, None

    zero = jnp.zeros((max_power, z.shape[0], r, r), jnp.complex128)
    acc, _ = jax.lax.scan(body, zero, (ks, us, ws))
    return tuple(acc[p] for p in range(max_power))


def greens_sum(rq: RayQuadrature, displacements, z, max_power: int = 1, chunk: int = 2048):
    """G0(d, z)^p for p = 1..max_power, each (n_z, n_d, M, M), from the compressed ray mesh (Nambu basis of
    docs/conventions.md; M = 4 n_orb)."""
    z = jnp.atleast_1d(z)
    disp = jnp.asarray(displacements, jnp.float64)
    n2 = rq.node_u.shape[-1]
    weights = [node_weights(rq, z, p) for p in range(1, max_power + 1)]
    n_chunks, pad, chunk = _node_chunks(rq, chunk)

    padded = partial(_in_chunks, n_chunks=n_chunks, chunk=chunk, pad=pad)

    ks, us = padded(rq.node_k, 0), padded(rq.node_u, 0)
    ws = jnp.moveaxis(jnp.stack([padded(w, 1) for w in weights]), 2, 0)

    def body(acc, x):
        k, u, w = x
        phase = jnp.exp(1j * (k @ disp.T))  # (c, n_d)
        proj = jnp.einsum("cd,cba,cbe->cbdae", phase, u, u.conj())  # (c, B, n_d, n2, n2)
        part = jnp.einsum("pzcbt,cbdae->pzdtae", w, proj)  # (P, n_z, n_d, 4, n2, n2)
        return acc + part, None

    zero = jnp.zeros((max_power, z.shape[0], disp.shape[0], 4, n2, n2), jnp.complex128)
    acc, _ = jax.lax.scan(body, zero, (ks, us, ws))
    # blocks (tau, tau') -> the M x M Nambu matrix
    blocks = acc.reshape(max_power, z.shape[0], disp.shape[0], 2, 2, n2, n2)
    full = jnp.swapaxes(blocks, 4, 5).reshape(max_power, z.shape[0], disp.shape[0], 2 * n2, 2 * n2)
    return tuple(full[p] for p in range(max_power))


# ---------------------------------------------------------------------------------------------------------------
# The converged physical-gap solver
# ---------------------------------------------------------------------------------------------------------------

#: Meshes kept per (model content, settings, tiling): a mesh is a static argument of the compiled solvers, so
#: reusing it reuses their compiled code.
_MESHES: dict = {}
_MESH_CACHE_SIZE = 8


def cached_ray_mesh(model: TightBindingModel, settings: RaySettings | None = None, tiling: str | None = None):
    """:func:`ray_mesh`, kept per model content, settings and tiling (the last few), so that repeated calls reuse
    the mesh and the code compiled for it."""
    settings = RaySettings() if settings is None else settings
    key = (model_key(model), settings, tiling)
    if key not in _MESHES:
        if len(_MESHES) >= _MESH_CACHE_SIZE:
            _MESHES.pop(next(iter(_MESHES)))
        _MESHES[key] = ray_mesh(model, settings, tiling=tiling)
    return _MESHES[key]


def physical_gap_bound_states(
    model: TightBindingModel,
    impurities,
    *,
    settings: RaySettings | None = None,
    tiling: str | None = None,
    estimate_error: bool = True,
    **kwargs,
):
    """Shiba states of the infinite lattice at any gap (Delta / W down to 1e-4 and below), with an error estimate.

    Solves on a :func:`ray_mesh` and, with ``estimate_error``, again on its :meth:`RaySettings.finer` mesh; the
    answer is the finer solve and ``energy_errors`` the difference between the two. Both rules converge
    exponentially, so the difference is the coarser mesh's error and bounds the answer's unless both meshes miss
    the same structure (e.g. a displacement far beyond the angular resolution; raise ``angular_panels``).
    If the two meshes disagree on the number of levels the errors are ``inf``.

    Args:
        model: 2D host with a full gap; impurities: Impurity / Adatom objects (as for :func:`shibajax.bound_states`).
        settings: resolution of the (coarser) mesh; default :class:`RaySettings`.
        tiling: see :func:`ray_mesh`.
        estimate_error: solve on the finer mesh too (default); False returns the single solve, without errors.
        **kwargs: passed to :func:`shibajax.bound_states` (tolerances, chunk_size).

    Returns:
        :class:`~shibajax.BoundStates` (``kgrid`` is the mesh: its wavefunctions and LDOS use it too).

    Example:
        >>> import shibajax
        >>> from shibajax.ray_mesh import physical_gap_bound_states
        >>> host = shibajax.models.square(mu=-1.0, delta=8e-4)  # Delta / W = 1e-4
        >>> bs = physical_gap_bound_states(host, shibajax.Impurity((0, 0), J=1.2))
        >>> bool(bs.energy_errors.max() < 1e-6 * bs.gap_edge)
        True
    """
    from shibajax.bound_states import _bound_states, _levels

    settings = RaySettings() if settings is None else settings
    coarse_mesh = cached_ray_mesh(model, settings, tiling)
    if not estimate_error:
        return _bound_states(model, impurities, coarse_mesh, **kwargs)
    levels, mults, roots = _levels(model, impurities, coarse_mesh, **kwargs)  # energies only
    # the finer solve starts its Newton steps from the coarse roots (exact to the coarse error): a step or two
    fine = _bound_states(model, impurities, cached_ray_mesh(model, settings.finer(), tiling), start=roots, **kwargs)
    if mults.tolist() == fine.multiplicities.tolist():
        errors = np.abs(fine.energies - levels)
    else:
        errors = np.full(fine.energies.shape, math.inf)
    return fine.with_errors(errors)


#: Nodes with E_n^2 >= SERIES_RATIO * (largest in-gap energy)^2 are summed as a power series in z^2 / E_n^2; a node
#: with ratio rho = E_n^2 / gap^2 gets the fewest terms J of SERIES_TIERS with rho^-J <= SERIES_TOL (the remainder
#: relative to the node's own contribution): J = 8 for rho >= 100, down to J = 2 for rho >= 1e8. Most nodes of a
#: physical gap lie at rho ~ 1e4-1e6, so the moments cost about half of a single J = 8 tier.
SERIES_RATIO = 100.0
SERIES_TOL = 1e-16
SERIES_TIERS = (2, 3, 4, 5, 6, 8)
SERIES_TERMS = max(SERIES_TIERS)


def series_terms(ratio: np.ndarray) -> np.ndarray:
    """Series terms needed for (node, band) pairs with E^2 / gap^2 = ratio (host array): 0 where ratio <
    SERIES_RATIO (summed exactly at every energy), else the smallest J of SERIES_TIERS with ratio^-J <= SERIES_TOL."""
    ratio = np.asarray(ratio, np.float64)
    terms = np.zeros(ratio.shape, np.int64)
    for j in sorted(SERIES_TIERS, reverse=True):  # fewer terms where the ratio allows it
        terms = np.where((ratio >= SERIES_RATIO) & (ratio ** (-float(j)) <= SERIES_TOL), j, terms)
    return terms


class ChannelMoments(NamedTuple):
    """The energy-independent part of :func:`channel_operator`: the moment matrices of the far (node, band) pairs
    (SERIES_TERMS + 1, r, r) of the I- and H-structures, and the channel vectors B of the near nodes
    (n_near, B, 2, r)."""

    moments_i: jax.Array
    moments_h: jax.Array
    near_bvec: jax.Array


def channel_moments(rq: RayQuadrature, sites, q) -> ChannelMoments:
    """:class:`ChannelMoments` of the channel directions q (n_s M, r) at ``sites`` (n_s, dim): formed once per
    potential and shared by every energy of a search (and by its bracket and Newton stages)."""
    sites = jnp.asarray(sites, jnp.float64)
    n_s = sites.shape[0]
    n2 = rq.node_u.shape[-1]
    r = q.shape[1]
    qs = q.reshape(n_s, 2, n2, r)
    phase = jnp.exp(1j * (rq.node_k @ sites.T))  # (n_a, n_s)
    site_sum = (phase @ qs.conj().reshape(n_s, -1)).reshape(-1, 2, n2, r)  # sum_i exp(ik.R_i) Q_i^dagger
    bvec = jnp.einsum("atcr,abc->abtr", site_sum, rq.node_u)  # (n_a, B, tau, r)
    e2 = (rq.node_xi**2 + jnp.abs(rq.node_delta) ** 2).reshape(-1)  # (x,), x = (node, band)
    be = bvec[:, :, 0].reshape(-1, r)
    bh = bvec[:, :, 1].reshape(-1, r)
    xi = rq.node_xi.reshape(-1)
    dl = rq.node_delta.reshape(-1)
    w = jnp.broadcast_to(rq.node_weight[:, None], rq.node_xi.shape).reshape(-1)
    terms = np.asarray(rq.far).reshape(-1)
    moments_i = jnp.zeros((SERIES_TERMS + 1, r, r), jnp.complex128)
    moments_h = jnp.zeros((SERIES_TERMS + 1, r, r), jnp.complex128)
    # moments sum_x w_j(x) [ee + hh] and sum_x w_j(x) [xi (ee - hh) + Delta eh + Delta^* he], w_j = w / E^(2j+2),
    # per tier of J terms (J + 1 moments: the second power needs one more): one batched GEMM over x each
    for n_terms in sorted(set(terms[terms > 0].tolist())):
        idx = np.nonzero(terms == n_terms)[0]
        inv = 1.0 / e2[idx]
        powers = jnp.stack([w[idx] * inv ** (j + 1) for j in range(n_terms + 1)])  # (J + 1, x)
        e, h = be[idx], bh[idx]

        def gram(weights, left, right):  # sum_x weights_jx left_xr conj(right_xs): (J + 1, r, r)
            return jnp.einsum("jxr,xs->jrs", weights[:, :, None] * left[None], right.conj())

        tier_i = gram(powers, e, e) + gram(powers, h, h)
        tier_h = (
            gram(powers * xi[idx], e, e) - gram(powers * xi[idx], h, h)
            + gram(powers * dl[idx], e, h) + gram(powers * dl[idx].conj(), h, e)
        )  # fmt: skip
        moments_i = moments_i.at[: n_terms + 1].add(tier_i)
        moments_h = moments_h.at[: n_terms + 1].add(tier_h)
    return ChannelMoments(moments_i, moments_h, bvec[rq.near_nodes])


def channel_operator(rq: RayQuadrature, sites, q, chunk: int = 4096, moments: ChannelMoments | None = None):
    """(z, max_power) -> (Q^dagger G0 Q, ..., Q^dagger G0^max_power Q) at real energies inside the mesh's gap.

    The same sums as :func:`channel_sum`, organised for a search that evaluates many energies: the channel
    vectors B^tau_an are formed once, and the (node, band) pairs far from every Fermi line (``rq.far``:
    E_n^2 >= SERIES_RATIO gap^2, most of them) are summed once into moment matrices (:func:`channel_moments`,
    or ``moments`` when given: computed once for a search's stages), since for |z| < gap

        1 / (z^2 - E^2) = -sum_j z^(2j) / E^(2j+2),      1 / (z^2 - E^2)^2 = sum_j (j + 1) z^(2j) / E^(2j+4)

    converge geometrically (ratio <= 1 / SERIES_RATIO); only the nodes near the Fermi lines (``rq.near_nodes``)
    are summed at every energy. Traced: call it inside the jitted search, so that the set-up is computed once per
    search, outside its loops. Energies outside the gap are not allowed (use :func:`channel_sum`).
    """
    r = q.shape[1]
    if moments is None:
        moments = channel_moments(rq, sites, q)
    moments_i, moments_h = moments.moments_i, moments.moments_h
    idx = rq.near_nodes
    near = rq._replace(
        node_k=rq.node_k[idx], node_u=rq.node_u[idx], node_xi=rq.node_xi[idx], node_delta=rq.node_delta[idx],
        node_weight=rq.node_weight[idx], span_nodes=jnp.asarray(rq.near_spans),
    )  # fmt: skip
    near_bvec, near_mask = moments.near_bvec, jnp.asarray(np.asarray(rq.far)[idx] == 0)

    def series(z, power):
        zz = z[:, None, None]
        out = jnp.zeros((z.shape[0], r, r), jnp.complex128)
        for j in range(SERIES_TERMS):
            if power == 1:  # alpha = z / D, beta = 1 / D
                out = out - zz ** (2 * j) * (zz * moments_i[j] + moments_h[j])
            else:  # alpha = (z^2 + E^2) / D^2, beta = 2 z / D^2
                term = zz**2 * moments_i[j + 1] + moments_i[j] + 2 * zz * moments_h[j + 1]
                out = out + (j + 1) * zz ** (2 * j) * term
        return out

    def apply(z, max_power):
        z = jnp.atleast_1d(jnp.asarray(z))
        exact = _channel_products(near, near_mask, near_bvec, z, max_power, chunk)
        return tuple(exact[p] + series(z, p + 1) for p in range(max_power))

    return apply


def _channel_products(rq, mask, bvec, z, max_power, chunk):
    """sum_{a n tau tau'} W^p_{a n tau tau'}(z) B^tau_an B^tau'_an^dagger for p = 1..max_power: (P, n_z, r, r),
    the nodes' own weights kept where ``mask`` (n_a, B) is True (the spans' fine points always)."""
    r = bvec.shape[-1]
    weights = jnp.stack([node_weights(rq, z, p, mask) for p in range(1, max_power + 1)])  # (P, n_z, n_a, B, 4)
    n_chunks, pad, chunk = _node_chunks(rq, chunk)
    bv = _in_chunks(bvec, 0, n_chunks=n_chunks, chunk=chunk, pad=pad)
    ws = jnp.moveaxis(_in_chunks(weights, 2, n_chunks=n_chunks, chunk=chunk, pad=pad), 2, 0)

    def body(acc, x):
        b, w = x
        wt = w.reshape(*w.shape[:-1], 2, 2)
        left = jnp.einsum("pzcbtu,cbtr->pzcbur", wt, b)
        return acc + jnp.einsum("pzcbur,cbus->pzrs", left, b.conj()), None

    zero = jnp.zeros((max_power, z.shape[0], r, r), jnp.complex128)
    acc, _ = jax.lax.scan(body, zero, (bv, ws))
    return acc
