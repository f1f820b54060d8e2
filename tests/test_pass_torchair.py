"""Unfused user code through nsa_graph.backend(inner=torchair backend): GE graphs hold NsaCompress(Grad)."""

import pytest
import torch
from torchair_fixtures import ge_recorder, named_inputs, nodes_of, npu_backend, only_node, torchair  # noqa: F401

import nsa_graph
from nsa_graph.passes import collecting
from pass_helpers import strict_pass  # noqa: F401 (autouse fixture)

B, S, N, D, L, STRIDE = 2, 96, 4, 64, 32, 16


class NaturalCompressor(torch.nn.Module):
    """NSA key compression as public code writes it: unfold + einsum with a [N, l] weight, BSND."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(N, L, dtype=torch.bfloat16) / L)

    def forward(self, k):
        return torch.einsum("bwndl,nl->bwnd", k.unfold(1, L, STRIDE), self.weight) * 0.5


def _types(graph):
    return {op.type for op in graph.op}


def test_inference_graph_has_nsa_compress_and_no_window_ops(ge_recorder, npu_backend):
    k = torch.randn(B, S, N, D, dtype=torch.bfloat16)
    with collecting() as report, torch.no_grad():
        compiled = torch.compile(NaturalCompressor(), backend=nsa_graph.backend(inner=npu_backend))
        with pytest.raises(ge_recorder.GeRuntimeUnavailable):
            compiled(k)
    assert len(report.fused) == 1, str(report)
    (graph,) = ge_recorder.recorded_graphs("load")
    assert ge_recorder.ir_problems(graph) == []
    node = only_node(graph, "NsaCompress")
    assert len(named_inputs(node)) == 3
    types = _types(graph)
    assert not types & {"BatchMatMul", "BatchMatMulV2", "ReduceSum", "Im2col", "StridedSlice"}, types


def test_training_graphs_have_nsa_compress_grad_and_match_eager(ge_recorder, npu_backend):
    torch.manual_seed(0)
    model = NaturalCompressor()
    k = torch.randn(B, S, N, D, dtype=torch.bfloat16, requires_grad=True)
    compiled = torch.compile(model, backend=nsa_graph.backend(inner=npu_backend))
    with collecting() as report, ge_recorder.eager_fallback():
        compiled(k).float().sum().backward()
    assert len(report.fused) == 1, str(report)
    forward, backward = ge_recorder.recorded_graphs("load")
    assert [ge_recorder.ir_problems(g) for g in (forward, backward)] == [[], []]
    only_node(forward, "NsaCompress")
    only_node(backward, "NsaCompressGrad")
    assert not nodes_of(backward, "NsaCompress") and not nodes_of(forward, "NsaCompressGrad")
    assert not _types(backward) & {"BatchMatMul", "BatchMatMulV2", "ScatterNd", "IndexPutV2"}, _types(backward)
    # the eager fallback ran the fused graphs: gradients are the unfused eager model's
    compiled_grads = k.grad, model.weight.grad
    k2 = k.detach().clone().requires_grad_()
    model.weight.grad = None
    model(k2).float().sum().backward()
    torch.testing.assert_close(compiled_grads[0].float(), k2.grad.float(), rtol=2**-7, atol=2**-7)
    torch.testing.assert_close(compiled_grads[1].float(), model.weight.grad.float(), rtol=2**-6, atol=2**-6)


def test_outside_the_npu_domain_is_left_alone_and_reported(ge_recorder, npu_backend):
    # without fusion, torchair cannot compile the window spelling at all (no GE converter for unfold), so
    # what the report says is what the user needs: which case, where, and why it was not fused
    def f(k, w):  # l = 24 is not a multiple of 16
        return (k.unfold(1, 24, 16) * w.t()[None, None, :, None, :]).sum(-1)

    k, w = torch.randn(1, 64, 2, 16, dtype=torch.bfloat16), torch.randn(24, 2, dtype=torch.bfloat16)
    with collecting() as report, pytest.raises(Exception, match="unfold.default ge_converter is not implemented"):
        torch.compile(f, backend=nsa_graph.backend(inner=npu_backend))(k, w)
    assert not report.fused and "multiples of 16" in report.unfused[0].reason
    assert "test_pass_torchair.py" in report.unfused[0].location


def test_the_same_model_without_the_pass_does_not_compile(ge_recorder, npu_backend):
    with torch.no_grad(), pytest.raises(Exception, match="unfold.default ge_converter is not implemented"):
        torch.compile(NaturalCompressor(), backend=npu_backend)(torch.randn(B, S, N, D, dtype=torch.bfloat16))
