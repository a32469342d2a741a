"""The examples run, and say what they claim (short runs)."""

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


def example(name):
    return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="example")


def test_xor_truth_tables_and_gradient_check(capsys):
    assert example("xor")["main"](steps=1500)
    out = capsys.readouterr().out
    hand_set = out.split("1. Hand-set")[1].split("2.")[0]
    for row in ("0   0 | 0.000", "0   1 | 1.000", "1   0 | 1.000", "1   1 | 0.000"):
        assert row in hand_set
    assert "it cannot learn XOR" in out and "0.500" in out.split("2. A single")[1]
    learned = out.split("Learned by gradient descent")[1]
    assert [line.split("|")[1].strip() for line in learned.splitlines()[2:6]] == [
        "0.000",
        "1.000",
        "1.000",
        "0.000",
    ] or all(
        (float(line.split("|")[1]) > 0.5) == (a != b)
        for line in learned.splitlines()[2:6]
        for a, b in [line.split("|")[0].split()]
    )
    assert "all leaves agree" in out


def test_main_job_on_digits_reaches_96_percent(tmp_path):
    final = example("mnist_mlp")["main"](
        ["--epochs", "10", "--method", "manual", "--plot", str(tmp_path / "curves.png")]
    )
    assert final["accuracy"] >= 0.96
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_main_job_trains_in_float16_with_loss_scaling(tmp_path):
    argv = ["--epochs", "6", "--precision", "float16", "--method", "manual"]
    final = example("mnist_mlp")["main"](argv + ["--plot", str(tmp_path / "c.png")])
    assert final["accuracy"] >= 0.95


def test_learning_rates_tell_their_story(tmp_path):
    curves = example("learning_rates")["main"](
        epochs=4, plot_path=str(tmp_path / "lr.png")
    )
    small, good, large = curves["too small"], curves["good"], curves["too large"]
    assert good[-1] < 0.7 * good[0]  # converging
    assert small[-1] > 0.97 * small[0]  # crawling
    assert large[-1] > 10 * good[0] or len(large) < 4  # diverged (or stopped on inf)


def test_activations_plot_and_derivatives(tmp_path):
    worst = example("activations")["main"](plot_path=str(tmp_path / "act.png"))
    assert worst < 1e-5
    assert (tmp_path / "act.png").exists()


def test_per_example_clipping_trains():
    dp, plain = example("per_example_grads")["main"](epochs=2)
    assert dp > 0.5 and plain > 0.5


def test_data_parallel_example_matches_one_device():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "PYTHONPATH": str(EXAMPLES.parent),
    }
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "data_parallel.py"), "--steps", "20"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "4 devices" in out.stdout
    gap = float(out.stdout.rsplit(":", 1)[1])
    assert gap < 1e-4


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples write their PNGs to the cwd
