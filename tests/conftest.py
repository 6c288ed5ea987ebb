"""Test-session settings.

One BLAS thread: on a 2-core machine XLA's own thread pool and a multi-threaded OpenBLAS oversubscribe the cores,
and NumPy's LAPACK calls (the exact-diagonalisation references) then run 50-100x slower. Must be set before
NumPy is imported, hence here.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
