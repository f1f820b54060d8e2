"""The compressed-attention branch of an NSA block, written the way public code writes it, compiled as is.

Keys are compressed with ``unfold`` + a positional embedding + ``einsum`` with a learned ``[heads, l]``
weight, values with ``unfold`` + a broadcast multiply + ``sum``. Nothing calls nsa_graph: compiling with
``backend="nsa_graph"`` finds both compressions, proves them equal to ``nsa_compress`` and replaces them
(one generated loop each on CPU/GPU); through torchair they become GE ``NsaCompress`` nodes (and
``NsaCompressGrad`` in training), where the unfused spelling does not compile at all.

    $ python examples/nsa_attention_block.py
    $ nsa-graph explain examples/nsa_attention_block.py:make
"""

from __future__ import annotations

from collections import Counter

import torch

import nsa_graph


class CompressedAttention(torch.nn.Module):
    """Queries attend to block-compressed keys and values ([B, S, N, D] layout)."""

    def __init__(self, heads: int = 4, head_dim: int = 64, block: int = 32, stride: int = 16,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.block, self.stride = block, stride
        self.w_k = torch.nn.Parameter(torch.randn(heads, block, dtype=dtype) / block)  # [N, l]
        self.w_v = torch.nn.Parameter(torch.randn(block, heads, dtype=dtype) / block)  # [l, N]
        self.pe_k = torch.nn.Parameter(torch.randn(block, head_dim, dtype=dtype) * 0.02)  # intra-block PE

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        windows_k = k.unfold(1, self.block, self.stride) + self.pe_k.t()  # [B, W, N, D, l]
        ck = torch.einsum("bwndl,nl->bwnd", windows_k, self.w_k)
        cv = (v.unfold(1, self.block, self.stride) * self.w_v.t()[None, None, :, None, :]).sum(-1)
        scores = torch.einsum("bsnd,bwnd->bnsw", q, ck) * q.shape[-1] ** -0.5
        return torch.einsum("bnsw,bwnd->bsnd", scores.softmax(-1), cv)


def make(dtype: torch.dtype = torch.float32):
    """The model and example inputs (used by ``nsa-graph explain``)."""
    torch.manual_seed(0)
    model = CompressedAttention(dtype=dtype)
    q, k, v = (torch.randn(2, 256, 4, 64, dtype=dtype) for _ in range(3))
    return model, (q, k, v)


def compile_for_cpu() -> None:
    print("== backend='nsa_graph' (fusion, then Inductor), fp32 ==")
    model, (q, k, v) = make()
    print(nsa_graph.explain(model, q, k, v))
    k.requires_grad_()
    compiled = torch.compile(model, backend="nsa_graph")
    out = compiled(q, k, v)
    out.sum().backward()
    grad_k = k.grad.clone()
    k.grad = None
    expected = model(q, k, v)
    expected.sum().backward()
    print(f"backend='nsa_graph': max |compiled - eager| = {(out - expected).abs().max().item():.2e}, "
          f"dk {(grad_k - k.grad).abs().max().item():.2e}")


def compile_for_torchair() -> None:
    from nsa_graph import offline_torchair as ota

    try:
        torchair = ota.load_torchair()
    except ota.TorchairNotFetched:
        print("torchair not fetched: run `nsa-graph fetch-torchair` to see the GE graphs")
        return
    print("\n== nsa_graph.backend(inner=torchair's npu backend), offline torchair, bf16 training step ==")
    model, (q, k, v) = make(torch.bfloat16)
    backend = nsa_graph.backend(inner=torchair.get_npu_backend(compiler_config=torchair.CompilerConfig()))
    torch._dynamo.reset()
    ota.clear_recorded()
    with nsa_graph.passes.collecting() as report, ota.eager_fallback():
        torch.compile(model, backend=backend)(q, k.requires_grad_(), v).float().sum().backward()
    print(report)
    for graph in ota.recorded_graphs("load"):
        nsa = Counter(op.type for op in graph.op if op.type in ("NsaCompress", "NsaCompressGrad"))
        listed = ", ".join(f"{count} x {op_type}" for op_type, count in sorted(nsa.items()))
        print(f"GE graph {graph.name}: {len(graph.op)} nodes, {listed}")


if __name__ == "__main__":
    compile_for_cpu()
    compile_for_torchair()
