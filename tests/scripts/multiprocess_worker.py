"""One of several OS processes training with ``fnn.parallel`` (tests/test_parallel.py).

    python multiprocess_worker.py PORT NUM_PROCESSES PROCESS_ID OUT.npz

Joins a ``jax.distributed`` run on localhost (CPU collectives through gloo),
feeds *its own slice* of a global batch to ``fnn.parallel.make_step`` for a
few steps of a model with batch norm, and saves the replicated results
(parameters, batch-norm state, losses) to ``OUT.npz``. The data and model
come from :func:`problem`, which the test also calls to train one process
on the whole batch.

Then it trains again from the start, stops after ``STOP`` steps, process 0
alone checkpoints (``run.ckpt`` beside ``OUT.npz``), every process loads the
checkpoint into its own devices and finishes the run: those results go to
``OUT.npz`` too, as ``resumed_*``, for the test to compare bit for bit.
Process 0 also checks that ``checkpoint.save`` refuses an array split
across processes, and every process loads the global batch, saved whole,
as its own rows.
"""

from __future__ import annotations

import os
import sys

import numpy as np

STEPS = 3
STOP = 2  # the resumed run checkpoints after this many steps


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
    results = flat(params, state, values)
    # A slice of 3 per process (a global batch of 6) divides over this
    # process's one device, though not over all devices.
    step(params, state, opt_state, x[mine][:3], y[mine][:3], None)
    print(f"process {process_id}: a local batch of 3 trained")
    resumed = resume(step, x, mine, os.path.join(os.path.dirname(out), "run.ckpt"))
    np.savez(out, **results, **{f"resumed_{k}": v for k, v in resumed.items()})
    jax.distributed.shutdown()
    print(f"process {process_id}: losses {values}")


def resume(step, x, mine, path):
    """Trains ``STOP`` steps, checkpoints from process 0, loads the
    checkpoint on every process and trains to ``STEPS``: the results."""
    import jax
    from jax.experimental import multihost_utils

    from fnn import checkpoint

    _, params, state, _, y, opt = problem()  # fresh: the step donates its inputs
    # What a restarted process knows: shapes, dtypes, the step's sharding.
    like = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=step.replicated),
        (params, state, opt.init(params)),
    )
    opt_state, values = opt.init(params), []
    for _ in range(STOP):
        params, state, opt_state, value = step(
            params, state, opt_state, x[mine], y[mine], None
        )
        values.append(float(value))
    if jax.process_index() == 0:
        # An array split across processes is refused, not saved in part.
        split_x = jax.make_array_from_process_local_data(step.split, x[mine])
        try:
            checkpoint.save(path + ".refused", {"x": split_x})
        except ValueError as e:
            print(f"process 0: refused: {e}")
        assert not os.path.exists(path + ".refused")
    # A typed key replicated over both processes, saved and loaded alike.
    keys = jax.random.split(jax.random.key(7), 3)
    key = jax.make_array_from_callback(keys.shape, step.replicated, lambda i: keys[i])
    if jax.process_index() == 0:
        tree = {"train": (params, state, opt_state), "key": key, "x": x}
        checkpoint.save(path, tree | {"values": values})
    # Process 0 saved alone while process 1 waited here: no collective in save.
    multihost_utils.sync_global_devices("checkpoint saved")
    del params, state, opt_state  # resume from the file alone
    like = {
        "train": like,
        "key": jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=step.replicated),
        "x": jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=step.split),
        "values": [0.0] * STOP,
    }
    got = checkpoint.load(path, like)
    params, state, opt_state = got["train"]
    for a in jax.tree.leaves((got["train"], got["key"])):
        assert a.sharding.is_equivalent_to(step.replicated, a.ndim), a.sharding
        assert not a.is_fully_addressable  # a global array over both processes
    loaded_keys = jax.random.key_data(got["key"].addressable_data(0))
    assert np.array_equal(loaded_keys, jax.random.key_data(keys))
    # Each process holds only its own rows of the global batch.
    (shard,) = got["x"].addressable_shards
    assert np.array_equal(shard.data, x[mine]) and shard.index[0] == mine, shard
    print(f"process {jax.process_index()}: loaded its rows {mine.start}-{mine.stop}")
    values = got["values"]
    for _ in range(STEPS - STOP):
        params, state, opt_state, value = step(
            params, state, opt_state, x[mine], y[mine], None
        )
        values.append(float(value))
    return flat(params, state, values)


if __name__ == "__main__":
    # One CPU device per process, fixed before JAX starts.
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    os.environ["JAX_PLATFORMS"] = "cpu"
    port, n, i, out = sys.argv[1:]
    main(int(port), int(n), int(i), out)
