"""Data sets and minibatches.

Every loader returns plain NumPy arrays in host memory; JAX functions accept
them as they are. Image sets come as ``((x_train, y_train), (x_test, y_test))``
with images float32 in ``[0, 1]`` shaped ``(N, H, W, 1)`` (channels last) and
labels int32 shaped ``(N,)``.

- :func:`digits` — the 8x8 UCI handwritten digits shipped inside the package:
  the offline default, no network ever.
- :func:`mnist` — MNIST from IDX files in a folder (``data_dir``,
  ``$FNN_DATA_DIR`` or the user cache), downloaded with checksum verification
  where they are missing and a network exists.
  Files on disk are checked against the same MD5s on every load.
- :func:`spirals` — a small synthetic problem, split like the image sets;
  :func:`xor` — the four XOR points.
- :func:`split` — a shuffled hold-out split, e.g. validation data out of the
  training data.
- :func:`batches` — shuffled minibatches over arrays.
- :func:`memmap_batches` — shuffled minibatches read from ``.npy`` or IDX
  files on disk, for data sets larger than memory.
- :func:`read_idx` — the IDX file parser behind :func:`mnist`.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import io
import numbers
from collections.abc import Iterator

import jax
import numpy as np

from fnn._memmap import memmap_batches
from fnn._mnist import (
    IDX_IMAGES_MAGIC,  # noqa: F401 - re-exported
    IDX_LABELS_MAGIC,  # noqa: F401 - re-exported
    MNIST_CHECKSUMS,
    MNIST_FILES,
    MNIST_MIRRORS,
    DownloadError,
    Split,
    mnist,
    read_idx,
)

__all__ = [
    "MNIST_CHECKSUMS",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "DownloadError",
    "batches",
    "digits",
    "memmap_batches",
    "mnist",
    "read_idx",
    "spirals",
    "split",
    "xor",
]
# Documented as members of this module (they live in fnn/_mnist.py and
# fnn/_memmap.py).
for _f in (DownloadError, memmap_batches, mnist, read_idx):
    _f.__module__ = __name__
del _f

# --------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------

DIGITS_TEST_EVERY = 5  # every 5th example of each class goes to the test set


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> Split:
    raw = importlib.resources.files("fnn").joinpath("data/digits.csv.gz")
    table = np.loadtxt(
        io.BytesIO(gzip.decompress(raw.read_bytes())), delimiter=",", dtype=np.int64
    )
    if table.ndim != 2 or table.shape[1] != 65:
        raise ValueError(f"digits: bundled table has shape {table.shape}, not (N, 65)")
    images = (table[:, :64] / np.float32(16)).astype(np.float32).reshape(-1, 8, 8, 1)
    labels = table[:, 64].astype(np.int32)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        is_test[np.flatnonzero(labels == c)[::DIGITS_TEST_EVERY]] = True
    split = (
        (images[~is_test], labels[~is_test]),
        (images[is_test], labels[is_test]),
    )
    for pair in split:
        for a in pair:
            a.flags.writeable = False
    return split


def digits() -> Split:
    """The bundled 8x8 handwritten digits with a fixed train/test split.

    The UCI "Optical Recognition of Handwritten Digits" test set (Alpaydin &
    Kaynak, 1998; CC BY 4.0): 1,797 images of 8x8 pixels, 4x4-block pixel counts
    0..16, labels 0-9. It ships with fnn, so it never needs a network.

    The split is stratified and involves no randomness: in file order, every
    5th example of each class is a test example (20% of each class, rounded
    up), the rest train — 1,433 train and 364 test examples, the same on every
    call and machine. Both keep file order.

    Returns:
      ``((x_train, y_train), (x_test, y_test))``: images float32 of shape
      ``(N, 8, 8, 1)`` with values ``k / 16`` in ``[0, 1]``; labels int32 of
      shape ``(N,)`` in ``0..9``. The arrays are fresh copies: changing them
      does not change later calls.
    """
    return tuple((x.copy(), y.copy()) for x, y in _digits_arrays())  # type: ignore[return-value]


# --------------------------------------------------------------------------
# Synthetic problems
# --------------------------------------------------------------------------


def xor() -> tuple[np.ndarray, np.ndarray]:
    """The four XOR points.

    Returns:
      ``(x, y)``: ``x`` float32 of shape ``(4, 2)`` holding the corners of the
      unit square, ``y`` float32 of shape ``(4, 1)`` holding ``x0 XOR x1``.
    """
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([[0], [1], [1], [0]], dtype=np.float32)
    return x, y


def _check_xy(x, y, who: str) -> int:
    """The common length of ``x`` and ``y``, checked."""
    n = _leading_length(x, "x", who)
    if _leading_length(y, "y", who) != n:
        raise ValueError(
            f"{who}: x and y differ in length: x has shape {np.shape(x)}, "
            f"y has shape {np.shape(y)}"
        )
    return n


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_fraction(fraction, name: str, who: str) -> float:
    if not _real(fraction):
        raise TypeError(f"{who}: {name} must be a number, got {fraction!r}")
    if not 0 < fraction < 1:
        raise ValueError(f"{who}: {name} must be in (0, 1), got {fraction!r}")
    return float(fraction)


def _check_seed(seed, who: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise TypeError(f"{who}: seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _count_at_least(value, name: str, low: int) -> int:
    """``value`` as an int, checked (NumPy ints too, bools never)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"spirals: {name} must be an int >= {low}, got {value!r}")
    if value < low:
        raise ValueError(f"spirals: {name} must be an int >= {low}, got {value!r}")
    return int(value)


def split(x, y, fraction: float = 0.1, *, seed: int = 0) -> Split:
    """Splits examples in two at random, e.g. to hold out a validation set.

    The examples are shuffled by a NumPy generator seeded with ``seed``; the
    last ``b = max(1, round(fraction * N))`` of them form the second part,
    the others the first. Keep the test set for the very end, and hold out
    validation data from the training data::

        (x_train, y_train), (x_test, y_test) = data.digits()
        (x_train, y_train), (x_val, y_val) = data.split(x_train, y_train, 0.1)

    Args:
      x: an array of shape ``(N, ...)`` (NumPy, or JAX).
      y: an array of shape ``(N, ...)``: the targets of ``x``'s examples.
      fraction: the share of examples in the second part, in ``(0, 1)``.
      seed: seed of the shuffle, a non-negative int; equal arguments give
        equal parts.

    Returns:
      ``((x_a, y_a), (x_b, y_b))``: the ``N - b`` and ``b`` examples, each
      part in shuffled order, pairs kept together; arrays of ``x``'s and
      ``y``'s types and dtypes.

    Raises:
      ValueError: ``x`` and ``y`` differ in length, or ``fraction`` is not in
        ``(0, 1)`` or leaves a part empty.
      TypeError: ``fraction`` is not a real number, or ``seed`` not an int.

    Example:
      >>> import numpy as np
      >>> from fnn import data
      >>> (xa, ya), (xb, yb) = data.split(np.arange(10), np.arange(10), 0.3)
      >>> len(ya), len(yb), sorted([*ya, *yb]) == list(range(10))
      (7, 3, True)
    """
    n = _check_xy(x, y, "split")
    fraction = _check_fraction(fraction, "fraction", "split")
    order = np.random.default_rng(_check_seed(seed, "split")).permutation(n)
    b = max(1, round(fraction * n))
    if b >= n:
        raise ValueError(
            f"split: {n} examples cannot be split with fraction={fraction}: "
            f"one part would be empty"
        )
    a_index, b_index = order[: n - b], order[n - b :]
    return (x[a_index], y[a_index]), (x[b_index], y[b_index])


def spirals(
    n: int = 300,
    *,
    classes: int = 2,
    noise: float = 0.05,
    turns: float = 1.5,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Split:
    """Interleaved spiral arms, one per class, split into train and test sets.

    Arm ``k`` of ``classes`` runs, as ``t`` goes from 0 to 1, through the
    points ``r (cos a, sin a)`` with radius ``r = 0.1 + 0.9 t`` and angle
    ``a = 2 pi (turns t + k / classes)``, plus Gaussian noise of standard
    deviation ``noise`` in each coordinate. Class ``k`` gets ``n // classes``
    of the ``n`` points, plus one for ``k < n % classes``. The points are then
    shuffled and split by :func:`split`: ``round(test_fraction * n)`` (at
    least 1) go to the test set.

    Args:
      n: the number of points in all, at least 2.
      classes: the number of arms (2 is the classic two-spirals problem).
      noise: standard deviation of the coordinate noise, finite and >= 0.
      turns: the number of turns of each arm, finite.
      test_fraction: the share of points in the test set, in ``(0, 1)``.
      seed: seed of the NumPy generators drawing the noise and the shuffle;
        equal arguments give equal arrays.

    Returns:
      ``((x_train, y_train), (x_test, y_test))``, like :func:`digits`: ``x``
      float32 of shape ``(N, 2)``, ``y`` int32 of shape ``(N,)`` in
      ``0..classes-1``, both in shuffled order.

    Raises:
      ValueError: an argument is out of range, or ``test_fraction`` leaves a
        set empty.
      TypeError: ``test_fraction`` is not a number or ``seed`` not an int.
    """
    n = _count_at_least(n, "n", 2)
    classes = _count_at_least(classes, "classes", 2)
    if not (_real(noise) and 0 <= noise < np.inf):
        raise ValueError(f"spirals: noise must be finite and >= 0, got {noise!r}")
    if not (_real(turns) and np.isfinite(turns)):
        raise ValueError(f"spirals: turns must be a finite number, got {turns!r}")
    test_fraction = _check_fraction(test_fraction, "test_fraction", "spirals")
    seed = _check_seed(seed, "spirals")
    sizes = [n // classes + (k < n % classes) for k in range(classes)]
    y = np.repeat(np.arange(classes), sizes)
    t = np.concatenate([np.linspace(0.0, 1.0, m) for m in sizes])
    radius = 0.1 + 0.9 * t
    angle = 2 * np.pi * (turns * t + y / classes)
    x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    x = x + noise * np.random.default_rng(seed).standard_normal(x.shape)
    return split(x.astype(np.float32), y.astype(np.int32), test_fraction, seed=seed)


# --------------------------------------------------------------------------
# Minibatches
# --------------------------------------------------------------------------


def batches(
    x,
    y,
    batch_size: int,
    *,
    key: jax.Array | int | None = None,
    shuffle: bool = True,
    drop_remainder: bool = False,
) -> Iterator[tuple]:
    """Iterates over one epoch of ``(xb, yb)`` minibatches.

    Arguments are checked when ``batches`` is called, before iteration.

    Args:
      x: an array of shape ``(N, ...)``: NumPy (batches are NumPy) or JAX
        (batches are JAX arrays).
      y: an array of shape ``(N, ...)``, like ``x``.
      batch_size: examples per batch, a positive int.
      key: the shuffle's randomness: a JAX PRNG key (the order is
        ``jax.random.permutation(key, N)``) or a non-negative int seed of a
        NumPy generator. Required when ``shuffle`` is True, so that each
        epoch's order is a choice of the caller: split a fresh key per epoch.
      shuffle: if False, batches follow the original order and ``key`` is
        ignored.
      drop_remainder: if True, a last batch smaller than ``batch_size`` is
        dropped, so that every batch has the same shape (a jitted step then
        compiles once); if False it is yielded.

    Returns:
      An iterator of ``(xb, yb)`` with shapes ``(B, ...)``, ``B = batch_size``
      except possibly for the last batch.

    Raises:
      ValueError: ``x`` and ``y`` differ in length or have no batch axis,
        ``batch_size < 1``, ``key`` is missing while ``shuffle`` is True, or
        an int ``key`` is negative.
      TypeError: ``batch_size`` is not an int, or ``key`` neither a PRNG key
        nor an int.
    """
    n = _check_xy(x, y, "batches")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise TypeError(f"batches: batch_size must be an int, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batches: batch_size must be positive, got {batch_size}")
    if not shuffle:
        order = None
    elif key is None:
        raise ValueError(
            "batches: shuffle=True needs key= (a jax.random key, e.g. "
            "jax.random.fold_in(key, epoch), or an int seed); pass "
            "shuffle=False to keep the original order"
        )
    else:
        order = _shuffle_order(key, n)
    stop = n - n % batch_size if drop_remainder else n
    return _iterate(x, y, batch_size, order, stop)


def _shuffle_order(key, n: int) -> np.ndarray:
    """The permutation of ``range(n)`` that ``batches`` draws for ``key``."""
    if isinstance(key, int | np.integer) and not isinstance(key, bool):
        if key < 0:
            raise ValueError(f"batches: an int key (a seed) must be >= 0, got {key}")
        return np.random.default_rng(int(key)).permutation(n)
    dtype = getattr(key, "dtype", None)
    # Anything else would fail inside jax.random with a message about "key
    # data" that names neither batches nor the fix.
    if dtype is None or not (
        jax.numpy.issubdtype(dtype, jax.dtypes.prng_key) or dtype == np.uint32
    ):
        raise TypeError(
            "batches: key must be a jax.random key (e.g. jax.random.fold_in(key, "
            f"epoch)) or a non-negative int seed, got {key!r}"
        )
    return np.asarray(jax.random.permutation(key, n))


def _leading_length(a, name: str, who: str) -> int:
    shape = np.shape(a)
    if not shape:
        raise ValueError(f"{who}: {name} must have a leading batch axis, got a scalar")
    return shape[0]


def _iterate(x, y, batch_size, order, stop):
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            index = order[start : start + batch_size]
            yield x[index], y[index]
