"""One framework's contenders in a process of their own, driven by ``run.py``.

``run.py`` starts one worker per contender module (fnn, plain JAX, Flax,
Equinox, PyTorch), so no framework shares a process with another: PyTorch's
OpenMP pool and oneDNN caches do not meet XLA's thread pool, and a
framework's import-time settings cannot leak into the next. The rounds are
still interleaved: the runner asks each worker in turn for a batch of timed
steps, exactly as ``harness.interleaved`` does in one process.

Protocol: one JSON object per line on stdin, one reply per line on the
file descriptor that was stdout when the worker started (anything the
contenders print goes to stderr):

- ``{"op": "build", "workload": w, "contender": c}`` builds, compiles and
  warms the step: ``{"warm": seconds}`` or ``{"skip": reason}``;
- ``{"op": "time", "contender": c, "steps": n}`` runs one untimed and
  ``n`` timed blocked steps, garbage collection off: ``{"times": [...]}``;
- ``{"op": "drop"}`` forgets every built step: ``{}``;
- ``{"op": "first", "workload": w, "contender": c}``, sent to a fresh
  worker, times what a user waits for before training starts:
  ``{"import": s, "init": s, "first": s, "second": s}`` (or ``{"skip":
  reason}``): importing the contender's module (its library), building the
  model and optimizer state (the builder: parameters, optimizer state,
  the batch on the device), the first step (trace, compile, run, blocked
  on) and, for scale, the second. The backend is started (one tiny op)
  before ``init`` is timed, so that no contender pays for it there.

JAX is imported only by the contenders that use it, so the PyTorch worker
runs without an XLA client.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _block(value):
    """Waits for ``value`` where it is a JAX result (PyTorch's CPU steps are
    synchronous already)."""
    jax = sys.modules.get("jax")
    return jax.block_until_ready(value) if jax is not None else value


def time_steps(step, n: int) -> list[float]:
    """Seconds of each of ``n`` blocked calls, after one untimed call."""
    _block(step())
    clock = time.perf_counter
    out = []
    for _ in range(n):
        tic = clock()
        _block(step())
        out.append(clock() - tic)
    return out


def handle(cmd: dict, steps: dict) -> dict:
    """The reply to one command; ``steps`` holds the built steps by name."""
    from benchmarks.contenders import Unavailable, builder
    from benchmarks.workloads import WORKLOADS

    op = cmd["op"]
    if op == "first":
        return first_step(cmd["workload"], cmd["contender"])
    if op == "build":
        name = cmd["contender"]
        try:
            step = builder(name)(WORKLOADS[cmd["workload"]])
            _block(step())  # compiles
            warm = statistics.median(time_steps(step, 2))
        except Unavailable as e:
            return {"skip": str(e)}
        except Exception as e:  # a broken contender must not sink the others
            return {"skip": f"failed: {type(e).__name__}: {e}"}
        steps[name] = step
        return {"warm": warm}
    if op == "time":
        gc.collect()
        gc.disable()
        try:
            return {"times": time_steps(steps[cmd["contender"]], cmd["steps"])}
        finally:
            gc.enable()
    if op == "drop":
        steps.clear()
        gc.collect()
        return {}
    raise ValueError(f"unknown op {op!r}")


def _start_backend():
    """Starts the array library already imported (the XLA client, or
    PyTorch's thread pool) with one tiny op, outside the timed ``init``."""
    if "jax" in sys.modules:
        jax = sys.modules["jax"]
        jax.block_until_ready(jax.numpy.zeros(()) + 1)
    if "torch" in sys.modules:
        sys.modules["torch"].zeros(1).add_(1)


def first_step(workload: str, contender: str) -> dict:
    """Seconds to import, build (``init``), and run the first and second
    steps of one contender, in this (fresh) process."""
    from benchmarks.contenders import Unavailable, builder
    from benchmarks.workloads import WORKLOADS

    clock = time.perf_counter
    try:
        tic = clock()
        build = builder(contender)
        imported = clock() - tic
        _start_backend()
        tic = clock()
        step = build(WORKLOADS[workload])
        _block(jax_leaves_of(step))
        init = clock() - tic
        tic = clock()
        _block(step())
        first = clock() - tic
        tic = clock()
        _block(step())
        second = clock() - tic
    except Unavailable as e:
        return {"skip": str(e)}
    except Exception as e:  # a broken contender must not sink the others
        return {"skip": f"failed: {type(e).__name__}: {e}"}
    return {"import": imported, "init": init, "first": first, "second": second}


def jax_leaves_of(step):
    """The arrays a built step closes over (its parameters and state), so
    that ``init`` is timed until they exist, not merely until dispatched."""
    cells = getattr(step, "__closure__", None) or ()
    out = []
    for cell in cells:
        try:
            out.append(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    jax = sys.modules.get("jax")
    if jax is None:
        return None
    return [
        leaf for leaf in jax.tree_util.tree_leaves(out) if isinstance(leaf, jax.Array)
    ]


class Worker:
    """The runner's end of one worker process."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, **cmd) -> dict:
        """Sends one command and waits for its reply."""
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"benchmark worker exited with code {code} on {cmd}")
        return json.loads(line)

    def close(self):
        """Ends the worker (end of its stdin) and closes the pipes."""
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


class RemoteStep:
    """A contender built in a worker; ``harness.interleaved`` times it there."""

    def __init__(self, worker: Worker, name: str):
        self.worker, self.name = worker, name

    def time_steps(self, n: int) -> list[float]:
        return self.worker.ask(op="time", contender=self.name, steps=n)["times"]


def main() -> int:
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # contenders' prints (Python or C) go to stderr
    sys.stdout = sys.stderr
    steps: dict = {}
    for line in sys.stdin:
        replies.write(json.dumps(handle(json.loads(line), steps)) + "\n")
        replies.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
