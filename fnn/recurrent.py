"""Recurrent layers: ``SimpleRNN``, ``LSTM``, ``GRU``.

Each maps a sequence to the sequence of its hidden states: per example
``(T, d) -> (T, hidden)``, starting from a zero state. The forward pass runs
``jax.lax.scan`` over time, time-major inside (``(N, T, d) -> (T, N, d)``).
The input projection ``x_t @ w_x + b`` of every step is one matmul before
the scan; only ``h_{t-1} @ w_h`` and the elementwise gate algebra run step by
step.

The hand-written backward is backpropagation through time: a reverse
``lax.scan`` (``reverse=True``) carries the state cotangents ``dh`` (and
``dc``) from the last step to the first and emits, per step, the cotangent
``dz_t`` of the gate pre-activations. The reductions over time and batch are
then big matmuls outside the scan, with ``h_prev`` the states shifted one
step (``h_{-1} = 0``)::

    dw_x = sum_{n,t} x_t^T dz_t      dw_h = sum_{n,t} h_{t-1}^T dz_t
    db   = sum_{n,t} dz_t            dx_t = dz_t w_x^T

Caches hold arrays only (inputs and per-step states/gates, time-major), as
they cross ``jax.custom_vjp`` in :func:`fnn.backprop.manual_vjp`.

Initialisers follow Keras: Glorot-uniform ``w_x``; ``w_h`` orthogonal, one
``(hidden, hidden)`` orthogonal block per gate; zero biases except the LSTM
forget gate's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnn import initializers
from fnn.protocol import (
    Layer,
    check_input,
    check_leaves,
    check_positive_int,
    check_sequence_shape,
    per_channel,
)

# --------------------------------------------------------------------------
# Shared plumbing


def _init_params(name, key, input_shape, hidden, gates):
    """``w_x (d, gates*hidden)``, ``w_h (hidden, gates*hidden)``, ``b``."""
    input_shape = check_sequence_shape(name, input_shape)
    t, d = input_shape
    key_x, key_h = jax.random.split(key)
    w_h = [
        initializers.orthogonal()(k, (hidden, hidden), jnp.float32)
        for k in jax.random.split(key_h, gates)
    ]
    params = {
        # draw: zeros for d = 0, where Glorot's fan-in of 0 divides by zero.
        "w_x": initializers.draw(
            initializers.glorot_uniform(), key_x, (d, gates * hidden)
        ),
        "w_h": jnp.concatenate(w_h, axis=1),
        "b": jnp.zeros((gates * hidden,), jnp.float32),
    }
    return (t, hidden), params


def _check_call(name, params, x, hidden, gates, extra=None):
    """The trace-time checks of every recurrent ``forward``: input, params."""
    g = gates * hidden
    expected = {"w_x": (None, g), "w_h": (hidden, g), "b": (g,)} | (extra or {})
    check_leaves(name, "params", params, expected)
    check_input(name, x, ("T", params["w_x"].shape[0]))


def _input_projection(params, x):
    """``x_t @ w_x + b`` for all steps at once, time-major ``(T, N, G)``."""
    xp = jnp.einsum("ntd,dg->tng", x, params["w_x"])
    return xp + per_channel(params["b"], 3)


def _zeros_state(xp, params, hidden):
    dtype = jnp.result_type(xp.dtype, params["w_h"].dtype)
    return jnp.zeros((xp.shape[1], hidden), dtype)


def _shift(hs):
    """States one step back, time-major: ``[0, h_0, ..., h_{T-2}]``."""
    return jnp.concatenate([jnp.zeros_like(hs[:1]), hs[:-1]], axis=0)


def _zeros_step(hs):
    """Zeros like one step of ``hs`` ``(T, N, H)``; also when ``T = 0``."""
    return jnp.zeros(hs.shape[1:], hs.dtype)


def _batch_major(a):
    return jnp.swapaxes(a, 0, 1)


def _reduce(params, x, h_prev, dz_x, dz_h):
    """Parameter and input cotangents from per-step pre-activation cotangents.

    ``x`` is batch-major ``(N, T, d)``; ``h_prev``, ``dz_x`` (for ``w_x``
    and ``b``) and ``dz_h`` (for ``w_h``) are time-major ``(T, N, .)``.
    """
    dparams = {
        "w_x": jnp.einsum("ntd,tng->dg", x, dz_x),
        "w_h": jnp.einsum("tnh,tng->hg", h_prev, dz_h),
        "b": jnp.sum(dz_x, axis=(0, 1)),
    }
    dx = jnp.einsum("tng,dg->ntd", dz_x, params["w_x"])
    return dparams, dx


# --------------------------------------------------------------------------
# SimpleRNN


def SimpleRNN(hidden: int) -> Layer:
    """An Elman RNN, ``h_t = tanh(x_t w_x + h_{t-1} w_h + b)``, ``h_{-1} = 0``.

    Per example: ``(T, d) -> (T, hidden)``, every ``h_t``.

    Parameters: ``{"w_x": (d, hidden), "w_h": (hidden, hidden),
    "b": (hidden,)}``.

    Backward (``a_t`` the pre-activation, ``dh_T = 0``)::

        da_t = (dy_t + dh_{t+1}) * (1 - h_t**2)
        dh_t = da_t w_h^T            # carried to step t - 1

    then the module-level reductions with ``dz_t = da_t``.

    Args:
      hidden: the size of the state ``h_t``, a positive int.

    Returns:
      A :class:`~fnn.protocol.Layer`, ``(N, T, d) -> (N, T, hidden)``.

    Raises:
      ValueError: at construction, for a ``hidden`` that is not a positive
        int (``SimpleRNN(0)``, ``SimpleRNN(2.5)``).
      ShapeError: at ``init`` for an input that is not ``(T, d)``, and at
        trace time for an input of another ``d`` or another layer's params.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> layer = SimpleRNN(4)
      >>> out_shape, params, state = layer.init(jax.random.key(0), (5, 3))
      >>> out_shape, params["w_h"].shape
      ((5, 4), (4, 4))
    """
    hidden = check_positive_int("SimpleRNN", "hidden", hidden)
    name = f"SimpleRNN({hidden})"

    def init(key, input_shape):
        out_shape, params = _init_params(name, key, input_shape, hidden, 1)
        return out_shape, params, ()

    def forward(params, state, x, *, key=None, train=False):
        _check_call(name, params, x, hidden, 1)
        xp = _input_projection(params, x)
        w_h = params["w_h"]

        def step(h, xp_t):
            h = jnp.tanh(xp_t + h @ w_h)
            return h, h

        _, hs = jax.lax.scan(step, _zeros_state(xp, params, hidden), xp)
        return _batch_major(hs), state, (x, hs)

    def backward(params, cache, dy):
        x, hs = cache
        w_h_t = params["w_h"].T

        def step(dh_next, inputs):
            dy_t, gain_t = inputs
            da = (dy_t + dh_next) * gain_t
            return da @ w_h_t, da

        dh_end = _zeros_step(hs)
        _, da = jax.lax.scan(step, dh_end, (_batch_major(dy), 1 - hs**2), reverse=True)
        return _reduce(params, x, _shift(hs), da, da)

    return Layer(init, forward, backward, name)


# --------------------------------------------------------------------------
# LSTM


def LSTM(hidden: int) -> Layer:
    """A long short-term memory layer; states ``h`` and ``c`` start at zero.

    Per example: ``(T, d) -> (T, hidden)``, every ``h_t``.

    Parameters: ``{"w_x": (d, 4 hidden), "w_h": (hidden, 4 hidden),
    "b": (4 hidden,)}``, the four gates side by side in the order
    ``i, f, g, o`` (input, forget, candidate, output). The forget-gate slice
    of ``b`` starts at 1 (Jozefowicz et al. 2015, Keras' ``unit_forget_bias``)
    so that early in training the cell remembers; the others start at 0.

    Forward, with ``z_t = x_t w_x + h_{t-1} w_h + b`` split into four::

        i = sigmoid(z_i)  f = sigmoid(z_f)  g = tanh(z_g)  o = sigmoid(z_o)
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t)

    Backward (``dh_T = dc_T = 0``)::

        dh   = dy_t + dh_{t+1}
        dc   = dc_{t+1} + dh * o * (1 - tanh(c_t)**2)
        dz_i = dc * g * i (1 - i)        dz_f = dc * c_{t-1} * f (1 - f)
        dz_g = dc * i * (1 - g**2)       dz_o = dh * tanh(c_t) * o (1 - o)
        dh_t = dz_t w_h^T                dc_t = dc * f

    The factors that multiply ``dc`` and ``dh`` depend only on the forward
    pass, so they are computed for all steps before the reverse scan.

    Args:
      hidden: the size of ``h_t`` and ``c_t``, a positive int.

    Returns:
      The layer; every ``h_t`` of a batch, ``(N, T, hidden)``.

    Raises:
      ValueError: when ``hidden`` is not a positive int (``LSTM(True)``).
      ShapeError: when ``init`` gets a shape other than ``(T, d)``; when the
        traced input has another ``d``, or the params were made by another
        layer (an ``LSTM`` of another size, a ``GRU``).
    """
    hidden = check_positive_int("LSTM", "hidden", hidden)
    name = f"LSTM({hidden})"
    H = hidden

    def init(key, input_shape):
        out_shape, params = _init_params(name, key, input_shape, hidden, 4)
        params["b"] = params["b"].at[H : 2 * H].set(1.0)
        return out_shape, params, ()

    def forward(params, state, x, *, key=None, train=False):
        _check_call(name, params, x, hidden, 4)
        xp = _input_projection(params, x)
        w_h = params["w_h"]

        def step(carry, xp_t):
            h, c = carry
            z = xp_t + h @ w_h
            sig = jax.nn.sigmoid(z)
            i, f, o = sig[:, :H], sig[:, H : 2 * H], sig[:, 3 * H :]
            g = jnp.tanh(z[:, 2 * H : 3 * H])
            c = f * c + i * g
            h = o * jnp.tanh(c)
            return (h, c), (h, c, jnp.concatenate([i, f, g, o], axis=-1))

        h0 = _zeros_state(xp, params, hidden)
        _, (hs, cs, gates) = jax.lax.scan(step, (h0, h0), xp)
        return _batch_major(hs), state, (x, hs, cs, gates)

    def backward(params, cache, dy):
        x, hs, cs, gates = cache
        i, f, g, o = (gates[..., k * H : (k + 1) * H] for k in range(4))
        tc = jnp.tanh(cs)
        dc_from_dh = o * (1 - tc**2)
        # dz = [dc, dc, dc, dh] * gain, the local derivatives of each gate.
        gain = jnp.concatenate(
            [
                g * i * (1 - i),
                _shift(cs) * f * (1 - f),
                i * (1 - g**2),
                tc * o * (1 - o),
            ],
            axis=-1,
        )
        w_h_t = params["w_h"].T

        def step(carry, inputs):
            dh_next, dc_next = carry
            dy_t, dc_from_dh_t, gain_t, f_t = inputs
            dh = dy_t + dh_next
            dc = dc_next + dh * dc_from_dh_t
            dz = jnp.concatenate([dc, dc, dc, dh], axis=-1) * gain_t
            return (dz @ w_h_t, dc * f_t), dz

        zero = _zeros_step(hs)
        _, dz = jax.lax.scan(
            step,
            (zero, zero),
            (_batch_major(dy), dc_from_dh, gain, f),
            reverse=True,
        )
        return _reduce(params, x, _shift(hs), dz, dz)

    return Layer(init, forward, backward, name)


# --------------------------------------------------------------------------
# GRU


def GRU(hidden: int) -> Layer:
    """A gated recurrent unit in the PyTorch / cuDNN formulation; ``h_{-1} = 0``.

    Per example: ``(T, d) -> (T, hidden)``, every ``h_t``.

    Parameters: ``{"w_x": (d, 3 hidden), "w_h": (hidden, 3 hidden),
    "b": (3 hidden,), "b_hn": (hidden,)}``, gates side by side in the order
    ``r, z, n`` (reset, update, candidate). With ``a_t = x_t w_x + b`` and
    ``u_t = h_{t-1} w_h``, each split into ``r, z, n`` parts::

        r = sigmoid(a_r + u_r)        z = sigmoid(a_z + u_z)
        n = tanh(a_n + r * (u_n + b_hn))
        h_t = (1 - z) * n + z * h_{t-1}

    The reset gate multiplies ``h_{t-1} w_hn + b_hn`` *after* the matmul (as
    in PyTorch, cuDNN and Keras' ``reset_after=True``), not ``h_{t-1}``
    before it as in Cho et al. (2014); so one ``h_{t-1} @ w_h`` per step
    serves all three gates. ``b_hn`` is the one hidden-side bias that does
    not merge into ``b``. All biases start at 0.

    Backward (``m = u_n + b_hn``, ``dh_T = 0``)::

        dh   = dy_t + dh_{t+1}
        da_n = dh * (1 - z) * (1 - n**2)     du_n = da_n * r
        da_z = dh * (h_{t-1} - n) * z (1 - z)
        da_r = da_n * m * r (1 - r)          (du_r = da_r, du_z = da_z)
        dh_t = dh * z + du_t w_h^T
        db_hn = sum du_n

    Every ``da``/``du`` is ``dh`` times a factor known from the forward pass,
    so the reverse scan carries and emits only ``dh``; the factors and the
    reductions (``w_x``, ``b`` from ``da``; ``w_h`` from ``du``) are
    computed for all steps outside it.

    Args:
      hidden: the size of ``h_t``, a positive int; the gates take ``3 hidden``
        columns of ``w_x`` and ``w_h``.

    Returns:
      The GRU layer, mapping a batch ``(N, T, d)`` to ``(N, T, hidden)``.

    Raises:
      ValueError: unless ``hidden`` is a positive int, as ``GRU(64)``.
      ShapeError: for a per-example input shape that is not ``(T, d)`` (at
        ``init``), or, at trace time, an input or parameters that do not fit.
    """
    hidden = check_positive_int("GRU", "hidden", hidden)
    name = f"GRU({hidden})"
    H = hidden

    def init(key, input_shape):
        out_shape, params = _init_params(name, key, input_shape, hidden, 3)
        params["b_hn"] = jnp.zeros((hidden,), jnp.float32)
        return out_shape, params, ()

    def forward(params, state, x, *, key=None, train=False):
        _check_call(name, params, x, hidden, 3, {"b_hn": (hidden,)})
        xp = _input_projection(params, x)
        w_h = params["w_h"]
        b_hn = per_channel(params["b_hn"], 2)

        def step(h, a):
            u = h @ w_h
            rz = jax.nn.sigmoid(a[:, : 2 * H] + u[:, : 2 * H])
            r, z = rz[:, :H], rz[:, H:]
            m = u[:, 2 * H :] + b_hn
            n = jnp.tanh(a[:, 2 * H :] + r * m)
            h_new = (1 - z) * n + z * h
            return h_new, (h_new, jnp.concatenate([r, z, n, m], axis=-1))

        _, (hs, gates) = jax.lax.scan(step, _zeros_state(xp, params, hidden), xp)
        return _batch_major(hs), state, (x, hs, gates)

    def backward(params, cache, dy):
        x, hs, gates = cache
        r, z, n, m = (gates[..., k * H : (k + 1) * H] for k in range(4))
        h_prev = _shift(hs)
        gain_n = (1 - z) * (1 - n**2)
        # du = dh * gain_u, in the order r, z, n.
        gain_u = jnp.concatenate(
            [gain_n * m * r * (1 - r), (h_prev - n) * z * (1 - z), gain_n * r],
            axis=-1,
        )
        w_h_t = params["w_h"].T

        def step(dh_next, inputs):
            dy_t, z_t, gain_u_t = inputs
            dh = dy_t + dh_next
            du = jnp.concatenate([dh, dh, dh], axis=-1) * gain_u_t
            return dh * z_t + du @ w_h_t, dh

        _, dh = jax.lax.scan(
            step, _zeros_step(hs), (_batch_major(dy), z, gain_u), reverse=True
        )
        dh3 = jnp.concatenate([dh, dh, dh], axis=-1)
        du = dh3 * gain_u
        da = jnp.concatenate([du[..., : 2 * H], dh * gain_n], axis=-1)
        dparams, dx = _reduce(params, x, h_prev, da, du)
        dparams["b_hn"] = jnp.sum(du[..., 2 * H :], axis=(0, 1))
        return dparams, dx

    return Layer(init, forward, backward, name)
