"""The batched solver runs unchanged when its batch is sharded over several devices.

Simulated with four CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=4) in a subprocess, since the
device count is fixed when JAX starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import shibajax

    assert len(jax.devices()) == 4, jax.devices()
    model = shibajax.models.square(mu=-1.0, delta=0.3, rashba=0.4)

    def energies(J, theta):
        dimer = [shibajax.Impurity((0, 0), J=J), shibajax.Impurity((2, 1), J=J, theta=theta)]
        return shibajax.bound_state_energies(model, dimer, kgrid=(12, 12)).energies

    J = jnp.linspace(0.5, 3.0, 16)
    theta = jnp.linspace(0.0, jnp.pi, 16)
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    sharding = NamedSharding(mesh, P("batch"))
    Js, ths = jax.device_put(J, sharding), jax.device_put(theta, sharding)
    sharded = jax.jit(jax.vmap(energies))(Js, ths)
    assert len(sharded.sharding.device_set) == 4
    one = jax.jit(jax.vmap(energies))(jax.device_put(J, jax.devices()[0]), jax.device_put(theta, jax.devices()[0]))
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(one), atol=1e-12, equal_nan=True)
    dimer = [shibajax.Impurity((0, 0), J=J[5]), shibajax.Impurity((2, 1), J=J[5], theta=theta[5])]
    ref = shibajax.bound_states(model, dimer, kgrid=(12, 12))
    np.testing.assert_allclose(np.asarray(sharded)[5][: ref.all_energies.size], ref.all_energies, atol=1e-12)
    print("OK", int(np.isfinite(np.asarray(sharded)).sum()))
    """
)


def test_batch_sharded_over_four_devices_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], check=False, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("OK")
    assert int(out.stdout.split()[1]) > 0  # some states were found
