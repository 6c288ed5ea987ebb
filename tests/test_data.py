"""The shared-data lookup (shibajax.data, tests/shared_data.py) and conftest.py's real-data rules: skip with one
message without the data, fail under CI=true when the data are missing or a real-data test was skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import shared_data

from shibajax.data import ENV_VAR, data_dir, realdata_dir, reference_dir
from shibajax.errors import DataNotFoundError, ShibajaxError

TESTS = Path(__file__).resolve().parent


def _shared(tmp_path, *subfolders):
    root = tmp_path / "shared"
    for sub in subfolders:
        (root / sub).mkdir(parents=True)
    return root


def test_the_environment_variable_comes_first(tmp_path, monkeypatch):
    root = _shared(tmp_path, "realdata", "reference")
    monkeypatch.setenv(ENV_VAR, str(root))
    assert data_dir() == root
    assert realdata_dir() == root / "realdata"
    assert reference_dir() == root / "reference"
    # set, it is the only place looked at: a repository with data beside it does not count
    repo = tmp_path / "other" / "repo"
    _shared(tmp_path / "other", "realdata")
    repo.mkdir()
    assert realdata_dir(repo) == root / "realdata"


def test_then_shared_beside_the_repository(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    with pytest.raises(DataNotFoundError, match=rf"{ENV_VAR} is not set and .*shared.*{ENV_VAR}=/path/to/shared"):
        realdata_dir(repo)
    root = _shared(tmp_path, "realdata")
    assert realdata_dir(repo) == root / "realdata"
    with pytest.raises(DataNotFoundError, match=r"has no reference/ folder"):
        reference_dir(repo)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "nowhere", r"SHIBAJAX_DATA='.*nowhere' is not a folder"),
        (lambda tmp: (tmp / "f.txt", (tmp / "f.txt").write_text("x"))[0], r"f\.txt' is not a folder"),
        (lambda tmp: tmp, r"holds neither reference/ nor realdata/\. Set SHIBAJAX_DATA"),
    ],
    ids=["absent", "a-file", "empty-folder"],
)
def test_a_wrong_environment_variable_says_so(tmp_path, monkeypatch, make, message):
    monkeypatch.setenv(ENV_VAR, str(make(tmp_path)))
    with pytest.raises(DataNotFoundError, match=message) as info:
        realdata_dir()
    assert isinstance(info.value, ShibajaxError) and isinstance(info.value, FileNotFoundError)


def test_pointing_at_realdata_itself_is_explained(tmp_path, monkeypatch):
    root = _shared(tmp_path, "realdata")
    (root / "realdata" / "MANIFEST.md").write_text("# files\n")
    monkeypatch.setenv(ENV_VAR, str(root / "realdata"))
    with pytest.raises(DataNotFoundError, match=r"looks like realdata/ itself: point at its parent"):
        realdata_dir()


def test_require_skips_without_the_folder_and_fails_on_an_incomplete_one(monkeypatch, tmp_path):
    monkeypatch.setattr(shared_data, "REALDATA", tmp_path / "absent" / "realdata")
    monkeypatch.setattr(shared_data, "REALDATA_MISSING", "shared data not found: test")
    with pytest.raises(pytest.skip.Exception, match="shared data not found: test"):
        shared_data.require(shared_data.REALDATA / "x.dat")
    monkeypatch.setattr(shared_data, "REALDATA", tmp_path)
    monkeypatch.setattr(shared_data, "REALDATA_MISSING", None)
    with pytest.raises(pytest.fail.Exception, match=r"missing shared data file .*x\.dat"):
        shared_data.require(tmp_path / "x.dat")
    (tmp_path / "x.dat").write_text("1\n")
    assert shared_data.require(tmp_path / "x.dat") == tmp_path / "x.dat"


_SESSION = '''
import pytest

@pytest.mark.realdata
def test_needs_data():
    if {skip!r}:
        pytest.skip("skipped for another reason")

def test_plain():
    pass
'''


def _pytest(tmp_path, env, *args, skip=False):
    """Run pytest on a two-test file with this conftest.py, in a subprocess (a fresh session, its own env)."""
    for name in ("conftest.py", "shared_data.py"):
        shutil.copy(TESTS / name, tmp_path / name)
    (tmp_path / "test_session.py").write_text(_SESSION.format(skip=skip))
    env = {k: v for k, v in os.environ.items() if k not in ("CI", ENV_VAR, "PYTEST_ADDOPTS")} | env
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *args, "test_session.py"]
    run = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return run.returncode, run.stdout + run.stderr


def test_without_data_realdata_tests_skip_with_one_message_and_ci_refuses_to_start(tmp_path):
    rc, out = _pytest(tmp_path, {ENV_VAR: "/nonexistent"}, "-n", "0")
    assert rc == 0, out
    assert "1 passed, 1 skipped" in out and "SHIBAJAX_DATA='/nonexistent' is not a folder" in out, out
    rc, out = _pytest(tmp_path, {ENV_VAR: "/nonexistent", "CI": "true"}, "-n", "0")
    assert rc == pytest.ExitCode.USAGE_ERROR, out
    assert "CI=true but the real-data tests cannot run: shared data not found" in out, out


def test_ci_fails_when_a_realdata_test_is_skipped_under_xdist(tmp_path):
    """The controller counts the skips reported by its worker (-n 1: one worker, the xdist code path)."""
    data = _shared(tmp_path / "data", "realdata", "reference")
    rc, out = _pytest(tmp_path, {ENV_VAR: str(data), "CI": "true"}, "-n", "1", skip=True)
    assert rc == pytest.ExitCode.TESTS_FAILED, out
    assert "test_session.py::test_needs_data: skipped for another reason" in out, out
    assert "1 real-data test(s) were skipped" in out, out
