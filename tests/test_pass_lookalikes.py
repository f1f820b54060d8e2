"""Look-alikes that are not NsaCompress stay unfused, with a reason; the NPU target's domain; safety."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

import nsa_graph
from pass_helpers import check_fusion, strict_pass  # noqa: F401 (autouse fixture)

B, S, N, D, L, STRIDE = 2, 40, 3, 8, 8, 4


def _randn(*shape, dtype=torch.float64, grad=True, seed=0):
    t = torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    return t.requires_grad_(grad)


def _only_reason(report) -> str:
    assert len(report.candidates) == 1 and not report.fused, str(report)
    return report.candidates[0].reason


def test_content_dependent_weights():
    def f(k):
        u = k.unfold(1, L, STRIDE)
        return (u * u.softmax(-1)).sum(-1)  # attention-pooling: weights from the window itself

    reason = _only_reason(check_fusion(f, _randn(B, S, N, D), fused=0))
    assert "window index" in reason


def test_per_channel_weights():
    def f(k, w):  # w [l, N, D]: one weight per (offset, head, channel)
        return (k.unfold(1, L, STRIDE) * w.permute(1, 2, 0)[None, None]).sum(-1)

    reason = _only_reason(check_fusion(f, _randn(B, S, N, D), _randn(L, N, D, seed=1), fused=0))
    assert "two passed-through dims" in reason


def test_sum_over_the_wrong_axis():
    def f(k, w):
        return (k.unfold(1, L, STRIDE) * w.t()[None, None, :, None, :]).sum(-2)

    reason = _only_reason(check_fusion(f, _randn(B, S, N, D), _randn(L, N, seed=1), fused=0))
    assert "not exactly the window offset" in reason


def test_sum_over_window_and_channels():
    def f(k, w):
        return (k.unfold(1, L, STRIDE) * w.t()[None, None, :, None, :]).sum((-1, -2))

    reason = _only_reason(check_fusion(f, _randn(B, S, N, D), _randn(L, N, seed=1), fused=0))
    assert "not exactly the window offset" in reason


def test_wrong_block_grouping():
    # tokens grouped as (block offset, block index): element j of every block comes from a different block
    reason = _only_reason(check_fusion(lambda k: k.view(B, L, S // L, N, D).mean(1), _randn(B, S, N, D), fused=0))
    assert "not exactly the window offset" in reason


def test_type_promotion_is_left_alone():
    def f(k, w):
        return (k.unfold(1, 16, 8) * w.t()[None, None, :, None, :]).sum(-1)

    k, w = _randn(B, 64, N, 16, dtype=torch.bfloat16), _randn(16, N, dtype=torch.float32, seed=1)
    reason = _only_reason(check_fusion(f, k, w, fused=0))
    assert "type promotion" in reason


def test_in_place_write_between_windows_and_reduction():
    def f(k, w):
        k = k.clone()
        u = k.unfold(1, L, STRIDE)
        k.mul_(2)  # the windows are views: the sum reads the doubled values
        return (u * w.t()[None, None, :, None, :]).sum(-1)

    reason = _only_reason(check_fusion(f, _randn(B, S, N, D), _randn(L, N, seed=1), fused=0))
    assert "modified in place" in reason


def test_padded_tail_window_stays_unfused():
    def f(k):  # fla-style: pad S = 40 to 48, then blocks of 8: the last block is half zeros
        return F.pad(k, (0, 0, 0, 0, 0, 8)).view(B, 6, 8, N, D).mean(2)

    reason = _only_reason(check_fusion(f, _randn(B, S, N, D), fused=0))
    assert "padded" in reason and "partial" in reason


def test_padding_other_dims_is_fine():
    def f(k):  # padding the head dim, not the sequence
        return F.pad(k, (0, 8)).view(B, S // L, L, N, 2 * D).mean(2)

    check_fusion(f, _randn(B, S, N, D), fused=1)


def test_unrecognised_consumer_is_reported():
    def f(k):
        return k.unfold(1, L, STRIDE).amax(-1)  # max pooling: not a weighted sum

    reason = _only_reason(check_fusion(f, _randn(B, S, N, D), fused=0))
    assert "amax" in reason


# --- target="npu": only the kernel's domain -----------------------------------------------------------


def test_npu_target_fuses_inside_the_domain_and_explains_outside():
    def f(k, w, v, wv):
        inside = (k.unfold(1, 32, 16) * w.t()[None, None, :, None, :]).sum(-1)
        outside = (v.unfold(1, 24, 16) * wv.t()[None, None, :, None, :]).sum(-1)  # l=24 not a multiple of 16
        return inside, outside

    args = (_randn(1, 64, 2, 16, dtype=torch.bfloat16), _randn(32, 2, dtype=torch.bfloat16, seed=1),
            _randn(1, 64, 2, 16, dtype=torch.bfloat16, seed=2), _randn(24, 2, dtype=torch.bfloat16, seed=3))
    report = nsa_graph.explain(f, *args, target="npu")
    assert len(report.fused) == 1 and report.fused[0].block == 32
    (left,) = report.unfused
    assert "NPU kernel's domain" in left.reason and "multiples of 16" in left.reason


def test_npu_target_rejects_float32():
    report = nsa_graph.explain(lambda k: k.unfold(1, 32, 16).mean(-1), _randn(1, 64, 2, 16, dtype=torch.float32),
                               target="npu")
    assert not report.fused and "fp16/bf16" in report.unfused[0].reason


# --- safety: a bug in the pass never breaks the user's compile ----------------------------------------


def _broken_recogniser(monkeypatch):
    from nsa_graph.passes import reductions

    def broken(view, user):
        raise RuntimeError("recogniser bug")

    monkeypatch.setattr(reductions, "REDUCTIONS", (broken,))
    import nsa_graph.passes.fuse as fuse

    monkeypatch.setattr(fuse, "REDUCTIONS", (broken,))


def test_internal_error_leaves_the_graph_unfused(monkeypatch, caplog):
    monkeypatch.setenv("NSA_GRAPH_STRICT", "0")
    _broken_recogniser(monkeypatch)
    counters.clear()

    def f(k, w):
        return (k.unfold(1, L, STRIDE) * w.t()[None, None, :, None, :]).sum(-1)

    with caplog.at_level("WARNING", logger="nsa_graph.passes.fuse"):
        report = check_fusion(f, _randn(B, S, N, D), _randn(L, N, seed=1), fused=0)
    assert report.errors and "recogniser bug" in report.errors[0]
    assert counters["nsa_graph"]["errors"] == 1 and counters["nsa_graph"]["fused"] == 0
    assert any("internal error" in r.getMessage() for r in caplog.records)


def test_internal_error_raises_in_strict_mode(monkeypatch):
    _broken_recogniser(monkeypatch)
    torch._dynamo.reset()
    compiled = torch.compile(lambda k: k.unfold(0, L, STRIDE).mean(-1), backend=nsa_graph.backend(inner="eager"))
    with pytest.raises(Exception, match="recogniser bug"):
        compiled(_randn(S, N, D))


def test_loop_that_skips_a_long_sequence_stays_per_sequence():
    def f(x, w):  # the middle sequence [30, 60) is long enough to compress, but the user drops it
        a = (x[0:30].unfold(0, L, STRIDE) * w.t()[:, None, :]).sum(-1)
        b = (x[60:100].unfold(0, L, STRIDE) * w.t()[:, None, :]).sum(-1)
        return torch.cat([a, b])

    report = check_fusion(f, _randn(100, N, D), _randn(L, N, seed=1), fused=2)
    (kept,) = report.unfused
    assert "skips a sequence long enough" in kept.reason


def test_windows_across_sequence_boundaries_fuse_as_one_sequence():
    # one unfold over the packed tensor: windows cross the (unknown to the code) boundaries; the op must
    # see exactly that: one sequence, no actual_seq_len
    report = check_fusion(lambda x, w: (x.unfold(0, L, STRIDE) * w.t()[:, None, :]).sum(-1), _randn(100, N, D),
                          _randn(L, N, seed=1), fused=1)
    assert "sequences" not in report.fused[0].reason


def test_avg_pool_with_padding_or_partial_ceil_window():
    def f(k):
        x = k.reshape(B, S, N * D).transpose(1, 2)
        return F.avg_pool1d(x, L, STRIDE, padding=2), F.avg_pool1d(x, 11, STRIDE, ceil_mode=True)  # (40 - 11) % 4 != 0

    report = check_fusion(lambda k: torch.cat([t.flatten() for t in f(k)]), _randn(B, S, N, D), fused=0)
    reasons = " | ".join(c.reason for c in report.unfused)
    assert len(report.unfused) == 2 and "padding=2" in reasons and "ceil_mode" in reasons


def test_as_strided_window_past_the_sequence():
    def f(k):  # 9 windows of 8 every 4 need 40 tokens of... 9th ends at 40 = S: fine; 10 would read past it
        b, h, s, d = k.shape
        u = k[:1].as_strided((1, h, 10, L, d), (k.stride(0), k.stride(1), STRIDE * k.stride(2), k.stride(2),
                                                k.stride(3)))
        return u.mean(3)

    reason = _only_reason(check_fusion(f, _randn(B, N, S, D), fused=0))
    assert "past the sequence" in reason


def test_gather_indices_from_an_input_are_opaque():
    idx = torch.arange(0, 32, STRIDE)[:, None] + torch.arange(L)
    reason = _only_reason(check_fusion(lambda x, i: x[i].mean(1), _randn(S, N, D), idx, fused=0))
    assert "not compile-time constants" in reason


def test_gather_of_strided_tokens_is_not_a_window():
    def f(x):  # every other token: a dilated window, not NsaCompress
        idx = torch.arange(0, 16, 4)[:, None] + torch.arange(0, 2 * L, 2)
        return x[idx].mean(1)

    reason = _only_reason(check_fusion(f, _randn(S, N, D), fused=0))
    assert "consecutive tokens" in reason


def test_loop_over_irregular_windows():
    def f(x, w):  # starts 0, 4, 6: no partition into sequences gives these windows
        return torch.stack([(x[s : s + L] * w[:, :, None]).sum(0) for s in (0, 4, 6)])

    reason = _only_reason(check_fusion(f, _randn(S, N, D), _randn(L, N, seed=1), fused=0))
    assert "overlap" in reason


def test_loop_over_windows_with_different_weights():
    def f(x, w):
        return torch.stack([(x[i * STRIDE : i * STRIDE + L] * (w * (i + 1))[:, :, None]).sum(0) for i in range(3)])

    reason = _only_reason(check_fusion(f, _randn(S, N, D), _randn(L, N, seed=1), fused=0))
    assert "reduced differently" in reason


def test_roll_windows_that_wrap_around():
    def f(k):  # one window too many: the last one reads the sequence's start again
        b, s, n, d = k.shape
        pieces = [torch.roll(k, -j * STRIDE, dims=1)[:, : 10 * STRIDE].reshape(b, 10, STRIDE, n, d) for j in range(2)]
        return torch.cat(pieces, dim=2).mean(2)

    reason = _only_reason(check_fusion(f, _randn(B, S, N, D), fused=0))
    assert "wraps around" in reason


def test_an_ordinary_transformer_block_has_no_candidates():
    class Block(torch.nn.Module):
        def __init__(self, dim=32, heads=4):
            super().__init__()
            self.heads = heads
            self.qkv = torch.nn.Linear(dim, 3 * dim)
            self.out = torch.nn.Linear(dim, dim)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))

        def norm(self, x):  # RMSNorm by hand: a mean over the last dim
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

        def forward(self, x):
            b, s, c = x.shape
            q, k, v = self.qkv(self.norm(x)).view(b, s, 3, self.heads, c // self.heads).unbind(2)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            att = (q @ k.transpose(-1, -2) / (c // self.heads) ** 0.5).softmax(-1)
            x = x + self.out((att @ v).transpose(1, 2).reshape(b, s, c))
            pooled = x.view(b, s, self.heads, c // self.heads).mean(2)  # mean over heads, not over tokens
            return x + self.mlp(self.norm(x)), pooled

    report = check_fusion(lambda x, m=Block().double(): torch.cat([t.flatten() for t in m(x)]), _randn(2, 16, 32),
                          fused=0)
    assert report.candidates == [] and report.errors == []


def test_avg_pool_over_two_dims():
    reason = _only_reason(check_fusion(lambda k: F.avg_pool2d(k, 2), _randn(B, S, N, D), fused=0))
    assert "pools 2 dims" in reason


def test_loop_with_a_partial_tail_window():
    def f(x):  # Noumena-style: windows every 16 tokens up to the end, the last one shorter
        return torch.stack([x[i : i + 16].mean(0) for i in range(0, S, 16)])  # S = 40: 16, 16, 8 tokens

    reason = _only_reason(check_fusion(f, _randn(S, N, D), fused=0))
    assert "element 2 is not a full window" in reason


def test_integer_windows_are_left_alone():
    def f(k):
        return k.unfold(0, L, STRIDE).sum(-1)

    reason = _only_reason(check_fusion(f, torch.arange(S * N * D).reshape(S, N, D), fused=0))
    assert "dtype torch.int64" in reason
