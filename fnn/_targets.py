"""Shape and value checks shared by the losses and the metrics (private).

Shape checks are plain Python on ``.shape``, so they run at trace time and
fire under ``jax.jit`` too. Value checks (labels in range, probabilities in
``[0, 1]``) need the numbers, so they run only on concrete arrays: an eager
call, or ``fit``/``evaluate`` checking their data before anything compiles.
Under ``jit`` they are skipped, and the docstrings of the losses say what a
bad value then does.
"""

from __future__ import annotations

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


def _span(values: np.ndarray) -> str:
    return f"values from {values.min()} to {values.max()}"


def check_within(name: str, what: str, x, lo: float, hi: float, hint: str = ""):
    """Raises ``ValueError`` when concrete ``x`` has a value outside ``[lo, hi]``.

    NaN passes: a NaN input gives a NaN loss, which is the right answer.
    """
    values = concrete(x)
    if values is None or values.size == 0:
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
