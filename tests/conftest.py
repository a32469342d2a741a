"""Strict settings for every test.

Two host CPU devices let sharding be tested on any machine; rank promotion
raises, so an implicit ``(N, 1) - (N,)`` broadcast is an error, not a bug.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
