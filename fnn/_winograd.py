"""Winograd's minimal filtering, F(2x2, 3x3), for 3x3 stride-1 convolutions
on CPU (private).

A 3x3 convolution computes each 2x2 block of outputs from a 4x4 tile of the
padded input. Winograd (Lavin & Gray, 2015) writes that block as::

    Y = A^T [ (G w G^T) * (B^T d B) ] A        (* elementwise, 4x4)

    B^T = [[1, 0, -1, 0],   G = [[1,    0,   0],   A^T = [[1, 1,  1,  0],
           [0, 1,  1, 0],        [1/2,  1/2, 1/2],        [0, 1, -1, -1]]
           [0, -1, 1, 0],        [1/2, -1/2, 1/2],
           [0, 1,  0, -1]]       [0,    0,   1]]

so that, summed over input channels, the 16 entries of the tile become 16
matrix products ``V[k] (T, C) @ U[k] (C, F)`` over all ``T`` tiles at once:
16 multiplies per 2x2 block and channel pair where the direct convolution
(im2col) needs 36, 2.25x fewer FLOPs, and the tiles (4 values per output)
are smaller than im2col's patches (9). The transforms are sums and
differences, fused by XLA into loops that read the input once.

The gradients are the forward transposed. With ``dM = A dY A^T`` per tile
(``dy``'s 2x2 blocks), shared by both::

    dw = G^T [ sum_tiles V^T dM ] G     16 products (C, T) @ (T, F)
    dx = B [ dM U^T ] B^T per tile      16 products (T, F) @ (F, C)

the ``dx`` tiles, which overlap by two rows, added up onto ``x``. All three
agree with the direct convolution to float32 rounding (the transforms add
at most four terms and scale by 1/2 and 1/4; ``tests/test_winograd.py``
bounds the difference); 16-bit floats keep im2col, whose matmul
accumulates in float32. A NaN reaches the same outputs as in the direct
convolution, but an infinite input mostly gives NaN where that gives
``+-inf``: the transforms subtract inputs that the products add back.

Shapes: ``x`` is ``(N, H, W, C)``, ``w`` is ``(3, 3, C, F)``, ``dy`` is
``(N, H', W', F)``; tile ``(i, j)`` covers padded rows ``2i .. 2i + 3`` and
columns ``2j .. 2j + 3``; transformed arrays are ``(16, T, channels)`` with
``T = N * tiles_h * tiles_w``, entry ``4 a + b`` of the tile first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn._windows import out_spatial, pad_spatial, transpose_pads

WINDOW = (3, 3)
# Conv vjp (forward, dx, dw) at 28x28, batch 64, ms against im2col's:
# 8 -> 32 channels 8.0 against 6.7 (slower), 16 -> 16 7.2 / 8.4,
# 16 -> 64 15.0 / 23.0, 32 -> 32 17.8 / 31.0 (benchmarks/README.md).
MIN_CHANNELS = 16
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def applies(kernel_shape, strides, dtype) -> bool:
    """Whether F(2x2, 3x3) computes a convolution with a kernel of
    ``kernel_shape``, ``(*window, C, F)``: a 3x3 window, stride 1, float32
    or float64, and at least ``MIN_CHANNELS`` input and output channels
    (with one input channel, the first layer of a CNN, the transformed
    gradient tiles cost more to build than the products save)."""
    *window, c, f = kernel_shape
    return (
        tuple(window) == WINDOW
        and tuple(strides) == (1, 1)
        and np.dtype(dtype) in DTYPES
        and min(c, f) >= MIN_CHANNELS
    )


def _tiles(out):
    """Tiles per spatial axis: one per two output rows, rounded up."""
    return tuple((o + 1) // 2 for o in out)


def _count(a, tiles):
    """``T``, the tiles of a batch ``a``: written out, as an empty batch
    leaves ``reshape``'s ``-1`` undetermined."""
    return a.shape[0] * tiles[0] * tiles[1]


def _every_other(a, start, tiles):
    """``a[:, start + 2 i, ...]`` for ``i < tiles`` on both spatial axes of
    ``(N, H, W, C)``: one entry of every tile, ``(N, *tiles, C)``."""
    limit = [s + 2 * t - 1 for s, t in zip(start, tiles, strict=True)]
    return lax.slice(a, (0, *start, 0), (a.shape[0], *limit, a.shape[-1]), (1, 2, 2, 1))


def _bt(d0, d1, d2, d3):
    """``B^T`` applied to four rows."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def _at(m0, m1, m2, m3):
    """``A^T`` applied to four rows."""
    return m0 + m1 + m2, m1 - m2 - m3


def _a(d0, d1):
    """``A`` applied to two rows (the transpose of ``_at``)."""
    return d0, d0 + d1, d0 - d1, -d1


def _b(z0, z1, z2, z3):
    """``B`` applied to four rows (the transpose of ``_bt``)."""
    return z0, z1 - z2 + z3, z1 + z2 - z0, -z3


def input_transform(x, pads, tiles):
    """``V[4a + b, t, c] = (B^T d_t B)[a, b]`` for every 4x4 tile ``d_t`` of
    ``x`` padded by ``pads`` (and with zeros up to ``2 tiles + 2``):
    ``(N, H, W, C) -> (16, T, C)``."""
    edges = [
        (lo, 2 * t + 2 - n - lo)
        for n, t, (lo, _) in zip(x.shape[1:3], tiles, pads, strict=True)
    ]
    xp = pad_spatial(x, edges, 0.0)
    d = [[_every_other(xp, (i, j), tiles) for j in range(4)] for i in range(4)]
    rows = [_bt(*col) for col in zip(*d)]  # rows[j][a] = (B^T d)[a, j]
    # Stacks of four, nested: XLA:CPU fuses them into the loop that computes
    # the sums, where one stack of 16 was left unfused, its pieces computed
    # one by one and then copied (4.5 ms more in the CNN step).
    v = [jnp.stack(_bt(*row)) for row in zip(*rows)]  # v[a] = (B^T d B)[a, :]
    return jnp.stack(v).reshape(16, _count(x, tiles), x.shape[-1])


def input_transform_adjoint(z, spatial, pads, tiles):
    """``B Z_t B^T`` per tile, the tiles (which overlap by two rows) added up
    onto ``x_pad`` and cropped to ``x``, the transpose of
    :func:`input_transform`: ``(16, T, C) -> (N, *spatial, C)``."""
    th, tw = tiles
    z = z.reshape(4, 4, z.shape[1] // (th * tw), th, tw, z.shape[-1])
    cols = [_b(*col) for col in zip(*z)]  # cols[b][i] = (B Z)[i, b]
    p = [_b(*row) for row in zip(*cols)]  # p[i][j] = (B Z B^T)[i, j]

    # x_pad row 2t + r gathers entry r of tile t and entry r + 2 of tile
    # t - 1: that tile's entries, padded in by one tile at the low edge.
    def from_tile(entry, up, left):
        edges = [(1, 0) if up else (0, 1), (1, 0) if left else (0, 1)]
        return pad_spatial(entry, edges, 0.0)

    blocks = [
        [
            from_tile(p[r][q], 0, 0)
            + from_tile(p[r + 2][q], 1, 0)
            + from_tile(p[r][q + 2], 0, 1)
            + from_tile(p[r + 2][q + 2], 1, 1)
            for q in range(2)
        ]
        for r in range(2)
    ]
    xp = jnp.stack([jnp.stack(row, 3) for row in blocks], 2)
    xp = xp.reshape(xp.shape[0], 2 * th + 2, 2 * tw + 2, z.shape[-1])
    crop = [
        (-lo, n + lo - 2 * t - 2)
        for n, t, (lo, _) in zip(spatial, tiles, pads, strict=True)
    ]
    return pad_spatial(xp, crop, 0.0)


def kernel_transform(w):
    """``U[4a + b] = (G w G^T)[a, b]``: ``(3, 3, C, F) -> (16, C, F)``."""
    g = jnp.asarray(G, w.dtype)
    u = jnp.einsum("ak,bl,klcf->abcf", g, g, w, precision=lax.Precision.HIGHEST)
    return u.reshape(16, *w.shape[2:])


def kernel_transform_adjoint(du):
    """``G^T du G``, the transpose of :func:`kernel_transform`:
    ``(16, C, F) -> (3, 3, C, F)``."""
    g = jnp.asarray(G, du.dtype)
    du = du.reshape(4, 4, *du.shape[1:])
    return jnp.einsum("ak,bl,abcf->klcf", g, g, du, precision=lax.Precision.HIGHEST)


def output_transform(m, n, tiles, out):
    """``Y_t = A^T M_t A`` per tile, the 2x2 blocks put in place and the
    rows past ``out`` cropped: ``(16, T, F) -> (N, *out, F)``.

    XLA:CPU materialises the stacked blocks. Written as one sum of
    broadcast products instead, it was fused into the pooling backward,
    which reads each ``dx`` four times and recomputed the 16-term sums at
    every read (39 ms against 1.3 in the CNN step)."""
    th, tw = tiles
    m = m.reshape(4, 4, n, th, tw, m.shape[-1])
    blocks = [_at(*row) for row in _at(*m)]  # [i][j], each (N, th, tw, F)
    y = jnp.stack([jnp.stack(row, 3) for row in blocks], 2)  # (N, th, 2, tw, 2, F)
    y = y.reshape(n, 2 * th, 2 * tw, m.shape[-1])
    return y[:, : out[0], : out[1]]


def output_transform_adjoint(dy, tiles):
    """``A dY_t A^T`` per tile (``dy`` padded with zeros to whole tiles), the
    transpose of :func:`output_transform`: ``(N, *out, F) -> (16, T, F)``."""
    edges = [(0, 2 * t - o) for t, o in zip(tiles, dy.shape[1:3], strict=True)]
    d = pad_spatial(dy, edges, 0.0)
    d = [[_every_other(d, (i, j), tiles) for j in range(2)] for i in range(2)]
    rows = [_a(*col) for col in zip(*d)]  # rows[j][a] = (A dY)[a, j]
    dm = [jnp.stack(_a(*row)) for row in zip(*rows)]  # dm[a] = (A dY A^T)[a, :]
    return jnp.stack(dm).reshape(16, _count(dy, tiles), dy.shape[-1])


def conv(x, w, pads):
    """``y[n, o, f] = sum_{k, c} x_pad[n, o + k, c] w[k, c, f]`` for a 3x3
    kernel: ``(N, H, W, C) -> (N, H', W', F)``."""
    out = out_spatial(x.shape[1:-1], WINDOW, (1, 1), pads)
    tiles = _tiles(out)
    m = input_transform(x, pads, tiles) @ kernel_transform(w)
    return output_transform(m, x.shape[0], tiles, out)


def conv_weight_grad(x, dy, pads):
    """``dw[k, c, f] = sum_{n, o} x_pad[n, o + k, c] dy[n, o, f]``:
    ``G^T (sum_t V[:, t]^T dM[:, t]) G``, shaped ``(3, 3, C, F)``."""
    tiles = _tiles(dy.shape[1:-1])
    v = input_transform(x, pads, tiles)
    dm = output_transform_adjoint(dy, tiles)
    du = jnp.einsum("ktc,ktf->kcf", v, dm)
    return kernel_transform_adjoint(du)


def conv_transpose(dy, w, edges):
    """``dx[n, p, c] = sum_{o + k = p + lo} sum_f dy[n, o, f] w[k, c, f]``,
    the forward transposed with respect to ``x``: ``B [(A dY A^T) U^T] B^T``
    per tile, added up onto ``x``. ``edges`` are the transposed
    convolution's pads (``_windows.transpose_pads``), from which the
    forward's pads and ``x``'s size follow: ``lo = 2 - edge_lo``,
    ``n = edge_hi - lo + out``."""
    out = dy.shape[1:3]
    tiles = _tiles(out)
    pads, spatial = [], []
    for o, (e_lo, e_hi) in zip(out, edges, strict=True):
        lo = 2 - e_lo
        n = e_hi - lo + o
        pads.append((lo, o + 2 - n - lo))
        spatial.append(n)
    # U^T as the transform of w^T, a (16, F, C) array of its own: as
    # U transposed, YNNPACK read it across rows (4.8 ms against 2.5).
    u_t = kernel_transform(jnp.swapaxes(w, 2, 3))
    z = output_transform_adjoint(dy, tiles) @ u_t
    return input_transform_adjoint(z, spatial, pads, tiles)


def _transposed(linear, input_like, value):
    """``linear^T(value)`` for a linear map whose inputs look like
    ``input_like``."""
    spec = jax.ShapeDtypeStruct(input_like.shape, input_like.dtype)
    return jax.linear_transpose(linear, spec)(value)[0]


def conv_tangent_x(dx, w, pads, y):
    """``conv(dx, w)`` computed as the transpose of :func:`conv_transpose`,
    so that JAX's transpose of it, autodiff's ``dx``, is
    :func:`conv_transpose` itself (``y`` gives the output's shape)."""
    edges = transpose_pads(dx.shape[1:-1], y.shape[1:-1], WINDOW, (1, 1), pads)
    return _transposed(lambda d: conv_transpose(d, w, edges), y, dx)


def conv_tangent_w(x, dw, pads, y):
    """``conv(x, dw)`` computed as the transpose of :func:`conv_weight_grad`,
    so that autodiff's ``dw`` is :func:`conv_weight_grad` itself."""
    return _transposed(lambda d: conv_weight_grad(x, d, pads), y, dw)
