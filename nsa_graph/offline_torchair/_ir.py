"""GE IR prototypes the offline stand-in knows, and the conformance check of recorded GE nodes against them.

The prototypes are the real ones (ops-transformer ``nsa_compress_def.cpp`` / ``nsa_compress_grad_def.cpp``):
names, order and kinds of inputs, outputs and attributes, dtypes per input. ``ge.custom_op`` does not check a
converter's names against the IR, and without CANN nothing else would; :func:`ir_problems` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

# AttrDef oneof field that holds each GE attribute value kind
_ATTR_FIELD = {"VT_INT": "i", "VT_STRING": "s", "VT_FLOAT": "f", "VT_BOOL": "b", "VT_DATA_TYPE": "dt"}
_LIST_ATTR_FIELD = ("VT_LIST_INT", "VT_LIST_STRING", "VT_LIST_FLOAT", "VT_LIST_BOOL")


@dataclass(frozen=True)
class IrInput:
    name: str
    kind: str  # "required" | "optional" | "dynamic"
    dtypes: tuple[str, ...]  # GE proto DataType names the operator accepts
    always_fed: bool = False  # optional in the IR, but the op's InferShape reads it unconditionally


@dataclass(frozen=True)
class IrAttr:
    name: str
    kind: str  # "VT_INT", "VT_STRING", ...
    required: bool


@dataclass(frozen=True)
class IrDef:
    op_type: str
    inputs: tuple[IrInput, ...]
    outputs: tuple[tuple[str, str], ...]  # (name, "required" | "dynamic")
    attrs: tuple[IrAttr, ...]
    output_dtype_from: str  # every output has this input's dtype (the op's InferDataType)

    def registered_ir_def(self) -> tuple:
        """The tuple GE's ``GetRegisteredIrDef`` gives torchair: ``(status, inputs, outputs, attrs)``."""
        return (
            "SUCCESS",
            [(i.name, i.kind) for i in self.inputs],
            [(name, kind) for name, kind in self.outputs],
            [(a.name, a.kind) for a in self.attrs],
        )


_HALF = ("DT_FLOAT16", "DT_BF16")
_SEQ = IrInput("actSeqLenOptional", "optional", ("DT_INT64",), always_fed=True)

IR_TABLE: dict[str, IrDef] = {
    "NsaCompress": IrDef(
        "NsaCompress",
        inputs=(IrInput("input", "required", _HALF), IrInput("weight", "required", _HALF), _SEQ),
        outputs=(("output", "required"),),
        attrs=(
            IrAttr("layoutOptional", "VT_STRING", required=False),
            IrAttr("compressBlockSize", "VT_INT", required=True),
            IrAttr("compressStride", "VT_INT", required=True),
            IrAttr("actSeqLenType", "VT_INT", required=True),
        ),
        output_dtype_from="input",
    ),
    # the grad's attribute order differs from the forward's: layout comes last
    "NsaCompressGrad": IrDef(
        "NsaCompressGrad",
        inputs=(
            IrInput("outputGrad", "required", _HALF),
            IrInput("input", "required", _HALF),
            IrInput("weight", "required", _HALF),
            _SEQ,
        ),
        outputs=(("inputGrad", "required"), ("weightGrad", "required")),
        attrs=(
            IrAttr("compressBlockSize", "VT_INT", required=True),
            IrAttr("compressStride", "VT_INT", required=True),
            IrAttr("actSeqLenType", "VT_INT", required=True),
            IrAttr("layoutOptional", "VT_STRING", required=False),
        ),
        output_dtype_from="input",
    ),
}


def _slot_of(name: str, slots: list[tuple[str, str]]) -> Optional[int]:
    """Index of the IR slot a descriptor name belongs to (dynamic slot ``x`` takes ``x0``, ``x1``, ...)."""
    for index, (slot, kind) in enumerate(slots):
        if name == slot and kind != "dynamic":
            return index
        if kind == "dynamic" and name.startswith(slot) and name[len(slot):].isdigit():
            return index
    return None


def _slot_problems(where: str, what: str, names: list[str], slots: list[tuple[str, str]]) -> tuple[list, list]:
    """(problems, slot index per name or None): unknown names and names out of the IR's order."""
    indices = [_slot_of(name, slots) for name in names]
    problems = [f"{where}: {what} {name!r} is not an {what} of the IR ({what}s: {[s for s, _ in slots]})"
                for name, index in zip(names, indices) if index is None]
    known = [i for i in indices if i is not None]
    problems += [f"{where}: {what} {slots[i][0]!r} appears {known.count(i)} times" for i in sorted(set(known))
                 if slots[i][1] != "dynamic" and known.count(i) > 1]
    if known != sorted(known):
        problems.append(f"{where}: {what}s {names} are out of the IR's order {[s for s, _ in slots]}")
    return problems, indices


def _dtype_name(pb: Any, dtype: int) -> str:
    try:
        return pb.DataType.Name(dtype)
    except ValueError:
        return f"<{dtype}>"


def _known_dtype(producers: dict[str, Any], ref: str, pb: Any) -> Optional[str]:
    """The dtype of tensor ``ref`` if the graph states it, else None.

    Data and Const outputs carry their dtype; so do outputs torchair set from an FX node's meta (marked
    ``_meta``). Other intermediate outputs hold a placeholder (torchair writes DT_FLOAT where the dtype is
    undefined) that GE's InferDataType replaces, so they are not checked.
    """
    if not ref:
        return None
    name, _, index = ref.rpartition(":")
    producer = producers.get(name)
    if producer is None or not index.isdigit() or int(index) >= len(producer.output_desc):
        return None
    return stated_dtype(producer, producer.output_desc[int(index)], pb)


def stated_dtype(op: Any, output_desc: Any, pb: Any) -> Optional[str]:
    """The dtype name of one of ``op``'s outputs if the graph states it (see :func:`_known_dtype`), else None."""
    if op.type in ("Data", "Const") or "_meta" in output_desc.attr:
        dtype = _dtype_name(pb, output_desc.dtype)
        return None if dtype == "DT_UNDEFINED" else dtype
    return None


def _op_problems(op: Any, ir: IrDef, producers: dict[str, Any], pb: Any) -> list[str]:
    where = f"{ir.op_type} node {op.name!r}"
    problems = []
    ir_inputs = [(i.name, i.kind) for i in ir.inputs]
    names = [d.name for d in op.input_desc]
    found, indices = _slot_problems(where, "input", names, ir_inputs)
    problems += found
    fed, input_dtypes = {}, {}
    for index, ref in zip(indices, op.input):
        if index is None:
            continue
        spec = ir.inputs[index]
        fed[spec.name] = fed.get(spec.name, False) or bool(ref)
        dtype = _known_dtype(producers, ref, pb)
        input_dtypes[spec.name] = dtype
        if dtype is not None and dtype not in spec.dtypes:
            problems.append(f"{where}: input {spec.name!r} has dtype {dtype}, the IR accepts {list(spec.dtypes)}")
    for spec in ir.inputs:
        if (spec.kind == "required" or spec.always_fed) and not fed.get(spec.name, False):
            why = "required" if spec.kind == "required" else "read unconditionally by the op's InferShape"
            problems.append(f"{where}: input {spec.name!r} is not fed ({why})")

    out_names = [d.name for d in op.output_desc]
    found, indices = _slot_problems(where, "output", out_names, list(ir.outputs))
    problems += found
    for index, (name, kind) in enumerate(ir.outputs):
        if kind == "required" and index not in indices:
            problems.append(f"{where}: required output {name!r} is missing")
    expected = input_dtypes.get(ir.output_dtype_from)
    for desc in op.output_desc:
        got = stated_dtype(op, desc, pb)
        if expected is not None and got is not None and got != expected:
            problems.append(f"{where}: output {desc.name!r} is {got}, the op gives the dtype of "
                            f"{ir.output_dtype_from!r} ({expected})")

    ir_attrs = {a.name: a for a in ir.attrs}
    for name in op.attr:
        if name.startswith("_"):
            continue  # torchair/GE bookkeeping (_input_name_key, _inference_rule, ...), not IR attributes
        spec = ir_attrs.get(name)
        if spec is None:
            problems.append(f"{where}: attribute {name!r} is not an attribute of {ir.op_type} "
                            f"(attributes: {list(ir_attrs)})")
            continue
        value = op.attr[name]
        got = value.WhichOneof("value")
        ok = got == ("list" if spec.kind in _LIST_ATTR_FIELD else _ATTR_FIELD.get(spec.kind))
        if not ok:
            problems.append(f"{where}: attribute {name!r} holds a {got!r} value, the IR declares {spec.kind}")
    for spec in ir.attrs:
        if spec.required and spec.name not in op.attr:
            problems.append(f"{where}: required attribute {spec.name!r} is missing")
    return problems


def _edge_problems(op: Any, producers: dict[str, Any]) -> list[str]:
    problems = []
    for ref in op.input:
        if not ref:
            continue  # an unfed optional input
        name, _, index = ref.rpartition(":")
        producer = producers.get(name)
        if producer is None:
            problems.append(f"node {op.name!r} ({op.type}) reads {ref!r}: no node named {name!r} in the graph")
        elif index != "-1" and len(producer.output_desc) and int(index) >= len(producer.output_desc):
            problems.append(f"node {op.name!r} ({op.type}) reads {ref!r}: {name!r} has only "
                            f"{len(producer.output_desc)} outputs")
    return problems


def ir_problems(graph_def: Any) -> list[str]:
    """Every way the GE graph breaks the IR prototypes this module knows, or dangles an edge; [] if none.

    Nodes whose type is in :data:`IR_TABLE` are checked for input names and order, required inputs fed,
    input dtypes where the graph states them, output names and dtypes, attribute names, value kinds and
    presence. Every node's data inputs must name an existing node and output.
    """
    from torchair._ge_concrete_graph import ge_ir_pb2 as pb

    producers = {op.name: op for op in graph_def.op}
    problems = []
    for op in graph_def.op:
        problems += _edge_problems(op, producers)
        ir = IR_TABLE.get(op.type)
        if ir is not None:
            problems += _op_problems(op, ir, producers, pb)
    return problems
