"""Run with 4 host devices: the data-parallel step equals the one-device step.

Prints one line per check; exits non-zero on any mismatch.
"""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fnn import layers as L  # noqa: E402
from fnn import losses, optim, parallel, train  # noqa: E402

assert jax.device_count() == 4, jax.devices()
model = L.serial(
    L.Dense(16, use_bias=False), L.BatchNorm(), L.Relu, L.Dropout(0.25), L.Dense(3)
)
_, params, state = model.init(jax.random.key(0), (5,))
x = jax.random.normal(jax.random.key(1), (32, 5)) * 3 + 1
y = jax.random.randint(jax.random.key(2), (32,), 0, 3)
opt = optim.adam(1e-2)

results = {}
for name, make in (("one", train.make_step), ("four", parallel.make_step)):
    step = make(model, losses.softmax_cross_entropy, opt)
    p, s = jax.tree.map(jnp.copy, (params, state))
    o = opt.init(p)
    for i in range(5):
        p, s, o, value = step(p, s, o, x, y, jax.random.key(10 + i))
    results[name] = (p, s, float(value))
    if name == "four":
        hlo = step.lower(p, s, o, x, y, jax.random.key(0)).compile().as_text()
        print("all-reduce in compiled program:", "all-reduce" in hlo)
        assert "all-reduce" in hlo
        print("params sharding:", jax.tree.leaves(p)[0].sharding)

(p1, s1, l1), (p4, s4, l4) = results["one"], results["four"]
np.testing.assert_allclose(l1, l4, rtol=1e-5)
for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p4, s4))):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
print(
    f"loss one device {l1:.6f}, four devices {l4:.6f}: parameters and batch-norm "
    "state agree after 5 steps"
)

try:
    parallel.make_step(model, losses.softmax_cross_entropy, opt)(
        p4, s4, opt.init(p4), x[:30], y[:30], None
    )
except ValueError as e:
    print("indivisible batch:", e)
    assert "not divisible by the 4 devices" in str(e)
else:
    raise SystemExit("an indivisible batch was accepted")
print("OK")
