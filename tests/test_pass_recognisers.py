"""Each window source x reduction recogniser, through torch.compile (aot_eager): fused count, outputs, grads."""

from __future__ import annotations

import einops
import pytest
import torch

from pass_helpers import GraphCapture, check_fusion, strict_pass  # noqa: F401 (autouse fixture)

B, S, N, D, L, STRIDE = 2, 40, 3, 8, 8, 4


def _randn(*shape, dtype=torch.float64, grad=True, seed=0):
    t = torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    return t.requires_grad_(grad)


# --- unfold x mul + sum, every layout and weight shape -------------------------------------------------


def test_bsnd_weight_l_n_mul_sum():
    def f(k, w):
        return (k.unfold(1, L, STRIDE) * w.t()[None, None, :, None, :]).sum(-1)

    report = check_fusion(f, _randn(B, S, N, D), _randn(L, N, seed=1), fused=1)
    assert "2 sequences" in report.fused[0].reason and "test_pass_recognisers.py" in report.fused[0].location


def test_tnd_single_sequence_weight_reversed_operands_torch_sum():
    def f(k, w):
        return torch.sum(w.t()[:, None, :] * k.unfold(0, L, STRIDE), dim=-1)

    check_fusion(f, _randn(S, N, D), _randn(L, N, seed=1), fused=1)


def test_bnsd_weight_n_l():
    def f(k, w):  # k [B, N, S, D], w [N, l]
        return (k.unfold(2, L, STRIDE) * w[None, :, None, None, :]).sum(dim=-1)

    check_fusion(f, _randn(B, N, S, D), _randn(N, L, seed=1), fused=1)


def test_bsh_viewed_as_heads_weight_shared_by_heads():
    def f(h, w):  # h [B, S, N*D], w [l]
        return (h.view(B, S, N, D).unfold(1, L, STRIDE) * w).sum(-1)

    check_fusion(f, _randn(B, S, N * D), _randn(L, seed=1), fused=1)


def test_bsh_without_heads():
    def f(h, w):
        return (h.unfold(1, L, STRIDE) * w).sum(-1)  # [B, W, H]

    check_fusion(f, _randn(B, S, N * D), _randn(L, seed=1), fused=1)


def test_weight_l_1_with_window_axis_moved():
    def f(k, w):  # w [l, 1]: one weight per offset, shared by heads
        u = k.unfold(1, L, STRIDE).movedim(-1, 2)  # [B, W, l, N, D]
        return (u * w[:, :, None]).sum(2)

    check_fusion(f, _randn(B, S, N, D), _randn(L, 1, seed=1), fused=1)


def test_keepdim_and_permuted_windows():
    def f(k, w):
        u = k.unfold(1, L, STRIDE).permute(0, 2, 1, 4, 3)  # [B, N, W, l, D]
        return (u * w.t()[None, :, None, :, None]).sum(3, keepdim=True)

    check_fusion(f, _randn(B, S, N, D), _randn(L, N, seed=1), fused=1)


def test_stride_larger_than_block_and_block_equal_stride():
    def f(k, w):
        a = (k.unfold(0, 4, 6) * w[:4].t()[:, None, :]).sum(-1)
        b = (k.unfold(0, 8, 8) * w.t()[:, None, :]).sum(-1)
        return torch.cat([a, b])

    check_fusion(f, _randn(S, N, D), _randn(8, N, seed=1), fused=2)


# --- einsum -------------------------------------------------------------------------------------------


def test_einsum_bsnd():
    def f(k, w):
        return torch.einsum("bwndl,ln->bwnd", k.unfold(1, L, STRIDE), w)

    check_fusion(f, _randn(B, S, N, D), _randn(L, N, seed=1), fused=1)


def test_einsum_weight_first_n_l_output_permuted():
    def f(k, w):  # weight first, [N, l], output [B, N, W, D]
        return torch.einsum("nk, b w n d k -> b n w d", w, k.unfold(1, L, STRIDE))

    check_fusion(f, _randn(B, S, N, D), _randn(N, L, seed=1), fused=1)


def test_einops_einsum_renamed_letters():
    def f(k, w):
        return einops.einsum(k.unfold(0, L, STRIDE), w, "w h d l, l h -> w h d")

    check_fusion(f, _randn(S, N, D), _randn(L, N, seed=1), fused=1)


# --- mean ---------------------------------------------------------------------------------------------


def test_unfold_mean():
    check_fusion(lambda k: k.unfold(1, L, STRIDE).mean(-1), _randn(B, S, N, D), fused=1)


def test_unweighted_window_sum_with_dim_keyword():
    check_fusion(lambda k: torch.sum(k.unfold(0, L, STRIDE), dim=-1), _randn(S, N, D), fused=1)


def test_weighted_mean():
    def f(k, w):
        return (k.unfold(1, L, STRIDE) * w).mean(-1)  # mdy666: Σ w x / l

    check_fusion(f, _randn(B, S, N, D), _randn(L, seed=1), fused=1)


def test_scalar_weight_then_sum():
    check_fusion(lambda k: (k.unfold(0, L, STRIDE) * 0.5).sum(-1), _randn(S, N, D), fused=1)


# --- block views (l == d) -----------------------------------------------------------------------------


def test_view_blocks_mean():
    check_fusion(lambda k: k.view(B, S // L, L, N, D).mean(2), _randn(B, S, N, D), fused=1)


def test_truncating_slice_then_reshape_blocks_weighted_sum():
    def f(k, w):  # S = 40, blocks of 16: the slice drops the 8-token tail
        kb = k[:, : S // 16 * 16].reshape(B, -1, 16, N, D)
        return (kb * w[None, None, :, :, None]).sum(2)

    check_fusion(f, _randn(B, S, N, D), _randn(16, N, seed=1), fused=1)


def test_einops_reduce_mean():
    check_fusion(lambda k: einops.reduce(k, "b (w n) h d -> b w h d", "mean", n=L), _randn(B, S, N, D), fused=1)


# --- dtype handling -----------------------------------------------------------------------------------


def test_upcast_then_cast_back_runs_the_op_in_bf16():
    def f(k, w):
        return (k.unfold(1, 16, 8).float() * w.float().t()[None, None, :, None, :]).sum(-1).to(k.dtype)

    k, w = _randn(B, 64, N, 16, dtype=torch.bfloat16), _randn(16, N, dtype=torch.bfloat16, seed=1)
    report = check_fusion(f, k, w, fused=1)
    assert "bfloat16" in report.fused[0].reason


def test_upcast_without_cast_back_runs_the_op_in_fp32():
    def f(k, w):
        return (k.unfold(1, 16, 8).float() * w.t()[None, None, :, None, :]).sum(-1)  # w already fp32

    k, w = _randn(B, 64, N, 16, dtype=torch.bfloat16), _randn(16, N, dtype=torch.float32, seed=1)
    report = check_fusion(f, k, w, fused=1)
    assert "float32" in report.fused[0].reason


def test_mean_bf16_within_standard():
    k = _randn(B, 64, N, 16, dtype=torch.bfloat16)
    check_fusion(lambda k: k.unfold(1, 16, 8).mean(-1), k, fused=1)


# --- training graphs: the fused op and its registered backward ----------------------------------------


def test_training_graphs_have_nsa_compress_grad_and_no_unfold():
    def f(k, w):
        return torch.einsum("bwndl,ln->bwnd", k.unfold(1, L, STRIDE), w) * 2

    capture = GraphCapture()
    check_fusion(f, _randn(B, S, N, D), _randn(L, N, seed=1), fused=1, inner=capture.backend)
    fw, bw = capture.ops(capture.forward), capture.ops(capture.backward)
    assert "nsa_graph.nsa_compress.default" in fw and "aten.unfold.default" not in fw, fw
    assert "nsa_graph.nsa_compress_grad.default" in bw and "aten.unfold_backward.default" not in bw, bw


# --- dynamic shapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dynamic", [True, None])
def test_dynamic_sequence_length_no_recompile(dynamic):
    from torch._dynamo.testing import CompileCounterWithBackend

    import nsa_graph

    def f(k, w):
        return (k.unfold(1, L, STRIDE) * w.t()[None, None, :, None, :]).sum(-1)

    torch._dynamo.reset()
    counter = CompileCounterWithBackend(nsa_graph.backend(inner="aot_eager"))
    compiled = torch.compile(f, backend=counter, dynamic=dynamic)
    w = _randn(L, N, seed=1)
    lengths = (40, 52, 61, 77) if dynamic else (40, 52, 61, 77)
    for S_ in lengths:
        k = _randn(B, S_, N, D)
        out = compiled(k, w)
        torch.testing.assert_close(out, f(k, w), rtol=1e-12, atol=1e-12)
        g = torch.randn_like(out)
        torch.testing.assert_close(torch.autograd.grad(out, (k, w), g), torch.autograd.grad(f(k, w), (k, w), g))
    # dynamic=True: one graph; automatic dynamic: a static graph, then one dynamic graph for the rest
    assert counter.frame_count == (1 if dynamic else 2)


# --- matmul / linear ----------------------------------------------------------------------------------


def test_matmul_per_head_column():
    def f(k, w):  # [B, W, N, D, l] @ [N, l, 1]
        return (k.unfold(1, L, STRIDE) @ w.t().unsqueeze(-1)).squeeze(-1)

    check_fusion(f, _randn(B, S, N, D), _randn(L, N, seed=1), fused=1)


def test_matmul_shared_vector_and_linear_one_output():
    import torch.nn.functional as F

    def f(k, v):
        a = k.unfold(1, L, STRIDE) @ v
        b = F.linear(k.unfold(1, L, STRIDE), v.view(1, L)).squeeze(-1)
        return a + b

    check_fusion(f, _randn(B, S, N, D), _randn(L, seed=1), fused=2)


# --- avg_pool -----------------------------------------------------------------------------------------


def test_avg_pool1d_over_channels_first():
    import torch.nn.functional as F

    def f(k):  # XunhaoLai avgpool: [B, S, N, D] -> [B, N*D, S] -> pool
        return F.avg_pool1d(k.reshape(B, S, N * D).transpose(1, 2), kernel_size=L, stride=STRIDE)

    check_fusion(f, _randn(B, S, N, D), fused=1)


# --- Python loops over static sequence boundaries -----------------------------------------------------


def _per_sequence_loop(cu, block, stride):
    def f(x, w):
        outs = []
        for b in range(len(cu) - 1):
            s, e = cu[b], cu[b + 1]
            if e - s >= block:  # sequences shorter than a window contribute nothing
                outs.append((x[s:e].unfold(0, block, stride) * w.t()[:, None, :]).sum(-1))
        return torch.cat(outs)

    return f


def test_loop_over_sequences_becomes_one_op_with_actual_seq_len():
    cu = [0, 30, 35, 80, 120]  # [30, 35) is shorter than a window: skipped by the loop
    capture = GraphCapture()
    report = check_fusion(_per_sequence_loop(cu, L, STRIDE), _randn(120, N, D), _randn(L, N, seed=1), fused=1,
                          inner=capture.backend)
    assert "3 pieces merged" in report.fused[0].reason
    fw = [n for gm in capture.forward for n in gm.graph.nodes if n.target == torch.ops.nsa_graph.nsa_compress.default]
    assert len(fw) == 1 and fw[0].kwargs["actual_seq_len"] == [30, 35, 80, 120]
    bw = [n for gm in capture.backward for n in gm.graph.nodes
          if n.target == torch.ops.nsa_graph.nsa_compress_grad.default]
    assert len(bw) == 1


def test_loop_starting_inside_the_tensor():
    check_fusion(_per_sequence_loop([10, 40, 64], L, STRIDE), _randn(70, N, D), _randn(L, N, seed=1), fused=1)


# --- positional embeddings ----------------------------------------------------------------------------


def test_pe_added_inside_the_window_becomes_a_bias():
    def f(k, w, pe):  # pe [l, D] added to every window, then a per-head weighted sum
        return ((k.unfold(1, L, STRIDE) + pe.t()) * w.t()[None, None, :, None, :]).sum(-1)

    report = check_fusion(f, _randn(B, S, N, D), _randn(L, N, seed=1), _randn(L, D, seed=2), fused=1)
    assert "positional embedding" in report.fused[0].spelling


def test_pe_shared_weight_mean_in_bnld_layout():
    def f(k, v, pe):  # mdy666 Qwen-NSA: windows [B, N, W, l, D] + pe[l, D], times w[l], mean over l
        u = k.unfold(1, L, STRIDE).permute(0, 2, 1, 4, 3)
        return ((u + pe) * v[:, None]).mean(3)

    check_fusion(f, _randn(B, S, N, D), _randn(L, seed=1), _randn(L, D, seed=2), fused=1)


def test_pe_with_einsum_and_a_bias_added_after():
    def f(k, w, pe, bias):
        return torch.einsum("bwndl,ln->bwnd", k.unfold(1, L, STRIDE) + pe.t(), w) + bias

    check_fusion(f, _randn(B, S, N, D), _randn(L, N, seed=1), _randn(L, D, seed=2), _randn(N, D, seed=3), fused=1)


# --- as_strided -----------------------------------------------------------------------------------------


def _strided(k, windows):
    b, h, s, d = k.shape
    return k.as_strided((b, h, windows, L, d), (k.stride(0), k.stride(1), STRIDE * k.stride(2), k.stride(2),
                                                k.stride(3)))


def test_as_strided_windows_einsum_weight_n_l():
    def f(k, w):  # XunhaoLai weightedpool: windows [B, H, W, l, D], w [H, l]
        return torch.einsum("bhwkd,hk->bwhd", _strided(k, (S - L) // STRIDE + 1), w)

    check_fusion(f, _randn(B, N, S, D), _randn(N, L, seed=1), fused=1)


def test_as_strided_first_windows_only_and_batch_of_one():
    check_fusion(lambda k: _strided(k, 3).mean(3), _randn(1, N, S, D), fused=1)


# --- gathers with static window indices -----------------------------------------------------------------


def test_gather_with_arange_indices():
    def f(x, w):
        idx = torch.arange(0, 100 - L + 1, STRIDE)[:, None] + torch.arange(L)  # [W, l]
        return torch.einsum("wlnd,ln->wnd", x[idx], w)

    check_fusion(f, _randn(100, N, D), _randn(L, N, seed=1), fused=1)


def test_index_select_view_mean_minicpm_style_varlen():
    cu = [0, 40, 45, 100]  # [40, 45) is shorter than a window: no indices, an empty sequence for the op

    def f(x):
        idx = torch.cat([torch.arange(s, e - L + 1, STRIDE)[:, None] + torch.arange(L)
                         for s, e in zip(cu, cu[1:]) if e - s >= L])
        return x.index_select(0, idx.flatten()).view(-1, L, N, D).mean(1)

    capture = GraphCapture()
    report = check_fusion(f, _randn(100, N, D), fused=1, inner=capture.backend)
    assert "3 sequences" in report.fused[0].reason
    (op,) = [n for gm in capture.forward for n in gm.graph.nodes if n.target == torch.ops.nsa_graph.nsa_compress.default]
    # the last window ends at 97: the op reads x[0:97] (tokens 97..99 are in no window)
    assert op.kwargs["actual_seq_len"] == [40, 45, 97]


# --- Python loops over windows --------------------------------------------------------------------------


def test_loop_over_windows_stacked_tnd_golden():
    def f(x, w):  # the torch_npu / MindSpore golden: one slice and one weighted sum per window
        return torch.stack([(x[i * STRIDE : i * STRIDE + L] * w[:, :, None]).sum(0) for i in range(7)])

    check_fusion(f, _randn(S, N, D), _randn(L, N, seed=1), fused=1)


def test_loop_over_windows_bsh_pe_matmul_cat():
    def f(k, pe, w):  # dhcode: [B, S, H] windows + PE, transpose, @ w[l, 1], cat on the last dim
        return torch.cat([(k[:, i * STRIDE : i * STRIDE + L] + pe).transpose(1, 2) @ w for i in range(7)], -1)

    check_fusion(f, _randn(B, S, N * D), _randn(L, N * D, seed=1), _randn(L, 1, seed=2), fused=1)


# --- roll + cat ---------------------------------------------------------------------------------------


def _roll_blocks(x, block, stride, windows=None):
    b, s, n, d = x.shape
    windows = windows or (s - block) // stride + 1
    pieces = []
    for k in range(-(-block // stride)):
        shifted = torch.roll(x, -k * stride, dims=1)[:, : windows * stride].reshape(b, windows, stride, n, d)
        pieces.append(shifted[:, :, : min(stride, block - k * stride)])
    return torch.cat(pieces, dim=2)  # [B, W, l, N, D]


def test_roll_and_cat_windows_pe_shared_weight_mean():
    def f(k, w, pe):  # mdy666 Qwen-NSA: (blocks + pe[l, D]) * w[l], mean over the window
        return ((_roll_blocks(k, 12, STRIDE) + pe[:, None]) * w[:, None, None]).mean(2)

    check_fusion(f, _randn(B, S, N, D), _randn(12, seed=1), _randn(12, D, seed=2), fused=1)


def test_dynamic_block_view_fuses_without_recompiles():
    from torch._dynamo.testing import CompileCounterWithBackend

    import nsa_graph

    def f(k, w):
        b, s, n, d = k.shape
        return (k.view(b, s // 16, 16, n, d) * w[None, None, :, :, None]).sum(2)

    torch._dynamo.reset()
    counter = CompileCounterWithBackend(nsa_graph.backend(inner="aot_eager"))
    compiled = torch.compile(f, backend=counter, dynamic=True)
    w = _randn(16, N, seed=1)
    with nsa_graph.passes.collecting() as report:
        for length in (64, 96, 160):
            k = _randn(B, length, N, D)
            torch.testing.assert_close(compiled(k, w), f(k, w), rtol=1e-12, atol=1e-12)
    assert counter.frame_count == 1 and len(report.fused) == 1, str(report)


def test_avg_pool3d_seer_attention_ceil_mode_exact_tiling():
    import torch.nn.functional as F

    def f(k):  # SeerAttention: k [B, S, H, D] read as unbatched (C, D, H, W); S % l == 0, so no tail
        return F.avg_pool3d(k, [L, 1, 1], [L, 1, 1], ceil_mode=True)

    check_fusion(f, _randn(B, S, N, D), fused=1)


@pytest.mark.parametrize("spelling", ["unfold_einsum", "block_view_mean", "roll_cat"])
def test_the_pass_installs_no_guards(spelling):
    from nsa_graph.passes import fuse_nsa_compress

    def unfold_einsum(k, w):
        return torch.einsum("bwndl,ln->bwnd", k.unfold(1, L, STRIDE), w)

    def block_view_mean(k, w):
        b, s, n, d = k.shape
        return k.view(b, s // L, L, n, d).mean(2)

    def roll_cat(k, w):
        return _roll_blocks(k, 12, STRIDE, windows=5).mean(2)

    fn = {"unfold_einsum": unfold_einsum, "block_view_mean": block_view_mean, "roll_cat": roll_cat}[spelling]
    seen = {}

    def backend(gm, example_inputs):
        fake = next(n.meta["example_value"] for n in gm.graph.nodes if n.op == "placeholder"
                    and isinstance(n.meta.get("example_value"), torch.Tensor))
        env = fake.fake_mode.shape_env
        before = (len(env.guards), len(env.deferred_runtime_asserts))
        seen["report"] = fuse_nsa_compress(gm)
        seen["guards"] = before, (len(env.guards), len(env.deferred_runtime_asserts))
        return gm.forward

    torch._dynamo.reset()
    k, w = _randn(B, S, N, D, grad=False), _randn(L, N, seed=1, grad=False)
    out = torch.compile(fn, backend=backend, dynamic=spelling != "roll_cat")(k, w)
    torch.testing.assert_close(out, fn(k, w), rtol=1e-12, atol=1e-12)
    assert len(seen["report"].fused) == 1, str(seen["report"])
    assert seen["guards"][0] == seen["guards"][1]


def test_one_unfold_feeding_two_weighted_sums():
    def f(k, wk, wv):  # one window tensor, separate key and value weights
        u = k.unfold(1, L, STRIDE)
        return (u * wk.t()[None, None, :, None, :]).sum(-1) - torch.einsum("bwndl,ln->bwnd", u, wv)

    check_fusion(f, _randn(B, S, N, D), _randn(L, N, seed=1), _randn(L, N, seed=2), fused=2)


def test_torch_npu_golden_loops_over_sequences_and_windows():
    # the CPU golden of torch_npu's tests: loops over sequences and windows, fp32, expanded weight, stack
    def golden(x, w, seq=(40, 45, 100)):
        outs, start = [], 0
        for end in seq:
            for i in range(max(0, (end - start - L) // STRIDE + 1)):
                s = start + i * STRIDE
                outs.append(torch.sum(x[s : s + L].float() * w.float().unsqueeze(-1).expand(L, N, D), 0))
            start = end
        return torch.stack(outs).to(x.dtype)

    capture = GraphCapture()
    x, w = _randn(100, N, D, dtype=torch.bfloat16), _randn(L, N, dtype=torch.bfloat16, seed=1)
    report = check_fusion(golden, x, w, fused=1, inner=capture.backend)
    assert "bfloat16" in report.fused[0].reason  # the fp32 round trip folds into the op
    (op,) = [n for gm in capture.forward for n in gm.graph.nodes if n.target == torch.ops.nsa_graph.nsa_compress.default]
    assert len(op.kwargs["actual_seq_len"]) >= 2
