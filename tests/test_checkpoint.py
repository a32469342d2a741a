"""Tests for fnn.checkpoint: roundtrips, validation against `like`, corrupt
files, no pickle, and atomicity under SIGKILL."""

import io
import os
import random
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fnn import checkpoint
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
    # Stray temporaries may remain from killed writes; they harm nothing.
    strays = {p.name for p in tmp_path.iterdir()} - {"ckpt", "zygote.err"}
    assert all(re.fullmatch(r"\.ckpt\.[0-9a-f]+\.tmp", name) for name in strays)
    zeros = {
        "a": np.zeros((512, 384), np.float32),
        "b": (np.zeros((256, 128), np.int32), 0),
    }
    checkpoint.save(path, zeros)
    assert _consistent_step(path) == 0
