"""The checkpoint file format: encoding leaves, and validating every field.

``fnn.checkpoint`` holds the public API and the file handling; this module
turns leaves into header records and bytes, and parses a file's bytes back,
checking every field of the preamble and of the JSON header against the one
layout that :func:`fnn.checkpoint.save` writes. The header's SHA-256 has no
key — anyone who can write the file can re-sign it — so nothing in it is
trusted: a forged field is a :class:`FormatError` (a ``ValueError``), never a
``RecursionError``, ``OverflowError``, ``TypeError`` or a wrong load.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import struct

import jax
import jax.numpy as jnp
import numpy as np

FORMAT_VERSION = 1
MAGIC = b"\x89FNNCKPT"
PREAMBLE = struct.Struct("<8sIIQQ")  # magic, version, reserved, H, P
DIGEST_SIZE = 32  # SHA-256
ALIGN = 64
MAX_NDIM = 64  # NumPy's limit
DTYPES = frozenset(
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
KEY_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
SCALARS = {bool: "bool", int: "int", float: "float"}
SCALAR_DTYPES = {"bool": "bool", "int": "int64", "float": "float64"}
KINDS = {
    "array": "an array",
    "key": "a typed PRNG key array",
    "bool": "a Python bool",
    "int": "a Python int",
    "float": "a Python float",
}
_HEADER_KEYS = {"format", "format_version", "fnn_version", "treedef", "leaves"}
_LEAF_KEYS = {"path", "kind", "dtype", "shape", "offset", "nbytes"}
_KEY_KEYS = _LEAF_KEYS | {"impl", "data_dtype", "data_shape"}


class FormatError(ValueError):
    """The bytes are not a valid checkpoint; the message completes
    ``"checkpoint: <file> ..."``."""


def pad(n: int) -> int:
    """Zero bytes after ``n`` bytes up to the next multiple of 64."""
    return -n % ALIGN


@functools.cache
def key_info(impl: str) -> tuple[str, str, tuple[int, ...]]:
    """(key dtype name, data dtype name, per-key data shape) of a PRNG impl."""
    data = jax.random.key_data(jax.random.key(0, impl=impl))
    return str(jax.random.key(0, impl=impl).dtype), data.dtype.name, data.shape


# --------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------


def encode_leaf(path: str, leaf) -> tuple[dict, np.ndarray]:
    """A leaf's header record (without offsets) and the array stored for it.

    Raises:
      TypeError: the leaf cannot be saved, naming ``path``.
    """
    kind = SCALARS.get(type(leaf))
    if kind is not None:
        try:
            data = np.asarray(leaf, dtype=SCALAR_DTYPES[kind])
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
        data = host_value(path, leaf, jax.random.key_data)
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
    data = host_value(path, leaf, lambda a: a)
    if data.dtype.name not in DTYPES:
        raise TypeError(
            f"checkpoint.save: leaf {path} has unsupported dtype {data.dtype}"
        )
    return {"kind": "array", "dtype": data.dtype.name, "shape": list(data.shape)}, data


def _block(index: tuple, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """A shard's index as ``(start, stop)`` per axis of ``shape`` (a key
    array's shards are also indexed along the trailing axis of its data)."""
    return tuple(s.indices(n)[:2] for s, n in zip(index, shape))


def host_value(path: str, leaf, to_data) -> np.ndarray:
    """``np.asarray(to_data(leaf))``, with no transfer between processes.

    An array that spans several processes (``jax.distributed``) is assembled
    from the shards this process holds, when they cover it (a replicated
    array: one local copy); ``to_data`` (e.g. ``jax.random.key_data``) runs
    on each local shard alone.

    Raises:
      ValueError: the array is split across processes, so this process
        holds only part of it, naming ``path``; nothing is gathered.
    """
    if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
        return np.asarray(to_data(leaf))
    blocks = {}  # distinct shards: copies of one block count once
    for shard in leaf.addressable_shards:
        blocks.setdefault(_block(shard.index, leaf.shape), shard)
    held = sum(math.prod(b - a for a, b in block) for block in blocks)
    if not blocks or held < math.prod(leaf.shape):
        raise ValueError(
            f"checkpoint.save: leaf {path} is split across processes "
            f"({leaf.sharding}); process {jax.process_index()} holds {held} of "
            f"its {math.prod(leaf.shape)} elements. save writes whole arrays "
            "from one process: replicate it (jax.device_put with a "
            "NamedSharding(mesh, PartitionSpec())) or gather it on every process "
            "(jax.experimental.multihost_utils.process_allgather(a, tiled=True)) "
            "first"
        )
    parts = {b: np.asarray(to_data(s.data)) for b, s in blocks.items()}
    first = next(iter(parts.values()))
    out = np.empty(leaf.shape + first.shape[leaf.ndim :], first.dtype)
    for block, part in parts.items():
        out[tuple(slice(a, b) for a, b in block)] = part
    return out


def little_endian(data: np.ndarray) -> np.ndarray:
    """``data`` as a C-contiguous little-endian array."""
    big = data.dtype.byteorder == ">" or (
        data.dtype.byteorder == "=" and not np.little_endian
    )
    return np.ascontiguousarray(
        data.astype(data.dtype.newbyteorder("<")) if big else data
    )


# --------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------


def check_preamble(first: bytes, size: int) -> int:
    """Validates the first 32 bytes of a file of ``size`` bytes.

    Returns:
      The file's size as its preamble declares it (equal to ``size``).

    Raises:
      FormatError: no magic, a newer or invalid version, or a size that
        differs from the declared one (truncated, trailing bytes).
    """
    if len(first) < PREAMBLE.size or first[:8] != MAGIC:
        raise FormatError(f"is not an fnn checkpoint (no {MAGIC!r} magic)")
    _, version, reserved, head_len, payload_len = PREAMBLE.unpack_from(first)
    if version > FORMAT_VERSION:
        raise FormatError(
            f"has format version {version}; this fnn reads up to "
            f"{FORMAT_VERSION}: upgrade fnn"
        )
    if version < 1 or reserved != 0 or (PREAMBLE.size + head_len) % ALIGN:
        raise FormatError(
            f"has an invalid preamble (version {version}, reserved {reserved}, "
            f"header length {head_len})"
        )
    total = PREAMBLE.size + head_len + payload_len + DIGEST_SIZE
    if size != total:
        what = "truncated" if size < total else "has trailing bytes"
        raise FormatError(
            f"is {what}: its preamble promises {total} bytes, the file has {size}"
        )
    return total


def _refuse_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def parse(blob) -> tuple[dict, memoryview]:
    """Verifies a whole checkpoint's bytes: preamble, SHA-256, header.

    Returns:
      ``(header, payload)``: the validated header and the payload's bytes.

    Raises:
      FormatError: any field of the file is wrong.
    """
    blob = memoryview(blob)
    check_preamble(blob[: PREAMBLE.size], len(blob))
    _, version, _, head_len, payload_len = PREAMBLE.unpack_from(blob)
    body = blob[: len(blob) - DIGEST_SIZE]
    if hashlib.sha256(body).digest() != blob[len(body) :]:
        raise FormatError("is corrupted (SHA-256 mismatch)")
    try:
        text = bytes(body[PREAMBLE.size : PREAMBLE.size + head_len]).decode("utf-8")
        header = json.loads(text, parse_constant=_refuse_constant)
        validate_header(header, version, payload_len)
    except RecursionError:
        raise FormatError("has an invalid header: nested too deeply") from None
    except (ValueError, TypeError, KeyError, OverflowError) as e:
        raise FormatError(f"has an invalid header: {e}") from e
    return header, body[PREAMBLE.size + head_len :]


def _int(value, what: str, low: int = 0) -> int:
    if type(value) is not int or value < low:
        raise ValueError(f"{what} must be an int >= {low}, got {value!r}")
    return value


def _shape(value, what: str) -> tuple[int, ...]:
    if type(value) is not list or len(value) > MAX_NDIM:
        raise ValueError(f"{what} must be a list of at most {MAX_NDIM} ints")
    return tuple(_int(d, what) for d in value)


def _str(value, what: str) -> str:
    if type(value) is not str:
        raise ValueError(f"{what} must be a string, got {value!r}")
    return value


def _keys(record: dict, expected: set, what: str) -> None:
    if set(record) != expected:
        raise ValueError(
            f"{what} has fields {sorted(record)}, expected {sorted(expected)}"
        )


def data_spec(record: dict) -> tuple[str, tuple[int, ...]]:
    """(dtype name, shape) of the bytes stored for a validated record."""
    if record["kind"] == "key":
        return record["data_dtype"], tuple(record["data_shape"])
    if record["kind"] in SCALAR_DTYPES:
        return SCALAR_DTYPES[record["kind"]], ()
    return record["dtype"], tuple(record["shape"])


def _validate_record(record, i: int) -> None:
    what = f"leaf #{i}"
    if type(record) is not dict:
        raise ValueError(f"{what} must be an object, got {type(record).__name__}")
    kind = record.get("kind")
    if type(kind) is not str or kind not in KINDS:
        raise ValueError(f"{what} has kind {kind!r}, not one of {list(KINDS)}")
    _keys(record, _KEY_KEYS if kind == "key" else _LEAF_KEYS, what)
    what = f"leaf #{i} ({_str(record['path'], what + ' path')!r})"
    dtype = _str(record["dtype"], f"{what} dtype")
    shape = _shape(record["shape"], f"{what} shape")
    if kind == "key":
        impl = _str(record["impl"], f"{what} impl")
        if impl not in KEY_IMPLS:
            raise ValueError(f"{what} has PRNG impl {impl!r}, not one of {KEY_IMPLS}")
        key_dtype, data_dtype, key_shape = key_info(impl)
        data_shape = _shape(record["data_shape"], f"{what} data_shape")
        if (dtype, record["data_dtype"], data_shape) != (
            key_dtype,
            data_dtype,
            shape + key_shape,
        ):
            raise ValueError(
                f"{what}: a {impl} key array of shape {shape} is dtype {key_dtype} "
                f"holding {data_dtype} data of shape {shape + key_shape}; the "
                f"header says {dtype} holding {record['data_dtype']!r} "
                f"{data_shape}"
            )
    elif kind in SCALAR_DTYPES:
        if dtype != kind or shape != ():
            raise ValueError(f"{what}: a Python {kind} has dtype {kind} and shape []")
    elif dtype not in DTYPES:
        raise ValueError(f"{what} has unsupported dtype {dtype!r}")
    stored_dtype, stored_shape = data_spec(record)
    nbytes = _int(record["nbytes"], f"{what} nbytes")
    if nbytes != math.prod(stored_shape) * jnp.dtype(stored_dtype).itemsize:
        raise ValueError(
            f"{what}: {nbytes} bytes do not make a {stored_dtype} array of shape "
            f"{stored_shape}"
        )


def validate_header(header, version: int, payload_len: int) -> None:
    """Checks every field of a parsed header against the layout of ``save``.

    Raises:
      ValueError: naming the first wrong field.
    """
    if type(header) is not dict:
        raise ValueError(f"the header must be an object, got {type(header).__name__}")
    _keys(header, _HEADER_KEYS, "the header")
    if header["format"] != "fnn.checkpoint":
        raise ValueError(f"format is {header['format']!r}, not 'fnn.checkpoint'")
    if _int(header["format_version"], "format_version", 1) != version:
        raise ValueError(
            f"format_version {header['format_version']} differs from the "
            f"preamble's {version}"
        )
    _str(header["fnn_version"], "fnn_version")
    _str(header["treedef"], "treedef")
    leaves = header["leaves"]
    if type(leaves) is not list:
        raise ValueError("leaves must be a list")
    offset, seen = 0, set()
    for i, record in enumerate(leaves):
        _validate_record(record, i)
        if record["path"] in seen:
            raise ValueError(f"leaf #{i}: path {record['path']!r} appears twice")
        seen.add(record["path"])
        if _int(record["offset"], f"leaf #{i} offset") != offset:
            raise ValueError(
                f"leaf #{i} ({record['path']!r}) has offset {record['offset']}, "
                f"but the leaves before it end at {offset}"
            )
        offset += record["nbytes"] + pad(record["nbytes"])
    if offset != payload_len:
        raise ValueError(
            f"the leaves take {offset} payload bytes, the preamble says {payload_len}"
        )


def decode_leaf(record: dict, payload: memoryview, sharding=None):
    """The value of a validated record.

    Args:
      record: a leaf's validated header record.
      payload: the checkpoint's payload bytes.
      sharding: for an array or key record, a ``jax.sharding.Sharding`` to
        place it with: each of this process's devices receives only its
        slice (``jax.make_array_from_callback``); nothing crosses processes.
        ``None``: the default device.

    Returns:
      A Python scalar for bool/int/float records; a typed key array for keys;
      for arrays a JAX array, or a NumPy array when JAX cannot hold the dtype
      exactly (64-bit types while ``jax_enable_x64`` is off).
    """
    kind = record["kind"]
    data_dtype, data_shape = data_spec(record)
    native = jnp.dtype(data_dtype)
    stored = native if np.little_endian else native.newbyteorder("<")
    count = math.prod(data_shape)
    view = np.frombuffer(payload, stored, count, record["offset"]).reshape(data_shape)

    def value(index=()):  # a copy: the payload's buffer is freed after load
        data = np.array(view[index], dtype=native)
        if kind == "key":
            return jax.random.wrap_key_data(data, impl=record["impl"])
        return data

    if kind in SCALAR_DTYPES:
        return {"bool": bool, "int": int, "float": float}[kind](value().item())
    if kind == "array" and jax.dtypes.canonicalize_dtype(native) != native:
        return value()  # e.g. int64 with x64 off: jnp.asarray would narrow it
    if sharding is not None:
        shape = tuple(record["shape"])
        dtype = None if kind == "key" else native
        return jax.make_array_from_callback(shape, sharding, value, dtype=dtype)
    return value() if kind == "key" else jnp.asarray(value())
