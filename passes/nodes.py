"""Reading Dynamo's torch-IR graph: one name per operation, bound arguments, fake values, guard-free sizes.

Dynamo records the same operation in several spellings (``x.sum(-1)`` is ``call_method sum``,
``torch.sum(x, -1)`` is ``call_function torch.sum``, ``x * w`` is ``operator.mul``); the recognisers
read nodes through :func:`op_name` and :func:`bind` so each one is written once.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.fx as fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

# canonical name -> the call_function targets that mean it (call_method uses the name itself)
_FUNCTIONS: dict[str, tuple[Any, ...]] = {
    "unfold": (torch.Tensor.unfold,),
    "view": (torch.Tensor.view,),
    "index_select": (torch.index_select, torch.Tensor.index_select),
    "as_strided": (torch.as_strided, torch.Tensor.as_strided),
    "reshape": (torch.reshape, torch.Tensor.reshape),
    "permute": (torch.permute, torch.Tensor.permute),
    "transpose": (torch.transpose, torch.Tensor.transpose, torch.swapaxes, torch.swapdims),
    "movedim": (torch.movedim, torch.Tensor.movedim, torch.moveaxis),
    "unsqueeze": (torch.unsqueeze, torch.Tensor.unsqueeze),
    "contiguous": (torch.Tensor.contiguous,),
    "clone": (torch.clone, torch.Tensor.clone),
    "add": (operator.add, torch.add, torch.Tensor.add),
    "mul": (operator.mul, torch.mul, torch.Tensor.mul, torch.multiply),
    "sum": (torch.sum, torch.Tensor.sum),
    "mean": (torch.mean, torch.Tensor.mean),
    "einsum": (torch.einsum, torch.functional.einsum),
    "matmul": (operator.matmul, torch.matmul, torch.Tensor.matmul),
    "linear": (torch._C._nn.linear, torch.nn.functional.linear),
    "avg_pool1d": (torch.avg_pool1d, torch.nn.functional.avg_pool1d),
    "avg_pool2d": (torch._C._nn.avg_pool2d, torch.nn.functional.avg_pool2d),
    "avg_pool3d": (torch._C._nn.avg_pool3d, torch.nn.functional.avg_pool3d),
    "to": (torch.Tensor.to,),
    "float": (torch.Tensor.float,),
    "double": (torch.Tensor.double,),
    "half": (torch.Tensor.half,),
    "bfloat16": (torch.Tensor.bfloat16,),
    "type_as": (torch.Tensor.type_as,),
    "type": (torch.Tensor.type,),
}
_BY_TARGET = {target: name for name, targets in _FUNCTIONS.items() for target in targets}
_METHOD_ALIASES = {"swapaxes": "transpose", "swapdims": "transpose", "moveaxis": "movedim", "multiply": "mul"}

# Methods that write into their first argument (besides every `name_` method).
_INPLACE_FUNCTIONS = {operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv}


def op_name(node: fx.Node) -> Optional[str]:
    """The canonical name of a node's operation, or None for anything else."""
    if node.op == "call_method":
        return _METHOD_ALIASES.get(node.target, node.target)
    if node.op == "call_function":
        try:
            return _BY_TARGET.get(node.target)
        except TypeError:  # unhashable target
            return None
    return None


def bind(node: fx.Node, names: Sequence[str], defaults: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Map a node's args/kwargs onto ``names`` (``names[0]`` is the tensor operand), or None if they do not fit."""
    args = list(node.args)
    if len(args) > len(names):
        return None
    bound = dict(defaults)
    bound.update(zip(names, args))
    for key, value in node.kwargs.items():
        if key not in names or key in dict(zip(names, args)):
            return None
        bound[key] = value
    if any(name not in bound for name in names):
        return None
    return bound


def varargs(node: fx.Node) -> list[Any]:
    """Dims/sizes given as ``f(x, 1, 2)`` or ``f(x, (1, 2))`` or ``f(x, dims=...)``."""
    rest = list(node.args[1:])
    if not rest and node.kwargs:
        rest = [next(iter(node.kwargs.values()))]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple, torch.Size)):
        return list(rest[0])
    return rest


def fake(node: Any) -> Any:
    """The FakeTensor / SymInt Dynamo recorded for a node (``example_value``, or ``val`` in later IRs)."""
    if not isinstance(node, fx.Node):
        return node
    meta = node.meta
    return meta["example_value"] if "example_value" in meta else meta.get("val")


def fake_tensor(node: Any) -> Optional[torch.Tensor]:
    value = fake(node)
    return value if isinstance(value, torch.Tensor) else None


def static_int(value: Any) -> Optional[int]:
    """An int argument known without a guard (a literal, or a SymInt with a fixed value)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, fx.Node):
        value = fake(value)
    if isinstance(value, torch.SymInt):
        return value.node.maybe_as_int()
    return None


def proven_int(value: Any) -> Optional[int]:
    """An int size, or a symbolic one that the guards already installed pin to one value (no new guard).

    ``x.view(B, S // 64, 64, N, D)`` under dynamic shapes records the block as ``S // (S // 64)`` with
    the guard ``Eq(S // (S // 64), 64)``: its value is 64 for every input this graph accepts.
    """
    static = static_int(value)
    if static is not None or not isinstance(value, torch.SymInt):
        return static
    node = value.node
    try:
        import sympy

        hint = node.hint
        env = node.shape_env
        proven = env._maybe_evaluate_static(sympy.Eq(node.expr, hint), axioms=env.get_axioms())
    except Exception:  # noqa: BLE001 - private ShapeEnv API: if it moved, the size is simply unknown
        return None
    return int(hint) if proven is not None and bool(proven) else None


def same_size(a: Any, b: Any) -> bool:
    """``a == b`` for ints or SymInts, proven from the shape environment without installing a guard."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return bool(statically_known_true(a == b))


def is_one(size: Any) -> bool:
    return same_size(size, 1)


def normalize_dim(dim: Any, ndim: int) -> Optional[int]:
    if isinstance(dim, bool) or not isinstance(dim, int) or not -ndim <= dim < ndim:
        return None
    return dim % ndim


def is_inplace(node: fx.Node) -> bool:
    """A node that writes into its first argument."""
    if node.op == "call_method":
        return isinstance(node.target, str) and node.target.endswith("_") and not node.target.startswith("__")
    if node.op == "call_function":
        if node.target in _INPLACE_FUNCTIONS:
            return True
        name = getattr(node.target, "__name__", "")
        return name.endswith("_") and not name.startswith("_") or "out" in node.kwargs
    return False


def source_line(node: fx.Node) -> str:
    """``file:line: code`` of the user frame that produced a node (library frames skipped), from its stack trace."""
    lines = [line.strip() for line in (node.meta.get("stack_trace") or "").strip().splitlines()]
    frames = []
    for i, line in enumerate(lines):
        if line.startswith("File ") and '"' in line and "line " in line:
            path, lineno = line.split('"')[1], line.split("line ")[1].split(",")[0]
            code = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith("File ") else ""
            frames.append((path, f"{path}:{lineno}" + (f": {code}" if code else "")))
    if not frames:
        return "<unknown source>"
    user = [text for path, text in frames if "site-packages" not in path and "/torch/" not in path]
    return (user or [text for _, text in frames])[-1]


_CASTS = {"float": torch.float32, "double": torch.float64, "half": torch.float16, "bfloat16": torch.bfloat16}


def cast_dtype(node: fx.Node) -> Optional[torch.dtype]:
    """The dtype of a pure dtype conversion (``.float()``, ``.to(torch.bfloat16)``, ``.type(dtype)``), else None."""
    name = op_name(node)
    if name in _CASTS and len(node.args) == 1 and not node.kwargs:
        return _CASTS[name]
    if name in ("to", "type") and not node.kwargs.keys() - {"dtype"}:
        args = list(node.args[1:]) + list(node.kwargs.values())
        if len(args) == 1 and isinstance(args[0], torch.dtype):
            return args[0]
    if name == "type_as" and len(node.args) == 2 and isinstance(node.args[1], fx.Node):
        other = fake_tensor(node.args[1])
        return other.dtype if other is not None else None
    return None
