"""``residual``: a skip connection around layers, ``y = x + f(x)``, or a
projection shortcut where the shape changes, ``y = s(x) + f(x)``.

Backward: where ``x`` feeds both paths, their cotangents add up.
"""

from __future__ import annotations

from fnn.combinators import check_layers, serial, split_key
from fnn.protocol import Layer, ShapeError, check_leaves, check_shape, layer_name


def _check_same(name, what, a, fx):
    """At trace time: the skip's and the layers' outputs must not broadcast."""
    if tuple(a.shape) != tuple(fx.shape):
        raise ShapeError(
            f"{name}: the layers give {tuple(fx.shape)} but {what} "
            f"{tuple(a.shape)}; they must agree (batch shapes shown)"
        )


def residual(*layers: Layer, shortcut: Layer | None = None) -> Layer:
    """A skip connection: ``y = x + f(x)``, or ``y = s(x) + f(x)``.

    ``f = serial(*layers)`` (the layer itself when there is one). Without a
    ``shortcut`` the skip is the identity and ``f`` must keep the shape;
    where the shape changes, a projection ``shortcut`` (a ``Dense``, a 1x1
    ``Conv`` with stride) maps ``x`` to ``f``'s output shape, as in ResNet.

    Args:
      *layers: the residual branch ``f``.
      shortcut: the projection ``s``, or ``None`` for the identity.

    Returns:
      A :class:`~fnn.protocol.Layer`. Without a shortcut, its params and
      state are ``f``'s; with one, dicts ``{"layers": f's, "shortcut":
      s's}``.

    Raises:
      ShapeError: at init, when ``f`` and the skip disagree on the shape.

    Backward: the cotangents of the two paths add up,
    ``dx = ds/dx^T dy + df/dx^T dy`` (``dy + df/dx^T dy`` for the identity),
    which is why deep residual networks do not vanish their gradients.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from fnn.activation_layers import Relu
      >>> from fnn.dense import Dense
      >>> from fnn.residual import residual
      >>> block = residual(Dense(3), Relu)  # y = x + relu(Dense(3)(x))
      >>> out_shape, params, state = block.init(jax.random.key(0), (3,))
      >>> out_shape
      (3,)
      >>> zero = jax.tree.map(jnp.zeros_like, params)  # f = 0: the identity
      >>> block.apply(zero, state, jnp.array([[1.0, -2.0, 3.0]]))[0].tolist()
      [[1.0, -2.0, 3.0]]
      >>> wide = residual(Dense(4), shortcut=Dense(4))  # y = s(x) + f(x)
      >>> out_shape, params, state = wide.init(jax.random.key(0), (3,))
      >>> out_shape, sorted(params)
      ((4,), ['layers', 'shortcut'])
    """
    check_layers("residual", layers)
    if not layers:
        raise TypeError("residual: needs at least one layer")
    inner = layers[0] if len(layers) == 1 else serial(*layers)
    if shortcut is not None:
        check_layers("residual shortcut", (shortcut,))
    name = layer_name("residual", layers, [("shortcut", shortcut, None)])
    children = (inner,) if shortcut is None else (inner, shortcut)

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape)
        key_f, key_s = (key, None) if shortcut is None else split_key(name, key, 2)
        out, params, state = inner.init(key_f, input_shape)
        skip = input_shape
        if shortcut is not None:
            skip, p_s, s_s = shortcut.init(key_s, input_shape)
            params = {"layers": params, "shortcut": p_s}
            state = {"layers": state, "shortcut": s_s}
        if out != skip and shortcut is None:
            raise ShapeError(
                f"{name}: the layers map {input_shape} to {out}; an identity skip "
                "needs them to keep the shape. Pass shortcut= (e.g. a Dense or a "
                "1x1 Conv) to project x to their output shape"
            )
        if out != skip:
            raise ShapeError(
                f"{name}: the layers map {input_shape} to {out} but the shortcut "
                f"to {skip}; they must agree"
            )
        return out, params, state

    def forward(params, state, x, *, key=None, train=False):
        if shortcut is None:
            fx, new_state, cache = inner.forward(params, state, x, key=key, train=train)
            _check_same(name, "the input", x, fx)
            return x + fx, new_state, cache
        check_leaves(name, "params", params, {"layers": None, "shortcut": None})
        check_leaves(name, "state", state, {"layers": None, "shortcut": None})
        key_f, key_s = split_key(name, key, 2)
        fx, state_f, cache_f = inner.forward(
            params["layers"], state["layers"], x, key=key_f, train=train
        )
        sx, state_s, cache_s = shortcut.forward(
            params["shortcut"], state["shortcut"], x, key=key_s, train=train
        )
        _check_same(name, "the shortcut", sx, fx)
        new_state = {"layers": state_f, "shortcut": state_s}
        return sx + fx, new_state, (cache_f, cache_s)

    def backward(params, cache, dy):
        if shortcut is None:
            dparams, dx = inner.backward(params, cache, dy)
            return dparams, dy + dx
        dp_f, dx_f = inner.backward(params["layers"], cache[0], dy)
        dp_s, dx_s = shortcut.backward(params["shortcut"], cache[1], dy)
        return {"layers": dp_f, "shortcut": dp_s}, dx_f + dx_s

    return Layer(init, forward, backward, name, children, kind="residual")
