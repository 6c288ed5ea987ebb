"""JAX's persistent compilation cache (shibajax/_compilation_cache.py): where the folder comes from, that the CLI
turns it on and ``import shibajax`` does not, that a second process reads what the first wrote, and that an
unusable folder is a one-line warning instead of a failure.

Turning the cache on changes JAX's process-wide configuration, so those checks run in fresh subprocesses (two,
~2 s each); every subprocess gets ``SHIBAJAX_COMPILATION_CACHE`` set to a folder under tmp_path, so nothing is
written to the user's own cache. The in-process checks only take paths that leave JAX's configuration alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from shibajax import _compilation_cache as cc
from shibajax.cli import main

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh process with SHIBAJAX_COMPILATION_CACHE set: import shibajax (must not enable the cache), the CLI's
# main (must), then one small jitted function; prints what JAX's configuration and cache counters say.
_SCRIPT = r"""
import contextlib, io, json, os
import jax, jax.numpy as jnp
from jax import monitoring
events = []
monitoring.register_event_listener(lambda name, **kw: events.append(name))
import shibajax
from shibajax.cli import main
after_import = jax.config.jax_compilation_cache_dir
out = io.StringIO()
with contextlib.redirect_stdout(out):
    status = main(["info", "--json"])
before = len(events)
y = jax.jit(lambda x: jnp.sum(jnp.sin(x) @ x.T))(jnp.arange(64.0).reshape(8, 8))
y.block_until_ready()
print(json.dumps({
    "status": status,
    "after_import": after_import,
    "info": json.loads(out.getvalue())["compilation_cache"],
    "dir": jax.config.jax_compilation_cache_dir,
    "min_compile_time": jax.config.jax_persistent_cache_min_compile_time_secs,
    "hits": events[before:].count("/jax/compilation_cache/cache_hits"),
    "writes": events[before:].count("/jax/compilation_cache/cache_misses"),
}))
"""


def _run_script(cache: Path) -> dict:
    env = {**os.environ, cc.ENV_VAR: str(cache), "PYTHONPATH": str(ROOT)}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cli_turns_the_cache_on_and_a_second_process_reads_it(tmp_path):
    cache = tmp_path / "cache"
    first = _run_script(cache)
    assert first["status"] == 0
    assert first["after_import"] is None  # import shibajax leaves the choice to the user
    assert first["info"] == {"path": str(cache.resolve()), "source": f"${cc.ENV_VAR}"}  # what `shibajax info` shows
    assert first["dir"] == str(cache.resolve())
    assert first["min_compile_time"] == cc.MIN_COMPILE_TIME_S
    assert first["writes"] >= 1 and first["hits"] == 0  # a new program: compiled and written
    assert any(p.is_file() for p in cache.iterdir())
    second = _run_script(cache)
    assert second["hits"] >= 1 and second["writes"] == 0  # same program in a fresh process: read back, not compiled


@pytest.mark.parametrize("value", ["0", "off", "OFF", " false "])
def test_env_var_switches_the_cache_off(monkeypatch, value):
    monkeypatch.setenv(cc.ENV_VAR, value)
    assert cc.resolve_cache_dir()[0] is None
    assert cc.resolve_cache_dir("/some/where")[0] == Path("/some/where")  # an explicit path wins


def test_folder_precedence(monkeypatch, tmp_path):
    assert jax.config.jax_compilation_cache_dir is None  # nothing in the test session set one
    monkeypatch.setenv(cc.ENV_VAR, str(tmp_path / "env"))
    assert cc.resolve_cache_dir() == (tmp_path / "env", f"${cc.ENV_VAR}")
    monkeypatch.delenv(cc.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    expected = tmp_path / "xdg" / "shibajax" / f"jax-{jax.__version__}"
    assert cc.resolve_cache_dir() == (expected, "default")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cc.default_cache_dir() == tmp_path / "home" / ".cache" / "shibajax" / f"jax-{jax.__version__}"


def test_unwritable_folder_is_one_warning_and_no_cache(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    bad = blocker / "cache"  # cannot be created, whoever runs the test (root included)
    with pytest.warns(cc.CompilationCacheWarning, match=r"a-file/cache is not a writable folder.*SHIBAJAX_COMPIL"):
        assert cc.enable_compilation_cache(bad) is None
    assert jax.config.jax_compilation_cache_dir is None  # JAX's configuration untouched
    assert cc.compilation_cache_report()["path"] is None
    # the CLI: exit status 0, one "warning:" line on stderr, and `info` says the cache is off and why
    monkeypatch.setenv(cc.ENV_VAR, str(bad))
    assert main(["info"]) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("warning: persistent compilation cache off:") and str(bad) in err
    row = next(line for line in out.splitlines() if line.startswith("compilation cache"))
    assert "off:" in row and "not a writable folder" in row
    assert jax.config.jax_compilation_cache_dir is None


def test_info_reports_off(monkeypatch, capsys):
    monkeypatch.setenv(cc.ENV_VAR, "off")
    assert main(["info"]) == 0
    out, err = capsys.readouterr()
    row = next(line for line in out.splitlines() if line.startswith("compilation cache"))
    assert row.split(None, 2)[2] == f"off (${cc.ENV_VAR}=off)" and err == ""


def test_the_test_suite_does_not_write_the_user_cache():
    """The tests call the CLI's main() in-process; tests/conftest.py must set SHIBAJAX_COMPILATION_CACHE (to off,
    or a folder of the developer's choosing) so that those calls do not fill ~/.cache on a CI machine."""
    folder, _ = cc.resolve_cache_dir()
    real_default = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")) / "shibajax"
    assert folder is None or real_default not in folder.resolve().parents, (
        f"the test session would write compiled kernels to {folder}: set {cc.ENV_VAR}=off in tests/conftest.py"
    )
