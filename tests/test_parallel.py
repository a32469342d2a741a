"""fnn.parallel: four CPU devices give one device's results (subprocess, since
the device count is fixed when JAX starts)."""

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
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


# ---------------------------------------------------------------------------
# Several OS processes: jax.distributed on localhost, CPU collectives by gloo


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(n, out_dir, timeout=150):
    """Starts ``n`` worker processes; returns their exit codes and output.
    Every process is killed if the run outlives ``timeout`` seconds."""
    env = {**os.environ, "PYTHONPATH": str(WORKER.parents[2])}
    port = _free_port()
    procs = [
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
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(n)
    ]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], outputs


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
        assert sorted(got.files) == sorted(expected)
        for name, want in expected.items():
            np.testing.assert_allclose(
                got[name], want, rtol=2e-5, atol=1e-6, err_msg=name
            )
    # Had the processes not shared their batch statistics, each would match
    # one process on its own half, which differs.
    half = one_process(x[:4], y[:4])
    assert not np.allclose(half["losses"], expected["losses"], rtol=1e-3)
