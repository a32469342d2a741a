"""Plumbing shared by the examples: matplotlib, figures, loading images, and
the point at which a ReLU network's gradient is checked.

The models, their training and what each example shows stay in the
example. Run as ``python examples/NAME.py``, an example finds this module
because its own folder is on ``sys.path``.
"""

from __future__ import annotations

import jax
import numpy as np

from fnn import data


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend, or None if absent.

    When matplotlib is not installed it says how to install it, and the
    example goes on without its plot.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: pip install -e '.[examples]' for the plot")
        return None
    return plt


def finish(fig, path, title=None, dpi=100):
    """Titles ``fig`` (if ``title``), lays it out, writes it to ``path``, closes it."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    print(f"wrote {path}")


def load_images(dataset: str):
    """``(dataset name, splits)`` of ``fnn.data.mnist()`` or ``fnn.data.digits()``.

    MNIST falls back to the bundled 8x8 digits, saying why, when it can be
    neither read nor downloaded.
    """
    if dataset == "mnist":
        try:
            return "mnist", data.mnist()
        except (data.DownloadError, FileNotFoundError) as e:
            # The first line names the failure; the rest lists mirrors.
            print(f"MNIST is not available:\n  {str(e).splitlines()[0].rstrip(':')}")
            print("falling back to the bundled 8x8 digits (--dataset digits);")
            print("  set FNN_DATA_DIR to a folder holding the MNIST files to use them")
            dataset = "digits"
    return dataset, data.digits()


def plot_curves(history, path, title, marker=None):
    """Training and validation loss (log scale) beside validation accuracy.

    ``history`` is `fnn.train.fit`'s, run with ``validation_data`` (held out
    from the training data: the test set is for the final figure only).
    """
    plt = pyplot()
    if plt is None:
        return
    epochs = range(1, len(history["train_loss"]) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, history["train_loss"], marker=marker, label="train")
    ax1.plot(epochs, history["val_loss"], marker=marker, label="validation")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    ax1.legend()
    ax2.plot(epochs, history["val_accuracy"], marker=marker)
    ax2.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    finish(fig, path, title)


def plot_filters(weights, path, title, columns=16):
    """First-layer weights as pictures: one tile per unit or filter.

    Args:
      weights: ``(H, W, units)`` (a Dense kernel reshaped to the image) or
        ``(kh, kw, 1, filters)`` (a Conv kernel); each tile is scaled
        symmetrically about 0 (red positive, blue negative).
    """
    plt = pyplot()
    if plt is None:
        return
    w = np.asarray(weights, dtype=np.float32)
    w = w.reshape(w.shape[0], w.shape[1], -1)
    units = w.shape[-1]
    columns = min(columns, units)
    rows = -(-units // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(0.8 * columns, 0.8 * rows + 0.6))
    for i, ax in enumerate(np.atleast_1d(axes).flat):
        ax.set_axis_off()
        if i < units:
            tile = w[..., i]
            scale = float(np.abs(tile).max()) or 1.0
            ax.imshow(tile, cmap="RdBu_r", vmin=-scale, vmax=scale)
    finish(fig, path, title)


@jax.jit
def off_kinks(params, key):
    """``params`` plus N(0, 0.01^2) noise: a gradient-check point off ReLU's kink.

    At init every bias is 0, so on an image's blank background each conv
    output is exactly 0, on ReLU's kink, where a finite difference measures
    the slope of one side only (0 or 1) while both gradients take relu'(0) = 0.
    A small shift moves every unit to one side.
    """
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    noisy = [
        p + 0.01 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)
    ]
    return jax.tree.unflatten(treedef, noisy)
