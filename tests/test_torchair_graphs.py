"""torch.compile with torchair's backend (max-autotune): the GE graphs handed to GE, forward and backward."""

import pytest
import torch
from torchair_fixtures import (  # noqa: F401
    attr_values, const_values, dtype_name, ge_recorder, named_inputs, nodes_of, npu_backend, only_node, producer,
    torchair,
)

import nsa_graph
from nsa_graph.contract import NsaCompressError

L, D = 32, 16


def _data_with_shape(graph, shape):
    found = [op for op in graph.op if op.type == "Data" and list(op.output_desc[0].shape.dim) == shape]
    assert len(found) == 1, f"expected one Data of shape {shape}: {[op.name for op in found]}"
    return found[0]


def _compile_expecting_no_runtime(ota, fn, *args, **compile_kwargs):
    with pytest.raises(ota.GeRuntimeUnavailable, match="no GE runtime here"):
        fn(*args)
    graphs = ota.recorded_graphs("load")
    assert len(graphs) == 1
    assert ota.ir_problems(graphs[0]) == []
    return graphs[0]


@pytest.mark.parametrize("dtype,ge_dtype", [(torch.bfloat16, "DT_BF16"), (torch.float16, "DT_FLOAT16")])
def test_inference_graph_feeds_nsa_compress_from_data_and_an_int64_const(ge_recorder, npu_backend, dtype, ge_dtype):
    def f(kv, w):
        return nsa_graph.nsa_compress(kv, w, L, D, actual_seq_len=[40, 128]) * 2

    kv, w = torch.randn(128, 4, 64, dtype=dtype), torch.randn(L, 4, dtype=dtype)
    graph = _compile_expecting_no_runtime(ge_recorder, torch.compile(f, backend=npu_backend), kv, w)
    node = only_node(graph, "NsaCompress")
    inputs = named_inputs(node)
    assert list(inputs) == ["input", "weight", "actSeqLenOptional"]
    assert inputs["input"] == _data_with_shape(graph, [128, 4, 64]).name + ":0"
    assert inputs["weight"] == _data_with_shape(graph, [L, 4]).name + ":0"
    seq = producer(graph, inputs["actSeqLenOptional"])
    assert seq.type == "Const" and dtype_name(seq.output_desc[0]) == "DT_INT64" and const_values(seq) == [40, 128]
    assert attr_values(node) == {"layoutOptional": "TND", "compressBlockSize": L, "compressStride": D,
                                 "actSeqLenType": 0}
    assert [(d.name, dtype_name(d)) for d in node.output_desc] == [("output", ge_dtype)]
    # the multiply consumes the op's output; nothing of the op was decomposed
    assert any(ref == f"{node.name}:0" for op in graph.op if op.type != "NsaCompress" for ref in op.input)


class _Compressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(L, 4, dtype=torch.bfloat16) / L)

    def forward(self, kv):
        return torch.tanh(nsa_graph.nsa_compress(kv, self.weight, L, D)) * 0.5


def test_training_graphs_have_nsa_compress_forward_and_nsa_compress_grad_backward(ge_recorder, npu_backend):
    torch.manual_seed(0)
    model = _Compressor()
    kv = torch.randn(96, 4, 64, dtype=torch.bfloat16, requires_grad=True)
    compiled = torch.compile(model, backend=npu_backend)
    with ge_recorder.eager_fallback():
        compiled(kv).float().sum().backward()
    forward, backward = ge_recorder.recorded_graphs("load")
    assert [ge_recorder.ir_problems(g) for g in (forward, backward)] == [[], []]

    fwd = only_node(forward, "NsaCompress")
    assert named_inputs(fwd)["input"] == _data_with_shape(forward, [96, 4, 64]).name + ":0"
    assert const_values(producer(forward, named_inputs(fwd)["actSeqLenOptional"])) == [96]
    assert not nodes_of(forward, "NsaCompressGrad")

    bwd = only_node(backward, "NsaCompressGrad")
    inputs = named_inputs(bwd)
    assert list(inputs) == ["outputGrad", "input", "weight", "actSeqLenOptional"]
    assert inputs["input"] == _data_with_shape(backward, [96, 4, 64]).name + ":0"
    assert inputs["weight"] == _data_with_shape(backward, [L, 4]).name + ":0"
    assert producer(backward, inputs["outputGrad"]).type == "TanhGrad"  # the chain rule reached the op's grad
    assert const_values(producer(backward, inputs["actSeqLenOptional"])) == [96]
    assert attr_values(bwd) == {"compressBlockSize": L, "compressStride": D, "actSeqLenType": 0,
                                "layoutOptional": "TND"}
    assert [(d.name, dtype_name(d)) for d in bwd.output_desc] == [("inputGrad", "DT_BF16"), ("weightGrad", "DT_BF16")]
    net_output = only_node(backward, "NetOutput")
    assert sorted(net_output.input) == sorted([f"{bwd.name}:0", f"{bwd.name}:1"])
    assert not nodes_of(backward, "NsaCompress")

    # the eager fallback ran the converted FX graphs: gradients are the eager model's
    eager_kv = kv.detach().clone().requires_grad_()
    model.weight.grad, compiled_w_grad = None, model.weight.grad
    model(eager_kv).float().sum().backward()
    torch.testing.assert_close(kv.grad, eager_kv.grad)
    torch.testing.assert_close(compiled_w_grad, model.weight.grad)


def test_dynamic_tokens_give_minus_one_dims_and_T_from_the_shape(ge_recorder, npu_backend):
    def f(kv, w):
        return nsa_graph.nsa_compress(kv, w, L, D) + 1

    kv, w = torch.randn(96, 4, 64, dtype=torch.bfloat16), torch.randn(L, 4, dtype=torch.bfloat16)
    torch._dynamo.mark_dynamic(kv, 0)
    graph = _compile_expecting_no_runtime(ge_recorder, torch.compile(f, backend=npu_backend), kv, w)
    node = only_node(graph, "NsaCompress")
    assert named_inputs(node)["input"] == _data_with_shape(graph, [-1, 4, 64]).name + ":0"
    seq = producer(graph, named_inputs(node)["actSeqLenOptional"])
    assert seq.type == "Gather" and producer(graph, seq.input[0]).type == "Shape"


def test_symint_seq_len_list_arrives_packed_as_int64(ge_recorder, npu_backend):
    def f(kv, w):
        tokens = kv.shape[0]
        return nsa_graph.nsa_compress(kv, w, L, D, actual_seq_len=[tokens // 2, tokens])

    kv, w = torch.randn(128, 4, 64, dtype=torch.bfloat16), torch.randn(L, 4, dtype=torch.bfloat16)
    torch._dynamo.mark_dynamic(kv, 0)
    graph = _compile_expecting_no_runtime(ge_recorder, torch.compile(f, backend=npu_backend), kv, w)
    pack = producer(graph, named_inputs(only_node(graph, "NsaCompress"))["actSeqLenOptional"])
    assert pack.type == "Pack" and pack.attr["N"].i == 2
    assert dtype_name(pack.output_desc[0]) == "DT_INT64"
    assert producer(graph, pack.input[1]).type == "Gather"  # T itself, read from kv's shape


def test_dynamo_export_writes_its_files_and_records_the_graph(ge_recorder, tmp_path, torchair):
    model = _Compressor()
    kv = torch.randn(96, 4, 64, dtype=torch.bfloat16)
    with pytest.raises(ge_recorder.GeRuntimeUnavailable, match="air"):
        torchair.dynamo_export(kv, model=model, export_path=str(tmp_path), export_name="nsa")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dynamo.pbtxt", "options.json"]
    assert "NsaCompress" in (tmp_path / "dynamo.pbtxt").read_text()
    (graph,) = ge_recorder.recorded_graphs("export")
    node = only_node(graph, "NsaCompress")
    assert producer(graph, named_inputs(node)["weight"]).type == "Const"  # export freezes the parameter
    assert ge_recorder.ir_problems(graph) == []


def test_a_wrong_converter_fails_the_ir_check_at_the_ge_boundary(ge_recorder, npu_backend, monkeypatch):
    from torchair._ge_concrete_graph.fx2ge_converter import register_fx_node_ge_converter
    from torchair.ge import Const, DataType, attr, custom_op

    op = torch.ops.nsa_graph.nsa_compress.default
    monkeypatch.setattr(op, "_ge_converter", op._ge_converter)  # restored after the test

    @register_fx_node_ge_converter(op)
    def snake_case_converter(input, weight, compress_block_size, compress_stride, actual_seq_len=None):
        # torch_npu's argument names instead of the IR's, and a float stride: custom_op accepts all of it
        return custom_op(
            "NsaCompress",
            inputs={"input": input, "weight": weight,
                    "act_seq_len": Const([input.symsize[0]], dtype=DataType.DT_INT64)},
            attrs={"compress_block_size": attr.Int(compress_block_size),
                   "compressStride": attr.Float(float(compress_stride)), "actSeqLenType": attr.Int(0)},
            outputs=["output"],
        )

    compiled = torch.compile(lambda kv, w: nsa_graph.nsa_compress(kv, w, L, D), backend=npu_backend)
    with pytest.raises(ge_recorder.GeIrError) as info:
        compiled(torch.randn(64, 4, 64, dtype=torch.bfloat16), torch.randn(L, 4, dtype=torch.bfloat16))
    message = str(info.value)
    assert "input 'act_seq_len' is not an input of the IR" in message
    assert "input 'actSeqLenOptional' is not fed" in message
    assert "attribute 'compress_block_size' is not an attribute of NsaCompress" in message
    assert "attribute 'compressStride' holds a 'f' value, the IR declares VT_INT" in message
    assert "required attribute 'compressBlockSize' is missing" in message
    (graph,) = ge_recorder.recorded_graphs("load")  # recorded before it was refused
    assert len(ge_recorder.ir_problems(graph)) == 5


TORCH_NPU_SCHEMAS = {  # torch_npu 2.13.0, npu_native_functions_by_codegen.yaml
    "npu_nsa_compress": "npu_nsa_compress(Tensor input, Tensor weight, int compress_block_size, "
                        "int compress_stride, *, int[]? actual_seq_len=None) -> Tensor",
    "npu_nsa_compress_grad": "npu_nsa_compress_grad(Tensor grad, Tensor input, Tensor weight, "
                             "int compress_block_size, int compress_stride, *, int[]? actual_seq_len=None) "
                             "-> (Tensor, Tensor)",
}


@pytest.fixture
def torch_npu_schemas(torchair):
    """torch_npu's two op schemas, as torch_npu defines them (no kernels), for the life of one test."""
    if hasattr(torch.ops.npu, "npu_nsa_compress"):
        pytest.skip("torch_npu's ops are really defined here")
    lib = torch.library.Library("npu", "FRAGMENT")
    for schema in TORCH_NPU_SCHEMAS.values():
        lib.define(schema)
    try:
        yield
    finally:
        lib._destroy()


def test_torch_npu_ops_get_fake_impls_and_the_same_lowering(ge_recorder, npu_backend, torch_npu_schemas):
    from nsa_graph import converters

    assert converters.register()
    forward, grad = torch.ops.npu.npu_nsa_compress.default, torch.ops.npu.npu_nsa_compress_grad.default
    assert callable(forward._ge_converter) and callable(grad._ge_converter)

    kv = torch.empty(128, 4, 64, dtype=torch.float16, device="meta")
    w = torch.empty(L, 4, dtype=torch.float16, device="meta")
    assert forward(kv, w, L, D, actual_seq_len=[40, 128]).shape == (5, 4, 64)
    with pytest.raises(NsaCompressError, match="actual_seq_len=None is rejected by torch_npu"):
        forward(kv, w, L, D)

    def f(kv, w):
        out = torch.ops.npu.npu_nsa_compress(kv, w, L, D, actual_seq_len=[40, 128])
        return out, torch.ops.npu.npu_nsa_compress_grad(out, kv, w, L, D, actual_seq_len=[40, 128])

    kv, w = torch.randn(128, 4, 64, dtype=torch.float16), torch.randn(L, 4, dtype=torch.float16)
    graph = _compile_expecting_no_runtime(ge_recorder, torch.compile(f, backend=npu_backend), kv, w)
    fwd, bwd = only_node(graph, "NsaCompress"), only_node(graph, "NsaCompressGrad")
    assert named_inputs(bwd)["outputGrad"] == f"{fwd.name}:0"
    for node in (fwd, bwd):
        assert const_values(producer(graph, named_inputs(node)["actSeqLenOptional"])) == [40, 128]


# --- on a real Ascend NPU (skipped elsewhere by conftest) -----------------------------------------------------


@pytest.mark.npu
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_npu_compiled_forward_and_backward_match_the_cpu_kernels(torchair, npu_backend, dtype, tol):
    torch.manual_seed(0)
    seq = [40, 144]
    kv = torch.randn(144, 4, 128, dtype=dtype)
    w = torch.rand(L, 4, dtype=dtype) / L

    def f(kv, w):
        return nsa_graph.nsa_compress(kv, w, L, D, actual_seq_len=seq)

    kv_cpu, w_cpu = kv.clone().requires_grad_(), w.clone().requires_grad_()
    expected = f(kv_cpu, w_cpu)  # CPU kernels: 1 + 5 windows
    grad_out = torch.randn_like(expected)
    expected.backward(grad_out)

    kv_npu, w_npu = kv.npu().requires_grad_(), w.npu().requires_grad_()
    got = torch.compile(f, backend=npu_backend)(kv_npu, w_npu)
    got.backward(grad_out.npu())
    for name, actual, reference in (("output", got, expected), ("grad input", kv_npu.grad, kv_cpu.grad),
                                    ("grad weight", w_npu.grad, w_cpu.grad)):
        torch.testing.assert_close(actual.cpu(), reference, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.npu
def test_npu_compiled_torch_npu_op_matches_the_cpu_kernel(torchair, npu_backend):
    import torch_npu

    torch.manual_seed(0)
    kv = torch.randn(144, 4, 128, dtype=torch.float16)
    w = torch.rand(L, 4, dtype=torch.float16) / L
    expected = nsa_graph.nsa_compress(kv, w, L, D, actual_seq_len=[40, 144])

    def f(kv, w):
        return torch_npu.npu_nsa_compress(kv, w, L, D, actual_seq_len=[40, 144])

    got = torch.compile(f, backend=npu_backend)(kv.npu(), w.npu())
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype,head_dim,reason", [
    (torch.float32, 64, "dtype float32 is not fp16/bf16"),
    (torch.float16, 72, "head dim D=72 must be a multiple of 16"),
])
def test_cases_outside_the_npu_kernels_domain_fail_the_compile_clearly(ge_recorder, npu_backend, dtype, head_dim,
                                                                        reason):
    compiled = torch.compile(lambda kv, w: nsa_graph.nsa_compress(kv, w, L, D), backend=npu_backend)
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match=reason) as info:
        compiled(torch.randn(64, 4, head_dim, dtype=dtype), torch.randn(L, 4, dtype=dtype))
    assert "cannot lower to GE NsaCompress" in str(info.value)
    assert ge_recorder.recorded_graphs() == []  # refused while building the graph, before GE
