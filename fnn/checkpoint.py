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

Every field is validated on load against the one layout ``save`` writes
(leaves back to back in order, each 64-aligned), so a header edited and
re-signed is a :class:`CheckpointError` — never a ``RecursionError``, an
``OverflowError``, a ``TypeError``, or a leaf other than the one the header
and ``like`` both describe (see ``fnn/_checkpoint_format.py``). The SHA-256
detects damage, not tampering: it has no key, so whoever can write the file
can also write a consistent one; load checkpoints you trust.

``load(path, like, prefix=..., strict=False)`` loads part of a checkpoint
into part of a model (transfer learning), with the same checks. Leaves of a
64-bit dtype that JAX cannot hold while ``jax_enable_x64`` is off come back
as exact NumPy arrays, never narrowed.

Writes are atomic (``fnn/_fileio.py``): a temporary file beside the target,
fsynced and renamed over it, so a process killed at any moment leaves the old
checkpoint or the new one, whole (its temporary is removed by the next save).
Overwriting keeps the permission bits; a symbolic link is written through.
Reads refuse anything but a regular file and check the magic bytes and the
declared size before reading the rest.

Sharded arrays, several processes (:mod:`fnn.parallel`): ``save`` reads each
array from the calling process's own shards, never gathering across
processes (a replicated array: its local copy, so process 0 alone saves a
data-parallel run); an array split across processes is refused, never
written partly. ``load`` gives each leaf of ``like`` that is a JAX array
over several devices, or a ``jax.ShapeDtypeStruct`` with a ``sharding``,
that sharding: each device of this process receives only its slice.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from fnn import _checkpoint_format as fmt
from fnn import _fileio

__all__ = ["FORMAT_VERSION", "CheckpointError", "load", "read_header", "save"]

PyTree = Any

FORMAT_VERSION = fmt.FORMAT_VERSION
MAGIC = fmt.MAGIC


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupt, foreign, or does not fit ``like``."""


def _fnn_version() -> str:
    try:
        return importlib.metadata.version("fnn")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _path_str(path) -> str:
    return jax.tree_util.keystr(path) or "<root>"


# --------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------


def save(path: str | os.PathLike, tree: PyTree) -> None:
    """Saves a pytree of arrays to ``path``, atomically.

    The file is written under a temporary name beside the target, fsynced and
    renamed over it, so ``path`` always holds the old checkpoint or the new
    one, whole. Temporaries left by earlier saves of ``path`` that were killed
    mid-write (their process is gone) are removed first. An existing file's
    permission bits are kept. If ``path`` is a symbolic link, the file it
    points to is replaced and the link stays.

    Args:
      path: the file to write (replaced if it exists; its folder must exist).
      tree: any pytree whose leaves are arrays (JAX, sharded or not, or
        NumPy), typed PRNG keys, or Python ``bool``/``int``/``float``.
        NamedTuples (optax states), dicts, tuples, lists and ``None`` nodes
        are all fine. An array over several processes is read from this
        process's shards alone (a replicated one from its local copy).

    Raises:
      TypeError: a leaf of another kind (a string, an object, a tracer),
        named by its key path; nothing is written.
      ValueError: an array split across processes, of which this process
        holds only part, or two leaves with one key path, named by that key
        path; nothing is written.
      OSError: the folder is missing or not writable; nothing is written.

    Example:
      >>> import tempfile, pathlib, jax.numpy as jnp
      >>> from fnn import checkpoint
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "c.fnn"
      >>> checkpoint.save(path, {"w": jnp.ones(2), "step": 3})
      >>> checkpoint.load(path, {"w": jnp.zeros(2), "step": 0})["step"]
      3
    """
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    records, arrays, offset, seen = [], [], 0, set()
    for key_path, leaf in leaves_with_paths:
        name = _path_str(key_path)
        if name in seen:  # load could not tell the two leaves apart
            raise ValueError(
                f"checkpoint.save: two leaves have the key path {name} (repeated "
                "keys of a pytree node, or dict keys that print alike)"
            )
        seen.add(name)
        record, data = fmt.encode_leaf(name, leaf)
        data = fmt.little_endian(data)
        record.update(path=name, offset=offset, nbytes=data.nbytes)
        records.append(record)
        arrays.append(data)
        offset += data.nbytes + fmt.pad(data.nbytes)
    header = {
        "format": "fnn.checkpoint",
        "format_version": FORMAT_VERSION,
        "fnn_version": _fnn_version(),
        "treedef": str(treedef),
        "leaves": records,
    }
    head = json.dumps(header, indent=None).encode()
    head += b" " * fmt.pad(fmt.PREAMBLE.size + len(head))

    def write(f) -> None:
        hasher = hashlib.sha256()

        def put(chunk) -> None:
            hasher.update(chunk)
            f.write(chunk)

        put(fmt.PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(head), offset))
        put(head)
        for data in arrays:
            put(memoryview(data.reshape(-1).view(np.uint8)))
            put(b"\0" * fmt.pad(data.nbytes))
        f.write(hasher.digest())

    _fileio.write_atomic(path, write)


# --------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------


def _read(path: str | os.PathLike) -> tuple[dict, memoryview]:
    """Reads and verifies a checkpoint file: its header and its payload."""
    where = repr(os.fspath(path))

    def check(first: bytes, size: int) -> int:
        try:
            return fmt.check_preamble(first, size)
        except fmt.FormatError as e:
            raise CheckpointError(f"checkpoint: {where} {e}") from None

    try:
        blob = _fileio.read_regular(path, check, head=fmt.PREAMBLE.size)
        return fmt.parse(blob)
    except fmt.FormatError as e:
        raise CheckpointError(f"checkpoint: {where} {e}") from None
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CheckpointError(f"checkpoint: cannot read {where}: {e}") from e


def read_header(path: str | os.PathLike) -> dict:
    """The verified JSON header of a checkpoint (metadata, leaf paths, shapes).

    Args:
      path: the checkpoint file.

    Returns:
      The header: ``format``, ``format_version``, ``fnn_version``,
      ``treedef`` and ``leaves`` (one record per leaf), every field checked.

    Raises:
      CheckpointError: the file is truncated, corrupt, not a regular file or
        not a checkpoint, or a field of its header is invalid.
      FileNotFoundError: there is no such file.
    """
    return _read(path)[0]


def _like_spec(leaf) -> tuple[str, str, tuple[int, ...]]:
    """(kind, dtype, shape) of a ``like`` leaf."""
    kind = fmt.SCALARS.get(type(leaf))
    if kind is not None:
        return kind, kind, ()
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        dtype = np.asarray(leaf).dtype
    shape = tuple(np.shape(leaf))
    if jax.numpy.issubdtype(dtype, jax.dtypes.prng_key):
        return "key", str(dtype), shape
    return "array", np.dtype(dtype).name, shape


def _placement(leaf):
    """The sharding a like leaf asks for; None for the default device."""
    sharding = getattr(leaf, "sharding", None)
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return sharding
    if isinstance(leaf, jax.Array) and len(sharding.device_set) > 1:
        return sharding
    return None


def _check_leaf(record: dict, like_leaf, name: str, where: str) -> None:
    """Raises CheckpointError if a saved record does not fit a like leaf."""
    saved = (record["kind"], record["dtype"], tuple(record["shape"]))
    wanted = _like_spec(like_leaf)
    if saved[0] != wanted[0]:
        hint = (
            " (jax.eval_shape turns Python scalars into arrays: put the scalar "
            "itself in like)"
            if saved[0] in fmt.SCALARS.values()
            else ""
        )
        raise CheckpointError(
            f"checkpoint.load: leaf {name} is {fmt.KINDS[saved[0]]} "
            f"in {where} but {fmt.KINDS[wanted[0]]} in like{hint}"
        )
    for field, a, b in zip(("dtype", "shape"), saved[1:], wanted[1:], strict=True):
        if a != b:
            raise CheckpointError(
                f"checkpoint.load: leaf {name} has {field} {a} in {where} but "
                f"{b} in like"
            )


_KEY_ENTRIES = (
    jax.tree_util.SequenceKey,
    jax.tree_util.DictKey,
    jax.tree_util.GetAttrKey,
    jax.tree_util.FlattenedIndexKey,
)


def _prefix_str(prefix) -> str:
    """A key-path prefix as ``jax.tree_util.keystr`` writes it."""
    if isinstance(prefix, str):
        if prefix and prefix[0] not in "[.":
            raise ValueError(
                f"checkpoint.load: prefix {prefix!r} is not a key path as "
                'jax.tree_util.keystr writes it, e.g. "[0]" or "[\'params\']"'
            )
        return prefix
    if not isinstance(prefix, tuple | list):
        raise TypeError(
            'checkpoint.load: prefix must be a key-path string such as "[0]" '
            f"or a tuple of keys such as (0, 'w'), got {prefix!r}"
        )
    parts = []
    for key in prefix:
        if isinstance(key, _KEY_ENTRIES):
            parts.append(jax.tree_util.keystr((key,)))
        elif isinstance(key, int | str) and not isinstance(key, bool):
            parts.append(f"[{key!r}]")
        else:
            raise TypeError(
                "checkpoint.load: prefix entries must be ints, strings or jax "
                f"key entries, got {key!r}"
            )
    return "".join(parts)


_PARTIAL = " (to load part of a checkpoint, pass strict=False and maybe prefix=)"


def _under(path: str, prefix: str) -> bool:
    """Whether key path ``path`` lies in the subtree at key path ``prefix``."""
    rest = path[len(prefix) :]
    return path.startswith(prefix) and (not rest or rest[0] in "[.")


def _select(records: list, like_leaves: list, prefix: str, strict: bool, where):
    """The record for each like leaf, in like's order."""
    names = [prefix + jax.tree_util.keystr(p) or "<root>" for p, _ in like_leaves]
    if prefix:
        records = [r for r in records if _under(r["path"], prefix)]
        if not records and names:
            raise CheckpointError(
                f"checkpoint.load: {where} has no leaves under prefix {prefix!r}"
            )
    if not strict:
        by_path = {r["path"]: r for r in records}
        for name in names:
            if name not in by_path:
                shown = ", ".join(r["path"] for r in records[:8])
                raise CheckpointError(
                    f"checkpoint.load: leaf {name} of like is not in {where}, "
                    f"whose leaves{' under ' + repr(prefix) if prefix else ''} "
                    f"are {shown}{', ...' if len(records) > 8 else ''}"
                )
        return [by_path[name] for name in names]
    for i, name in enumerate(names):
        if i >= len(records):
            raise CheckpointError(
                f"checkpoint.load: leaf {name} of like is missing from {where}, "
                f"which has {len(records)} leaves to like's {len(names)}"
            )
        if records[i]["path"] != name:
            raise CheckpointError(
                f"checkpoint.load: tree structures differ: leaf #{i} is "
                f"{records[i]['path']} in {where} but {name} in like{_PARTIAL}"
            )
    if len(records) > len(names):
        raise CheckpointError(
            f"checkpoint.load: tree structures differ: {where} has {len(records)} "
            f"leaves but like has {len(names)}; the first extra one is "
            f"{records[len(names)]['path']}{_PARTIAL}"
        )
    return records


def load(
    path: str | os.PathLike,
    like: PyTree,
    *,
    prefix: str | Sequence = "",
    strict: bool = True,
) -> PyTree:
    """Loads a checkpoint written by :func:`save` into the structure of ``like``.

    Every field of the file is validated first (a damaged file, or a header
    whose fields contradict each other or the layout ``save`` writes, is a
    :class:`CheckpointError`); then each leaf of ``like``
    is matched with a saved leaf by key path and compared by kind (array, key,
    bool/int/float), dtype and shape — the same checks with or without
    ``prefix`` and ``strict``.

    Part of a checkpoint loads into part of a model (transfer learning) with
    ``prefix`` and ``strict=False``. With ``(params, state, opt_state)`` saved
    from a ``serial`` model, its trained body (every layer but the last) goes
    into a new model whose head differs::

        params, state = new_model.init(key, input_shape)[1:]
        body = checkpoint.load(path, params[:-1], prefix="[0]", strict=False)
        params = (*body, params[-1])

    Args:
      path: the checkpoint file (a regular file; a FIFO or device is refused
        without reading).
      like: a pytree with the structure to load; its leaves may be arrays,
        ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``), typed keys or
        Python scalars. A JAX array (or key array) over several devices, or a
        ``ShapeDtypeStruct`` with a ``sharding``, has its leaf loaded with
        that sharding, each device (of this process) receiving its slice;
        other arrays load onto the default device.
      prefix: the key path, in the file, of the subtree ``like`` describes: a
        string as ``jax.tree_util.keystr`` writes it (``"[0]"``, ``"[0][2]"``,
        ``"['params']"``) or a tuple of keys (``(0,)``, ``("params", 2)``).
        A leaf of ``like`` at key path ``p`` is the saved leaf ``prefix + p``.
        Default ``""``: ``like`` describes the whole saved tree.
      strict: if True, the saved leaves under ``prefix`` must be exactly
        ``like``'s, in order; if False, ``like`` may hold only some of them
        (each one it holds must be there), and the others are skipped.

    Returns:
      A pytree with ``like``'s structure: Python scalars where the file has
      Python scalars, typed key arrays for keys, JAX arrays for arrays —
      except arrays of a dtype that JAX cannot hold exactly in the current
      mode (``int64``, ``uint64``, ``float64``, ``complex128`` while
      ``jax_enable_x64`` is off), which come back as NumPy arrays holding the
      saved values, never narrowed to 32 bits.

    Raises:
      CheckpointError: naming the file — it is truncated, corrupted, not a
        regular file, not an fnn checkpoint, or a header field is invalid;
        or naming the first leaf (by key path) that is missing, extra, or
        whose kind, dtype or shape differs from ``like``'s.
      TypeError: ``prefix`` is neither a string nor a tuple of keys, or
        ``strict`` is not a bool.
      ValueError: a ``prefix`` string that is not a key path.
      FileNotFoundError: there is no such file.
    """
    where = repr(os.fspath(path))
    if not isinstance(strict, bool):
        raise TypeError(f"checkpoint.load: strict must be a bool, got {strict!r}")
    prefix = _prefix_str(prefix)
    header, payload = _read(path)
    like_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    records = _select(header["leaves"], like_leaves, prefix, strict, where)
    out = []
    for record, (_, like_leaf) in zip(records, like_leaves):
        _check_leaf(record, like_leaf, record["path"], where)
        out.append(fmt.decode_leaf(record, payload, _placement(like_leaf)))
    return jax.tree_util.tree_unflatten(treedef, out)
