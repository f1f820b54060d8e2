"""Differential fuzzing: random programs from the spelling catalog, compiled through the pass == eager.

Each program draws a layout (TND, BSND, BNSD, [B, S, H]), window size and stride (stride may exceed the
window), sizes (N = 1 and D = 1 included), a weight shape ([l, N], [N, l], [l], [l, 1]), a window layout
(permuted or not), a reduction spelling (mul + sum, einsum with random letters and output order, mean,
weighted mean, matmul, fp32 upcast with cast back) and optionally a positional embedding. Every program
must fuse exactly once and match eager (float64: 1e-12; training programs also in every gradient; a
quarter of them with dynamic shapes).
"""

from __future__ import annotations

import random
import string

import pytest
import torch

from pass_helpers import check_fusion, strict_pass  # noqa: F401 (autouse fixture)

LAYOUTS = {  # name: (x dims, seq dim, head dim or None)
    "TND": ("SND", 0, 1),
    "BSND": ("BSND", 1, 2),
    "BNSD": ("BNSD", 2, 1),
    "BSH": ("BSH", 1, None),
}


def _program(seed: int):
    rng = random.Random(seed)
    layout = rng.choice(sorted(LAYOUTS))
    dims, seq, head = LAYOUTS[layout]
    l = rng.choice([2, 4, 5, 8])
    d = rng.randint(1, l + 2)
    sizes = {"B": rng.randint(1, 3), "S": rng.randint(l, 4 * l), "N": rng.randint(1, 4), "D": rng.choice([1, 3, 8]),
             "H": rng.choice([4, 6])}
    shape = [sizes[c] for c in dims]
    kinds = ["l"] + (["ln", "nl", "l1"] if head is not None else ["l1"])
    weight_kind = rng.choice(kinds)
    reduction = rng.choice(["mulsum", "einsum", "mean", "wmean", "matmul", "upcast"])
    permute = rng.random() < 0.4
    with_pe = rng.random() < 0.3 and reduction != "upcast"
    # window dims after unfold: x dims with seq -> W, then J
    u_dims = [("W" if k == seq else c) for k, c in enumerate(dims)] + ["J"]
    order = list(range(len(u_dims)))
    if permute:
        rng.shuffle(order)
    if reduction == "matmul":
        order = [k for k in order if u_dims[k] != "J"] + [len(u_dims) - 1]  # matmul contracts the last dim
    labels = [u_dims[k] for k in order]
    j_axis = labels.index("J")
    head_axis = labels.index(dims[head]) if head is not None else None
    N = sizes["N"]
    weight_shape = {"ln": (l, N), "nl": (N, l), "l": (l,), "l1": (l, 1)}[weight_kind]

    def weight_view(w):
        """The weight broadcast against the (permuted) windows."""
        full = [1] * len(labels)
        full[j_axis] = l
        if weight_kind in ("ln", "nl"):
            full[head_axis] = N
            lead = w if weight_kind == "nl" else w.t()  # [N, l]
            if j_axis < head_axis:
                lead = lead.t()
            return lead.reshape(full)
        return w.reshape(full)

    letters = rng.sample(string.ascii_lowercase, len(labels))
    out_letters = [c for k, c in enumerate(letters) if k != j_axis]
    rng.shuffle(out_letters)

    def windows(x, pe):
        u = x.unfold(seq, l, d).permute(order)
        if pe is not None:
            u = u + pe
        return u

    def fn(x, w, pe=None):
        u = windows(x, pe)
        if reduction == "mulsum":
            return (u * weight_view(w)).sum(j_axis)
        if reduction == "wmean":
            return (weight_view(w) * u).mean(j_axis)
        if reduction == "mean":
            return u.mean(j_axis) + 0 * w.sum()  # keeps the weight an input of every program
        if reduction == "upcast":
            return (u.float() * weight_view(w).float()).sum(j_axis).to(x.dtype)
        if reduction == "matmul":
            return u @ w.reshape(-1) if weight_kind in ("l", "l1") else (u * weight_view(w)).sum(-1)
        w_letters = {"ln": [letters[j_axis], letters[head_axis or 0]], "nl": [letters[head_axis or 0], letters[j_axis]],
                     "l": [letters[j_axis]], "l1": [letters[j_axis]]}[weight_kind]
        weight = w if weight_kind != "l1" else w.reshape(-1)
        equation = f"{''.join(letters)},{''.join(w_letters)}->{''.join(out_letters)}"
        return torch.einsum(equation, u, weight)

    gen = torch.Generator().manual_seed(seed)
    dtype = torch.bfloat16 if reduction == "upcast" else torch.float64
    x = torch.randn(*shape, dtype=dtype, generator=gen)
    w = torch.randn(*weight_shape, dtype=dtype, generator=gen)
    pe = None
    if with_pe:  # broadcast over the window dims after J (e.g. [l, D]) or a full-rank [l]-only table
        pe_shape = [1] * len(labels)
        pe_shape[j_axis] = l
        pe = torch.randn(*pe_shape, dtype=dtype, generator=gen)
    description = (f"seed={seed} {layout} {dict(zip(dims, shape))} l={l} d={d} weight={weight_kind} "
                   f"{reduction} windows={labels}{' +pe' if with_pe else ''}")
    return description, fn, x, w, pe


@pytest.mark.parametrize("seed", range(60))
def test_random_program_compiles_to_the_same_function(seed):
    description, fn, x, w, pe = _program(seed)
    training = seed % 3 == 0  # a third through AOTAutograd with every gradient checked
    args = [x.requires_grad_(training), w.requires_grad_(training)]
    if pe is not None:
        args.append(pe.requires_grad_(training))
    try:
        check_fusion(fn, *args, fused=1, inner="aot_eager" if training else "eager", dynamic=seed % 4 == 1)
    except AssertionError as exc:
        raise AssertionError(f"{description}: {exc}") from exc
