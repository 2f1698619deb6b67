"""Nothing lost when a run is killed: kill -9 at a random step, --resume, the same weights bit for bit;
one writer per run folder; a run folder's code runs only when trusted."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cnnlab
from cnnlab.errors import ModelError, RunError
from cnnlab.training.lock import run_lock
from cnnlab.models import load_model
from cnnlab.runs.folder import open_run

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("kill_resume", REPO / "benchmarks" / "kill_resume.py")
kill_resume = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kill_resume)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory: pytest.TempPathFactory):
    """The uninterrupted run's final weights (benchmarks/kill_resume.py's recipe, in a subprocess)."""
    return kill_resume.train_whole(tmp_path_factory.mktemp("whole") / "run")


@pytest.mark.parametrize("when", [pytest.param("random", marks=pytest.mark.dispatch), "before-first-checkpoint"])
def test_kill_9_then_resume_gives_the_same_weights(whole_run, tmp_path, when):
    """Killed after a random step (mid-step, mid-write or validating), or before any checkpoint was
    written (resume starts over); --resume ends with the uninterrupted run's weights, bit for bit."""
    # Any step and moment must do; the failure message names them.
    step, delay = (random.randint(1, kill_resume.STEPS), random.uniform(0, 0.3)) if when == "random" else (1, 0)
    out = tmp_path / "run"
    done = kill_resume.kill_after(out, step, delay)
    kill_resume.every_file_parses(out)
    if when == "before-first-checkpoint":
        (out / "checkpoint.pt").unlink()
    resumed = kill_resume.resume(out)
    assert kill_resume.same(resumed, whole_run), f"killed {delay:.2f} s after step {step} (checkpoint at {done}): weights differ"
    assert not list(out.glob(".*.tmp")), "a half-written file was left after --resume"
    assert len(open_run(out).history) == 2


def test_a_second_writer_is_refused(tmp_path):
    out = tmp_path / "run"
    with run_lock(out):
        with pytest.raises(RunError, match=r"being written by process \d+ on .*one writer at a time"):
            cnnlab.train("seed-mlp", "sample", subset=200, epochs=1, out=out, verbose=False, report=False)
    assert not (out / "config.json").exists()


def test_a_killed_writers_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from cnnlab.training.lock import run_lock
            with run_lock({str(out)!r}):
                print("locked", flush=True)
                time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match=f"process {holder.pid} "):
            with run_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with run_lock(out):  # the killed process's lock is free
        assert (out / ".lock").read_text().split()[0] != str(holder.pid)


@pytest.fixture
def evil_run(trained_run, tmp_path, monkeypatch):
    """A copy of the session's run whose config.json names a module that writes a file when imported."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "history.csv", "metrics.json", "model.safetensors"):
        (run / name).write_bytes((trained_run.path / name).read_bytes())
    marker = tmp_path / "payload-ran"
    (tmp_path / "payload.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom cnnlab.models import get_model\n"
        "def net(num_classes=10):\n    return get_model('seed-cnn', (1, 28, 28), num_classes)\n"
    )
    config = json.loads((run / "config.json").read_text())
    config["model"] = "payload:net"
    (run / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)  # where `python -m` would find payload.py
    return run, marker


def test_a_run_folder_is_data_never_code(evil_run):
    run, marker = evil_run
    with pytest.raises(ModelError, match=r"config\.json names Python code .*'payload:net'.*--trust-code"):
        cnnlab.evaluate(run)
    assert not marker.exists()
    result = subprocess.run([sys.executable, "-m", "cnnlab", "evaluate", str(run)], capture_output=True, text=True)
    assert result.returncode == 2 and "--trust-code" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()
    assert "weights_only=False" not in result.stderr


def test_trust_code_runs_a_folders_code_when_asked(evil_run):
    run, marker = evil_run
    ev = cnnlab.evaluate(open_run(run, trust_code=True))
    assert marker.exists() and ev.accuracy > 0.5  # trained_run's test accuracy: 0.75-0.82 measured, seeds 0-5


def test_torchvision_builders_need_no_trust():
    net = load_model("torchvision.models:resnet18", (3, 32, 32), 10, trust_code=False)
    assert sum(p.numel() for p in net.parameters()) == 11_181_642
    with pytest.raises(ModelError, match="--trust-code"):
        load_model("torchvision.models._api:get_model", (3, 32, 32), 10, trust_code=False)


def test_a_checkpoint_of_another_shape_is_a_clear_error(tmp_path):
    import torch

    run = cnnlab.train("seed-mlp", "sample", subset=300, epochs=1, out=tmp_path / "run", verbose=False, report=False)
    state = torch.load(run.path / "checkpoint.pt", weights_only=True)
    state["model"] = {k: v[:1] for k, v in state["model"].items()}
    torch.save(state, run.path / "checkpoint.pt")
    with pytest.raises(RunError, match=r"checkpoint\.pt does not fit the run's model \(.*size mismatch.*--overwrite"):
        cnnlab.resume(run.path, epochs=2, verbose=False, report=False)


def test_an_early_stopped_run_cut_before_its_test_is_finished_not_trained_on(tmp_path):
    run = cnnlab.train("seed-mlp", "sample", subset=300, epochs=40, lr=3e-3, patience=2, out=tmp_path / "r",
                       verbose=False, report=False)
    epochs = len(run.history)
    assert epochs < 40
    (run.path / "metrics.json").unlink()  # as if killed while testing the best weights
    resumed = cnnlab.resume(run.path, verbose=False, report=False)
    assert len(resumed.history) == epochs and resumed.metrics["test_accuracy"] == run.metrics["test_accuracy"]


@pytest.mark.parametrize(("change", "message"), [
    ({"step": -1}, "impossible position within an epoch"),
    ({"step": 3}, "impossible position within an epoch"),  # no totals, no seconds
    ({"step": 10_000, "totals": [0.0, 0.0, 0.0], "epoch_seconds": 1.0}, "stands at step 10000 of an epoch of"),
    ({"rng": [1.5]}, "random number generator"),
])
def test_a_damaged_position_within_an_epoch_is_a_clear_error(tmp_path, change, message):
    import torch

    run = cnnlab.train("seed-mlp", "sample", subset=300, epochs=1, out=tmp_path / "run", verbose=False, report=False)
    state = torch.load(run.path / "checkpoint.pt", weights_only=True)
    state.update({k: torch.tensor(v) if isinstance(v, list) else v for k, v in change.items()})
    torch.save(state, run.path / "checkpoint.pt")
    with pytest.raises(RunError, match=message):
        cnnlab.resume(run.path, epochs=2, verbose=False, report=False)
