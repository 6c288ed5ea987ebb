"""Writing result files so that an interruption never leaves a half-written one (sweeps, grid fits)."""

from __future__ import annotations

import os
from pathlib import Path


def write_netcdf_atomic(ds, path: Path) -> None:
    """Write the xarray Dataset ``ds`` to ``path`` through a temporary file in the same folder and an atomic
    rename: a reader (or a resumed run) sees the old file or the new one, never a part. Raises OSError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        ds.to_netcdf(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
