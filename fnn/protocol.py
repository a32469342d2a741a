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

Values and constructors
-----------------------

A :class:`Layer` is a value. Layers that take no options at all are
module-level values (``Relu``, ``Tanh``, ``GeluTanh``); every other layer is
built by calling its constructor (``Dense(10)``, ``Flatten()``,
``LeakyRelu(alpha=0.1)``). A layer itself is never called: ``Relu()`` and
``model(x)`` raise a :class:`TypeError` that names what to write instead.

A layer's ``name`` is the call that builds it: required options by
position, every other option as ``key=value`` only when it differs from its
default (``Dense(256, use_bias=False)``); see :func:`layer_name`.

The checks in this module run on shapes only, at ``init`` or at trace time:
under ``jax.jit`` they cost nothing when the step runs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
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
BATCH_AXIS_HINT = "did you pass x.shape instead of x.shape[1:] to init?"
_NO_X = object()  # apply's marker for a forgotten argument


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
      name: the call that builds the layer (see :func:`layer_name`); how
        the layer reads in errors, summaries and reports.
      layers: the child layers of a combinator, for :func:`summary`.
      scans_well: ``False`` for a layer whose XLA program runs markedly
        slower inside a ``lax.scan`` body than at the top level on some
        backend (convolutions on XLA:CPU). ``fit`` reads it, through
        ``fnn._backend.scan_by_default``, to pick a compiled-scan epoch or a
        loop of jitted steps; combinators need not set it, their children
        are walked.
      kind: what the layer is, for tools that walk a model: ``"serial"``
        and ``"residual"`` for the blocks :func:`fnn.layers.summary`
        expands, ``"manual_vjp"`` for :func:`fnn.backprop.manual_vjp`'s
        wrapper (its one child is the wrapped layer), ``"layer"``
        otherwise. Never parse ``name`` for this.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from fnn.dense import Dense
      >>> layer = Dense(2)
      >>> out_shape, params, state = layer.init(jax.random.key(0), (3,))
      >>> out_shape, jax.tree.map(jnp.shape, params), state
      ((2,), {'b': (2,), 'w': (3, 2)}, ())
      >>> x = jnp.ones((4, 3))
      >>> layer.apply(params, state, x)[0].shape  # (y, new_state)
      (4, 2)
      >>> y, state, cache = layer.forward(params, state, x)
      >>> dparams, dx = layer.backward(params, cache, jnp.ones_like(y))
      >>> y.shape, dparams["w"].shape, dx.shape
      ((4, 2), (3, 2), (4, 3))
      >>> bool(jnp.allclose(dparams["w"], x.T @ jnp.ones_like(y)))  # x^T dy
      True
    """

    init: Callable[..., tuple[Any, Params, State]]
    forward: Callable[..., tuple[Any, State, Cache]]
    backward: Callable[[Params, Cache, Any], tuple[Params, Any]]
    name: str = "layer"
    layers: tuple = ()
    scans_well: bool = True
    kind: str = "layer"

    def apply(self, params, state, x=_NO_X, *, key=None, train=False):
        """Runs the layer: ``forward`` without the cache.

        Args:
          params, state: what ``init`` returned (``()`` when there is none).
          x: the input, with a leading batch axis.
          key: PRNG key for layers that draw randomness in training.
          train: training behaviour (dropout, batch statistics).

        Returns:
          ``(y, new_state)``.

        Raises:
          TypeError: when ``state`` was left out, ``apply(params, x)``.
        """
        if x is _NO_X:
            raise TypeError(
                f"{self.name}: apply takes (params, state, x); got two arguments, "
                "so the state is missing. Write y, state = model.apply(params, "
                "state, x) with the state that init returned (() when the "
                "model has none)"
            )
        y, new_state, _ = self.forward(params, state, x, key=key, train=train)
        return y, new_state

    def __call__(self, *args, **kwargs):
        if args or kwargs:
            raise TypeError(
                f"{self.name} is not called on data: write y, state = "
                "model.apply(params, state, x), with _, params, state = "
                "model.init(key, x.shape[1:])"
            )
        raise TypeError(
            f"{self.name} is already a layer, not a constructor: write "
            f"{self.name} without the ()"
        )

    def __repr__(self):
        return self.name


# --------------------------------------------------------------------------
# shapes at init


def is_shape(shape) -> bool:
    """True for a per-example shape: a tuple of non-negative ints."""
    return isinstance(shape, tuple) and all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 0
        for d in shape
    )


def check_shape(name: str, shape, *, min_rank: int = 0) -> Shape:
    """Validates a per-example ``input_shape`` given to ``init``.

    Args:
      name: the layer, for the message.
      shape: a tuple (or list) of non-negative ints, without the batch axis;
        NumPy integers are accepted.
      min_rank: the least rank the layer accepts.

    Returns:
      ``shape`` as a tuple of Python ints.

    Raises:
      ShapeError: for anything else. An array given in place of its shape
        is named by its shape, never printed.
    """
    if isinstance(shape, list):
        shape = tuple(shape)
    if not is_shape(shape):
        got = short_repr(shape)
        if hasattr(shape, "shape"):
            got += "; pass a shape, e.g. x.shape[1:] for a batch x"
        elif isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
            got += f"; write ({shape},)"
        raise ShapeError(
            f"{name}: input_shape must be a tuple of non-negative ints without "
            f"the batch axis, e.g. (784,) or (28, 28, 1); got {got}"
        )
    shape = tuple(int(d) for d in shape)
    if len(shape) < min_rank:
        raise ShapeError(
            f"{name}: expected an input of rank >= {min_rank} per example, "
            f"got shape {shape}"
        )
    return shape


def short_repr(value, limit: int = 80) -> str:
    """``repr(value)`` for a message: an array by its shape, text cut at ``limit``."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_sequence_shape(name: str, shape) -> Shape:
    """Validates a per-example ``(T, d)`` sequence shape given to ``init``."""
    shape = check_shape(name, shape)
    if len(shape) != 2:
        raise ShapeError(
            f"{name}: expected input (T, d) per example (a sequence of "
            f"d-vectors), got {shape}"
        )
    return shape


# --------------------------------------------------------------------------
# inputs and parameters at trace time


def _fits(actual: Shape, expected) -> bool:
    expected = tuple(expected)
    if expected[:1] == (...,):
        rest = expected[1:]
        tail = actual[len(actual) - len(rest) :]
        return len(actual) >= len(rest) and _fits(tail, rest)
    return len(actual) == len(expected) and all(
        e is None or e == -1 or isinstance(e, str) or e == a
        for e, a in zip(expected, actual)
    )


def _show(expected) -> str:
    shown = [
        "..." if e is ... else "?" if e is None or e == -1 else str(e) for e in expected
    ]
    comma = "," if len(shown) == 1 and shown[0] != "..." else ""
    return f"({', '.join(shown)}{comma})"


def check_input(name: str, x, expected, *, what: str = "input", hint=None) -> None:
    """Checks at trace time that a batch ``x`` fits a per-example shape.

    The one input check of every layer: it reads shapes only, so under
    ``jax.jit`` it runs once, when the step is traced, and costs nothing
    afterwards.

    Args:
      name: the layer, e.g. ``"Dense(10)"``.
      x: the batch, with a leading batch axis.
      expected: the per-example shape. Entries: an int (that size), a
        string (any size, shown as that letter: ``"T"``, ``"H"``), ``None``
        or ``-1`` (any size, shown as ``?``); a leading ``...`` matches any
        number of leading axes.
      what: what ``x`` is, for the message (``"input"``, ``"keys"``).
      hint: text appended after ``"; "``, or a function of the per-example
        shape returning such text or ``None``.

    Raises:
      ShapeError: e.g. ``Dense(10): expected input (..., 784), got
        (28, 28, 1) per example (batch shape (2, 28, 28, 1)); add Flatten()
        before it``.
      TypeError: when ``x`` is no array (a list, say).
    """
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise TypeError(
            f"{name}: expected {what} as an array, got a {type(x).__name__}; "
            "convert it with jnp.asarray"
        )
    shape = tuple(x.shape)
    if len(shape) >= 1 and _fits(shape[1:], expected):
        return
    got = (
        f"{shape[1:]} per example (batch shape {shape})"
        if shape
        else "a scalar without a batch axis"
    )
    message = f"{name}: expected {what} {_show(expected)}, got {got}"
    if callable(hint):
        hint = hint(shape[1:]) if shape else None
    raise ShapeError(message + (f"; {hint}" if hint else ""))


def check_leaves(name: str, what: str, tree, expected) -> None:
    """Checks at trace time that ``params`` or ``state`` fit a layer.

    Args:
      name: the layer, for the message.
      what: ``"params"`` or ``"state"``.
      tree: what the caller passed.
      expected: ``()`` for a layer without any, or a dict from key to
        shape (``None`` entries in a shape match any size; ``None`` for the
        whole shape takes any subtree): the dict must have exactly these
        keys and its arrays these shapes.

    Raises:
      ShapeError: naming the first key or shape that differs, so that the
        parameters of another model (or of this one built for another
        input) never broadcast into a silent wrong answer.
    """
    if not expected:
        if jax.tree.leaves(tree):
            raise ShapeError(
                f"{name}: has no {what}, got {_describe_tree(tree)}; pass the "
                f"{what} that this model's init returned"
            )
        return
    if not isinstance(tree, Mapping) or set(tree) != set(expected):
        raise ShapeError(
            f"{name}: {what} must be a dict with keys {sorted(expected)}, got "
            f"{_describe_tree(tree)}; were they made by another model's init?"
        )
    for k, want in expected.items():
        if want is None:
            continue
        got = tuple(jnp.shape(tree[k]))
        if not _fits(got, want):
            raise ShapeError(
                f"{name}: {what}[{k!r}] has shape {got}, but this layer needs "
                f"{_show(want)}; were they made by another model's init?"
            )


def _describe_tree(tree) -> str:
    if isinstance(tree, Mapping):
        return f"a dict with keys {sorted(map(str, tree))}"
    if isinstance(tree, (tuple, list)):
        return f"a {type(tree).__name__} of length {len(tree)}"
    return f"a {type(tree).__name__}"


def check_key(name: str, key):
    """Checks that ``key`` is a PRNG key, not a seed.

    Accepts typed keys (``jax.random.key(0)``) and raw ``uint32`` ones
    (``jax.random.PRNGKey(0)``).

    Raises:
      TypeError: for an int seed or anything else, saying how to make a key.
    """
    typed = hasattr(key, "dtype") and jax.dtypes.issubdtype(
        key.dtype, jax.dtypes.prng_key
    )
    raw = hasattr(key, "dtype") and key.dtype == jnp.uint32 and key.shape[-1:] == (2,)
    if not (typed or raw):
        got = (
            f"{type(key).__name__} {key!r}"
            if isinstance(key, (numbers.Number, str, type(None)))
            else f"a {type(key).__name__}"
        )
        raise TypeError(
            f"{name}: expected a PRNG key, got {got}; make one from a seed "
            "with jax.random.key(seed)"
        )
    return key


def require_key(name: str, key):
    """Returns ``key`` for a layer that needs randomness in training.

    Raises:
      MissingKeyError: when the key is ``None``.
      TypeError: when it is not a PRNG key (an int seed, say).
    """
    if key is None:
        raise MissingKeyError(NO_KEY_MSG.format(name=name))
    return check_key(name, key)


def size(shape: Shape) -> int:
    """Number of elements of a per-example shape."""
    return math.prod(shape)


def per_channel(v, ndim: int):
    """Reshapes a ``(C,)`` vector to broadcast against a rank-``ndim`` array.

    Explicit, because fnn runs under ``jax_numpy_rank_promotion="raise"`` in
    its tests, where an implicit ``(N, C) + (C,)`` is an error.
    """
    return v.reshape((1,) * (ndim - 1) + v.shape[-1:])


def shape_carrier(x, axes=None):
    """A zero-size array that carries ``x``'s per-example shape in a cache.

    Caches must hold arrays (they cross ``jax.custom_vjp``), not Python
    ints; an array of shape ``(0, *x.shape[1:])`` costs no memory, and its
    ``shape[1:]`` (or, with ``axes``, ``shape[1:]`` is ``x.shape[a]`` for
    each ``a`` in ``axes``) gives the shape back in the backward pass.
    """
    kept = x.shape[1:] if axes is None else tuple(x.shape[a] for a in axes)
    return jnp.zeros((0, *kept), x.dtype)


def per_example_shape(x):
    """The per-example shape of a batch ``x``, or a tuple of them for tuples."""
    if isinstance(x, (tuple, list)):
        return tuple(per_example_shape(xi) for xi in x)
    return tuple(x.shape[1:])


# Re-exported: constructor options and whole-model checks live in their own
# modules (which import from this one, hence the imports at the end).
from fnn.options import check_positive_int, check_real, layer_name  # noqa: E402, F401
from fnn.params_check import batch_axis_hint, check_params  # noqa: E402, F401
