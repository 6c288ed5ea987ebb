"""README.md's Python examples run as written, after a plain ``import shibajax``, in a fresh interpreter.

Every fenced ```python block, in order, in one namespace, and the one-liners the prose offers as code
(``ONE_LINERS``). A fresh interpreter, because in the test session other tests have imported the submodules already,
which would hide an attribute missing after a plain ``import shibajax``. The ```bash blocks (installation, command
line, real data) are not run here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


#: Inline code of the prose that README presents as a runnable one-liner.
ONE_LINERS = ("shibajax.clusters.helical_chain(20, pitch=np.pi / 3, J=1.5)",)


def test_readme_has_examples():
    text = README.read_text()
    assert len(python_blocks(text)) >= 2
    for line in ONE_LINERS:
        assert f"`{line}`" in text


def test_readme_python_examples_run_after_a_plain_import():
    text = README.read_text()
    script = ["import numpy as np", "import shibajax"]
    for i, block in enumerate(python_blocks(text)):
        script.append(f"exec(compile({block!r}, 'README.md[python block {i}]', 'exec'))")
    script += [f"assert {call} is not None, {call!r}" for call in ONE_LINERS]
    out = subprocess.run(
        [sys.executable, "-c", "\n".join(script)], check=False, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-4000:]
