"""The offline torchair: fetching, loading over the GE stand-in, recording, the IR check, the CLI."""

import sys
import zipfile

import pytest
import torch
from torchair_fixtures import torchair  # noqa: F401

from nsa_graph import offline_torchair as ota
from nsa_graph.offline_torchair import _fetch, _loader, _stand_in

NSA_COMPRESS_IR = (  # ops-transformer attention/nsa_compress/op_host/nsa_compress_def.cpp
    "SUCCESS",
    [("input", "required"), ("weight", "required"), ("actSeqLenOptional", "optional")],
    [("output", "required")],
    [("layoutOptional", "VT_STRING"), ("compressBlockSize", "VT_INT"), ("compressStride", "VT_INT"),
     ("actSeqLenType", "VT_INT")],
)
NSA_COMPRESS_GRAD_IR = (  # .../nsa_compress_grad/op_host/nsa_compress_grad_def.cpp: layout is the last attribute
    "SUCCESS",
    [("outputGrad", "required"), ("input", "required"), ("weight", "required"), ("actSeqLenOptional", "optional")],
    [("inputGrad", "required"), ("weightGrad", "required")],
    [("compressBlockSize", "VT_INT"), ("compressStride", "VT_INT"), ("actSeqLenType", "VT_INT"),
     ("layoutOptional", "VT_STRING")],
)


@pytest.fixture
def offline(torchair):
    if not ota.is_offline():
        pytest.skip("the real torchair is in use (torch_npu works)")
    ota.clear_recorded()
    yield torchair
    ota.clear_recorded()


def test_the_fetched_torchair_is_loaded_over_the_stand_in_only(offline):
    assert offline.__file__ == str(ota.torchair_dir() / "__init__.py")
    assert ota.load_torchair() is offline  # idempotent
    stand_in = sys.modules["torchair.core._torchair"]
    assert stand_in.TorchNpuGraphBase is _stand_in.TorchNpuGraphBase
    from torchair.core._backend import TorchNpuGraph

    assert issubclass(TorchNpuGraph, _stand_in.TorchNpuGraphBase)  # torchair's own class, over the stand-in
    assert not [m for m in sys.modules if m.split(".")[0] == "torch_npu"]
    assert not list(ota.torchair_dir().rglob("*.so"))  # nothing native from the wheel is even on disk
    assert len(list(ota.torchair_dir().rglob("*.py"))) > 500


def test_ir_queries_answer_with_the_real_prototypes(offline):
    from torchair.core import _torchair

    assert _torchair.get_registered_ir_def("NsaCompress") == NSA_COMPRESS_IR
    assert _torchair.get_registered_ir_def("NsaCompressGrad") == NSA_COMPRESS_GRAD_IR
    assert _torchair.get_registered_ir_def("NoSuchOp")[0] == "ERROR"
    assert _torchair.check_cann_compat("NsaCompress", ("actSeqLenOptional",), ("layoutOptional",)) == ""
    assert "act_seq_len" in _torchair.check_cann_compat("NsaCompress", ("act_seq_len",), ())
    from torchair.ge import custom_op

    with pytest.raises(RuntimeError, match="NoSuchOp"):
        custom_op("NoSuchOp", inputs={}, outputs=["y"])


def _hand_built_graph(x_dtype=None, seq=(40, 128)):
    from torchair.ge import DataType
    from torchair.ge._ge_graph import Data, GeGraph

    from nsa_graph.converters.nsa_compress import convert_nsa_compress

    graph = GeGraph(name="hand_built")
    with graph:
        x_dtype = DataType.DT_BF16 if x_dtype is None else x_dtype  # DT_FLOAT is 0
        x = Data(index=0, dtype=x_dtype, shape=[128, 4, 64], placement="NPU")
        w = Data(index=1, dtype=DataType.DT_BF16, shape=[32, 4], placement="NPU")
        convert_nsa_compress(x, w, 32, 16, list(seq))
    return graph


def test_load_records_the_graph_then_compile_and_run_need_cann(offline):
    graph = _hand_built_graph()
    graph.load({})
    (recorded,) = ota.recorded_graphs("load")
    assert recorded == graph._proto
    with pytest.raises(ota.GeRuntimeUnavailable, match="compiling GE graph 'hand_built' needs CANN"):
        graph.compile()
    with pytest.raises(ota.GeRuntimeUnavailable, match="running GE graph"):
        graph.run([])
    listing = ota.describe_graph(recorded)
    assert "NsaCompress = NsaCompress(input=Data:0, weight=Data_1:0, actSeqLenOptional=Const:0; " \
           "layoutOptional='TND', compressBlockSize=32, compressStride=16, actSeqLenType=0)" in listing
    assert "Const = Const(value=[40, 128]) -> int64[2]" in listing
    assert "Data = Data(index=0) -> y: bf16[128,4,64]" in listing
    ota.clear_recorded()
    assert ota.recorded_graphs() == []


def test_the_ir_check_reports_wrong_dtypes_unfed_inputs_and_dangling_edges(offline):
    from torchair.ge import DataType

    graph = _hand_built_graph(x_dtype=DataType.DT_FLOAT)._proto
    node = next(op for op in graph.op if op.type == "NsaCompress")
    assert ota.ir_problems(graph) == [
        "NsaCompress node 'NsaCompress': input 'input' has dtype DT_FLOAT, the IR accepts ['DT_FLOAT16', 'DT_BF16']"]
    node.input[2] = ""  # actSeqLenOptional unfed: optional in the IR, but InferShape reads it
    node.input[1] = "Missing:0"
    del node.output_desc[:]
    problems = ota.ir_problems(graph)
    assert "node 'NsaCompress' (NsaCompress) reads 'Missing:0': no node named 'Missing' in the graph" in problems
    assert ("NsaCompress node 'NsaCompress': input 'actSeqLenOptional' is not fed (read unconditionally by the "
            "op's InferShape)") in problems
    assert "NsaCompress node 'NsaCompress': required output 'output' is missing" in problems
    with pytest.raises(ota.GeIrError, match="breaks the IR prototypes"):
        _stand_in.TorchNpuGraphBase("bad").load(_wrap(graph), {}, [], [], 0)
    assert ota.recorded_graphs()[-1] == graph  # recorded before it was refused


def _wrap(graph_def):
    from torchair._ge_concrete_graph import ge_ir_pb2

    model = ge_ir_pb2.ModelDef()
    model.graph.add().CopyFrom(graph_def)
    return model.SerializeToString()


def _fake_wheel(path, with_torchair=True):
    with zipfile.ZipFile(path, "w") as zf:
        if with_torchair:
            zf.writestr("torch_npu/dynamo/torchair/__init__.py", "VALUE = 1\n")
            zf.writestr("torch_npu/dynamo/torchair/core/_torchair.so", b"\x7fELF")
            zf.writestr("torch_npu/dynamo/torchair/core/utils.py", "")
        zf.writestr("torch_npu/__init__.py", "")
    return path


def test_fetch_extracts_only_torchair_python_from_the_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("NSA_GRAPH_CACHE", str(tmp_path / "cache"))
    wheel = _fake_wheel(tmp_path / "torch_npu-9.9.9-cp311-cp311-manylinux_2_28_x86_64.whl")
    assert not _fetch.is_fetched("9.9.9")
    target = _fetch.fetch(version="9.9.9", wheel=wheel)
    assert target == tmp_path / "cache" / "torchair-9.9.9" / "torchair"
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == [
        "__init__.py", "core/utils.py"]
    assert _fetch.is_fetched("9.9.9")
    assert _fetch.fetch(version="9.9.9") == target  # cached: no download

    with pytest.raises(ValueError, match="is not torch_npu 1.0.0"):
        _fetch.fetch(version="1.0.0", wheel=wheel)
    empty = _fake_wheel(tmp_path / "torch_npu-1.0.0-cp311-none-any.whl", with_torchair=False)
    with pytest.raises(RuntimeError, match="has no torch_npu/dynamo/torchair/__init__.py"):
        _fetch.fetch(version="1.0.0", wheel=empty)
    assert not _fetch.is_fetched("1.0.0")


def test_the_version_fetched_is_torchs_without_its_local_suffix():
    assert _fetch.torch_npu_version() == torch.__version__.split("+")[0]
    assert "+" not in _fetch.torch_npu_version()


def test_loading_without_a_fetch_names_the_command_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("NSA_GRAPH_CACHE", str(tmp_path))
    with pytest.raises(ota.TorchairNotFetched, match="run `nsa-graph fetch-torchair`"):
        _loader._load_offline(fetch=False)


def test_fetch_torchair_command(offline, capsys):
    from nsa_graph.cli import main

    assert main(["fetch-torchair", "--check"]) == 0
    out = capsys.readouterr().out
    assert f"ready at {ota.torchair_dir()}" in out
    assert "(offline)" in out
    assert str(NSA_COMPRESS_GRAD_IR) in out


def test_loading_keeps_the_processs_signal_handlers(offline):
    import subprocess

    # in a fresh process: pytest's own handlers are not the point (torchair's would swallow Ctrl-C/SIGTERM)
    code = ("import signal, nsa_graph.offline_torchair as o; before = signal.getsignal(signal.SIGINT);"
            "o.load_torchair(); assert signal.getsignal(signal.SIGINT) is before;"
            "assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL; print('ok')")
    env = {"TORCH_DEVICE_BACKEND_AUTOLOAD": "0", "NSA_GRAPH_CACHE": str(_fetch.cache_dir()), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_torchairs_positional_custom_op_follows_the_served_ir_order(offline):
    from torchair.ge import DataType, custom_op
    from torchair.ge._ge_graph import Const, Data, GeGraph

    with GeGraph(name="positional") as graph:
        g = Data(index=0, dtype=DataType.DT_BF16, shape=[5, 4, 64], placement="NPU")
        x = Data(index=1, dtype=DataType.DT_BF16, shape=[128, 4, 64], placement="NPU")
        w = Data(index=2, dtype=DataType.DT_BF16, shape=[32, 4], placement="NPU")
        seq = Const([40, 128], dtype=DataType.DT_INT64)
        custom_op("NsaCompressGrad", g, x, w, seq, 32, 16, 0, "TND")  # IR order: layout is the last attribute
    node = next(op for op in graph.op if op.type == "NsaCompressGrad")
    assert [d.name for d in node.input_desc] == ["outputGrad", "input", "weight", "actSeqLenOptional"]
    assert {k: node.attr[k].WhichOneof("value") for k in node.attr if not k.startswith("_")} == {
        "compressBlockSize": "i", "compressStride": "i", "actSeqLenType": "i", "layoutOptional": "s"}
    assert node.attr["layoutOptional"].s == b"TND" and node.attr["compressStride"].i == 16
    assert [d.name for d in node.output_desc] == ["inputGrad", "weightGrad"]
    assert ota.ir_problems(graph._proto) == []
