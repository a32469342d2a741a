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
- :func:`xor`, :func:`spirals` — tiny synthetic problems.
- :func:`batches` — shuffled minibatches over arrays.
- :func:`read_idx` — the IDX file parser behind :func:`mnist`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import importlib.resources
import io
import math
import os
import secrets
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import jax
import numpy as np

__all__ = [
    "MNIST_CHECKSUMS",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "DownloadError",
    "batches",
    "digits",
    "mnist",
    "read_idx",
    "spirals",
    "xor",
]

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

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
# IDX files
# --------------------------------------------------------------------------

# IDX type byte -> big-endian element dtype (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dims (count, rows, cols)
IDX_LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dim (count,)


def _decompress(blob: bytes, name: str) -> bytes:
    try:
        return gzip.decompress(blob)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{name}: not a valid gzip stream ({e})") from e


def read_idx(
    source: str | os.PathLike | bytes | bytearray | memoryview,
    *,
    magic: int | None = None,
) -> np.ndarray:
    """Parses an IDX file (the MNIST format), gzip-compressed or raw.

    Layout: a big-endian uint32 magic ``0x0000TTDD`` (``TT`` the element type,
    ``0x08`` for uint8; ``DD`` the number of dimensions), one big-endian uint32
    per dimension, then the elements in C order. Gzip compression is detected
    from the content (its ``1f 8b`` signature), not from the file name.

    Args:
      source: a path, or the file's bytes.
      magic: if given, the header's magic number must equal it
        (``2051`` for MNIST images, ``2049`` for labels).

    Returns:
      A NumPy array in native byte order, of the shape the header gives
      (uint8 for MNIST).

    Raises:
      ValueError: naming the file, when it is not valid gzip, not IDX, has a
        different magic than ``magic``, or holds more or fewer payload bytes
        than the header claims (a truncated download).
    """
    if isinstance(source, bytes | bytearray | memoryview):
        name, blob = "<bytes>", bytes(source)
    else:
        name, blob = repr(os.fspath(source)), Path(source).read_bytes()
    if blob[:2] == b"\x1f\x8b":
        blob = _decompress(blob, name)
    if len(blob) < 4:
        raise ValueError(f"{name}: {len(blob)} bytes is too short for an IDX header")
    zero, type_code, ndim = blob[:2], blob[2], blob[3]
    found = int.from_bytes(blob[:4], "big")
    if zero != b"\0\0" or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{name}: not an IDX file (magic number {found:#010x})")
    if magic is not None and found != magic:
        raise ValueError(f"{name}: magic number {found} (expected {magic})")
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise ValueError(
            f"{name}: truncated header: {ndim} dims need {header} bytes, "
            f"file has {len(blob)}"
        )
    shape = tuple(
        int.from_bytes(blob[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
    )
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize
    actual = len(blob) - header
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise ValueError(
            f"{name}: {what}: header claims shape {shape}, i.e. {expected} payload "
            f"bytes, but the file holds {actual} ({header + expected} bytes in "
            f"all expected, {len(blob)} found)"
        )
    data = np.frombuffer(blob, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


# --------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# MD5 of the *uncompressed* files.
MNIST_CHECKSUMS = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# Base URLs, tried in order; each serves ``<name>.gz``.
MNIST_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)


class DownloadError(OSError):
    """No mirror delivered a file whose checksum verifies."""


def _default_mnist_dir() -> Path:
    env = os.environ.get("FNN_DATA_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "fnn" / "mnist"


def _how_to_provide(folder: Path) -> str:
    names = ", ".join(f"{n}[.gz]" for n in MNIST_FILES)
    return (
        f"Put the four MNIST IDX files ({names}) in {str(folder)!r}, set "
        "FNN_DATA_DIR to a folder holding them, or pass mnist(data_dir=...)."
    )


def _write_atomic(target: Path, blob: bytes) -> None:
    """Writes ``blob`` to ``target`` so that ``target`` is whole or absent."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _download(
    name: str,
    folder: Path,
    mirrors: Sequence[str],
    checksums: Mapping[str, str],
    timeout: float,
) -> Path:
    if name not in checksums:
        raise ValueError(f"mnist: no checksum given for {name!r}; refusing to fetch")
    failures = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + name + ".gz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                blob = response.read()
            digest = hashlib.md5(_decompress(blob, url)).hexdigest()
        except (OSError, ValueError, http.client.HTTPException) as e:
            failures.append(f"  {url}: {e}")
            continue
        if digest != checksums[name].lower():
            failures.append(
                f"  {url}: MD5 of the uncompressed file is {digest}, expected "
                f"{checksums[name]}; refused"
            )
            continue
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / (name + ".gz")
        _write_atomic(target, blob)
        return target
    raise DownloadError(
        f"mnist: could not download {name!r} from any mirror:\n"
        + "\n".join(failures or ["  (no mirrors given)"])
        + "\n"
        + _how_to_provide(folder)
    )


def mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    checksums: Mapping[str, str] = MNIST_CHECKSUMS,
    timeout: float = 60.0,
) -> Split:
    """MNIST handwritten digits: 60,000 train and 10,000 test images, 28x28.

    The four IDX files (:data:`MNIST_FILES`, each raw or as ``<name>.gz``) are
    read from one folder: ``data_dir`` if given, else ``$FNN_DATA_DIR``, else
    ``$XDG_CACHE_HOME/fnn/mnist`` (``~/.cache/fnn/mnist``). Files missing
    there are downloaded into that same folder (even when it came from
    ``data_dir``) unless ``download=False``: each mirror in turn serves
    ``<name>.gz``; the MD5 of the uncompressed content must equal
    ``checksums[name]``, else the file is refused and nothing is written. A
    verified file is written atomically (temporary file, fsync, rename), so the
    folder never holds a partial download. Files already present are not
    re-hashed, but are parsed strictly (magic numbers, dimensions, sizes).

    Args:
      data_dir: the folder holding (or to receive) the files.
      download: fetch missing files; if False, a missing file raises
        FileNotFoundError.
      mirrors: base URLs, tried in order.
      checksums: MD5 hex digests of the uncompressed files, by name.
      timeout: seconds per network operation.

    Returns:
      ``((x_train, y_train), (x_test, y_test))``: images float32 of shape
      ``(N, 28, 28, 1)`` with values ``pixel / 255`` in ``[0, 1]``; labels
      int32 of shape ``(N,)`` in ``0..9``.

    Raises:
      ValueError: a file is corrupt or truncated, or images and labels
        disagree in count.
      DownloadError: a file is missing and no mirror delivered it intact.
      FileNotFoundError: a file is missing and ``download=False``.
    """
    folder = Path(data_dir) if data_dir is not None else _default_mnist_dir()
    if isinstance(mirrors, str):
        mirrors = (mirrors,)
    paths = {}
    for name in MNIST_FILES:
        found = [p for p in (folder / name, folder / (name + ".gz")) if p.is_file()]
        if found:
            paths[name] = found[0]
        elif download:
            paths[name] = _download(name, folder, mirrors, checksums, timeout)
        else:
            raise FileNotFoundError(
                f"mnist: {name!r} not found in {str(folder)!r}. "
                + _how_to_provide(folder)
            )
    split = []
    for images_name, labels_name in (MNIST_FILES[:2], MNIST_FILES[2:]):
        images = read_idx(paths[images_name], magic=IDX_IMAGES_MAGIC)
        labels = read_idx(paths[labels_name], magic=IDX_LABELS_MAGIC)
        if len(images) != len(labels):
            raise ValueError(
                f"mnist: {str(paths[images_name])!r} holds {len(images)} images but "
                f"{str(paths[labels_name])!r} holds {len(labels)} labels"
            )
        if labels.size and labels.max() > 9:
            raise ValueError(
                f"mnist: {str(paths[labels_name])!r} has label {labels.max()} > 9"
            )
        x = (images.astype(np.float32) / np.float32(255))[..., None]
        split.append((x, labels.astype(np.int32)))
    return tuple(split)  # type: ignore[return-value]


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


def spirals(
    n: int = 300,
    *,
    classes: int = 2,
    noise: float = 0.05,
    turns: float = 1.5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved spiral arms, one per class.

    Arm ``k`` of ``classes`` runs, as ``t`` goes from 0 to 1, through the
    points ``r (cos a, sin a)`` with radius ``r = 0.1 + 0.9 t`` and angle
    ``a = 2 pi (turns t + k / classes)``, plus Gaussian noise of standard
    deviation ``noise`` in each coordinate. Examples come grouped by class;
    class ``k`` gets ``n // classes`` points, plus one for ``k < n % classes``.

    Args:
      n: the number of points in all.
      classes: the number of arms (2 is the classic two-spirals problem).
      noise: standard deviation of the coordinate noise.
      turns: the number of turns of each arm.
      seed: seed of the NumPy generator drawing the noise; equal arguments
        give equal arrays.

    Returns:
      ``(x, y)``: ``x`` float32 of shape ``(n, 2)``, ``y`` int32 of shape
      ``(n,)`` in ``0..classes-1``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"spirals: n must be a positive int, got {n!r}")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ValueError(f"spirals: classes must be an int >= 2, got {classes!r}")
    if noise < 0:
        raise ValueError(f"spirals: noise must be >= 0, got {noise!r}")
    sizes = [n // classes + (k < n % classes) for k in range(classes)]
    y = np.repeat(np.arange(classes), sizes)
    t = np.concatenate([np.linspace(0.0, 1.0, m) for m in sizes])
    radius = 0.1 + 0.9 * t
    angle = 2 * np.pi * (turns * t + y / classes)
    x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    x = x + noise * np.random.default_rng(seed).standard_normal(x.shape)
    return x.astype(np.float32), y.astype(np.int32)


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
        ``jax.random.permutation(key, N)``) or an int seed of a NumPy
        generator. Required when ``shuffle`` is True, so that each epoch's
        order is a choice of the caller: split a fresh key per epoch.
      shuffle: if False, batches follow the original order and ``key`` is
        ignored.
      drop_remainder: if True, a last batch smaller than ``batch_size`` is
        dropped, so that every batch has the same shape (a jitted step then
        compiles once); if False it is yielded.

    Returns:
      An iterator of ``(xb, yb)`` with shapes ``(B, ...)``, ``B = batch_size``
      except possibly for the last batch.
    """
    n = _leading_length(x, "x")
    if _leading_length(y, "y") != n:
        raise ValueError(
            f"batches: x and y differ in length: x has shape {np.shape(x)}, "
            f"y has shape {np.shape(y)}"
        )
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
    elif isinstance(key, int | np.integer) and not isinstance(key, bool):
        order = np.random.default_rng(int(key)).permutation(n)
    else:
        order = np.asarray(jax.random.permutation(key, n))
    stop = n - n % batch_size if drop_remainder else n
    return _iterate(x, y, batch_size, order, stop)


def _leading_length(a, name: str) -> int:
    shape = np.shape(a)
    if not shape:
        raise ValueError(
            f"batches: {name} must have a leading batch axis, got a scalar"
        )
    return shape[0]


def _iterate(x, y, batch_size, order, stop):
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            index = order[start : start + batch_size]
            yield x[index], y[index]
