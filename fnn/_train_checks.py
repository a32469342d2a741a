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


def prng_key(key) -> jax.Array:
    """``key`` as a typed PRNG key: an int seed becomes ``jax.random.key(seed)``.

    Raises:
      TypeError: for anything that is neither a PRNG key nor an int.
    """
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
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


def arrays(where: str, data, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``data = (x, y)`` as two arrays of equal, non-zero length.

    Python lists and NumPy arrays become arrays (NumPy stays NumPy, JAX
    stays JAX: nothing moves to the device here).

    Raises:
      TypeError: when ``data`` is not a pair.
      ValueError: for mismatched lengths, scalars or no examples.
    """
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise TypeError(
            f"{where}: {name} must be a pair (x, y) of arrays, got "
            f"{type(data).__name__}"
        )
    x, y = (a if isinstance(a, jax.Array) else np.asarray(a) for a in data)
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
        vx, vy = arrays("fit", validation_data, "validation_data")
        pred_shape = output_shape(model, params, state, vx)
        vy = binary_column(loss, pred_shape, vy)
        targets("fit", model, loss, pred_shape, vy)
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
