"""The op under torch.compile: fullgraph, dynamic T and lengths, expected recompiles, one node per AOT graph."""

import functools

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.testing import CompileCounterWithBackend
from torch._functorch.aot_autograd import make_boxed_func

import nsa_graph

FORWARD = torch.ops.nsa_graph.nsa_compress.default
GRAD = torch.ops.nsa_graph.nsa_compress_grad.default


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compress_times_two(x, w):
    return nsa_graph.nsa_compress(x, w, 32, 16) * 2


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_dynamic_T_recompiles_only_for_zero_and_one_window(backend):
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(_compress_times_two, backend=counter, fullgraph=True, dynamic=True)
    w = torch.randn(32, 4)
    for T in (200, 300, 1000, 48):            # W >= 2: one graph serves all
        x = torch.randn(T, 4, 16)
        torch.testing.assert_close(compiled(x, w), _compress_times_two(x, w))
    assert counter.frame_count == 1
    # W == 0 and W == 1 are specialised by the downstream `* 2` (broadcasting / contiguity guards on the
    # derived output size, not the fake impl): exactly one graph each, then no more.
    for T in (17, 32, 20, 33):
        x = torch.randn(T, 4, 16)
        torch.testing.assert_close(compiled(x, w), _compress_times_two(x, w))
    assert counter.frame_count == 3


def _varlen(x, w, seq):
    return nsa_graph.nsa_compress(x, w, 32, 16, actual_seq_len=seq)


def test_dynamic_lengths_one_graph_per_list_length():
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(_varlen, backend=counter, fullgraph=True, dynamic=True)
    w = torch.randn(32, 4)
    for seq in ([100, 300, 512], [50, 200, 512], [0, 256, 600], [100, 100, 400], [120, 300, 512]):
        x = torch.randn(seq[-1], 4, 16)
        torch.testing.assert_close(compiled(x, w, seq), _varlen(x, w, seq))
    assert counter.frame_count == 1  # SymInt[] schema: list values are symbols, not constants
    for seq in ([100, 512], [100, 200, 300, 400]):
        x = torch.randn(seq[-1], 4, 16)
        torch.testing.assert_close(compiled(x, w, seq), _varlen(x, w, seq))
    assert counter.frame_count == 3  # the list length is always guarded: one graph per batch count


def test_last_length_is_tied_to_T_at_trace_time():
    compiled = torch.compile(_varlen, backend="aot_eager", fullgraph=True, dynamic=True)
    w = torch.randn(32, 4)
    compiled(torch.randn(512, 4, 16), w, [100, 300, 512])
    with pytest.raises(Exception, match=r"actual_seq_len\[-1\]=.* must equal T"):
        compiled(torch.randn(500, 4, 16), w, [100, 300, 512])


def test_unbacked_lengths_from_tolist_trace_without_graph_break():
    def fn(x, w, cu):
        return nsa_graph.nsa_compress(x, w, 32, 16, actual_seq_len=cu.tolist()).sum(0)

    counter = CompileCounterWithBackend("aot_eager")
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        compiled = torch.compile(fn, backend=counter, fullgraph=True, dynamic=True)
        w = torch.randn(32, 4)
        for seq in ([100, 300, 512], [50, 200, 512], [0, 0, 512]):
            x, cu = torch.randn(512, 4, 16), torch.tensor(seq)
            torch.testing.assert_close(compiled(x, w, cu), fn(x, w, cu))
    assert counter.frame_count == 1


def _capturing_backend(graphs):
    def keep(name):
        def compiler(gm, example_inputs):
            graphs.setdefault(name, []).append(gm)
            return make_boxed_func(gm.forward)
        return compiler

    return aot_autograd(fw_compiler=keep("forward"), bw_compiler=keep("backward"), inference_compiler=keep("inference"))


def _count(gm, target):
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is target)


@pytest.mark.parametrize("weight_grad", [True, False], ids=["weight_trains", "weight_frozen"])
def test_training_graphs_hold_one_forward_and_one_grad_node(weight_grad):
    graphs = {}
    compiled = torch.compile(_varlen, backend=_capturing_backend(graphs), fullgraph=True, dynamic=True)
    x = torch.randn(512, 4, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(32, 4, dtype=torch.float64, requires_grad=weight_grad)
    seq = [100, 300, 512]
    out = compiled(x, w, seq)
    grads = torch.autograd.grad(out.square().sum(), (x, w) if weight_grad else (x,))
    ref_out = _varlen(x, w, seq)
    ref_grads = torch.autograd.grad(ref_out.square().sum(), (x, w) if weight_grad else (x,))
    torch.testing.assert_close(out, ref_out)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)
    (fw,), (bw,) = graphs["forward"], graphs["backward"]
    assert _count(fw, FORWARD) == 1 and _count(fw, GRAD) == 0
    assert _count(bw, GRAD) == 1 and _count(bw, FORWARD) == 0


def test_inference_graph_holds_one_forward_node():
    graphs = {}
    compiled = torch.compile(_varlen, backend=_capturing_backend(graphs), fullgraph=True)
    with torch.no_grad():
        compiled(torch.randn(512, 4, 16), torch.randn(32, 4), [100, 300, 512])
    (inference,) = graphs["inference"]
    assert _count(inference, FORWARD) == 1 and _count(inference, GRAD) == 0


def test_inductor_training_matches_eager_bf16():
    compiled = torch.compile(functools.partial(_varlen, seq=[0, 700, 2048]), backend="inductor", fullgraph=True)
    x = torch.randn(2048, 4, 64, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(32, 4, dtype=torch.bfloat16, requires_grad=True)
    out = compiled(x, w)
    out.float().square().sum().backward()
    gx, gw = x.grad, w.grad
    x.grad = w.grad = None
    ref = _varlen(x, w, [0, 700, 2048])
    ref.float().square().sum().backward()
    assert torch.equal(out, ref)  # the op runs its own kernel inside the compiled graph
    assert torch.equal(gx, x.grad) and torch.equal(gw, w.grad)
