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

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class LossScaleState(NamedTuple):
    """The state of :func:`dynamic_loss_scale`: the scale and the wrapped state."""

    scale: jax.Array  # float32, shape (): what the loss was multiplied by
    good_steps: jax.Array  # int32, shape (): finite steps since the scale last grew
    inner: optax.OptState  # optax.apply_if_finite's state around the optimizer's


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
      shrinks by ``factor``, but not below 1. ``state.inner.total_notfinite``
      counts the skipped steps: if it keeps growing at scale 1, the
      gradients are broken, not overflowing.

    Powers of two keep the scaling exact in float32. Usage::

        opt = fnn.optim.dynamic_loss_scale(fnn.optim.adam(1e-3))
        step = fnn.train.make_step(model, loss, opt, compute_dtype=jnp.float16)

    Args:
      optimizer: the optimizer to guard, any ``optax.GradientTransformation``.
      initial_scale: the first scale, ``> 0`` (a power of two).
      growth_interval: finite steps in a row before the scale grows.
      factor: what the scale grows and shrinks by, ``> 1``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is
      :class:`LossScaleState`; extra arguments (``value=``) reach
      ``optimizer``.

    Raises:
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
    if not (initial_scale > 0 and factor > 1 and growth_interval >= 1):
        raise ValueError(
            "dynamic_loss_scale: needs initial_scale > 0, factor > 1 and "
            f"growth_interval >= 1; got {initial_scale}, {factor}, {growth_interval}"
        )
    guarded = optax.apply_if_finite(optimizer, max_consecutive_errors=2**31 - 1)

    def init(params):
        return LossScaleState(
            jnp.asarray(initial_scale, jnp.float32),
            jnp.zeros((), jnp.int32),
            guarded.init(params),
        )

    def update(grads, state, params=None, **extra_args):
        grads = jax.tree.map(lambda g: g / state.scale.astype(g.dtype), grads)
        updates, inner = guarded.update(grads, state.inner, params, **extra_args)
        finite = inner.last_finite
        grow = finite & (state.good_steps + 1 >= growth_interval)
        shrunk = jnp.maximum(state.scale / factor, 1.0)  # below 1 it only hides NaNs
        scale = jnp.where(
            finite, jnp.where(grow, state.scale * factor, state.scale), shrunk
        )
        good_steps = jnp.where(finite & ~grow, state.good_steps + 1, 0)
        return updates, LossScaleState(scale, good_steps.astype(jnp.int32), inner)

    return optax.GradientTransformationExtraArgs(init, update)


def loss_scale_of(opt_state) -> jax.Array | None:
    """The loss scale a :func:`dynamic_loss_scale` state holds, else ``None``.

    Args:
      opt_state: an optimizer state.

    Returns:
      The float32 scalar scale, or ``None`` when the optimizer is not
      wrapped in :func:`dynamic_loss_scale`.

    Raises:
      ValueError: the wrapper sits inside another transformation: the step
        could not find the scale to multiply the loss by, and the wrapper
        would still divide the gradients by it.
    """
    if isinstance(opt_state, LossScaleState):
        return opt_state.scale
    nested = jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, LossScaleState))
    if any(isinstance(n, LossScaleState) for n in nested):
        raise ValueError(
            "dynamic_loss_scale must be the outermost optimizer: wrap the whole "
            "chain, dynamic_loss_scale(optax.chain(...)), not a part of it"
        )
    return None
