"""The backends with real Inductor: backend="nsa_graph" (entry point), backend(inner=...), the pre-grad installer."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from torch._inductor.utils import run_and_get_code

import nsa_graph
from nsa_graph.backends import NsaCompressPreGradPass, install_inductor_pass
from pass_helpers import check_fusion, strict_pass  # noqa: F401 (autouse fixture)


def _randn(*shape, dtype=torch.float32, grad=True, seed=0):
    t = torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    return t.requires_grad_(grad)


def weighted_sum(k, w):
    return (k.unfold(1, 16, 8) * w.t()[None, None, :, None, :]).sum(-1) * 2


def test_entry_point_is_registered():
    from torch._dynamo.backends.registry import list_backends, lookup_backend

    assert "nsa_graph" in list_backends(exclude_tags=())
    assert lookup_backend("nsa_graph") is nsa_graph.backends.nsa_graph_backend


def test_nsa_graph_backend_training_generates_one_loop_no_extern_call():
    k, w = _randn(2, 64, 4, 16), _randn(16, 4, seed=1)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(weighted_sum, backend="nsa_graph")

    def step():
        out = compiled(k, w)
        out.backward(torch.ones_like(out))
        return out

    out, (code_fw, code_bw) = run_and_get_code(step)
    assert counters["nsa_graph"]["fused"] == 1
    # the op and its gradient are decomposed: generated kernels, no call back into the Python kernels
    assert "torch.ops.nsa_graph" not in code_fw + code_bw
    assert "cpp_fused" in code_fw and "nsa_compress" in code_fw  # a generated kernel named after the op
    assert "index_put" not in code_bw and "scatter" not in code_bw  # the gather formulation
    gk, gw = k.grad, w.grad
    k.grad = w.grad = None
    ref = weighted_sum(k, w)
    ref.backward(torch.ones_like(ref))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gk, k.grad)
    torch.testing.assert_close(gw, w.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dynamic", [False, True])
def test_backend_inductor_inner_matches_eager(dynamic):
    def f(k, w):  # BNSD, einsum, weight [N, l]
        return torch.einsum("bnwdl,nl->bnwd", k.unfold(2, 16, 8), w)

    check_fusion(f, _randn(2, 4, 48, 16), _randn(4, 16, seed=1), fused=1, inner="inductor", dynamic=dynamic)


def test_bf16_inductor_within_standard():
    def f(k):
        return k.view(2, 4, 16, 4, 16).mean(2)

    check_fusion(f, _randn(2, 64, 4, 16, dtype=torch.bfloat16), fused=1, inner="inductor")


def test_inference_no_grad_inductor():
    k, w = _randn(2, 64, 4, 16, grad=False), _randn(16, 4, seed=1, grad=False)
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(weighted_sum, backend=nsa_graph.backend())(k, w)
    torch.testing.assert_close(out, weighted_sum(k, w))


def test_mode_and_options_are_forwarded():
    seen = {}

    def inner(gm, example_inputs, **kwargs):
        seen.update(kwargs)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(weighted_sum, backend=nsa_graph.backend(inner=inner, target="generic"),
                             options={"some_flag": 1})
    compiled(_randn(2, 64, 4, 16, grad=False), _randn(16, 4, grad=False))
    assert seen == {"options": {"some_flag": 1}}


def test_auto_target_is_npu_for_torchair_like_inner():
    def get_npu_backend_like(gm, example_inputs):
        return gm.forward

    get_npu_backend_like.__module__ = "torchair.npu_fx_compiler"
    torch._dynamo.reset()
    counters.clear()
    # fp32 is outside the NPU kernel's domain: target "auto" must leave it unfused for a torchair inner backend
    torch.compile(weighted_sum, backend=nsa_graph.backend(inner=get_npu_backend_like))(
        _randn(2, 64, 4, 16, grad=False), _randn(16, 4, grad=False))
    assert counters["nsa_graph"]["fused"] == 0 and counters["nsa_graph"]["unfused"] == 1


def test_install_inductor_pass_for_plain_inductor():
    from torch._inductor import config

    # config.patch restores the setting afterwards (monkeypatch would delete the config entry on undo)
    with config.patch(pre_grad_custom_pass=None):
        _check_install_inductor_pass(config)


def _check_install_inductor_pass(config):
    installed = install_inductor_pass()
    assert config.pre_grad_custom_pass is installed and isinstance(installed, NsaCompressPreGradPass)
    assert install_inductor_pass() is config.pre_grad_custom_pass  # idempotent: one instance installed
    uuid = installed.uuid()
    assert isinstance(uuid, str) and uuid != NsaCompressPreGradPass("npu").uuid()

    k, w = _randn(2, 64, 4, 16, grad=False), _randn(16, 4, grad=False)
    torch._dynamo.reset()
    counters.clear()
    with config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        out, (code,) = run_and_get_code(torch.compile(weighted_sum, backend="inductor"), k, w)
    assert counters["nsa_graph"]["fused"] == 1
    assert "torch.ops.nsa_graph.nsa_compress.default" in code  # plain Inductor: the op's kernel, not decomposed
    torch.testing.assert_close(out, weighted_sum(k, w))


def test_uuid_covers_pass_and_op_sources():
    from nsa_graph.backends import _behaviour_files

    names = {p.rsplit("/", 1)[-1] for p in _behaviour_files()}
    assert {"fuse.py", "rewrite.py", "reductions.py", "window_sources.py", "ops.py", "kernels.py",
            "decompositions.py"} <= names


def test_sequence_loop_with_inductor_is_one_varlen_loop():
    cu = [0, 40, 45, 100]

    def f(x, w):
        outs = [(x[s:e].unfold(0, 16, 8) * w.t()[:, None, :]).sum(-1) for s, e in zip(cu, cu[1:]) if e - s >= 16]
        return torch.cat(outs) * 2

    report = check_fusion(f, _randn(100, 4, 16), _randn(16, 4, seed=1), fused=1, inner="inductor")
    assert "2 pieces merged" in report.fused[0].reason  # [40, 45) is too short for a window
