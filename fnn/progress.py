"""What ``fit`` shows while it trains: a live bar on a terminal, lines elsewhere.

On a terminal (stderr is a tty) the bar redraws one line in place as the
epoch advances: the epoch, ``steps done/steps``, a bar, the rate, the time
left in the epoch and the last step's loss, cut to the terminal's width (read
at every redraw, so resizing works). Before the first steps it says
``compiling``: the first call of a program compiles it, which can take
longer than an epoch. At the end of each epoch the bar is erased and the
epoch's summary is printed once, as a plain line: on stdout with
``verbose=True`` (whatever stderr is), else on stderr. Off a terminal (a
pipe, a log file, CI) there are no redraws at all, only that line per epoch.

Why not tqdm or rich: fnn depends on JAX, optax and NumPy only, and this
display needs what neither gives directly: a line per epoch and nothing
else when the output is not a terminal, the epoch summary printed exactly
once on the right stream when ``verbose`` is on too, and a "compiling" state.
It is ~150 lines.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

# How long one part of an epoch should take while a live bar shows: the bar
# then redraws a few times a second, and each part costs one host round trip
# (~0.1 ms) against ~0.25 s of compute.
PART_SECONDS = 0.25
BAR = 20  # the bar's width: room for it beside a full line on 80 columns
REDRAW = 0.1  # seconds between redraws, at most


def _columns(stream) -> int:
    """The terminal's width; some (a pty not sized yet, an IDE's console)
    report 0 columns, which would cut every line at ``[:-1]``, not to 0."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        columns = 0
    return columns if columns > 0 else shutil.get_terminal_size().columns


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _rate(steps_per_second: float) -> str:
    if steps_per_second >= 1000:
        return f"{steps_per_second / 1000:.1f}k steps/s"
    if steps_per_second >= 1:
        return f"{steps_per_second:.1f} steps/s"
    return f"{1 / steps_per_second:.2f} s/step"


def number(value: float) -> str:
    """A loss as the display shows it: 4 decimals, or 4 digits when large or tiny.

    Example:
      >>> number(0.25), number(3.9976e24), number(1.2e-7), number(float("inf"))
      ('0.2500', '3.998e+24', '1.2e-07', 'inf')
    """
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:.4f}"
    return f"{value:.4g}"


def bar_line(epoch, epochs, done, total, width, *, rate=None, loss=None) -> str:
    """One redraw of the live bar, at most ``width - 1`` characters.

    The last column is left free: writing it makes many terminals wrap.
    Fields are dropped from the right when the terminal is narrow: first the
    bar shrinks (to 10 characters), then it goes, then the text is cut.
    The bar is at most ``BAR`` characters wide, so it does not jump as
    the text beside it changes length.

    Args:
      epoch, epochs: the epoch running (from 1) and the last one.
      done, total: steps finished in this epoch, and its steps (``None``
        for a stream of unknown length: no bar, no ETA).
      width: the terminal's width in columns.
      rate: steps per second, once measured.
      loss: the last step's loss, once known.

    Returns:
      The line, without ``\\r``.
    """
    count = f"step {done}" if total is None else f"{done}/{total}"
    head = f"epoch {epoch}/{epochs} {count}"
    tail = ""
    # A sized stream may yield more batches than its len() said: the bar
    # stays full and the time left at 0, never a bar past its brackets or
    # a negative ETA.
    left = None if total is None else max(0, total - done)
    if rate:
        tail += f" {_rate(rate)}"
        if left is not None:
            tail += f" ETA {_clock(left / rate)}"
    if loss is not None:
        tail += f" loss {number(loss)}"
    room = min(BAR, width - 1 - len(head) - len(tail) - 3)  # brackets, a space
    if total and room >= 10:  # an empty list of batches has total 0
        fill = room * (total - left) // total
        head += " [" + "=" * fill + "." * (room - fill) + "]"
    return (head + tail)[: max(0, width - 1)]


class Progress:
    """The display of one ``fit``: live bar, per-epoch lines, or nothing.

    Args:
      epochs: the last epoch's number.
      num_steps: the steps of each epoch (``None``: unknown, a stream).
      show: ``True`` (a live bar on a terminal, else a line per epoch on
        stderr), ``False`` (nothing on stderr), ``None`` (a live bar on a
        terminal, else nothing).
      verbose: print each epoch's summary on stdout.
      out, err: the streams (default: ``sys.stdout``, ``sys.stderr`` when
        the display is made).
    """

    def __init__(self, epochs, num_steps, *, show=None, verbose=False,
                 out=None, err=None):  # fmt: skip
        self.out = sys.stdout if out is None else out
        self.err = sys.stderr if err is None else err
        self.epochs, self.num_steps, self.verbose = epochs, num_steps, verbose
        self.live = show is not False and _isatty(self.err)
        self.lines = bool(show) and not self.live
        self.drawn = 0  # characters of the bar now on screen
        self.rate = None  # steps per second, measured
        self.epoch, self.clock, self.compiling = 0, (0.0, 0), False
        self.last_draw = 0.0

    def part(self) -> int:
        """How many steps ``fit`` should run before the next redraw."""
        total = self.num_steps or 2**31 - 1
        if not self.live:
            return total
        if self.rate is None:
            return max(1, total // 10) if self.num_steps else 1
        return max(1, min(total, round(PART_SECONDS * self.rate)))

    def _draw(self, line: str) -> None:
        pad = " " * max(0, self.drawn - len(line))
        self.err.write("\r" + line + pad)
        self.err.flush()
        self.drawn = len(line)

    def _erase(self) -> None:
        if self.drawn:
            self.err.write("\r" + " " * self.drawn + "\r")
            self.err.flush()
            self.drawn = 0

    def start_epoch(self, epoch: int, *, compiling: bool = False) -> None:
        """Called before an epoch's first steps run."""
        self.epoch, self.compiling = epoch, compiling
        self.clock = (time.perf_counter(), 0)
        if self.live:
            width = _columns(self.err)
            if compiling:
                text = f"epoch {epoch}/{self.epochs} compiling..."
                self._draw(text[: width - 1])
            else:
                self._draw(bar_line(epoch, self.epochs, 0, self.num_steps, width))

    def advance(self, done: int, loss: float | None = None) -> None:
        """Called when ``done`` steps of the epoch have finished."""
        now = time.perf_counter()
        if self.compiling:  # the first part paid for compiling: time from here
            self.compiling, self.clock = False, (now, done)
        else:
            start, first = self.clock
            if now > start and done > first:
                self.rate = (done - first) / (now - start)
        if self.live and (now - self.last_draw > REDRAW or done == self.num_steps):
            self.last_draw = now
            width = _columns(self.err)
            self._draw(bar_line(self.epoch, self.epochs, done, self.num_steps,
                                width, rate=self.rate, loss=loss))  # fmt: skip

    def note(self, what: str) -> None:
        """Shows what runs now (e.g. ``"validating"``) after the step count."""
        if self.live:
            line = f"epoch {self.epoch}/{self.epochs} {what}..."
            self._draw(line[: _columns(self.err) - 1])

    def end_epoch(self, summary: str) -> None:
        """Replaces the bar by the epoch's summary line, printed once."""
        self._erase()
        self._say(summary)

    def _say(self, text: str) -> None:
        if self.verbose:
            print(text, file=self.out, flush=True)
        elif self.live or self.lines:
            print(text, file=self.err, flush=True)

    def finish(self, stopped: str | None) -> None:
        """Erases the bar; says why training stopped early, if it did."""
        self._erase()
        if stopped:
            self._say(stopped)


def summary(epoch: int, train_loss: float, metrics, loss_scale, seconds: float) -> str:
    """The line ``fit`` prints for an epoch.

    Args:
      epoch: its number.
      train_loss: the mean training loss.
      metrics: ``evaluate``'s dict on the validation data, or ``None``.
      loss_scale: ``(scale, skipped steps)`` under dynamic loss scaling, or
        ``None``.
      seconds: how long its steps took (in a fit's first epoch, compiling
        included).

    Example:
      >>> summary(3, 0.25, {"loss": 0.5, "accuracy": 0.875}, None, 1.5)
      'epoch   3  train loss 0.2500  val loss 0.5000  val accuracy 0.8750  (1.50 s)'
    """
    text = f"epoch {epoch:3d}  train loss {number(train_loss)}"
    if metrics is not None:
        text += f"  val loss {number(metrics['loss'])}"
        if "accuracy" in metrics:
            text += f"  val accuracy {metrics['accuracy']:.4f}"
    if loss_scale is not None:
        text += f"  loss scale {loss_scale[0]:g} ({loss_scale[1]} steps skipped in all)"
    return f"{text}  ({seconds:.2f} s)"
