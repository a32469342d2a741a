"""``summary(model, input_shape)``: a table of layers, shapes and counts.

``serial`` and ``residual`` blocks (told apart by ``Layer.kind``, never by
name) are expanded, one row per child; shapes are per example (no batch
axis). Nothing is allocated: shapes come from ``jax.eval_shape`` of
``init``.
"""

from __future__ import annotations

import jax

from fnn.protocol import Layer


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


def _body(layer):
    """The layers a block chains: a serial's children, or the layer itself."""
    return layer.layers if layer.kind == "serial" else (layer,)


def _chain(children, input_shape, depth):
    rows, shape = [], input_shape
    for child in children:
        child_rows, shape = _rows(child, shape, depth)
        rows += child_rows
    return rows


def _rows(layer, input_shape, depth, label=None):
    out_shape, count = _shapes_of(layer, input_shape)
    rows = [(depth, label or layer.name, out_shape, count)]
    if layer.kind == "serial":
        rows[0] = (depth, "serial", out_shape, count)
        rows += _chain(layer.layers, input_shape, depth + 1)
    elif layer.kind == "residual":
        rows[0] = (depth, "residual", out_shape, count)
        rows += _chain(_body(layer.layers[0]), input_shape, depth + 1)
        if len(layer.layers) > 1:
            shortcut = layer.layers[1]
            label = f"shortcut: {shortcut.name}"
            rows += _rows(shortcut, input_shape, depth + 1, label)[0]
    return rows, out_shape


def summary(model: Layer, input_shape) -> str:
    """A table of the model's layers, output shapes and parameter counts.

    Args:
      model: any layer; ``serial`` and ``residual`` blocks are expanded,
        one indented row per child (a residual's shortcut on a row of its
        own).
      input_shape: the per-example input shape (no batch axis), e.g.
        ``x.shape[1:]``.

    Returns:
      The table as a string, ending with the total parameter count.

    Example:
      >>> from fnn.activation_layers import Relu
      >>> from fnn.combinators import serial
      >>> from fnn.dense import Dense
      >>> from fnn.residual import residual
      >>> from fnn.summary import summary
      >>> model = serial(Dense(4), Relu, residual(Dense(4), Relu), Dense(2))
      >>> print(summary(model, (3,)))
      layer         output shape  params
      ----------------------------------
      serial        (2,)              46
        Dense(4)    (4,)              16
        Relu        (4,)               0
        residual    (4,)              20
          Dense(4)  (4,)              20
          Relu      (4,)               0
        Dense(2)    (2,)              10
      ----------------------------------
      total parameters: 46
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
