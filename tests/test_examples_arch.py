"""The architecture examples' ``--quick`` runs: each checks its gradients
(manual against autodiff) and shows what it is about, in seconds."""

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


def run(name, tmp_path, *args):
    main = runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="example")["main"]
    plot = tmp_path / f"{name}.png"
    result = main(["--quick", "--plot", str(plot), *args])
    assert plot.stat().st_size > 1000, f"{name} wrote no plot"
    assert result_check_ok(result), f"{name}: backprop.check failed"
    return result


def result_check_ok(result):
    if "check_ok" in result:
        return result["check_ok"]
    return all(r["check_ok"] for r in result.values())  # one entry per model


@pytest.mark.slow
def test_mnist_cnn_with_and_without_augmentation(tmp_path, capsys):
    # MNIST when FNN_DATA_DIR has it (4096 images, 1 epoch), else digits.
    filters = tmp_path / "filters.png"
    result = run("mnist_cnn", tmp_path, "--augment", "--features-plot", str(filters))
    floor = 0.85 if result["dataset"] == "mnist" else 0.9
    assert result["test_accuracy"]["plain"] >= floor
    assert set(result["test_accuracy"]) == {"plain", "augmented"}
    out = capsys.readouterr().out
    assert "augmentation moved test accuracy from" in out
    assert "val accuracy" in out and filters.stat().st_size > 1000


@pytest.mark.slow
def test_vanishing_gradients(tmp_path):
    ratio = run("vanishing_gradients", tmp_path)["ratio"]
    assert ratio["sigmoid"] < 1e-6  # first layer's gradient vanishes
    assert 0.1 < ratio["relu"] < 10 and 0.1 < ratio["residual"] < 10


def test_vanishing_gradients_residual_layers_are_x_plus_sigmoid_of_dense():
    # The residual net once wrapped residual(Sigmoid, Dense): x + sigmoid(x) W + b,
    # not the x + sigmoid(x W + b) its docstring (and the sigmoid net) has.
    import jax
    import numpy as np

    from fnn import data

    networks = runpy.run_path(
        str(EXAMPLES / "vanishing_gradients.py"), run_name="example"
    )["networks"]
    net = networks(3, 4)["residual"]
    x = data.digits()[0][0][:5]
    _, params, state = net.init(jax.random.key(0), x.shape[1:])
    p = jax.tree.map(np.asarray, params)

    def sigmoid(a):
        return 1 / (1 + np.exp(-a))

    h = sigmoid(x.reshape(5, -1) @ p[1][0]["w"] + p[1][0]["b"])  # no skip
    for layer in p[2:4]:  # y = x + sigmoid(x W + b)
        h = h + sigmoid(h @ layer[0]["w"] + layer[0]["b"])
    expected = h @ p[4]["w"] + p[4]["b"]
    out, _ = net.apply(params, state, x)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_autoencoder(tmp_path):
    r = run("autoencoder", tmp_path)
    assert r["mse_after"] < 0.5 * r["mse_mean_image"] < r["mse_before"]


@pytest.mark.slow
def test_gan(tmp_path):
    r = run("gan", tmp_path)
    assert r["after"]["mean_distance"] < 0.6 * r["before"]["mean_distance"]
    assert r["after"]["modes_covered"] > r["before"]["modes_covered"]


@pytest.mark.slow
def test_sequence_rnn(tmp_path):
    results = run("sequence_rnn", tmp_path, "--cells", "lstm")  # GRU: the same code
    assert set(results) == {"lstm"}
    for name, r in results.items():
        assert r["accuracy"] > 0.8, (name, r)


@pytest.mark.slow
def test_transformer(tmp_path, capsys):
    r = run("transformer", tmp_path, "--method", "manual")
    assert r["token_accuracy"] >= 0.99
    # 250 x 128 draws of 10**5 sequences: held out is not unseen, and says so.
    out = capsys.readouterr().out
    assert "~27.4% of them are expected\n  among the 32,000 training draws" in out
    assert r["steps_trained"] == r["steps"]


def test_transformer_trains_the_steps_it_reports():
    # --quick once reported 600 steps and trained 750 (three chunks of 250).
    chunk_sizes = runpy.run_path(str(EXAMPLES / "transformer.py"), run_name="example")[
        "chunk_sizes"
    ]
    assert chunk_sizes(600, 250) == [250, 250, 100]
    assert chunk_sizes(500, 250) == [250, 250]
    assert chunk_sizes(250, 250) == [250]
    assert chunk_sizes(100, 250) == [100]


@pytest.mark.slow
def test_conv_autoencoder(tmp_path):
    # ConvTranspose and Upsample on the way back up; 4 epochs of the digits.
    r = run("autoencoder", tmp_path, "--model", "conv", "--epochs", "4")
    assert r["mse_after"] < r["mse_mean_image"] < r["mse_before"]


@pytest.mark.slow
def test_resnet_with_projection_shortcuts_and_augmentation(tmp_path):
    r = run("resnet", tmp_path, "--dataset", "digits")
    assert r["accuracy"] >= 0.6  # 10 short epochs of 460 images; chance is 0.1


@pytest.mark.slow
def test_transfer_learning(tmp_path):
    r = run("transfer_learning", tmp_path)
    assert r["task_a_accuracy"] >= 0.9
    assert r["body_unchanged"]  # optim.freeze: exactly zero updates
    assert set(r["accuracy"]) == {"frozen body", "from scratch", "fine-tuned"}
    assert min(r["accuracy"].values()) > 0.6  # 5 classes from 25 images


@pytest.mark.slow
def test_dcgan_generator_moves_towards_digits(tmp_path):
    # In a subprocess at XLA's default optimisation level: at the suite's -O0
    # the convolutions of 60 training steps alone take ~25 s of CPU.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(EXAMPLES.parent)
    plot = tmp_path / "dcgan.png"
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "dcgan.py"), "--quick", "--plot", str(plot)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("all leaves agree") == 2  # D, and serial(G, D)
    found = re.search(r"samples: ([\d.]+) at init, ([\d.]+) after 60 steps", out.stdout)
    before, after = float(found.group(1)), float(found.group(2))
    assert after < 0.8 * before
    assert plot.stat().st_size > 1000
