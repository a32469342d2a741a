"""Training data as a stream of ``(x, y)`` batches, for data that does not fit.

``fit(model, ..., train_data=stream)`` takes, instead of arrays:

- a function ``epoch -> iterable of (x, y)``: called once per epoch (and
  again to replay a part of it after a non-finite loss), so a deterministic
  function keeps resuming exact;
- any other iterable of ``(x, y)`` batches (a list, ``data.batches``, a
  PyTorch ``DataLoader`` yielding NumPy arrays): iterated afresh each epoch.
  A generator serves a single epoch.

Each step is one jitted call whose parameters are donated, as in
:func:`fnn.train.make_step`. The batches are put on the device two steps
ahead (``jax.device_put`` returns at once and the copy overlaps the running
step, the pattern of flax's ``prefetch_to_device``). Step ``i`` of epoch
``e`` draws its key as arrays do (``fnn._epoch.step_key``), so a stream
of the same batches in the same order trains exactly as arrays do with
``scan=False``.

Every ``PART`` steps the losses come back to the host (one sync, nothing
per step); the last two parts' batches are held, on the host, so a
non-finite loss can be rolled back exactly like an in-memory epoch.
"""

from __future__ import annotations

import collections
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from fnn._epoch import _AUGMENT, Segment, copy, step_key

PART = 16  # steps between syncs: the display's parts, at most this many


def prefetch(batches, size: int = 2):
    """Yields ``(host_batch, device_batch)``, transferring ``size`` ahead."""
    queue = collections.deque()
    for batch in batches:
        queue.append((batch, jax.device_put(batch)))
        if len(queue) > size:
            yield queue.popleft()
    yield from queue


def _one_step(step, augment):
    def one(carry, xb, yb, key, epoch, i):
        key = step_key(key, epoch, i)
        if augment is not None:
            xb = augment(jax.random.fold_in(key, _AUGMENT), xb)
        *carry, value = step(*carry, xb, yb, key)
        return tuple(carry), value

    return jax.jit(one, donate_argnums=0)


def _pairs(batches, epoch):
    for n, batch in enumerate(batches):
        if not isinstance(batch, tuple | list) or len(batch) != 2:
            raise TypeError(
                f"fit: train_data must yield (x, y) pairs; batch {n} of epoch "
                f"{epoch} is a {type(batch).__name__}"
            )
        yield tuple(batch)


class Stream:
    """Training data as batches from an iterable, or a function of the epoch.

    Args:
      source: ``epoch -> iterable of (x, y)``, or an iterable of ``(x, y)``.
      key: the fit's PRNG key.
      step: the pure training step.
      augment: ``aug(key, xb)`` for training batches, or ``None``.
      check: ``(x, y) -> y``, the host-side checks of a batch's targets.
    """

    def __init__(self, source, key, step, augment, check):
        self.source, self.key, self.check = source, key, check
        self.one = _one_step(step, augment)
        sized = not callable(source) and hasattr(source, "__len__")
        self.num_steps = len(source) if sized else None
        self.segments: list[Segment] = []

    def _batches(self, epoch):
        batches = self.source(epoch) if callable(self.source) else self.source
        for x, y in _pairs(batches, epoch):
            yield x, self.check(x, y)

    def _rerun(self, kept, epoch, start):
        def rerun(carry, count):
            carry = copy(carry)
            for j, batch in enumerate(kept[:count]):
                xb, yb = jax.device_put(batch)
                carry, _ = self.one(carry, xb, yb, self.key, epoch, np.int32(start + j))
            return carry

        return rerun

    def run_epoch(self, carry, epoch, display):
        """``(carry, losses)`` after one pass over the epoch's batches."""
        batches, done, parts = prefetch(self._batches(epoch)), 0, []
        while True:
            anchor, start, kept, values = carry, done, [], []
            for host, (xb, yb) in itertools.islice(batches, min(PART, display.part())):
                if not values:
                    carry = copy(carry)  # the anchor stays valid for a rollback
                carry, value = self.one(carry, xb, yb, self.key, epoch, np.int32(done))
                kept.append(host)
                values.append(value)
                done += 1
            if not values:
                break
            losses = np.asarray(jnp.stack(values))
            rerun = self._rerun(kept, epoch, start)
            segment = Segment(anchor, epoch, start, losses, rerun)
            self.segments = [*self.segments[-1:], segment]
            parts.append(losses)
            display.advance(done, float(losses[-1]))
            if not np.all(np.isfinite(losses)):
                break
        if not parts:
            raise ValueError(
                f"fit: train_data yielded no batches in epoch {epoch}. A generator "
                f"serves one pass; for several epochs pass a function epoch -> "
                f"iterable of (x, y) batches, or a list or loader that can be "
                f"iterated again"
            )
        return carry, np.concatenate(parts)
