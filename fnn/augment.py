"""Data augmentation: random, label-preserving changes to a batch of images.

Each constructor validates its options and returns ``aug(key, x) -> x``, a
pure function of a PRNG key and a batch ``x`` of shape ``(N, H, W, C)``
(channels last; :func:`gaussian_noise` takes any shape). It is jittable, draws
independently for every example, gives the same result for the same key, and
keeps ``x``'s shape and dtype. :func:`compose` chains several; the training
loop's ``fit(..., augment=aug)`` applies one to each training batch.

The deterministic transforms underneath, :func:`translate` and
:func:`rotate`, take explicit per-example offsets and angles.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from fnn import augment
  >>> aug = augment.compose(augment.random_shift(2), augment.random_flip())
  >>> x = jnp.ones((4, 8, 8, 1))
  >>> aug(jax.random.key(0), x).shape
  (4, 8, 8, 1)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

from fnn.protocol import ShapeError

__all__ = [
    "compose",
    "gaussian_noise",
    "random_crop",
    "random_flip",
    "random_rotation",
    "random_shift",
    "rotate",
    "translate",
]

Augment = Callable[[jax.Array, jax.Array], jax.Array]

PAD_MODES = ("constant", "edge", "reflect")

# --------------------------------------------------------------------------
# validation (options at construction, inputs at trace time)
# --------------------------------------------------------------------------


def _non_negative_int(name: str, what: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name}: {what} must be an int >= 0, got {value!r}")
    return int(value)


def _non_negative_float(name: str, what: str, value, upper=math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: {what} must be a number, got {value!r}")
    # Finite too: an infinite std would turn every element into +-inf.
    if not (0 <= value <= upper and math.isfinite(value)):
        bound = " and finite" if upper == math.inf else f" and <= {upper:g}"
        raise ValueError(f"{name}: {what} must be >= 0{bound}, got {value!r}")
    return float(value)


def _check_key(name: str, key) -> None:
    """Raises TypeError unless ``key`` is a PRNG key (typed, or raw uint32)."""
    # An int seed would otherwise fail inside jax.random ("invalid PRNG key
    # data"), naming neither the augmentation nor the fix.
    dtype = getattr(key, "dtype", None)
    if dtype is None or not (
        jnp.issubdtype(dtype, jax.dtypes.prng_key) or dtype == jnp.uint32
    ):
        raise TypeError(
            f"{name}: needs a PRNG key, e.g. aug(jax.random.key(0), x), got "
            f"{key!r}; split a fresh one for every batch"
        )


def _images(name: str, x) -> jax.Array:
    """``x`` as an array, after checking that it is ``(N, H, W, C)`` (trace time)."""
    x = jnp.asarray(x)
    if x.ndim != 4:
        hint = "; add a channel axis with x[..., None]" if x.ndim == 3 else ""
        raise ShapeError(
            f"{name}: expected a batch of images (N, H, W, C), got shape "
            f"{tuple(x.shape)}{hint}"
        )
    return x


# --------------------------------------------------------------------------
# deterministic transforms
# --------------------------------------------------------------------------


def translate(x: jax.Array, offsets: jax.Array, mode: str = "constant") -> jax.Array:
    """Moves each image by whole pixels: ``out[n, i, j] = x[n, i - dy, j - dx]``.

    Pixels that come from outside the image are 0 (``mode="constant"``), the
    nearest border pixel (``"edge"``) or its mirror image (``"reflect"``).

    Args:
      x: images ``(N, H, W, C)``, any dtype.
      offsets: integers ``(N, 2)``, ``(dy, dx)`` per image: ``dy > 0`` moves
        the content down, ``dx > 0`` to the right. Any size: with
        ``"reflect"`` a shift longer than the image keeps reflecting.
      mode: how to fill what comes in from outside, one of
        ``"constant"``, ``"edge"``, ``"reflect"``.

    Returns:
      ``(N, H, W, C)``, the dtype of ``x``.

    Raises:
      ShapeError: ``x`` is not ``(N, H, W, C)`` or ``offsets`` not ``(N, 2)``.
      TypeError: ``offsets`` are not integers.
      ValueError: ``mode`` is unknown.
    """
    x = _images("translate", x)
    if mode not in PAD_MODES:
        raise ValueError(f"translate: mode must be one of {PAD_MODES}, got {mode!r}")
    offsets = jnp.asarray(offsets)
    if offsets.shape != (x.shape[0], 2):
        raise ShapeError(
            f"translate: offsets must have shape ({x.shape[0]}, 2), one (dy, dx) "
            f"per image, got {tuple(offsets.shape)}"
        )
    if not jnp.issubdtype(offsets.dtype, jnp.integer):
        # Casting would truncate 0.7 to 0 and -1.6 to -1 without a word.
        raise TypeError(
            f"translate: offsets must be integers (whole pixels), got dtype "
            f"{offsets.dtype}; round them first, e.g. jnp.round(o).astype(int)"
        )
    _, h, w, c = x.shape
    offsets = _within_padding(offsets.astype(jnp.int32), h, w, mode)
    padded = jnp.pad(x, ((0, 0), (h, h), (w, w), (0, 0)), mode=mode)

    def one(image, offset):
        start = (h - offset[0], w - offset[1], 0)
        return jax.lax.dynamic_slice(image, start, (h, w, c))

    return jax.vmap(one)(padded, offsets)


def _within_padding(offsets: jax.Array, h: int, w: int, mode: str) -> jax.Array:
    """``(N, 2)`` offsets giving the same image, each in ``[-size, size]``:
    clipped for zero or edge fill (a longer shift shows only fill), reduced
    modulo the period ``2 (size - 1)`` of NumPy's ``"reflect"``."""
    sizes = jnp.array([[h, w]], jnp.int32)
    if mode != "reflect":
        return jnp.clip(offsets, -sizes, sizes)
    period = jnp.maximum(2 * (sizes - 1), 1)  # a size of 1 reflects onto itself
    rest = jnp.remainder(offsets, period)
    return jnp.where(rest > sizes - 1, rest - period, rest)


def _rotate_one(image: jax.Array, radians: jax.Array) -> jax.Array:
    """One ``(H, W, C)`` float image turned by ``radians`` about its centre."""
    h, w, c = image.shape
    ci, cj = (h - 1) / 2, (w - 1) / 2
    i, j, k = jnp.meshgrid(
        jnp.arange(h, dtype=image.dtype) - ci,
        jnp.arange(w, dtype=image.dtype) - cj,
        jnp.arange(c, dtype=image.dtype),
        indexing="ij",
    )
    cos, sin = (
        jnp.cos(radians).astype(image.dtype),
        jnp.sin(radians).astype(image.dtype),
    )
    # Output pixel (i, j) reads the input at the point that the rotation
    # takes to it: the inverse rotation of its offset from the centre.
    rows = ci + cos * i + sin * j
    cols = cj - sin * i + cos * j
    return ndimage.map_coordinates(image, [rows, cols, k], order=1, cval=0.0)


def rotate(x: jax.Array, degrees: jax.Array) -> jax.Array:
    """Turns each image counter-clockwise (as displayed) about its centre.

    Bilinear interpolation; what comes in from outside the image is 0. A
    turn by 90 degrees of a square image is ``np.rot90`` (up to float
    round-off of the sampling points).

    Args:
      x: images ``(N, H, W, C)``; integer images are interpolated in float32
        and rounded back.
      degrees: ``(N,)`` angles in degrees, one per image.

    Returns:
      ``(N, H, W, C)``, the dtype of ``x``.
    """
    x = _images("rotate", x)
    degrees = jnp.asarray(degrees)
    if degrees.shape != (x.shape[0],):
        raise ShapeError(
            f"rotate: degrees must have shape ({x.shape[0]},), one angle per "
            f"image, got {tuple(degrees.shape)}"
        )
    work = jnp.float32 if x.dtype.itemsize < 4 or not _is_float(x) else x.dtype
    radians = jnp.deg2rad(degrees.astype(work))
    out = jax.vmap(_rotate_one)(x.astype(work), radians)
    if not _is_float(x):
        out = jnp.round(out)
    return out.astype(x.dtype)


def _is_float(x) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating)


# --------------------------------------------------------------------------
# random augmentations
# --------------------------------------------------------------------------


def random_shift(max_pixels: int) -> Augment:
    """Moves each image by up to ``max_pixels`` in each direction, zero-filled.

    Offsets ``dy, dx`` are drawn uniformly from the integers in
    ``[-max_pixels, max_pixels]``, independently per image (see
    :func:`translate` for the convention).

    Args:
      max_pixels: the largest shift, an int >= 0 (0: the identity).

    Returns:
      ``aug(key, x) -> x`` on ``(N, H, W, C)`` batches.

    Raises:
      ValueError: if ``max_pixels`` is not an int >= 0.
    """
    name = f"random_shift({max_pixels!r})"
    m = _non_negative_int(name, "max_pixels", max_pixels)

    def aug(key, x):
        _check_key(name, key)
        x = _images(name, x)
        offsets = jax.random.randint(key, (x.shape[0], 2), -m, m + 1)
        return translate(x, offsets)

    return aug


def random_crop(padding: int, mode: str = "constant") -> Augment:
    """Pads each image by ``padding`` on every side and crops back ``H x W``.

    The crop's corner is uniform over the ``(2 padding + 1)^2`` positions,
    independently per image: the classic CIFAR augmentation. With
    ``mode="constant"`` it has the distribution of :func:`random_shift`
    (``random_shift(padding)``, not the same draw for a key); ``"edge"`` and
    ``"reflect"`` pad with the border pixels or their mirror image instead.

    Args:
      padding: pixels added on each side, an int >= 0.
      mode: ``"constant"`` (zeros), ``"edge"`` or ``"reflect"``.

    Returns:
      ``aug(key, x) -> x`` on ``(N, H, W, C)`` batches.

    Raises:
      ValueError: if ``padding`` is not an int >= 0 or ``mode`` is unknown.
    """
    name = f"random_crop({padding!r})"
    p = _non_negative_int(name, "padding", padding)
    if mode not in PAD_MODES:
        raise ValueError(f"{name}: mode must be one of {PAD_MODES}, got {mode!r}")

    def aug(key, x):
        _check_key(name, key)
        x = _images(name, x)
        if mode == "reflect" and p >= min(x.shape[1:3]):
            raise ShapeError(
                f"{name}: reflect padding needs padding < H and W, got images "
                f"of {x.shape[1:3]}"
            )
        corners = jax.random.randint(key, (x.shape[0], 2), 0, 2 * p + 1)
        return translate(x, p - corners, mode=mode)

    return aug


def random_flip(horizontal: bool = True, vertical: bool = False) -> Augment:
    """Mirrors each image with probability 1/2, left-right and/or upside down.

    Each enabled flip is drawn independently per image.

    Args:
      horizontal: flip the width axis (left-right), as for natural images.
      vertical: flip the height axis (upside down).

    Returns:
      ``aug(key, x) -> x`` on ``(N, H, W, C)`` batches.

    Raises:
      ValueError: if neither flip is enabled.
    """
    name = f"random_flip(horizontal={horizontal!r}, vertical={vertical!r})"
    axes = [axis for axis, on in ((2, horizontal), (1, vertical)) if on]
    if not axes:
        raise ValueError(f"{name}: enable horizontal or vertical, or leave it out")

    def aug(key, x):
        _check_key(name, key)
        x = _images(name, x)
        flips = jax.random.bernoulli(key, 0.5, (len(axes), x.shape[0]))
        for axis, flip in zip(axes, flips):
            x = jnp.where(flip[:, None, None, None], jnp.flip(x, axis=axis), x)
        return x

    return aug


def random_rotation(max_degrees: float) -> Augment:
    """Turns each image about its centre by up to ``max_degrees`` either way.

    Angles are uniform in ``[-max_degrees, max_degrees]``, independently per
    image; bilinear interpolation, zero fill (see :func:`rotate`).

    Args:
      max_degrees: the largest angle, in ``[0, 180]``.

    Returns:
      ``aug(key, x) -> x`` on ``(N, H, W, C)`` batches.

    Raises:
      ValueError: if ``max_degrees`` is outside ``[0, 180]``.
    """
    name = f"random_rotation({max_degrees!r})"
    limit = _non_negative_float(name, "max_degrees", max_degrees, upper=180)

    def aug(key, x):
        _check_key(name, key)
        x = _images(name, x)
        degrees = jax.random.uniform(key, (x.shape[0],), minval=-limit, maxval=limit)
        return rotate(x, degrees)

    return aug


def gaussian_noise(std: float) -> Augment:
    """Adds independent ``N(0, std^2)`` noise to every element.

    Args:
      std: the noise's standard deviation, finite and >= 0.

    Returns:
      ``aug(key, x) -> x + std * z`` for floating ``x`` of any shape.

    Raises:
      ValueError: if ``std`` is negative or not finite.
    """
    name = f"gaussian_noise({std!r})"
    sigma = _non_negative_float(name, "std", std)

    def aug(key, x):
        _check_key(name, key)
        x = jnp.asarray(x)
        if not _is_float(x):
            raise TypeError(
                f"{name}: needs floating inputs, got dtype {x.dtype}; "
                "convert with x.astype(jnp.float32) first"
            )
        return x + jnp.asarray(sigma, x.dtype) * jax.random.normal(
            key, x.shape, x.dtype
        )

    return aug


def compose(*augs: Augment) -> Augment:
    """Applies ``augs`` in order, each with its own key split from the one given.

    Args:
      *augs: augmentations ``aug(key, x) -> x``; none gives the identity.

    Returns:
      ``aug(key, x) -> x``.

    Raises:
      TypeError: if an argument is not callable (e.g. ``random_flip``
        passed uncalled is callable but takes options, not ``(key, x)``:
        call it first).
    """
    for i, a in enumerate(augs):
        if not callable(a):
            raise TypeError(f"compose: argument {i} is {a!r}, not an augmentation")
        if a in _CONSTRUCTORS:
            raise TypeError(
                f"compose: argument {i} is the constructor {a.__name__}; "
                f"did you mean {a.__name__}(...)?"
            )

    def aug(key, x):
        _check_key("compose", key)
        keys = jax.random.split(key, len(augs)) if augs else ()
        for a, k in zip(augs, keys):
            x = a(k, x)
        return x

    return aug


_CONSTRUCTORS = (
    random_shift,
    random_crop,
    random_flip,
    random_rotation,
    gaussian_noise,
    compose,
)
