"""``nsa-graph dump-ge``: the GE graphs of a compiled model, printed."""

import re
from pathlib import Path

import pytest
from torchair_fixtures import ge_recorder, torchair  # noqa: F401

from nsa_graph.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dump_ge_model.py"


def _sections(out):
    """{section title: listing} of dump-ge's output."""
    parts = re.split(r"^== (.+) ==$", out, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_default_training_step_prints_forward_and_backward(ge_recorder, capsys):
    assert main(["dump-ge"]) == 0
    sections = _sections(capsys.readouterr().out)
    assert list(sections) == ["forward", "backward"]
    forward, backward = sections["forward"], sections["backward"]
    assert re.search(r"NsaCompress = NsaCompress\(input=primals_\d:0, weight=primals_\d:0, actSeqLenOptional="
                     r"Const:0; layoutOptional='TND', compressBlockSize=32, compressStride=16, actSeqLenType=0\)"
                     r" -> output: bf16", forward)
    assert "Const = Const(value=[96]) -> int64[1]" in forward
    assert "NsaCompressGrad" not in forward
    assert re.search(r"NsaCompressGrad = NsaCompressGrad\(outputGrad=TanhGrad:0, input=primals_\d:0, "
                     r"weight=primals_\d:0, actSeqLenOptional=Const:0; compressBlockSize=32, compressStride=16, "
                     r"actSeqLenType=0, layoutOptional='TND'\) -> inputGrad: bf16\[\], weightGrad: bf16\[\]", backward)


def test_inference_dynamic_with_torchairs_own_txt_dump(ge_recorder, capsys, tmp_path):
    assert main(["dump-ge", "--inference", "--dynamic", "--txt-dump", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    sections = _sections(out)
    assert list(sections) == ["graph 0"]
    assert re.search(r"= Data\(index=\d\) -> y: bf16\[-1,4,-1\]", sections["graph 0"])
    assert "Gather = Gather(x=Shape:0, indices=Const:0" in sections["graph 0"]
    dumps = sorted(p.name for p in tmp_path.glob("*.txt"))
    assert [name.split("_graph_")[0] for name in dumps] == ["dynamo_optimized", "dynamo_original"]
    assert all(f"torchair dump: {tmp_path / name}" in out for name in dumps)
    # torchair's own dump of the graph it is about to load is the graph recorded at the load boundary
    from google.protobuf import text_format
    from torchair._ge_concrete_graph import ge_ir_pb2

    dumped = text_format.Parse((tmp_path / dumps[0]).read_text(), ge_ir_pb2.GraphDef())
    (recorded,) = ge_recorder.recorded_graphs()
    assert recorded == dumped


def test_a_users_module_from_path_and_callable(ge_recorder, capsys):
    assert main(["dump-ge", f"{EXAMPLE}:build"]) == 0
    sections = _sections(capsys.readouterr().out)
    assert sections["forward"].count("= NsaCompress(") == 2
    assert sections["backward"].count("= NsaCompressGrad(") == 2
    assert sections["forward"].count("Const(value=[40, 128]) -> int64[2]") == 2
    assert "float16[128,4,64]" in sections["forward"]


@pytest.mark.parametrize("spec,error", [
    ("no_such_file.py:build", FileNotFoundError),
    (f"{EXAMPLE}:missing", AttributeError),
    (f"{EXAMPLE}", ValueError),
])
def test_bad_model_specs_say_what_is_wrong(spec, error):
    with pytest.raises(error, match="model="):
        main(["dump-ge", spec])
