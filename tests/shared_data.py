"""Where the project's shared reference data live: ``shared/`` beside the repository (CI and developers)."""

from __future__ import annotations

from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
SHARED = next(
    (p for p in (_REPO.parent / "shared", Path("/work/shared")) if (p / "reference").is_dir()),
    _REPO.parent / "shared",
)
REFERENCE = SHARED / "reference"
REALDATA = SHARED / "realdata"
"""Real measured STS files (third-party fixtures; ``realdata/MANIFEST.md`` gives source and licence of each)."""
