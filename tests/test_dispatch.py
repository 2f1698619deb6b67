"""`make test`'s second run, limited to AVX2, really runs AVX2 kernels; otherwise it checks nothing new."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F


@pytest.mark.dispatch
@pytest.mark.skipif(os.environ.get("ATEN_CPU_CAPABILITY") != "avx2", reason="checks the AVX2-limited run only")
def test_the_avx2_run_dispatches_avx2(capfd):
    assert torch.backends.cpu.get_cpu_capability() == "AVX2"  # PyTorch's own kernels
    # oneDNN (convolutions, matmuls) reads ONEDNN_MAX_CPU_ISA and names the ISA it chose in its verbose header;
    # the convolution must be large enough for PyTorch to hand it to oneDNN.
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        F.conv2d(torch.randn(8, 32, 28, 28), torch.randn(64, 32, 3, 3))
    isa = [line.split(",isa:")[1] for line in capfd.readouterr().out.splitlines() if ",isa:" in line]
    assert isa == ["Intel AVX2"], "ONEDNN_MAX_CPU_ISA=AVX2 must be set before Python starts"
