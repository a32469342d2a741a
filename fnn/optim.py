"""Optimisers as ``optax.GradientTransformation`` s, the update rules written out.

Each optimiser is a thin composition (as in optax's ``alias.py``): a
transformation that turns gradients into a direction, then
``optax.scale_by_learning_rate``, which multiplies by ``-learning_rate`` and
accepts a float or an optax schedule ``step -> learning_rate``. Because they
are plain optax transformations, anything optax offers composes with them::

    optax.chain(optax.clip_by_global_norm(1.0), fnn.optim.adam(1e-3))

and any optax optimiser works wherever an fnn one does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

ScalarOrSchedule = float | jax.Array | Callable[[jax.Array], jax.Array]


def sgd(learning_rate: ScalarOrSchedule) -> optax.GradientTransformation:
    """Plain gradient descent: ``w <- w - lr * g``."""
    return optax.scale_by_learning_rate(learning_rate)


class MomentumState(NamedTuple):
    velocity: optax.Updates  # shaped like params: the running sum of gradients


def scale_by_momentum(beta: float = 0.9, nesterov: bool = False):
    """``v <- beta * v + g``; the direction is ``v``, or ``g + beta * v``
    with Nesterov's look-ahead."""

    def init(params):
        return MomentumState(jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        velocity = jax.tree.map(lambda v, g: beta * v + g, state.velocity, grads)
        if nesterov:
            direction = jax.tree.map(lambda v, g: beta * v + g, velocity, grads)
        else:
            direction = velocity
        return direction, MomentumState(velocity)

    return optax.GradientTransformation(init, update)


def momentum(
    learning_rate: ScalarOrSchedule, beta: float = 0.9, nesterov: bool = False
) -> optax.GradientTransformation:
    """Gradient descent with momentum: ``v <- beta v + g``, ``w <- w - lr v``.

    Matches ``optax.sgd(learning_rate, momentum=beta, nesterov=nesterov)``.
    """
    return optax.chain(
        scale_by_momentum(beta, nesterov), optax.scale_by_learning_rate(learning_rate)
    )


class AdamState(NamedTuple):
    count: jax.Array  # shape=(), dtype=jnp.int32: steps taken
    mu: optax.Updates  # shaped like params: first moment, EMA of g
    nu: optax.Updates  # shaped like params: second moment, EMA of g**2


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """Adam's direction with bias-corrected moments::

    m <- b1 m + (1 - b1) g          m_hat = m / (1 - b1**t)
    v <- b2 v + (1 - b2) g**2       v_hat = v / (1 - b2**t)
    direction = m_hat / (sqrt(v_hat) + eps)
    """

    def init(params):
        # Two separate trees: one shared tree could not be donated twice.
        mu = jax.tree.map(jnp.zeros_like, params)
        nu = jax.tree.map(jnp.zeros_like, params)
        return AdamState(jnp.zeros((), jnp.int32), mu, nu)

    def update(grads, state, params=None):
        count = optax.safe_increment(state.count)
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
        t = count.astype(jnp.float32)
        mu_correction, nu_correction = 1 - b1**t, 1 - b2**t
        direction = jax.tree.map(
            lambda m, v: (m / mu_correction) / (jnp.sqrt(v / nu_correction) + eps),
            mu,
            nu,
        )
        return direction, AdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def adam(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """Adam (Kingma & Ba, 2015): ``w <- w - lr * m_hat / (sqrt(v_hat) + eps)``.

    Matches ``optax.adam`` with the same arguments.
    """
    return optax.chain(
        scale_by_adam(b1, b2, eps), optax.scale_by_learning_rate(learning_rate)
    )


class LossScaleState(NamedTuple):
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
    optimizer, :func:`fnn.train.make_step` (and ``fit``, and
    ``fnn.parallel.make_step``) multiply the loss by ``scale`` before the
    backward pass; ``update`` divides the gradients by it in float32, then:

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

    def update(grads, state, params=None):
        grads = jax.tree.map(lambda g: g / state.scale.astype(g.dtype), grads)
        updates, inner = guarded.update(grads, state.inner, params)
        finite = inner.last_finite
        grow = finite & (state.good_steps + 1 >= growth_interval)
        shrunk = jnp.maximum(state.scale / factor, 1.0)  # below 1 it only hides NaNs
        scale = jnp.where(
            finite, jnp.where(grow, state.scale * factor, state.scale), shrunk
        )
        good_steps = jnp.where(finite & ~grow, state.good_steps + 1, 0)
        return updates, LossScaleState(scale, good_steps.astype(jnp.int32), inner)

    return optax.GradientTransformation(init, update)


def loss_scale_of(opt_state) -> jax.Array | None:
    """The loss scale a :func:`dynamic_loss_scale` state holds, else ``None``.

    Raises when the wrapper sits inside another transformation: the step
    could not find the scale to multiply the loss by, and the wrapper would
    still divide the gradients by it.
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
