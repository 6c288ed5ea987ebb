"""Sweeps across processes on JAX's own multi-process runtime (``jax.distributed``), for real, on this machine.

Two processes on localhost (coordinator on 127.0.0.1, CPU collectives through gloo), each with two simulated CPU
devices, run one sweep: the mesh spans the 4 devices of both, each process fills its own shards, process 0 writes
the NetCDF file. The file must equal the one a single process with 4 devices writes, and a run stopped after its
first chunk (in both processes) must resume across processes to the same file (issue 12, "Several machines").
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

REPO = Path(__file__).resolve().parent.parent

WORKER = textwrap.dedent(
    """
    import json, os, sys
    process_id, n_proc, port, out, stop_after, config = sys.argv[1:7]
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    if int(stop_after):  # the library API, stopped by the on_chunk hook after that many chunks
        import jax
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=int(n_proc),
                                   process_id=int(process_id), initialization_timeout=120)
        import shibajax.sweep as sweep
        assert len(jax.devices()) == 4 and jax.process_count() == int(n_proc)

        class Stop(Exception):
            pass

        def on_chunk(chunks, points):
            if chunks == int(stop_after):
                raise Stop
        try:
            sweep.run_sweep(sweep.load_config(config), out, chunk=4, progress=False, on_chunk=on_chunk)
        except Stop:
            print("stopped", flush=True)
    else:  # the command line, as on a cluster
        from shibajax.cli import main
        sys.exit(main(["sweep", config, "--out", out, "--chunk", "4", "--distributed", "--coordinator",
                       f"127.0.0.1:{port}", "--num-processes", n_proc, "--process-id", process_id]))
    """
)

CONFIG_TOML = """kgrid = 12
[impurity]
kind = "dimer"
separation = [2, 0]
K = 0.2
J = 1.5
[sweep]
angle = [0.0, 45.0, 90.0, 135.0, 180.0]
rashba = [0.0, 0.3]
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(n_proc: int, out: Path, config: Path, stop_after: int = 0) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(i), str(n_proc), port, str(out), str(stop_after), str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        for i in range(n_proc)
    ]
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, stderr[-3000:]
            outputs.append(stdout)
    except subprocess.TimeoutExpired:
        pytest.fail("a process of the multi-process sweep did not finish within 300 s")
    finally:
        for proc in procs:
            proc.kill()
    return outputs


def _load(path: Path) -> xr.Dataset:
    with xr.open_dataset(path) as ds:
        return ds.load()


def test_two_processes_resume_and_write_the_file_of_one(tmp_path):
    """Stopped after one chunk in both processes, resumed by two new ones: the file equals a one-process sweep."""
    from shibajax.sweep import load_config, run_sweep

    config = tmp_path / "dimer.toml"
    config.write_text(CONFIG_TOML)
    reference = run_sweep(load_config(config), tmp_path / "single.nc", chunk=4, progress=False)  # this process

    multi = tmp_path / "multi.nc"
    assert all("stopped" in o for o in _run(2, multi, config, stop_after=1))
    partial = _load(multi)
    assert 0 < int(partial["done"].sum()) < 10  # one chunk of 4 points written by process 0
    outputs = _run(2, multi, config)  # `shibajax sweep --distributed` in both processes
    assert all(f"writing {multi}" in o and "10 configurations on 4 device(s)" in o for o in outputs), outputs
    result = _load(multi)
    assert bool(result["done"].all())
    assert np.isfinite(result["energy"].values).sum() > 0
    # the same per-point programs on the same CPU: equal to rounding (1e-12 of the gap 0.3)
    np.testing.assert_allclose(result["energy"].values, reference["energy"].values, rtol=0, atol=1e-12)
    for name in ("multiplicity", "n_states", "has_gap", "converged"):
        np.testing.assert_array_equal(result[name].values, reference[name].values)
    assert result.attrs["config"] == reference.attrs["config"]
    assert not list(tmp_path.glob(".multi.nc.tmp*"))  # atomic writes leave no temporary file
