"""Fixtures for tests that run torchair; import the ones a test module needs from here.

torchair is the offline copy (fetched from the torch_npu wheel on first use, so these tests never skip
for lack of it) or, where torch_npu works, the real one.
"""

import os

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def torchair():
    from nsa_graph import offline_torchair

    return offline_torchair.load_torchair(fetch=True)


@pytest.fixture
def ge_recorder(torchair):
    """``nsa_graph.offline_torchair`` with an empty recording and fresh dynamo caches (new compiles)."""
    from nsa_graph import offline_torchair as ota

    if not ota.is_offline():
        pytest.skip("the real torchair is in use (torch_npu works): graphs go to GE itself; see the npu tests")
    torch._dynamo.reset()
    ota.clear_recorded()
    yield ota
    ota.clear_recorded()


@pytest.fixture
def npu_backend(torchair):
    """torchair's backend in max-autotune mode (the default): every FX node must become a GE node."""
    return torchair.get_npu_backend(compiler_config=torchair.CompilerConfig())


# --- reading GE graphs ----------------------------------------------------------------------------------------


def nodes_of(graph, op_type):
    return [op for op in graph.op if op.type == op_type]


def only_node(graph, op_type):
    found = nodes_of(graph, op_type)
    assert len(found) == 1, f"expected one {op_type} in {graph.name}, found {[op.name for op in found]}"
    return found[0]


def producer(graph, ref):
    """The node that produces tensor ``ref`` (``name:index``)."""
    name = ref.rpartition(":")[0]
    return next(op for op in graph.op if op.name == name)


def named_inputs(op):
    """``{input name: producer ref}`` of a GE node."""
    return {desc.name: ref for desc, ref in zip(op.input_desc, op.input)}


def attr_values(op):
    """IR attributes (no ``_`` bookkeeping) as Python values."""
    out = {}
    for name in op.attr:
        if name.startswith("_"):
            continue
        value = op.attr[name]
        kind = value.WhichOneof("value")
        out[name] = value.s.decode() if kind == "s" else getattr(value, kind)
    return out


def const_values(op):
    """The int64 values of a GE Const node."""
    import numpy as np

    tensor = op.attr["value"].t
    return np.frombuffer(tensor.data, dtype="<i8").tolist()


def dtype_name(desc):
    from torchair._ge_concrete_graph import ge_ir_pb2

    return ge_ir_pb2.DataType.Name(desc.dtype)
