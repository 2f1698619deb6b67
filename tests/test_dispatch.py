"""`make test`'s second run, limited to AVX2, really runs AVX2 kernels; otherwise it checks nothing new."""

from __future__ import annotations

import os

import pytest
import torch

from cnnlab.training import machine


@pytest.mark.dispatch
@pytest.mark.skipif(os.environ.get("ATEN_CPU_CAPABILITY") != "avx2", reason="checks the AVX2-limited run only")
def test_the_avx2_run_dispatches_avx2():
    assert torch.backends.cpu.get_cpu_capability() == "AVX2"  # PyTorch's own kernels
    # oneDNN (convolutions, matmuls) reads ONEDNN_MAX_CPU_ISA and names the ISA it chose in its verbose
    # header, once a process: read through cnnlab's own reader, so `cnnlab info` in the same process sees it too.
    assert machine.onednn_isa() == "Intel AVX2", "ONEDNN_MAX_CPU_ISA=AVX2 must be set before Python starts"
