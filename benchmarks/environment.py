"""Where a benchmark's numbers were measured (stored with every --json result)."""

from __future__ import annotations

import os
import platform

import jax
import numpy as np

import shibajax


def environment() -> dict:
    """Platform, Python, CPU count, versions (jax, numpy, shibajax), JAX backend and devices."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "shibajax": shibajax.__version__,
    }
