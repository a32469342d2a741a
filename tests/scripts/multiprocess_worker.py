"""One of several OS processes training with ``fnn.parallel`` (tests/test_parallel.py).

    python multiprocess_worker.py PORT NUM_PROCESSES PROCESS_ID OUT.npz

Joins a ``jax.distributed`` run on localhost (CPU collectives through gloo),
feeds *its own slice* of a global batch to ``fnn.parallel.make_step`` for a
few steps of a model with batch norm, and saves the replicated results
(parameters, batch-norm state, losses) to ``OUT.npz``. The data and model
come from :func:`problem`, which the test also calls to train one process
on the whole batch.
"""

from __future__ import annotations

import os
import sys

import numpy as np

STEPS = 3


def problem():
    """The model, its initial params and state, the global batch, the optimizer."""
    import jax

    from fnn import layers as L
    from fnn import optim

    model = L.serial(L.Dense(8, use_bias=False), L.BatchNorm(), L.Relu, L.Dense(3))
    _, params, state = model.init(jax.random.key(0), (5,))
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(8, 5)) * 3 + 1).astype(np.float32)
    y = (np.arange(8) % 3).astype(np.int32)
    return model, params, state, x, y, optim.sgd(0.1)


def flat(params, state, losses_):
    import jax

    leaves = jax.tree.leaves((params, state))
    out = {f"leaf{i}": np.asarray(a) for i, a in enumerate(leaves)}
    return out | {"losses": np.asarray(losses_)}


def main(port, num_processes, process_id, out):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=60,
    )
    assert jax.process_count() == num_processes and jax.device_count() == num_processes

    from fnn import losses, parallel

    model, params, state, x, y, opt = problem()
    per_process = x.shape[0] // num_processes
    mine = slice(process_id * per_process, (process_id + 1) * per_process)
    step = parallel.make_step(model, losses.softmax_cross_entropy, opt)
    opt_state = opt.init(params)
    values = []
    for _ in range(STEPS):
        params, state, opt_state, value = step(
            params, state, opt_state, x[mine], y[mine], None
        )
        values.append(float(value))
    np.savez(out, **flat(params, state, values))
    # A slice of 3 per process (a global batch of 6) divides over this
    # process's one device, though not over all devices.
    step(params, state, opt_state, x[mine][:3], y[mine][:3], None)
    print(f"process {process_id}: a local batch of 3 trained")
    jax.distributed.shutdown()
    print(f"process {process_id}: losses {values}")


if __name__ == "__main__":
    # One CPU device per process, fixed before JAX starts.
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    os.environ["JAX_PLATFORMS"] = "cpu"
    port, n, i, out = sys.argv[1:]
    main(int(port), int(n), int(i), out)
