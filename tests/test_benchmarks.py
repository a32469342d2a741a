"""The benchmark scripts run end to end and print their tables.

``benchmarks/run.py --quick`` times only fnn and plain JAX (no Flax, Equinox
or PyTorch needed) on the ``tiny`` and ``mlp`` workloads with a handful of
steps; it runs in a subprocess because it re-executes itself under another
memory allocator.

The tests that start a benchmark script are marked ``slow`` (each is a
fresh Python with JAX, a minute of the suite's time on two cores):
``pytest -m "not slow"`` skips them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args, timeout=300):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # conftest's two fake devices are not for timing
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_run_quick_prints_table_and_targets(tmp_path):
    out = tmp_path / "results.json"
    proc = _run("benchmarks/run.py", "--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert "allocator:" in text
    assert "matmul peak" in text
    for row in ("tiny", "mlp"):
        for contender in ("fnn-autodiff", "fnn-manual", "jax"):
            assert any(
                line.split()[:2] == [row, contender] for line in text.splitlines()
            ), f"no {row}/{contender} row in:\n{text}"
    assert "targets:" in text
    assert "fnn-autodiff <= 1.02x jax" in text
    results = json.loads(out.read_text())
    assert {(r["workload"], r["contender"]) for r in results["results"]} == {
        (w, c) for w in ("tiny", "mlp") for c in ("fnn-autodiff", "fnn-manual", "jax")
    }
    for r in results["results"]:
        assert r["ms_per_step"] > 0 and r["gflops"] > 0
        if r["contender"] == "jax":
            assert r["ratio_to_jax"] == 1.0


@pytest.mark.slow
def test_run_list_names_flop_formulas():
    proc = _run("benchmarks/run.py", "--list", "--allocator", "system", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "GFLOP" in proc.stdout and "large" in proc.stdout


@pytest.mark.slow
def test_run_rejects_unknown_workload():
    proc = _run(
        "benchmarks/run.py", "--workloads", "nope", "--allocator", "system", timeout=120
    )
    assert proc.returncode != 0
    assert "unknown workload 'nope'" in proc.stderr


def test_flop_counts_match_the_formula():
    sys.path.insert(0, str(ROOT))
    from benchmarks.workloads import WORKLOADS

    mlp = WORKLOADS["mlp"]
    forward = 2 * 128 * (784 * 512 + 512 * 512 + 512 * 10)
    assert mlp.step_flops() == 3 * forward - 2 * 128 * 784 * 512
    cnn = WORKLOADS["cnn"]
    conv1 = 2 * 128 * 28 * 28 * 32 * 9
    conv2 = 2 * 128 * 14 * 14 * 64 * 9 * 32
    dense = 2 * 128 * (3136 * 128 + 128 * 10)
    assert cnn.step_flops() == 3 * (conv1 + conv2 + dense) - conv1


@pytest.mark.slow
def test_epochs_quick_compares_fit_with_the_loop(tmp_path):
    out = tmp_path / "epochs.json"
    proc = _run(
        "benchmarks/epochs.py", "--quick", "--workloads", "tiny", "--json", str(out)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fit >= 5x faster per step than the loop" in proc.stdout
    rows = json.loads(out.read_text())["results"]
    methods = {"fit-wall", "fit-scan", "fit-loop", "loop-async", "loop-blocking"}
    assert {r["method"] for r in rows} == methods
    assert all(r["ms_per_step"] > 0 for r in rows)


@pytest.mark.slow
def test_worker_times_a_contender_in_its_own_process():
    # run.py's contenders run in worker processes: a build, timed steps, a
    # skip with its reason, and the worker's pid is not ours.
    sys.path.insert(0, str(ROOT))
    from benchmarks.worker import RemoteStep, Worker

    worker = Worker()
    try:
        assert worker.ask(op="build", workload="tiny", contender="jax")["warm"] > 0
        times = RemoteStep(worker, "jax").time_steps(3)
        assert len(times) == 3 and all(t > 0 for t in times)
        skip = worker.ask(op="build", workload="tiny", contender="torch-channels-last")
        assert "torch" in skip["skip"]  # not installed, or images only
        assert worker.ask(op="drop") == {}
        assert worker.proc.pid != os.getpid()
    finally:
        worker.close()
    assert worker.proc.returncode == 0


@pytest.mark.slow
def test_first_step_times_each_contender_in_a_fresh_process(tmp_path):
    out = tmp_path / "first.json"
    proc = _run(
        "benchmarks/run.py",
        "--first-step",
        "--workloads",
        "tiny",
        "--frameworks",
        "fnn,jax",
        "--rounds",
        "1",
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "load average" in proc.stdout and "targets:" in proc.stdout
    assert "tiny: fnn-autodiff init + first step <= 1.1x jax" in proc.stdout
    rows = json.loads(out.read_text())["first_step"]
    assert {r["contender"] for r in rows} == {"fnn-autodiff", "fnn-manual", "jax"}
    for r in rows:
        assert 0 < r["init"] and 0 < r["second"] < r["first"]
        assert r["to_first_step"] == pytest.approx(r["init"] + r["first"])


def test_first_step_target_compares_init_plus_first_step_with_jax():
    sys.path.insert(0, str(ROOT))
    from benchmarks.run import first_step_targets

    def row(contender, init, first):
        return {
            "workload": "mlp",
            "contender": contender,
            "to_first_step": init + first,
        }

    verdicts = first_step_targets(
        [
            row("jax", 1.0, 1.0),
            row("fnn-autodiff", 1.1, 1.0),  # 1.05x: holds
            row("fnn-manual", 1.0, 1.3),  # 1.15x: fails
        ]
    )
    names = [label.split(":")[1].split()[0] for label, _, _ in verdicts]
    assert names == ["fnn-autodiff", "fnn-manual"]
    assert [holds for _, holds, _ in verdicts] == [True, False]
    assert verdicts[1][2].startswith("1.15x (2.30 / 2.00 s)")
