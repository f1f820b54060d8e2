"""Ascend precision standards for low-precision results checked against an fp32 golden.

Every element: ``|actual - golden| <= thr * max(|golden|, 1)`` with thr 2**-11 (fp16), 2**-8 (bf16);
and the mean relative error bias ``|mean((actual - golden) / max(|golden|, 1))|`` below 2**-10 (fp16),
2**-7 (bf16).
"""

from __future__ import annotations

import torch

ELEMENT_THRESHOLD = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-14}
BIAS_THRESHOLD = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7, torch.float32: 2.0**-14}


def assert_ascend_standard(actual: torch.Tensor, golden: torch.Tensor, dtype: torch.dtype) -> None:
    assert actual.shape == golden.shape, (actual.shape, golden.shape)
    if actual.numel() == 0:
        return
    a, g = actual.double(), golden.double()
    scale = g.abs().clamp_min(1.0)
    rel = (a - g) / scale
    worst = rel.abs().max().item()
    assert worst <= ELEMENT_THRESHOLD[dtype], f"{dtype}: max relative error {worst:.3g} > {ELEMENT_THRESHOLD[dtype]:.3g}"
    bias = rel.mean().abs().item()
    assert bias < BIAS_THRESHOLD[dtype], f"{dtype}: error bias {bias:.3g} >= {BIAS_THRESHOLD[dtype]:.3g}"
