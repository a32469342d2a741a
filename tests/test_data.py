"""Tests for fnn.data: bundled digits, MNIST (IDX parsing, download), synthetic
sets and minibatches."""

import functools
import gzip
import hashlib
import http.server
import importlib.resources
import io
import os
import socket
import struct
import threading
import tracemalloc
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fnn import data

# --------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------

DIGITS_CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def _raw_digits_table():
    blob = importlib.resources.files("fnn").joinpath("data/digits.csv.gz")
    text = gzip.decompress(blob.read_bytes())
    return np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.int64)


def test_digits_shapes_dtypes_and_ranges():
    (x_train, y_train), (x_test, y_test) = data.digits()
    assert x_train.shape == (1433, 8, 8, 1) and x_test.shape == (364, 8, 8, 1)
    assert y_train.shape == (1433,) and y_test.shape == (364,)
    assert x_train.dtype == x_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int32
    for x in (x_train, x_test):
        assert x.min() == 0.0 and x.max() == 1.0
        np.testing.assert_array_equal(x * 16, np.round(x * 16))  # k / 16
    for y in (y_train, y_test):
        assert set(np.unique(y)) == set(range(10))


def test_digits_split_is_stratified():
    (_, y_train), (_, y_test) = data.digits()
    test_counts = np.bincount(y_test, minlength=10)
    totals = np.bincount(y_train, minlength=10) + test_counts
    np.testing.assert_array_equal(totals, DIGITS_CLASS_COUNTS)
    assert np.all(np.abs(test_counts - 0.2 * totals) <= 1), test_counts


def test_digits_split_is_a_disjoint_cover_of_the_table():
    (x_train, y_train), (x_test, y_test) = data.digits()
    table = _raw_digits_table()
    rows = np.concatenate(
        [
            np.concatenate([x.reshape(len(x), 64) * 16, y[:, None]], axis=1)
            for x, y in ((x_train, y_train), (x_test, y_test))
        ]
    ).astype(np.int64)
    # Same multiset of rows, and sizes adding up: every example is in exactly
    # one of the two sets.
    assert len(rows) == len(table) == 1797
    np.testing.assert_array_equal(rows[np.lexsort(rows.T)], table[np.lexsort(table.T)])


def test_digits_is_deterministic_and_callers_cannot_corrupt_the_cache():
    first = data.digits()
    (x_train, y_train), (x_test, _) = first
    expected = [a.copy() for pair in first for a in pair]
    x_train[...] = -1.0
    y_train[...] = 99
    x_test[...] = -1.0
    again = [a for pair in data.digits() for a in pair]
    for a, b in zip(expected, again, strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------
# IDX fixtures
# --------------------------------------------------------------------------


def idx_bytes(array, magic=None):
    """The IDX encoding of a uint8 array (magic 0x0800 | ndim by default)."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim if magic is None else magic
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def fake_mnist(n_train=12, n_test=5, seed=0):
    """Small MNIST-format data: {file name: uint8 array}."""
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, np.uint8),
    }


def write_mnist(folder, arrays, *, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        blob = idx_bytes(array)
        if compress:
            (folder / (name + ".gz")).write_bytes(gzip.compress(blob))
        else:
            (folder / name).write_bytes(blob)


def md5s(arrays):
    return {n: hashlib.md5(idx_bytes(a)).hexdigest() for n, a in arrays.items()}


def assert_matches_fake(split, arrays):
    (x_train, y_train), (x_test, y_test) = split
    names = list(arrays)
    for x, y, images, labels in (
        (x_train, y_train, arrays[names[0]], arrays[names[1]]),
        (x_test, y_test, arrays[names[2]], arrays[names[3]]),
    ):
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.shape == (*images.shape, 1)
        np.testing.assert_array_equal(x[..., 0], images.astype(np.float32) / 255)
        np.testing.assert_array_equal(y, labels)


# --------------------------------------------------------------------------
# read_idx
# --------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_read_idx_parses_files_and_bytes(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    blob = idx_bytes(images)
    blob = gzip.compress(blob) if compress else blob
    path = tmp_path / "images"
    path.write_bytes(blob)
    for source in (path, str(path), blob):
        parsed = data.read_idx(source, magic=2051)
        assert parsed.dtype == np.uint8 and parsed.flags.writeable
        np.testing.assert_array_equal(parsed, images)


def test_read_idx_handles_wider_big_endian_types():
    values = np.array([[1, -2], [300000, -(2**31)]], dtype=">i4")
    blob = struct.pack(">IIII", 0x0C02, 2, 2, 0)[:12] + values.tobytes()
    parsed = data.read_idx(blob)
    assert parsed.dtype == np.int32 and parsed.dtype.isnative
    np.testing.assert_array_equal(parsed, values)


@pytest.mark.parametrize("magic", [0x0803FFFF, 0x12345678, 0x00000703, 0x00000800])
def test_read_idx_rejects_a_foreign_magic(tmp_path, magic):
    path = tmp_path / "foreign"
    path.write_bytes(struct.pack(">I", magic) + bytes(100))
    with pytest.raises(ValueError, match="not an IDX file") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_rejects_an_unexpected_magic():
    labels = idx_bytes(np.zeros(5))
    with pytest.raises(ValueError, match="magic number 2049 \\(expected 2051\\)"):
        data.read_idx(labels, magic=2051)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_read_idx_reports_a_truncated_payload_with_byte_counts(tmp_path, compress):
    blob = idx_bytes(np.zeros((10, 28, 28)))[:-100]
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(blob) if compress else blob)
    with pytest.raises(ValueError) as info:
        data.read_idx(path)
    message = str(info.value)
    assert str(path) in message and "truncated" in message
    assert "7840 payload bytes" in message and "holds 7740" in message


def test_read_idx_reports_trailing_bytes_and_short_headers():
    with pytest.raises(ValueError, match="trailing bytes"):
        data.read_idx(idx_bytes(np.zeros(4)) + b"x")
    with pytest.raises(ValueError, match="truncated header"):
        data.read_idx(idx_bytes(np.zeros((2, 2, 2)))[:9])
    with pytest.raises(ValueError, match="too short"):
        data.read_idx(b"\0\0")


def test_read_idx_reports_a_truncated_gzip_stream(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(1000)))[:-20])
    with pytest.raises(ValueError, match="not a valid gzip stream") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


_VALID_IDX = idx_bytes(np.arange(3 * 5 * 4).reshape(3, 5, 4) % 256)


@st.composite
def corrupted_idx(draw):
    blob = bytearray(draw(st.sampled_from([_VALID_IDX, gzip.compress(_VALID_IDX)])))
    how = draw(st.sampled_from(["truncate", "flip", "random", "header"]))
    if how == "truncate":
        del blob[draw(st.integers(0, len(blob) - 1)) :]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(blob) - 1))
            blob[i] ^= 1 << draw(st.integers(0, 7))
    elif how == "header":  # a plausible header claiming anything
        ndim = draw(st.integers(0, 6))
        blob = bytearray(b"\0\0" + bytes([draw(st.sampled_from([8, 9, 11, 12]))]))
        blob += bytes([ndim])
        blob += struct.pack(
            f">{ndim}I",
            *draw(st.lists(st.integers(0, 2**32 - 1), min_size=ndim, max_size=ndim)),
        )
        blob += draw(st.binary(max_size=64))
    else:
        blob = bytearray(draw(st.binary(max_size=200)))
        if draw(st.booleans()):
            blob[:2] = b"\x1f\x8b"
    return bytes(blob)


@settings(max_examples=120, deadline=None)
@given(corrupted_idx())
def test_read_idx_fuzz_raises_only_value_error(blob):
    try:
        parsed = data.read_idx(blob)
    except ValueError as e:
        assert str(e)
    else:
        assert isinstance(parsed, np.ndarray) and parsed.ndim >= 1
        assert 4 + 4 * parsed.ndim + parsed.nbytes <= len(gzip_or_raw(blob))


def gzip_or_raw(blob):
    return gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob


# --------------------------------------------------------------------------
# mnist from a folder
# --------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_mnist_reads_a_given_folder(tmp_path, compress):
    arrays = fake_mnist()
    write_mnist(tmp_path, arrays, compress=compress)
    split = data.mnist(tmp_path, download=False, checksums=md5s(arrays))
    assert_matches_fake(split, arrays)


def test_mnist_folder_is_data_dir_then_env_then_user_cache(tmp_path, monkeypatch):
    env_arrays, cache_arrays = fake_mnist(seed=1), fake_mnist(n_train=3, seed=2)
    write_mnist(tmp_path / "env", env_arrays)
    write_mnist(tmp_path / "xdg" / "fnn" / "mnist", cache_arrays)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("FNN_DATA_DIR", str(tmp_path / "env"))
    assert_matches_fake(data.mnist(download=False, verify=False), env_arrays)
    assert_matches_fake(
        data.mnist(tmp_path / "xdg" / "fnn" / "mnist", download=False, verify=False),
        cache_arrays,
    )
    monkeypatch.delenv("FNN_DATA_DIR")
    assert_matches_fake(data.mnist(download=False, verify=False), cache_arrays)


def test_mnist_missing_file_without_download_says_where_to_put_it(tmp_path):
    arrays = fake_mnist()
    del arrays["t10k-labels-idx1-ubyte"]
    write_mnist(tmp_path, arrays)
    with pytest.raises(FileNotFoundError) as info:
        data.mnist(tmp_path, download=False)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte" in message and str(tmp_path) in message
    assert "FNN_DATA_DIR" in message


def test_mnist_rejects_images_and_labels_of_different_counts(tmp_path):
    arrays = fake_mnist()
    arrays["train-labels-idx1-ubyte"] = arrays["train-labels-idx1-ubyte"][:-1]
    write_mnist(tmp_path, arrays)
    with pytest.raises(ValueError, match="12 images but .* 11 labels"):
        data.mnist(tmp_path, download=False, checksums=md5s(arrays))


def test_mnist_rejects_swapped_files(tmp_path):
    arrays = fake_mnist()
    names = list(arrays)
    arrays[names[0]], arrays[names[1]] = arrays[names[1]], arrays[names[0]]
    write_mnist(tmp_path, arrays)
    with pytest.raises(ValueError, match="magic number 2049 \\(expected 2051\\)"):
        data.mnist(tmp_path, download=False, checksums=md5s(arrays))


def test_mnist_verifies_files_on_disk_against_their_md5(tmp_path):
    arrays = fake_mnist()
    checksums = md5s(arrays)
    arrays["t10k-images-idx3-ubyte"][0, 5, 5] ^= 1  # one flipped pixel
    write_mnist(tmp_path, arrays)
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz' has MD5") as info:
        data.mnist(tmp_path, download=False, checksums=checksums)
    assert checksums["t10k-images-idx3-ubyte"] in str(info.value)
    assert "verify=False" in str(info.value)
    # Opting out loads the changed file as it is.
    split = data.mnist(tmp_path, download=False, checksums=checksums, verify=False)
    assert_matches_fake(split, arrays)
    with pytest.raises(ValueError, match="no checksum given .* verify=False"):
        data.mnist(tmp_path, download=False, checksums={})


def test_mnist_checks_the_built_in_checksums_by_default(tmp_path):
    write_mnist(tmp_path, fake_mnist())
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz' has MD5"):
        data.mnist(tmp_path, download=False)


def _mnist_with(tmp_path, **changes):
    arrays = {**fake_mnist(), **changes}
    write_mnist(tmp_path, arrays)
    return lambda: data.mnist(tmp_path, download=False, checksums=md5s(arrays))


def test_mnist_refuses_images_other_than_28x28(tmp_path):
    images = np.zeros((12, 32, 32), np.uint8)
    load = _mnist_with(tmp_path, **{"train-images-idx3-ubyte": images})
    with pytest.raises(ValueError, match="images of 32x32 pixels; MNIST's are 28x28"):
        load()


def test_mnist_refuses_out_of_range_labels_and_empty_files(tmp_path):
    labels = np.full(5, 10, np.uint8)
    with pytest.raises(ValueError, match="has label 10 > 9"):
        _mnist_with(tmp_path / "a", **{"t10k-labels-idx1-ubyte": labels})()
    empty = {
        "t10k-images-idx3-ubyte": np.zeros((0, 28, 28), np.uint8),
        "t10k-labels-idx1-ubyte": np.zeros(0, np.uint8),
    }
    with pytest.raises(ValueError, match="holds no images"):
        _mnist_with(tmp_path / "b", **empty)()


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _gzip_bomb(head, zeros):
    """A gzip stream of ``head`` and ``zeros`` zero bytes, built in chunks."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as f:
        f.write(head)
        chunk = bytes(2**20)
        for _ in range(zeros // len(chunk)):
            f.write(chunk)
    return buffer.getvalue()


def test_read_idx_stops_decompressing_at_the_declared_size(tmp_path):
    """A 64 KB .gz declaring 10 labels but expanding to 64 MiB fails at once."""
    bomb = _gzip_bomb(idx_bytes(np.arange(10)), 64 * 2**20)
    assert len(bomb) < 2**17
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(bomb)

    def load():
        with pytest.raises(ValueError, match="trailing bytes.* gzip stream holds more"):
            data.read_idx(path)

    assert _peak_bytes(load) < 4 * 2**20
    # A header declaring 4 GiB x 4 GiB images over a few bytes: truncated, cheap.
    huge = struct.pack(">IIII", 0x0803, 2**32 - 1, 2**32 - 1, 1) + bytes(100)

    def load_huge():
        with pytest.raises(ValueError, match="truncated"):
            data.read_idx(gzip.compress(huge))

    assert _peak_bytes(load_huge) < 4 * 2**20


def test_read_idx_reads_only_the_header_of_a_raw_file_of_the_wrong_size(tmp_path):
    path = tmp_path / "labels"
    with open(path, "wb") as f:
        f.write(idx_bytes(np.arange(10)))
        f.truncate(256 * 2**20)  # sparse: no disk used

    def load():
        with pytest.raises(ValueError, match="trailing bytes"):
            data.read_idx(path)

    assert _peak_bytes(load) < 2**20


def test_read_idx_refuses_a_fifo_without_hanging(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outcome = []

    def load():
        try:
            data.read_idx(fifo)
        except Exception as e:  # noqa: BLE001 - recorded for the assertion
            outcome.append(e)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # unblock the old behaviour's open() and fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("read_idx hung on a FIFO")
    assert isinstance(outcome[0], OSError)
    assert "not a regular file" in str(outcome[0])


# --------------------------------------------------------------------------
# mnist downloads from a local server
# --------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serves tmp_path/www on 127.0.0.1; yields (base URL, served folder)."""
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


def leftovers(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp"))


def test_mnist_download_is_verified_cached_and_reused_offline(server, tmp_path):
    url, root = server
    arrays = fake_mnist()
    write_mnist(root / "mnist", arrays)
    cache = tmp_path / "cache"
    split = data.mnist(cache, mirrors=[url + "/mnist/"], checksums=md5s(arrays))
    assert_matches_fake(split, arrays)
    assert sorted(os.listdir(cache)) == sorted(n + ".gz" for n in arrays)
    # Offline now: no working mirror, yet everything is read from the cache.
    again = data.mnist(cache, mirrors=[closed_port_url()], checksums=md5s(arrays))
    assert_matches_fake(again, arrays)


def test_mnist_refuses_a_file_with_a_wrong_checksum(server, tmp_path):
    url, root = server
    arrays = fake_mnist()
    served = dict(arrays)
    served["train-labels-idx1-ubyte"] = (arrays["train-labels-idx1-ubyte"] + 1) % 10
    write_mnist(root / "mnist", served)
    cache = tmp_path / "cache"
    with pytest.raises(data.DownloadError) as info:
        data.mnist(cache, mirrors=[url + "/mnist"], checksums=md5s(arrays))
    message = str(info.value)
    assert "train-labels-idx1-ubyte" in message and "MD5" in message
    assert md5s(arrays)["train-labels-idx1-ubyte"] in message
    # The verified images file was kept; the refused labels left no trace.
    assert sorted(os.listdir(cache)) == ["train-images-idx3-ubyte.gz"]


def test_mnist_falls_back_to_the_next_mirror(server, tmp_path):
    url, root = server
    arrays = fake_mnist()
    write_mnist(root / "good", arrays)
    (root / "broken").mkdir()
    for name in arrays:  # served, but not gzip
        (root / "broken" / (name + ".gz")).write_bytes(b"<html>oops</html>")
    mirrors = [closed_port_url(), url + "/missing/", url + "/broken/", url + "/good/"]
    cache = tmp_path / "cache"
    assert_matches_fake(
        data.mnist(cache, mirrors=mirrors, checksums=md5s(arrays)), arrays
    )
    assert leftovers(cache) == []


def test_mnist_unreachable_mirrors_explain_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("FNN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    dead = closed_port_url()
    with pytest.raises(data.DownloadError) as info:
        data.mnist(mirrors=[dead], timeout=5)
    message = str(info.value)
    assert dead + "train-images-idx3-ubyte.gz" in message
    assert (
        "FNN_DATA_DIR" in message and str(tmp_path / "xdg" / "fnn" / "mnist") in message
    )
    assert isinstance(info.value, OSError)


# --------------------------------------------------------------------------
# real MNIST (only these may skip)
# --------------------------------------------------------------------------

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def real_mnist_dir():
    folder = os.environ.get("FNN_DATA_DIR")
    if not folder or not all(
        (Path(folder) / n).is_file() or (Path(folder) / (n + ".gz")).is_file()
        for n in data.MNIST_FILES
    ):
        pytest.skip(
            "real MNIST not found: set FNN_DATA_DIR to a folder holding the four "
            f"IDX files (CI uses ../shared/data/mnist); FNN_DATA_DIR={folder!r}"
        )
    return Path(folder)


def test_real_mnist_shapes_ranges_and_label_histogram(real_mnist_dir):
    (x_train, y_train), (x_test, y_test) = data.mnist(download=False)
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert x_train.dtype == x_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int32
    for x in (x_train, x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    assert 0.12 < x_train.mean() < 0.14
    np.testing.assert_array_equal(np.bincount(y_train), MNIST_TRAIN_COUNTS)
    np.testing.assert_array_equal(np.bincount(y_test), MNIST_TEST_COUNTS)


def test_real_mnist_files_match_the_built_in_checksums(real_mnist_dir):
    for name in data.MNIST_FILES:
        path = real_mnist_dir / name
        blob = path.read_bytes() if path.is_file() else None
        if blob is None:
            blob = gzip.decompress((real_mnist_dir / (name + ".gz")).read_bytes())
        assert hashlib.md5(blob).hexdigest() == data.MNIST_CHECKSUMS[name], name


# --------------------------------------------------------------------------
# xor and spirals
# --------------------------------------------------------------------------


def test_xor_is_the_truth_table():
    x, y = data.xor()
    assert x.shape == (4, 2) and y.shape == (4, 1)
    assert x.dtype == y.dtype == np.float32
    np.testing.assert_array_equal(y[:, 0], np.logical_xor(x[:, 0], x[:, 1]))


def _spirals_all(*args, **kwargs):
    """Train and test sets of spirals, concatenated."""
    (x_train, y_train), (x_test, y_test) = data.spirals(*args, **kwargs)
    return np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])


@pytest.mark.parametrize("n, classes, n_test", [(300, 2, 60), (301, 3, 60), (7, 2, 1)])
def test_spirals_split_like_digits_shapes_classes_and_determinism(n, classes, n_test):
    split = data.spirals(n, classes=classes, seed=3)
    (x_train, y_train), (x_test, y_test) = split
    assert x_train.shape == (n - n_test, 2) and x_test.shape == (n_test, 2)
    assert y_train.shape == (n - n_test,) and y_test.shape == (n_test,)
    assert x_train.dtype == x_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int32
    x, y = _spirals_all(n, classes=classes, seed=3)
    counts = np.bincount(y, minlength=classes)
    assert len(counts) == classes and counts.max() - counts.min() <= 1
    for a, b in zip(
        [a for pair in split for a in pair],
        [a for pair in data.spirals(n, classes=classes, seed=3) for a in pair],
    ):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(x, _spirals_all(n, classes=classes, seed=4)[0])


def test_spirals_are_shuffled_and_both_sets_hold_every_class():
    (_, y_train), (_, y_test) = data.spirals(300, classes=3)
    # Sorted by class, 240 labels would change value twice; shuffled, ~160 times.
    assert np.count_nonzero(np.diff(y_train)) > 100
    assert set(y_train) == set(y_test) == {0, 1, 2}


def test_spirals_arms_are_rotated_copies_without_noise():
    x, y = _spirals_all(200, classes=2, noise=0.0)
    order = np.argsort(np.linalg.norm(x, axis=1), kind="stable")
    arm0, arm1 = x[order][y[order] == 0], x[order][y[order] == 1]
    np.testing.assert_allclose(arm1, -arm0, atol=1e-6)  # rotated by pi
    radius = np.linalg.norm(x, axis=1)
    assert radius.min() == pytest.approx(0.1) and radius.max() == pytest.approx(1.0)


def test_spirals_rejects_bad_arguments():
    with pytest.raises(ValueError, match="classes"):
        data.spirals(10, classes=1)
    for n in (0, 1):
        with pytest.raises(ValueError, match="n must be"):
            data.spirals(n)
    for noise in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="noise"):
            data.spirals(10, noise=noise)
    with pytest.raises(ValueError, match="turns"):
        data.spirals(10, turns=float("nan"))
    for fraction in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="test_fraction must be in"):
            data.spirals(10, test_fraction=fraction)
    with pytest.raises(ValueError, match="one part would be empty"):
        data.spirals(2, test_fraction=0.9)
    with pytest.raises(TypeError, match="seed"):
        data.spirals(10, seed=-1)
    for bad in (10.0, True):
        with pytest.raises(ValueError, match="n must be an int >= 2"):
            data.spirals(bad)


def test_spirals_accept_numpy_ints_as_counts():
    # np.int64(12) was refused as "n must be an int >= 2, got 12".
    (xa, ya), (xb, yb) = data.spirals(np.int64(12), classes=np.int32(3))
    assert len(ya) + len(yb) == 12 and sorted({*ya, *yb}) == [0, 1, 2]
    np.testing.assert_array_equal(xa, data.spirals(12, classes=3)[0][0])


# --------------------------------------------------------------------------
# split
# --------------------------------------------------------------------------


@pytest.mark.parametrize("n, fraction, n_b", [(10, 0.1, 1), (30, 0.1, 3), (5, 0.01, 1)])
def test_split_sizes_cover_every_example_once_and_keep_pairs(n, fraction, n_b):
    x, y = _xy(n)
    (x_a, y_a), (x_b, y_b) = data.split(x, y, fraction, seed=1)
    assert len(y_b) == n_b and len(y_a) == n - n_b
    assert sorted([*y_a, *y_b]) == list(range(n))
    np.testing.assert_array_equal(x_a, x[y_a])
    np.testing.assert_array_equal(x_b, x[y_b])
    assert x_a.dtype == x.dtype and y_b.dtype == y.dtype


def test_split_is_deterministic_shuffled_and_seeded():
    x, y = _xy(100)
    (_, y_a), (_, y_b) = data.split(x, y, 0.2, seed=0)
    (_, y_a2), (_, y_b2) = data.split(x, y, 0.2, seed=0)
    np.testing.assert_array_equal(y_a, y_a2)
    np.testing.assert_array_equal(y_b, y_b2)
    assert not np.array_equal(y_a, np.sort(y_a))  # shuffled, not a slice
    assert not np.array_equal(y_b, data.split(x, y, 0.2, seed=1)[1][1])


def test_split_of_jax_arrays_gives_jax_arrays():
    x, y = _xy(6)
    (x_a, y_a), _ = data.split(jax.numpy.asarray(x), jax.numpy.asarray(y), 0.5)
    assert isinstance(x_a, jax.Array) and isinstance(y_a, jax.Array)
    np.testing.assert_array_equal(np.asarray(x_a), x[np.asarray(y_a)])


def test_split_validates_its_arguments():
    x, y = _xy(10)
    with pytest.raises(ValueError, match=r"split: x and y differ in length"):
        data.split(x, y[:9])
    for bad in (0, 0.0, 1, 1.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
            data.split(x, y, bad)
    for bad in ("0.1", None, True):
        with pytest.raises(TypeError, match="fraction must be a number"):
            data.split(x, y, bad)
    with pytest.raises(ValueError, match="one part would be empty"):
        data.split(x[:1], y[:1], 0.5)
    with pytest.raises(ValueError, match="one part would be empty"):
        data.split(x, y, 0.99)
    for seed in (-1, 0.5, None, True):
        with pytest.raises(TypeError, match="seed must be"):
            data.split(x, y, 0.5, seed=seed)
    with pytest.raises(ValueError, match="leading batch axis"):
        data.split(np.float32(1.0), y)


# --------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------


def _xy(n=10):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    return x, np.arange(n, dtype=np.int32)


@pytest.mark.parametrize("key", [jax.random.key(0), jax.random.PRNGKey(1), 7])
def test_batches_shuffle_is_a_permutation_keeping_pairs(key):
    x, y = _xy(10)
    out = list(data.batches(x, y, 4, key=key))
    assert [len(yb) for _, yb in out] == [4, 4, 2]
    ys = np.concatenate([yb for _, yb in out])
    assert sorted(ys) == list(range(10)) and not np.array_equal(ys, np.arange(10))
    for xb, yb in out:
        np.testing.assert_array_equal(xb, x[yb])
    again = np.concatenate([yb for _, yb in data.batches(x, y, 4, key=key)])
    np.testing.assert_array_equal(ys, again)


def test_batches_different_keys_give_different_orders():
    x, y = _xy(50)
    orders = {
        tuple(np.concatenate([yb for _, yb in data.batches(x, y, 8, key=k)]))
        for k in (jax.random.key(0), jax.random.key(1), 0, 1)
    }
    assert len(orders) == 4


def test_batches_without_shuffle_keep_order_and_can_drop_the_remainder():
    x, y = _xy(10)
    kept = list(data.batches(x, y, 3, shuffle=False))
    assert [yb.tolist() for _, yb in kept] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    dropped = list(data.batches(x, y, 3, shuffle=False, drop_remainder=True))
    assert [yb.tolist() for _, yb in dropped] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    shuffled = list(data.batches(x, y, 3, key=0, drop_remainder=True))
    assert [len(yb) for _, yb in shuffled] == [3, 3, 3]


def test_batches_of_jax_arrays_are_jax_arrays():
    x, y = _xy(6)
    xb, yb = next(data.batches(jax.numpy.asarray(x), jax.numpy.asarray(y), 4, key=0))
    assert isinstance(xb, jax.Array) and isinstance(yb, jax.Array)
    np.testing.assert_array_equal(np.asarray(xb), x[np.asarray(yb)])


def test_batches_validate_arguments_eagerly():
    x, y = _xy(10)
    with pytest.raises(ValueError, match=r"x has shape \(10, 3\), y has shape \(9,\)"):
        data.batches(x, y[:9], 2, key=0)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="batch_size must be positive"):
            data.batches(x, y, bad, key=0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        data.batches(x, y, 2.5, key=0)
    with pytest.raises(ValueError, match="needs key="):
        data.batches(x, y, 2)
    with pytest.raises(ValueError, match="leading batch axis"):
        data.batches(np.float32(1.0), y, 2, shuffle=False)


def test_batches_name_a_key_that_is_neither_a_prng_key_nor_a_seed():
    # These failed inside NumPy or jax.random ("expected non-negative integer",
    # "invalid PRNG key data"), naming neither batches nor the fix.
    x, y = _xy(10)
    with pytest.raises(ValueError, match="batches: an int key .* >= 0, got -1"):
        data.batches(x, y, 2, key=-1)
    for bad in (1.5, True, "0", jax.numpy.array(3)):
        with pytest.raises(TypeError, match="batches: key must be a jax.random key"):
            data.batches(x, y, 2, key=bad)


# --------------------------------------------------------------------------
# memmap_batches: streaming from files on disk
# --------------------------------------------------------------------------


def _save_xy(folder, n=50):
    x, y = _xy(n)
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    return x, y


def _epoch(folder, batch_size, **kwargs):
    return list(
        data.memmap_batches(folder / "x.npy", folder / "y.npy", batch_size, **kwargs)
    )


def test_memmap_batches_shuffle_each_epoch_and_keep_pairs(tmp_path):
    x, y = _save_xy(tmp_path)
    out = _epoch(tmp_path, 8, seed=3, epoch=0)
    assert [len(yb) for _, yb in out] == [8] * 6 + [2]
    ys = np.concatenate([yb for _, yb in out])
    assert sorted(ys) == list(range(50)) and not np.array_equal(ys, np.arange(50))
    for xb, yb in out:
        assert type(xb) is np.ndarray and xb.dtype == np.float32
        np.testing.assert_array_equal(xb, x[yb])
    # the order is np.random.default_rng([seed, epoch]).permutation(N)
    np.testing.assert_array_equal(ys, np.random.default_rng([3, 0]).permutation(50))
    again = np.concatenate([yb for _, yb in _epoch(tmp_path, 8, seed=3, epoch=0)])
    np.testing.assert_array_equal(ys, again)
    other_epochs = {
        tuple(np.concatenate([yb for _, yb in _epoch(tmp_path, 8, seed=s, epoch=e)]))
        for s, e in ((3, 1), (3, 2), (4, 0))
    }
    assert len(other_epochs | {tuple(ys)}) == 4


def test_memmap_batches_in_order_and_dropping_the_remainder(tmp_path):
    _save_xy(tmp_path, 10)
    kept = _epoch(tmp_path, 4, shuffle=False)
    assert [yb.tolist() for _, yb in kept] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    dropped = _epoch(tmp_path, 4, drop_remainder=True)
    assert [len(yb) for _, yb in dropped] == [4, 4]


def test_memmap_batches_read_raw_idx_files_in_native_order(tmp_path):
    images = np.arange(6 * 4 * 4).reshape(6, 4, 4) % 256
    (tmp_path / "x.npy").write_bytes(idx_bytes(images))  # told apart by content
    values = np.array([5, -7, 300000, 0, 1, 2], ">i4")
    header = struct.pack(">II", 0x0C01, 6)
    (tmp_path / "y.npy").write_bytes(header + values.tobytes())
    out = _epoch(tmp_path, 4, seed=0)
    for xb, yb in out:
        assert xb.dtype == np.uint8 and yb.dtype == np.int32 and yb.dtype.isnative
        rows = [int(np.flatnonzero(values == v)[0]) for v in yb]
        np.testing.assert_array_equal(xb, images[rows])
    assert sorted(np.concatenate([yb for _, yb in out])) == sorted(values)


def test_memmap_batches_read_one_batch_not_the_file(tmp_path):
    n = 2**15  # 32 MiB of images, 32 KiB of labels
    x = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.uint8, (n, 1024))
    x[::1000] = 7
    del x
    np.save(tmp_path / "y.npy", np.arange(n, dtype=np.int32))

    def first_batch():
        stream = data.memmap_batches(tmp_path / "x.npy", tmp_path / "y.npy", 16)
        xb, yb = next(stream)
        np.testing.assert_array_equal(xb[:, 0], np.where(yb % 1000 == 0, 7, 0))

    tracemalloc.start()
    try:
        first_batch()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # the permutation (256 KiB) and one batch


def test_memmap_batches_validate_files_and_arguments(tmp_path):
    x, y = _save_xy(tmp_path, 10)
    np.save(tmp_path / "short.npy", y[:9])
    with pytest.raises(ValueError, match="differ in length"):
        data.memmap_batches(tmp_path / "x.npy", tmp_path / "short.npy", 2)
    (tmp_path / "x.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(10))))
    with pytest.raises(ValueError, match="gzip-compressed .* decompress"):
        data.memmap_batches(tmp_path / "x.gz", tmp_path / "y.npy", 2)
    np.save(tmp_path / "objects.npy", np.array([{}, []], dtype=object))
    with pytest.raises(ValueError, match="cannot memory-map"):
        data.memmap_batches(tmp_path / "objects.npy", tmp_path / "y.npy", 2)
    (tmp_path / "text").write_text("hello, world")
    with pytest.raises(ValueError, match="not an IDX file .* .npy or raw IDX"):
        data.memmap_batches(tmp_path / "text", tmp_path / "y.npy", 2)
    (tmp_path / "cut").write_bytes(idx_bytes(np.zeros(10))[:-1])
    with pytest.raises(ValueError, match="truncated"):
        data.memmap_batches(tmp_path / "cut", tmp_path / "y.npy", 2)
    np.save(tmp_path / "scalar.npy", np.float32(1))
    with pytest.raises(ValueError, match="leading batch axis"):
        data.memmap_batches(tmp_path / "scalar.npy", tmp_path / "y.npy", 2)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match="not a regular file"):
        data.memmap_batches(tmp_path / "fifo", tmp_path / "y.npy", 2)
    for kwargs, error in (
        ({"batch_size": 0}, ValueError),
        ({"batch_size": 2.0}, TypeError),
        ({"batch_size": 2, "seed": -1}, ValueError),
        ({"batch_size": 2, "epoch": True}, TypeError),
    ):
        with pytest.raises(error, match="memmap_batches: "):
            data.memmap_batches(tmp_path / "x.npy", tmp_path / "y.npy", **kwargs)
