"""Seeing what the network does: per-layer gradient and activation health.

Figures a course asks a student to look at while training, one per layer,
keyed by the layer's path in a ``serial`` model (``"[2]"``; nested chains
``"[1][0]"``), the same keys in every function here:

- :func:`grad_norms`: the L2 norm of each layer's gradient, and
  :func:`gradient_flags`, which reads them as ``"vanishing"``, ``"ok"`` or
  ``"exploding"``;
- :func:`update_ratios`: ``|update| / |params|`` per layer, the step size
  relative to the weights (around 1e-3 is the usual healthy figure; 1e-1
  thrashes, 1e-6 stalls);
- :func:`activation_health`: the fraction of dead ReLU units and of
  saturated sigmoid/tanh units per activation layer, from one batch;
- :func:`snapshot`: all of them for one batch, as ``fit`` would record them.

All are pure functions of arrays, so they jit; none changes training.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax

from fnn import activation_layers
from fnn.protocol import Layer

#: A unit is saturated outside these outputs, where the activation's slope is
#: below 4% (sigmoid: 4 s (1 - s) at s = 0.01) or 2% (tanh: 1 - 0.99**2) of
#: its peak.
SATURATION = {"Sigmoid": (0.01, 0.99), "Tanh": (-0.99, 0.99)}
#: Default thresholds of :func:`gradient_flags` on a layer's gradient norm.
VANISHING, EXPLODING = 1e-7, 1e3


def unwrap(layer: Layer) -> Layer:
    """The layer inside any ``manual_vjp`` wrappers (same params and maths)."""
    while layer.kind == "manual_vjp":
        layer = layer.layers[0]
    return layer


def is_chain(layer: Layer) -> bool:
    """Whether ``layer`` is a ``serial`` chain (also under ``manual_vjp``).

    Read from the protocol's ``Layer.kind``, never from the name string.
    """
    return unwrap(layer).kind == "serial"


def kind_of(layer: Layer) -> str | None:
    """``"Relu"``, ``"Sigmoid"``, ``"Tanh"``, ``"Softmax"``, or ``None`` for others.

    Decided by identity with the layer values of :mod:`fnn.activation_layers`
    (their ``backward`` function, which ``manual_vjp`` keeps), never by name.
    """
    for name in ("Relu", "Sigmoid", "Tanh", "Softmax"):
        value = getattr(activation_layers, name)
        if layer is value or layer.backward is value.backward:
            return name
    return None


def _entries(tree):
    """``(key string, subtree)`` per top-level entry of a gradient or param tree."""
    if isinstance(tree, (tuple, list)):
        items = [(jax.tree_util.SequenceKey(i), g) for i, g in enumerate(tree)]
    elif isinstance(tree, dict):
        items = [(jax.tree_util.DictKey(k), g) for k, g in tree.items()]
    else:
        return [("(root)", tree)]
    return [(jax.tree_util.keystr((k,)), g) for k, g in items if jax.tree.leaves(g)]


def grad_norms(grads) -> dict[str, jax.Array]:
    """The L2 norm of each layer's gradient, keyed like ``'[2]'`` or ``"['w']"``.

    ``norms[layer] = sqrt(sum over the layer's leaves of sum g**2)``. For a
    ``serial`` model's gradient (a tuple, one entry per layer) this is one
    norm per layer; layers without parameters are left out. Any other tree
    gives one norm per top-level entry (a bare array: one, ``"(root)"``).

    Args:
      grads: a gradient tree shaped like the model's ``params``.

    Returns:
      A dict from entry key to a scalar array.

    Example:
      >>> import jax.numpy as jnp
      >>> from fnn import diagnostics
      >>> grads = ({"w": jnp.array([3.0, 4.0])}, (), {"w": jnp.ones(4)})
      >>> {k: float(v) for k, v in diagnostics.grad_norms(grads).items()}
      {'[0]': 5.0, '[2]': 2.0}

    Norms of float16 or bfloat16 gradients are computed, and returned, in
    float32.
    """
    return {key: optax.tree.norm(at_least_float32(g)) for key, g in _entries(grads)}


def at_least_float32(tree):
    """``tree`` with float16/bfloat16 leaves in float32: their sum of squares
    overflows float16 (max 65504) from a norm of 256 on, reading as inf."""
    return jax.tree.map(
        lambda g: jnp.asarray(g, jnp.promote_types(jnp.result_type(g), jnp.float32)),
        tree,
    )


def update_ratios(updates, params) -> dict[str, jax.Array]:
    """``|update| / |params|`` per layer: how far one step moves each layer.

    With ``u`` the optimizer's update (``params_new - params``) and ``w`` the
    parameters, both restricted to one layer's leaves, the ratio is
    ``sqrt(sum u**2) / sqrt(sum w**2)``; a layer whose parameters are all 0
    gets ``inf`` if it moves and ``nan`` if it does not.

    Args:
      updates: the optimizer's updates (``optimizer.update(...)[0]``), or the
        difference of two parameter trees, shaped like ``params``.
      params: the parameters before the step.

    Returns:
      A dict keyed like :func:`grad_norms`, one scalar per layer with
      parameters.
    """
    sizes = grad_norms(params)
    return {key: norm / sizes[key] for key, norm in grad_norms(updates).items()}


def gradient_flags(
    norms: dict, *, vanishing: float = VANISHING, exploding: float = EXPLODING
) -> dict[str, str]:
    """Reads per-layer gradient norms as ``"vanishing"``, ``"ok"`` or ``"exploding"``.

    A layer is ``"vanishing"`` when its norm is below ``vanishing`` (its
    weights barely learn: the typical picture of sigmoid layers deep in a
    plain network), ``"exploding"`` when above ``exploding`` or not finite.
    The thresholds are absolute, so set them for your loss's scale.

    Args:
      norms: ``{layer: norm}``, as :func:`grad_norms` returns (concrete
        values: this runs on the host, outside ``jit``).
      vanishing: the norm below which a layer's gradient has vanished.
      exploding: the norm above which it has exploded.

    Returns:
      ``{layer: flag}`` with the keys of ``norms``.
    """

    def flag(norm):
        norm = float(norm)
        if not norm <= exploding:  # NaN and inf explode too
            return "exploding"
        return "vanishing" if norm < vanishing else "ok"

    return {key: flag(norm) for key, norm in norms.items()}


def _stuck_units(kind: str, y: jax.Array) -> jax.Array:
    """The fraction of units (last axis) stuck on every example and position."""
    if kind == "Relu":
        stuck = y <= 0
    else:
        low, high = SATURATION[kind]
        stuck = (y <= low) | (y >= high)
    per_unit = jnp.all(stuck.reshape(-1, y.shape[-1]), axis=0)
    return jnp.mean(per_unit)


def _walk(model, params, state, x, key, train, prefix, out):
    """Runs ``model`` layer by layer, recording every activation layer's figure."""
    if not is_chain(model):
        kind = kind_of(model)
        y, _ = model.apply(params, state, x, key=key, train=train)
        if kind in ("Relu", "Sigmoid", "Tanh"):
            figure = "relu_dead" if kind == "Relu" else f"{kind.lower()}_saturated"
            out[prefix or "(root)"] = {figure: _stuck_units(kind, y)}
        return y
    model = unwrap(model)  # manual_vjp around a chain: the chain itself
    keys = (
        [None] * len(model.layers)
        if key is None
        else jax.random.split(key, len(model.layers))
    )
    for i, (layer, p, s, k) in enumerate(zip(model.layers, params, state, keys)):
        x = _walk(layer, p, s, x, k, train, f"{prefix}[{i}]", out)
    return x


def activation_health(
    model: Layer, params, state, x, *, key=None, train: bool = False
) -> dict[str, dict]:
    """Dead ReLU units and saturated sigmoid/tanh units, per activation layer.

    On the batch ``x``, a *unit* is one index of the layer's last axis (a
    feature of a dense layer, a channel of a convolution), taken over every
    example and position:

    - a ReLU unit is *dead* when its output is 0 everywhere: its slope is 0,
      so no gradient reaches the weights feeding it, and it stays dead;
    - a sigmoid unit is *saturated* when its output is outside
      ``[0.01, 0.99]`` everywhere, a tanh unit outside ``[-0.99, 0.99]``:
      there the slope ``s (1 - s)`` is below 4% of its peak (``1 - tanh**2``
      below 2%), and the unit learns 25 (50) times slower, or slower still.

    Args:
      model: a ``serial`` model (nested chains are walked; other layers and
        combinators are run as one block and not looked into).
      params, state: the model's.
      x: a batch of inputs; the larger, the more trustworthy the fractions.
      key: PRNG key, for dropout when ``train`` is True (each layer gets a
        key split from it: the masks are not those of ``model.apply``).
      train: run in training mode.

    Returns:
      ``{path: {"relu_dead": fraction}}``, ``{path: {"sigmoid_saturated":
      fraction}}`` or ``{path: {"tanh_saturated": fraction}}``, one entry per
      activation layer, ``path`` as in :func:`grad_norms` (``"[1]"``, nested
      ``"[2][0]"``), each fraction a scalar array in ``[0, 1]`` (no strings,
      so the whole function jits).
    """
    out: dict[str, dict] = {}
    _walk(model, params, state, x, key, train, "", out)
    return out


def snapshot(
    model: Layer,
    loss,
    optimizer: optax.GradientTransformation,
    params,
    state,
    opt_state,
    x,
    y,
    *,
    key=None,
    method: str = "autodiff",
    regularizer=None,
) -> dict[str, dict]:
    """Every per-layer figure of this module, for one batch, changing nothing.

    Computes the gradient on ``(x, y)`` as a training step would, the update
    ``optimizer`` would make from it (the returned ``opt_state`` is thrown
    away), and the activations in evaluation mode. Pure: jit it with the
    model, loss and optimizer closed over, e.g. once per epoch in ``fit``,
    outside the training step, so the step's program does not change.

    Args:
      model, loss: the network and its loss.
      optimizer: the training optimizer (its update gives the ratios).
      params, state, opt_state: the current training state.
      x, y: one batch.
      key: PRNG key for dropout in the gradient.
      method: the gradient method, ``"autodiff"`` or ``"manual"``.
      regularizer: as for :func:`fnn.backprop.value_and_grad`.

    Returns:
      ``{"grad_norm": grad_norms(grads), "update_ratio": update_ratios(
      updates, params), "activations": activation_health(model, params,
      state, x)}``; read ``gradient_flags(result["grad_norm"])`` on the host.
    """
    from fnn import backprop  # imports this module: resolved at call time

    grad_fn = backprop.value_and_grad(model, loss, method, regularizer=regularizer)
    (value, _), grads = grad_fn(params, state, x, y, key=key)
    updates, _ = optax.with_extra_args_support(optimizer).update(
        grads, opt_state, params, value=value
    )
    return {
        "grad_norm": grad_norms(grads),
        "update_ratio": update_ratios(updates, params),
        "activations": activation_health(model, params, state, x),
    }


def _in_layer_order(per_layer: dict) -> dict:
    """``per_layer`` with its keys in the model's order (``"[2]"`` before
    ``"[10]"``): a jitted function returns dicts sorted as strings."""

    def order(path: str):
        return [(0, int(p), "") if p.isdigit() else (1, 0, p)
                for p in re.findall(r"[^\[\]]+", path)]  # fmt: skip

    return {k: per_layer[k] for k in sorted(per_layer, key=order)}


def recorder(
    model: Layer,
    loss,
    optimizer: optax.GradientTransformation,
    *,
    method: str = "autodiff",
    regularizer=None,
    vanishing: float = VANISHING,
    exploding: float = EXPLODING,
):
    """What ``fit(..., diagnostics=True)`` calls after each epoch.

    :func:`snapshot` is jitted once here, apart from the training step, whose
    program stays the same with or without diagnostics.

    Args:
      model, loss, optimizer, method, regularizer: as for :func:`snapshot`.
      vanishing, exploding: the thresholds of :func:`gradient_flags`.

    Returns:
      ``record(history, carry, batch, key)``: computes the snapshot of
      ``carry = (params, state, opt_state)`` on ``batch = (x, y)`` and
      appends, as Python floats, ``grad_norm``, ``update_ratio``,
      ``activations`` and ``gradient_flags`` (one dict per call) to the
      lists of ``history`` under those keys.
    """

    @jax.jit
    def snap(params, state, opt_state, x, y, key):
        return snapshot(model, loss, optimizer, params, state, opt_state, x, y,
                        key=key, method=method, regularizer=regularizer)  # fmt: skip

    def record(history: dict, carry, batch, key) -> None:
        figures = {
            name: _in_layer_order(jax.tree.map(float, per_layer))
            for name, per_layer in jax.device_get(snap(*carry, *batch, key)).items()
        }
        figures["gradient_flags"] = gradient_flags(
            figures["grad_norm"], vanishing=vanishing, exploding=exploding
        )
        for name in ("grad_norm", "update_ratio", "activations", "gradient_flags"):
            history.setdefault(name, []).append(figures[name])

    return record
