"""Numerical precision of shibajax: float64 / complex128, decided once, at import.

``import shibajax`` switches JAX to 64-bit (``jax_enable_x64``) before any array is made, because Shiba
energies are resolved to 1e-10 of the gap and float32 cannot do that. ``REAL`` and ``COMPLEX`` are the
dtypes every module uses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

REAL = jnp.float64
COMPLEX = jnp.complex128


def precision_report() -> dict[str, str]:
    """Return the dtypes in force, for ``shibajax info`` and bug reports."""
    return {
        "jax_enable_x64": str(jax.config.jax_enable_x64),
        "real": str(jnp.zeros((), REAL).dtype),
        "complex": str(jnp.zeros((), COMPLEX).dtype),
    }
