"""The NPU path (torch_npu.npu_nsa_compress{,_grad}) against the CPU kernels. Runs only on an Ascend NPU."""

import pytest
import torch

import nsa_graph
from nsa_graph import NsaCompressError
from precision import assert_ascend_standard

pytestmark = pytest.mark.npu

# Inside the kernel's domain. No case puts a zero-window sequence between windowed ones while the window
# count exceeds the core count: the grad kernel mishandles that layout (documented in the README).
CASES = [
    # (T, N, D, l, d, actual_seq_len)
    (4096, 4, 128, 32, 16, None),
    (2048, 8, 128, 64, 16, [0, 700, 2048]),
    (1024, 2, 192, 16, 16, [512, 1024]),
    (3000, 4, 64, 128, 16, [1000, 3000]),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "T{}N{}D{}l{}d{}".format(*c[:5]))
def test_npu_forward_and_backward_match_cpu_kernels(case, dtype):
    T, N, D, l, d, seq = case
    x = torch.randn(T, N, D, dtype=dtype)
    w = torch.randn(l, N, dtype=dtype)
    cpu = nsa_graph.nsa_compress(x, w, l, d, actual_seq_len=seq)
    npu = nsa_graph.nsa_compress(x.npu(), w.npu(), l, d, actual_seq_len=seq)
    assert npu.shape == cpu.shape and npu.dtype == dtype
    golden = nsa_graph.nsa_compress(x.float(), w.float(), l, d, actual_seq_len=seq)
    assert_ascend_standard(npu.cpu(), golden, dtype)

    g = torch.randn(cpu.shape, dtype=dtype)
    gi, gw = nsa_graph.nsa_compress_grad(g.npu(), x.npu(), w.npu(), l, d, actual_seq_len=seq)
    ref_gi, ref_gw = nsa_graph.nsa_compress_grad(g.float(), x.float(), w.float(), l, d, actual_seq_len=seq)
    assert_ascend_standard(gi.cpu(), ref_gi, dtype)
    assert_ascend_standard(gw.cpu(), ref_gw, dtype)


def test_npu_autograd_through_the_op():
    x = torch.randn(1024, 4, 128, dtype=torch.bfloat16).npu().requires_grad_()
    w = torch.randn(32, 4, dtype=torch.bfloat16).npu().requires_grad_()
    nsa_graph.nsa_compress(x, w, 32, 16).float().sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == w.shape


def test_npu_rejects_cases_outside_its_domain():
    x = torch.randn(256, 4, 128, dtype=torch.bfloat16).npu()
    w = torch.randn(24, 4, dtype=torch.bfloat16).npu()
    with pytest.raises(NsaCompressError, match="outside the NPU kernel's domain: .*multiples of 16"):
        nsa_graph.nsa_compress(x, w, 24, 16)
