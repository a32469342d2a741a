"""Data parallelism with ``jax.sharding``: the same step, over many devices.

``make_step`` builds the step of :func:`fnn.train.make_step` with the batch
split over a one-axis device mesh named ``"data"`` and the parameters, model
state and optimizer state replicated. Nothing in the model changes: XLA's
partitioner sees a mean over a sharded batch axis (the loss, batch-norm
statistics, ``dw = x^T dy``) and inserts the cross-device all-reduce itself,
so batch-norm statistics are global across shards and the result equals one
device's, to float round-off.

Multi-host: call ``jax.distributed.initialize()`` at start-up on every host
(before any other JAX call); ``jax.devices()`` then lists every host's
devices, and each host passes its own slice of the global batch, in process
order, to the step (it is assembled with
``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fnn import train
from fnn.protocol import Layer


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh ``("data",)`` over ``devices`` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("fnn.parallel: no devices given")
    return Mesh(np.array(devices), ("data",))


def make_step(
    model: Layer,
    loss,
    optimizer: optax.GradientTransformation,
    *,
    devices: Sequence[jax.Device] | None = None,
    method: str = "autodiff",
    compute_dtype=None,
) -> Callable:
    """A jitted data-parallel training step.

    Same signature and results as :func:`fnn.train.make_step`:
    ``step(params, state, opt_state, x, y, key) -> (params, state, opt_state,
    loss)``, with ``x`` and ``y`` split along their first axis over
    ``devices`` (whose number must divide the batch size) and everything
    else replicated. ``params``, ``state`` and ``opt_state`` are donated;
    ``compute_dtype`` is the mixed precision of :func:`fnn.train.make_step`.
    """
    mesh = data_mesh(devices)
    n = mesh.size
    replicated = NamedSharding(mesh, PartitionSpec())
    split = NamedSharding(mesh, PartitionSpec("data"))
    jitted = jax.jit(
        train._step_fn(model, loss, optimizer, method, compute_dtype),
        in_shardings=(replicated, replicated, replicated, split, split, replicated),
        out_shardings=replicated,
        donate_argnums=(0, 1, 2),
    )
    multi_host = jax.process_count() > 1

    def step(params, state, opt_state, x, y, key):
        # Checked here, before jit places the batch: an indivisible batch
        # would otherwise surface as a sharding error from inside JAX.
        for name, a in (("x", x), ("y", y)):
            if np.shape(a)[0] % n:
                raise ValueError(
                    f"fnn.parallel.make_step: the batch of {name} has "
                    f"{np.shape(a)[0]} examples, not divisible by the {n} devices"
                )
        if multi_host:  # each host holds its own slice of the global batch
            x = jax.make_array_from_process_local_data(split, x)
            y = jax.make_array_from_process_local_data(split, y)
        return jitted(params, state, opt_state, x, y, key)

    step.lower = jitted.lower  # for inspecting the compiled program
    return step


def replicate(tree, devices: Sequence[jax.Device] | None = None):
    """Places every leaf of ``tree`` on all ``devices``, e.g. parameters."""
    return jax.device_put(tree, NamedSharding(data_mesh(devices), PartitionSpec()))


def shard_batch(tree, devices: Sequence[jax.Device] | None = None):
    """Splits every leaf of ``tree`` along its first axis over ``devices``."""
    return jax.device_put(
        tree, NamedSharding(data_mesh(devices), PartitionSpec("data"))
    )
