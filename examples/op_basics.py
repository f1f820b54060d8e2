"""nsa_compress in eager mode and under torch.compile, on variable-length sequences.

    python examples/op_basics.py
"""

import torch
from torch._dynamo.testing import CompileCounterWithBackend

import nsa_graph

torch.manual_seed(0)
block, stride, heads, head_dim = 32, 16, 4, 64

# Three sequences packed TND: lengths 300, 20 (shorter than a block: no windows) and 700.
actual_seq_len = [300, 320, 1020]
x = torch.randn(actual_seq_len[-1], heads, head_dim, dtype=torch.bfloat16, requires_grad=True)
w = torch.randn(block, heads, dtype=torch.bfloat16, requires_grad=True)

out = nsa_graph.nsa_compress(x, w, block, stride, actual_seq_len=actual_seq_len)
print(f"eager: input {tuple(x.shape)} -> compressed {tuple(out.shape)} "
      f"(windows per sequence: {(300 - 32) // 16 + 1}, 0, {(700 - 32) // 16 + 1})")
out.float().sum().backward()
print(f"       grad_input {tuple(x.grad.shape)}, grad_weight {tuple(w.grad.shape)}; "
      f"tokens 300..319 get zero gradient: {bool((x.grad[300:320] == 0).all())}")


def compress(x, w, seq):
    return nsa_graph.nsa_compress(x, w, block, stride, actual_seq_len=seq)


counter = CompileCounterWithBackend("inductor")
compiled = torch.compile(compress, backend=counter, fullgraph=True, dynamic=True)
# every sequence holds at least 2 windows: sizes 0 and 1 (an empty or short sequence, a leading 0) are
# specialised like any 0/1 size and would each add a graph
for seq in ([300, 700, 1020], [100, 600, 900], [512, 1024, 2048]):
    xs = torch.randn(seq[-1], heads, head_dim, dtype=torch.bfloat16)
    same = torch.equal(compiled(xs, w.detach(), seq), compress(xs, w.detach(), seq))
    print(f"compiled (inductor, dynamic): lengths {seq} -> equal to eager: {same}")
print(f"graphs compiled for three different length lists: {counter.frame_count}")

try:
    nsa_graph.nsa_compress(x, w, block, stride, actual_seq_len=[300, 200, 1020])
except nsa_graph.NsaCompressError as err:
    print(f"bad input is named: {err}")
