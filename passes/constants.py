"""Evaluate small index subgraphs built only from static values (``arange``, arithmetic, reshapes).

A gather ``x[idx]`` is a window source only if ``idx`` provably enumerates full windows. When ``idx``
comes from ``torch.arange`` calls with static arguments, its value is known at compile time: evaluate it
on CPU and read the windows off it. Anything that depends on a graph input stays opaque (None).
"""

from __future__ import annotations

import operator
from typing import Any, Optional

import torch
import torch.fx as fx

from .nodes import static_int

MAX_ELEMENTS = 1 << 20

_FUNCTIONS = {
    torch.arange, torch.tensor, operator.add, operator.sub, operator.mul, operator.floordiv, operator.mod,
    operator.getitem, operator.neg, torch.add, torch.mul, torch.sub, torch.cat, torch.stack, torch.flatten,
    torch.reshape, torch.unsqueeze, torch.repeat_interleave,
}
_METHODS = {"view", "reshape", "flatten", "unsqueeze", "expand", "add", "mul", "sub", "long", "int", "to",
            "contiguous", "repeat", "repeat_interleave", "t", "transpose", "permute"}


def _strip_device(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k not in ("device", "pin_memory", "requires_grad")}


def constant_value(node: Any, _memo: Optional[dict] = None) -> Any:
    """The compile-time value of ``node`` (a CPU tensor or Python value), or None if it depends on inputs."""
    memo = {} if _memo is None else _memo
    if not isinstance(node, fx.Node):
        if isinstance(node, (list, tuple)):
            items = [constant_value(v, memo) for v in node]
            return None if any(v is None and e is not None for v, e in zip(items, node)) else type(node)(items)
        return node
    if node in memo:
        return memo[node]
    value = None
    example = node.meta.get("example_value")
    if isinstance(example, (int, torch.SymInt)) and not isinstance(example, bool):
        memo[node] = static_int(example)  # a size read, SymInt arithmetic: constant when static
        return memo[node]
    if node.op == "call_function" and node.target in _FUNCTIONS or node.op == "call_method" and node.target in _METHODS:
        args = [constant_value(a, memo) for a in node.args]
        kwargs = {k: constant_value(v, memo) for k, v in _strip_device(dict(node.kwargs)).items()}
        if not any(a is None and orig is not None for a, orig in zip(args, node.args)) and None not in [
            v for k, v in kwargs.items() if node.kwargs.get(k) is not None
        ]:
            try:
                with torch.no_grad():
                    if node.op == "call_method":
                        if node.target == "to":  # keep dtype conversions only
                            args = [a for a in args if not isinstance(a, (str, torch.device))]
                        value = getattr(args[0], node.target)(*args[1:], **kwargs)
                    else:
                        value = node.target(*args, **kwargs)
            except Exception:  # noqa: BLE001 - not evaluable here: opaque
                value = None
            if isinstance(value, torch.Tensor) and (value.numel() > MAX_ELEMENTS or value.device.type != "cpu"):
                value = None
    memo[node] = value
    return value
