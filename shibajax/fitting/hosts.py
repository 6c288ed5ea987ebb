"""Hosts and impurities of the fits: any built-in model (or a TOML hopping table) and adatoms with orbital channels.

A fit needs three things from its host: the model (energies in **meV**, the fits' unit: docs/conventions.md,
"Fitting"), the linear parametrisation of the impurity potential (:class:`~shibajax.fitting.spectrum.Couplings`: one
K and one J per channel) and the k-mesh on which G0 is summed. :class:`FitHost` holds them; :func:`fit_host` builds
one in Python and :func:`host_from_config` from the ``[host]`` and ``[impurity]`` tables of a fit config
(``shibajax fit``, ``shibajax fit-grid``), so that switching host is one argument or one key:

    [host]      model = "square" | "nb110" | "graser2009" | "from_hoppings"       (default "square")
                eta (meV > 0), kgrid (L >= 4), energy_step (meV > 0), fermi_shell (resolution rho > 0: a
                Fermi-shell mesh on the base grid kgrid instead of the L x L grid), and the model's own keys:
                square:        t, mu, delta, rashba (meV; defaults t = 10, mu = -20, delta = 1.35, rashba = 0)
                nb110:         mu, delta, t_rashba (meV; defaults those of models.nb110: Delta = 1.5)
                graser2009:    mu, delta (meV; Graser's parent compound mu = -27.2 meV), gap = "s+-" | "s++"
                from_hoppings: hoppings (a TOML file: see :func:`load_hopping_table`), mu, delta (meV)
                channels (square only: that many (K, J) pairs on the site's one orbital, the historic default)
    [impurity]  site = [0, 0] and channels = [[0], [1, 2], ...] (orbital sets; default one per orbital), or
                adatom = "mn" (models.mn_adatom: five d shapes at the Nb(110) hollow site) or an adatom table
                {position = [x, y], height, extent, shapes = ["dz2", ...], spin = [0, 0, 1]} (length units of the
                model: pm for nb110, lattice constants otherwise)

Graser's model is tabulated in eV; here it is rescaled to meV (hoppings and gap times 1000), so that K, J, Delta and
the bias share one unit. The channels' couplings are named K_0, J_0, K_1, ... in channel order;
``FitHost.channel_labels`` says what each channel is (its orbitals or its adatom shape).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from shibajax.config import ConfigError, check_keys, is_number, number, numbers, positive_int
from shibajax.errors import FitError
from shibajax.fitting.spectrum import Couplings, coupling_basis
from shibajax.models.tight_binding import TightBindingModel

MODELS = ("square", "nb110", "graser2009", "from_hoppings")
#: The keys of [host] every model takes, and each model's own keys with their defaults (meV).
COMMON = {"model": "square", "eta": 0.05, "kgrid": 64, "energy_step": 0.02, "fermi_shell": None}
MODEL_KEYS = {
    "square": {"t": 10.0, "mu": -20.0, "delta": 1.35, "rashba": 0.0, "channels": 1},
    "nb110": {"mu": None, "delta": 1.5, "t_rashba": None},
    "graser2009": {"mu": -27.2, "delta": 5.0, "gap": "s+-"},
    "from_hoppings": {"hoppings": None, "mu": 0.0, "delta": None},
}
IMPURITY_KEYS = ("site", "channels", "adatom")
ADATOM_KEYS = ("position", "height", "extent", "shapes", "spin", "cutoff")
#: The most scattering channels of one impurity (each is a (K, J) pair of the fit).
MAX_CHANNELS = 64
MEV_PER_EV = 1000.0


@dataclasses.dataclass(frozen=True)
class FitHost:
    """What a fit needs from its host.

    Attributes:
        model: the host, energies in meV.
        couplings: V(theta) = sum_c theta_c basis_c, theta = (K_0, J_0, K_1, J_1, ...) (meV).
        kgrid: where G0 is summed (an L x L grid or a mesh).
        eta: the sample broadening (meV).
        channel_labels: what each channel is, e.g. "orbitals (0,)" or "dz2".
        description: one line for reports.
        tip_site: the lattice site the tip is over (the impurity's site, or the adatom cluster's site of largest
            overlap), lattice coordinates.
    """

    model: TightBindingModel
    couplings: Couplings
    kgrid: object
    eta: float
    channel_labels: tuple[str, ...]
    description: str
    tip_site: tuple[int, ...]

    @property
    def n_channels(self) -> int:
        return len(self.channel_labels)


def scaled(model: TightBindingModel, factor: float, name: str | None = None) -> TightBindingModel:
    """The model with every energy (hoppings, on-site terms, pairing) multiplied by ``factor``: a change of unit."""
    return dataclasses.replace(
        model, hoppings=model.hoppings * factor, pairing=model.pairing * factor, name=name or model.name
    )


def adatom_couplings(model: TightBindingModel, adatom, shapes: Sequence[str] | None = None) -> Couplings:
    """:class:`Couplings` K_<shape>, J_<shape> of an adatom's orbital channels (all, or those in ``shapes``):
    V = sum_mu |d_mu> (K_mu tau_z + J_mu n.sigma) <d_mu| with the adatom's form factors and spin
    (:mod:`shibajax.adatoms`), on the adatom's cluster of sites: the basis of K_mu is (f_mu f_mu^T) (x) v(1, 0)
    and that of J_mu is (f_mu f_mu^T) (x) v(0, 1), v the one-site channel potential (linear in K, J), so that
    :meth:`Adatom.lattice_potential` is their sum with the adatom's own K_mu, J_mu."""
    from shibajax.adatoms import Adatom
    from shibajax.impurities import Channel, channel_potential

    if not isinstance(adatom, Adatom):
        raise FitError(f"adatom_couplings needs a shibajax.adatoms.Adatom; got {type(adatom).__name__}")
    all_shapes = [c.shape for c in adatom.channels]
    shapes = all_shapes if shapes is None else list(shapes)
    unknown = [s for s in shapes if s not in all_shapes]
    if unknown or not shapes or len(set(shapes)) != len(shapes):
        raise FitError(
            f"channels={shapes!r}: give distinct shapes of the adatom's channels {all_shapes} (or None for all)"
        )
    sites, f = adatom.form_factors(model)
    names, basis, orbs = [], [], []
    for shape in shapes:
        i = all_shapes.index(shape)
        orbitals = adatom.channels[i].channel.orbitals
        for kind, (k, j) in (("K", (1.0, 0.0)), ("J", (0.0, 1.0))):
            block = channel_potential(Channel(K=k, J=j, orbitals=orbitals), adatom.spin, model.n_orb)
            names.append(f"{kind}_{shape}")
            basis.append(jnp.kron(jnp.asarray(np.outer(f[i], f[i])), block))
            orbs.append(tuple(range(model.n_orb)) if orbitals is None else orbitals)
    return Couplings(tuple(names), jnp.stack(basis), np.asarray(sites, np.int64), tuple(orbs))


def fit_host(model: TightBindingModel, impurity=None, *, kgrid, eta: float, channels=None) -> FitHost:
    """A :class:`FitHost` from Python objects (the one-argument switch between hosts).

    Args:
        model: any 2D model in meV (e.g. ``models.nb110()``, ``scaled(models.graser2009(...), 1000)``).
        impurity: a lattice site (tuple) with ``channels`` (orbital sets; default one per orbital), or an
            :class:`~shibajax.adatoms.Adatom` (its orbital channels; its K, J are only start values elsewhere).
            Default: site 0 of the lattice.
        kgrid: L x L grid, or a mesh (:func:`shibajax.fermi_shell.fermi_shell_mesh`).
        eta: sample broadening (meV, > 0).

    Example:
        >>> import shibajax
        >>> from shibajax.fitting.hosts import fit_host
        >>> host = fit_host(shibajax.models.square(t=10.0, mu=-20.0, delta=1.35), kgrid=(16, 16), eta=0.05)
        >>> host.couplings.names
        ('K_0', 'J_0')
    """
    from shibajax.adatoms import Adatom

    if not (is_number(eta) and eta > 0):
        raise FitError(f"eta = {eta!r} must be a positive number (the sample broadening, meV)")
    if isinstance(impurity, Adatom):
        if channels is not None:
            raise FitError("channels is for a lattice site; an Adatom brings its own orbital channels")
        couplings = adatom_couplings(model, impurity)
        labels = tuple(c.shape for c in impurity.channels)
        index = {f"{kind}_{shape}": f"{kind}_{i}" for i, shape in enumerate(labels) for kind in ("K", "J")}
        couplings = dataclasses.replace(couplings, names=tuple(index[n] for n in couplings.names))
        what = f"adatom at {impurity.position} ({', '.join(labels)})"
        _, f = impurity.form_factors(model)
        tip = tuple(int(x) for x in couplings.sites[int(np.argmax(np.sum(np.asarray(f) ** 2, axis=0)))])
    else:
        site = (0,) * model.dim if impurity is None else tuple(int(x) for x in np.atleast_1d(impurity))
        if len(site) != model.dim:
            raise FitError(f"impurity site {impurity!r} must have {model.dim} integer coordinates")
        chans = [(o,) for o in range(model.n_orb)] if channels is None else [tuple(np.atleast_1d(c)) for c in channels]
        for c in chans:
            if not c or any(int(o) != o or not 0 <= int(o) < model.n_orb for o in c):
                raise FitError(f"channel {c!r}: orbitals must be integers in [0, {model.n_orb}) (the model's n_orb)")
        if len(chans) > MAX_CHANNELS:
            raise FitError(f"{len(chans)} channels is more than {MAX_CHANNELS}; give fewer orbital sets")
        couplings = coupling_basis(model, [site], chans)
        labels = tuple(f"orbitals {tuple(int(o) for o in c)}" for c in chans)
        what = f"site {site}"
        tip = site
    text = f"{model.name}; {what}; kgrid {_mesh_text(kgrid)}"
    return FitHost(model, couplings, kgrid, float(eta), labels, text, tip)


def _mesh_text(kgrid) -> str:
    return getattr(kgrid, "description", None) or "x".join(str(int(n)) for n in np.atleast_1d(kgrid))


def load_hopping_table(path, *, mu: float = 0.0, delta=None) -> TightBindingModel:
    """A model from a TOML hopping table (energies in meV), with -mu added on site and an optional on-site gap::

        n_orb = 2                                  # orbitals per cell (spin is added)
        lattice_vectors = [[1.0, 0.0], [0.0, 1.0]] # optional
        [[hopping]]
        d = [1, 0]                                 # lattice displacement
        t = [[-10.0, 0.0], [0.0, -5.0]]            # n_orb x n_orb (or a number: t times the identity), meV
        t_imag = [[0.0, 1.0], [-1.0, 0.0]]         # optional imaginary part
        [[pairing]]                                # optional singlet pairing form factors D_d (meV)
        d = [0, 0]
        delta = 1.35                               # a number, n_orb numbers, or an n_orb x n_orb matrix

    A hopping whose partner at -d is absent gets it as T_{-d} = T_d^dagger (a pairing: D_{-d} = D_d^T); given
    partners are checked by :func:`~shibajax.models.from_hoppings`. ``delta`` (meV, a number or one per orbital)
    is an on-site gap instead of the [[pairing]] entries.
    """
    from shibajax.models import from_hoppings

    path = Path(path)
    try:
        table = tomllib.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"[host].hoppings = {str(path)!r}: cannot read it ({err.strerror or err})") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"[host].hoppings = {str(path)!r} is not valid TOML: {err}") from err
    check_keys(table, ("n_orb", "lattice_vectors", "hopping", "pairing", "name"), f"hopping table {path.name}")
    n_orb = positive_int(table.get("n_orb", 1), f"{path.name}: n_orb")
    hops = table.get("hopping")
    if not isinstance(hops, list) or not hops:
        raise ConfigError(f"{path.name} needs [[hopping]] entries with d = [..] and t = ... (meV)")

    want = f"a number or a {n_orb} x {n_orb} matrix of finite numbers"

    def matrix(value, key, allow_vector=False):
        if is_number(value):
            return np.eye(n_orb) * float(value)
        try:
            arr = np.asarray(value, dtype=float)
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"{key} must be a number or an {n_orb} x {n_orb} matrix of numbers; got {value!r}"
            ) from err
        if allow_vector and arr.shape == (n_orb,):
            arr = np.diag(arr)
        if arr.shape != (n_orb, n_orb) or not np.all(np.isfinite(arr)):
            raise ConfigError(f"{key} must be {want}; got {value!r}")
        return arr

    def entries(items, value_key, kind, partner):
        if not isinstance(items, list):
            raise ConfigError(f"{path.name}: [[{kind}]] must be an array of tables")
        out: dict = {}
        for i, h in enumerate(items):
            key = f"{path.name}: {kind}[{i}]"
            check_keys(h, ("d", value_key, value_key + "_imag"), key)
            if "d" not in h or value_key not in h:
                raise ConfigError(f"{key} needs d = [..] and {value_key} = ...")
            d = numbers(h["d"], f"{key}.d", 2)
            if any(int(x) != x for x in d):
                raise ConfigError(f"{key}.d must be integer lattice coordinates; got {h['d']!r}")
            m = matrix(h[value_key], f"{key}.{value_key}", kind == "pairing").astype(complex)
            if value_key + "_imag" in h:
                m = m + 1j * matrix(h[value_key + "_imag"], f"{key}.{value_key}_imag", kind == "pairing")
            d = tuple(int(x) for x in d)
            out[d] = out.get(d, 0) + m
        for d, m in list(out.items()):
            out.setdefault(tuple(-x for x in d), partner(m))
        return out

    hoppings = entries(hops, "t", "hopping", lambda m: m.conj().T)
    hoppings[(0, 0)] = hoppings.get((0, 0), np.zeros((n_orb, n_orb), complex)) - mu * np.eye(n_orb)
    pairing = entries(table["pairing"], "delta", "pairing", lambda m: m.T) if "pairing" in table else None
    if pairing is not None and delta is not None:
        raise ConfigError(f"[host].delta and the [[pairing]] entries of {path.name} both set the gap: give one")
    return from_hoppings(
        hoppings, n_orb=n_orb, pairing=pairing, delta=delta, lattice_vectors=table.get("lattice_vectors"),
        name=str(table.get("name", path.stem)),
    )  # fmt: skip


def resolve_host(host_in: dict, impurity_in: dict | None = None, *, base: Path | None = None) -> dict:
    """The [host] and [impurity] tables checked key by key and completed with defaults.

    Returns {"host": {...}, "impurity": {...}}; a relative ``hoppings`` path is taken from ``base`` (the config's
    folder). Raises ConfigError naming the key, the value and what it takes.
    """
    if not isinstance(host_in, dict):
        raise ConfigError(f"[host] must be a table; got {host_in!r}")
    name = host_in.get("model", "square")
    if name not in MODELS:
        raise ConfigError(f"[host].model must be one of {', '.join(repr(m) for m in MODELS)}; got {name!r}")
    own = MODEL_KEYS[name]
    check_keys(host_in, tuple(COMMON) + tuple(own), "[host]")
    host = dict(COMMON) | dict(own) | {"model": name}
    for key in ("eta", "energy_step"):
        if key in host_in:
            host[key] = _positive(host_in[key], f"[host].{key}")
    if "kgrid" in host_in:
        host["kgrid"] = positive_int(host_in["kgrid"], "[host].kgrid")
        if host["kgrid"] < 4:
            raise ConfigError(f"[host].kgrid must be an integer L >= 4 (an L x L grid); got {host_in['kgrid']!r}")
    if "fermi_shell" in host_in:
        host["fermi_shell"] = _positive(host_in["fermi_shell"], "[host].fermi_shell")
    for key in ("t", "delta", "rashba", "t_rashba", "mu"):
        if key in own and key in host_in:
            host[key] = number(host_in[key], f"[host].{key}")
    for key in ("t", "delta"):
        if key in own and host[key] is not None and host[key] <= 0:
            raise ConfigError(f"[host].{key} must be > 0 (meV); got {host[key]!r}")
    if name == "square":
        if not abs(host["mu"]) < 4 * host["t"]:
            raise ConfigError(
                f"[host].mu = {host['mu']} lies outside the band [-4 t, 4 t] = [{-4 * host['t']}, {4 * host['t']}] "
                "meV of the square lattice: no Fermi surface, no normal state to normalise to"
            )
        if "channels" in host_in:
            host["channels"] = positive_int(host_in["channels"], "[host].channels")
            if host["channels"] > MAX_CHANNELS:
                raise ConfigError(
                    f"[host].channels = {host['channels']} is more than {MAX_CHANNELS}: each channel is one (K, J) "
                    f"pair on the site; give a number of channels <= {MAX_CHANNELS}"
                )
    if name == "graser2009" and "gap" in host_in:
        if host_in["gap"] not in ("s+-", "s++"):
            raise ConfigError(f"[host].gap must be 's+-' or 's++' for graser2009; got {host_in['gap']!r}")
        host["gap"] = host_in["gap"]
    if name == "from_hoppings":
        value = host_in.get("hoppings")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError('[host].hoppings must name a TOML hopping table, e.g. hoppings = "bands.toml"')
        path = Path(value)
        host["hoppings"] = str(path if path.is_absolute() or base is None else base / path)
        if "delta" in host_in:
            host["delta"] = number(host_in["delta"], "[host].delta")
    return {"host": host, "impurity": _resolve_impurity(impurity_in or {}, host)}


def _positive(value, key):
    x = number(value, key)
    if x <= 0:
        raise ConfigError(f"{key} must be > 0; got {value!r}")
    return x


def _resolve_impurity(table: dict, host: dict) -> dict:
    check_keys(table, IMPURITY_KEYS, "[impurity]")
    if "adatom" in table:
        if "site" in table or "channels" in table:
            raise ConfigError("[impurity]: give either adatom = ... or site/channels, not both")
        adatom = table["adatom"]
        if adatom == "mn":
            if host["model"] != "nb110":
                raise ConfigError('[impurity].adatom = "mn" is the Mn adatom of Nb(110): set [host].model = "nb110"')
            return {"adatom": "mn"}
        if not isinstance(adatom, dict):
            raise ConfigError(
                f'[impurity].adatom must be "mn" or a table {{position, height, extent, shapes}}; got {adatom!r}'
            )
        check_keys(adatom, ADATOM_KEYS, "[impurity].adatom")
        missing = [k for k in ("position", "height", "extent", "shapes") if k not in adatom]
        if missing:
            raise ConfigError(f"[impurity].adatom needs {', '.join(missing)}")
        from shibajax.adatoms import ORBITAL_SHAPES

        shapes = adatom["shapes"]
        if not isinstance(shapes, list) or not shapes or any(s not in ORBITAL_SHAPES for s in shapes):
            raise ConfigError(f"[impurity].adatom.shapes must be a list of {ORBITAL_SHAPES}; got {shapes!r}")
        out = {
            "position": numbers(adatom["position"], "[impurity].adatom.position", 2),
            "height": number(adatom["height"], "[impurity].adatom.height"),
            "extent": _positive(adatom["extent"], "[impurity].adatom.extent"),
            "shapes": list(shapes),
            "spin": numbers(adatom.get("spin", [0.0, 0.0, 1.0]), "[impurity].adatom.spin", 3),
        }
        if "cutoff" in adatom:
            out["cutoff"] = number(adatom["cutoff"], "[impurity].adatom.cutoff")
        return {"adatom": out}
    site = numbers(table.get("site", [0, 0]), "[impurity].site", 2)
    if any(int(x) != x for x in site):
        raise ConfigError(f"[impurity].site must be integer lattice coordinates; got {table.get('site')!r}")
    channels = table.get("channels")
    if channels is not None:
        if not isinstance(channels, list) or not channels or not all(isinstance(c, list) and c for c in channels):
            raise ConfigError(
                f"[impurity].channels must be a list of orbital lists, e.g. [[0], [1, 2]]; got {channels!r}"
            )
        if host["model"] == "square" and host.get("channels", 1) != 1:
            raise ConfigError("give the channels either as [host].channels or as [impurity].channels, not both")
    return {"site": [int(x) for x in site], "channels": channels}


def n_channels(resolved: dict) -> int:
    """The number of (K, J) channels of resolved [host] and [impurity] tables, without building the model."""
    host, imp = resolved["host"], resolved["impurity"]
    if "adatom" in imp:
        return 5 if imp["adatom"] == "mn" else len(imp["adatom"]["shapes"])
    if imp["channels"] is not None:
        return len(imp["channels"])
    if host["model"] == "square":
        return host["channels"]
    if host["model"] == "graser2009":
        return 5
    if host["model"] == "nb110":
        return 1
    try:  # a table that cannot be read is reported with its reason when the model is built
        return int(tomllib.loads(Path(host["hoppings"]).read_text()).get("n_orb", 1))
    except (OSError, tomllib.TOMLDecodeError, TypeError, ValueError):
        return 1


def build_model(host: dict) -> TightBindingModel:
    """The model of a resolved [host] table (meV)."""
    import shibajax.models as models

    name = host["model"]
    if name == "square":
        return models.square(t=host["t"], mu=host["mu"], delta=host["delta"], rashba=host["rashba"])
    if name == "nb110":
        kw = {k: host[k] for k in ("mu", "t_rashba") if host[k] is not None}
        return models.nb110(delta=host["delta"], **kw)
    if name == "graser2009":
        model = models.graser2009(mu=host["mu"] / MEV_PER_EV, delta=host["delta"] / MEV_PER_EV, gap=host["gap"])
        return scaled(model, MEV_PER_EV, name="graser2009 (meV)")
    return load_hopping_table(host["hoppings"], mu=host["mu"], delta=host["delta"])


def host_from_config(resolved: dict) -> FitHost:
    """The :class:`FitHost` of resolved [host] and [impurity] tables (:func:`resolve_host`)."""
    host, imp = resolved["host"], resolved["impurity"]
    model = build_model(host)
    if model.dim != 2:
        raise ConfigError(f"[host].model = {host['model']!r} is {model.dim}D; the fits take 2D hosts")
    mesh = (host["kgrid"], host["kgrid"])
    if host["fermi_shell"] is not None:
        from shibajax.fermi_shell import fermi_shell_mesh

        mesh = fermi_shell_mesh(model, base=host["kgrid"], resolution=host["fermi_shell"])
    if "adatom" in imp:
        from shibajax.adatoms import Adatom, OrbitalChannel

        if imp["adatom"] == "mn":
            from shibajax.models import mn_adatom

            adatom = mn_adatom()
        else:
            a = imp["adatom"]
            kw = {"cutoff": a["cutoff"]} if "cutoff" in a else {}
            adatom = Adatom(
                a["position"], height=a["height"], extent=a["extent"],
                channels=[OrbitalChannel(s) for s in a["shapes"]], spin=a["spin"], **kw,
            )  # fmt: skip
        return fit_host(model, adatom, kgrid=mesh, eta=host["eta"])
    channels = imp["channels"]
    if channels is None and host["model"] == "square":
        channels = [(0,)] * host["channels"]
    return fit_host(model, tuple(imp["site"]), kgrid=mesh, eta=host["eta"], channels=channels)
