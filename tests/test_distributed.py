"""torchrun: two CPU processes (gloo) train exactly what one process trains with the same global batch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

import cnnlab

# Two processes sum their gradients in another order than one process does, so the weights agree
# to float32 rounding, not bit for bit; a wrong scale of the loss (e.g. a mean per rank over an
# uneven last batch) or an unsynchronized rank moves them by 1e-3 and more.
ATOL, RTOL = 2e-5, 1e-4
SETTINGS = {"subset": 601, "epochs": 2, "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "augment": "flip"}


def flags(settings: dict) -> list[str]:
    return [part for key, value in settings.items() for part in (f"--{key.replace('_', '-')}", str(value))]


def torchrun_train(*args: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node=2 -m cnnlab train ARGS` on the CPU, on the shipped sample."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "cnnlab", "train", "--dataset", "sample", "--device", "cpu", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="torch built without gloo")
def test_torchrun_two_processes_match_one(tmp_path):
    one = cnnlab.train("seed-cnn", "sample", out=tmp_path / "one", device="cpu", verbose=False, **SETTINGS,
                       report=False)
    # 601 images less 60 for validation: 8 batches of 64 and a last one of 29, split 15 / 14 over the ranks.
    assert one.config["data"]["train_images"] == 541

    done = torchrun_train("--model", "seed-cnn", "--out", str(tmp_path / "two"), *flags(SETTINGS))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test accuracy") == 1  # only rank 0 prints
    assert done.stdout.count("epoch   2/2") == 1

    two = cnnlab.open_run(tmp_path / "two")
    assert two.config["train"]["processes"] == 2
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
    """Batch norm keeps running statistics per rank, so the ranks take rank 0's validation and stop together."""
    done = torchrun_train("--recipe", "fast", "--subset", "400", "--epochs", "4", "--batch-size", "64",
                          "--patience", "1", "--out", str(tmp_path / "bn"), "--no-report")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test accuracy") == 1
    run = cnnlab.open_run(tmp_path / "bn")
    assert run.config["model"] == "fast-cnn-28" and run.config["train"]["processes"] == 2
    assert 1 <= len(run.history) <= 4 and run.metrics["epochs_run"] == len(run.history)
    assert run.metrics["test_accuracy"] > 0.5
