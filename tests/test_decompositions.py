"""The Inductor decompositions of nsa_compress / nsa_compress_grad: equal to the kernels, one generated loop."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._inductor.utils import run_and_get_code

import nsa_graph
from nsa_graph.decompositions import nsa_compress_decomposition, nsa_compress_grad_decomposition

CASES = [  # (T, l, d, actual_seq_len)
    (100, 16, 8, None),
    (120, 32, 16, [40, 110, 120]),
    (90, 12, 5, [0, 3, 50, 51, 90]),  # empty and too-short sequences, l not a multiple of d
    (64, 8, 8, None),  # l == d
    (45, 4, 8, [20, 45]),  # d > l: tokens between windows get no gradient
    (10, 16, 8, None),  # shorter than one window: no rows
]


@pytest.mark.parametrize("T,l,d,seq", CASES)
def test_decompositions_equal_the_kernels_float64(T, l, d, seq):
    gen = torch.Generator().manual_seed(T + l)
    x = torch.randn(T, 3, 5, dtype=torch.float64, generator=gen)
    w = torch.randn(l, 3, dtype=torch.float64, generator=gen)
    y = nsa_graph.nsa_compress(x, w, l, d, actual_seq_len=seq)
    torch.testing.assert_close(nsa_compress_decomposition(x, w, l, d, actual_seq_len=seq), y, rtol=1e-13, atol=1e-13)
    g = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    want = nsa_graph.nsa_compress_grad(g, x, w, l, d, actual_seq_len=seq)
    got = nsa_compress_grad_decomposition(g, x, w, l, d, actual_seq_len=seq)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_bf16_decomposition_accumulates_in_fp32():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, 16, generator=gen).bfloat16()
    w = torch.randn(32, 4, generator=gen).bfloat16()
    golden = nsa_compress_decomposition(x.double(), w.double(), 32, 16)
    # traced by Inductor: bf16 arithmetic runs in fp32 with one cast at the store
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: torch.ops.nsa_graph.nsa_compress(a, b, 32, 16), backend="nsa_graph")
    # where intermediate casts are emulated the decomposition upcasts explicitly (also exact when run eagerly)
    from torch._inductor import config

    with config.patch(emulate_precision_casts=True):
        eager_upcast = nsa_compress_decomposition(x, w, 32, 16)
    for y in (compiled(x, w), eager_upcast):
        # one rounding of the fp32-accumulated result: within half a bf16 ulp (+ fp32 accumulation error)
        assert ((y.double() - golden).abs() <= golden.abs() * 2.0**-8 + 1e-6).all()


def test_varlen_op_compiles_to_generated_loops_with_symbolic_lengths():
    def f(x, w, seq):
        return nsa_graph.nsa_compress(x, w, 16, 8, actual_seq_len=seq)

    gen = torch.Generator().manual_seed(1)
    w = torch.randn(16, 2, requires_grad=True, generator=gen)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("nsa_graph")
    compiled = torch.compile(f, backend=counter, dynamic=True)
    # every sequence has >= 2 windows: sizes 0 and 1 are specialised by is_contiguous, like any dynamic size
    for seq in ([30, 70, 100], [50, 80, 120]):
        x = torch.randn(seq[-1], 2, 16, requires_grad=True, generator=gen)
        out = compiled(x, w, seq)
        g = torch.randn(out.shape, generator=gen)
        ref = f(x, w, seq)
        torch.testing.assert_close(out, ref)
        for a, b in zip(torch.autograd.grad(out, (x, w), g), torch.autograd.grad(ref, (x, w), g)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert counter.frame_count == 1  # SymInt lengths: one graph for both lists
    # (run_and_get_code compiles afresh) the varlen op and its gradient are generated code
    x = torch.randn(100, 2, 16, requires_grad=True, generator=gen)
    _, codes = run_and_get_code(lambda: compiled(x, w, [30, 70, 100]).sum().backward())
    assert "torch.ops.nsa_graph" not in "".join(codes) and len(codes) == 2


@pytest.mark.parametrize("dtype,ulp_bits", [(torch.bfloat16, 16), (torch.float16, 13)])
def test_compiled_forward_differs_from_the_kernels_only_on_exact_ties(dtype, ulp_bits):
    # window sums of exactly 1 + half a destination ulp: the kernels round away (1 + ulp), Inductor's cast to even (1)
    half_ulp = 2.0 ** -(24 - ulp_bits)
    x = torch.tensor([1.0, half_ulp, -1.0, -half_ulp, 1.0, 3 * half_ulp / 2] * 8).reshape(48, 1, 1).to(dtype)
    w = torch.ones(2, 1, dtype=dtype)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: torch.ops.nsa_graph.nsa_compress(a, b, 2, 2), backend="nsa_graph")
    got, eager = compiled(x, w).flatten().float(), nsa_graph.nsa_compress(x, w, 2, 2).flatten().float()
    assert got.tolist() == [1.0, -1.0, 1.0 + 2 * half_ulp] * 8
    assert eager.tolist() == [1.0 + 2 * half_ulp, -1.0 - 2 * half_ulp, 1.0 + 2 * half_ulp] * 8
