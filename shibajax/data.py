"""Where the project's shared data live: published reference tables (``reference/``) and measured STS files
(``realdata/``, sources and licences in its ``MANIFEST.md``). They are third-party files, not part of the package.

One lookup, used by the tests and the notebooks:

1. the environment variable ``SHIBAJAX_DATA``, the folder that holds ``reference/`` and ``realdata/``
   (when it is set, nothing else is tried);
2. ``shared/`` beside the repository (``../shared`` seen from the repository root).

When neither holds the data, :class:`~shibajax.errors.DataNotFoundError` says where it looked and how to point
at the data (README.md, "Real data").

Example:
    >>> from shibajax.data import realdata_dir
    >>> from shibajax.errors import DataNotFoundError
    >>> try:
    ...     spectrum = realdata_dir() / "spectrafox_MnPc-Pb111_Spec001.dat"
    ... except DataNotFoundError as err:  # no data here: the message says where it looked and what to set
    ...     spectrum = None
"""

from __future__ import annotations

import os
from pathlib import Path

from shibajax.errors import DataNotFoundError

__all__ = ["ENV_VAR", "data_dir", "realdata_dir", "reference_dir"]

#: The environment variable naming the shared data folder (the one that holds ``reference/`` and ``realdata/``).
ENV_VAR = "SHIBAJAX_DATA"
_SUBFOLDERS = ("reference", "realdata")
# the repository root of a source checkout (an editable install): shibajax/data.py -> shibajax/ -> root
_REPOSITORY = Path(__file__).resolve().parent.parent

_HOW = (
    f"Set {ENV_VAR}=/path/to/shared (the folder that holds realdata/ and reference/), or put that folder beside "
    "the repository as ../shared; README.md, 'Real data', says where to get it."
)


def data_dir(repository: Path | str | None = None) -> Path:
    """The shared data folder, the one that holds ``reference/`` and ``realdata/``.

    Args:
        repository: the repository root whose sibling ``shared/`` is tried when ``SHIBAJAX_DATA`` is unset
            (default: the checkout this package is imported from).

    Raises:
        DataNotFoundError: ``SHIBAJAX_DATA`` names no folder, or a folder with neither ``reference/`` nor
            ``realdata/``; or it is unset and ``shared/`` beside the repository does not exist.
    """
    value = os.environ.get(ENV_VAR, "")
    if value:
        path = Path(value).expanduser()
        if not path.is_dir():
            raise DataNotFoundError(f"shared data not found: {ENV_VAR}={value!r} is not a folder. {_HOW}")
        if not any((path / sub).is_dir() for sub in _SUBFOLDERS):
            looks = " (it looks like realdata/ itself: point at its parent)" if (path / "MANIFEST.md").is_file() else ""
            raise DataNotFoundError(
                f"shared data not found: {ENV_VAR}={value!r} holds neither reference/ nor realdata/{looks}. {_HOW}"
            )
        return path
    repository = _REPOSITORY if repository is None else Path(repository)
    beside = repository.resolve().parent / "shared"
    if any((beside / sub).is_dir() for sub in _SUBFOLDERS):
        return beside
    raise DataNotFoundError(
        f"shared data not found: {ENV_VAR} is not set and {str(beside)!r} (beside the repository) holds no "
        f"reference/ or realdata/. {_HOW}"
    )


def _subfolder(name: str, repository) -> Path:
    path = data_dir(repository) / name
    if not path.is_dir():
        where = f"{ENV_VAR}={os.environ[ENV_VAR]!r}" if os.environ.get(ENV_VAR) else "the shared data folder"
        raise DataNotFoundError(f"shared data not found: {where} has no {name}/ folder ({str(path)!r}). {_HOW}")
    return path


def realdata_dir(repository: Path | str | None = None) -> Path:
    """The measured STS files, ``<shared>/realdata`` (see :func:`data_dir`; raises DataNotFoundError)."""
    return _subfolder("realdata", repository)


def reference_dir(repository: Path | str | None = None) -> Path:
    """The published reference tables, ``<shared>/reference`` (see :func:`data_dir`; raises DataNotFoundError)."""
    return _subfolder("reference", repository)
