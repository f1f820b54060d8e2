"""torch.library.opcheck and gradcheck for both ops (schema, fake impl, autograd registration, AOT dispatch)."""

import pytest
import torch

import nsa_graph

OPCHECK_CASES = [
    # (T, N, D, l, d, actual_seq_len)
    (64, 2, 8, 16, 8, None),
    (200, 2, 8, 32, 16, [50, 50, 130, 200]),   # with an empty sequence
    (10, 2, 4, 16, 8, None),                    # T < l: zero rows
    (96, 3, 4, 16, 16, [0, 40, 96]),            # leading 0
]


def _make(T, N, D, l, contiguous, requires_grad, dtype=torch.float64):
    if contiguous:
        x = torch.randn(T, N, D, dtype=dtype)
        w = torch.randn(l, N, dtype=dtype)
    else:
        x = torch.randn(N, T, D, dtype=dtype).transpose(0, 1)   # permuted input
        w = torch.randn(N, l, dtype=dtype).t()                   # .t() weight, as a fusion pass produces
    return x.requires_grad_(requires_grad), w.requires_grad_(requires_grad)


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "non_contiguous"])
@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: f"T{c[0]}l{c[3]}d{c[4]}seq{c[5]}")
def test_opcheck_forward(case, contiguous, requires_grad):
    T, N, D, l, d, seq = case
    x, w = _make(T, N, D, l, contiguous, requires_grad)
    torch.library.opcheck(torch.ops.nsa_graph.nsa_compress.default, (x, w, l, d), {"actual_seq_len": seq})


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "non_contiguous"])
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: f"T{c[0]}l{c[3]}d{c[4]}seq{c[5]}")
def test_opcheck_grad(case, contiguous):
    T, N, D, l, d, seq = case
    x, w = _make(T, N, D, l, contiguous, False)
    rows = nsa_graph.nsa_compress(x, w, l, d, actual_seq_len=seq).shape[0]
    g = torch.randn(N, rows, D, dtype=x.dtype).transpose(0, 1) if not contiguous else torch.randn(rows, N, D, dtype=x.dtype)
    torch.library.opcheck(torch.ops.nsa_graph.nsa_compress_grad.default, (g, x, w, l, d), {"actual_seq_len": seq})


def test_fake_outputs_are_contiguous_like_the_kernels():
    # the fake must promise contiguous outputs even for non-contiguous inputs (the kernels return contiguous)
    x, w = _make(64, 2, 8, 16, contiguous=False, requires_grad=False)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fx, fw = mode.from_tensor(x), mode.from_tensor(w)
        out = torch.ops.nsa_graph.nsa_compress(fx, fw, 16, 8)
        gi, gw = torch.ops.nsa_graph.nsa_compress_grad(out, fx, fw, 16, 8)
    assert out.shape == (7, 2, 8) and out.is_contiguous()
    assert gi.shape == x.shape and gi.is_contiguous() and gw.shape == w.shape and gw.is_contiguous()


@pytest.mark.parametrize("seq", [None, [30, 30, 75, 120]])
def test_gradcheck_float64(seq):
    x = torch.randn(120, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(24, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nsa_graph.nsa_compress(a, b, 24, 8, actual_seq_len=seq), (x, w))


@pytest.mark.parametrize("seq", [None, [30, 30, 75, 120]])
def test_gradgradcheck_float64(seq):
    # the gradient op has its own autograd (double backward through the two ops)
    x = torch.randn(120, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(24, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: nsa_graph.nsa_compress(a, b, 24, 8, actual_seq_len=seq), (x, w))


def test_needs_input_grad_is_honoured():
    x = torch.randn(64, 2, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(16, 2, dtype=torch.float64)  # frozen weight
    nsa_graph.nsa_compress(x, w, 16, 8).sum().backward()
    assert x.grad is not None and w.grad is None

    x2 = torch.randn(64, 2, 4, dtype=torch.float64)
    w2 = torch.randn(16, 2, dtype=torch.float64, requires_grad=True)
    out = nsa_graph.nsa_compress(x2, w2, 16, 8)
    (gw,) = torch.autograd.grad(out.sum(), (w2,))
    assert x2.grad is None and gw.shape == w2.shape
