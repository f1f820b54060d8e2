"""The KV-compression step of an NSA layer, packed sequences (TND), as torchair lowers it to GE.

    $ nsa-graph dump-ge examples/dump_ge_model.py:build             # training step: forward + backward
    $ nsa-graph dump-ge examples/dump_ge_model.py:build --inference

Keys and values are compressed with their own per-head weights; two sequences of 40 and 88 tokens are
packed into T = 128 rows, so ``actual_seq_len = [40, 128]`` reaches GE as an int64 Const.
"""

import torch

import nsa_graph


class CompressKV(torch.nn.Module):
    def __init__(self, heads: int = 4, block: int = 32, stride: int = 16, dtype: torch.dtype = torch.float16):
        super().__init__()
        self.block, self.stride = block, stride
        self.w_k = torch.nn.Parameter(torch.rand(block, heads, dtype=dtype) / block)
        self.w_v = torch.nn.Parameter(torch.rand(block, heads, dtype=dtype) / block)

    def forward(self, k: torch.Tensor, v: torch.Tensor, actual_seq_len: list[int]):
        ck = nsa_graph.nsa_compress(k, self.w_k, self.block, self.stride, actual_seq_len=actual_seq_len)
        cv = nsa_graph.nsa_compress(v, self.w_v, self.block, self.stride, actual_seq_len=actual_seq_len)
        return ck * (k.shape[-1] ** -0.5), cv


def build():
    torch.manual_seed(0)
    model = CompressKV()
    k = torch.randn(128, 4, 64, dtype=torch.float16)
    v = torch.randn(128, 4, 64, dtype=torch.float16)
    return model, (k, v, [40, 128])


if __name__ == "__main__":
    from nsa_graph.dump_ge import compile_and_record
    from nsa_graph.offline_torchair import describe_graph

    for graph in compile_and_record(*build(), training=True, dynamic=False):
        print(describe_graph(graph), end="\n\n")
