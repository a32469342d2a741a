"""Constructor options: validated when a layer is built, and its name.

A layer's options are checked by its constructor, before any array exists
(haiku and equinox do the same): a wrong option fails at the line that
wrote it. NumPy scalars are accepted wherever a Python number is
(``Dense(np.int64(10))``, ``Dropout(np.float32(0.5))``) and converted to
Python numbers, so that names and closures hold plain values; ``bool`` is
refused where a number is meant.

The one flag checked when a layer is called, ``train``, is here too
(:func:`check_train`): it picks between two programs, so it must be a bool
known when the program is traced.
"""

from __future__ import annotations

import math
import numbers

import jax
import numpy as np


def check_positive_int(name: str, what: str, value) -> int:
    """Validates a constructor option that must be a positive int.

    Accepts any integral number but ``bool`` (``np.int64(10)`` too).

    Returns:
      ``value`` as a Python ``int``.

    Raises:
      ValueError: for anything else, naming the layer and the value.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name}: {what} must be a positive int, got {value!r}")
    return int(value)


def check_bool(name: str, what: str, value) -> bool:
    """Validates a constructor switch such as ``use_bias``.

    Accepts ``True``, ``False``, NumPy bools and the ints 0 and 1: ``None``,
    ``"no"`` or ``2`` would pass a truth test silently, meaning something
    the caller did not write.

    Returns:
      ``value`` as a Python ``bool``.

    Raises:
      TypeError: for anything else, naming the layer and the value.
    """
    ok = isinstance(value, bool | np.bool_) or (
        isinstance(value, numbers.Integral) and value in (0, 1)
    )
    if not ok:
        raise TypeError(f"{name}: {what} must be True or False, got {value!r}")
    return bool(value)


def check_real(
    name: str, what: str, value, *, low=None, high=None, high_open=False, low_open=False
) -> float:
    """Validates a real-valued constructor option (``np.float32`` too).

    Args:
      name, what: the layer and the option, for the message.
      value: the option; a real number, not ``bool``, finite.
      low, high: inclusive bounds, or exclusive with ``low_open`` /
        ``high_open``; ``None`` for no bound.

    Returns:
      ``value`` as a Python ``float``; a NumPy float by the decimal it
      prints as (``np.float32(0.1)`` gives ``0.1``, not
      ``0.10000000149011612``), the number its user wrote.

    Raises:
      ValueError: naming the layer, the option, the bounds and the value.
    """
    if isinstance(value, np.floating):
        value = float(str(value))
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = ""
        if low is not None and high is not None:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            bounds = f" in {left}{low}, {high}{right}"
        elif low is not None:
            bounds = f" {'>' if low_open else '>='} {low}"
        raise ValueError(
            f"{name}: {what} must be a finite number{bounds}, got {value!r}"
        )
    return float(value)


def layer_name(head: str, args=(), options=()) -> str:
    """The name of a layer: the call that builds it.

    Args:
      head: the constructor's name, e.g. ``"Dense"``.
      args: required options, shown by position with ``repr``.
      options: ``(key, value, default)`` triples, shown as ``key=value``
        only where ``value != default``. A plain function shows by its
        qualified name (``variance_scaling.<locals>.init``), never by an
        address that changes from run to run.

    Returns:
      e.g. ``"Dense(256, use_bias=False)"``.

    Example:
      >>> layer_name("Dense", (256,), [("use_bias", False, True)])
      'Dense(256, use_bias=False)'
    """
    shown = [_show(a) for a in args]
    shown += [f"{k}={_show(v)}" for k, v, default in options if v != default]
    return f"{head}({', '.join(shown)})"


def _show(value) -> str:
    text = repr(value)
    if text.startswith("<") and hasattr(value, "__qualname__"):
        return value.__qualname__
    return text


def check_train(name: str, train) -> bool:
    """Validates the ``train`` flag of a layer whose behaviour it switches.

    Args:
      name: the layer, for the message.
      train: ``True`` or ``False`` (NumPy bools and concrete bool arrays too).

    Returns:
      ``train`` as a Python ``bool``.

    Raises:
      TypeError: for a traced value (``train`` passed through ``jax.jit`` as
        an argument: the choice between two programs cannot wait for run
        time), or anything but a bool (``"eval"`` would have meant training).
    """
    if isinstance(train, jax.core.Tracer):
        raise TypeError(
            f"{name}: train must be a Python bool, known when the program is "
            "traced, got a traced value; under jax.jit mark it static, "
            "jax.jit(f, static_argnames='train'), or close over it"
        )
    if np.asarray(train).dtype != np.bool_ or np.ndim(train) != 0:
        raise TypeError(f"{name}: train must be True or False, got {train!r:.80}")
    return bool(train)
