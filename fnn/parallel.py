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
3. Checkpoints: the parameters, state and optimizer state are replicated,
   so every process holds all of them and process 0 alone saves, from its
   own copy, with no transfer between processes; the others wait for it::

       if jax.process_index() == 0:
           checkpoint.save(path, (params, state, opt_state, step_count))
       multihost_utils.sync_global_devices("saved")  # jax.experimental

   ``path`` must be on storage every process can read. (``checkpoint.save``
   refuses an array split across processes, which no process holds whole.)
4. Resuming: every process builds the same model, then loads the same
   checkpoint straight into the step's sharding, each device receiving its
   copy, and continues with the same step count and batch order::

       like = jax.tree.map(
           lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=step.replicated),
           (params, state, opt_state))
       params, state, opt_state, step_count = checkpoint.load(path, (*like, 0))

   The run then goes on exactly as if it had not stopped, bit for bit.

``tests/test_parallel.py`` runs two processes on localhost, each feeding
half of the global batch, and checks parameters, batch-norm statistics and
losses against one process on the whole batch; then both stop, process 0
checkpoints, both load and finish, and the results equal the uninterrupted
run's bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fnn import _epoch, losses, optim, train
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
    regularizer=None,
) -> Callable:
    """A jitted data-parallel training step.

    Same signature and results as :func:`fnn.train.make_step`:
    ``step(params, state, opt_state, x, y, key) -> (params, state, opt_state,
    loss)``, with ``x`` and ``y`` split along their first axis over
    ``devices`` (whose number must divide the batch size) and everything
    else replicated. ``params``, ``state`` and ``opt_state`` are donated.
    With several processes, each passes its own slice of the global batch,
    all slices of one size (see the module docstring).

    Args:
      model, loss, optimizer: as for :func:`fnn.train.make_step`.
      devices: the devices to split the batch over; default all of them,
        every process's.
      method: ``"autodiff"`` or ``"manual"``, as for
        :func:`fnn.train.make_step`.
      compute_dtype: the mixed precision of :func:`fnn.train.make_step`.
      regularizer: added to the loss, as for :func:`fnn.train.make_step`
        (a function of the replicated parameters: counted once, not once
        per device).

    Returns:
      The step function; ``step.lower`` lowers it for inspection;
      ``step.mesh`` is its mesh, ``step.replicated`` and ``step.split`` the
      shardings it keeps the training state in and splits the batch by
      (e.g. ``jax.device_put(params, step.replicated)``, or a
      ``checkpoint.load`` ``like`` with that sharding).

    Raises:
      ValueError: at a call, before anything runs, for an array of ``x`` or
        ``y`` without a batch axis, batches of different sizes, an empty
        batch, or a (per-process) batch that does not divide over the
        devices; or for an argument already placed over several devices
        otherwise than the step wants (named by its key path).
      TypeError: at a call, for a ``key`` that is neither ``None`` nor one
        PRNG key; when built, for a loss or optimizer that
        :func:`fnn.train.make_step` refuses.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from fnn import losses, parallel
      >>> from fnn.dense import Dense
      >>> model, opt = Dense(1), optax.sgd(0.1)
      >>> _, params, state = model.init(jax.random.key(0), (3,))
      >>> step = parallel.make_step(model, losses.mse, opt)
      >>> n = len(jax.devices())  # the batch size must be a multiple of n
      >>> x, y = jnp.ones((2 * n, 3)), jnp.zeros((2 * n, 1))
      >>> params, state, opt_state, loss = step(
      ...     params, state, opt.init(params), x, y, None
      ... )
      >>> step.mesh.axis_names, loss.shape, params["w"].sharding.is_fully_replicated
      (('data',), (), True)
    """
    losses.check_loss(_WHERE, loss)
    optim.check_optimizer(_WHERE, optimizer)
    mesh = data_mesh(devices)
    replicated = NamedSharding(mesh, PartitionSpec())
    split = NamedSharding(mesh, PartitionSpec("data"))
    # DonatingStep copies opt_state arrays that are params' own (prodigy's
    # state holds them): donating one buffer twice crashed the process here.
    jitted = _epoch.DonatingStep(
        jax.jit(
            train._step_fn(model, loss, optimizer, method, compute_dtype, regularizer),
            in_shardings=(replicated, replicated, replicated, split, split, replicated),
            out_shardings=replicated,
            donate_argnums=(0, 1, 2),
        )
    )
    multi_host = jax.process_count() > 1
    # Each process passes its own slice, which must split over its devices.
    here = jax.process_index()
    n = sum(d.process_index == here for d in mesh.devices.flat)
    devices_named = f"this process's {n} devices" if multi_host else f"the {n} devices"

    def step(params, state, opt_state, x, y, key):
        # Checked here, before jit places the batch: an indivisible batch
        # would otherwise surface as a sharding error from inside JAX.
        _check_batch(x, y, n, devices_named)
        _check_key(key)
        if multi_host:  # each host holds its own slice of the global batch
            x, y = jax.tree.map(
                lambda a: jax.make_array_from_process_local_data(split, a), (x, y)
            )
        args = (params, state, opt_state, x, y)
        try:
            return jitted(*args, key)
        except ValueError as e:
            if "sharding" in str(e).lower():
                _explain_placement(args, replicated, split, e)
            raise

    step.lower = jitted.lower  # for inspecting the compiled program
    step.mesh, step.replicated, step.split = mesh, replicated, split
    return step


_NAMES = ("params", "state", "opt_state", "x", "y")
_WHERE = "fnn.parallel.make_step"


def _check_batch(x, y, n: int, devices_named: str) -> None:
    """Raises ValueError unless every array of ``x`` and ``y`` has the same
    non-zero number of examples (first axis), divisible by ``n``."""
    sizes = {}
    for name, tree in (("x", x), ("y", y)):
        for path, a in jax.tree_util.tree_flatten_with_path(tree)[0]:
            name_at = name + jax.tree_util.keystr(path)
            shape = np.shape(a)
            if not shape:
                raise ValueError(
                    f"{_WHERE}: {name_at} has shape (), no batch axis; the step "
                    "takes a batch of examples along the first axis"
                )
            sizes.setdefault(shape[0], name_at)
    if len(sizes) > 1:
        (a, name_a), (b, name_b) = list(sizes.items())[:2]
        raise ValueError(
            f"{_WHERE}: {name_a} has {a} examples but {name_b} has {b}; every "
            "array of x and y needs the same batch size (first axis)"
        )
    for size, name in sizes.items():
        if size == 0:
            raise ValueError(f"{_WHERE}: the batch of {name} is empty (0 examples)")
        if size % n:
            raise ValueError(
                f"{_WHERE}: the batch of {name} has {size} examples, not "
                f"divisible by {devices_named}"
            )


def _check_key(key) -> None:
    """Raises TypeError unless ``key`` is None or one PRNG key."""
    dtype, shape = getattr(key, "dtype", None), np.shape(key) if key is not None else ()
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype == np.uint32 and shape == (2,)
    if key is None or (typed and shape == ()) or raw:
        return
    got = f"shape {shape} of dtype {dtype}" if dtype is not None else repr(key)
    raise TypeError(
        f"{_WHERE}: key must be one PRNG key, jax.random.key(seed) (a fresh one "
        f"each step), or None for a model without randomness; got {got}"
    )


def _explain_placement(args, replicated, split, error) -> None:
    """Raises a ValueError naming the first leaf of ``args`` that is placed
    over several devices otherwise than the step wants; returns if none is."""
    for name, tree in zip(_NAMES, args, strict=True):
        batch = name in ("x", "y")
        want = split if batch else replicated
        for path, a in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if not isinstance(a, jax.Array) or len(a.sharding.device_set) < 2:
                continue  # one device: the step moves it itself
            if not a.sharding.is_equivalent_to(want, a.ndim):
                how = "split over" if batch else "replicated on"
                attr = "split" if batch else "replicated"
                raise ValueError(
                    f"{_WHERE}: {name}{jax.tree_util.keystr(path)} is placed "
                    f"with {a.sharding}, but the step wants it {how} the "
                    f"devices of its mesh: {want}. Move it first, e.g. "
                    f"{name} = jax.device_put({name}, step.{attr})"
                ) from error
