"""Data-parallel training over every local device with `fnn.parallel`.

On a machine with one CPU this script simulates two devices itself: before
JAX starts it adds ``--xla_force_host_platform_device_count=2`` to
``XLA_FLAGS`` (unless the flag is there already). To choose the number:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python examples/data_parallel.py

Each step splits the batch over a `"data"` mesh axis, keeps parameters
replicated, and lets XLA insert the all-reduce of gradients and batch-norm
statistics. The model's hand-written gradients are first checked against
autodiff (`fnn.backprop.check`); the run ends by checking that one device,
fed the same batches, reaches the same parameters.

Multi-host: start the same script on every host after
`jax.distributed.initialize()` (coordinator address, process count and id
from the cluster); `jax.devices()` then spans all hosts and each host feeds
its own slice of every global batch.

Run: python examples/data_parallel.py [--steps 200] [--quick]
"""

import os

DEVICE_FLAG = "--xla_force_host_platform_device_count"
if DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    # Must happen before JAX initialises its CPU backend (at import here).
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DEVICE_FLAG}=2"

import argparse  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fnn import backprop, data, losses, optim, parallel, train  # noqa: E402
from fnn import layers as L  # noqa: E402


def pick_devices():
    """All devices, or the simulated CPU devices when there is one accelerator."""
    devices = jax.devices()
    if len(devices) == 1 and len(jax.devices("cpu")) > 1:
        print(f"one {devices[0].platform} device: using the simulated CPU devices")
        devices = jax.devices("cpu")
    return devices


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--quick", action="store_true", help="20 steps (seconds): for tests"
    )
    args = parser.parse_args(argv)
    steps = 20 if args.quick else args.steps
    batch_size = args.batch_size

    devices = pick_devices()
    print(f"{len(devices)} devices: {devices}")
    if len(devices) == 1:
        print(f"only one device: the comparison below is vacuous; set {DEVICE_FLAG}")
    (x, y), (x_test, y_test) = data.digits()
    model = L.serial(
        L.Flatten(), L.Dense(128, use_bias=False), L.BatchNorm(), L.Relu, L.Dense(10)
    )
    loss = losses.softmax_cross_entropy
    _, params, state = model.init(jax.random.key(0), x.shape[1:])
    report = backprop.check(
        model, loss, params, state, x[:16], y[:16], finite_differences=not args.quick
    )
    print(report)
    if not report.ok:
        raise SystemExit("gradient check failed: manual and autodiff disagree")
    opt = optim.adam(3e-3)
    rng = np.random.default_rng(0)
    order = [rng.choice(len(x), batch_size, replace=False) for _ in range(steps)]

    results = []
    makers = {
        f"{len(devices)} devices": lambda: parallel.make_step(
            model, loss, opt, devices=devices
        ),
        "1 device": lambda: train.make_step(model, loss, opt),
    }
    with jax.default_device(devices[0]):
        for name, make in makers.items():
            step = make()
            p, s = jax.tree.map(jnp.copy, (params, state))
            o = opt.init(p)
            for idx in order:
                p, s, o, value = step(p, s, o, x[idx], y[idx], None)
            results.append((p, s))
            metrics = train.evaluate(model, loss, p, s, x_test, y_test)
            print(
                f"{name}: final batch loss {float(value):.4f}, "
                f"test accuracy {metrics['accuracy']:.4f}"
            )
    gap = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]))
    )
    print(f"largest parameter difference, {len(devices)} devices vs one: {gap:.2e}")
    return {"devices": len(devices), "gap": gap, "check_ok": report.ok}


if __name__ == "__main__":
    main()
