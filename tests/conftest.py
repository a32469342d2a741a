"""Strict settings for every test, and the examples made importable.

Two host CPU devices let sharding be tested on any machine; rank promotion
raises, so an implicit ``(N, 1) - (N,)`` broadcast is an error, not a bug.
The examples folder goes at the end of ``sys.path``: the examples import
their plumbing with ``from _shared import ...``, which works when Python runs
one as a script (its folder is then on the path) but not under
``runpy.run_path``, as the tests run them.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
sys.path.append(str(Path(__file__).parents[1] / "examples"))

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
