"""Shape and value checks shared by the losses and the metrics (private).

Shape checks are plain Python on ``.shape``, so they run at trace time and
fire under ``jax.jit`` too. Value checks (labels in range, probabilities in
``[0, 1]``) need the numbers, so they run only on concrete arrays: an eager
call, or ``fit``/``evaluate`` checking their data before anything compiles.
Under ``jit`` they are skipped, and the docstrings of the losses say what a
bad value then does. :func:`check_targets` (public as
``fnn.losses.check_targets``) runs a loss's checks without computing it.

Dtypes: :func:`widened` makes every loss compute in :func:`working_dtype`
(float32 at least) and return the prediction's dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def concrete(x) -> np.ndarray | None:
    """``x`` as a NumPy array when its values are known now, else ``None``.

    Pass the argument as the caller gave it, before ``jnp.asarray``: inside
    a traced function that turns even a NumPy constant into a tracer.
    """
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def working_dtype(dtype) -> np.dtype:
    """The dtype a loss or a penalty computes in, for inputs of ``dtype``.

    float32 at least: float16 and bfloat16 cannot hold what a loss needs
    (``1 / n`` for a batch of more than 65504 elements is ``inf`` in
    float16, ``1 - 1e-7`` rounds to 1, a sum over a batch overflows).
    float32, float64 and complex dtypes stay as they are; integer and bool
    inputs compute in the default float dtype (float32, or float64 under
    x64), never the other way round: float targets are not truncated to ints.
    """
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.inexact):
        return jnp.promote_types(dtype, jnp.float32)
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def result_dtype(dtype) -> np.dtype:
    """The dtype a loss returns for predictions of ``dtype``: the same, if floating."""
    dtype = jnp.dtype(dtype)
    return dtype if jnp.issubdtype(dtype, jnp.inexact) else working_dtype(dtype)


def _span(values: np.ndarray) -> str:
    # !s: a float32 0.2 reads "0.2", not format()'s "0.20000000298023224".
    return f"values from {values.min()!s} to {values.max()!s}"


def check_within(name: str, what: str, x, lo: float, hi: float, hint: str = ""):
    """Raises ``ValueError`` when concrete ``x`` has a value outside ``[lo, hi]``.

    NaN passes: a NaN input gives a NaN loss, which is the right answer. It
    does not hide the other values: ``[nan, 2]`` still fails on the 2.
    """
    values = concrete(x)
    if values is None:
        return
    values = values[~np.isnan(values.astype(np.float64))]
    if values.size == 0:
        return
    if values.min() < lo or values.max() > hi:
        bounds = f"be >= {lo}" if hi == np.inf else f"lie in [{lo}, {hi}]"
        raise ValueError(f"{name}: {what} must {bounds}, got {_span(values)}{hint}")


def check_members(name: str, what: str, x, allowed: tuple, hint: str = ""):
    """Raises ``ValueError`` when concrete ``x`` holds a value not in ``allowed``."""
    values = concrete(x)
    if values is None or values.size == 0:
        return
    bad = ~np.isin(values, allowed) & ~np.isnan(values.astype(float))
    if bad.any():
        found = np.unique(values[bad])[:5].tolist()
        raise ValueError(
            f"{name}: {what} must be one of {list(allowed)}, got {found}{hint}"
        )


def batched(name: str, pred, min_ndim: int = 1):
    """``pred`` as an array with a non-empty leading batch axis."""
    pred = jnp.asarray(pred)
    if pred.ndim < max(min_ndim, 1) or pred.size == 0:
        need = (
            "a batch axis and a class axis, e.g. (N, C)"
            if min_ndim > 1
            else ("a non-empty leading batch axis")
        )
        raise ValueError(
            f"{name}: expected predictions with {need}, got shape {pred.shape}"
        )
    return pred


def same_shape(name: str, pred, target):
    """Checks that ``target`` has ``pred``'s shape; casts it to ``pred``'s dtype."""
    pred, target = batched(name, pred), jnp.asarray(target)
    if target.shape != pred.shape:
        hint = ""
        if target.size == pred.size:
            hint = f"; reshape it first, e.g. target.reshape({pred.shape})"
        raise ValueError(
            f"{name}: target shape {target.shape} does not match pred shape "
            f"{pred.shape}; losses never broadcast{hint}"
        )
    return pred, target.astype(pred.dtype)


def class_indices(name: str, labels, n: int, leading: tuple, raw=None):
    """Checks integer ``labels`` shaped ``leading`` lie in ``[0, n)`` when concrete.

    ``raw`` is the argument as the caller passed it: a NumPy constant closed
    over by a traced function is still concrete there, though
    ``jnp.asarray`` of it is not.
    """
    if labels.shape != leading:
        raise ValueError(
            f"{name}: integer labels must have shape {leading} (logits shape "
            f"{leading + (n,)} without the class axis), got {labels.shape}"
        )
    values = concrete(labels if raw is None else raw)
    if values is not None and values.size and (values.min() < 0 or values.max() >= n):
        raise ValueError(
            f"{name}: labels must lie in [0, {n}) for {n} classes, got {_span(values)}"
        )


def class_targets(name: str, logits, labels):
    """One-hot (or probability) targets shaped like ``logits``, from ``labels``.

    ``logits`` must be ``(..., C)`` with a batch axis and ``C >= 2`` classes
    (over one class, softmax is always 1 and the loss always 0). Integer
    ``labels`` are class indices shaped ``logits.shape[:-1]``; any other
    dtype is read as one-hot rows or class probabilities shaped like
    ``logits``, which must not be negative. Out-of-range indices and negative
    probabilities are caught only when ``labels`` are concrete: under ``jit``
    an out-of-range index becomes an all-zero row (zero loss, zero gradient).
    """
    raw = labels
    logits, labels = batched(name, logits, min_ndim=2), jnp.asarray(labels)
    n = logits.shape[-1]
    if n < 2:
        raise ValueError(
            f"{name}: logits of shape {logits.shape} have one class: softmax "
            "over one class is always 1, so the loss is always 0. For a binary "
            "classifier with one output use sigmoid_binary_cross_entropy."
        )
    if jnp.issubdtype(labels.dtype, jnp.integer) and labels.shape != logits.shape:
        class_indices(name, labels, n, logits.shape[:-1], raw)
        return logits, jax.nn.one_hot(labels, n, dtype=logits.dtype)
    if labels.shape != logits.shape:
        hint = ""
        if labels.shape == logits.shape[:-1]:
            hint = "; class indices must be integers, e.g. labels.astype(jnp.int32)"
        raise ValueError(
            f"{name}: labels of shape {labels.shape} fit neither logits "
            f"{logits.shape} (one-hot or probabilities) nor {logits.shape[:-1]} "
            f"(integer class indices){hint}"
        )
    check_within(name, "one-hot or probability targets", raw, 0, np.inf)
    return logits, labels.astype(logits.dtype)


def widened(fn):
    """``fn(pred, target)`` computed in :func:`working_dtype`, returned in ``pred``'s.

    Every value and gradient of :mod:`fnn.losses` goes through this: none sees
    float16 (where they returned ``inf`` or an all-zero gradient) or integer
    predictions (against which float targets were truncated). For float32
    and float64 both casts are no-ops: the compiled program is unchanged.
    """

    @functools.wraps(fn)
    def wrapped(pred, target):
        pred = jnp.asarray(pred)
        out = fn(pred.astype(working_dtype(pred.dtype)), target)
        return out.astype(result_dtype(pred.dtype))

    return wrapped


def check_targets(loss, pred_shape: tuple, target, dtype=jnp.float32) -> None:
    """Checks concrete targets against a loss and an output shape, computing nothing.

    Traces ``loss(pred, target)`` with an abstract ``pred`` of ``pred_shape``
    (``jax.eval_shape``: no compile, no arrays the size of ``pred``) and the
    concrete ``target``, so every check of the loss runs: shapes, and the
    values that ``jit`` would hide (class indices in ``[0, C)``, 0/1 targets
    in ``[0, 1]``, hinge labels -1/+1). ``fit`` and ``evaluate`` can call it
    on their whole label array before the first step compiles, where an
    out-of-range label would otherwise become an all-zero one-hot row.

    Args:
      loss: any ``loss(pred, target)``; the checks are the loss's own.
      pred_shape: the predictions' shape, batch axis included, e.g.
        ``(len(y),) + output_shape``.
      target: the concrete targets (NumPy or JAX arrays, not traced).
      dtype: the predictions' dtype.

    Raises:
      ValueError: whatever the loss raises for these targets.

    Example:
      >>> import numpy as np
      >>> from fnn import losses
      >>> labels = np.array([1, 9, 10])
      >>> losses.check_targets(losses.softmax_cross_entropy, (3, 10), labels)
      ... # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: softmax_cross_entropy: labels must lie in [0, 10) for 10 classes...
    """
    jax.eval_shape(lambda p: loss(p, target), jax.ShapeDtypeStruct(pred_shape, dtype))


def scalar_loss(where: str, loss, value):
    """``value``, the loss's output, refused (at trace time) unless a scalar.

    A per-example loss, such as optax's ``softmax_cross_entropy``, returns
    ``(N,)``: ``jax.grad`` would fail with a bare message, and weighting it
    by the batch size would be wrong, so say what to write instead.
    """
    value = jnp.asarray(value)
    if value.shape != ():
        raise ValueError(
            f"{where}: the loss {loss!r} returned shape {value.shape}, not a "
            "scalar; fnn losses are means over the batch. Wrap a per-example "
            "loss: lambda p, y: jnp.mean(loss(p, y))"
        )
    return value
