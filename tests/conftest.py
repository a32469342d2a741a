"""Strict settings for every test, and the examples made importable.

Two host CPU devices let sharding be tested on any machine; rank promotion
raises, so an implicit ``(N, 1) - (N,)`` broadcast is an error, not a bug.

XLA's CPU backend compiles with LLVM at -O0 here: the suite is mostly
compiles of small programs (a fresh random draw alone costs 0.3-0.9 s at the
default -O3, 0.1 s at -O0), and the whole suite ran 7:42 -> 5:39 on the
2-core machine. The HLO, and so what each test checks, is the same; only the
machine code is less tuned, which also moves float32 results by an ulp or
so. The benchmark scripts run at the default level (``test_benchmarks``
drops these flags). Set ``XLA_FLAGS`` yourself to test at another level.

The examples folder goes at the end of ``sys.path``: the examples import
their plumbing with ``from _shared import ...``, which works when Python runs
one as a script (its folder is then on the path) but not under
``runpy.run_path``, as the tests run them.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0",
)
sys.path.append(str(Path(__file__).parents[1] / "examples"))

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
