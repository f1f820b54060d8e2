"""The NsaCompress / NsaCompressGrad GE converters, called on hand-built GE graphs (no compile)."""

import subprocess
import sys

import pytest
import torch
from torchair_fixtures import (  # noqa: F401
    attr_values, const_values, dtype_name, named_inputs, only_node, producer, torchair,
)

# GE matches attributes by name (a map in the GraphDef); the IR's order only matters to positional custom_op
FORWARD_ATTRS = ["layoutOptional", "compressBlockSize", "compressStride", "actSeqLenType"]
GRAD_ATTRS = ["compressBlockSize", "compressStride", "actSeqLenType", "layoutOptional"]


@pytest.fixture
def ge(torchair):
    """A fresh hand-built GE graph (entered) and the pieces to fill it."""
    from torchair.ge import DataType
    from torchair.ge._ge_graph import Data, GeGraph

    from nsa_graph.offline_torchair import ir_problems

    class Builder:
        DT = DataType

        def data(self, index, dtype, shape):
            return Data(index=index, dtype=dtype, shape=shape, placement="NPU")

        problems = staticmethod(ir_problems)

    with GeGraph(name="hand_built") as graph:
        builder = Builder()
        builder.graph = graph._proto
        yield builder


def _convert_forward(ge, x_shape, w_shape, l, d, seq):
    from nsa_graph.converters.nsa_compress import convert_nsa_compress

    x = ge.data(0, ge.DT.DT_BF16, x_shape)
    w = ge.data(1, ge.DT.DT_BF16, w_shape)
    return convert_nsa_compress(x, w, l, d, seq)


def test_forward_static_list_feeds_an_int64_const_and_the_ir_attributes(ge):
    out = _convert_forward(ge, [128, 4, 64], [32, 4], 32, 16, [40, 128])
    node = only_node(ge.graph, "NsaCompress")
    assert out.node is node and out.index == 0
    assert [d.name for d in node.input_desc] == ["input", "weight", "actSeqLenOptional"]
    inputs = named_inputs(node)
    assert producer(ge.graph, inputs["input"]).attr["index"].i == 0
    assert producer(ge.graph, inputs["weight"]).attr["index"].i == 1
    seq = producer(ge.graph, inputs["actSeqLenOptional"])
    assert seq.type == "Const" and dtype_name(seq.output_desc[0]) == "DT_INT64"
    assert const_values(seq) == [40, 128]
    assert sorted(attr_values(node)) == sorted(FORWARD_ATTRS)
    assert attr_values(node) == {"layoutOptional": "TND", "compressBlockSize": 32, "compressStride": 16,
                                 "actSeqLenType": 0}
    assert [d.name for d in node.output_desc] == ["output"]
    assert ge.problems(ge.graph) == []


def test_forward_without_seq_len_uses_one_sequence_of_T_tokens(ge):
    _convert_forward(ge, [96, 4, 64], [32, 4], 32, 16, None)
    node = only_node(ge.graph, "NsaCompress")
    seq = producer(ge.graph, named_inputs(node)["actSeqLenOptional"])
    assert seq.type == "Const" and const_values(seq) == [96]
    assert ge.problems(ge.graph) == []


def test_forward_without_seq_len_and_dynamic_T_reads_T_from_the_shape(ge):
    _convert_forward(ge, [-1, 4, 64], [32, 4], 32, 16, None)
    node = only_node(ge.graph, "NsaCompress")
    gather = producer(ge.graph, named_inputs(node)["actSeqLenOptional"])
    assert gather.type == "Gather"
    shape = producer(ge.graph, gather.input[0])
    index = producer(ge.graph, gather.input[1])
    assert shape.type == "Shape" and shape.input[0] == named_inputs(node)["input"]
    assert shape.attr["dtype"].i == ge.DT.DT_INT64  # int64 end to end: no Cast needed
    assert index.type == "Const" and const_values(index) == [0]  # [T], a 1-D list, not a scalar
    assert ge.problems(ge.graph) == []


def test_forward_packed_symint_list_is_used_as_is_and_cast_only_if_not_int64(ge):
    from torchair.ge import Const

    from nsa_graph.converters.nsa_compress import convert_nsa_compress

    x = ge.data(0, ge.DT.DT_BF16, [-1, 4, 64])
    w = ge.data(1, ge.DT.DT_BF16, [32, 4])
    packed64 = ge.data(2, ge.DT.DT_INT64, [2])  # what torchair passes for a SymInt list (a Pack; any int64 tensor)
    convert_nsa_compress(x, w, 32, 16, packed64)
    first = [op for op in ge.graph.op if op.type == "NsaCompress"][0]
    assert named_inputs(first)["actSeqLenOptional"] == packed64.tensor

    packed32 = Const([40, 128], dtype=ge.DT.DT_INT32)
    convert_nsa_compress(x, w, 32, 16, packed32)
    second = [op for op in ge.graph.op if op.type == "NsaCompress"][1]
    cast = producer(ge.graph, named_inputs(second)["actSeqLenOptional"])
    assert cast.type == "Cast" and cast.input[0] == packed32.tensor
    assert cast.attr["dst_type"].i == ge.DT.DT_INT64
    assert ge.problems(ge.graph) == []


def test_grad_has_its_own_attribute_order_and_two_outputs(ge):
    from nsa_graph.converters.nsa_compress_grad import convert_nsa_compress_grad

    g = ge.data(0, ge.DT.DT_FLOAT16, [5, 4, 64])
    x = ge.data(1, ge.DT.DT_FLOAT16, [128, 4, 64])
    w = ge.data(2, ge.DT.DT_FLOAT16, [32, 4])
    grad_x, grad_w = convert_nsa_compress_grad(g, x, w, 32, 16, [40, 128])
    node = only_node(ge.graph, "NsaCompressGrad")
    assert (grad_x.node, grad_x.index, grad_w.node, grad_w.index) == (node, 0, node, 1)
    assert named_inputs(node) == {"outputGrad": g.tensor, "input": x.tensor, "weight": w.tensor,
                                  "actSeqLenOptional": named_inputs(node)["actSeqLenOptional"]}
    assert const_values(producer(ge.graph, named_inputs(node)["actSeqLenOptional"])) == [40, 128]
    assert sorted(attr_values(node)) == sorted(GRAD_ATTRS)
    assert attr_values(node)["layoutOptional"] == "TND"
    assert [d.name for d in node.output_desc] == ["inputGrad", "weightGrad"]
    assert ge.problems(ge.graph) == []


def _typed_meta(arg):
    from torchair._ge_concrete_graph.supported_declaration import _TypedTensor

    return torch.empty(arg.dims, dtype=arg.dtype, device="meta") if isinstance(arg, _TypedTensor) else arg


def _typed_data(ge, index, arg):
    from torchair._ge_concrete_graph.supported_declaration import _TypedTensor
    from torchair.ge._ge_graph import torch_type_to_ge_type

    if isinstance(arg, _TypedTensor):
        return ge.data(index, torch_type_to_ge_type(arg.dtype), list(arg.dims))
    return arg


GE_TYPES = {"nsa_compress": "NsaCompress", "nsa_compress_grad": "NsaCompressGrad"}


@pytest.mark.parametrize("op_name", ["nsa_compress", "nsa_compress_grad"])
def test_declared_supported_cases_are_valid_calls_that_convert_cleanly(ge, op_name):
    from torchair._ge_concrete_graph.fx2ge_converter import _declare_supported_converters
    from torchair.ge._ge_graph import GeGraph

    op = getattr(torch.ops.nsa_graph, op_name).default
    declared = _declare_supported_converters()
    assert op in declared, f"{op} has no declare_supported cases"
    cases = declared[op].supported_cases
    assert len(cases) >= 3
    converter = op._ge_converter
    for case in cases:
        # the op's own fake impl accepts the case (shapes are consistent with the contract) ...
        op(*[_typed_meta(a) for a in case.args], **case.kwargs)
        # ... and the converter builds a node that satisfies the IR
        with GeGraph(name="case") as graph:
            args = [_typed_data(ge, i, a) for i, a in enumerate(case.args)]
            converter(*args, **case.kwargs)
            assert ge.problems(graph._proto) == [], case
            assert [op.type for op in graph.op].count(GE_TYPES[op_name]) == 1


def test_register_is_idempotent(torchair):
    from nsa_graph import converters

    op = torch.ops.nsa_graph.nsa_compress.default
    first = op._ge_converter
    assert converters.register() is True
    assert converters.register() is True
    assert op._ge_converter is first
    assert torch.ops.nsa_graph.nsa_compress_grad.default._ge_converter is not None


def test_importing_nsa_graph_never_imports_torchair_or_torch_npu():
    code = (
        "import sys, nsa_graph; from nsa_graph import converters;"
        "assert converters.register() is False;"
        "assert not hasattr(__import__('torch').ops.nsa_graph.nsa_compress.default, '_ge_converter');"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchair', 'torch_npu')))"
    )
    env = {"TORCH_DEVICE_BACKEND_AUTOLOAD": "0", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
