"""The stand-in for torchair's GE extension module ``torchair.core._torchair`` (the only part of torchair replaced).

It answers IR queries from the real prototypes (:mod:`._ir`), records every graph torchair hands to GE
(``TorchNpuGraphBase.load`` and ``export``: the serialized ModelDef GE would parse), checks each one with
:func:`._ir.ir_problems` and refuses, with :class:`GeRuntimeUnavailable`, everything that needs CANN:
compiling, running, tuning, device queries and dumps.
"""

from __future__ import annotations

import enum
import threading
import types
from typing import Any

from ._ir import IR_TABLE, ir_problems

MODULE_NAME = "torchair.core._torchair"


class GeRuntimeUnavailable(RuntimeError):
    """This machine has no GE runtime (no CANN): a GE graph can be built and checked, not compiled or run."""


class GeIrError(RuntimeError):
    """A graph handed to GE breaks the IR prototypes (what GE's own proto check would reject)."""


_NO_RUNTIME = ("no GE runtime here (offline torchair without CANN): {what} needs CANN and an NPU. The graph was "
               "recorded where torchair hands it to GE; read it with nsa_graph.offline_torchair.recorded_graphs().")

_lock = threading.Lock()
_records: list[tuple[str, Any]] = []  # (boundary, GraphDef), oldest first
engine_options: dict[str, str] = {}


def _record(boundary: str, serialized: bytes) -> Any:
    from torchair._ge_concrete_graph import ge_ir_pb2 as pb

    model = pb.ModelDef()
    model.ParseFromString(serialized)
    if len(model.graph) != 1:
        raise GeIrError(f"torchair handed GE a model with {len(model.graph)} graphs at {boundary}; expected 1")
    graph = model.graph[0]
    with _lock:
        _records.append((boundary, graph))
    problems = ir_problems(graph)
    if problems:
        raise GeIrError(f"GE graph {graph.name!r} (at {boundary}) breaks the IR prototypes:\n  - "
                        + "\n  - ".join(problems))
    return graph


def records() -> list[tuple[str, Any]]:
    with _lock:
        return list(_records)


def clear() -> None:
    with _lock:
        _records.clear()


class TorchNpuGraphBase:
    """Base of torchair's ``TorchNpuGraph``: one GE graph's executor."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.loaded = None  # the recorded GraphDef once load() ran

    def load(self, serialized: bytes, options: dict, input_placements: Any, output_dtypes: Any,
             executor_type: int) -> None:
        self.loaded = _record("load", serialized)
        self.load_options = dict(options)

    def set_hint_shape(self, inputs_shape: Any, output_shapes: Any) -> None:
        self.hint_shapes = (inputs_shape, output_shapes)

    def compile(self) -> None:
        raise GeRuntimeUnavailable(_NO_RUNTIME.format(what=f"compiling GE graph {self.name!r}"))

    def auto_tune(self, *args: Any) -> None:
        raise GeRuntimeUnavailable(_NO_RUNTIME.format(what=f"tuning GE graph {self.name!r} (AOE)"))

    def run(self, *args: Any) -> None:
        raise GeRuntimeUnavailable(_NO_RUNTIME.format(what=f"running GE graph {self.name!r}"))


class TorchDataType(enum.IntEnum):
    """Names of the extension's dtype enum (torchair reads them at import; only GE consumes the values)."""

    BOOL = 0
    UINT8 = 1
    INT8 = 2
    INT16 = 3
    UINT16 = 4
    INT32 = 5
    UINT32 = 6
    INT64 = 7
    UINT64 = 8
    BF16 = 9
    FLOAT16 = 10
    FLOAT32 = 11
    FLOAT64 = 12
    COMPLEX64 = 13
    COMPLEX128 = 14


def get_registered_ir_def(op_type: str) -> tuple:
    ir = IR_TABLE.get(op_type)
    # "ERROR" is GE's answer for an op type it has no prototype for
    return ir.registered_ir_def() if ir is not None else ("ERROR", [], [], [])


def check_cann_compat(op_type: str, runtime_optional_inputs: tuple, runtime_optional_attrs: tuple) -> str:
    """'' when the IR has every optional input/attribute a converter sets (torchair's contract: else a message).

    Op types this stand-in has no prototype for cannot be checked offline and pass, as on a CANN that
    has them; their nodes are still recorded, and GE's real check runs on a machine with CANN.
    """
    ir = IR_TABLE.get(op_type)
    if ir is None:
        return ""
    unknown = [n for n in runtime_optional_inputs if n not in {i.name for i in ir.inputs}]
    unknown += [n for n in runtime_optional_attrs if n not in {a.name for a in ir.attrs}]
    return f"{op_type} has no optional inputs/attributes named {unknown}" if unknown else ""


def export(serialized: bytes, options: dict) -> None:
    _record("export", serialized)
    raise GeRuntimeUnavailable(_NO_RUNTIME.format(
        what=f"writing the .air model {options.get('export_name', '')!r} (GE serialises it)"))


def _refuse(what: str):
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise GeRuntimeUnavailable(_NO_RUNTIME.format(what=what))

    refuse.__name__ = what
    return refuse


def _initialize_graph_engine(options: dict) -> None:
    # torchair initialises GE while building a graph, before any GE work; record the options only
    engine_options.update(options)


def module() -> types.ModuleType:
    """A fresh ``torchair.core._torchair`` module object."""
    mod = types.ModuleType(MODULE_NAME, __doc__)
    mod.TorchNpuGraphBase = TorchNpuGraphBase
    mod.TorchDataType = TorchDataType
    mod.get_registered_ir_def = get_registered_ir_def
    mod.check_cann_compat = check_cann_compat
    mod.export = export
    mod.InitializeGraphEngine = _initialize_graph_engine
    mod.FinalizeGraphEngine = lambda: None
    mod.SetDebugLogPath = lambda path: None  # GE's own log file; torchair's Python logging still works
    mod.StupidRepeat = lambda word, times: word * times
    for name in ("GetSocName", "CheckAclnnAvaliable", "InitDeviceStdoutChannel", "AclopStartDumpArgs",
                 "AclopStopDumpArgs", "AclmdlSetDump", "as_torch_tensors"):
        setattr(mod, name, _refuse(name))
    mod.GeRuntimeUnavailable = GeRuntimeUnavailable
    return mod
