"""Tests for fnn.checkpoint: roundtrips, validation against `like`, corrupt
files, no pickle, and atomicity under SIGKILL."""

import hashlib
import io
import json
import os
import random
import re
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fnn import _fileio, checkpoint
from fnn.checkpoint import CheckpointError

REPO = Path(__file__).resolve().parents[1]


def make_tree():
    """A training-state-like tree: (params, state, opt_state, extras)."""
    rng = np.random.default_rng(0)
    params = [
        {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "b": jnp.zeros(3)},
        {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.bfloat16)},
        (),
    ]
    state = {"bn": {"mean": jnp.arange(3.0), "var": jnp.ones(3)}, "none": None}
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    opt_state = opt.init(params)
    # Bit patterns that a float conversion would lose: NaN payloads, -0, inf.
    bits = np.array([0x7FC00001, 0xFFC12345, 0x80000000, 0x7F800000], np.uint32)
    extras = {
        "step": 7,
        "lr": 0.125,
        "done": False,
        "key": jax.random.key(42),
        "keys": jax.random.split(jax.random.key(1), 3),
        "raw_key": jax.random.PRNGKey(5),
        "special": bits.view(np.float32),
        "counts": np.arange(6, dtype=np.int32).reshape(2, 3),
        "bf16_nan": jnp.asarray(np.array([0x7FC1, 0x8000], np.uint16)).view(
            jnp.bfloat16
        ),
        "i8": np.array([-128, 127], np.int8),
    }
    return params, state, opt_state, extras


def assert_bitwise_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        if isinstance(x, bool | int | float):
            assert type(x) is type(y) and x == y
            continue
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert x.dtype == y.dtype
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


# --------------------------------------------------------------------------
# roundtrips
# --------------------------------------------------------------------------


def test_roundtrip_is_bit_for_bit(tmp_path):
    tree = make_tree()
    path = tmp_path / "ckpt"
    checkpoint.save(path, tree)
    loaded = checkpoint.load(path, tree)
    assert_bitwise_equal(loaded, tree)
    assert isinstance(loaded[2][1][0], optax.ScaleByAdamState)
    assert isinstance(loaded[0][0]["w"], jax.Array)
    assert isinstance(loaded[3]["step"], int) and loaded[3]["step"] == 7
    # A restored key draws the same numbers as the original.
    np.testing.assert_array_equal(
        jax.random.normal(loaded[3]["key"], (3,)),
        jax.random.normal(tree[3]["key"], (3,)),
    )


def test_load_accepts_shape_dtype_structs_as_like(tmp_path):
    params, state, opt_state, _ = make_tree()
    tree = (params, state, opt_state, jax.random.split(jax.random.key(0), 2))
    checkpoint.save(tmp_path / "ckpt", tree)
    like = jax.eval_shape(lambda: tree)
    assert_bitwise_equal(checkpoint.load(tmp_path / "ckpt", like), tree)


def test_empty_tree_and_single_array_roundtrip(tmp_path):
    checkpoint.save(tmp_path / "empty", {})
    assert checkpoint.load(tmp_path / "empty", {}) == {}
    checkpoint.save(tmp_path / "one", jnp.arange(5))
    np.testing.assert_array_equal(
        checkpoint.load(str(tmp_path / "one"), jnp.zeros(5, jnp.int32)), np.arange(5)
    )


def test_header_records_versions_structure_and_leaves(tmp_path):
    tree = make_tree()
    checkpoint.save(tmp_path / "ckpt", tree)
    header = checkpoint.read_header(tmp_path / "ckpt")
    assert header["format"] == "fnn.checkpoint"
    assert header["format_version"] == checkpoint.FORMAT_VERSION
    assert isinstance(header["fnn_version"], str) and header["fnn_version"]
    assert header["treedef"] == str(jax.tree.structure(tree))
    paths = [
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)
    ]
    assert [leaf["path"] for leaf in header["leaves"]] == paths
    by_path = {leaf["path"]: leaf for leaf in header["leaves"]}
    assert by_path["[0][1]['w']"]["dtype"] == "bfloat16"
    assert by_path["[0][1]['w']"]["shape"] == [3, 2]
    assert by_path["[3]['keys']"]["kind"] == "key"
    assert by_path["[3]['keys']"]["impl"] == "threefry2x32"
    assert by_path["[3]['step']"]["kind"] == "int"


def test_save_replaces_the_old_file_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "ckpt"
    checkpoint.save(path, {"a": jnp.zeros(3)})
    checkpoint.save(path, {"a": jnp.ones(3)})
    np.testing.assert_array_equal(checkpoint.load(path, {"a": jnp.zeros(3)})["a"], 1.0)
    assert os.listdir(tmp_path) == ["ckpt"]


def test_save_rejects_unsupported_leaves_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "ckpt"
    checkpoint.save(path, {"a": jnp.zeros(3)})
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"leaf \['b'\]\[1\] is a str"):
        checkpoint.save(path, {"a": jnp.ones(3), "b": (1, "text")})
    with pytest.raises(TypeError, match="does not fit in int64"):
        checkpoint.save(path, {"a": 2**70})
    with pytest.raises(TypeError, match="unsupported dtype"):
        checkpoint.save(path, {"a": np.array(["x"])})
    with pytest.raises(TypeError, match="tracer"):
        jax.jit(lambda x: checkpoint.save(path, {"a": x}))(jnp.ones(3))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ckpt"]


class _TwinLeaves:
    """A pytree node that names both of its children ``.w``."""

    def __init__(self, a, b):
        self.a, self.b = a, b


_W = jax.tree_util.GetAttrKey("w")
jax.tree_util.register_pytree_with_keys(
    _TwinLeaves,
    lambda t: (((_W, t.a), (_W, t.b)), None),
    lambda _, children: _TwinLeaves(*children),
)


def test_save_refuses_two_leaves_with_one_key_path(tmp_path):
    # It wrote a file that load then called corrupt ("path '.w' appears twice").
    path = tmp_path / "ckpt"
    with pytest.raises(ValueError, match=r"two leaves have the key path \['t'\]\.w"):
        checkpoint.save(path, {"t": _TwinLeaves(jnp.ones(2), jnp.zeros(2))})
    assert not path.exists()


# --------------------------------------------------------------------------
# validation against like
# --------------------------------------------------------------------------


def _params(w_shape=(64, 10), dtype=jnp.float32):
    return ({"w": jnp.zeros((8, 64))}, {}, {"w": jnp.zeros(w_shape, dtype)})


def test_load_names_a_shape_mismatch_with_its_path(tmp_path):
    path = tmp_path / "ckpt.fnn"
    checkpoint.save(path, (_params(), 3))
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path, (_params((32, 10)), 3))
    assert str(info.value) == (
        f"checkpoint.load: leaf [0][2]['w'] has shape (64, 10) in {str(path)!r} "
        "but (32, 10) in like"
    )


def test_load_names_the_first_of_several_mismatches(tmp_path):
    path = tmp_path / "ckpt"
    checkpoint.save(path, _params())
    like = ({"w": jnp.zeros((8, 65))}, {}, {"w": jnp.zeros((32, 10))})
    with pytest.raises(CheckpointError, match=r"leaf \[0\]\['w'\] has shape \(8, 64\)"):
        checkpoint.load(path, like)


def test_load_names_a_dtype_mismatch(tmp_path):
    path = tmp_path / "ckpt"
    checkpoint.save(path, _params())
    with pytest.raises(
        CheckpointError,
        match=r"leaf \[2\]\['w'\] has dtype float32 in .* but bfloat16 in like",
    ):
        checkpoint.load(path, _params(dtype=jnp.bfloat16))


@pytest.mark.parametrize(
    "like, pattern",
    [
        (
            ({"v": jnp.zeros((8, 64))}, {}, {"w": jnp.zeros((64, 10))}),
            r"leaf #0 is \[0\]\['w'\] in .* but \[0\]\['v'\] in like",
        ),
        (
            ({"w": jnp.zeros((8, 64))}, {}),
            r"has 2 leaves but like has 1; the first extra one is \[2\]\['w'\]",
        ),
        (
            (*_params(), jnp.zeros(())),
            r"leaf \[3\] of like is missing from .*, which has 2 leaves",
        ),
        (
            ({"w": jnp.zeros((8, 64))}, {}, {"w": jax.random.key(0)}),
            r"leaf \[2\]\['w'\] is an array in .* but a typed PRNG key array in like",
        ),
    ],
    ids=["renamed", "fewer", "more", "kind"],
)
def test_load_names_a_structure_mismatch(tmp_path, like, pattern):
    path = tmp_path / "ckpt"
    checkpoint.save(path, _params())
    with pytest.raises(CheckpointError, match=pattern):
        checkpoint.load(path, like)


def test_load_tells_python_scalars_from_arrays(tmp_path):
    path = tmp_path / "ckpt"
    checkpoint.save(path, {"step": 3})
    with pytest.raises(CheckpointError, match="is a Python int in .*eval_shape"):
        checkpoint.load(path, jax.eval_shape(lambda: {"step": 3}))
    with pytest.raises(CheckpointError, match="is a Python int in .* a Python float"):
        checkpoint.load(path, {"step": 3.0})


# --------------------------------------------------------------------------
# corrupt and foreign files
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(folder, the bytes of a valid checkpoint, its tree)."""
    folder = tmp_path_factory.mktemp("ckpt")
    tree = make_tree()
    checkpoint.save(folder / "valid", tree)
    return folder, (folder / "valid").read_bytes(), tree


def _npz_bytes():
    buffer = io.BytesIO()
    np.savez(buffer, a=np.zeros(3))
    return buffer.getvalue()


def _zip_bytes():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("hello.txt", "not a checkpoint")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda valid: valid[:-1], "truncated"),
        (lambda valid: valid[: len(valid) // 2], "truncated"),
        (lambda valid: valid[:40], "truncated"),
        (lambda valid: valid[:10], "not an fnn checkpoint"),
        (lambda valid: b"", "not an fnn checkpoint"),
        (lambda valid: valid + b"\0", "trailing bytes"),
        (lambda valid: os.urandom(4096), "not an fnn checkpoint"),
        (lambda valid: _npz_bytes(), "not an fnn checkpoint"),
        (lambda valid: _zip_bytes(), "not an fnn checkpoint"),
        (lambda valid: b"hello, world\n" * 10, "not an fnn checkpoint"),
        (
            lambda valid: valid[:100] + bytes([valid[100] ^ 1]) + valid[101:],
            "corrupted",
        ),
        (lambda valid: valid[:-5] + b"\0" * 5, "corrupted"),
        (
            lambda valid: valid[:8] + struct.pack("<I", 2) + valid[12:],
            "format version 2.*upgrade fnn",
        ),
    ],
    ids=[
        "minus-one-byte",
        "half",
        "after-preamble",
        "inside-preamble",
        "empty",
        "trailing",
        "random",
        "npz",
        "zip",
        "text",
        "bit-flip",
        "digest",
        "newer",
    ],
)
def test_bad_files_raise_checkpoint_error_naming_the_file(saved, make, pattern):
    folder, valid, tree = saved
    path = folder / "bad"
    path.write_bytes(make(valid))
    with pytest.raises(CheckpointError, match=pattern) as info:
        checkpoint.load(path, tree)
    assert repr(str(path)) in str(info.value)
    assert isinstance(info.value, ValueError)


@st.composite
def corruptions(draw, size):
    how = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite"]))
    i = draw(st.integers(0, size - 1))
    return how, i, draw(st.integers(0, 7)), draw(st.binary(min_size=1, max_size=16))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_fuzzed_checkpoints_raise_only_checkpoint_error(saved, data):
    folder, valid, tree = saved
    how, i, bit, junk = data.draw(corruptions(len(valid)))
    blob = bytearray(valid)
    if how == "flip":
        blob[i] ^= 1 << bit
    elif how == "truncate":
        del blob[i:]
    elif how == "insert":
        blob[i:i] = junk
    else:
        blob[i : i + len(junk)] = junk
    path = folder / "fuzzed"
    path.write_bytes(bytes(blob))
    if bytes(blob) == valid:  # an overwrite with the same bytes
        assert_bitwise_equal(checkpoint.load(path, tree), tree)
        return
    # Every change is caught: the SHA-256 covers every byte, payload included.
    with pytest.raises(CheckpointError, match=re.escape(repr(str(path)))):
        checkpoint.load(path, tree)


def test_no_module_uses_pickle():
    pattern = re.compile(
        r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle|shelve|marshal)\b"
        r"|allow_pickle\s*=\s*True",
        re.MULTILINE,
    )
    sources = sorted((REPO / "fnn").rglob("*.py"))
    assert REPO / "fnn" / "checkpoint.py" in sources
    offenders = [str(p) for p in sources if pattern.search(p.read_text())]
    assert offenders == []


# --------------------------------------------------------------------------
# atomicity under SIGKILL
# --------------------------------------------------------------------------

# A zygote process imports fnn once, then for each round forks a writer that
# saves ~1 MB checkpoints in a loop (step k: every leaf holds k) until the test
# SIGKILLs it. Forking spares each round the second it takes to import JAX.
_ZYGOTE = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from fnn import checkpoint

    def write_forever(path, step):
        announced = False
        while True:
            tree = {
                "a": np.full((512, 384), step, np.float32),
                "b": (np.full((256, 128), step, np.int32), step),
            }
            checkpoint.save(path, tree)
            if not announced:
                os.write(1, f"ready {os.getpid()}\\n".encode())
                announced = True
            step += 1

    for line in iter(sys.stdin.readline, ""):
        path, step = line.rsplit(maxsplit=1)
        pid = os.fork()
        if pid == 0:
            try:
                write_forever(path, int(step))
            finally:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        os.write(1, f"exit {status}\\n".encode())
    """
)
_LIKE = {"a": jnp.zeros((512, 384)), "b": (jnp.zeros((256, 128), jnp.int32), 0)}


def _consistent_step(path):
    tree = checkpoint.load(path, _LIKE)
    step = tree["b"][1]
    np.testing.assert_array_equal(tree["a"], np.float32(step))
    np.testing.assert_array_equal(tree["b"][0], step)
    return step


def test_a_killed_writer_leaves_a_whole_checkpoint(tmp_path):
    """SIGKILL a process saving ~1 MB checkpoints in a loop at random moments:
    the file always loads, and all its leaves come from the same save."""
    rng = random.Random(0)
    path = tmp_path / "ckpt"
    pythonpath = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath))
    with (tmp_path / "zygote.err").open("w") as err:  # the child keeps a copy
        zygote = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            text=True,
        )
    step, writer, extra_saves = 0, None, set()
    try:
        for _ in range(20):
            zygote.stdin.write(f"{path} {step}\n")
            zygote.stdin.flush()
            line = zygote.stdout.readline()
            if not line.startswith("ready "):
                zygote.kill()
                pytest.fail(
                    f"writer failed: {line}{(tmp_path / 'zygote.err').read_text()}"
                )
            writer = int(line.split()[1])
            time.sleep(rng.uniform(0.0, 0.1))
            os.kill(writer, signal.SIGKILL)
            status = int(zygote.stdout.readline().split()[1])
            writer = None
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            loaded = _consistent_step(path)
            assert loaded >= step  # the announced save, or a later one
            extra_saves.add(loaded - step)
            step = loaded + 1
    finally:
        if writer is not None:
            os.kill(writer, signal.SIGKILL)
        zygote.stdin.close()  # the zygote's loop ends, and so does it
        try:
            zygote.wait(timeout=10)
        except subprocess.TimeoutExpired:
            zygote.kill()
            zygote.wait()
        zygote.stdout.close()
    assert zygote.returncode == 0
    assert len(extra_saves) > 1, "every kill landed after the same number of saves"
    # Each writer's first save removed the temporaries of the killed ones
    # before it: at most the last killed writer's remains...
    strays = {p.name for p in tmp_path.iterdir()} - {"ckpt", "zygote.err"}
    assert len(strays) <= 1
    temporary = r"\.ckpt\.[0-9a-f]{8}-\d+\.[0-9a-f]{12}\.tmp"
    assert all(re.fullmatch(temporary, name) for name in strays)
    zeros = {
        "a": np.zeros((512, 384), np.float32),
        "b": (np.zeros((256, 128), np.int32), 0),
    }
    checkpoint.save(path, zeros)
    assert _consistent_step(path) == 0
    # ... and the next save removes it too.
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "zygote.err"]


# --------------------------------------------------------------------------
# forged headers: edited and re-signed with the (keyless) SHA-256
# --------------------------------------------------------------------------

_PRE = struct.Struct("<8sIIQQ")


def split_file(blob):
    """(version, header text, payload) of a checkpoint's bytes."""
    _, version, _, head_len, payload_len = _PRE.unpack_from(blob)
    head = blob[_PRE.size : _PRE.size + head_len].decode()
    payload = blob[_PRE.size + head_len : _PRE.size + head_len + payload_len]
    return version, head, payload


def resign(head, payload, version=1, reserved=0):
    """A checkpoint with the given header text and payload, correctly signed."""
    head = head.encode() if isinstance(head, str) else head
    head += b" " * (-(_PRE.size + len(head)) % 64)
    body = _PRE.pack(checkpoint.MAGIC, version, reserved, len(head), len(payload))
    body += head + payload
    return body + hashlib.sha256(body).digest()


def forge(valid, edit):
    """``valid`` with its header passed through ``edit`` (a function of the
    header dict giving a dict, or the header's text or bytes) and re-signed."""
    version, head, payload = split_file(valid)
    header = edit(json.loads(head))
    if not isinstance(header, str | bytes):
        header = json.dumps(header)
    return resign(header, payload)


def _edit_leaf(index, **fields):
    def edit(header):
        header["leaves"][index].update(fields)
        return header

    return edit


def _key_tree():
    return {"k": jax.random.split(jax.random.key(3), 3), "w": jnp.arange(4.0)}


def test_resign_reproduces_a_valid_file(tmp_path):
    """The forging helpers are faithful: an unedited re-sign is the file."""
    checkpoint.save(tmp_path / "c", _key_tree())
    valid = (tmp_path / "c").read_bytes()
    assert forge(valid, lambda h: h) == valid


def _deep(header):
    return json.dumps(header)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (_deep, "nested too deeply"),
        (lambda h: json.dumps(h).replace('"offset": 0', '"offset": Infinity'), "JSON"),
        (_edit_leaf(1, offset=10**30), "offset"),
        (_edit_leaf(1, offset=-64), "offset"),
        (_edit_leaf(1, offset=64.0), "offset"),
        (_edit_leaf(1, kind=["array"]), "kind"),
        (_edit_leaf(1, kind="pickle"), "kind"),
        (_edit_leaf(1, dtype="object"), "unsupported dtype"),
        (_edit_leaf(1, dtype=["float32"]), "dtype must be a string"),
        (_edit_leaf(1, shape=[2, True]), "shape"),
        (_edit_leaf(1, shape=[3, 2]), "bytes do not make"),
        (_edit_leaf(1, shape=[-4]), "shape"),
        (_edit_leaf(1, shape=[1] * 65), "shape"),
        (_edit_leaf(1, nbytes=8), "bytes do not make"),
        (_edit_leaf(1, path=7), "path"),
        (_edit_leaf(1, path="['k']"), "appears twice"),
        (_edit_leaf(1, extra=1), "fields"),
        # a PRNG-key leaf of another shape than its data, or another impl
        (_edit_leaf(0, shape=[6]), "key array of shape"),
        (_edit_leaf(0, data_shape=[2, 3]), "key array of shape"),
        (_edit_leaf(0, impl="rbg"), "key array of shape"),
        (_edit_leaf(0, impl="mersenne"), "PRNG impl"),
        (_edit_leaf(0, data_dtype="float32"), "key array of shape"),
        (lambda h: {**h, "leaves": {"0": h["leaves"]}}, "leaves must be a list"),
        (lambda h: {**h, "format_version": 2}, "format_version"),
        (lambda h: {**h, "treedef": None}, "treedef"),
        (lambda h: {**h, "more": 1}, "fields"),
        (lambda h: h["leaves"], "must be an object"),
        (lambda h: '{"format": "fnn.checkpoint", "format": 1}', "fields"),
        (lambda h: json.dumps(h)[:-1], "invalid header"),
        (lambda h: b"\xff\xfe{}", "invalid header"),
    ],
)
def test_forged_headers_are_checkpoint_errors(tmp_path, edit, pattern):
    tree = _key_tree()
    checkpoint.save(tmp_path / "c", tree)
    path = tmp_path / "forged"
    path.write_bytes(forge((tmp_path / "c").read_bytes(), edit))
    with pytest.raises(CheckpointError, match=pattern) as info:
        checkpoint.load(path, tree)
    assert repr(str(path)) in str(info.value)
    with pytest.raises(CheckpointError, match=pattern):
        checkpoint.read_header(path)


def test_forged_preamble_fields_are_checkpoint_errors(tmp_path):
    checkpoint.save(tmp_path / "c", {"w": jnp.ones(3)})
    _, head, payload = split_file((tmp_path / "c").read_bytes())
    unpadded = head.rstrip().encode()
    unpadded += b" " * ((_PRE.size + len(unpadded)) % 64 == 0)
    body = _PRE.pack(checkpoint.MAGIC, 1, 0, len(unpadded), len(payload))
    body += unpadded + payload
    cases = {
        "version 0": resign(head, payload, version=0),
        "reserved": resign(head, payload, reserved=1),
        "unaligned payload": body + hashlib.sha256(body).digest(),
    }
    for name, blob in cases.items():
        path = tmp_path / name.replace(" ", "-")
        path.write_bytes(blob)
        with pytest.raises(CheckpointError, match="invalid preamble"):
            checkpoint.load(path, {"w": jnp.ones(3)})


def test_a_consistently_forged_key_of_another_impl_meets_like(tmp_path):
    """A header re-signed to call threefry key data an rbg key is consistent
    on its own; like's key type still refuses it."""
    checkpoint.save(tmp_path / "c", {"k": jax.random.split(jax.random.key(0), 2)})
    # 2 threefry keys hold 2x2 uint32 = one rbg key's 4 words.
    edit = _edit_leaf(0, impl="rbg", dtype="key<rbg>", shape=[], data_shape=[4])
    (tmp_path / "f").write_bytes(forge((tmp_path / "c").read_bytes(), edit))
    with pytest.raises(CheckpointError, match="dtype key<rbg> in .* key<fry> in like"):
        checkpoint.load(tmp_path / "f", {"k": jax.random.key(0)})
    rbg = checkpoint.load(tmp_path / "f", {"k": jax.random.key(0, impl="rbg")})["k"]
    assert str(jax.random.key_impl(rbg)) == "rbg" and rbg.shape == ()


# A header to edit: one leaf of each kind.
def _fuzz_tree():
    return {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "k": jax.random.key(1),
        "n": 5,
        "f": 0.5,
        "b": True,
        "i": np.array([1, -2], np.int8),
    }


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["array", "key", "int", "float32", "int64", "threefry2x32"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["kind", "shape", "x"]), inner, max_size=2)
    ),
    max_leaves=6,
)


@st.composite
def forged_files(draw, valid):
    """A valid file's header with a field replaced, removed or added, or its
    header text cut or bit-flipped — re-signed; or the file truncated or
    bit-flipped without re-signing."""
    version, head, payload = split_file(valid)
    how = draw(st.sampled_from(["field", "text", "truncate", "flip"]))
    if how == "truncate":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if how == "flip":
        blob = bytearray(valid)
        blob[draw(st.integers(0, len(blob) - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(blob)
    if how == "text":
        text = bytearray(head.rstrip().encode())
        i = draw(st.integers(0, len(text) - 1))
        if draw(st.booleans()):
            text[i] ^= 1 << draw(st.integers(0, 7))
        else:
            del text[i:]
        return resign(bytes(text), payload, version)
    header = json.loads(head)
    leaf = draw(st.integers(-1, len(header["leaves"]) - 1))
    node = header if leaf < 0 else header["leaves"][leaf]
    field = draw(st.sampled_from([*sorted(node), "extra"]))
    if draw(st.integers(0, 4)) == 0:
        node.pop(field, None)
    else:
        node[field] = draw(_JSON)
    return resign(json.dumps(header), payload, version)


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    checkpoint.save(folder / "valid", _fuzz_tree())
    return folder


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fuzzed_forged_headers_load_exactly_or_raise_checkpoint_error(
    fuzz_folder, data
):
    tree = _fuzz_tree()
    blob = data.draw(forged_files((fuzz_folder / "valid").read_bytes()))
    path = fuzz_folder / "forged"
    path.write_bytes(blob)
    try:
        loaded = checkpoint.load(path, tree)
    except CheckpointError as e:
        assert repr(str(path)) in str(e)
    else:  # a harmless edit (fnn_version, treedef, whitespace): exact values
        assert_bitwise_equal(loaded, tree)


# --------------------------------------------------------------------------
# 64-bit leaves with x64 off
# --------------------------------------------------------------------------


def test_64_bit_leaves_are_never_narrowed(tmp_path):
    assert not jax.config.jax_enable_x64
    tree = {
        "step": np.array(2**40 + 5, np.int64),
        "u": np.array([2**64 - 1, 2**33], np.uint64),
        "third": np.array([1 / 3, 1e300], np.float64),
        "z": np.array([1 / 3 + 1e-300j], np.complex128),
        "w": jnp.ones(2),
        "n": 2**62 + 1,
    }
    checkpoint.save(tmp_path / "c", tree)
    structs = {
        name: jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype)
        for name, leaf in tree.items()
        if name != "n"
    }
    for like in (tree, structs):
        loaded = checkpoint.load(tmp_path / "c", {**like, "n": 0})
        for name in ("step", "u", "third", "z"):
            assert isinstance(loaded[name], np.ndarray), name
            assert loaded[name].dtype == tree[name].dtype
            assert loaded[name].tobytes() == tree[name].tobytes(), name
        assert isinstance(loaded["w"], jax.Array)
        assert loaded["n"] == 2**62 + 1
    # A JAX array cannot be int64 with x64 off: a like of JAX arrays meets a
    # dtype error, never a silent narrowing.
    with pytest.raises(CheckpointError, match="dtype int64 in .* but int32 in like"):
        checkpoint.load(tmp_path / "c", {**tree, "step": jnp.zeros((), jnp.int32)})


# --------------------------------------------------------------------------
# what load reads: regular files only, the magic first, the declared size
# --------------------------------------------------------------------------


def test_load_refuses_a_fifo_without_hanging(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outcome = []

    def load():
        try:
            checkpoint.load(fifo, {})
        except Exception as e:  # noqa: BLE001 - recorded for the assertion
            outcome.append(e)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # unblock the old behaviour's open() and fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("checkpoint.load hung on a FIFO")
    assert isinstance(outcome[0], CheckpointError)
    assert "not a regular file" in str(outcome[0])


def test_load_refuses_folders_and_devices(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        checkpoint.load(tmp_path, {})
    with pytest.raises(CheckpointError, match="not a regular file"):
        checkpoint.load("/dev/zero", {})
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "missing", {})


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_load_reads_only_the_head_of_a_large_foreign_or_truncated_file(tmp_path):
    big = tmp_path / "big"
    with open(big, "wb") as f:  # a sparse 256 MiB file: no disk used
        f.truncate(256 * 2**20)

    def refuse(path, pattern):
        with pytest.raises(CheckpointError, match=pattern):
            checkpoint.load(path, {})

    assert _peak_bytes(lambda: refuse(big, "not an fnn checkpoint")) < 2**20
    # A real preamble promising more than the file holds: refused unread.
    checkpoint.save(tmp_path / "c", {"w": np.zeros(2**20, np.uint8)})
    with open(tmp_path / "c", "r+b") as f:
        f.truncate(200 * 2**20)
    assert _peak_bytes(lambda: refuse(tmp_path / "c", "trailing bytes")) < 2**20
    with open(tmp_path / "c", "r+b") as f:
        f.truncate(2**19)
    assert _peak_bytes(lambda: refuse(tmp_path / "c", "truncated")) < 2**20


# --------------------------------------------------------------------------
# saving over files: stale temporaries, permissions, symbolic links
# --------------------------------------------------------------------------


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_save_removes_temporaries_of_dead_writers_only(tmp_path):
    path = tmp_path / "ckpt"
    host = _fileio._HOST
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "dead": f".ckpt.{host}-{_dead_pid()}.{'a' * 12}.tmp",
            "alive": f".ckpt.{host}-{sleeper.pid}.{'b' * 12}.tmp",
            "mine": f".ckpt.{host}-{os.getpid()}.{'c' * 12}.tmp",
            "other host": f".ckpt.00000000-{_dead_pid()}.{'d' * 12}.tmp",
            "other file": f".other.{host}-{_dead_pid()}.{'e' * 12}.tmp",
            "old format": ".ckpt.0123456789ab.tmp",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"x" * 100)
        checkpoint.save(path, {"a": jnp.zeros(3)})
        left = set(os.listdir(tmp_path))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert left == {"ckpt"} | set(names.values()) - {names["dead"]}


def test_overwriting_keeps_the_file_mode(tmp_path):
    path = tmp_path / "ckpt"
    checkpoint.save(path, {"a": jnp.zeros(3)})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as open() does
    for mode in (0o600, 0o640, 0o444):
        path.chmod(mode)
        checkpoint.save(path, {"a": jnp.full(3, mode, jnp.float32)})
        assert stat.S_IMODE(path.stat().st_mode) == mode
        assert checkpoint.load(path, {"a": jnp.zeros(3)})["a"][0] == mode


def test_saving_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "ckpt"
    checkpoint.save(target, {"a": jnp.zeros(3)})
    link = tmp_path / "latest"
    link.symlink_to(target)
    checkpoint.save(link, {"a": jnp.ones(3)})
    assert link.is_symlink() and link.resolve() == target.resolve()
    np.testing.assert_array_equal(checkpoint.load(target, {"a": jnp.zeros(3)})["a"], 1)
    assert sorted(os.listdir(tmp_path / "real")) == ["ckpt"]
    # A dangling link gets its target created.
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "real" / "new")
    checkpoint.save(dangling, {"a": jnp.ones(3)})
    assert dangling.is_symlink() and (tmp_path / "real" / "new").is_file()


# --------------------------------------------------------------------------
# part of a checkpoint into part of a model (transfer learning)
# --------------------------------------------------------------------------


def _model(head):
    from fnn import layers as L

    return L.serial(L.Dense(4), L.Dense(3), L.Dense(head))


def test_the_trained_body_loads_into_a_model_with_another_head(tmp_path):
    key = jax.random.key(0)
    _, params, state = _model(3).init(key, (2,))
    opt_state = optax.adam(1e-3).init(params)
    checkpoint.save(tmp_path / "c", (params, state, opt_state))
    _, new_params, new_state = _model(5).init(jax.random.key(1), (2,))
    body = checkpoint.load(tmp_path / "c", new_params[:-1], prefix="[0]", strict=False)
    assert_bitwise_equal(body, params[:-1])
    # The same with a tuple prefix, and the state's body too.
    again = checkpoint.load(tmp_path / "c", new_params[:-1], prefix=(0,), strict=False)
    assert_bitwise_equal(again, params[:-1])
    checkpoint.load(tmp_path / "c", new_state[:-1], prefix=(1,), strict=False)
    # A whole subtree loads strictly: every saved leaf under the prefix.
    assert_bitwise_equal(checkpoint.load(tmp_path / "c", params, prefix="[0]"), params)
    # The new model runs with the old body and its own head.
    model = _model(5)
    x = np.ones((1, 2), np.float32)
    y, _ = model.apply((*body, new_params[-1]), new_state, x)
    p = jax.tree.map(np.asarray, (params[0], params[1], new_params[2]))
    expected = x
    for layer in p:
        expected = expected @ layer["w"] + layer["b"]
    np.testing.assert_allclose(y, expected, rtol=1e-5)


def _saved_params(tmp_path):
    params = ({"w": jnp.ones((2, 4)), "b": jnp.zeros(4)}, {}, {"w": jnp.ones((4, 3))})
    checkpoint.save(tmp_path / "c", {"params": params, "step": 7})
    return params


def test_partial_loads_validate_like_whole_ones(tmp_path):
    params = _saved_params(tmp_path)
    path = tmp_path / "c"
    body = ({"w": jnp.zeros((2, 5)), "b": jnp.zeros(5)},)
    with pytest.raises(
        CheckpointError,
        match=r"leaf \['params'\]\[0\]\['b'\] has shape \(4,\) in .* \(5,\) in like",
    ):
        checkpoint.load(path, body, prefix="['params']", strict=False)
    wrong_dtype = ({"w": jnp.zeros((2, 4), jnp.bfloat16), "b": jnp.zeros(4)},)
    with pytest.raises(CheckpointError, match="dtype float32 in .* bfloat16 in like"):
        checkpoint.load(path, wrong_dtype, prefix=("params",), strict=False)
    with pytest.raises(
        CheckpointError,
        match=r"leaf \['params'\]\[0\]\['v'\] of like is not in .*, whose leaves "
        r"under \"\['params'\]\" are \['params'\]\[0\]\['b'\]",
    ):
        checkpoint.load(path, ({"v": jnp.zeros(4)},), prefix="['params']", strict=False)
    # strict: the saved subtree must be exactly like.
    with pytest.raises(CheckpointError, match="has 3 leaves but like has 2"):
        checkpoint.load(path, params[:1], prefix="['params']")
    with pytest.raises(CheckpointError, match="no leaves under prefix"):
        checkpoint.load(path, params, prefix="['param']")
    # "[1]" is not a prefix of "[10]": prefixes match whole keys.
    with pytest.raises(CheckpointError, match="no leaves under prefix"):
        checkpoint.load(path, 0, prefix="['step']['x']")
    assert checkpoint.load(path, 0, prefix="['step']") == 7
    with pytest.raises(TypeError, match="prefix must be"):
        checkpoint.load(path, params, prefix=0)
    for bad in ((1.5,), (True,), (None,)):
        with pytest.raises(TypeError, match="prefix entries must be"):
            checkpoint.load(path, params, prefix=bad)
    with pytest.raises(ValueError, match="not a key path"):
        checkpoint.load(path, params, prefix="params")
    with pytest.raises(TypeError, match="strict must be a bool"):
        checkpoint.load(path, params, strict="no")


def test_strict_false_without_prefix_skips_the_leaves_like_lacks(tmp_path):
    params = _saved_params(tmp_path)
    loaded = checkpoint.load(tmp_path / "c", {"step": 0}, strict=False)
    assert loaded == {"step": 7}
    like = {"params": (params[0],)}
    assert_bitwise_equal(
        checkpoint.load(tmp_path / "c", like, strict=False), {"params": (params[0],)}
    )
    with pytest.raises(CheckpointError, match="to load part .* pass strict=False"):
        checkpoint.load(tmp_path / "c", {"step": 0})


def test_prefixes_match_whole_keys(tmp_path):
    tree = [jnp.full(2, float(i)) for i in range(11)]
    checkpoint.save(tmp_path / "c", tree)
    np.testing.assert_array_equal(
        checkpoint.load(tmp_path / "c", tree[1], prefix="[1]"), 1
    )
    np.testing.assert_array_equal(
        checkpoint.load(tmp_path / "c", tree[10], prefix=(10,)), 10
    )


# ---------------------------------------------------------------------------
# Sharded arrays (conftest.py gives two CPU devices; several processes are
# tested in tests/test_parallel.py)


def _mesh_shardings():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    assert jax.device_count() == 2
    mesh = Mesh(np.array(jax.devices()), ("data",))
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(
        mesh, PartitionSpec("data")
    )


def test_sharded_leaves_load_with_the_sharding_of_like(tmp_path):
    replicated, split = _mesh_shardings()
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    x = rng.normal(size=(6, 2)).astype(np.float32)
    keys = jax.random.split(jax.random.key(3), 4)
    # Saved from sharded arrays: each written whole, from this process's shards.
    tree = {
        "w": jax.device_put(w, replicated),
        "x": jax.device_put(x, split),
        "keys": jax.device_put(keys, split),
        "step": 5,
    }
    checkpoint.save(tmp_path / "c", tree)
    like = {
        "w": jax.device_put(np.zeros_like(w), replicated),
        "x": jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=split),
        "keys": jax.device_put(jax.random.split(jax.random.key(0), 4), split),
        "step": 0,
    }
    got = checkpoint.load(tmp_path / "c", like)
    assert got["step"] == 5
    assert got["w"].sharding == replicated and got["x"].sharding == split
    assert got["keys"].sharding.is_equivalent_to(split, 1)
    np.testing.assert_array_equal(got["w"], w)
    np.testing.assert_array_equal(got["x"], x)
    np.testing.assert_array_equal(
        jax.random.key_data(got["keys"]), jax.random.key_data(keys)
    )
    # Each device holds its own slice (rows 0-2 and 3-5), or the whole array.
    for shard in got["x"].addressable_shards:
        np.testing.assert_array_equal(shard.data, x[shard.index])
        assert shard.data.shape == (3, 2)
    for shard in got["w"].addressable_shards:
        np.testing.assert_array_equal(shard.data, w)
    # The same file loads batch-sharded where it was replicated, and back.
    swapped = checkpoint.load(
        tmp_path / "c",
        {"x": jax.device_put(np.zeros_like(x), replicated)},
        strict=False,
    )
    assert swapped["x"].sharding == replicated
    np.testing.assert_array_equal(swapped["x"], x)


def test_unsharded_likes_still_load_onto_the_default_device(tmp_path):
    checkpoint.save(tmp_path / "c", {"a": jnp.arange(4.0)})
    got = checkpoint.load(tmp_path / "c", {"a": jnp.zeros(4)})["a"]
    assert got.devices() == {jax.devices()[0]}
    np.testing.assert_array_equal(got, np.arange(4.0))
    # A 0-d array over a mesh: the one "slice" is the whole value.
    replicated, _ = _mesh_shardings()
    checkpoint.save(tmp_path / "s", jnp.float32(2.5))
    got = checkpoint.load(tmp_path / "s", jax.device_put(jnp.float32(0), replicated))
    assert got.sharding == replicated and got.shape == () and float(got) == 2.5
