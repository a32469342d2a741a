"""The layer protocol: a layer is an immutable record of four pure functions.

Every fnn layer — a ``Dense``, a ``BatchNorm``, a whole ``serial`` network —
is a :class:`Layer`. It holds no arrays: options (feature counts, rates,
strides) live in the closures that built it, arrays live in the ``params``
and ``state`` pytrees that the caller passes in and gets back.

The four functions
------------------

``init(key, input_shape) -> (output_shape, params, state)``
    ``input_shape`` and ``output_shape`` are per-example shapes (no batch
    axis); for layers that take several inputs (``fan_in_sum``, ``parallel``)
    they are tuples of shapes. ``params`` are trained by gradients, ``state``
    is not (batch-norm running statistics). Either is ``()`` when the layer
    has none. Shape mistakes are caught here and named.

``forward(params, state, x, *, key=None, train=False) -> (y, new_state, cache)``
    ``x`` carries one leading batch axis. ``cache`` holds whatever the
    backward pass needs (inputs, masks, batch statistics). ``key`` feeds
    randomness (dropout); a layer that needs one in training and gets none
    raises :class:`MissingKeyError`. Shape checks run here too, at trace
    time, so they also fire under ``jax.jit``.

``backward(params, cache, dy) -> (dparams, dx)``
    The hand-written vector-Jacobian product: maps the output cotangent
    ``dy`` to the cotangents of ``params`` (same tree structure) and of
    ``x``. It is written from the layer's derivative, never by calling
    ``jax.grad`` or ``jax.vjp`` on ``forward``.

``apply(params, state, x, *, key=None, train=False) -> (y, new_state)``
    ``forward`` without the cache. One forward definition serves both
    gradient paths: under ``jit`` the unused cache is dead code and costs
    nothing.

Layers compose with the combinators in :mod:`fnn.combinators`; a composite's
backward calls its children's backward in reverse order, adding cotangents
where one value feeds several consumers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Shape = tuple[int, ...]
Params = Any  # a pytree of arrays, () when the layer has none
State = Any  # a pytree of arrays that gradients do not train, () when none
Cache = Any  # whatever backward needs from forward

NO_KEY_MSG = (
    "{name}: needs a PRNG key in training. Pass one, e.g. "
    "model.apply(params, state, x, key=jax.random.key(0), train=True), "
    "or call it with train=False for evaluation."
)


class ShapeError(ValueError):
    """An input does not fit a layer: raised at init or at trace time."""


class MissingKeyError(ValueError):
    """A layer that needs randomness was asked to train without a key."""


class Layer(NamedTuple):
    """A layer: pure functions over explicit ``params`` and ``state``.

    Attributes:
      init: ``(key, input_shape) -> (output_shape, params, state)``.
      forward: ``(params, state, x, *, key=None, train=False)
        -> (y, new_state, cache)``.
      backward: ``(params, cache, dy) -> (dparams, dx)``, hand-written.
      name: how the layer reads in errors, summaries and reports.
      layers: the child layers of a combinator, for :func:`summary`.
    """

    init: Callable[..., tuple[Any, Params, State]]
    forward: Callable[..., tuple[Any, State, Cache]]
    backward: Callable[[Params, Cache, Any], tuple[Params, Any]]
    name: str = "layer"
    layers: tuple = ()

    def apply(self, params, state, x, *, key=None, train=False):
        """Runs the layer: ``forward`` without the cache."""
        y, new_state, _ = self.forward(params, state, x, key=key, train=train)
        return y, new_state

    def __call__(self):
        # ``Relu`` and ``Relu()`` name the same layer, so users need not
        # remember which activation layers take options.
        return self

    def __repr__(self):
        return self.name


def is_shape(shape) -> bool:
    """True for a per-example shape: a tuple of non-negative ints."""
    return isinstance(shape, tuple) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    )


def check_shape(name: str, shape, *, min_rank: int = 0) -> Shape:
    """Validates a per-example ``input_shape`` given to ``init``."""
    if isinstance(shape, list):
        shape = tuple(shape)
    if not is_shape(shape):
        raise ShapeError(
            f"{name}: input_shape must be a tuple of non-negative ints without "
            f"the batch axis, e.g. (784,) or (28, 28, 1); got {shape!r}"
        )
    if len(shape) < min_rank:
        raise ShapeError(
            f"{name}: expected an input of rank >= {min_rank} per example, "
            f"got shape {shape}"
        )
    return shape


def check_sequence_shape(name: str, shape) -> Shape:
    """Validates a per-example ``(T, d)`` sequence shape given to ``init``."""
    shape = check_shape(name, shape)
    if len(shape) != 2:
        raise ShapeError(
            f"{name}: expected input (T, d) per example (a sequence of "
            f"d-vectors), got {shape}"
        )
    return shape


def check_input(name: str, x, expected: Shape, *, what: str = "input") -> None:
    """Checks at trace time that ``x`` (with a batch axis) fits ``expected``.

    ``expected`` is the per-example shape; ``-1`` in it matches any size.
    """
    actual = tuple(x.shape[1:]) if x.ndim >= 1 else None
    fits = actual is not None and len(actual) == len(expected)
    fits = fits and all(e in (-1, a) for e, a in zip(expected, actual))
    if not fits:
        shown = tuple("?" if e == -1 else e for e in expected)
        raise ShapeError(
            f"{name}: expected {what} of shape (batch, {', '.join(map(str, shown))}"
            f"{',' if len(shown) == 1 else ''}), got {tuple(x.shape)}"
        )


def check_positive_int(name: str, what: str, value) -> int:
    """Validates a constructor option that must be a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: {what} must be a positive int, got {value!r}")
    return value


def require_key(name: str, key):
    """Raises :class:`MissingKeyError` when a training layer got no key."""
    if key is None:
        raise MissingKeyError(NO_KEY_MSG.format(name=name))
    return key


def size(shape: Shape) -> int:
    """Number of elements of a per-example shape."""
    return math.prod(shape)


def per_channel(v, ndim: int):
    """Reshapes a ``(C,)`` vector to broadcast against a rank-``ndim`` array.

    Explicit, because fnn runs under ``jax_numpy_rank_promotion="raise"`` in
    its tests, where an implicit ``(N, C) + (C,)`` is an error.
    """
    return v.reshape((1,) * (ndim - 1) + v.shape[-1:])


def per_example_shape(x):
    """The per-example shape of a batch ``x``, or a tuple of them for tuples."""
    if isinstance(x, (tuple, list)):
        return tuple(per_example_shape(xi) for xi in x)
    return tuple(x.shape[1:])


def check_params(layer: Layer, params, state, input_shape) -> None:
    """Checks that ``params`` and ``state`` fit ``layer`` for ``input_shape``.

    Compares tree structure and leaf shapes with what ``layer.init`` returns
    (traced with ``jax.eval_shape``: nothing is allocated), and names the
    first leaf that differs. Catches parameters from another model, or from
    the same model built for another input size, before they meet an XLA
    error or, worse, broadcast into silent garbage.
    """
    _, want_params, want_state = jax.eval_shape(
        lambda key: layer.init(key, input_shape), jax.random.key(0)
    )
    for what, got, want in (
        ("params", params, want_params),
        ("state", state, want_state),
    ):
        got_leaves = jax.tree_util.tree_flatten_with_path(got)[0]
        want_leaves = jax.tree_util.tree_flatten_with_path(want)[0]
        got_paths = [jax.tree_util.keystr(p) for p, _ in got_leaves]
        want_paths = [jax.tree_util.keystr(p) for p, _ in want_leaves]
        if got_paths != want_paths:
            missing = [p for p in want_paths if p not in got_paths]
            extra = [p for p in got_paths if p not in want_paths]
            raise ValueError(
                f"{layer.name}: {what} do not match the model: missing "
                f"{missing[:3] or 'nothing'}, unexpected {extra[:3] or 'nothing'}. "
                f"Were they made by another model's init?"
            )
        for (path, g), (_, w) in zip(got_leaves, want_leaves):
            if tuple(jnp.shape(g)) != tuple(w.shape):
                raise ValueError(
                    f"{layer.name}: {what}{jax.tree_util.keystr(path)} has shape "
                    f"{tuple(jnp.shape(g))}, but for input shape {input_shape} the "
                    f"model needs {tuple(w.shape)}"
                )
