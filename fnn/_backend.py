"""Which formulation runs where: the one place fnn looks at the backend.

The layers state their maths once (``fnn.conv``, ``fnn.pool``) and call the
functions below for the pieces that have a measured-faster formulation on
some backend. The choice is made at trace time:

- convolution forward: on CPU, for a 3x3 stride-1 kernel with 16 channels
  or more in and out (float32, float64), Winograd's F(2x2, 3x3)
  (:mod:`fnn._winograd`); otherwise im2col ``patches @ w`` (per-offset
  products for one input channel); either with a JVP whose transpose is
  fast (:mod:`fnn._cpu`); elsewhere ``lax.conv_general_dilated``
  (:mod:`fnn._native`);
- convolution ``dw``: on CPU Winograd's where it applies, else
  ``patches^T @ dy``; elsewhere a ``conv_general_dilated``;
- convolution ``dx``: on CPU Winograd's where it applies; otherwise XLA's
  transposed convolution, on every backend;
- max pool forward: on CPU ``sum_k where(winner == k, view_k, 0)``, whose
  autodiff is the manual backward's formula; elsewhere ``reduce_window``.

Both choices compute the same values (the tests force each and compare);
the timings behind the CPU ones are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import jax

from fnn import _cpu, _native, _winograd


def use_native() -> bool:
    """Whether XLA's own ops are the fast ones here (every backend but CPU).

    Read at trace time; tests and ``benchmarks/conv_pieces.py`` replace it
    to run either column on any machine.
    """
    return jax.default_backend() != "cpu"


def conv(x, w, strides, pads):
    """``y[n, o, f] = sum_{k, c} x_pad[n, o*s + k, c] w[k, c, f]``:
    ``(N, *spatial, C)`` with ``(*window, C, F)`` -> ``(N, *out, F)``."""
    return (_native.conv if use_native() else _cpu.conv)(x, w, strides, pads)


def conv_weight_grad(x, dy, window, strides, pads):
    """``dw[k, c, f] = sum_{n, o} x_pad[n, o*s + k, c] dy[n, o, f]``, shaped
    ``(*window, C, F)``."""
    if use_native():
        return _native.conv_weight_grad(x, dy, window, strides, pads)
    if _winograd.applies((*window, x.shape[-1], dy.shape[-1]), strides, x.dtype):
        return _winograd.conv_weight_grad(x, dy, pads)
    return _cpu.conv_weight_grad(x, dy, window, strides, pads)


def conv_transpose(dy, w, strides, edges):
    """``dx[n, p, c] = sum_{o*s + k = p + lo} sum_f dy[n, o, f] w[k, c, f]``:
    Winograd's on CPU where it applies, else XLA's transposed convolution
    (on CPU it beat both matmul formulations of it)."""
    if not use_native() and _winograd.applies(w.shape, strides, dy.dtype):
        return _winograd.conv_transpose(dy, w, edges)
    return _native.conv_transpose(dy, w, strides, edges)


def max_pool(x, window, strides, pads):
    """``y[n, o, c] = max_k x_pad[n, o*s + k, c]``, padded with the dtype's
    lowest value; exact for every dtype."""
    return (_native.max_pool if use_native() else _cpu.max_pool)(
        x, window, strides, pads
    )


def _walk(layer):
    yield layer
    for child in getattr(layer, "layers", ()):
        yield from _walk(child)


def scan_by_default(model) -> bool:
    """Whether ``fit`` should run an epoch as one compiled ``lax.scan``.

    It is the faster choice everywhere measured (``benchmarks/epochs.py``)
    except on XLA's CPU backend for layers that declare
    ``scans_well=False`` (convolutions, which XLA:CPU runs 4-10x slower in
    a loop body than at the top level of a program, jax-ml/jax#12868); a
    model holding one, anywhere in its tree of ``layers``, is trained by a
    loop of jitted steps there.

    Args:
      model: a :class:`fnn.protocol.Layer`; its children are walked through
        ``layer.layers``.

    Returns:
      ``False`` on CPU when some layer has ``scans_well=False``, else
      ``True``.
    """
    if jax.default_backend() != "cpu":
        return True
    return all(getattr(layer, "scans_well", True) for layer in _walk(model))
