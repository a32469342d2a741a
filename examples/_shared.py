"""Plumbing shared by the examples: matplotlib, saving a figure, loading images.

Nothing here is about neural networks; the models, their training and what
each example shows stay in the example. Run as ``python examples/NAME.py``,
an example finds this module because its own folder is on ``sys.path``.
"""

from __future__ import annotations

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
            print(f"MNIST is not available ({str(e).splitlines()[0]})")
            print("falling back to the bundled 8x8 digits (--dataset digits)")
            dataset = "digits"
    return dataset, data.digits()


def plot_curves(history, path, title, marker=None):
    """Training and test loss (log scale) beside test accuracy, per epoch.

    ``history`` is `fnn.train.fit`'s, run with ``validation_data``.
    """
    plt = pyplot()
    if plt is None:
        return
    epochs = range(1, len(history["train_loss"]) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, history["train_loss"], marker=marker, label="train")
    ax1.plot(epochs, history["val_loss"], marker=marker, label="test")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    ax1.legend()
    ax2.plot(epochs, history["val_accuracy"], marker=marker)
    ax2.set(xlabel="epoch", ylabel="accuracy", title="test accuracy")
    finish(fig, path, title)
