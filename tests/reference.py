"""Independent float64 loop reference for NsaCompress, written straight from the contract (no shared code)."""

from __future__ import annotations

import torch


def _sequences(T, actual_seq_len):
    bounds = [T] if actual_seq_len is None else list(actual_seq_len)
    start = 0
    for end in bounds:
        yield start, end
        start = end


def reference_forward(x, w, l, d, actual_seq_len=None):
    """float64 result, window by window."""
    x64, w64 = x.double(), w.double()
    T, N, D = x.shape
    rows = []
    for start, end in _sequences(T, actual_seq_len):
        s = start
        while s + l <= end:
            acc = torch.zeros(N, D, dtype=torch.float64)
            for j in range(l):
                acc += w64[j][:, None] * x64[s + j]
            rows.append(acc)
            s += d
    if not rows:
        return torch.zeros(0, N, D, dtype=torch.float64)
    return torch.stack(rows)


def reference_backward(g, x, w, l, d, actual_seq_len=None):
    """(grad_input, grad_weight) in float64, window by window."""
    g64, x64, w64 = g.double(), x.double(), w.double()
    T, N, D = x.shape
    gi = torch.zeros(T, N, D, dtype=torch.float64)
    gw = torch.zeros(l, N, dtype=torch.float64)
    r = 0
    for start, end in _sequences(T, actual_seq_len):
        s = start
        while s + l <= end:
            for j in range(l):
                gi[s + j] += w64[j][:, None] * g64[r]
                gw[j] += (g64[r] * x64[s + j]).sum(-1)
            r += 1
            s += d
    return gi, gw


def random_lengths(gen, T_total_max, count):
    """Random prefix sums with empty and short sequences mixed in."""
    lens = torch.randint(0, T_total_max // max(count, 1) + 1, (count,), generator=gen)
    return torch.cumsum(lens, 0).tolist()
