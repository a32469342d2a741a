"""Every example runs with ``--quick`` and says what it claims; ``import fnn``
exposes every module.

The architecture examples (CNN, RNN, transformer, GAN...) are in
``test_examples_arch.py``. Each quick run takes seconds; all are marked
``slow``.
"""

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fnn
from fnn import data, train

from terminal import run_in_a_terminal, screen

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "examples"


def main_of(name):
    return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="example")["main"]


def quick(name, *args):
    """Runs ``examples/<name>.py --quick *args`` in-process; its return value."""
    result = main_of(name)(["--quick", *args])
    assert result["check_ok"], f"{name}: backprop.check failed"
    return result


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples write their PNGs to the cwd


def wrote(path, at_least=1000):
    return Path(path).stat().st_size > at_least


# ---------------------------------------------------------------- the package


def test_import_fnn_exposes_every_public_module():
    assert callable(fnn.train.fit) and callable(fnn.checkpoint.save)
    assert callable(fnn.augment.random_shift) and callable(fnn.parallel.make_step)
    modules = sorted(
        p.stem for p in (ROOT / "fnn").glob("*.py") if not p.stem.startswith("_")
    )
    missing = [m for m in modules if not hasattr(fnn, m)]
    assert not missing, f"fnn/__init__.py does not import {missing}"
    assert set(modules) <= set(fnn.__all__)


def test_version_matches_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"', text, re.M).group(1)
    assert fnn.__version__ == declared


def test_every_example_takes_quick_and_checks_its_gradients():
    tested = (
        Path(__file__).read_text() + (ROOT / "tests/test_examples_arch.py").read_text()
    )
    for path in sorted(EXAMPLES.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        source = path.read_text()
        assert '"--quick"' in source, f"{path.name} takes no --quick"
        assert "backprop.check" in source, f"{path.name} checks no gradients"
        assert re.search(rf'"{path.stem}(\.py)?"', tested), f"{path.name} has no test"


# ---------------------------------------------------------------- examples


@pytest.mark.slow
def test_xor_perceptron_ties_and_hidden_space(capsys):
    r = quick("xor", "--plot", "xor.png")
    out = capsys.readouterr().out
    assert r["perceptron"]["AND"]["learned"] and r["perceptron"]["OR"]["learned"]
    assert not r["perceptron"]["XOR"]["learned"]
    assert min(r["perceptron"]["XOR"]["errors"]) >= 1  # never all four right
    hand_set = out.split("2. Hand-set")[1].split("3.")[0]
    for row in ("0   0 | 0.000", "0   1 | 1.000", "1   0 | 1.000", "1   1 | 0.000"):
        assert row in hand_set
    # The linear neuron outputs 0.5 everywhere: ties, not "25% accuracy".
    assert r["neuron"] == {
        "correct": 0,
        "ties": 4,
        "mse": pytest.approx(0.25, abs=1e-3),
    }
    assert "0 of 4 decided correctly, 4 of 4 ties" in out
    assert not narrow(out)
    assert r["network"]["learned"] >= 1 and r["network"]["correct"] == 4
    np.testing.assert_allclose(r["network"]["prob"].ravel(), [0, 1, 1, 0], atol=0.05)
    assert wrote("xor.png")


@pytest.mark.slow
def test_learning_rates_tell_their_story():
    curves = quick("learning_rates", "--plot", "lr.png")["curves"]
    small, good, large = curves["too small"], curves["good"], curves["too large"]
    assert len(good) == 4
    assert good[-1] < 0.7 * good[0]  # converging
    assert small[-1] > 0.97 * small[0]  # crawling
    assert large[-1] > 10 * good[0] or len(large) < 4  # diverged (or stopped on inf)
    assert wrote("lr.png")


@pytest.mark.slow
def test_activations_plot_and_derivatives():
    r = quick("activations", "--plot", "act.png")
    assert r["worst"] < 1e-5
    assert wrote("act.png")


@pytest.mark.slow
def test_per_example_gradients_average_to_the_batch_gradient_and_train():
    r = quick("per_example_grads")
    assert r["mean_gap"] < 1e-5
    assert r["dp_accuracy"] > 0.5 and r["plain_accuracy"] > 0.8


@pytest.mark.slow
def test_data_parallel_example_makes_its_own_devices():
    # As the README runs it: no XLA_FLAGS. The old script saw one device and
    # compared it with itself.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "data_parallel.py"), "--quick"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "2 devices:" in out.stdout and "all leaves agree" in out.stdout
    gap = float(out.stdout.rsplit(":", 1)[1])
    assert gap < 1e-4


@pytest.mark.slow
def test_main_job_holds_out_validation_and_tests_once(monkeypatch, capsys):
    (x_train, _), (x_test, _) = data.digits()
    fits, evaluations = [], []
    real_fit, real_evaluate = train.fit, train.evaluate

    def spy_fit(*args, **kwargs):
        fits.append((args[5], kwargs["validation_data"]))
        return real_fit(*args, **kwargs)

    def spy_evaluate(model, loss, params, state, x, y, **kwargs):
        evaluations.append(len(x))
        return real_evaluate(model, loss, params, state, x, y, **kwargs)

    monkeypatch.setattr(train, "fit", spy_fit)
    monkeypatch.setattr(train, "evaluate", spy_evaluate)
    r = quick("mnist_mlp", "--method", "manual", "--plot", "c.png",
              "--features-plot", "f.png")  # fmt: skip
    (x_fit, _), (x_val, _) = fits[0]
    assert len(x_fit) + len(x_val) == len(x_train)
    assert abs(len(x_val) - 0.1 * len(x_train)) <= 1
    seen = {row.tobytes() for row in np.asarray(x_fit)}
    assert not any(row.tobytes() in seen for row in np.asarray(x_val))
    assert evaluations == [len(x_test)]  # the test set, once, at the end
    assert r["accuracy"] >= 0.9
    assert "val accuracy" in capsys.readouterr().out
    assert wrote("c.png") and wrote("f.png")


@pytest.mark.slow
def test_main_job_trains_in_float16_with_loss_scaling():
    r = quick("mnist_mlp", "--precision", "float16", "--plot", "c.png")
    assert r["accuracy"] >= 0.9


@pytest.mark.slow
def test_backprop_by_hand_agrees_three_ways(capsys):
    r = quick("backprop_by_hand")
    assert r["graph_gap"] == 0.0
    assert r["network_gap"] < 1e-6
    out = capsys.readouterr().out
    assert "q = x + y = 3, f = q z = -12" in out
    for line in ("df/dx          -4                   -4         -4",
                 "df/dz           3                    3          3"):  # fmt: skip
        assert line in out
    assert not narrow(out)


def narrow(out, columns=80):
    """Lines of ``out`` wider than ``columns``, but for backprop.check's table."""
    table = re.compile(r"^(\[|leaf )")
    return [s for s in out.splitlines() if len(s) > columns and not table.match(s)]


@pytest.mark.slow
def test_universal_approximation_improves_with_width(capsys):
    r = quick("universal_approximation", "--plot", "ua.png")
    errors = r["errors"]
    assert list(errors) == [1, 4, 16]
    assert errors[16]["rms"] < errors[4]["rms"] < 0.5 * errors[1]["rms"]
    assert "it fell at every widening" in capsys.readouterr().out
    assert wrote("ua.png")


def test_universal_approximation_verdict_is_computed_from_the_errors():
    path = str(EXAMPLES / "universal_approximation.py")
    verdict = runpy.run_path(path, run_name="example")["width_verdict"]
    rms = {1: 0.5, 2: 0.3, 4: 0.4, 8: 0.1}
    said = verdict({w: {"rms": e} for w, e in rms.items()})
    assert said.endswith("it did not fall from width 2 to 4"), said
    assert "0.5 at width 1, 0.1 at width 8" in said
    falling = verdict({1: {"rms": 0.5}, 2: {"rms": 0.3}})
    assert falling.endswith("it fell at every widening")


@pytest.mark.slow
def test_exploding_gradients_stop_fit_and_clipping_tames_them():
    r = quick("exploding_gradients", "--plot", "eg.png")
    assert "non-finite loss" in r["plain"]["stopped"]
    assert r["clipped"]["stopped"] is None and r["clipped"]["epochs_done"] == 2
    first = r["clipped"]["first_losses"]
    assert first[-1] < 0.5 * first[0]  # clipped steps bring the loss down
    assert wrote("eg.png")


def test_main_job_reads_cleanly_in_an_80_column_terminal(tmp_path):
    # What a user sees: the bar redraws on stderr, the epoch lines go to
    # stdout (verbose), both on one 80-column terminal.
    argv = [sys.executable, str(EXAMPLES / "mnist_mlp.py"), "--quick",
            "--plot", "c.png", "--features-plot", "f.png"]  # fmt: skip
    raw = run_in_a_terminal(argv, 80, cwd=tmp_path)
    lines, _ = screen(raw)
    # Only what is redrawn in place must fit (a wider plain line just wraps;
    # a wider redraw stacks up): the parts of lines that hold a redraw.
    redrawn = [p for line in raw.split("\n") if "\r" in line for p in line.split("\r")]
    assert redrawn, "no progress bar was drawn"
    assert max(map(len, redrawn)) <= 80, max(redrawn, key=len)
    epochs = [int(m[1]) for s in lines if (m := re.match(r"epoch +(\d+)  train", s))]
    assert epochs and epochs == sorted(set(epochs)), lines  # each epoch once
    assert "compiling" in raw
    assert any(s.startswith("test accuracy") for s in lines), lines
