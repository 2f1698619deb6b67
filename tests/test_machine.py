"""Precision chosen by the machine, and `cnnlab info`."""

from __future__ import annotations

import json
import os

import pytest
import torch

from cnnlab.training import machine
from cnnlab.cli.main import main

CPU = torch.device("cpu")


def test_an_explicit_precision_is_kept(monkeypatch):
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: False)
    assert machine.choose_precision("bf16", CPU).precision == "bf16"
    assert machine.choose_precision("fp32", CPU).precision == "fp32"


def test_no_native_bf16_means_fp32_without_timing(monkeypatch):
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(machine, "time_steps", lambda *a, **k: pytest.fail("flags settle it; nothing to time"))
    choice = machine.choose_precision("auto", CPU)
    assert choice.precision == "fp32" and "no native bf16" in choice.why


@pytest.mark.parametrize(("isa", "expected"), [("AVX2", "fp32"), ("avx512_core", "fp32"), ("AVX512_CORE_AMX", "bf16")])
def test_onednn_limited_below_bf16_means_fp32(monkeypatch, isa, expected):
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert machine.choose_precision("auto", CPU).precision == expected


def test_native_bf16_on_avx512_means_bf16(monkeypatch):
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    choice = machine.choose_precision("auto", CPU)
    assert choice.precision == "bf16" and "native bf16" in choice.why


@pytest.fixture
def fresh_timing():
    """The timed choice is made once a process; each of these tests times anew."""
    machine._timed_choice.cache_clear()
    yield
    machine._timed_choice.cache_clear()


@pytest.mark.parametrize(("bf16", "expected"), [(0.5, "bf16"), (0.9, "fp32"), (2.0, "fp32")])
def test_inconclusive_flags_are_settled_by_timing(monkeypatch, fresh_timing, bf16, expected):
    """bf16 must beat fp32 by the margin (1.15x) to be taken; a tie keeps fp32's exactness."""
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: None)
    monkeypatch.setattr(machine, "time_steps", lambda *a, **k: {"fp32": 1.0, "bf16": bf16})
    choice = machine.choose_precision("auto", CPU)
    assert choice.precision == expected
    assert f"{bf16 * 1e3:.1f} ms in bf16 and 1000.0 ms in fp32" in choice.why


def test_a_timed_choice_holds_for_the_whole_process(monkeypatch, fresh_timing):
    """Every model of a comparison must train in the same precision, however the timings wobble."""
    timings = iter([{"fp32": 1.0, "bf16": 0.5}, {"fp32": 1.0, "bf16": 2.0}])
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: None)
    monkeypatch.setattr(machine, "time_steps", lambda *a, **k: next(timings))
    assert machine.choose_precision("auto", CPU) == machine.choose_precision("auto", CPU)


def test_timing_a_step_is_real_and_leaves_the_random_numbers_alone():
    torch.manual_seed(3)
    before = torch.get_rng_state()
    took = machine.time_steps(CPU, repeats=1)
    assert set(took) == {"fp32", "bf16"} and all(0 < t < 30 for t in took.values())
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.dispatch
def test_avx2_dispatch_chooses_fp32():
    """CI's second run limits PyTorch and oneDNN to AVX2: no bf16 instructions, so fp32."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() != "AVX2":
        pytest.skip("runs under ONEDNN_MAX_CPU_ISA=AVX2 (make test's second run)")
    choice = machine.choose_precision("auto", CPU)
    assert choice.precision == "fp32", choice.why


def test_info_as_json(capsys):
    assert main(["info", "--format", "json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["versions"]["torch"] == torch.__version__
    assert facts["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert facts["threads"] == torch.get_num_threads()
    if torch.backends.mkldnn.is_available():  # what oneDNN says it dispatches, e.g. "Intel AVX2"
        assert isinstance(facts["onednn"]["isa"], str) and facts["onednn"]["isa"]
    assert facts["precision"]["auto"] == machine.choose_precision("auto", CPU).precision
    speed = facts["fast_cnn_28_images_per_second"]
    assert "fp32" in speed and all(v > 0 for v in speed.values())


def test_info_as_a_table(capsys):
    assert main(["info", "--no-measure"]) == 0
    out = capsys.readouterr().out
    for label in ("versions", "CPU capability", "oneDNN", "threads", "precision"):
        assert label in out
    assert "images/s" not in out
