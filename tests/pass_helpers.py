"""Shared checks for the fusion-pass tests: compile through the pass, count fusions, compare with eager."""

from __future__ import annotations

from typing import Any, Callable, Optional

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func

import nsa_graph
from nsa_graph.passes import FusionReport, collecting

from precision import assert_ascend_standard


@pytest.fixture(autouse=True)
def strict_pass(monkeypatch):
    """Internal errors in the pass raise in tests instead of being logged and skipped."""
    monkeypatch.setenv("NSA_GRAPH_STRICT", "1")


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int = 0) -> list[torch.Tensor]:
    # drawn in fp32 and rounded: a low-precision run and its fp32 golden see the same upstream grad
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g = g.to(out.dtype) if out.dtype == torch.float64 else g.float().to(torch.bfloat16).to(out.dtype)
    return list(torch.autograd.grad(out, inputs, g, allow_unused=False))


def _close(actual: torch.Tensor, expected: torch.Tensor, golden: Optional[torch.Tensor] = None) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (actual.shape, expected.shape)
    if golden is not None:  # low-precision inputs somewhere: judged against the fp32 golden
        assert_ascend_standard(actual, golden, torch.bfloat16 if actual.dtype == torch.float32 else actual.dtype)
    elif actual.dtype == torch.float64:
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    else:
        torch.testing.assert_close(actual, expected)


def check_fusion(
    fn: Callable[..., Any],
    *args: Any,
    fused: int,
    inner: Any = "aot_eager",
    dynamic: Optional[bool] = False,
    target: str = "generic",
    golden: Optional[Callable[..., Any]] = None,
) -> FusionReport:
    """Compile ``fn`` through the pass: exactly ``fused`` fusions, output and every gradient equal to eager.

    Low-precision results are checked against ``golden(*args)`` (or eager on fp32 copies of the inputs).
    """
    torch._dynamo.reset()
    with collecting() as report:
        compiled = torch.compile(fn, backend=nsa_graph.backend(inner=inner, target=target), dynamic=dynamic,
                                 fullgraph=True)
        out = compiled(*args)
    assert len(report.fused) == fused, str(report)
    expected = fn(*args)
    # unfused graphs must match eager as they are; fused low-precision ones are judged by the standard
    low = fused > 0 and any(t.dtype in (torch.float16, torch.bfloat16) for t in [out] + [a for a in args if isinstance(a, torch.Tensor)])
    gold_args = [a.detach().float().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) and
                 a.is_floating_point() else a for a in args]
    gold = (golden or fn)(*gold_args) if low else None
    _close(out, expected, gold)
    needs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    if needs:
        got, want = _grads(out, needs), _grads(expected, needs)
        gold_needs = [a for a in gold_args if isinstance(a, torch.Tensor) and a.requires_grad]
        gold_grads = _grads(gold, gold_needs) if low else [None] * len(got)
        for a, e, g in zip(got, want, gold_grads):
            _close(a, e, g)
    return report


class GraphCapture:
    """An AOT backend that records the forward and backward aten graphs it is given (and runs them)."""

    def __init__(self) -> None:
        self.forward: list[torch.fx.GraphModule] = []
        self.backward: list[torch.fx.GraphModule] = []
        self.backend = aot_autograd(fw_compiler=self._fw, bw_compiler=self._bw)

    def _fw(self, gm, example_inputs):
        self.forward.append(gm)
        return make_boxed_func(gm.forward)

    def _bw(self, gm, example_inputs):
        self.backward.append(gm)
        return make_boxed_func(gm.forward)

    @staticmethod
    def ops(gms: list[torch.fx.GraphModule]) -> set[str]:
        return {str(n.target) for gm in gms for n in gm.graph.nodes if n.op == "call_function"}
