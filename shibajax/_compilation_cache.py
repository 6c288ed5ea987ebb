"""JAX's persistent compilation cache: compiled kernels kept on disk, so that a second run starts fast.

The first call of a jitted kernel in a fresh process spends seconds in XLA's compiler (a first ``bound_states``
call on a 256 x 256 grid: several seconds; ``shibajax demo``: most of its run time). JAX can write every compiled
executable to a folder and load it in the next process instead of compiling again. The ``shibajax`` command turns
this on for every subcommand (:func:`shibajax.cli.main`); ``import shibajax`` does not (a library user decides
where their files go): call :func:`enable_compilation_cache` to opt in, e.g. at the top of a notebook.

The folder, in order of precedence:

1. the ``path`` argument of :func:`enable_compilation_cache`;
2. ``$SHIBAJAX_COMPILATION_CACHE``: a folder, or ``0`` / ``off`` (also ``false``, ``no``, ``none``) to disable it;
3. a folder already given to JAX (``$JAX_COMPILATION_CACHE_DIR`` or ``jax.config``), which is kept;
4. ``$XDG_CACHE_HOME/shibajax/jax-<jax version>`` (``~/.cache/shibajax/jax-<jax version>`` without it): one
   folder per JAX version, since an executable serialised by one jaxlib is not loaded by another.

A folder that cannot be created or written to gives one :class:`CompilationCacheWarning` and the run goes on
without the cache; a cache never stops a computation. Entries are keyed by JAX on the program, the devices and
the compiler flags, so a stale entry is never used for a changed kernel; the folder can be deleted at any time.

As JAX's documentation warns, the cache is trusted code: do not point it at a folder that others can write to.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

ENV_VAR = "SHIBAJAX_COMPILATION_CACHE"
#: Values of ``$SHIBAJAX_COMPILATION_CACHE`` (case-insensitive) that disable the cache.
OFF_VALUES = ("0", "off", "false", "no", "none")
#: Every executable is written, however fast it compiled (JAX's default, 1 s, skips most of ours). A first
#: ``bound_states`` call compiles ~100 executables: three kernels of 1-2 s and ~90 eager jax.numpy operations of
#: 10-60 ms each, which together cost as much again. Reading one back takes ~5 ms, so caching them too pays: on
#: the 2-core machine (loaded), a warm first call took 4.0-5.2 s with every entry cached, 5.1-5.7 s with a
#: 0.05 s threshold, 8.5-9 s with none.
MIN_COMPILE_TIME_S = 0.0
#: No lower limit on the size of an entry (-1: JAX's own overrides are off too).
MIN_ENTRY_SIZE_BYTES = -1

_state: dict = {"path": None, "reason": "not enabled (shibajax.enable_compilation_cache() turns it on)"}


class CompilationCacheWarning(UserWarning):
    """The persistent compilation cache could not be used; the computation goes on without it."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/shibajax/jax-<jax version>``, or ``~/.cache/shibajax/jax-<jax version>``."""
    import jax

    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    root = Path(base) if base else Path.home() / ".cache"
    return root / "shibajax" / f"jax-{jax.__version__}"


def resolve_cache_dir(path: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """The folder :func:`enable_compilation_cache` would use, and where the choice came from.

    Returns:
        ``(folder, source)``; folder None when the cache is switched off (source then says how).
    """
    if path is not None:
        return Path(path).expanduser(), "path argument"
    raw = os.environ.get(ENV_VAR, "").strip()
    if raw.lower() in OFF_VALUES:
        return None, f"off (${ENV_VAR}={raw})"
    if raw:
        return Path(raw).expanduser(), f"${ENV_VAR}"
    import jax

    given = jax.config.jax_compilation_cache_dir
    if given:
        return Path(given).expanduser(), "jax_compilation_cache_dir (set before shibajax)"
    return default_cache_dir(), "default"


def _check_writable(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".shibajax-write-test-"):
        pass


def _set_jax_cache_dir(folder: str | None) -> None:
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    if jax.config.jax_compilation_cache_dir != folder:
        jax.config.update("jax_compilation_cache_dir", folder)
        compilation_cache.reset_cache()  # JAX opens the folder at the next compile (the old one, if any, is closed)


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache, so that kernels compiled once are loaded by later processes.

    Args:
        path: the cache folder (created if missing). None: ``$SHIBAJAX_COMPILATION_CACHE`` (a folder, or ``0`` /
            ``off`` to leave the cache off), else a folder already given to JAX, else
            ``$XDG_CACHE_HOME/shibajax/jax-<jax version>`` (``~/.cache/...`` without XDG_CACHE_HOME).

    Returns:
        The folder in use, or None when the cache is off (switched off, or the folder is unusable: then a
        :class:`CompilationCacheWarning` says why, and a folder this function set before is no longer used).

    Works at any point of a session: kernels compiled from then on are written to (and read from) the folder.
    Tracing and lowering to MLIR are not cached (JAX keys the cache on the lowered program): a warm first call
    still pays those, and the compilation of anything newly compiled.

    Example:
        >>> import shibajax
        >>> shibajax.enable_compilation_cache()  # doctest: +SKIP
        PosixPath('/home/me/.cache/shibajax/jax-0.10.2')
    """
    import jax

    if not jax.config.jax_enable_compilation_cache:
        _disable("off (jax_enable_compilation_cache = False)")
        return None
    folder = None
    try:
        folder, source = resolve_cache_dir(path)
        if folder is None:
            _disable(source)
            return None
        folder = folder.resolve()
        _check_writable(folder)
    except (OSError, RuntimeError) as err:  # RuntimeError: Path.home() without a home folder
        where = f"{folder} is not a writable folder" if folder else "no cache folder"
        reason = f"{where} ({type(err).__name__}: {getattr(err, 'strerror', None) or err})"
        _disable(f"off: {reason}")
        warnings.warn(
            f"persistent compilation cache off: {reason}; compiling from scratch. Set {ENV_VAR} to a writable "
            f"folder, or to 'off' to silence this",
            CompilationCacheWarning,
            stacklevel=2,
        )
        return None
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", MIN_ENTRY_SIZE_BYTES)
    _set_jax_cache_dir(str(folder))
    _state.update(path=folder, reason=source)
    return folder


def _disable(reason: str) -> None:
    """Stop using a folder this module set (one given to JAX by the user directly is left alone)."""
    import jax

    if _state["path"] is not None and jax.config.jax_compilation_cache_dir == str(_state["path"]):
        _set_jax_cache_dir(None)
    _state.update(path=None, reason=reason)


def compilation_cache_report() -> dict:
    """The cache in force, for ``shibajax info``: ``{"path": folder or None, "source": why}``.

    Reads JAX's configuration, so a folder given to JAX directly is reported too.
    """
    import jax

    given = jax.config.jax_compilation_cache_dir if jax.config.jax_enable_compilation_cache else None
    if given:
        source = _state["reason"] if _state["path"] is not None and str(_state["path"]) == given else "jax config"
        return {"path": given, "source": source}
    return {"path": None, "source": _state["reason"]}


def describe(report: dict | None = None) -> str:
    """One line for ``shibajax info``: the folder and where it came from, or ``off (why)``."""
    report = compilation_cache_report() if report is None else report
    if report["path"] is None:
        reason = report["source"]
        return reason if reason.startswith("off") else f"off: {reason}"
    return f"{report['path']} ({report['source']})"
