"""Benchmarks of fnn's training step against plain JAX and other libraries.

``python benchmarks/run.py`` times one training step per workload and
contender; ``python benchmarks/epochs.py`` times ``fnn.train.fit``'s
compiled epochs against a Python loop of steps. See ``benchmarks/README.md``.
"""
