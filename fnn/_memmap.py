"""Minibatches streamed from arrays on disk (public as ``fnn.data.memmap_batches``).

The arrays are memory-mapped (``np.load(..., mmap_mode="r")`` for ``.npy``,
``np.memmap`` past the header for raw IDX), so a data set larger than memory
is read one batch at a time: each batch gathers its rows from the mapping,
and the operating system pages them in and out as it needs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fnn import _fileio, _mnist

_NPY_MAGIC = b"\x93NUMPY"


def open_array(path: str | os.PathLike) -> np.ndarray:
    """A read-only memory map of a ``.npy`` or raw IDX file.

    Args:
      path: a ``.npy`` file (any shape, no objects) or an uncompressed IDX
        file (the MNIST format), told apart by their first bytes.

    Returns:
      A read-only array backed by the file (``np.memmap``), nothing read yet.

    Raises:
      ValueError: the file is neither, is gzip-compressed, holds Python
        objects, or its size differs from what its header declares.
      OSError: the file is not a regular file, or cannot be opened.
    """
    where = repr(os.fspath(path))
    sizes = []

    def check(first: bytes, size: int) -> int:
        sizes.append(size)
        return len(first)

    head = bytes(_fileio.read_regular(path, check, head=_mnist._MAX_HEADER))
    size = sizes[0]
    if head[:2] == b"\x1f\x8b":
        raise ValueError(
            f"{where} is gzip-compressed and cannot be memory-mapped; decompress "
            "it first (e.g. gunzip -k)"
        )
    if head.startswith(_NPY_MAGIC):
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{where}: cannot memory-map this .npy file: {e}") from e
    try:
        dtype, shape, header, expected = _mnist._header(head, where)
    except ValueError as e:
        raise ValueError(f"{e} (memmap_batches reads .npy or raw IDX files)") from e
    _mnist._check_size(where, shape, header, expected, size)
    if expected == 0:
        return np.zeros(shape, dtype)
    return np.memmap(Path(path), dtype=dtype, mode="r", offset=header, shape=shape)


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"memmap_batches: {name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"memmap_batches: {name} must be >= {low}, got {value}")
    return int(value)


def _check_bool(value, name: str) -> bool:
    # A truthy "no" or 0.0 would otherwise pick an option silently.
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"memmap_batches: {name} must be True or False, got {value!r}")
    return bool(value)


def memmap_batches(
    x_path: str | os.PathLike,
    y_path: str | os.PathLike,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Iterates over one epoch of minibatches read from files, never all at once.

    Both files are memory-mapped; each batch reads only its own rows. The
    order is ``np.random.default_rng([seed, epoch]).permutation(N)``: a new
    shuffle every epoch, the same one for the same ``(seed, epoch)`` — so a
    resumed run sees the batches it would have seen. Batches hold the files'
    dtypes in native byte order (uint8 for MNIST images: scale them per
    batch, e.g. ``xb.astype(np.float32) / 255``). Files and arguments are
    checked when ``memmap_batches`` is called, before iteration.

    Args:
      x_path: a ``.npy`` or raw (uncompressed) IDX file of shape ``(N, ...)``.
      y_path: the same for the targets, shape ``(N, ...)``.
      batch_size: examples per batch, a positive int.
      seed: the run's shuffle seed, a non-negative int.
      epoch: the epoch number, a non-negative int, mixed into the seed.
      shuffle: if False, batches follow the files' order and ``seed`` and
        ``epoch`` are ignored.
      drop_remainder: if True, a last batch smaller than ``batch_size`` is
        dropped, so that every batch has one shape.

    Returns:
      An iterator of ``(xb, yb)`` NumPy arrays of shapes ``(B, ...)``,
      ``B = batch_size`` except possibly for the last batch.

    Raises:
      ValueError: a file is not ``.npy`` or raw IDX (or is compressed), the
        files differ in length or have no leading axis, or an argument is out
        of range.
      TypeError: ``batch_size``, ``seed`` or ``epoch`` is not an int, or
        ``shuffle`` or ``drop_remainder`` not a bool.
      OSError: a file is not a regular file, or cannot be opened.
    """
    x, y = open_array(x_path), open_array(y_path)
    for a, path in ((x, x_path), (y, y_path)):
        if a.ndim == 0:
            raise ValueError(
                f"memmap_batches: {os.fspath(path)!r} holds a scalar; it needs a "
                "leading batch axis"
            )
    if len(x) != len(y):
        raise ValueError(
            f"memmap_batches: x and y differ in length: {os.fspath(x_path)!r} "
            f"holds shape {x.shape}, {os.fspath(y_path)!r} holds {y.shape}"
        )
    batch_size = _check_int(batch_size, "batch_size", 1)
    shuffle = _check_bool(shuffle, "shuffle")
    drop_remainder = _check_bool(drop_remainder, "drop_remainder")
    n = len(x)
    if shuffle:
        entropy = [_check_int(seed, "seed", 0), _check_int(epoch, "epoch", 0)]
        order = np.random.default_rng(entropy).permutation(n)
    else:
        order = np.arange(n)
    stop = n - n % batch_size if drop_remainder else n
    return _iterate(x, y, order, batch_size, stop)


def _native(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(a.dtype.newbyteorder("="), copy=False)


def _iterate(x, y, order, batch_size, stop):
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        yield _native(x[index]), _native(y[index])
