"""IDX files and MNIST: parsing, verification, download (public via ``fnn.data``).

Nothing here trusts a file: a raw IDX file is refused unread unless its size
is the one its header declares; a gzip stream is decompressed only up to the
size its IDX header declares (a small ``.gz`` "bomb" fails after a few
bytes); MNIST files are checked against their known MD5s on every load
unless the caller opts out; only regular files are opened.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import math
import os
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fnn import _fileio

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

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
_MAX_HEADER = 4 + 4 * 255
_CHUNK = 1 << 20
_MAX_DOWNLOAD = 64 << 20  # bytes of one compressed MNIST file (the largest: 9.9 MB)
_MAX_DOWNLOAD_IDX = 256 << 20  # bytes it may declare (the largest: 47 MB)


def _header(blob: bytes, name: str) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """(dtype, shape, header bytes, payload bytes) from an IDX file's start."""
    if len(blob) < 4:
        raise ValueError(f"{name}: {len(blob)} bytes is too short for an IDX header")
    zero, type_code, ndim = blob[:2], blob[2], blob[3]
    found = int.from_bytes(blob[:4], "big")
    if zero != b"\0\0" or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{name}: not an IDX file (magic number {found:#010x})")
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
    return dtype, shape, header, math.prod(shape) * dtype.itemsize


def _check_size(name: str, shape, header: int, expected: int, total: int) -> None:
    actual = total - header
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise ValueError(
            f"{name}: {what}: header claims shape {shape}, i.e. {expected} payload "
            f"bytes, but the file holds {actual} ({header + expected} bytes in "
            f"all expected, {total} found)"
        )


def _read_up_to(f, n: int) -> bytes:
    """Up to ``n`` bytes of ``f``, in chunks, so a false ``n`` costs nothing."""
    parts, left = [], n
    while left > 0:
        part = f.read(min(left, _CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _gunzip(blob: bytes, name: str, limit: int | None) -> bytes:
    """The IDX bytes in a gzip stream, decompressing no further than declared."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(blob)) as f:
            raw = _read_up_to(f, 4)
            if len(raw) == 4 and raw[:2] == b"\0\0":
                raw += _read_up_to(f, 4 * raw[3])
            _, shape, header, expected = _header(raw, name)
            if limit is not None and header + expected > limit:
                raise ValueError(
                    f"{name}: header claims shape {shape}, {header + expected} "
                    f"bytes, more than the {limit} allowed here"
                )
            raw += _read_up_to(f, expected)
            extra = len(f.read(1))  # also checks the CRC at the stream's end
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{name}: not a valid gzip stream ({e})") from e
    if extra:
        raise ValueError(
            f"{name}: has trailing bytes: header claims shape {shape}, i.e. "
            f"{expected} payload bytes, but the gzip stream holds more (reading "
            "stopped there)"
        )
    _check_size(name, shape, header, expected, len(raw))
    return raw


def _idx_bytes(source, limit: int | None = None) -> tuple[str, bytes]:
    """(name for messages, uncompressed IDX bytes) of a path or bytes."""
    if isinstance(source, bytes | bytearray | memoryview):
        name, blob = "<bytes>", bytes(source)
    else:
        name = repr(os.fspath(source))

        def check(first: bytes, size: int) -> int:
            if first[:2] == b"\x1f\x8b":
                return size
            _, shape, header, expected = _header(first, name)
            _check_size(name, shape, header, expected, size)
            return size

        blob = bytes(_fileio.read_regular(source, check, head=_MAX_HEADER))
    if blob[:2] == b"\x1f\x8b":
        return name, _gunzip(blob, name, limit)
    return name, blob


def _parse(blob: bytes, name: str, magic: int | None) -> np.ndarray:
    dtype, shape, header, expected = _header(blob, name)
    found = int.from_bytes(blob[:4], "big")
    if magic is not None and found != magic:
        raise ValueError(f"{name}: magic number {found} (expected {magic})")
    _check_size(name, shape, header, expected, len(blob))
    data = np.frombuffer(blob, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


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

    Nothing is read beyond what the header declares: a raw file whose size
    differs from it is refused before its payload is read, and a gzip stream
    is decompressed only up to the declared size plus one byte (so a small
    ``.gz`` that would expand to gigabytes fails at once, in little memory).

    Args:
      source: a path to a regular file, or the file's bytes.
      magic: if given, the header's magic number must equal it
        (``2051`` for MNIST images, ``2049`` for labels).

    Returns:
      A NumPy array in native byte order, of the shape the header gives
      (uint8 for MNIST).

    Raises:
      ValueError: naming the file, when it is not valid gzip, not IDX, has a
        different magic than ``magic``, or holds more or fewer payload bytes
        than the header claims (a truncated download).
      OSError: the path is not a regular file (a FIFO, a device, a folder), or
        cannot be read.
    """
    name, blob = _idx_bytes(source)
    return _parse(blob, name, magic)


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


def _fetch(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        blob = response.read(_MAX_DOWNLOAD + 1)
    if len(blob) > _MAX_DOWNLOAD:
        raise ValueError(f"serves more than {_MAX_DOWNLOAD} bytes; refused")
    return blob


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
            blob = _fetch(url, timeout)
            if blob[:2] != b"\x1f\x8b":
                raise ValueError("not a gzip stream")
            digest = hashlib.md5(_gunzip(blob, url, _MAX_DOWNLOAD_IDX)).hexdigest()
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
        _fileio.write_atomic(target, lambda f, blob=blob: f.write(blob))
        return target
    raise DownloadError(
        f"mnist: could not download {name!r} from any mirror:\n"
        + "\n".join(failures or ["  (no mirrors given)"])
        + "\n"
        + _how_to_provide(folder)
    )


def _verified(path: Path, name: str, checksums: Mapping[str, str], verify: bool):
    """The uncompressed bytes of an MNIST file, MD5-checked if ``verify``."""
    where, blob = _idx_bytes(path)
    if not verify:
        return blob
    if name not in checksums:
        raise ValueError(
            f"mnist: no checksum given for {name!r} to verify {where}; pass "
            "checksums={...} or verify=False"
        )
    digest = hashlib.md5(blob).hexdigest()
    if digest != checksums[name].lower():
        raise ValueError(
            f"mnist: {where} has MD5 {digest}, expected {checksums[name]}: it is "
            "damaged or not this MNIST file. Delete it to download it again, or "
            "pass verify=False (or checksums=) to load a file you trust."
        )
    return blob


def _images_and_labels(paths, raw, images_name, labels_name):
    images_at, labels_at = repr(str(paths[images_name])), repr(str(paths[labels_name]))
    images = _parse(raw[images_name], images_at, IDX_IMAGES_MAGIC)
    labels = _parse(raw[labels_name], labels_at, IDX_LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise ValueError(
            f"mnist: {images_at} holds images of {images.shape[1]}x"
            f"{images.shape[2]} pixels; MNIST's are 28x28 (use read_idx for "
            "other IDX data)"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"mnist: {images_at} holds {len(images)} images but {labels_at} holds "
            f"{len(labels)} labels"
        )
    if not len(images):
        raise ValueError(f"mnist: {images_at} holds no images")
    if labels.max() > 9:
        raise ValueError(f"mnist: {labels_at} has label {labels.max()} > 9")
    x = (images.astype(np.float32) / np.float32(255))[..., None]
    return x, labels.astype(np.int32)


def mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    verify: bool = True,
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
    folder never holds a partial download. Files already present are verified
    against the same MD5s on every load (about 0.1 s) unless ``verify=False``,
    and are parsed strictly (magic numbers, dimensions, sizes, 28x28 images,
    labels 0-9, as many labels as images).

    Args:
      data_dir: the folder holding (or to receive) the files.
      download: fetch missing files; if False, a missing file raises
        FileNotFoundError.
      verify: check the MD5 of files already on disk; pass False to load
        files you changed on purpose (they are still parsed strictly).
      mirrors: base URLs, tried in order.
      checksums: MD5 hex digests of the uncompressed files, by name.
      timeout: seconds per network operation.

    Returns:
      ``((x_train, y_train), (x_test, y_test))``: images float32 of shape
      ``(N, 28, 28, 1)`` with values ``pixel / 255`` in ``[0, 1]``; labels
      int32 of shape ``(N,)`` in ``0..9``.

    Raises:
      ValueError: a file fails its MD5 check, is corrupt or truncated, holds
        images other than 28x28, labels above 9 or no examples, or images and
        labels disagree in count.
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
    raw = {name: _verified(paths[name], name, checksums, verify) for name in paths}
    return (
        _images_and_labels(paths, raw, *MNIST_FILES[:2]),
        _images_and_labels(paths, raw, *MNIST_FILES[2:]),
    )
