"""fnn.parallel: four CPU devices give one device's results (subprocess, since
the device count is fixed when JAX starts)."""

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from fnn import layers as L
from fnn import losses, optim, parallel, train

SCRIPT = Path(__file__).parent / "scripts" / "parallel_equivalence.py"
WORKER = Path(__file__).parent / "scripts" / "multiprocess_worker.py"


def test_four_devices_match_one_device_with_batch_norm_and_dropout():
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[2])}
    out = subprocess.run(
        [sys.executable, "-W", "error", str(SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all-reduce in compiled program: True" in out.stdout
    assert "agree after 5 steps" in out.stdout
    assert "not divisible by the 4 devices" in out.stdout


@pytest.mark.parametrize("scaled", [False, True], ids=["sgd", "loss-scaled-sgd"])
def test_two_in_process_devices_train_like_one(scaled):
    # conftest.py gives this process two CPU devices.
    assert jax.device_count() == 2
    model = L.serial(L.Dense(8), L.Tanh, L.Dense(2))
    _, params, state = model.init(jax.random.key(0), (3,))
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    opt = optim.sgd(0.1)
    if scaled:  # the replicated scale must multiply each shard's loss alike
        opt = optim.dynamic_loss_scale(opt, growth_interval=2)
    out = []
    for make in (train.make_step, parallel.make_step):
        p = jax.tree.map(np.array, params)
        o = opt.init(p)
        step = make(model, losses.softmax_cross_entropy, opt)
        for _ in range(3):
            p, _, o, value = step(p, state, o, x, y, None)
        out.append((p, float(value)))
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(out[0][0]), jax.tree.leaves(out[1][0])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _small_problem():
    model = L.serial(L.Dense(4), L.Relu, L.Dense(2))
    _, params, state = model.init(jax.random.key(0), (3,))
    x = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    y = np.array([0, 1, 1, 0], np.int32)
    return model, params, state, x, y


@pytest.mark.parametrize(
    "x_rows, y, key, error, message",
    [
        (3, None, None, ValueError, "x has 3 examples, not divisible by the 2 dev"),
        (0, None, None, ValueError, r"the batch of x is empty \(0 examples\)"),
        (4, np.zeros(2, np.int32), None, ValueError, "x has 4 examples but y has 2"),
        (4, np.int32(1), None, ValueError, r"y has shape \(\), no batch axis"),
        (4, None, 3, TypeError, "key must be one PRNG key.* got 3$"),
        (4, None, "split", TypeError, r"got shape \(2,\) of dtype key<fry>"),
    ],
    ids=["indivisible", "empty", "x-y-sizes", "no-batch-axis", "int-key", "two-keys"],
)
def test_make_step_refuses_bad_batches_and_keys(x_rows, y, key, error, message):
    model, params, state, x, y_ok = _small_problem()
    opt = optim.sgd(0.1)
    step = parallel.make_step(model, losses.softmax_cross_entropy, opt)
    y = y_ok[:x_rows] if y is None else y
    if isinstance(key, str):
        key = jax.random.split(jax.random.key(0))
    with pytest.raises(error, match="fnn.parallel.make_step: .*" + message):
        step(params, state, opt.init(params), x[:x_rows], y, key)


def test_make_step_names_an_argument_placed_otherwise():
    from jax.sharding import NamedSharding, PartitionSpec

    model, params, state, x, y = _small_problem()
    opt = optim.sgd(0.1)
    step = parallel.make_step(model, losses.softmax_cross_entropy, opt)
    by_rows = NamedSharding(step.mesh, PartitionSpec("data"))
    # params[0]['b'] (4,) split over the devices instead of replicated
    split_b = ({**params[0], "b": jax.device_put(params[0]["b"], by_rows)},)
    split_b += tuple(params[1:])
    with pytest.raises(
        ValueError,
        match=r"make_step: params\[0\]\['b'\] is placed with .*P\('data',\).* wants "
        r"it replicated on the devices of its mesh.*jax.device_put\(params, "
        r"step.replicated\)",
    ):
        step(split_b, state, opt.init(params), x, y, None)
    with pytest.raises(
        ValueError,
        match=r"make_step: x is placed with .*P\(\).* wants it split over .*"
        r"jax.device_put\(x, step.split\)",
    ):
        x_replicated = jax.device_put(x, step.replicated)
        step(params, state, opt.init(params), x_replicated, y, None)
    # The fix the message gives trains like unplaced arguments do.
    p, o = jax.tree.map(np.array, params), opt.init(params)
    expected = step(p, state, o, x, y, None)
    p = jax.device_put(split_b, step.replicated)
    got = step(p, state, opt.init(params), jax.device_put(x, step.split), y, None)
    assert got[0][0]["b"].sharding == step.replicated
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# Several OS processes: jax.distributed on localhost, CPU collectives by gloo


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(n, out_dir, timeout=150):
    """Starts ``n`` worker processes; returns their exit codes and output.

    Once one fails, or the run outlives ``timeout`` seconds, every process
    still running is killed (a worker whose peer died would otherwise wait
    for it at the next collective); a killed worker's code is negative."""
    env = {**os.environ, "PYTHONPATH": str(WORKER.parents[2])}
    port = _free_port()
    logs = [out_dir / f"process{i}.log" for i in range(n)]
    procs = []
    try:
        for i in range(n):
            with open(logs[i], "w") as log:  # a file: a full pipe would block
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-W",
                            "error",
                            str(WORKER),
                            str(port),
                            str(n),
                            str(i),
                            str(out_dir / f"process{i}.npz"),
                        ],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if None not in codes or any(c for c in codes if c is not None):
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    return [p.returncode for p in procs], [log.read_text() for log in logs]


def test_two_processes_match_one_process_with_batch_norm(tmp_path):
    """Each process feeds its half of the global batch; parameters, batch-norm
    statistics (global across processes) and losses equal one process
    training on the whole batch."""
    for _ in range(2):  # a second port if another program took the first
        codes, outputs = _run_workers(2, tmp_path)
        if codes == [0, 0] or "already in use" not in "".join(outputs):
            break
    assert codes == [0, 0], "\n".join(outputs)
    assert all("a local batch of 3 trained" in out for out in outputs), outputs
    # Checkpoints: process 0 refused to save an array split across processes
    # and saved the replicated state; each process loaded its own rows.
    assert (
        "process 0: refused: checkpoint.save: leaf ['x'] is split across "
        "processes" in outputs[0]
    ), outputs[0]
    assert "process 0 holds 20 of its 40 elements" in outputs[0]
    assert "process 0: loaded its rows 0-4" in outputs[0]
    assert "process 1: loaded its rows 4-8" in outputs[1]

    spec = importlib.util.spec_from_file_location("multiprocess_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    model, params, state, x, y, opt = worker.problem()
    step = train.make_step(model, losses.softmax_cross_entropy, opt)

    def one_process(x, y):
        # Copies: the step donates its inputs.
        p, s = jax.tree.map(np.array, (params, state))
        o, values = opt.init(p), []
        for _ in range(worker.STEPS):
            p, s, o, value = step(p, s, o, x, y, None)
            values.append(float(value))
        return worker.flat(p, s, values)

    expected = one_process(x, y)
    # 7 leaves (w; BatchNorm scale, shift, mean, var; w, b) and the losses
    assert len(expected) == 8
    for i in range(2):
        got = np.load(tmp_path / f"process{i}.npz")
        resumed = [f"resumed_{name}" for name in expected]
        assert sorted(got.files) == sorted([*expected, *resumed])
        for name, want in expected.items():
            np.testing.assert_allclose(
                got[name], want, rtol=2e-5, atol=1e-6, err_msg=name
            )
            # Stopped after STOP steps, saved by process 0, loaded by both,
            # finished: the same bits as the uninterrupted run.
            assert got[name].tobytes() == got[f"resumed_{name}"].tobytes(), name
    # Had the processes not shared their batch statistics, each would match
    # one process on its own half, which differs.
    half = one_process(x[:4], y[:4])
    assert not np.allclose(half["losses"], expected["losses"], rtol=1e-3)


def test_make_step_takes_a_regularizer_and_refuses_what_train_refuses():
    # parallel.make_step promised train.make_step's signature, but had no
    # regularizer= (a TypeError) and let a bad optimizer through to the call.
    model, params, state, x, y = _small_problem()
    opt, reg = optim.sgd(0.1), losses.penalty(l2=0.5)
    out = []
    for make in (train.make_step, parallel.make_step):
        p = jax.tree.map(np.array, params)
        step = make(model, losses.softmax_cross_entropy, opt, regularizer=reg)
        p, _, _, value = step(p, state, opt.init(p), x, y, None)
        out.append((p, float(value)))
    plain = float(losses.softmax_cross_entropy(model.apply(params, state, x)[0], y))
    np.testing.assert_allclose(out[1][1], plain + float(reg(params)), rtol=1e-6)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(out[0][0]), jax.tree.leaves(out[1][0])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="fnn.parallel.make_step"):
        parallel.make_step(model, losses.softmax_cross_entropy, "adam")


def test_an_optimizer_whose_state_holds_the_params_steps_on_two_devices():
    # optax.contrib.prodigy's init keeps the very arrays of params; donating
    # one buffer twice made XLA kill the process (a segmentation fault).
    model = L.serial(L.Dense(3))
    _, params, state = model.init(jax.random.key(0), (2,))
    opt = optax.contrib.prodigy()
    step = parallel.make_step(model, losses.softmax_cross_entropy, opt)
    x, y = np.ones((4, 2), np.float32), np.array([0, 1, 2, 0])
    opt_state = opt.init(params)
    for _ in range(2):
        params, state, opt_state, loss = step(params, state, opt_state, x, y, None)
    assert np.isfinite(float(loss))
