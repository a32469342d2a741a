"""Data-parallel training over every local device with `fnn.parallel`.

On a machine with one CPU, simulate several devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python examples/data_parallel.py

Each step splits the batch over a `"data"` mesh axis, keeps parameters
replicated, and lets XLA insert the all-reduce of gradients and batch-norm
statistics. The run ends by checking that one device, fed the same batches,
reaches the same parameters.

Multi-host: start the same script on every host after
`jax.distributed.initialize()` (coordinator address, process count and id
from the cluster); `jax.devices()` then spans all hosts and each host feeds
its own slice of every global batch.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from fnn import data, losses, optim, parallel, train
from fnn import layers as L


def main(steps: int = 200, batch_size: int = 128):
    devices = jax.devices()
    print(f"{len(devices)} devices: {devices}")
    (x, y), (x_test, y_test) = data.digits()
    model = L.serial(
        L.Flatten(), L.Dense(128, use_bias=False), L.BatchNorm(), L.Relu, L.Dense(10)
    )
    _, params, state = model.init(jax.random.key(0), x.shape[1:])
    opt = optim.adam(3e-3)
    rng = np.random.default_rng(0)
    order = [rng.choice(len(x), batch_size, replace=False) for _ in range(steps)]

    results = []
    for make in (parallel.make_step, train.make_step):
        step = make(model, losses.softmax_cross_entropy, opt)
        p, s = jax.tree.map(jnp.copy, (params, state))
        o = opt.init(p)
        for idx in order:
            p, s, o, value = step(p, s, o, x[idx], y[idx], None)
        results.append((p, s))
        name = f"{len(devices)} devices" if make is parallel.make_step else "1 device"
        metrics = train.evaluate(
            model, losses.softmax_cross_entropy, p, s, x_test, y_test
        )
        print(
            f"{name}: final batch loss {float(value):.4f}, "
            f"test accuracy {metrics['accuracy']:.4f}"
        )
    gap = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]))
    )
    print(f"largest parameter difference, many devices vs one: {gap:.2e}")
    return gap


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    main(args.steps)
