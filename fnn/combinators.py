"""Combinators: layers built from layers, each with a hand-written backward.

``serial`` chains layers; ``fan_out`` copies one input to several branches,
``parallel`` runs one layer per branch, ``fan_in_sum`` and ``fan_in_concat``
merge branches; ``residual`` adds a skip connection around its layers.

Backward passes follow the chain rule in reverse order. Where one value
feeds several consumers (``fan_out``, the skip of ``residual``), the
cotangents coming back from each consumer add up.

Multi-input layers take and return tuples: ``input_shape`` is a tuple of
per-example shapes and ``x`` a tuple of batched arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnn.protocol import Layer, ShapeError, check_positive_int, check_shape, is_shape


def _split_key(key, n):
    # Under jit a split whose keys no layer uses is dead code: free.
    return (None,) * n if key is None else tuple(jax.random.split(key, n))


def _check_layers(name, layers) -> tuple[Layer, ...]:
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = ""
            if callable(layer):
                hint = f"; did you mean {getattr(layer, '__name__', 'it')}()?"
            raise TypeError(f"{name}: argument {i} is {layer!r}, not a Layer{hint}")
    return tuple(layers)


def _tuple_of_shapes(name, shapes, n=None):
    if not (isinstance(shapes, (tuple, list)) and all(is_shape(s) for s in shapes)):
        raise ShapeError(f"{name}: expected a tuple of input shapes, got {shapes!r}")
    if n is not None and len(shapes) != n:
        raise ShapeError(f"{name}: expected {n} inputs, got {len(shapes)}: {shapes}")
    return tuple(tuple(s) for s in shapes)


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


def serial(*layers: Layer) -> Layer:
    """Chains layers: ``serial(f, g, h)(x) = h(g(f(x)))``.

    Parameters and state: tuples with one entry per layer, so gradient
    reports name leaves like ``[2]['w']``. Backward calls each layer's
    backward from last to first, passing ``dx`` of one as ``dy`` of the next.
    """
    layers = _check_layers("serial", layers)
    name = "serial(" + ", ".join(layer.name for layer in layers) + ")"

    def init(key, input_shape):
        params, state, shape = [], [], input_shape
        for i, (layer, k) in enumerate(zip(layers, _split_key(key, len(layers)))):
            try:
                shape, p, s = layer.init(k, shape)
            except ShapeError as e:
                raise ShapeError(f"serial layer [{i}] {e}") from None
            params.append(p)
            state.append(s)
        return shape, tuple(params), tuple(state)

    def forward(params, state, x, *, key=None, train=False):
        _check_entries(name, params, state, len(layers))
        new_state, caches = [], []
        keys = _split_key(key, len(layers))
        for i, (layer, p, s, k) in enumerate(zip(layers, params, state, keys)):
            try:
                x, s, cache = layer.forward(p, s, x, key=k, train=train)
            except ShapeError as e:
                raise ShapeError(f"serial layer [{i}] {e}") from None
            new_state.append(s)
            caches.append(cache)
        return x, tuple(new_state), tuple(caches)

    def backward(params, caches, dy):
        dparams = [None] * len(layers)
        for i in reversed(range(len(layers))):
            dparams[i], dy = layers[i].backward(params[i], caches[i], dy)
        return tuple(dparams), dy

    return Layer(init, forward, backward, name, layers)


def parallel(*layers: Layer) -> Layer:
    """Runs layer ``i`` on input ``i``: ``(x1, ..., xn) -> (f1(x1), ..., fn(xn))``."""
    layers = _check_layers("parallel", layers)
    name = "parallel(" + ", ".join(layer.name for layer in layers) + ")"
    n = len(layers)

    def init(key, input_shape):
        shapes = _tuple_of_shapes(name, input_shape, n)
        out = [
            layer.init(k, s) for layer, k, s in zip(layers, _split_key(key, n), shapes)
        ]
        return tuple(zip(*out)) if out else ((), (), ())

    def forward(params, state, x, *, key=None, train=False):
        _check_tuple_input(name, x, n)
        _check_entries(name, params, state, n)
        out = [
            layer.forward(p, s, xi, key=k, train=train)
            for layer, p, s, xi, k in zip(layers, params, state, x, _split_key(key, n))
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

    Backward: the branches' cotangents add up, ``dx = sum_i dy_i``.
    """
    num = check_positive_int("fan_out", "num", num)
    name = f"fan_out({num})"

    def init(key, input_shape):
        return (check_shape(name, input_shape),) * num, (), ()

    def forward(params, state, x, *, key=None, train=False):
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

    Backward: every input receives the output's cotangent, ``dx_i = dy``.
    """
    name = "fan_in_sum()"

    def init(key, input_shape):
        shapes = _tuple_of_shapes(name, input_shape)
        if len(set(shapes)) != 1:
            raise ShapeError(f"{name}: inputs must have equal shapes, got {shapes}")
        return shapes[0], (), ()

    def forward(params, state, x, *, key=None, train=False):
        _check_tuple_input(name, x)
        shapes = [tuple(xi.shape) for xi in x]
        if len(set(shapes)) != 1:
            raise ShapeError(f"{name}: inputs must have equal shapes, got {shapes}")
        y = x[0]
        for xi in x[1:]:
            y = y + xi
        # One zero-size carrier per input: the cache says how many there are.
        return y, state, tuple(jnp.zeros((0,), xi.dtype) for xi in x)

    def backward(params, carriers, dy):
        return (), tuple(dy for _ in carriers)

    return Layer(init, forward, backward, name)


def fan_in_concat(axis: int = -1) -> Layer:
    """Concatenates its inputs along a per-example ``axis`` (default: features).

    Backward: ``dy`` is split back at the inputs' sizes along that axis.
    """
    name = f"fan_in_concat(axis={axis})"

    def per_example_axis(rank):
        a = axis if axis >= 0 else rank + axis
        if not 0 <= a < rank:
            raise ShapeError(f"{name}: axis out of range for inputs of rank {rank}")
        return a

    def init(key, input_shape):
        shapes = _tuple_of_shapes(name, input_shape)
        a = per_example_axis(len(shapes[0]))
        rest = {s[:a] + s[a + 1 :] for s in shapes}
        if len(rest) != 1 or len({len(s) for s in shapes}) != 1:
            raise ShapeError(f"{name}: inputs differ off the concat axis: {shapes}")
        out = list(shapes[0])
        out[a] = sum(s[a] for s in shapes)
        return tuple(out), (), ()

    def forward(params, state, x, *, key=None, train=False):
        _check_tuple_input(name, x)
        a = per_example_axis(x[0].ndim - 1) + 1
        carriers = tuple(jnp.zeros((0, xi.shape[a]), xi.dtype) for xi in x)
        return jnp.concatenate(x, axis=a), state, carriers

    def backward(params, carriers, dy):
        a = per_example_axis(dy.ndim - 1) + 1
        offsets, total = [], 0
        for c in carriers[:-1]:
            total += c.shape[1]
            offsets.append(total)
        return (), tuple(jnp.split(dy, offsets, axis=a))

    return Layer(init, forward, backward, name)


def residual(*layers: Layer) -> Layer:
    """A skip connection: ``y = x + f(x)`` with ``f = serial(*layers)``.

    ``f`` must keep the shape. Backward: the skip passes ``dy`` straight
    through and adds it to ``f``'s input cotangent, ``dx = dy + df/dx^T dy``,
    which is why deep residual networks do not vanish their gradients.
    """
    inner = layers[0] if len(layers) == 1 else serial(*layers)
    _check_layers("residual", (inner,))
    name = f"residual({inner.name})"

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape)
        out, params, state = inner.init(key, input_shape)
        if out != input_shape:
            raise ShapeError(
                f"{name}: the inner layers map {input_shape} to {out}; a skip "
                "connection needs them to keep the shape"
            )
        return out, params, state

    def forward(params, state, x, *, key=None, train=False):
        fx, new_state, cache = inner.forward(params, state, x, key=key, train=train)
        return x + fx, new_state, cache

    def backward(params, cache, dy):
        dparams, dx = inner.backward(params, cache, dy)
        return dparams, dy + dx

    return Layer(init, forward, backward, name, (inner,))


# --------------------------------------------------------------------------
# summary


def _count(tree) -> int:
    return sum(int(leaf.size) for leaf in jax.tree.leaves(tree))


def _shapes_of(layer, input_shape):
    """``(output_shape, params_count)`` of ``layer`` without allocating params."""
    box = {}

    def run(key):
        shape, params, state = layer.init(key, input_shape)
        box["shape"] = shape
        return params

    params = jax.eval_shape(run, jax.random.key(0))
    return box["shape"], _count(params)


def _children(layer):
    """``(label, children)`` for the blocks that summary expands."""
    if layer.name.startswith("serial("):
        return "serial", layer.layers
    if layer.name.startswith("residual("):
        inner = layer.layers[0]
        return "residual", inner.layers if inner.name.startswith("serial(") else (
            inner,
        )
    return None, ()


def _rows(layer, input_shape, depth):
    out_shape, count = _shapes_of(layer, input_shape)
    label, children = _children(layer)
    rows = [(depth, label or layer.name, out_shape, count)]
    shape = input_shape
    for child in children:
        child_rows, shape = _rows(child, shape, depth + 1)
        rows += child_rows
    return rows, out_shape


def summary(model: Layer, input_shape) -> str:
    """A table of the model's layers, output shapes and parameter counts.

    ``serial`` and ``residual`` blocks are expanded, one row per child;
    shapes are per example (no batch axis). Nothing is allocated: shapes come
    from ``jax.eval_shape`` of ``init``.
    """
    rows, _ = _rows(model, input_shape, 0)
    header = ("layer", "output shape", "params")
    table = [("  " * d + n, str(s), f"{c:,}") for d, n, s, c in rows]
    w0 = max(len(header[0]), *(len(r[0]) for r in table))
    w1 = max(len(header[1]), *(len(r[1]) for r in table))
    w2 = max(len(header[2]), *(len(r[2]) for r in table))
    line = "-" * (w0 + w1 + w2 + 4)
    lines = [f"{header[0]:<{w0}}  {header[1]:<{w1}}  {header[2]:>{w2}}", line]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c:>{w2}}" for a, b, c in table]
    lines += [line, f"total parameters: {rows[0][3]:,}"]
    return "\n".join(lines)
