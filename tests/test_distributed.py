"""torchrun: two CPU processes (gloo) train exactly what one process trains with the same global batch;
compare under torchrun; a rank that dies or hangs stops the run with a clear error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

import cnnlab
from cnnlab.training import distributed
from cnnlab.errors import UsageError

# Two processes sum their gradients in another order than one process does, so the weights agree
# to float32 rounding, not bit for bit: at most 1e-7 apart with AMX, 2.6e-5 limited to AVX2 (measured);
# a wrong scale of the loss (e.g. a mean per rank over an uneven last batch) or an unsynchronized
# rank moves them by 1e-3 and more.
ATOL, RTOL = 1e-4, 1e-4
SETTINGS = {"subset": 601, "epochs": 2, "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "augment": "flip"}


def flags(settings: dict) -> list[str]:
    return [part for key, value in settings.items() for part in (f"--{key.replace('_', '-')}", str(value))]


def torchrun_command(command: str, *args: str) -> list[str]:
    """`torchrun --nproc-per-node=2 -m cnnlab COMMAND ARGS` on the CPU, on the shipped sample."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            "-m", "cnnlab", command, *args, "--dataset", "sample", "--device", "cpu"]


def torchrun_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_command("train", *args), capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="torch built without gloo")
def test_torchrun_two_processes_match_one(tmp_path):
    one = cnnlab.train("seed-cnn", "sample", out=tmp_path / "one", device="cpu", verbose=False, **SETTINGS,
                       report=False)
    # 601 images less 60 for validation: 8 batches of 64 and a last one of 29, split 15 / 14 over the ranks.
    assert one.config.data.train_images == 541

    done = torchrun_train("--model", "seed-cnn", "--out", str(tmp_path / "two"), *flags(SETTINGS))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test accuracy") == 1  # only rank 0 prints
    assert done.stdout.count("epoch   2/2") == 1

    two = cnnlab.open_run(tmp_path / "two")
    assert two.config.processes == 2
    assert done.stdout.count("report: ") == 1 and (two.path / "report.html").stat().st_size > 10_000  # rank 0's
    weights_one, weights_two = load_file(one.path / "model.safetensors"), load_file(two.path / "model.safetensors")
    assert weights_one.keys() == weights_two.keys()
    for name in weights_one:
        torch.testing.assert_close(weights_two[name], weights_one[name], atol=ATOL, rtol=RTOL, msg=name)
    for row_one, row_two in zip(one.history, two.history, strict=True):
        assert row_two["train_loss"] == pytest.approx(row_one["train_loss"], rel=1e-4)
        assert row_two["train_accuracy"] == pytest.approx(row_one["train_accuracy"], abs=1 / 541)
        assert row_two["val_loss"] == pytest.approx(row_one["val_loss"], rel=1e-4)


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="torch built without gloo")
def test_torchrun_batch_norm_network_with_early_stopping(tmp_path):
    """Batch norm keeps running statistics per rank, so the ranks take rank 0's validation and stop together.
    fast-cnn-28, the network the bound was measured on: the recipe's strided-cnn-28 spreads over 0.26-0.60
    on these 360 images (seeds 0-5), as its linear layer over the 4x4 map has more to learn."""
    done = torchrun_train("--recipe", "fast", "--model", "fast-cnn-28", "--subset", "400", "--epochs", "4",
                          "--batch-size", "64", "--patience", "1", "--precision", "fp32", "--out", str(tmp_path / "bn"),
                          "--no-report")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test accuracy") == 1
    run = cnnlab.open_run(tmp_path / "bn")
    assert run.config.model == "fast-cnn-28" and run.config.processes == 2
    assert 1 <= len(run.history) <= 4 and run.metrics["epochs_run"] == len(run.history)
    # measured 0.54-0.69 over seeds 0-5 in fp32, AVX-512 and AVX2: the mean 0.63 less 4 sd (0.045); fp32 on
    # every machine, since seed 3 in bf16 with AMX stops after epoch 2 at chance (0.10): docs/benchmarks.md
    assert run.metrics["test_accuracy"] > 0.45


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="torch built without gloo")
def test_torchrun_compare(tmp_path):
    """Both ranks train each model in one process group; rank 0 alone prints the table and writes the report."""
    done = subprocess.run(
        torchrun_command("compare", "seed-mlp", "seed-cnn", "--subset", "400", "--epochs", "1",
                         "--out", str(tmp_path / "cmp")),
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("same data, same settings") == 1 and done.stdout.count("side by side: ") == 1
    assert done.stdout.count("test accuracy") == 2  # each model's run, printed by rank 0
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    for model in ("seed-mlp", "seed-cnn"):
        run = cnnlab.open_run(tmp_path / "cmp" / model)
        assert run.config.processes == 2 and run.config.data.train_images == 360
        assert f"{run.metrics['test_accuracy']:.2%}" in done.stdout
    assert (tmp_path / "cmp" / "report.html").stat().st_size > 10_000


def test_timeout_from_the_environment(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout() == distributed.DEFAULT_TIMEOUT == 300
    monkeypatch.setenv(distributed.TIMEOUT_ENV, " 2.5 ")
    assert distributed.timeout() == 2.5
    for bad in ("soon", "0", "-3", "nan"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(UsageError, match=f"{distributed.TIMEOUT_ENV}='{bad}' is not a number of seconds"):
            distributed.timeout()


def _workers(parent: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes, from /proc."""
    ranks = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent:
                env = dict(line.split("=", 1) for line in
                           (stat.parent / "environ").read_bytes().decode(errors="replace").split("\0") if "=" in line)
                ranks[int(env["RANK"])] = int(stat.parent.name)
        except (OSError, IndexError, KeyError, ValueError):  # a process that ended meanwhile
            continue
    return ranks


def _train_until_first_epoch(tmp_path: Path) -> tuple[subprocess.Popen, dict[int, int]]:
    """torchrun training (for far more epochs than the test waits), once rank 0 has written epoch 1."""
    # Short, but not so short that a rank slow to import torch on a busy machine misses the group's start.
    env = {**os.environ, distributed.TIMEOUT_ENV: "8"}
    command = torchrun_command("train", "--model", "seed-mlp", "--subset", "400", "--epochs", "10000",
                               "--no-report", "--out", str(tmp_path / "run"))
    torchrun = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "history.csv").exists():
        assert torchrun.poll() is None and time.monotonic() < deadline, torchrun.communicate()[1][-3000:]
        time.sleep(0.1)
    workers = _workers(torchrun.pid)
    assert sorted(workers) == [0, 1]
    return torchrun, workers


needs_torchrun_on_linux = pytest.mark.skipif(
    not (sys.platform == "linux" and dist.is_available() and dist.is_gloo_available()),
    reason="finds the workers in /proc; torch built without gloo",
)


@needs_torchrun_on_linux
def test_torchrun_killed_rank_stops_the_run(tmp_path):
    """torchrun itself stops the others when a worker dies; rank 0 must not add a traceback of its own."""
    torchrun, workers = _train_until_first_epoch(tmp_path)
    try:
        killed = time.monotonic()
        os.kill(workers[1], signal.SIGKILL)
        _, stderr = torchrun.communicate(timeout=60)
        assert time.monotonic() - killed < 15, stderr[-3000:]
    finally:
        if torchrun.poll() is None:
            os.killpg(torchrun.pid, signal.SIGKILL)
    assert torchrun.returncode != 0
    root_cause = stderr.split("Root Cause")[-1]
    assert "rank      : 1 (local_rank: 1)" in root_cause and "SIGKILL" in root_cause, stderr[-3000:]
    assert "cnnlab/train.py" not in stderr, stderr[-3000:]  # no traceback through cnnlab on rank 0


@needs_torchrun_on_linux
def test_torchrun_hung_rank_times_out(tmp_path):
    """A rank that stops answering (SIGSTOP: alive, holding its connections) is noticed only by the
    timeout: rank 0 gives up after $CNNLAB_DIST_TIMEOUT (8 s here) with a cnnlab error, not after 30 min."""
    torchrun, workers = _train_until_first_epoch(tmp_path)
    try:
        stopped = time.monotonic()
        os.kill(workers[1], signal.SIGSTOP)
        while Path(f"/proc/{workers[0]}").exists() and time.monotonic() - stopped < 60:  # torchrun reaps it
            time.sleep(0.1)
        waited = time.monotonic() - stopped
        os.kill(workers[1], signal.SIGCONT)  # so that torchrun's SIGTERM ends it at once
        _, stderr = torchrun.communicate(timeout=60)
    finally:
        if torchrun.poll() is None:
            os.killpg(torchrun.pid, signal.SIGKILL)
    assert 8 <= waited < 30, stderr[-3000:]
    assert torchrun.returncode != 0
    assert ("error: rank 0 of 2: another process of this torchrun run stopped answering" in stderr
            and f"more than 8 s with {distributed.TIMEOUT_ENV}=SECONDS" in stderr
            and "PyTorch said: " in stderr), stderr[-3000:]
    assert "Traceback" not in stderr.split("error: rank 0 of 2")[0], stderr[-3000:]
    root_cause = stderr.split("Root Cause")[-1]
    assert "rank      : 0 (local_rank: 0)" in root_cause and "exitcode  : 2" in root_cause, stderr[-3000:]
