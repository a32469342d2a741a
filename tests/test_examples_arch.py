"""The architecture examples' ``--quick`` runs: each checks its gradients
(manual against autodiff) and shows what it is about, in seconds."""

import runpy
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
def test_transformer(tmp_path):
    r = run("transformer", tmp_path, "--method", "manual")
    assert r["token_accuracy"] >= 0.99
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
