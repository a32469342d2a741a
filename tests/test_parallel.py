"""fnn.parallel: four CPU devices give one device's results (subprocess, since
the device count is fixed when JAX starts)."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from fnn import layers as L
from fnn import losses, optim, parallel, train

SCRIPT = Path(__file__).parent / "scripts" / "parallel_equivalence.py"


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
