"""Combinators: layers built from layers, each with a hand-written backward.

``serial`` chains layers; ``fan_out`` copies one input to several branches,
``parallel`` runs one layer per branch, ``fan_in_sum`` and ``fan_in_concat``
merge branches. ``residual`` (a skip connection around its layers) is in
:mod:`fnn.residual`.

Backward passes follow the chain rule in reverse order. Where one value
feeds several consumers (``fan_out``, the skip of ``residual``), the
cotangents coming back from each consumer add up.

Multi-input layers take and return tuples: ``input_shape`` is a tuple of
per-example shapes and ``x`` a tuple of batched arrays.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from fnn import initializers
from fnn.protocol import (
    BATCH_AXIS_HINT,
    Layer,
    ShapeError,
    batch_axis_hint,
    check_key,
    check_leaves,
    check_positive_int,
    check_shape,
    is_shape,
    layer_name,
    per_example_shape,
    shape_carrier,
    short_repr,
)


def split_key(name, key, n):
    """``n`` keys for a combinator's children, or ``n`` copies of ``None`` for none.

    Under jit a split whose keys no layer uses is dead code: free; eager,
    one compiled program serves every ``n`` (``initializers.split``).
    """
    if key is None:
        return (None,) * n
    return initializers.split(check_key(name, key), n)


def check_layers(name, layers) -> tuple[Layer, ...]:
    """Checks a combinator's arguments are layers, naming an uncalled one."""
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = ""
            if callable(layer):
                hint = f"; did you mean {getattr(layer, '__name__', 'it')}()?"
            raise TypeError(f"{name}: argument {i} is {layer!r}, not a Layer{hint}")
    return tuple(layers)


def _tuple_of_shapes(name, shapes, n=None):
    if not (isinstance(shapes, (tuple, list)) and all(is_shape(s) for s in shapes)):
        got = short_repr(shapes)
        raise ShapeError(f"{name}: expected a tuple of input shapes, got {got}")
    if n is not None and len(shapes) != n:
        raise ShapeError(f"{name}: expected {n} inputs, got {len(shapes)}: {shapes}")
    return tuple(tuple(int(d) for d in s) for s in shapes)


def _check_tuple_input(name, x, n=None):
    if not isinstance(x, (tuple, list)) or (n is not None and len(x) != n):
        what = f"{n} arrays" if n is not None else "arrays"
        raise ShapeError(f"{name}: expected a tuple of {what}, got {type(x).__name__}")


def _check_entries(name, params, state, n):
    """Params and state of a combinator hold one entry per child layer."""
    for what, tree in (("params", params), ("state", state)):
        if not isinstance(tree, (tuple, list)) or len(tree) != n:
            got = (
                f"{type(tree).__name__} of length {len(tree)}"
                if isinstance(tree, (tuple, list, dict))
                else type(tree).__name__
            )
            raise ValueError(
                f"{name}: {what} must be a tuple with one entry per layer ({n}), "
                f"got a {got}; pass the {what} that this model's init returned"
            )


def _no_params(name, params, state):
    check_leaves(name, "params", params, ())
    check_leaves(name, "state", state, ())


def _with_hint(error: ShapeError, hint: str) -> ShapeError:
    if not hint or BATCH_AXIS_HINT in str(error):
        return error
    return ShapeError(f"{error}; {hint}")


def serial(*layers: Layer) -> Layer:
    """Chains layers: ``serial(f, g, h)(x) = h(g(f(x)))``.

    Per example: the first layer's input shape to the last one's output.

    Args:
      *layers: the layers, applied first to last.

    Returns:
      A :class:`~fnn.protocol.Layer` whose params and state are tuples with
      one entry per layer, so gradient reports name leaves like
      ``[2]['w']``. A shape error inside names the layer's index; when the
      params were built by ``init(key, x.shape)`` (with the batch axis), it
      says so.

    Backward: each layer's backward from last to first, ``dx`` of one
    becoming ``dy`` of the next.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from fnn.activation_layers import Relu
      >>> from fnn.combinators import serial
      >>> from fnn.dense import Dense
      >>> model = serial(Dense(4), Relu, Dense(2))
      >>> model
      serial(Dense(4), Relu, Dense(2))
      >>> out_shape, params, state = model.init(jax.random.key(0), (3,))
      >>> out_shape, jax.tree.map(jnp.shape, params)
      ((2,), ({'b': (4,), 'w': (3, 4)}, (), {'b': (2,), 'w': (4, 2)}))
      >>> y, state = model.apply(params, state, jnp.ones((5, 3)))
      >>> y.shape
      (5, 2)
    """
    layers = check_layers("serial", layers)
    name = layer_name("serial", layers)

    def init_all(key, input_shape):
        params, state, shape = [], [], input_shape
        keys = split_key(name, key, len(layers))
        for i, (layer, k) in enumerate(zip(layers, keys)):
            try:
                shape, p, s = layer.init(k, shape)
            except ShapeError as e:
                raise ShapeError(f"serial layer [{i}] {e}") from None
            params.append(p)
            state.append(s)
        return shape, tuple(params), tuple(state)

    def init(key, input_shape):
        check_key(name, key)
        try:
            return init_all(key, input_shape)
        except ShapeError as e:  # the error path only: is it the batch axis?
            hint = ""
            if isinstance(input_shape, tuple) and is_shape(input_shape[1:]):
                try:
                    jax.eval_shape(lambda k: init_all(k, input_shape[1:]), key)
                    hint = f"init works for {input_shape[1:]}: {BATCH_AXIS_HINT}"
                except (ShapeError, ValueError, TypeError):
                    pass
            raise _with_hint(e, hint) from None

    def forward(params, state, x, *, key=None, train=False):
        _check_entries(name, params, state, len(layers))
        new_state, caches, x0 = [], [], x
        keys = split_key(name, key, len(layers))
        for i, (layer, p, s, k) in enumerate(zip(layers, params, state, keys)):
            try:
                x, s, cache = layer.forward(p, s, x, key=k, train=train)
            except ShapeError as e:
                hint = batch_axis_hint(model, params, state, per_example_shape(x0))
                raise _with_hint(ShapeError(f"serial layer [{i}] {e}"), hint) from None
            new_state.append(s)
            caches.append(cache)
        return x, tuple(new_state), tuple(caches)

    def backward(params, caches, dy):
        dparams = [None] * len(layers)
        for i in reversed(range(len(layers))):
            dparams[i], dy = layers[i].backward(params[i], caches[i], dy)
        return tuple(dparams), dy

    model = Layer(init, forward, backward, name, layers, kind="serial")
    return model


def parallel(*layers: Layer) -> Layer:
    """Runs layer ``i`` on input ``i``: ``(x1, ..., xn) -> (f1(x1), ..., fn(xn))``.

    Args:
      *layers: one layer per input.

    Returns:
      A :class:`~fnn.protocol.Layer` over tuples of inputs, with params and
      state tuples of one entry per layer.

    Backward: each branch's own, ``dx_i = backward_i(dy_i)``.
    """
    layers = check_layers("parallel", layers)
    name = layer_name("parallel", layers)
    n = len(layers)

    def init(key, input_shape):
        shapes = _tuple_of_shapes(name, input_shape, n)
        keys = split_key(name, key, n)
        out = [layer.init(k, s) for layer, k, s in zip(layers, keys, shapes)]
        return tuple(zip(*out)) if out else ((), (), ())

    def forward(params, state, x, *, key=None, train=False):
        _check_tuple_input(name, x, n)
        _check_entries(name, params, state, n)
        keys = split_key(name, key, n)
        out = [
            layer.forward(p, s, xi, key=k, train=train)
            for layer, p, s, xi, k in zip(layers, params, state, x, keys)
        ]
        ys, new_state, caches = zip(*out) if out else ((), (), ())
        return tuple(ys), tuple(new_state), tuple(caches)

    def backward(params, caches, dy):
        out = [
            layer.backward(p, c, d)
            for layer, p, c, d in zip(layers, params, caches, dy)
        ]
        dparams, dx = zip(*out) if out else ((), ())
        return tuple(dparams), tuple(dx)

    return Layer(init, forward, backward, name, layers)


def fan_out(num: int) -> Layer:
    """Copies the input to ``num`` branches: ``x -> (x, ..., x)``.

    Args:
      num: the number of copies, a positive int.

    Returns:
      A :class:`~fnn.protocol.Layer` without params or state.

    Backward: the branches' cotangents add up, ``dx = sum_i dy_i``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from fnn.activation_layers import Identity, Relu
      >>> from fnn.combinators import fan_in_concat, fan_out, parallel, serial
      >>> block = serial(fan_out(2), parallel(Identity, Relu), fan_in_concat())
      >>> out_shape, params, state = block.init(jax.random.key(0), (3,))
      >>> out_shape
      (6,)
      >>> y, _ = block.apply(params, state, jnp.array([[-1.0, 0.0, 2.0]]))
      >>> y.tolist()
      [[-1.0, 0.0, 2.0, 0.0, 0.0, 2.0]]
      >>> _, dx = fan_out(2).backward((), (), (jnp.ones(3), jnp.ones(3)))
      >>> dx.tolist()  # dy_1 + dy_2
      [2.0, 2.0, 2.0]
    """
    num = check_positive_int("fan_out", "num", num)
    name = layer_name("fan_out", (num,))

    def init(key, input_shape):
        return (check_shape(name, input_shape),) * num, (), ()

    def forward(params, state, x, *, key=None, train=False):
        _no_params(name, params, state)
        return (x,) * num, state, ()

    def backward(params, cache, dy):
        _check_tuple_input(name, dy, num)
        dx = dy[0]
        for d in dy[1:]:
            dx = dx + d
        return (), dx

    return Layer(init, forward, backward, name)


def fan_in_sum() -> Layer:
    """Adds its inputs: ``(x1, ..., xn) -> x1 + ... + xn`` (equal shapes).

    Returns:
      A :class:`~fnn.protocol.Layer` without params or state.

    Backward: every input receives the output's cotangent, ``dx_i = dy``.
    """
    name = "fan_in_sum()"

    def init(key, input_shape):
        shapes = _tuple_of_shapes(name, input_shape)
        if len(set(shapes)) != 1:
            raise ShapeError(f"{name}: inputs must have equal shapes, got {shapes}")
        return shapes[0], (), ()

    def forward(params, state, x, *, key=None, train=False):
        _no_params(name, params, state)
        _check_tuple_input(name, x)
        shapes = [tuple(xi.shape) for xi in x]
        if len(set(shapes)) != 1:
            raise ShapeError(f"{name}: inputs must have equal shapes, got {shapes}")
        y = x[0]
        for xi in x[1:]:
            y = y + xi
        # One zero-size carrier per input: the cache says how many there are.
        return y, state, tuple(shape_carrier(xi, axes=()) for xi in x)

    def backward(params, carriers, dy):
        return (), tuple(dy for _ in carriers)

    return Layer(init, forward, backward, name)


def fan_in_concat(axis: int = -1) -> Layer:
    """Concatenates its inputs along a per-example ``axis`` (default: features).

    Args:
      axis: the per-example axis (no batch axis counted); negative counts
        from the end.

    Returns:
      A :class:`~fnn.protocol.Layer` without params or state.

    Backward: ``dy`` is split back at the inputs' sizes along that axis.
    """
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise ValueError(f"fan_in_concat: axis must be an int, got {axis!r}")
    axis = int(axis)
    name = layer_name("fan_in_concat", (), [("axis", axis, -1)])

    def per_example_axis(rank):
        a = axis if axis >= 0 else rank + axis
        if not 0 <= a < rank:
            raise ShapeError(f"{name}: axis out of range for inputs of rank {rank}")
        return a

    def concat_shape(shapes):
        a = per_example_axis(len(shapes[0]))
        rest = {s[:a] + s[a + 1 :] for s in shapes}
        if len(rest) != 1 or len({len(s) for s in shapes}) != 1:
            raise ShapeError(f"{name}: inputs differ off the concat axis: {shapes}")
        out = list(shapes[0])
        out[a] = sum(s[a] for s in shapes)
        return tuple(out)

    def init(key, input_shape):
        return concat_shape(_tuple_of_shapes(name, input_shape)), (), ()

    def forward(params, state, x, *, key=None, train=False):
        _no_params(name, params, state)
        _check_tuple_input(name, x)
        concat_shape(per_example_shape(tuple(x)))
        if len({xi.shape[0] for xi in x}) != 1:
            raise ShapeError(f"{name}: inputs of different batch sizes")
        a = per_example_axis(x[0].ndim - 1) + 1
        carriers = tuple(shape_carrier(xi, axes=(a,)) for xi in x)
        return jnp.concatenate(x, axis=a), state, carriers

    def backward(params, carriers, dy):
        a = per_example_axis(dy.ndim - 1) + 1
        offsets, total = [], 0
        for c in carriers[:-1]:
            total += c.shape[1]
            offsets.append(total)
        return (), tuple(jnp.split(dy, offsets, axis=a))

    return Layer(init, forward, backward, name)
