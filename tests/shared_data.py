"""Where the project's shared data live, for the tests: the lookup of :mod:`shibajax.data` (``SHIBAJAX_DATA``, then
``shared/`` beside this repository).

``REFERENCE`` and ``REALDATA`` are always paths (where the data would be), so modules can build file names at
import; ``REFERENCE_MISSING`` / ``REALDATA_MISSING`` hold the one message saying what is missing and how to get it
(``None`` when the folder is there). Tests that read ``REALDATA`` carry the ``realdata`` marker: conftest.py skips
them with that message when the folder is absent, and under ``CI=true`` a missing folder, or any skipped
``realdata`` test, fails the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shibajax.data import ENV_VAR, data_dir, realdata_dir, reference_dir
from shibajax.errors import DataNotFoundError

_REPO = Path(__file__).resolve().parent.parent
#: the start of every missing-data message (conftest.py recognises skips by it)
MISSING_PREFIX = "shared data not found"


def _lookup(find):
    try:
        return find(_REPO), None
    except DataNotFoundError as err:
        return None, str(err)


_shared, SHARED_MISSING = _lookup(data_dir)
SHARED = _shared or (Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else _REPO.parent / "shared")
_reference, REFERENCE_MISSING = _lookup(reference_dir)
_realdata, REALDATA_MISSING = _lookup(realdata_dir)
REFERENCE = _reference or SHARED / "reference"
REALDATA = _realdata or SHARED / "realdata"
"""Real measured STS files (third-party fixtures; ``realdata/MANIFEST.md`` gives source and licence of each)."""


def require(path: Path) -> Path:
    """``path`` (a file or folder of the shared data). When its folder (``realdata/`` or ``reference/``) is absent,
    skip the test with the missing-data message (under ``CI=true`` conftest.py turns such a skip into a
    failure); when the folder is there but lacks ``path``, fail (an incomplete copy of the data)."""
    path = Path(path)
    if path.exists():
        return path
    for folder, missing in ((REALDATA, REALDATA_MISSING), (REFERENCE, REFERENCE_MISSING)):
        if missing and (path == folder or folder in path.parents):
            pytest.skip(missing)
    pytest.fail(f"missing shared data file {path} (the shared data folder {SHARED} is incomplete; see README.md, "
                "'Real data')")
