#!/usr/bin/env bash
# fnn on an accelerator, in one go (under 5 minutes on one GPU):
#
#   1. the backend-sensitive tests: native convolution and pooling (on a GPU
#      fnn._backend picks XLA's own ops; the tests also force the CPU
#      formulations and compare), transposed convolution, mixed precision,
#      sharding;
#   2. benchmarks/run.py on every workload (every framework installed, each
#      in its own process), a short run;
#   3. the fnn training step in float32, bfloat16 and float16 (cnn, mlp);
#   4. the main job: examples/mnist_cnn.py (MNIST from $FNN_DATA_DIR or the
#      user cache; without it the example falls back to the bundled digits
#      and says so);
#
# then prints one markdown table to paste into benchmarks/README.md. Logs
# and run.py's JSON go to $OUT (default /tmp/fnn_device_check).
#
# Usage (from anywhere):  bash benchmarks/device_check.sh
#        QUICK=1 bash benchmarks/device_check.sh   # a smoke run of the script
# Float32 matmuls and convolutions are pinned to full precision for the
# tests (JAX_DEFAULT_MATMUL_PRECISION=highest): on recent NVIDIA GPUs the
# default lets XLA use TF32, ~1e-3 relative, which the float32 comparisons
# of the tests (1e-5) are not written for. The benchmarks keep the default.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/fnn_device_check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
TESTS="tests/test_conv.py tests/test_upsampling.py tests/test_mixed_precision.py tests/test_parallel.py"
RUN_ARGS="--rounds 4 --round-seconds 0.1 --peak-size 2048"
MNIST_ARGS=""
STEPS=30
if [ "${QUICK:-0}" = 1 ]; then
    TESTS="tests/test_upsampling.py"
    RUN_ARGS="--quick"
    MNIST_ARGS="--quick --dataset digits"
    STEPS=3
fi
export STEPS

python - <<'EOF' | tee "$OUT/device.txt"
import jax
print(f"backend {jax.default_backend()}, devices {jax.devices()}, jax {jax.__version__}")
EOF

echo "== 1. backend-sensitive tests"
t0=$SECONDS
# shellcheck disable=SC2086
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 150 python -m pytest -q \
    -p no:cacheprovider $TESTS >"$OUT/tests.log" 2>&1
tests_rc=$?
tests_s=$((SECONDS - t0))
tail -n 15 "$OUT/tests.log"

echo "== 2. benchmarks/run.py, every workload"
t0=$SECONDS
# shellcheck disable=SC2086
timeout 150 python benchmarks/run.py $RUN_ARGS --json "$OUT/run.json" \
    >"$OUT/run.log" 2>&1
run_rc=$?
run_s=$((SECONDS - t0))
tail -n 45 "$OUT/run.log"

echo "== 3. fnn step by compute dtype"
timeout 90 python - >"$OUT/dtypes.log" 2>&1 <<'EOF'
import os
import jax, jax.numpy as jnp
import fnn.optim, fnn.train
from benchmarks import harness, workloads as wl
from benchmarks.contenders import fnn_steps
from benchmarks.contenders.common import device_batch
for name in ("cnn", "mlp"):
    w = wl.WORKLOADS[name]
    for dtype in (None, jnp.bfloat16, jnp.float16):
        net = fnn_steps.model(w)
        _, params, state = net.init(jax.random.key(0), w.input_shape)
        opt = fnn.optim.adam(wl.LEARNING_RATE)
        step = fnn.train.make_step(net, fnn_steps.loss_of(w), opt, compute_dtype=dtype)
        carry = [params, state, opt.init(params)]
        x, y = device_batch(w)

        def run():
            carry[0], carry[1], carry[2], loss = step(*carry, x, y, None)
            return loss

        jax.block_until_ready(run())
        ms = 1e3 * harness.median(harness.time_steps(run, int(os.environ["STEPS"])))
        label = "float32" if dtype is None else jnp.dtype(dtype).name
        print(f"DTYPE {name} {label} {ms:.3f}")
EOF
cat "$OUT/dtypes.log" | tail -n 8

echo "== 4. examples/mnist_cnn.py"
t0=$SECONDS
# shellcheck disable=SC2086
timeout 150 python examples/mnist_cnn.py $MNIST_ARGS --plot "$OUT/mnist_cnn.png" \
    >"$OUT/mnist.log" 2>&1
mnist_rc=$?
mnist_s=$((SECONDS - t0))
tail -n 8 "$OUT/mnist.log"

OUT="$OUT" TESTS="$TESTS" tests_rc=$tests_rc tests_s=$tests_s run_rc=$run_rc run_s=$run_s \
mnist_rc=$mnist_rc mnist_s=$mnist_s python - <<'EOF'
import json, os, re
out = os.environ["OUT"]
device = open(f"{out}/device.txt").read().strip()
env = os.environ
tests = open(f"{out}/tests.log").read().strip().splitlines()
print()
print(f"Device check: {device}")
print()
print("| check | result | seconds |")
print("| --- | --- | --- |")
print(f"| tests: {env['TESTS']} | "
      f"{tests[-1] if tests else 'no output'} (rc {env['tests_rc']}) | {env['tests_s']} |")
mnist = open(f"{out}/mnist.log").read()
acc = re.findall(r"test accuracy[^\n]*", mnist, flags=re.I)
print(f"| examples/mnist_cnn.py | {acc[-1] if acc else 'see mnist.log'} "
      f"(rc {env['mnist_rc']}) | {env['mnist_s']} |")
print(f"| benchmarks/run.py, all workloads | rc {env['run_rc']} | {env['run_s']} |")
print()
try:
    rows = json.load(open(f"{out}/run.json"))["results"]
except (OSError, ValueError):
    rows = []
if rows:
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    contenders = list(dict.fromkeys(r["contender"] for r in rows))
    ms = {(r["workload"], r["contender"]): r for r in rows}
    print("| contender | " + " | ".join(workloads) + " |")
    print("| --- |" + " --- |" * len(workloads))
    for c in contenders:
        cells = []
        for w in workloads:
            r = ms.get((w, c))
            ratio = f" ({r['ratio_to_jax']:.2f}x)" if r and r["ratio_to_jax"] else ""
            cells.append(f"{r['ms_per_step']:.3g}{ratio}" if r else "-")
        print(f"| {c} | " + " | ".join(cells) + " |")
    print()
dtypes = re.findall(r"DTYPE (\S+) (\S+) (\S+)", open(f"{out}/dtypes.log").read())
if dtypes:
    f32 = {w: float(ms) for w, d, ms in dtypes if d == "float32"}
    print("| fnn step (autodiff) | compute dtype | ms/step | speed-up over float32 |")
    print("| --- | --- | --- | --- |")
    for w, d, ms in dtypes:
        print(f"| {w} | {d} | {float(ms):.3g} | {f32[w] / float(ms):.2f}x |")
EOF
echo "total ${SECONDS}s; logs in $OUT"
