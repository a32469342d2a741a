"""Rematerialisation: trade compute for memory in the backward pass.

A network's backward pass needs what its forward pass computed: the
activations of every layer, kept alive from the forward to the backward.
For a deep network they dominate the memory of a training step.
``remat(layer)`` keeps only the *inputs* of ``layer`` and computes its
forward a second time, in the backward pass, when the activations are
needed: memory falls from every activation inside ``layer`` to its input,
at the cost of one more forward of ``layer`` (about a third more compute
for a stack of dense layers).

Both gradient paths rematerialise:

- the hand-written backward: the cache of ``remat(layer)`` holds only
  ``(x, state, key)``; its ``backward`` reruns ``layer.forward`` from them
  (same key, so the same dropout mask; same state, so the same batch-norm
  mode) and calls ``layer.backward`` on the fresh cache;
- autodiff: ``jax.custom_vjp`` keeps the same inputs, and its backward
  reruns ``layer.apply`` under ``jax.vjp`` (JAX's own derivative of the
  forward, as ``jax.checkpoint`` does).

Why not ``jax.checkpoint``: a rematerialised forward is the same expression
as the first one, and XLA's common-subexpression elimination merges the two,
keeping every activation again. ``jax.checkpoint`` guards against that with
``jax.lax.optimization_barrier``, which XLA:CPU removes *before* its last
CSE pass: on the CPU backend (jax 0.10) a ``jax.checkpoint``-ed deep MLP
step used more memory than the plain one (80 against 68 MiB temporaries),
while this module's version used 32. Here the recomputation starts from
inputs that depend on ``dy`` at run time: ``x + z``, with ``z`` a zero that
no compiler pass can prove is zero (``0 * dy[0]``, NaN and infinities
mapped to 0). So the recomputation can neither be merged with the forward
nor scheduled before the backward reaches it, on every backend.
Forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``) does not pass
through a ``jax.custom_vjp``; use a model without ``remat`` for it.

Wrap blocks, not single cheap layers: a ``remat`` boundary keeps its input,
so ``serial(remat(block1), remat(block2), ...)`` keeps one array per block
instead of one per layer (Chen et al. 2016, "Training deep nets with
sublinear memory cost": blocks of about ``sqrt(depth)`` layers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fnn.combinators import serial
from fnn.protocol import Layer


def _zero_from(dy):
    """A scalar 0 computed from ``dy`` at run time: ``0 * dy[0]`` (0 where
    ``dy[0]`` is not finite). Only ``dy``'s first element is read."""
    leaves = [jnp.ravel(a)[:1] for a in jax.tree.leaves(dy)]
    first = jnp.sum(leaves[0]) if leaves else jnp.zeros(())
    return jnp.where(jnp.isfinite(first), first, 0) * 0


def _depend_on(tree, dy):
    """``tree`` unchanged in value, but computed after ``dy``: each array
    leaf plus a run-time zero from ``dy`` (keys through their data; bool
    leaves, masks, are left alone)."""
    zero = _zero_from(dy)

    def shift(leaf):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = jax.random.key_data(leaf)
            shifted = data + zero.astype(data.dtype)
            return jax.random.wrap_key_data(shifted, impl=jax.random.key_impl(leaf))
        if leaf.dtype == jnp.bool_:
            return leaf
        return leaf + zero.astype(leaf.dtype)

    return jax.tree.map(shift, tree)


def _zero_cotangent(tree):
    """Cotangents for what is not differentiated: the state and the key."""

    def zero(leaf):
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            return jnp.zeros_like(leaf)
        return np.zeros(leaf.shape, jax.dtypes.float0)

    return jax.tree.map(zero, tree)


def remat(*layers: Layer) -> Layer:
    """``layers`` (chained as by :func:`~fnn.combinators.serial`), recomputed
    in the backward pass instead of kept.

    The same function, parameters and state as the wrapped layer (or as
    ``serial(*layers)``): per-example shapes, ``init``, ``params`` and
    ``state`` are those of the inner layer, so parameters move freely
    between a model and its ``remat`` version, and gradients are equal.

    Backward, for the cache ``(x, state, key)`` and the output cotangent
    ``dy`` (``z``: a zero computed from ``dy`` at run time, see above)::

        _, _, cache = layer.forward(params, state + z, x + z, key=key + z,
                                    train=train)
        dparams, dx = layer.backward(params, cache, dy)

    ``train`` is stored in the cache's structure (a dict key), not as an
    array. Autodiff: the same recomputation, differentiated by ``jax.vjp``.

    Args:
      *layers: one layer, or several to chain.

    Returns:
      A :class:`~fnn.protocol.Layer` named ``remat(...)``.

    Raises:
      TypeError: when an argument is not a layer.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from fnn.layers import Dense, Relu
      >>> block = remat(Dense(4), Relu)
      >>> block.name
      'remat(serial(Dense(4), Relu))'
      >>> _, params, state = block.init(jax.random.key(0), (3,))
      >>> _, _, cache = block.forward(params, state, jnp.ones((2, 3)))
      >>> [a.shape for a in jax.tree.leaves(cache)]   # the input only
      [(2, 3)]
    """
    if not layers:
        raise TypeError("remat: needs a layer to wrap, e.g. remat(Dense(256), Relu)")
    inner = layers[0] if len(layers) == 1 else serial(*layers)
    if not isinstance(inner, Layer):
        raise TypeError(f"remat: expected a Layer, got {inner!r}")
    name = f"remat({inner.name})"

    def apply_rematerialised(params, state, x, key, train):
        def run(params, x, state, key):
            return inner.apply(params, state, x, key=key, train=train)

        @jax.custom_vjp
        def rematerialised(params, x, state, key):
            return run(params, x, state, key)

        def fwd(params, x, state, key):
            return run(params, x, state, key), (params, x, state, key)

        def bwd(inputs, cotangents):
            dy, _ = cotangents  # the new state is not differentiated
            params, x, state, key = inputs
            x, state, key = _depend_on((x, state, key), dy)
            _, pullback = jax.vjp(lambda p, x: run(p, x, state, key)[0], params, x)
            dparams, dx = pullback(dy)
            return dparams, dx, _zero_cotangent(state), _zero_cotangent(key)

        rematerialised.defvjp(fwd, bwd)
        return rematerialised(params, x, state, key)

    def forward(params, state, x, *, key=None, train=False):
        y, new_state = apply_rematerialised(params, state, x, key, train)
        mode = "train" if train else "eval"
        return y, new_state, {mode: (x, state, key)}

    def backward(params, cache, dy):
        ((mode, inputs),) = cache.items()
        x, state, key = _depend_on(inputs, dy)
        _, _, inner_cache = inner.forward(
            params, state, x, key=key, train=mode == "train"
        )
        return inner.backward(params, inner_cache, dy)

    return Layer(inner.init, forward, backward, name, (inner,))
