"""Weight initialisers: JAX's own, re-exported under one roof, with names.

Each is ``init(key, shape, dtype=jnp.float32) -> array`` (the default dtype
is the factory's ``dtype=`` where one is given, as in JAX). Xavier (Glorot)
initialisation keeps activation variance constant for tanh/sigmoid
networks; He (Kaiming) doubles it for ReLU networks, whose units are zero
half of the time.

The functions are ``jax.nn.initializers``' own, wrapped in
:class:`Initializer` so that they read well where they show: in
``help(fnn.layers.Dense)`` (``kernel_init=lecun_normal()``), in layer names
(``Dense(3, kernel_init=he_normal())``) and in error messages. Any plain
``(key, shape, dtype) -> array`` function works wherever one is expected.

Drawing without a compile per shape: called eagerly, JAX compiles one XLA
program per random draw and shape (the truncated-normal sampler alone takes
0.2-1 s to compile on a CPU), which was most of the time a model's ``init``
took. With JAX's default threefry keys (``jax_threefry_partitionable``, on
by default in JAX 0.10) the random bits of a draw depend only on the key and
each value's flat position, so the named initialisers here draw float32
values in fixed chunks of :data:`CHUNK` positions, one compiled program for
every shape, and cut and scale them on the host: the values are *bitwise
the same* as ``jax.nn.initializers``' (tests check it), from the same
distributions. Under ``jit``/``vmap``, for other key kinds, other dtypes, or
if a JAX version lacks the pieces, they call JAX's initialiser directly.
:func:`split` does the same for ``jax.random.split``: the layers' ``init``
splits keys with it, one compiled program for every count.

Example:
  >>> from fnn import initializers
  >>> initializers.he_normal()
  he_normal()
  >>> initializers.normal(0.5) == initializers.normal(0.5)
  True
"""

from __future__ import annotations

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.nn import initializers as _jax

# Values per compiled draw: one program serves every shape; a leaf of n
# values costs ceil(n / CHUNK) calls of it (~1 ms each on a CPU core).
CHUNK = 1 << 16
_TRUNCATED_NORMAL_STD = 0.87962566103423978  # std of N(0, 1) cut to (-2, 2)


def _offset_bits(key_data, bit_width, shape):
    """Threefry bits of flat positions ``offset .. offset + n - 1``.

    ``key_data`` is ``(k1, k2, offset_hi, offset_lo)``: JAX's threefry key
    and a 64-bit offset. Position ``i`` gets the bits JAX's partitionable
    threefry gives position ``i`` of any draw with key ``(k1, k2)``:
    ``threefry2x32(k, (hi(i), lo(i)))``, its two words xor-ed for 32 bits.
    """
    k1, k2, hi, lo = (key_data[i] for i in range(4))
    count = jax.lax.iota(np.uint32, math.prod(shape))
    lo_count = lo + count
    hi_count = hi + (lo_count < lo).astype(np.uint32)  # carry
    bits1, bits2 = _xr.threefry2x32_p.bind(k1, k2, hi_count, lo_count)
    if bit_width == 64:
        return (bits1.astype(np.uint64) << np.uint64(32)) | bits2.astype(np.uint64)
    bits = bits1 ^ bits2
    return bits if bit_width == 32 else bits.astype(np.dtype(f"uint{bit_width}"))


def _only_bits(*args, **kwargs):
    raise NotImplementedError("fnn's chunked-draw keys only draw random bits")


try:
    from jax.extend import random as _xr

    _OFFSET_IMPL = _xr.define_prng_impl(
        key_shape=(4,),
        seed=_only_bits,
        split=_only_bits,
        random_bits=_offset_bits,
        fold_in=_only_bits,
        name="fnn_threefry_offset",
        tag="fnn",
    )
except (ImportError, AttributeError, TypeError, ValueError):  # old/new JAX
    _OFFSET_IMPL = None


@functools.partial(jax.jit, static_argnums=(1, 2))
def _chunk(key_data, distribution, bounds):
    """``CHUNK`` float32 values of ``distribution`` at an offset (key_data)."""
    key = jax.random.wrap_key_data(key_data, impl=_OFFSET_IMPL)
    shape, low, high = (CHUNK,), *bounds
    if distribution == "truncated_normal":
        return jax.random.truncated_normal(key, low, high, shape, jnp.float32)
    if distribution == "normal":
        return jax.random.normal(key, shape, jnp.float32)
    return jax.random.uniform(key, shape, jnp.float32, low, high)


def _eager(key) -> bool:
    """True outside every trace (jit, vmap, grad), with a concrete key."""
    if isinstance(key, jax.core.Tracer):
        return False
    try:
        from jax._src import core
    except ImportError:
        return False
    return bool(getattr(core, "trace_state_clean", lambda: False)())


def _threefry_words(key):
    """The two uint32 words of a concrete threefry ``key``, or None."""
    if not getattr(jax.config, "jax_threefry_partitionable", False):
        return None
    try:
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.shape != () or str(jax.random.key_impl(key)) != "threefry2x32":
                return None
            key = jax.random.key_data(key)
        elif getattr(jax.config, "jax_default_prng_impl", None) != "threefry2x32":
            return None
        words = np.asarray(key)
    except (AttributeError, TypeError, ValueError):
        return None
    return words if words.shape == (2,) and words.dtype == np.uint32 else None


def _host_draw(key, distribution, bounds, n):
    """``n`` float32 values drawn as ``jax.random`` draws them for ``key``,
    one compiled chunk program for every ``n``; None when it cannot."""
    words = None if _OFFSET_IMPL is None else _threefry_words(key)
    if words is None:
        return None
    starts = range(0, n, CHUNK)
    calls = [
        _chunk(
            np.array([words[0], words[1], start >> 32, start & 0xFFFFFFFF], np.uint32),
            distribution,
            bounds,
        )
        for start in starts
    ]
    out = np.empty(n, np.float32)
    for start, values in zip(starts, calls):
        out[start : start + CHUNK] = np.asarray(values)[: n - start]
    return out


# Keys per compiled split: ``split(key, n)`` for every n up to this.
SPLIT_MAX = 256


@jax.jit
def _split_words(words):
    """The key words of ``jax.random.split(key, SPLIT_MAX)``: with JAX's
    partitionable threefry, key ``i`` is ``threefry2x32(key, (0, i))``."""
    count = jax.lax.iota(np.uint32, SPLIT_MAX)
    high = jnp.zeros_like(count)
    return jnp.stack(_xr.threefry2x32_p.bind(words[0], words[1], high, count), 1)


def split(key, n: int) -> tuple:
    """``tuple(jax.random.split(key, n))``: the same keys, from one
    compiled program for every ``n <= SPLIT_MAX`` when eager (JAX compiles a
    split and an unstack per ``n``).

    Args:
      key: a PRNG key (typed, or a raw uint32 pair).
      n: how many keys.

    Returns:
      A tuple of ``n`` keys of ``key``'s kind.
    """
    words = None
    if 0 < n <= SPLIT_MAX and _OFFSET_IMPL is not None and _eager(key):
        words = _threefry_words(key)
    if words is None:
        return tuple(jax.random.split(key, n))
    table = np.asarray(_split_words(words))[:n]
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return tuple(jax.random.wrap_key_data(w, impl="threefry2x32") for w in table)
    return tuple(jnp.asarray(w) for w in table)


def _compute_fans(shape, in_axis=-2, out_axis=-1, batch_axis=()):
    """Fan-in and fan-out, as ``jax.nn.initializers`` computes them."""

    def axes_size(axes):
        if isinstance(axes, int):
            return shape[axes]
        return math.prod(shape[i] for i in axes)

    in_size, out_size = axes_size(in_axis), axes_size(out_axis)
    receptive = math.prod(shape) / in_size / out_size / axes_size(batch_axis)
    return in_size * receptive, out_size * receptive


def _variance_scaling_plan(args):
    """``shape -> (distribution, bounds, factor)``: the steps of JAX's
    ``variance_scaling`` with these arguments, a standard draw times a
    float32 ``factor``."""

    def plan(shape):
        if len(shape) < 2 and args["in_axis"] == -2:
            return None  # JAX's own error message
        fan_in, fan_out = _compute_fans(
            shape, args["in_axis"], args["out_axis"], args["batch_axis"]
        )
        denominator = {
            "fan_in": fan_in,
            "fan_out": fan_out,
            "fan_avg": (fan_in + fan_out) / 2,
            "fan_geo_avg": (fan_in * fan_out) ** 0.5,
        }[args["mode"]]
        variance = np.float32(args["scale"] / denominator)
        distribution = args["distribution"]
        if distribution == "truncated_normal":
            stddev = np.sqrt(variance) / np.float32(_TRUNCATED_NORMAL_STD)
            return "truncated_normal", (-2.0, 2.0), stddev
        if distribution == "normal":
            return "normal", (None, None), np.sqrt(variance)
        if distribution == "uniform":
            return "uniform", (-1.0, 1.0), np.sqrt(np.float32(3) * variance)
        return None

    return plan


def _fixed(distribution, scale, mode):
    """The plan of a factory that fixes ``variance_scaling``'s arguments."""
    fixed = {"distribution": distribution, "scale": scale, "mode": mode}
    return lambda args: _variance_scaling_plan({**args, **fixed})


def _scaled(distribution, scale_arg, bounds=None):
    """The plan of JAX's ``normal``, ``uniform`` or ``truncated_normal``: a
    standard draw times ``jnp.array(scale, float32)``."""

    def make(args):
        cut = bounds or (args["lower"], args["upper"])
        factor = np.float32(args[scale_arg])
        return lambda shape: (distribution, cut, factor)

    return make


def _fill(args):
    """The plan of ``constant(value)``: an array full of ``value``."""
    return lambda shape: ("fill", args["value"], None)


def _fast_init(plan, key, shape, dtype):
    """``plan``'s array, made without a compile per shape, or None."""
    try:
        shape = tuple(int(d) for d in shape)
        steps = plan(shape)
        dtype = np.dtype(dtype)
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
        return None  # JAX's own initialiser says what is wrong
    if steps is None:
        return None
    kind, bounds, factor = steps
    if kind == "fill":
        value = np.asarray(bounds)
        exact = value.dtype.kind in "biu" and np.all((value == 0) | (value == 1))
        if not (dtype.kind == "f" and value.dtype.kind in "biuf") and not (
            dtype.kind in "biu" and exact
        ):
            return None  # casts and overflow as jnp.full does them
        return jnp.asarray(np.full(shape, value, dtype))
    if dtype != np.float32:
        return None
    flat = _host_draw(key, kind, bounds, math.prod(shape))
    if flat is None:
        return None
    flat *= factor  # float32 times float32, rounded as XLA rounds it
    return jnp.asarray(flat.reshape(shape))


class Initializer:
    """A JAX initialiser with a readable ``repr``, compared by that name.

    Args:
      fn: ``(key, shape, dtype) -> array``.
      name: how it reads: the call that builds it, e.g. ``"normal(0.5)"``.
      plan: optional ``shape -> (kind, bounds, factor)`` saying that ``fn``
        draws a standard ``kind`` of distribution and multiplies it by the
        float32 ``factor`` (or, kind ``"fill"``, fills with ``bounds``):
        eager calls then make the same values without a compile per shape.
      dtype: the dtype of a call that names none (as JAX's factories take
        ``dtype=``); float32 by default.
    """

    __slots__ = ("dtype", "fn", "name", "plan")

    def __init__(self, fn, name: str, plan=None, dtype=jnp.float32):
        self.fn = fn
        self.name = name
        self.plan = plan
        self.dtype = dtype

    def __call__(self, key, shape, dtype=None):
        dtype = self.dtype if dtype is None else dtype
        if self.plan is not None and _eager(key):
            out = _fast_init(self.plan, key, shape, dtype)
            if out is not None:
                return out
        return self.fn(key, shape, dtype)

    def __repr__(self):
        return self.name

    def __eq__(self, other):
        if isinstance(other, Initializer):
            return self.name == other.name
        return other is self.fn

    def __hash__(self):
        return hash(self.name)


def _named(factory, plan=None):
    """Wraps a ``jax.nn.initializers`` factory so that what it returns has a
    name; ``plan(arguments by name)`` gives its chunked-draw plan."""
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def make(*args, **kwargs):
        shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        fn = factory(*args, **kwargs)
        # A dtype= given to the factory is the calls' default, as in JAX.
        dtype = signature.bind(*args, **kwargs).arguments.get("dtype", jnp.float32)
        steps = None
        if plan is not None:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            try:
                steps = plan(bound.arguments)
            except (TypeError, ValueError):  # odd arguments: JAX's own path
                steps = None
        name = f"{factory.__name__}({', '.join(shown)})"
        return Initializer(fn, name, steps, dtype)

    return make


def draw(init, key, shape, dtype=jnp.float32):
    """Calls ``init(key, shape, dtype)``; an empty ``shape`` gives zeros.

    An array with no elements is the same whatever the draw, and the
    variance-scaling initialisers would divide by a fan-in of 0.
    """
    if 0 in tuple(shape):
        return jnp.zeros(shape, dtype)
    return init(key, shape, dtype)


constant = _named(_jax.constant, _fill)
glorot_normal = _named(_jax.glorot_normal, _fixed("truncated_normal", 1.0, "fan_avg"))
glorot_uniform = _named(_jax.glorot_uniform, _fixed("uniform", 1.0, "fan_avg"))
he_normal = _named(_jax.he_normal, _fixed("truncated_normal", 2.0, "fan_in"))
he_uniform = _named(_jax.he_uniform, _fixed("uniform", 2.0, "fan_in"))
lecun_normal = _named(_jax.lecun_normal, _fixed("truncated_normal", 1.0, "fan_in"))
lecun_uniform = _named(_jax.lecun_uniform, _fixed("uniform", 1.0, "fan_in"))
normal = _named(_jax.normal, _scaled("normal", "stddev", (None, None)))
orthogonal = _named(_jax.orthogonal)
truncated_normal = _named(_jax.truncated_normal, _scaled("truncated_normal", "stddev"))
uniform = _named(_jax.uniform, _scaled("uniform", "scale", (0.0, 1.0)))
variance_scaling = _named(_jax.variance_scaling, _variance_scaling_plan)
zeros = Initializer(_jax.zeros, "zeros", lambda shape: ("fill", 0, None))
ones = Initializer(_jax.ones, "ones", lambda shape: ("fill", 1, None))

xavier_normal = glorot_normal
xavier_uniform = glorot_uniform
kaiming_normal = he_normal
kaiming_uniform = he_uniform

__all__ = [
    "Initializer",
    "constant",
    "draw",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "ones",
    "orthogonal",
    "truncated_normal",
    "uniform",
    "variance_scaling",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
]
