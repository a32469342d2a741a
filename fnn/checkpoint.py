"""Saving and loading pytrees of arrays: safe, atomic, validated.

``save(path, tree)`` writes any pytree whose leaves are arrays (JAX or NumPy,
any dtype including bfloat16), typed PRNG keys (``jax.random.key``) or Python
``bool``/``int``/``float`` scalars — typically ``(params, state, opt_state,
step)`` with optax states as they are. ``load(path, like)`` reads it back into
the structure of ``like`` after checking every leaf's key path, kind, dtype and
shape, and names the first mismatch.

File format (version 1), all integers little-endian::

    offset  size  field
    0       8     magic  b"\\x89FNNCKPT"
    8       4     format version (uint32, 1)
    12      4     reserved (0)
    16      8     H: header length in bytes (uint64)
    24      8     P: payload length in bytes (uint64)
    32      H     header: UTF-8 JSON, space-padded so the payload is 64-aligned
    32+H    P     payload: each leaf's bytes (C order, little-endian),
                  64-aligned, zero-padded
    32+H+P  32    SHA-256 of all the bytes before it

The JSON header holds ``format``, ``format_version``, ``fnn_version``,
``treedef`` (``str(jax.tree.structure(tree))``, informative only) and
``leaves``: per leaf its ``path`` (``jax.tree_util.keystr``), ``kind``
(``"array"``, ``"key"``, ``"bool"``, ``"int"``, ``"float"``), ``dtype``,
``shape``, ``offset`` and ``nbytes`` into the payload; for keys also ``impl``
(the key's PRNG implementation) and ``data_dtype``/``data_shape`` of the key
data stored. No pickle is involved anywhere: dtypes come from an allow-list.

Writes are atomic: the file is written under a temporary name in the target's
folder, flushed and fsynced, renamed over the target with ``os.replace`` and
the folder fsynced; a process killed at any moment leaves the old checkpoint
or the new one, whole (plus, at worst, a stray ``.<name>.*.tmp`` file).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import secrets
import struct
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FORMAT_VERSION", "CheckpointError", "load", "read_header", "save"]

PyTree = Any

FORMAT_VERSION = 1
MAGIC = b"\x89FNNCKPT"
_PREAMBLE = struct.Struct("<8sIIQQ")  # magic, version, reserved, H, P
_DIGEST_SIZE = 32  # SHA-256
_ALIGN = 64
_DTYPES = frozenset(
    (
        "bool",
        *(f"int{b}" for b in (8, 16, 32, 64)),
        *(f"uint{b}" for b in (8, 16, 32, 64)),
        "float16",
        "bfloat16",
        "float32",
        "float64",
        "complex64",
        "complex128",
        "float8_e4m3fn",
        "float8_e5m2",
    )
)
_SCALARS = {bool: "bool", int: "int", float: "float"}
_SCALAR_DTYPES = {"bool": "bool", "int": "int64", "float": "float64"}
_KINDS = {
    "array": "an array",
    "key": "a typed PRNG key array",
    "bool": "a Python bool",
    "int": "a Python int",
    "float": "a Python float",
}


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupt, foreign, or does not fit ``like``."""


def _fnn_version() -> str:
    try:
        return importlib.metadata.version("fnn")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _pad(n: int) -> int:
    return -n % _ALIGN


def _path_str(path) -> str:
    return jax.tree_util.keystr(path) or "<root>"


# --------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------


def _encode_leaf(path: str, leaf) -> tuple[dict, np.ndarray]:
    """Returns a leaf's header record and the array whose bytes are stored."""
    kind = _SCALARS.get(type(leaf))
    if kind is not None:
        try:
            data = np.asarray(leaf, dtype=_SCALAR_DTYPES[kind])
        except OverflowError as e:
            raise TypeError(
                f"checkpoint.save: leaf {path} = {leaf} does not fit in int64"
            ) from e
        return {"kind": kind, "dtype": kind, "shape": []}, data
    dtype = getattr(leaf, "dtype", None)
    if isinstance(leaf, jax.core.Tracer):
        raise TypeError(
            f"checkpoint.save: leaf {path} is a tracer; call save outside jit/grad"
        )
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        data = np.asarray(jax.random.key_data(leaf))
        record = {
            "kind": "key",
            "dtype": str(dtype),
            "shape": list(leaf.shape),
            "impl": str(jax.random.key_impl(leaf)),
            "data_dtype": data.dtype.name,
            "data_shape": list(data.shape),
        }
        return record, data
    if not isinstance(leaf, jax.Array | np.ndarray | np.generic):
        raise TypeError(
            f"checkpoint.save: leaf {path} is a {type(leaf).__name__}; leaves must "
            "be arrays, typed PRNG keys or Python bool/int/float"
        )
    data = np.asarray(leaf)
    if data.dtype.name not in _DTYPES:
        raise TypeError(
            f"checkpoint.save: leaf {path} has unsupported dtype {data.dtype}"
        )
    return {"kind": "array", "dtype": data.dtype.name, "shape": list(data.shape)}, data


def _little_endian(data: np.ndarray) -> np.ndarray:
    big = data.dtype.byteorder == ">" or (
        data.dtype.byteorder == "=" and not np.little_endian
    )
    return np.ascontiguousarray(
        data.astype(data.dtype.newbyteorder("<")) if big else data
    )


def save(path: str | os.PathLike, tree: PyTree) -> None:
    """Saves a pytree of arrays to ``path``, atomically.

    Args:
      path: the file to write (replaced if it exists; its folder must exist).
      tree: any pytree whose leaves are arrays (JAX or NumPy; fully
        addressable), typed PRNG keys, or Python ``bool``/``int``/``float``.
        NamedTuples (optax states), dicts, tuples, lists and ``None`` nodes
        are all fine.

    Raises:
      TypeError: a leaf of another kind (a string, an object, a tracer),
        named by its key path; nothing is written.
    """
    path = Path(path)
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    records, arrays, offset = [], [], 0
    for key_path, leaf in leaves_with_paths:
        name = _path_str(key_path)
        record, data = _encode_leaf(name, leaf)
        data = _little_endian(data)
        record.update(path=name, offset=offset, nbytes=data.nbytes)
        records.append(record)
        arrays.append(data)
        offset += data.nbytes + _pad(data.nbytes)
    header = {
        "format": "fnn.checkpoint",
        "format_version": FORMAT_VERSION,
        "fnn_version": _fnn_version(),
        "treedef": str(treedef),
        "leaves": records,
    }
    head = json.dumps(header, indent=None).encode()
    head += b" " * _pad(_PREAMBLE.size + len(head))
    hasher = hashlib.sha256()

    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as f:

            def write(chunk) -> None:
                hasher.update(chunk)
                f.write(chunk)

            write(_PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(head), offset))
            write(head)
            for data in arrays:
                write(memoryview(data.reshape(-1).view(np.uint8)))
                write(b"\0" * _pad(data.nbytes))
            f.write(hasher.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows, where folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------


def _read(path: Path) -> tuple[dict, memoryview]:
    """Reads and verifies a checkpoint file: its header and its payload."""
    where = f"{str(path)!r}"
    blob = path.read_bytes()
    if len(blob) < _PREAMBLE.size or blob[:8] != MAGIC:
        raise CheckpointError(
            f"checkpoint: {where} is not an fnn checkpoint (no {MAGIC!r} magic)"
        )
    _, version, _, head_len, payload_len = _PREAMBLE.unpack_from(blob)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint: {where} has format version {version}; this fnn reads up "
            f"to {FORMAT_VERSION}: upgrade fnn"
        )
    size = _PREAMBLE.size + head_len + payload_len + _DIGEST_SIZE
    if len(blob) != size:
        what = "truncated" if len(blob) < size else "has trailing bytes"
        raise CheckpointError(
            f"checkpoint: {where} is {what}: its preamble promises {size} bytes, "
            f"the file has {len(blob)}"
        )
    body = memoryview(blob)[: size - _DIGEST_SIZE]
    if hashlib.sha256(body).digest() != blob[size - _DIGEST_SIZE :]:
        raise CheckpointError(f"checkpoint: {where} is corrupted (SHA-256 mismatch)")
    try:
        header = json.loads(bytes(body[_PREAMBLE.size : _PREAMBLE.size + head_len]))
        if header["format"] != "fnn.checkpoint" or not isinstance(
            header["leaves"], list
        ):
            raise ValueError("not an fnn.checkpoint header")
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint: {where} has an invalid header: {e}") from e
    return header, body[_PREAMBLE.size + head_len :]


def read_header(path: str | os.PathLike) -> dict:
    """The verified JSON header of a checkpoint (metadata, leaf paths, shapes).

    Raises:
      CheckpointError: the file is truncated, corrupt or not a checkpoint.
    """
    return _read(Path(path))[0]


def _like_spec(leaf) -> tuple[str, str, tuple[int, ...]]:
    """(kind, dtype, shape) of a ``like`` leaf."""
    kind = _SCALARS.get(type(leaf))
    if kind is not None:
        return kind, kind, ()
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        dtype = np.asarray(leaf).dtype
    shape = tuple(np.shape(leaf))
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return "key", str(dtype), shape
    return "array", np.dtype(dtype).name, shape


def _decode_leaf(record: dict, payload: memoryview, name: str):
    kind = record["kind"]
    shape = tuple(int(d) for d in record["shape"])
    start, nbytes = int(record["offset"]), int(record["nbytes"])
    if start < 0 or nbytes < 0 or start + nbytes > len(payload):
        raise ValueError(f"leaf {name} lies outside the payload")
    if kind == "key":
        data_dtype, data_shape = record["data_dtype"], record["data_shape"]
    elif kind in _SCALAR_DTYPES:
        data_dtype, data_shape = _SCALAR_DTYPES[kind], shape
    else:
        data_dtype, data_shape = record["dtype"], shape
    if data_dtype not in _DTYPES:
        raise ValueError(f"leaf {name} has unsupported dtype {data_dtype!r}")
    native = jnp.dtype(data_dtype)
    stored = native if np.little_endian else native.newbyteorder("<")
    data_shape = tuple(int(d) for d in data_shape)
    count = math.prod(data_shape)
    if count * native.itemsize != nbytes:
        raise ValueError(f"leaf {name}: {nbytes} bytes do not make {data_shape}")
    data = np.frombuffer(payload, stored, count, start).reshape(data_shape)
    data = data.astype(native)  # a copy: the file's buffer is not kept alive
    if kind == "key":
        return jax.random.wrap_key_data(data, impl=record["impl"])
    if kind in _SCALAR_DTYPES:
        return {"bool": bool, "int": int, "float": float}[kind](data.item())
    return jnp.asarray(data)


def load(path: str | os.PathLike, like: PyTree) -> PyTree:
    """Loads a checkpoint written by :func:`save` into the structure of ``like``.

    Args:
      path: the checkpoint file.
      like: a pytree with the saved tree's structure; its leaves may be arrays,
        ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``), typed keys or
        Python scalars. Leaves are compared in order by key path, kind (array,
        key, bool/int/float), dtype and shape.

    Returns:
      A pytree with ``like``'s structure: JAX arrays for array and key leaves,
      Python scalars where ``like`` has Python scalars.

    Raises:
      CheckpointError: naming the file — it is truncated, corrupted or not an
        fnn checkpoint; or naming the first leaf (by key path) whose path,
        kind, dtype or shape differs from ``like``'s.
    """
    path = Path(path)
    where = f"{str(path)!r}"
    header, payload = _read(path)
    records = header["leaves"]
    like_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    out = []
    for i, (key_path, like_leaf) in enumerate(like_leaves):
        name = _path_str(key_path)
        if i >= len(records):
            raise CheckpointError(
                f"checkpoint.load: leaf {name} of like is missing from {where}, "
                f"which has {len(records)} leaves to like's {len(like_leaves)}"
            )
        try:
            record = records[i]
            saved = (record["kind"], record["dtype"], tuple(record["shape"]))
            saved_name = record["path"]
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint: {where} has an invalid header") from e
        if saved_name != name:
            raise CheckpointError(
                f"checkpoint.load: tree structures differ: leaf #{i} is {saved_name} "
                f"in {where} but {name} in like"
            )
        wanted = _like_spec(like_leaf)
        if saved[0] != wanted[0]:
            hint = (
                " (jax.eval_shape turns Python scalars into arrays: put the scalar "
                "itself in like)"
                if saved[0] in _SCALARS.values()
                else ""
            )
            raise CheckpointError(
                f"checkpoint.load: leaf {name} is {_KINDS.get(saved[0], saved[0])} "
                f"in {where} but {_KINDS[wanted[0]]} in like{hint}"
            )
        for field, a, b in zip(("dtype", "shape"), saved[1:], wanted[1:], strict=True):
            if a != b:
                raise CheckpointError(
                    f"checkpoint.load: leaf {name} has {field} {a} in {where} but "
                    f"{b} in like"
                )
        try:
            out.append(_decode_leaf(record, payload, name))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"checkpoint: {where} has an invalid header: {e}"
            ) from e
    if len(records) > len(like_leaves):
        extra = records[len(like_leaves)]
        extra = extra.get("path") if isinstance(extra, dict) else extra
        raise CheckpointError(
            f"checkpoint.load: tree structures differ: {where} has {len(records)} "
            f"leaves but like has {len(like_leaves)}; the first extra one is {extra}"
        )
    return jax.tree_util.tree_unflatten(treedef, out)
