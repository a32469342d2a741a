"""Training data as a stream of ``(x, y)`` batches, for data that does not fit.

``fit(model, ..., train_data=stream)`` takes, instead of arrays:

- a function ``epoch -> iterable of (x, y)``: called once per epoch, so a
  deterministic function keeps resuming exact;
- any other iterable of ``(x, y)`` batches (a list, ``data.batches``, a
  PyTorch ``DataLoader`` yielding NumPy arrays): iterated afresh each epoch.
  A generator serves a single epoch.

The steps run in one of the two forms of an in-memory epoch
(``fnn._epoch``), as ``fit``'s ``scan`` says:

- scanned (the default where arrays scan): consecutive batches of one shape
  are stacked on the host into chunks of up to ``PART`` steps (fewer for
  batches so large that a chunk would pass ``CHUNK_BYTES``), and each
  chunk runs as one compiled loop, like a part of an in-memory epoch. A
  chunk is put on the device one chunk ahead, and the next chunk is
  dispatched before the losses of the one before are read, so the device
  never waits for the host between chunks;
- looped (``scan=False``): each step is one jitted call whose parameters
  are donated, as in :func:`fnn.train.make_step`, its batch put on the
  device two steps ahead (``jax.device_put`` returns at once and the copy
  overlaps the running step, the pattern of flax's ``prefetch_to_device``).

Step ``i`` of epoch ``e`` draws its key as arrays do
(``fnn._epoch.step_key``), so a stream of the same batches in the same
order trains exactly as arrays do in the same form.

Every ``PART`` steps at most the losses come back to the host (one sync,
nothing per step); the last two parts' batches are held so a non-finite
loss can be rolled back exactly like an in-memory epoch.
"""

from __future__ import annotations

import collections
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn._epoch import _AUGMENT, Segment, copy, step_key

PART = 16  # steps per chunk, and between syncs: the display's parts, at most
CHUNK_BYTES = 64 << 20  # a chunk of large batches holds fewer steps


def chunk_steps(x, y) -> int:
    """Steps per chunk for batches shaped like ``(x, y)``: ``PART``, or fewer
    so that a chunk's inputs stay within ``CHUNK_BYTES`` (at least one)."""
    size = x.size * x.dtype.itemsize + np.size(y) * np.asarray(y).dtype.itemsize
    return max(1, min(PART, CHUNK_BYTES // max(1, size)))


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
        return tuple(carry), value.astype(jnp.result_type(float))  # as a chunk's

    return jax.jit(one, donate_argnums=0)


def _chunk_run(step, augment):
    """``run(carry, xs, ys, key, epoch, start, count) -> (carry, losses)``:
    steps ``start .. start + count - 1`` of epoch ``epoch`` on ``xs[i],
    ys[i]``, one compiled loop (``count`` traced, so one program serves
    every chunk of a shape). Nothing is donated: ``carry`` stays valid to
    roll back to."""

    @jax.jit
    def run(carry, xs, ys, key, epoch, start, count):
        def body(i, loop):
            carry, values = loop
            step_key_ = step_key(key, epoch, start + i)
            xb = xs[i]
            if augment is not None:
                xb = augment(jax.random.fold_in(step_key_, _AUGMENT), xb)
            *carry, value = step(*carry, xb, ys[i], step_key_)
            return tuple(carry), values.at[i].set(value.astype(values.dtype))

        values = jnp.zeros(xs.shape[0], jnp.result_type(float))
        return jax.lax.fori_loop(0, count, body, (carry, values))

    return run


def _stack(arrays, size: int):
    """``arrays`` (of one shape) stacked on a new first axis, zero-padded to
    ``size`` entries so that every chunk of a shape compiles once."""
    first = arrays[0]
    if isinstance(first, jax.Array):  # already on a device: stay there
        pad = jnp.zeros((size - len(arrays), *first.shape), first.dtype)
        return jnp.concatenate([jnp.stack(arrays), pad])
    out = np.empty((size, *first.shape), first.dtype)
    for i, a in enumerate(arrays):
        out[i] = a
    out[len(arrays) :] = 0
    return out


class _Chunk(NamedTuple):
    """A chunk dispatched, its losses not read yet."""

    anchor: tuple  # the carry before its first step
    start: int  # the steps of the epoch before it
    count: int
    values: jax.Array  # its losses, zero-padded to the chunk's size
    rerun: object  # (carry, count) -> carry


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
      scan: run chunks of steps as compiled loops (else one call per step).

    Attributes:
      probe: the batch ``fit(..., diagnostics=True)`` looks at: the first
        one streamed (``None`` before).
    """

    def __init__(self, source, key, step, augment, check, scan=True):
        self.source, self.key, self.check, self.scan = source, key, check, scan
        self.one = _one_step(step, augment)
        self.chunk = _chunk_run(step, augment)
        sized = not callable(source) and hasattr(source, "__len__")
        self.num_steps = len(source) if sized else None
        self.segments: list[Segment] = []
        self.probe = None
        self.sizes: list[int] = []  # the batch sizes of the epoch running

    def _batches(self, epoch):
        batches = self.source(epoch) if callable(self.source) else self.source
        for x, y in _pairs(batches, epoch):
            y = self.check(x, y)
            x = x if isinstance(x, jax.Array) else np.asarray(x)
            if self.probe is None:
                self.probe = (x, y)
            self.sizes.append(len(x))
            yield x, y

    def mean_loss(self, losses: np.ndarray) -> float:
        """An epoch's training loss: the mean over its examples, each step's
        loss (a mean over its batch) weighted by its batch size."""
        sizes = np.asarray(self.sizes[: len(losses)])
        if np.all(sizes == sizes[0]):  # as arrays do, to the bit
            return float(losses.mean())
        return float(np.average(losses.astype(np.float64), weights=sizes))

    def run_epoch(self, carry, epoch, display):
        """``(carry, losses)`` after one pass over the epoch's batches."""
        run = self._run_chunks if self.scan else self._run_steps
        self.sizes = []
        carry, parts = run(carry, epoch, display)
        if not parts:
            raise ValueError(
                f"fit: train_data yielded no batches in epoch {epoch}. A generator "
                f"serves one pass; for several epochs pass a function epoch -> "
                f"iterable of (x, y) batches, or a list or loader that can be "
                f"iterated again"
            )
        return carry, np.concatenate(parts)

    # The scanned form: chunks of steps, each one compiled loop.

    def _chunks(self, epoch, display):
        """Host chunks ``(xs, ys, count)``: up to ``PART`` consecutive batches
        of one shape (and no more than the display's part), stacked."""
        group, kind, size = [], None, PART
        for x, y in self._batches(epoch):
            y = y if isinstance(y, jax.Array) else np.asarray(y)
            this = (x.shape, x.dtype, y.shape, y.dtype)
            if group and this != kind:
                yield self._stacked(group, size)
                group = []
            if not group:
                kind, size = this, chunk_steps(x, y)
            group.append((x, y))
            if len(group) >= min(size, display.part()):
                yield self._stacked(group, size)
                group = []
        if group:
            yield self._stacked(group, size)

    @staticmethod
    def _stacked(group, size):
        xs = _stack([x for x, _ in group], size)
        ys = _stack([y for _, y in group], size)
        return xs, ys, np.int32(len(group))

    def _run_chunks(self, carry, epoch, display):
        parts, done, pending = [], 0, None
        for host, (xs, ys, steps) in prefetch(self._chunks(epoch, display), size=1):
            anchor, start, n = carry, done, int(host[2])
            carry, values = self.chunk(carry, xs, ys, self.key, epoch,
                                       np.int32(start), steps)  # fmt: skip

            def rerun(carry, count, xs=xs, ys=ys, start=start):
                args = (self.key, epoch, np.int32(start), np.int32(count))
                return self.chunk(carry, xs, ys, *args)[0]

            done += n
            # The next chunk is on its way before this reads the last one's
            # losses, so the device does not wait for the host in between.
            if pending is not None and not self._finish(pending, epoch, display,
                                                        parts):  # fmt: skip
                return carry, parts
            pending = _Chunk(anchor, start, n, values, rerun)
        if pending is not None:
            self._finish(pending, epoch, display, parts)
        return carry, parts

    def _finish(self, chunk: _Chunk, epoch, display, parts) -> bool:
        """Reads a chunk's losses and records it; whether they are finite."""
        losses = np.asarray(chunk.values)[: chunk.count]
        segment = Segment(chunk.anchor, epoch, chunk.start, losses, chunk.rerun)
        self.segments = [*self.segments[-1:], segment]
        parts.append(losses)
        display.advance(chunk.start + chunk.count, float(losses[-1]))
        return bool(np.all(np.isfinite(losses)))

    # The looped form: one jitted call per step.

    def _rerun(self, kept, epoch, start):
        def rerun(carry, count):
            carry = copy(carry)
            for j, batch in enumerate(kept[:count]):
                xb, yb = jax.device_put(batch)
                carry, _ = self.one(carry, xb, yb, self.key, epoch, np.int32(start + j))
            return carry

        return rerun

    def _run_steps(self, carry, epoch, display):
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
                return carry, parts
            losses = np.asarray(jnp.stack(values))
            rerun = self._rerun(kept, epoch, start)
            segment = Segment(anchor, epoch, start, losses, rerun)
            self.segments = [*self.segments[-1:], segment]
            parts.append(losses)
            display.advance(done, float(losses[-1]))
            if not np.all(np.isfinite(losses)):
                return carry, parts
