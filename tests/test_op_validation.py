"""Every contract rule has its own error, naming the argument, the value and the rule: eager and at trace time."""

import re

import pytest
import torch

import nsa_graph
from nsa_graph import NsaCompressError, npu_unsupported_reason


def _x(T=64, N=2, D=8, dtype=torch.float32):
    return torch.randn(T, N, D, dtype=dtype)


def _w(l=16, N=2, dtype=torch.float32):
    return torch.randn(l, N, dtype=dtype)


# (id, input, weight, l, d, actual_seq_len, message regex)
RULES = [
    ("dtype_mismatch", _x(), _w(dtype=torch.float16), 16, 8, None, r"weight.dtype=float16 must equal input.dtype=float32"),
    ("unsupported_dtype", _x().long(), _w().long(), 16, 8, None, r"input.dtype=int64 is not supported"),
    ("input_rank", torch.randn(64, 16), _w(), 16, 8, None, r"input must be 3-D \[T, N, D\].*got shape \(64, 16\)"),
    ("weight_rank", _x(), torch.randn(16, 2, 1), 16, 8, None, r"weight must be 2-D.*got shape \(16, 2, 1\)"),
    ("weight_rows", _x(), _w(l=8), 16, 8, None, r"weight.shape\[0\]=8 must equal compress_block_size=16"),
    ("weight_heads", _x(), _w(N=3), 16, 8, None, r"weight.shape\[1\]=3 must equal the number of heads N=.*=2"),
    ("block_zero", _x(), _w(), 0, 8, None, r"compress_block_size=0 must be positive"),
    ("block_negative", _x(), _w(), -16, 8, None, r"compress_block_size=-16 must be positive"),
    ("stride_zero", _x(), _w(), 16, 0, None, r"compress_stride=0 must be positive"),
    ("block_not_int", _x(), _w(), 16.0, 8, None, r"compress_block_size must be an int, got 16.0"),
    ("seq_empty", _x(), _w(), 16, 8, [], r"actual_seq_len=\[\] is empty"),
    ("seq_decreasing", _x(), _w(), 16, 8, [40, 30, 64], r"non-decreasing.*actual_seq_len\[1\]=30 < actual_seq_len\[0\]=40"),
    ("seq_negative", _x(), _w(), 16, 8, [-4, 64], r"actual_seq_len\[0\]=-4 must be >= 0"),
    ("seq_last_not_T", _x(), _w(), 16, 8, [30, 60], r"actual_seq_len\[-1\]=60 must equal T=input.shape\[0\]=64"),
    ("seq_not_ints", _x(), _w(), 16, 8, [30.0, 64], r"actual_seq_len\[0\]=30.0 must be an int"),
    ("seq_tensor", _x(), _w(), 16, 8, torch.tensor([30, 64]), r"actual_seq_len must be a list of ints"),
    ("empty_T", _x(T=0), _w(), 16, 8, None, r"input is empty .*T must be > 0"),
    ("empty_D", _x(D=0), _w(), 16, 8, None, r"input is empty .*D must be > 0"),
]


@pytest.mark.parametrize("rule", RULES, ids=[r[0] for r in RULES])
def test_eager_error_names_argument_value_and_rule(rule):
    _, x, w, l, d, seq, message = rule
    with pytest.raises(NsaCompressError, match=message):
        nsa_graph.nsa_compress(x, w, l, d, actual_seq_len=seq)


TRACEABLE = [r for r in RULES if r[0] not in ("block_not_int", "seq_not_ints", "seq_tensor")]


@pytest.mark.parametrize("rule", TRACEABLE, ids=[r[0] for r in TRACEABLE])
def test_direct_op_call_validates_in_the_kernel(rule):
    # the registered op, called without the Python wrapper, runs the same checks in its kernel
    _, x, w, l, d, seq, message = rule
    with pytest.raises(NsaCompressError, match=message):
        torch.ops.nsa_graph.nsa_compress(x, w, l, d, actual_seq_len=seq)


TRACE_RULES = [r for r in TRACEABLE if r[0] in
               ("dtype_mismatch", "weight_rows", "weight_heads", "seq_decreasing", "seq_last_not_T", "block_zero")]


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("rule", TRACE_RULES, ids=[r[0] for r in TRACE_RULES])
def test_trace_time_error_names_argument_value_and_rule(rule, dynamic):
    _, x, w, l, d, seq, message = rule
    torch._dynamo.reset()

    def fn(x, w, seq):
        return nsa_graph.nsa_compress(x, w, l, d, actual_seq_len=seq)

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    with pytest.raises(Exception) as info:
        compiled(x, w, seq)
    assert "NsaCompressError" in str(info.value)
    # a symbolic size is shown as "value (symbol)", e.g. "8 (s53)"
    assert re.search(message, re.sub(r" \([su]\d+[^)]*\)", "", str(info.value))), str(info.value)


def test_grad_checks_grad_shape_and_dtype():
    x, w = _x(), _w()
    with pytest.raises(NsaCompressError, match=r"grad.shape\[0\]=5 must be 7"):
        nsa_graph.nsa_compress_grad(torch.randn(5, 2, 8), x, w, 16, 8)
    with pytest.raises(NsaCompressError, match=r"grad.dtype=torch.float64 must equal input.dtype=torch.float32"):
        nsa_graph.nsa_compress_grad(torch.randn(7, 2, 8, dtype=torch.float64), x, w, 16, 8)
    with pytest.raises(NsaCompressError, match=r"grad must be 3-D"):
        nsa_graph.nsa_compress_grad(torch.randn(7, 16), x, w, 16, 8)


# --- the NPU kernel's domain, queryable without an NPU ---------------------------------------------

NPU_RULES = [
    ("fp32", dict(dtype=torch.float32), r"dtype float32 is not fp16/bf16"),
    ("block_not_multiple_of_16", dict(l=24, d=16), r"compress_block_size=24 and compress_stride=16 must both be multiples of 16"),
    ("stride_not_multiple_of_16", dict(l=32, d=8), r"multiples of 16"),
    ("stride_above_block", dict(l=16, d=32), r"compress_stride=32 must be <= compress_block_size=16"),
    ("block_above_128", dict(l=144, d=16), r"compress_block_size=144 must be <= 128"),
    ("too_many_heads", dict(N=129), r"N=129 heads exceeds the NPU kernel's maximum of 128"),
    ("head_dim_not_multiple_of_16", dict(D=24), r"head dim D=24 must be a multiple of 16 and <= 256"),
    ("head_dim_above_256", dict(D=272), r"head dim D=272"),
]


def _npu_case(dtype=torch.bfloat16, l=32, d=16, N=4, D=128, T=64):
    x = torch.empty(T, N, D, dtype=dtype, device="meta")
    w = torch.empty(l, N, dtype=dtype, device="meta")
    return npu_unsupported_reason(x, w, l, d)


@pytest.mark.parametrize("rule", NPU_RULES, ids=[r[0] for r in NPU_RULES])
def test_npu_domain_reason(rule):
    _, overrides, message = rule
    reason = _npu_case(**overrides)
    assert reason is not None and re.search(message, reason), reason


@pytest.mark.parametrize("case", [dict(), dict(dtype=torch.float16, l=16, d=16, N=128, D=256), dict(l=128, d=16, N=1, D=16)])
def test_npu_domain_accepts_supported_cases(case):
    assert _npu_case(**case) is None


def test_npu_domain_refuses_unproven_dynamic_head_dim():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    shape_env = ShapeEnv()
    with FakeTensorMode(shape_env=shape_env):
        head_dim = shape_env.create_unbacked_symint()
        x = torch.empty(64, 4, head_dim, dtype=torch.bfloat16)
        w = torch.empty(32, 4, dtype=torch.bfloat16)
        reason = npu_unsupported_reason(x, w, 32, 16)
    assert reason is not None and "head dim" in reason and "dynamic" in reason
