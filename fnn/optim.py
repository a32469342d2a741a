"""Optimisers as ``optax.GradientTransformation`` s, the update rules written out.

Each optimiser is a thin composition (as in optax's ``alias.py``): a
transformation that turns gradients into a direction, then
``optax.scale_by_learning_rate``, which multiplies by ``-learning_rate`` and
accepts a float or an optax schedule ``step -> learning_rate``. Because they
are plain optax transformations, anything optax offers composes with them::

    optax.chain(optax.clip_by_global_norm(1.0), fnn.optim.adam(1e-3))

and any optax optimiser works wherever an fnn one does.

Also here: :func:`gradient_step`, the one function that turns a gradient
function and an optimizer into a training step (loss scaling and extra
arguments included); :func:`freeze`, for transfer learning; and, from
:mod:`fnn.loss_scaling`, :func:`dynamic_loss_scale` for float16.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn.loss_scaling import LossScaleState, dynamic_loss_scale, loss_scale_of

ScalarOrSchedule = float | jax.Array | Callable[[jax.Array], jax.Array]


def _number(name: str, value, lo: float, hi: float = math.inf, hi_open=False):
    """Checks a numeric option at construction: a real number in its range.

    A 0-d array (``optax.inject_hyperparams`` passes one) is returned as it
    is, so its dtype reaches the update as in optax; traced, only its shape
    can be checked.
    """
    number = value
    if isinstance(value, (jax.Array, np.ndarray)):
        if np.ndim(value) != 0 or np.dtype(value.dtype).kind not in "iuf":
            raise TypeError(
                f"{name} must be a real number or a 0-d real array, got an "
                f"array of {value.dtype}, shape {np.shape(value)}"
            )
        if isinstance(value, jax.core.Tracer):
            return value
        number = float(value)
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    inside = lo <= number < hi if hi_open else lo <= number <= hi
    if not (math.isfinite(number) and inside):
        bound = f"in [{lo}, {hi})" if hi_open else f">= {lo}"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return value if number is not value else float(value)


def _learning_rate(name: str, learning_rate):
    """A float or 0-d array (finite, >= 0), or an optax schedule, else an error."""
    if callable(learning_rate):
        return learning_rate
    return _number(f"{name}: learning_rate", learning_rate, 0.0)


def sgd(learning_rate: ScalarOrSchedule) -> optax.GradientTransformation:
    """Plain gradient descent: ``w <- w - lr * g``.

    Args:
      learning_rate: ``lr``, a float ``>= 0`` or an optax schedule
        ``step -> lr``.

    Returns:
      An ``optax.GradientTransformation`` (no state).

    Raises:
      TypeError, ValueError: a learning rate that is not a finite number
        ``>= 0`` (a negative one would climb the loss) nor a schedule.
    """
    return optax.scale_by_learning_rate(_learning_rate("sgd", learning_rate))


class MomentumState(NamedTuple):
    """The state of :func:`scale_by_momentum`."""

    velocity: optax.Updates  # shaped like params: the running sum of gradients


def scale_by_momentum(beta: float = 0.9, nesterov: bool = False):
    """The momentum direction: ``v <- beta v + g``, then ``v`` (or ``g + beta v``).

    Args:
      beta: the velocity's decay, in ``[0, 1)``.
      nesterov: use Nesterov's look-ahead direction ``g + beta v``.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`MomentumState`.

    Raises:
      TypeError, ValueError: ``beta`` outside ``[0, 1)``, or ``nesterov``
        not a bool (``momentum(0.1, 0.9, 0.5)`` would have meant Nesterov).
    """
    beta = _number("momentum: beta", beta, 0.0, 1.0, hi_open=True)
    if not isinstance(nesterov, (bool, np.bool_)):
        raise TypeError(f"momentum: nesterov must be a bool, got {nesterov!r}")

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

    With ``nesterov=True`` the step is ``w <- w - lr (g + beta v)``. Matches
    ``optax.sgd(learning_rate, momentum=beta, nesterov=nesterov)``.

    Args:
      learning_rate: ``lr``, a float ``>= 0`` or an optax schedule.
      beta: the velocity's decay, in ``[0, 1)``.
      nesterov: Nesterov's look-ahead.

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      TypeError, ValueError: a learning rate or ``beta`` out of range.
    """
    return optax.chain(
        scale_by_momentum(beta, nesterov),
        optax.scale_by_learning_rate(_learning_rate("momentum", learning_rate)),
    )


class AdamState(NamedTuple):
    """The state of :func:`scale_by_adam`: the step count and both moments."""

    count: jax.Array  # shape=(), dtype=jnp.int32: steps taken
    mu: optax.Updates  # shaped like params: first moment, EMA of g
    nu: optax.Updates  # shaped like params: second moment, EMA of g**2


def _debiased(moment, decay: float, count: jax.Array):
    """``moment / (1 - decay**t)``, Adam's bias correction at step ``t = count``.

    ``1 - decay**t`` is computed at JAX's default float precision (float64
    under x64) and only then cast to the moment's dtype, as optax does: in
    float32 or bfloat16 ``decay**t`` rounds, and the step drifts from the
    formula (3e-6 over 20 float64 steps when it was computed in float32).
    """
    correction = 1 - decay**count
    return jax.tree.map(lambda m: m / correction.astype(m.dtype), moment)


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """Adam's direction with bias-corrected moments.

    With ``g`` the gradient and ``t`` the step count, from 1::

        m <- (1 - b1) g + b1 m          m_hat = m / (1 - b1**t)
        v <- (1 - b2) g**2 + b2 v       v_hat = v / (1 - b2**t)
        direction = m_hat / (sqrt(v_hat) + eps)

    The operations run in ``optax.scale_by_adam``'s order, so the two agree
    bit for bit in float32 and float64.

    Args:
      b1: decay of the first moment, in ``[0, 1)``.
      b2: decay of the second moment, in ``[0, 1)``.
      eps: added to ``sqrt(v_hat)``: with ``eps > 0`` a zero gradient gives 0.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`AdamState`.
    """

    b1 = _number("adam: b1", b1, 0.0, 1.0, hi_open=True)
    b2 = _number("adam: b2", b2, 0.0, 1.0, hi_open=True)
    eps = _number("adam: eps", eps, 0.0)

    def init(params):
        # Two separate trees: one shared tree could not be donated twice.
        mu = jax.tree.map(jnp.zeros_like, params)
        nu = jax.tree.map(jnp.zeros_like, params)
        return AdamState(jnp.zeros((), jnp.int32), mu, nu)

    def update(grads, state, params=None):
        count = optax.safe_increment(state.count)
        mu = jax.tree.map(lambda m, g: (1 - b1) * g + b1 * m, state.mu, grads)
        nu = jax.tree.map(lambda v, g: (1 - b2) * (g * g) + b2 * v, state.nu, grads)
        direction = jax.tree.map(
            lambda m, v: m / (jnp.sqrt(v) + eps),
            _debiased(mu, b1, count),
            _debiased(nu, b2, count),
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

    ``m_hat`` and ``v_hat`` are the bias-corrected moments of
    :func:`scale_by_adam`. Matches ``optax.adam`` with the same arguments,
    bit for bit in float32 and float64.

    Args:
      learning_rate: ``lr``, a float ``>= 0`` or an optax schedule.
      b1: decay of the first moment, in ``[0, 1)``.
      b2: decay of the second moment, in ``[0, 1)``.
      eps: added to ``sqrt(v_hat)``, ``>= 0`` (0 gives nan where ``g`` stayed 0).

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      TypeError, ValueError: an option out of its range.
    """
    return optax.chain(
        scale_by_adam(b1, b2, eps),
        optax.scale_by_learning_rate(_learning_rate("adam", learning_rate)),
    )


def check_optimizer(who: str, optimizer) -> None:
    """Refuses anything but an optax ``GradientTransformation``.

    Args:
      who: the function asking, for the message (``"fit"``).
      optimizer: what the caller passed as the optimizer.

    Raises:
      TypeError: when ``optimizer`` has no ``init`` and ``update`` functions;
        a string (Keras' ``optimizer="adam"``) is told the call to write.
    """
    if callable(getattr(optimizer, "init", None)) and callable(
        getattr(optimizer, "update", None)
    ):
        return
    raise TypeError(
        f"{who}: optimizer must be an optax.GradientTransformation such as "
        f"fnn.optim.adam(1e-3) or optax.sgd(0.1), got {optimizer!r}"
        f"{_optimizer_hint(optimizer)}"
    )


def _optimizer_hint(optimizer) -> str:
    """The call to write instead: for a name (``"adam"``), or a factory not called."""
    name = optimizer.strip().lower() if isinstance(optimizer, str) else None
    if name in _OPTIMIZERS:
        return f"; for {optimizer!r} write fnn.optim.{name}({_OPTIMIZERS[name]})"
    if name and callable(getattr(optax, name, None)):
        return f"; for {optimizer!r} write optax.{name}(learning_rate)"
    if callable(optimizer):  # fnn.optim.adam rather than fnn.optim.adam(1e-3)
        return f"; a function: call it, {getattr(optimizer, '__name__', 'it')}(...)"
    return ""


#: fnn's optimizers, with the learning rate the error above suggests.
_OPTIMIZERS = {"sgd": "0.1", "momentum": "0.1", "adam": "1e-3"}


def gradient_step(
    grad_fn: Callable, optimizer: optax.GradientTransformation
) -> Callable:
    """One training step from a gradient function and an optimizer.

    The one place where loss scaling meets the gradient: the step reads the
    scale from ``opt_state`` (:func:`loss_scale_of`; ``None`` without
    :func:`dynamic_loss_scale`), asks ``grad_fn`` for the gradient of
    ``scale * J``, and the wrapper's ``update`` divides it back and adjusts
    the scale. Then ``params <- params + updates``. Optimizers that take
    extra arguments (``optax.GradientTransformationExtraArgs``, such as
    ``optax.contrib.reduce_on_plateau``) receive ``value=loss``; others
    ignore it (``optax.with_extra_args_support``).

    Args:
      grad_fn: ``grad_fn(params, state, x, y, *, key, loss_scale) ->
        ((loss, new_state), grads)``, as :func:`fnn.backprop.value_and_grad`
        builds.
      optimizer: any ``optax.GradientTransformation``.

    Returns:
      A pure ``step(params, state, opt_state, x, y, key) -> (params, state,
      opt_state, loss)``, to be jitted by the caller (``fnn.train.make_step``
      does, donating the first three).
    """
    check_optimizer("gradient_step", optimizer)
    optimizer = optax.with_extra_args_support(optimizer)

    def step(params, state, opt_state, x, y, key):
        scale = loss_scale_of(opt_state)
        (value, state), grads = grad_fn(params, state, x, y, key=key, loss_scale=scale)
        updates, opt_state = optimizer.update(grads, opt_state, params, value=value)
        return optax.apply_updates(params, updates), state, opt_state, value

    return step


# --------------------------------------------------------------------------
# Transfer learning: train some leaves, freeze the rest


def _trainable_flags(trainable, params):
    """A tree of Python bools shaped like ``params``: True where it trains."""
    if callable(trainable):
        flat, treedef = jax.tree_util.tree_flatten_with_path(params)
        flags = []
        for path, leaf in flat:
            flag = trainable(jax.tree_util.keystr(path), leaf)
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(
                    f"freeze: the predicate must return a Python bool for each "
                    f"leaf, got {flag!r} for {jax.tree_util.keystr(path)}"
                )
            flags.append(bool(flag))
        return jax.tree.unflatten(treedef, flags)

    def broadcast(flag, subtree):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"freeze: trainable leaves must be bools, got {flag!r}")
        return jax.tree.map(lambda _: bool(flag), subtree)

    try:
        return jax.tree.map(broadcast, trainable, params)
    except ValueError as e:
        raise ValueError(
            f"freeze: trainable must be shaped like params (or a prefix of it, "
            f"e.g. one bool per layer): trainable has structure "
            f"{jax.tree.structure(trainable)}, params {jax.tree.structure(params)}"
        ) from e


def freeze(
    optimizer: optax.GradientTransformation, trainable
) -> optax.GradientTransformation:
    """``optimizer`` on the trainable leaves only; the others stay frozen.

    A frozen leaf gets an update of exactly zero (``optax.set_to_zero``), so
    ``w <- w + 0`` leaves it bit for bit as it was, and the optimizer keeps
    no state for it (no Adam moments): ``optax.multi_transform`` hands the
    wrapped optimizer only the trainable leaves. The gradient of a frozen
    leaf is still computed; it is simply not used.

    Args:
      optimizer: any ``optax.GradientTransformation`` (an fnn optimizer, an
        ``optax.chain``, ...).
      trainable: which leaves train. Either a pytree of bools shaped like
        ``params``, or a prefix of it (``(False, (), True)`` for a
        three-layer ``serial``: a whole layer at once); or a predicate
        ``trainable(path, leaf) -> bool`` with ``path`` the leaf's path as
        ``check`` reports print it, e.g. ``"[0]['w']"``.

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      TypeError, ValueError: at ``init``/``update``, when ``trainable`` has
        non-bool leaves, does not fit ``params``, or the predicate returns
        something other than a bool.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from fnn import optim
      >>> params = {"body": jnp.ones(2), "head": jnp.ones(2)}
      >>> opt = optim.freeze(optim.adam(0.1), {"body": False, "head": True})
      >>> state = opt.init(params)
      >>> updates, state = opt.update({"body": jnp.ones(2), "head": jnp.ones(2)},
      ...                             state, params)
      >>> updates["body"].tolist(), [round(u, 4) for u in updates["head"].tolist()]
      ([0.0, 0.0], [-0.1, -0.1])
    """

    def labels(tree):
        flags = _trainable_flags(trainable, tree)
        return jax.tree.map(lambda f: "trainable" if f else "frozen", flags)

    return optax.multi_transform(
        {"trainable": optimizer, "frozen": optax.set_to_zero()}, labels
    )


__all__ = [
    "AdamState",
    "LossScaleState",
    "MomentumState",
    "adam",
    "check_optimizer",
    "dynamic_loss_scale",
    "freeze",
    "gradient_step",
    "loss_scale_of",
    "momentum",
    "scale_by_adam",
    "scale_by_momentum",
    "sgd",
]
