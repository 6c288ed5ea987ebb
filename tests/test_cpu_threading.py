"""The CPU path cannot hang and does not oversubscribe the cores (issue 12, defect 3).

Cause of the hang of ``shibajax sweep`` on 4 simulated CPU devices: jaxlib 0.10's batched LAPACK kernels block a
thread of XLA's intra-op pool while their sub-tasks wait in the same pool; with one batched ``eigh`` per device
running at once, every pool thread waits and nothing runs (shibajax/_linalg.py). The fix gives every CPU LAPACK call
one matrix. These tests check (1) that no compiled solver program hands LAPACK a batch on CPU, (2) the sharded sweep
that used to hang, repeated under extra CPU load with a timeout, and (3) one LAPACK thread inside XLA's pool.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import shibajax
from shibajax import _linalg

REPO = Path(__file__).resolve().parent.parent


def lapack_batch_dims(lowered_text: str) -> list[tuple[str, int]]:
    """(kernel, num_batch_dims) of every LAPACK custom call in a lowered StableHLO module."""
    calls = []
    for line in lowered_text.splitlines():
        match = re.search(r"custom_call @(lapack_\w+)\(", line)
        if match:
            dims = re.search(r'num_batch_dims = "(\d+)"', line)
            calls.append((match.group(1), int(dims.group(1)) if dims else 0))
    return calls


def test_linalg_wrappers_equal_numpy_and_differentiate():
    """Mapped eigh/solve/inv equal NumPy's batched ones (1e-12: LAPACK on the same matrices) and their
    derivatives equal central finite differences (1e-6 relative: h = 1e-6 truncation and rounding)."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 2, 5, 5)) + 1j * rng.normal(size=(3, 2, 5, 5))
    a = a + a.conj().swapaxes(-1, -2)
    b = rng.normal(size=(3, 2, 5, 2))
    np.testing.assert_allclose(_linalg.eigvalsh(a), np.linalg.eigvalsh(a), atol=1e-12)
    np.testing.assert_allclose(_linalg.solve(a, b), np.linalg.solve(a, b), atol=1e-12)
    np.testing.assert_allclose(_linalg.solve(a, b[..., 0]), np.linalg.solve(a, b[..., :1])[..., 0], atol=1e-12)
    np.testing.assert_allclose(_linalg.inv(a), np.linalg.inv(a), atol=1e-12)

    def f(x):
        return jnp.sum(_linalg.eigvalsh(a * x) ** 2) + jnp.sum(jnp.abs(_linalg.solve(a * x + 9 * jnp.eye(5), b)) ** 2)

    h = 1e-6
    fd = (f(1.3 + h) - f(1.3 - h)) / (2 * h)
    assert abs(jax.grad(f)(1.3) - fd) < 1e-6 * abs(fd)
    assert abs(jax.jvp(f, (1.3,), (1.0,))[1] - fd) < 1e-6 * abs(fd)


def test_no_batched_lapack_call_on_cpu():
    """Every LAPACK call of the compiled sweep chunk, bound-state search and T-matrix factorises ONE matrix."""
    from shibajax.sweep import _batched

    params = {k: jax.ShapeDtypeStruct((4,), jnp.float64) for k in ("t", "mu", "delta", "rashba", "K", "J", "angle")}
    chunk = _batched("dimer", ((2, 0),), (8, 8), "s", None)
    texts = {"sweep chunk": chunk.lower(params).as_text()}

    model = shibajax.models.square(mu=-1.0, delta=0.3, rashba=0.3)

    def energies(j):
        return shibajax.bound_state_energies(model, shibajax.Impurity((0, 0), J=j), kgrid=(8, 8)).energies

    texts["bound_state_energies"] = jax.jit(energies).lower(1.5).as_text()
    g = jnp.zeros((7, 8, 8), jnp.complex128)
    texts["t_matrix solve"] = jax.jit(lambda g: _linalg.solve(jnp.eye(8) - g, g)).lower(g).as_text()
    for name, text in texts.items():
        calls = lapack_batch_dims(text)
        assert calls, f"{name}: no LAPACK call found (the check would be empty)"
        batched = [c for c in calls if c[1] > 0]
        assert not batched, f"{name}: batched LAPACK calls {batched} can deadlock XLA's CPU pool"
    # the check itself can fail: plain jnp.linalg hands LAPACK the batch
    assert lapack_batch_dims(jax.jit(jnp.linalg.eigh).lower(g + 0).as_text())[0][1] == 1


STRESS = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np, shibajax
    from shibajax.sweep import run_sweep
    assert len(jax.devices()) == 4
    cfg = {"kgrid": 20, "impurity": {"kind": "dimer", "separation": [2, 0], "K": 0.2, "J": 1.5},
           "sweep": {"angle": [float(a) for a in range(0, 181, 20)], "rashba": [0.0, 0.3, 0.6]}}
    first = None
    for rep in range(int(sys.argv[2])):
        path = os.path.join(sys.argv[1], f"rep{rep}.nc")
        ds = run_sweep(cfg, path, progress=False)
        energies = ds["energy"].values
        assert bool(ds["done"].all()) and np.isfinite(energies).any()
        first = energies if first is None else first
        np.testing.assert_array_equal(energies, first)  # every repeat gives the same bits
        print("rep", rep, "ok", flush=True)
    """
)


def test_sharded_sweep_does_not_hang_under_load(tmp_path):
    """The 30-point dimer sweep on 4 simulated CPU devices (before the fix: no progress at all within 120 s,
    every try, at this k-grid) run 8 times in one process while another process keeps a core busy; must finish
    well inside the timeout (about 30-60 s on 2 loaded cores)."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        run = subprocess.run(
            [sys.executable, "-c", STRESS, str(tmp_path), "8"],
            check=False,
            capture_output=True,
            text=True,
            timeout=400,
            env=env,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the 4-device sweep hung (no result within {err.timeout} s): {err.stdout!r}")
    finally:
        burner.kill()
        burner.wait()
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("ok") == 8


def test_scipy_lapack_runs_one_thread():
    """``import shibajax`` sets the BLAS behind jaxlib's LAPACK (SciPy's) to one thread even when OpenBLAS would
    start one per core, leaves NumPy's own BLAS alone, and SHIBAJAX_LAPACK_THREADS chooses another number."""
    code = (
        "import json, shibajax; from shibajax._threads import threading_report; "
        "print(json.dumps(threading_report()))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    import json

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    report = json.loads(out.stdout)
    assert report["lapack_threads"] == 1
    assert report["lapack_libraries"] and set(report["lapack_libraries"].values()) == {1}
    env["SHIBAJAX_LAPACK_THREADS"] = "2"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert set(json.loads(out.stdout)["lapack_libraries"].values()) == {2}
    env["SHIBAJAX_LAPACK_THREADS"] = "many"
    bad = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "SHIBAJAX_LAPACK_THREADS must be a non-negative integer" in bad.stderr
