"""Every notebook in notebooks/ runs top to bottom (code cells executed in order, in one namespace)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
REALDATA_NOTEBOOKS = {"04_fitting.ipynb"}  # read the measured spectra (shibajax.data.realdata_dir)


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.realdata) if p.name in REALDATA_NOTEBOOKS else p for p in NOTEBOOKS],
    ids=lambda p: p.name,
)
def test_notebook_runs(path):
    import matplotlib.pyplot as plt

    cells = json.loads(path.read_text())["cells"]
    namespace = {"__name__": "__notebook__"}
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)  # noqa: S102
    plt.close("all")
