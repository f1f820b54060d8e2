"""A readable listing of a GE GraphDef: one line per node with its inputs, attributes and outputs."""

from __future__ import annotations

from typing import Any

from ._ir import IR_TABLE, stated_dtype

_SMALL_CONST = 16  # Const values shown inline up to this many elements

_NUMPY_DTYPE = {"DT_INT64": "<i8", "DT_INT32": "<i4", "DT_FLOAT": "<f4", "DT_DOUBLE": "<f8"}


def _dtype(pb: Any, value: int) -> str:
    try:
        return pb.DataType.Name(value)[3:].lower()
    except ValueError:
        return f"dtype<{value}>"


def _tensor(pb: Any, op: Any, desc: Any) -> str:
    dims = ",".join(str(d) for d in desc.shape.dim)
    dtype = stated_dtype(op, desc, pb)
    return f"{dtype[3:].lower() if dtype else '?'}[{dims}]"


def _const_value(pb: Any, tensor: Any) -> str:
    import numpy as np

    np_dtype = _NUMPY_DTYPE.get(pb.DataType.Name(tensor.desc.dtype))
    if np_dtype is None:
        return f"<{len(tensor.data)} bytes>"
    values = np.frombuffer(tensor.data, dtype=np_dtype)
    if values.size > _SMALL_CONST:
        return f"<{values.size} values>"
    return str(values.tolist()) if tensor.desc.shape.dim else str(values.tolist()[0] if values.size else [])


def _attr(pb: Any, value: Any) -> str:
    kind = value.WhichOneof("value")
    if kind == "s":
        return repr(value.s.decode(errors="replace"))
    if kind in ("i", "f", "b"):
        return str(getattr(value, kind))
    if kind == "dt":
        return _dtype(pb, value.dt)
    if kind == "list":
        for field in ("i", "f", "b", "s"):
            items = list(getattr(value.list, field))
            if items:
                return str([x.decode(errors="replace") if isinstance(x, bytes) else x for x in items])
        return "[]"
    if kind == "t":
        return _const_value(pb, value.t)
    return f"<{kind}>"


def describe_graph(graph_def: Any, internal_attrs: bool = False) -> str:
    """``name = Type(input=producer:output, ...; attr=value, ...) -> output: dtype[dims]``, one node a line.

    Attributes starting with ``_`` (torchair/GE bookkeeping) are left out unless ``internal_attrs``.
    Dynamic dims print as -1; dtypes left to GE's inference (torchair fills in a DT_FLOAT placeholder)
    print as ``?``; dims GE infers print as ``[]``.
    """
    from torchair._ge_concrete_graph import ge_ir_pb2 as pb

    lines = [f"graph {graph_def.name}: {len(graph_def.op)} nodes"]
    for op in graph_def.op:
        names = [d.name for d in op.input_desc]
        inputs = []
        for i, ref in enumerate(op.input):
            if ref.endswith(":-1"):
                inputs.append(f"^{ref[:-3]}")  # control edge
            else:
                name = names[i] if i < len(names) and names[i] else f"x{i}"
                inputs.append(f"{name}={ref or '<unfed>'}")
        ir = IR_TABLE.get(op.type)
        order = {a.name: i for i, a in enumerate(ir.attrs)} if ir else {}  # IR order, then by name
        keys = sorted(op.attr, key=lambda k: (order.get(k, len(order)), k))
        attrs = [f"{k}={_attr(pb, op.attr[k])}" for k in keys if internal_attrs or not k.startswith("_")]
        if op.type == "Const" and "value" in op.attr:
            attrs = [a for a in attrs if not a.startswith("value=")] + [f"value={_attr(pb, op.attr['value'])}"]
        args = ", ".join(inputs) + ("; " if inputs and attrs else "") + ", ".join(attrs)
        outputs = ", ".join(f"{d.name + ': ' if d.name else ''}{_tensor(pb, op, d)}" for d in op.output_desc)
        lines.append(f"  {op.name} = {op.type}({args})" + (f" -> {outputs}" if outputs else ""))
    return "\n".join(lines)
