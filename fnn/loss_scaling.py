"""Dynamic loss scaling, for training with float16 compute.

float16 flushes magnitudes below ~6e-8 to zero, and backpropagated
gradients often live there. Loss scaling multiplies the loss by a large
power of two before the backward pass, so the cotangents stay in range, and
divides the gradients by it afterwards. The scale lives in the optimizer
state (:class:`LossScaleState`), so it is saved, restored and donated with
it; :func:`fnn.optim.gradient_step` is the one place that reads it and
hands it to the gradient function. Re-exported by :mod:`fnn.optim`.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class LossScaleState(NamedTuple):
    """The state of :func:`dynamic_loss_scale`: the scale and the wrapped state."""

    scale: jax.Array  # float32, shape (): what the loss was multiplied by
    good_steps: jax.Array  # int32, shape (): finite steps since the scale last grew
    inner: optax.OptState  # optax.apply_if_finite's state around the optimizer's


#: The largest scale: its reciprocal, 2**-126, is float32's smallest normal
#: number. At 2**127 XLA on CPU returned ``g / scale = 0`` for arrays (the
#: subnormal reciprocal flushed to zero), and one more doubling reaches inf,
#: where every step would overflow and be skipped, for ever.
MAX_SCALE = 2.0**126


def _scalar(name: str, value, kinds: str, what: str):
    """``value`` as a Python number: a number or a 0-d array of dtype ``kinds``."""
    if isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) == 0:
        if np.dtype(value.dtype).kind in kinds:
            return value.item()
    elif not isinstance(value, bool) and isinstance(
        value, numbers.Integral if kinds == "iu" else numbers.Real
    ):
        return value
    raise TypeError(f"dynamic_loss_scale: {name} must be {what}, got {value!r}")


def _check_options(initial_scale, growth_interval, factor):
    """The options as Python numbers, else a clear error.

    Returns:
      ``(initial_scale, growth_interval, factor)``: float, int, float.

    Raises:
      TypeError: a non-number (a bool, a float ``growth_interval``...).
      ValueError: a value :func:`dynamic_loss_scale` cannot use.
    """
    initial_scale = float(_scalar("initial_scale", initial_scale, "iuf", "a number"))
    factor = float(_scalar("factor", factor, "iuf", "a number"))
    growth_interval = int(_scalar("growth_interval", growth_interval, "iu", "an int"))
    if not (
        0 < initial_scale <= MAX_SCALE
        and 1 < factor < math.inf
        and 1 <= growth_interval < 2**31
    ):
        raise ValueError(
            "dynamic_loss_scale: needs 0 < initial_scale <= 2**126, finite "
            "factor > 1 and 1 <= growth_interval < 2**31; got "
            f"{initial_scale}, {factor}, {growth_interval}"
        )
    return initial_scale, growth_interval, factor


def _unscaled(grads, scale: jax.Array):
    """``grads / scale``, divided in float32 (or wider) whatever their dtype.

    In float16 the scale itself overflows from 2**16 on (``g / inf = 0``: a
    silent zero step), and in bfloat16 a scale that is not a power of two
    rounds; the quotient is exact in float32 and rounds once, to ``g``'s dtype.
    """

    def divide(g):
        wide = jnp.promote_types(g.dtype, jnp.float32)
        return (g.astype(wide) / scale.astype(wide)).astype(g.dtype)

    return jax.tree.map(divide, grads)


def dynamic_loss_scale(
    optimizer: optax.GradientTransformation,
    initial_scale: float = 2.0**15,
    growth_interval: int = 2000,
    factor: float = 2.0,
) -> optax.GradientTransformation:
    """Dynamic loss scaling around ``optimizer``, for float16 compute.

    float16 flushes magnitudes below ~6e-8 to zero, and backpropagated
    gradients often live there. With this wrapper as the *outermost*
    optimizer, :func:`fnn.optim.gradient_step` (which ``fnn.train.make_step``, ``fit``
    and ``fnn.parallel.make_step`` run) multiplies the loss by ``scale``
    before the backward pass; ``update`` divides the gradients by it in
    float32, then:

    - all finite: the wrapped optimizer's update; after ``growth_interval``
      finite steps in a row the scale grows by ``factor``;
    - any inf or NaN (the scale was too large): no update, the wrapped
      optimizer's state unchanged (``optax.apply_if_finite``), the scale
      shrinks by ``factor``, but not below 1 (nor below ``initial_scale``
      when that is smaller). ``state.inner.total_notfinite``
      counts the skipped steps: if it keeps growing at scale 1, the
      gradients are broken, not overflowing.

    The scale grows no further than :data:`MAX_SCALE` (``2**126``), so it
    stays finite however long the run. Powers of two keep the scaling exact
    in float32. Usage::

        opt = fnn.optim.dynamic_loss_scale(fnn.optim.adam(1e-3))
        step = fnn.train.make_step(model, loss, opt, compute_dtype=jnp.float16)

    Args:
      optimizer: the optimizer to guard, any ``optax.GradientTransformation``.
      initial_scale: the first scale, in ``(0, 2**126]`` (a power of two).
      growth_interval: finite steps in a row before the scale grows, an int
        in ``[1, 2**31)``.
      factor: what the scale grows and shrinks by, finite and ``> 1``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is
      :class:`LossScaleState`; extra arguments (``value=``) reach
      ``optimizer``.

    Raises:
      TypeError: an option that is not a number (``growth_interval``: an int).
      ValueError: an option out of its range.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from fnn.loss_scaling import dynamic_loss_scale, loss_scale_of
      >>> opt = dynamic_loss_scale(optax.sgd(0.1), initial_scale=8.0)
      >>> params = {"w": jnp.ones(2)}
      >>> state = opt.init(params)
      >>> overflow = {"w": jnp.array([jnp.inf, 0.0])}  # scaled grads overflowed
      >>> updates, state = opt.update(overflow, state, params)
      >>> updates["w"].tolist(), float(loss_scale_of(state))  # skipped, halved
      ([0.0, 0.0], 4.0)
      >>> updates, state = opt.update({"w": jnp.array([8.0, 16.0])}, state, params)
      >>> [round(u, 4) for u in updates["w"].tolist()]  # -0.1 * grads / 4
      [-0.2, -0.4]
    """
    initial_scale, growth_interval, factor = _check_options(
        initial_scale, growth_interval, factor
    )
    floor = min(1.0, initial_scale)  # below 1 it only hides NaNs
    guarded = optax.apply_if_finite(optimizer, max_consecutive_errors=2**31 - 1)

    def init(params):
        return LossScaleState(
            jnp.asarray(initial_scale, jnp.float32),
            jnp.zeros((), jnp.int32),
            guarded.init(params),
        )

    def update(grads, state, params=None, **extra_args):
        grads = _unscaled(grads, state.scale)
        updates, inner = guarded.update(grads, state.inner, params, **extra_args)
        finite = inner.last_finite
        grow = finite & (state.good_steps + 1 >= growth_interval)
        grown = jnp.minimum(state.scale * factor, MAX_SCALE)
        shrunk = jnp.maximum(state.scale / factor, floor)
        scale = jnp.where(finite, jnp.where(grow, grown, state.scale), shrunk)
        good_steps = jnp.where(finite & ~grow, state.good_steps + 1, 0)
        return updates, LossScaleState(scale, good_steps.astype(jnp.int32), inner)

    return optax.GradientTransformationExtraArgs(init, update)


def _holds_a_scale(tree) -> bool:
    """Whether a :class:`LossScaleState` sits anywhere in ``tree``."""
    nodes = jax.tree.leaves(tree, is_leaf=lambda n: isinstance(n, LossScaleState))
    return any(isinstance(n, LossScaleState) for n in nodes)


def loss_scale_of(opt_state) -> jax.Array | None:
    """The loss scale a :func:`dynamic_loss_scale` state holds, else ``None``.

    Args:
      opt_state: an optimizer state.

    Returns:
      The float32 scalar scale, or ``None`` when the optimizer is not
      wrapped in :func:`dynamic_loss_scale`.

    Raises:
      ValueError: a wrapper inside another transformation, or inside a
        second wrapper: the step multiplies the loss by one scale only (the
        outermost), and each inner wrapper would still divide the gradients
        by its own, 2**15 times too small, silently.
    """
    if isinstance(opt_state, LossScaleState):
        if _holds_a_scale(opt_state.inner):
            raise ValueError(
                "dynamic_loss_scale wraps another dynamic_loss_scale: wrap the "
                "optimizer once"
            )
        return opt_state.scale
    if _holds_a_scale(opt_state):
        raise ValueError(
            "dynamic_loss_scale must be the outermost optimizer: wrap the whole "
            "chain, dynamic_loss_scale(optax.chain(...)), not a part of it"
        )
    return None
