"""Data parallelism with ``jax.sharding``: the same step, over many devices.

``make_step`` builds the step of :func:`fnn.train.make_step` with the batch
split over a one-axis device mesh named ``"data"`` and the parameters, model
state and optimizer state replicated. Nothing in the model changes: XLA's
partitioner sees a mean over a sharded batch axis (the loss, batch-norm
statistics, ``dw = x^T dy``) and inserts the cross-device all-reduce itself,
so batch-norm statistics are global across shards and the result equals one
device's, to float round-off.

Several processes (hosts, or OS processes on one machine): every process
runs the same program.

1. Launch: start one Python process per host (or per group of devices)
   and, before any other JAX call, join them::

       jax.distributed.initialize(coordinator_address="10.0.0.1:1234",
                                  num_processes=2, process_id=i)

   (on one machine, ``"127.0.0.1:<free port>"``; on CPUs, first
   ``jax.config.update("jax_cpu_collectives_implementation", "gloo")`` so
   that the all-reduces run across processes). ``jax.devices()`` then
   lists every process's devices, and ``make_step`` builds its mesh over
   all of them.
2. Data: each process loads only its own slice of every global batch (the
   examples ``[i * B // n, (i + 1) * B // n)`` of batch ``B`` for process
   ``i`` of ``n``, the same batch order everywhere) and passes that slice
   to the step, which assembles the global batch with
   ``jax.make_array_from_process_local_data``. Parameters, state and
   optimizer state start equal in every process (same seed) and stay
   replicated: every process holds the same values after each step.
3. Checkpoints: since the parameters are replicated, process 0 alone
   saves (``if jax.process_index() == 0: checkpoint.save(path, tree)``)
   to storage that every process can read; then all processes wait for it
   (e.g. ``jax.experimental.multihost_utils.sync_global_devices("saved")``)
   before going on.
4. Resuming: every process loads the same checkpoint and continues with
   the same step count and batch order.

``tests/test_parallel.py`` runs two processes on localhost, each feeding
half of the global batch, and checks parameters, batch-norm statistics and
losses against one process on the whole batch.
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
    """A one-axis mesh ``("data",)`` over ``devices``.

    Args:
      devices: the devices; default ``jax.devices()``, every process's.

    Returns:
      A ``jax.sharding.Mesh`` with the one axis ``"data"``.

    Raises:
      ValueError: for an empty list of devices.
    """
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
    else replicated. ``params``, ``state`` and ``opt_state`` are donated.
    With several processes, each passes its own slice of the global batch
    (see the module docstring).

    Args:
      model, loss, optimizer: as for :func:`fnn.train.make_step`.
      devices: the devices to split the batch over; default all of them,
        every process's.
      method: ``"autodiff"`` or ``"manual"``, as for
        :func:`fnn.train.make_step`.
      compute_dtype: the mixed precision of :func:`fnn.train.make_step`.

    Returns:
      The step function; ``step.lower`` lowers it for inspection.

    Raises:
      ValueError: at a call, when the (per-process) batch does not divide
        over the devices.
    """
    mesh = data_mesh(devices)
    replicated = NamedSharding(mesh, PartitionSpec())
    split = NamedSharding(mesh, PartitionSpec("data"))
    jitted = jax.jit(
        train._step_fn(model, loss, optimizer, method, compute_dtype),
        in_shardings=(replicated, replicated, replicated, split, split, replicated),
        out_shardings=replicated,
        donate_argnums=(0, 1, 2),
    )
    multi_host = jax.process_count() > 1
    # Each process passes its own slice, which must split over its devices.
    here = jax.process_index()
    n = sum(d.process_index == here for d in mesh.devices.flat)
    devices_named = f"this process's {n} devices" if multi_host else f"the {n} devices"

    def step(params, state, opt_state, x, y, key):
        # Checked here, before jit places the batch: an indivisible batch
        # would otherwise surface as a sharding error from inside JAX.
        for name, a in (("x", x), ("y", y)):
            if np.shape(a)[0] % n:
                raise ValueError(
                    f"fnn.parallel.make_step: the batch of {name} has "
                    f"{np.shape(a)[0]} examples, not divisible by {devices_named}"
                )
        if multi_host:  # each host holds its own slice of the global batch
            x = jax.make_array_from_process_local_data(split, x)
            y = jax.make_array_from_process_local_data(split, y)
        return jitted(params, state, opt_state, x, y, key)

    step.lower = jitted.lower  # for inspecting the compiled program
    return step
