"""The checks ``fit`` and ``evaluate`` run on the host before anything compiles.

Each takes concrete Python or NumPy values and either returns them in the
form the training loop wants or raises an error that names the argument,
the value at fault and the fix. None of them runs inside a step: the
compiled programs stay exactly what they would be without them.
:func:`sources` runs them all on ``fit``'s data and builds its training
source (arrays in memory, or a stream of batches).
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _epoch, _stream
from fnn.protocol import Layer


def count(where: str, what: str, value, *, low: int = 1) -> int:
    """An integer option (``batch_size``, ``epochs``...) as a Python ``int``.

    Args:
      where, what: the function and the argument, for the message.
      value: an integral number, not ``bool`` (``np.int64`` is fine).
      low: the smallest value allowed.

    Raises:
      TypeError: for a ``bool``, a float such as ``32.0``, or a non-number.
      ValueError: for a value below ``low``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{where}: {what} must be an int, got {value!r} ({type(value).__name__})"
        )
    if value < low:
        raise ValueError(f"{where}: {what} must be >= {low}, got {value}")
    return int(value)


def epochs(epochs_, initial_epoch) -> tuple[int, int]:
    """``(epochs, initial_epoch)`` checked: at least one epoch left to run.

    ``epochs`` is the number of the final epoch (as in Keras), not how many
    more to run: resuming after 3 epochs for 3 more is ``epochs=6,
    initial_epoch=3``.

    Raises:
      TypeError, ValueError: for non-ints, negatives, or nothing to run.
    """
    epochs_ = count("fit", "epochs", epochs_)
    initial_epoch = count("fit", "initial_epoch", initial_epoch, low=0)
    if initial_epoch >= epochs_:
        raise ValueError(
            f"fit: initial_epoch={initial_epoch} >= epochs={epochs_}, so there is "
            f"nothing to train. epochs is the number of the last epoch, not how "
            f"many to run (as in Keras): to train {epochs_} more epochs after "
            f"{initial_epoch}, pass epochs={initial_epoch + epochs_}, "
            f"initial_epoch={initial_epoch}"
        )
    return epochs_, initial_epoch


def flag(where: str, what: str, value, *, none: bool = False) -> bool | None:
    """A switch (``scan``, ``verbose``...) as a ``bool``: ``"no"`` is not True.

    The ints 0 and 1 pass as False and True (Keras' ``verbose=1`` habit);
    any other number (``verbose=2``) would mean something fnn does not do.

    Raises:
      TypeError: for anything but ``True``, ``False`` (``np.bool_``, 0 and 1
        too) and, where ``none``, ``None``.
    """
    if value is None and none:
        return None
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    if not isinstance(value, bool | np.bool_):
        allowed = "True, False or None" if none else "True or False"
        raise TypeError(f"{where}: {what} must be {allowed}, got {value!r}")
    return bool(value)


# jax.random.key takes seeds that fit in an int64.
_SEEDS = (-(2**63), 2**63)


def prng_key(key) -> jax.Array:
    """``key`` as a typed PRNG key: an int seed becomes ``jax.random.key(seed)``.

    Raises:
      TypeError: for anything that is neither a PRNG key nor an int.
      ValueError: for an int seed outside ``[-2**63, 2**63)``.
    """
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        if not _SEEDS[0] <= int(key) < _SEEDS[1]:
            raise ValueError(
                f"fit: an int seed must be in [-2**63, 2**63), got {int(key)}; "
                f"reduce it, e.g. seed % 2**63"
            )
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise TypeError(
                f"fit: key must be a single PRNG key, got an array of "
                f"{key.shape} keys; pick one, e.g. keys[0]"
            )
        return key
    if isinstance(key, jax.Array | np.ndarray) and key.dtype == np.uint32:
        if key.shape == (2,):  # a raw jax.random.PRNGKey
            return jax.random.wrap_key_data(jnp.asarray(key))
    raise TypeError(
        f"fit: key must be a PRNG key such as jax.random.key(0), or an int "
        f"seed such as 0; got {type(key).__name__} {getattr(key, 'shape', '')}".rstrip()
    )


def callable_or_none(what: str, value) -> None:
    """Refuses ``augment=True``, which would fail inside a trace (TypeError)."""
    if value is not None and not callable(value):
        raise TypeError(
            f"fit: {what} must be a function or None, got {value!r} "
            f"({type(value).__name__})"
        )


def opt_state(optimizer, params, state):
    """``state`` (default ``optimizer.init(params)``) checked by tree structure
    and leaf shapes against the optimizer's for ``params``, traced only: one
    saved from another optimizer failed in optax with a bare message, one for
    narrower layers broadcast and trained silently (ValueError)."""
    if state is None:
        return optimizer.init(params)
    expected = jax.eval_shape(optimizer.init, params)
    got, want = jax.tree.structure(state), jax.tree.structure(expected)
    if got != want:
        raise ValueError(
            f"fit: opt_state does not fit this optimizer and these params (was it "
            f"saved from another optimizer or model?): it is {got}, the optimizer's "
            f"is {want}"
        )
    paths = jax.tree_util.tree_flatten_with_path(state)[0]
    for path, b in zip(paths, jax.tree.leaves(expected), strict=True):
        if np.shape(path[1]) != b.shape:
            raise ValueError(
                f"fit: opt_state{jax.tree_util.keystr(path[0])} has shape "
                f"{np.shape(path[1])}, but this optimizer's state for these params has "
                f"{b.shape}"
            )
    return state


def _array(where: str, name: str, a, part: str):
    """``a`` as an array of numbers (a JAX array stays one), or a clear error."""
    if isinstance(a, jax.Array):
        return a
    try:
        a = np.asarray(a)
    except ValueError as e:  # NumPy refuses ragged nested lists
        raise ValueError(
            f"{where}: {name}'s {part} is not a rectangular array (rows of "
            f"different lengths?): {e}"
        ) from e
    if not (a.dtype == np.bool_ or jnp.issubdtype(a.dtype, jnp.number)):  # bfloat16
        raise TypeError(
            f"{where}: {name}'s {part} must hold numbers, got dtype {a.dtype}; "
            f"encode labels as class indices, e.g. with np.unique(y, "
            f"return_inverse=True)"
        )
    return a


def arrays(where: str, data, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``data = (x, y)`` as two arrays of equal, non-zero length.

    Python lists and NumPy arrays become arrays (NumPy stays NumPy, JAX
    stays JAX: nothing moves to the device here).

    Raises:
      TypeError: when ``data`` is not a pair, or holds no numbers (strings,
        objects).
      ValueError: for mismatched lengths, scalars, ragged lists or no
        examples.
    """
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise TypeError(
            f"{where}: {name} must be a pair (x, y) of arrays, got "
            f"{type(data).__name__}"
        )
    x, y = (_array(where, name, a, part) for a, part in zip(data, "xy"))
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(
            f"{where}: {name} needs a leading example axis; got x of shape "
            f"{x.shape} and y of shape {y.shape}"
        )
    if len(x) != len(y):
        raise ValueError(f"{where}: x has {len(x)} examples but y has {len(y)}")
    if len(x) == 0:
        raise ValueError(f"{where}: {name} has no examples (x has shape {x.shape})")
    return x, y


def output_shape(model: Layer, params, state, x) -> tuple[int, ...]:
    """The model's prediction shape for one example, traced (no compute)."""
    one = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    pred = jax.eval_shape(lambda p, s, xb: model.apply(p, s, xb)[0], params, state, one)
    return tuple(pred.shape[1:])


def loss_traces(model: Layer, loss, params, state, x, y) -> None:
    """Traces ``loss`` on the model's predictions for ``x`` (no compute).

    ``fit`` evaluates its validation data only after the first epoch; a
    target shape the loss refuses (``(N, 1)`` class indices) is refused by
    this trace before training, not an epoch later.
    """

    def like(a):
        return jax.ShapeDtypeStruct(a.shape, jax.dtypes.canonicalize_dtype(a.dtype))

    def value(p, s, xb, yb):
        return loss(model.apply(p, s, xb)[0], yb)

    jax.eval_shape(value, params, state, like(x), like(y))


def targets(where: str, model: Layer, loss, pred_shape, y) -> None:
    """Checks the target values against the model's outputs and the loss.

    Under ``jit`` an out-of-range class label becomes an all-zero one-hot
    row: loss 0, gradient 0, training "succeeds". ``fit`` and ``evaluate``
    hold the targets concretely, so they check them here, once, on the host,
    before compiling:

    - integer class indices (shaped like the prediction without its class
      axis, at least 2 outputs, no binary decision rule): in ``[0, C)``;
    - targets of a loss on logits or probabilities
      (``sigmoid_binary_cross_entropy``, ``binary_cross_entropy``): in
      ``[0, 1]``; of ``hinge``: -1 or +1.

    Args:
      where: the function, for the message.
      model, loss: the model (for its name) and the loss.
      pred_shape: the model's per-example output shape.
      y: the concrete targets, batch axis first.

    Raises:
      ValueError: naming the values found and the ones allowed.
    """
    rule = getattr(loss, "decision", None)
    if rule in ("logit", "probability"):
        _within(where, loss, y, 0, 1)
    elif rule == "sign":
        if not np.all(np.isin(np.asarray(y), (-1, 1))):
            raise ValueError(
                f"{where}: {loss!r} needs labels -1 or +1, got values "
                f"{np.unique(np.asarray(y))[:5].tolist()}; map 0/1 labels with "
                f"2 * y - 1"
            )
    elif jnp.issubdtype(y.dtype, jnp.integer) and len(pred_shape) >= 1:
        classes = pred_shape[-1]
        if classes >= 2 and tuple(y.shape[1:]) == tuple(pred_shape[:-1]):
            low, high = int(np.min(y)), int(np.max(y))
            if low < 0 or high >= classes:
                raise ValueError(
                    f"{where}: labels must be class indices in [0, {classes}) for "
                    f"a model with {classes} outputs ({model.name}), got values "
                    f"from {low} to {high}; out-of-range labels would train as "
                    f"all-zero targets (loss 0). Relabel them, or give the last "
                    f"layer more outputs."
                )


def _within(where, loss, y, low, high):
    # NaN passes (its loss is NaN, and fit stops on it), but must not hide
    # the other values: NumPy's min and max of [nan, 2] are both nan.
    values = np.asarray(y)
    values = values[~np.isnan(values.astype(np.float64))]
    if values.size and (values.min() < low or values.max() > high):
        raise ValueError(
            f"{where}: {loss!r} needs targets in [{low}, {high}], got values "
            f"from {values.min()} to {values.max()}"
        )


def binary_column(loss, pred_shape, y):
    """Labels ``(N,)`` as ``(N, 1)`` for a one-output model under a binary loss.

    ``sigmoid_binary_cross_entropy``, ``binary_cross_entropy`` and ``hinge``
    take targets shaped like the prediction, ``(N, 1)`` here; the labels of
    a binary data set usually come as ``(N,)``. The losses themselves never
    broadcast; ``fit`` and ``evaluate`` reshape this one unambiguous case.
    """
    rule = getattr(loss, "decision", None)
    if rule in ("logit", "probability", "sign") and tuple(pred_shape) == (1,):
        if y.ndim == 1:
            return y[:, None]
    return y


def batch_checker(model: Layer, loss, params, state):
    """``check(x, y) -> y``: the checks of ``fit`` for one batch of a stream.

    The prediction shape is traced once per batch shape, not per batch; the
    checks run on the host while the device runs earlier steps.
    """
    shapes = {}

    def check(x, y):
        x, y = arrays("fit", (x, y), "a train_data batch")
        kind = (x.shape[1:], x.dtype)
        if kind not in shapes:
            shapes[kind] = output_shape(model, params, state, x)
        y = binary_column(loss, shapes[kind], y)
        targets("fit", model, loss, shapes[kind], y)
        return y

    return check


def _is_batch(item) -> bool:
    """An ``(x, y)`` batch of a stream: a tuple, or a list of two arrays."""
    if isinstance(item, tuple):
        return True
    return (
        isinstance(item, list)
        and len(item) == 2
        and all(isinstance(a, np.ndarray | jax.Array) for a in item)
    )


def is_arrays(data) -> bool:
    """``(x, y)`` arrays, rather than a stream of ``(x, y)`` batches.

    A two-item list whose items are both batches (``[(x0, y0), (x1, y1)]``,
    or ``[[x0, y0], [x1, y1]]`` with arrays inside) is a stream of two
    batches; ``x`` given as a Python list of rows holds numbers or lists.
    """
    return (
        isinstance(data, tuple | list)
        and len(data) == 2
        and not all(_is_batch(a) for a in data)
        and not any(isinstance(a, tuple) for a in data)
    )


def _not_a_stream(validation_data) -> None:
    """Refuses validation batches: ``[(x0, y0), (x1, y1)]`` would otherwise
    read as ``x = [x0, y0], y = [x1, y1]`` when the shapes allow it (an
    autoencoder's, ``y0`` shaped like ``x0``), and evaluate the wrong data."""
    if isinstance(validation_data, tuple | list) and len(validation_data) == 2:
        if not is_arrays(validation_data):
            raise TypeError(
                "fit: validation_data must be (x, y) arrays, not (x, y) batches; "
                "concatenate them first, e.g. (np.concatenate(xs), "
                "np.concatenate(ys))"
            )


def sources(model, loss, params, state, train_data, validation_data, key,
             batch_size, step, scan, augment):  # fmt: skip
    """``fit``'s checked data: the training source (``fnn._epoch.InMemory``
    or ``fnn._stream.Stream``) and the validation arrays with their batch
    size and shape of predictions (``None`` without validation data).

    Raises:
      TypeError, ValueError: for data ``fit`` cannot train on, before
        anything compiles.
    """
    validation = None
    if validation_data is not None:
        _not_a_stream(validation_data)
        vx, vy = arrays("fit", validation_data, "validation_data")
        pred_shape = output_shape(model, params, state, vx)
        vy = binary_column(loss, pred_shape, vy)
        targets("fit", model, loss, pred_shape, vy)
        loss_traces(model, loss, params, state, vx, vy)
        validation = (jnp.asarray(vx), jnp.asarray(vy), 1024, pred_shape)
    if not is_arrays(train_data):
        if not (callable(train_data) or hasattr(train_data, "__iter__")):
            raise TypeError(
                f"fit: train_data must be (x, y) arrays, an iterable of (x, y) "
                f"batches or a function epoch -> iterable; got "
                f"{type(train_data).__name__}"
            )
        check = batch_checker(model, loss, params, state)
        source = _stream.Stream(train_data, key, step, augment, check, scan)
        return source, validation
    x, y = arrays("fit", train_data, "train_data")
    batch_size = count("fit", "batch_size", batch_size)
    if batch_size > len(x):
        raise ValueError(
            f"fit: batch_size must be in [1, {len(x)}] (the number of examples), "
            f"got {batch_size}"
        )
    pred_shape = output_shape(model, params, state, x)
    y = binary_column(loss, pred_shape, y)
    targets("fit", model, loss, pred_shape, y)
    source = _epoch.InMemory(jnp.asarray(x), jnp.asarray(y), key, batch_size, step,
                             scan, augment)  # fmt: skip
    return source, validation
