"""nsa_compress / nsa_compress_grad CPU kernels against the float64 loop reference."""

import pytest
import torch

import nsa_graph
from nsa_graph.kernels import round_half_away_from_zero
from precision import assert_ascend_standard
from reference import random_lengths, reference_backward, reference_forward

# (T, N, D, l, d, actual_seq_len)
EDGE_CASES = [
    (100, 4, 16, 32, 16, None),                # one sequence
    (100, 2, 8, 32, 16, [40, 45, 100]),        # a short sequence between two windowed ones
    (64, 2, 8, 16, 16, [0, 30, 64]),           # leading 0: empty first sequence
    (64, 2, 8, 16, 16, [20, 20, 20, 64]),      # repeated values: empty sequences
    (10, 3, 4, 16, 8, None),                   # T < block: no windows
    (40, 3, 4, 16, 8, [10, 25, 40]),           # every sequence shorter than the block
    (33, 1, 1, 5, 7, [12, 33]),                # odd block and stride, N = D = 1
    (50, 2, 3, 4, 6, None),                    # stride > block: gaps between windows
    (48, 2, 4, 16, 16, [16, 32, 48]),          # exact fits
]


def _random_case(seed):
    gen = torch.Generator().manual_seed(seed)
    l = int(torch.randint(1, 40, (1,), generator=gen))
    d = int(torch.randint(1, 40, (1,), generator=gen))
    N = int(torch.randint(1, 6, (1,), generator=gen))
    D = int(torch.randint(1, 20, (1,), generator=gen))
    count = int(torch.randint(1, 6, (1,), generator=gen))
    seq = random_lengths(gen, 300, count)
    if seq[-1] == 0:
        seq[-1] = 1
    if torch.rand((), generator=gen) < 0.2:
        seq = None
        T = int(torch.randint(1, 300, (1,), generator=gen))
    else:
        T = seq[-1]
    return T, N, D, l, d, seq


CASES = EDGE_CASES + [_random_case(s) for s in range(24)]


def _inputs(T, N, D, l, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, N, D, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(l, N, generator=gen, dtype=torch.float64).to(dtype)
    return x, w


@pytest.mark.parametrize("case", CASES, ids=lambda c: "T{}N{}D{}l{}d{}seq{}".format(*c[:5], c[5]))
def test_forward_and_backward_match_reference_float64(case):
    T, N, D, l, d, seq = case
    x, w = _inputs(T, N, D, l, torch.float64)
    out = nsa_graph.nsa_compress(x, w, l, d, actual_seq_len=seq)
    ref = reference_forward(x, w, l, d, seq)
    assert out.shape == ref.shape and out.dtype == torch.float64 and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)

    g = torch.randn(out.shape, dtype=torch.float64)
    gi, gw = nsa_graph.nsa_compress_grad(g, x, w, l, d, actual_seq_len=seq)
    ref_gi, ref_gw = reference_backward(g, x, w, l, d, seq)
    torch.testing.assert_close(gi, ref_gi, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES[:12], ids=lambda c: "T{}N{}D{}l{}d{}".format(*c[:5]))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_within_ascend_standard(case, dtype):
    T, N, D, l, d, seq = case
    x, w = _inputs(T, N, D, l, dtype, seed=1)
    out = nsa_graph.nsa_compress(x, w, l, d, actual_seq_len=seq)
    assert out.dtype == dtype
    # golden: fp32 computation on the same (already rounded) operands
    golden = reference_forward(x.float(), w.float(), l, d, seq).float()
    assert_ascend_standard(out, golden, dtype)

    g = torch.randn(out.shape, dtype=torch.float64).to(dtype)
    gi, gw = nsa_graph.nsa_compress_grad(g, x, w, l, d, actual_seq_len=seq)
    assert gi.dtype == dtype and gw.dtype == dtype
    ref_gi, ref_gw = reference_backward(g.float(), x.float(), w.float(), l, d, seq)
    assert_ascend_standard(gi, ref_gi.float(), dtype)
    assert_ascend_standard(gw, ref_gw.float(), dtype)


def test_fp16_bf16_accumulate_in_fp32_with_one_final_cast():
    # 64 terms of +1 and tiny parts: a low-precision running sum would lose the tiny parts entirely.
    l = 64
    x = torch.full((l, 1, 16), 1.0 / 64)
    x[::2] = 1.0
    w = torch.ones(l, 1)
    exact = reference_forward(x, w, l, l).float()
    for dtype in (torch.float16, torch.bfloat16):
        out = nsa_graph.nsa_compress(x.to(dtype), w.to(dtype), l, l)
        assert torch.equal(out, round_half_away_from_zero(exact, dtype))


@pytest.mark.parametrize("dtype,ulp_bits", [(torch.bfloat16, 16), (torch.float16, 13)])
def test_forward_rounds_ties_away_from_zero_like_the_npu(dtype, ulp_bits):
    # 1 + half an ulp of the destination type: torch's .to() rounds to even (1.0), the NPU forward rounds away.
    half_ulp = 2.0 ** -(24 - ulp_bits)
    x = torch.tensor([1.0, half_ulp, -1.0, -half_ulp]).reshape(4, 1, 1)
    w = torch.ones(2, 1)
    out = nsa_graph.nsa_compress(x.float(), w, 2, 2)  # fp32 result: exact sums
    assert out.flatten().tolist() == [1.0 + half_ulp, -1.0 - half_ulp]
    ties = out.flatten()
    assert round_half_away_from_zero(ties, dtype).float().tolist() == [1.0 + 2 * half_ulp, -1.0 - 2 * half_ulp]
    assert ties.to(dtype).float().tolist() == [1.0, -1.0]


def test_round_half_away_matches_exact_rounding_on_random_values():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20000, generator=gen) * s for s in (1e-6, 1e-3, 1.0, 1e3)])
    for dtype in (torch.float16, torch.bfloat16):
        got = round_half_away_from_zero(x, dtype).double()
        # neighbours in the destination type around x; the nearer wins, ties go away from zero
        lo = x.to(dtype).double()
        other = torch.nextafter(x.to(dtype), torch.where(x.double() > lo, torch.tensor(float("inf")), torch.tensor(float("-inf"))).to(dtype)).double()
        dist_lo, dist_other = (x.double() - lo).abs(), (x.double() - other).abs()
        expect = torch.where(dist_lo < dist_other, lo, other)
        tie = dist_lo == dist_other
        expect = torch.where(tie, torch.where(lo.abs() > other.abs(), lo, other), expect)
        assert torch.equal(got, expect), dtype


def test_zero_windows_give_empty_output_and_zero_grads():
    x = torch.randn(40, 3, 8, requires_grad=True)
    w = torch.randn(16, 3, requires_grad=True)
    out = nsa_graph.nsa_compress(x, w, 16, 8, actual_seq_len=[10, 25, 40])
    assert out.shape == (0, 3, 8)
    out.sum().backward()
    assert torch.count_nonzero(x.grad) == 0 and torch.count_nonzero(w.grad) == 0


def test_uncovered_tokens_get_zero_gradient():
    # windows at 0 and 16 (l=16, d=16) cover [0, 32); sequence 2 covers [40, 56); tokens 32..39 and 56..59 are uncovered
    x = torch.randn(60, 2, 4, dtype=torch.float64)
    w = torch.randn(16, 2, dtype=torch.float64)
    g = torch.randn(3, 2, 4, dtype=torch.float64)
    gi, _ = nsa_graph.nsa_compress_grad(g, x, w, 16, 16, actual_seq_len=[40, 60])
    assert torch.count_nonzero(gi[32:40]) == 0 and torch.count_nonzero(gi[56:]) == 0
    assert torch.count_nonzero(gi[:32]) == 32 * 8


def test_non_contiguous_inputs():
    x = torch.randn(4, 96, 8, dtype=torch.float64).transpose(0, 1)  # [96, 4, 8] with odd strides
    w = torch.randn(4, 24, dtype=torch.float64).t()                  # [24, 4] transposed
    out = nsa_graph.nsa_compress(x, w, 24, 8, actual_seq_len=[50, 96])
    torch.testing.assert_close(out, reference_forward(x, w, 24, 8, [50, 96]))
    g = torch.randn(out.shape[1], out.shape[0], out.shape[2], dtype=torch.float64).transpose(0, 1)
    gi, gw = nsa_graph.nsa_compress_grad(g, x, w, 24, 8, actual_seq_len=[50, 96])
    ref_gi, ref_gw = reference_backward(g, x, w, 24, 8, [50, 96])
    torch.testing.assert_close(gi, ref_gi)
    torch.testing.assert_close(gw, ref_gw)
    assert gi.is_contiguous() and gw.is_contiguous()


def test_large_sequence_tiles_match_reference():
    # longer than one kernel tile: exercises the tile boundaries of the strided loops
    x, w = _inputs(3000, 2, 64, 32, torch.float64)
    seq = [1000, 1001, 3000]
    torch.testing.assert_close(nsa_graph.nsa_compress(x, w, 32, 16, actual_seq_len=seq), reference_forward(x, w, 32, 16, seq))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_inf_and_nan_reach_only_the_windows_that_hold_them(dtype):
    # large enough for the banded-GEMM kernels, whose zero band entries must not spread a NaN to neighbours
    x, w = _inputs(4096, 4, 64, 32, dtype, seed=3)
    x[100, 0, 3] = float("inf")
    x[2000, 2, 5] = float("nan")
    out = nsa_graph.nsa_compress(x, w, 32, 16)
    ref = reference_forward(x, w, 32, 16)
    assert torch.equal(torch.isfinite(out), torch.isfinite(ref))
    assert int((~torch.isfinite(out)).sum()) == 4  # two windows hold each of the two tokens
    finite = torch.isfinite(ref)
    golden = reference_forward(x.float(), w.float(), 32, 16).float()
    assert_ascend_standard(out[finite], golden[finite], dtype)
