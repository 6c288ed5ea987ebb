"""CPU threading of the LAPACK library that jaxlib's CPU kernels call, set once at import.

jaxlib's CPU ``eigh``/``solve``/``cholesky`` kernels call LAPACK through SciPy (``scipy.linalg.cython_lapack``), i.e.
SciPy's bundled OpenBLAS. Those calls are made from XLA's own intra-op thread pool, which already has one thread
per core; an OpenBLAS that starts its own threads on top of it oversubscribes the cores. Measured on the 2-core
development machine, a batched ``eigh`` of 4096 20 x 20 complex matrices: 1.5-7.7 s with OpenBLAS's default
threads, 0.29-0.47 s with one (NumPy's own LAPACK, for scale: 0.29 s). So ``import shibajax`` sets SciPy's BLAS to
one thread (``SHIBAJAX_LAPACK_THREADS=n`` chooses another number; ``0`` leaves the library's default). NumPy's own
BLAS (a separate library in the wheels) is not touched, so NumPy code beside shibajax keeps its threads.

The thread pool is set with threadpoolctl, which knows OpenBLAS, MKL and BLIS under their many build names. The
hang of several simulated CPU devices is a different problem (LAPACK batch kernels that block XLA's pool) and is
fixed in :mod:`shibajax._linalg`.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "SHIBAJAX_LAPACK_THREADS"
DEFAULT_THREADS = 1

_state: dict = {"threads": None, "libraries": []}


def _scipy_dirs() -> tuple[str, ...]:
    import scipy

    root = Path(scipy.__file__).resolve().parent
    return (str(root) + os.sep, str(root.parent / "scipy.libs") + os.sep)


def _requested_threads() -> int | None:
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return DEFAULT_THREADS
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        from shibajax.errors import ShibajaxError

        raise ShibajaxError(f"{ENV_VAR} must be a non-negative integer (0: the BLAS default); got {raw!r}")
    return None if value == 0 else value


def limit_lapack_threads(threads: int | None = None) -> dict:
    """Set the thread count of the BLAS/LAPACK that jaxlib's CPU kernels use (SciPy's) and return a report.

    Args:
        threads: threads per LAPACK call; None: ``$SHIBAJAX_LAPACK_THREADS`` or 1.

    Returns:
        ``{"threads": n, "libraries": [file names]}``: what was set. When SciPy shares one system BLAS with NumPy
        (conda, distribution packages), that BLAS is the one set.
    """
    import scipy.linalg.cython_lapack  # noqa: F401  (loads the library jaxlib's kernels call)
    from threadpoolctl import ThreadpoolController

    n = _requested_threads() if threads is None else int(threads)
    controller = ThreadpoolController()
    blas = [lib for lib in controller.lib_controllers if lib.user_api == "blas"]
    scipy_dirs = _scipy_dirs()
    own = [lib for lib in blas if str(Path(lib.filepath).resolve()).startswith(scipy_dirs)]
    chosen = own or blas  # no bundled copy: SciPy links the system BLAS
    if n is not None:
        for lib in chosen:
            lib.set_num_threads(n)
    _state["threads"] = n
    _state["libraries"] = [Path(lib.filepath).name for lib in chosen]
    return threading_report()


def threading_report() -> dict:
    """What :func:`limit_lapack_threads` set (for ``shibajax info``): threads and the libraries, with their
    current thread counts."""
    from threadpoolctl import threadpool_info

    current = {Path(i["filepath"]).name: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    return {
        "lapack_threads": _state["threads"],
        "lapack_libraries": {name: current.get(name) for name in _state["libraries"]},
    }
