"""The fusion report: nsa_graph.explain, logging, counters and ``nsa-graph explain``."""

from __future__ import annotations

import textwrap

import torch
from torch._dynamo.utils import counters

import nsa_graph
from nsa_graph.cli import main
from pass_helpers import strict_pass  # noqa: F401 (autouse fixture)


def two_candidates(k, w):
    fused = (k.unfold(1, 16, 8) * w.t()[None, None, :, None, :]).sum(-1)
    left = k.unfold(1, 16, 8).amax(-1)  # max pooling: reported, not fused
    return fused + left


def _inputs():
    return torch.randn(2, 64, 4, 16), torch.randn(16, 4)


def test_explain_reports_fused_and_unfused_with_source_lines():
    report = nsa_graph.explain(two_candidates, *_inputs())
    assert len(report.fused) == 1 and len(report.unfused) == 1, str(report)
    fused, left = report.fused[0], report.unfused[0]
    assert fused.location.endswith("fused = (k.unfold(1, 16, 8) * w.t()[None, None, :, None, :]).sum(-1)")
    assert "test_explain.py:" in fused.location and "nsa_compress(l=16, d=8" in fused.reason
    assert "amax" in left.reason and "left = k.unfold(1, 16, 8).amax(-1)" in left.location
    text = str(report)
    assert "1 fused, 1 not fused" in text and "[NOT fused]" in text


def test_explain_accepts_modules_and_leaves_no_compiled_code_behind():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 16))

        def forward(self, k):
            return torch.einsum("bwndl,nl->bwnd", k.unfold(1, 16, 8), self.w)

    report = nsa_graph.explain(Block(), torch.randn(2, 64, 4, 16))
    assert len(report.fused) == 1 and "einsum" in report.fused[0].spelling


def test_logging_and_counters(caplog):
    counters.clear()
    torch._dynamo.reset()
    with caplog.at_level("INFO", logger="nsa_graph.passes"):
        torch.compile(two_candidates, backend=nsa_graph.backend(inner="eager"))(*_inputs())
    assert counters["nsa_graph"]["candidates"] == 2
    assert counters["nsa_graph"]["fused"] == 1 and counters["nsa_graph"]["unfused"] == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "nsa_graph.passes.fuse"]
    assert any(m.startswith("[fused]") for m in messages) and any(m.startswith("[NOT fused]") for m in messages)


def test_cli_explain(tmp_path, capsys):
    script = tmp_path / "model.py"
    script.write_text(textwrap.dedent("""
        import torch

        def compress(k):
            return k.view(2, 4, 16, 4, 16).mean(2)

        def make():
            return compress, (torch.randn(2, 64, 4, 16),)

        def inputs():
            return (torch.randn(2, 64, 4, 16),)
    """))
    assert main(["explain", f"{script}:make"]) == 0
    out = capsys.readouterr().out
    assert "1 fused, 0 not fused" in out and "model.py:5" in out
    assert main(["explain", f"{script}:compress", "--inputs", "inputs", "--target", "npu"]) == 0
    out = capsys.readouterr().out
    assert "0 fused, 1 not fused" in out and "fp16/bf16" in out
