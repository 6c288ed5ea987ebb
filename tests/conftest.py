"""Test-session settings.

One BLAS thread: on a 2-core machine XLA's own thread pool and a multi-threaded OpenBLAS oversubscribe the cores,
and NumPy's LAPACK calls (the exact-diagonalisation references) then run 50-100x slower. Must be set before
NumPy is imported, hence here.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# the tests run in two pytest-xdist workers (pyproject.toml): on a GPU machine both share the device, so neither
# may preallocate most of its memory
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
