"""Load a user's model for the command line: ``path/to/file.py:name``.

``name`` is either a zero-argument callable returning ``(model, example_inputs)``, or, with ``inputs`` given,
the model itself (a module, a function, or a class to instantiate with no arguments) while ``inputs`` names a
zero-argument callable in the same file returning the example inputs.
"""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path
from typing import Any, Callable, Optional


def _load_file(spec: str) -> tuple[types.ModuleType, str]:
    path, sep, name = spec.rpartition(":")
    if not sep or not path.endswith(".py") or not name:
        raise ValueError(f"model={spec!r}: expected path/to/file.py:callable")
    file = Path(path).resolve()
    if not file.is_file():
        raise FileNotFoundError(f"model={spec!r}: no file {path}")
    module_spec = importlib.util.spec_from_file_location(f"_nsa_graph_user_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module, name


def _attribute(module: types.ModuleType, spec: str, name: str) -> Callable:
    found = getattr(module, name, None)
    if not callable(found):
        raise AttributeError(f"model={spec!r}: {module.__file__} has no callable {name!r}")
    return found


def load_model(spec: str, inputs: Optional[str] = None) -> tuple[Any, tuple]:
    """``(model, example_inputs)`` from ``path.py:name`` (see the module docstring)."""
    module, name = _load_file(spec)
    found = _attribute(module, spec, name)
    if inputs is not None:
        model = found() if isinstance(found, type) else found
        example = _attribute(module, spec, inputs)()
    else:
        built = found()
        if not (isinstance(built, tuple) and len(built) == 2 and callable(built[0])):
            raise TypeError(f"model={spec!r}: {name}() must return (model, example_inputs), "
                            f"got {type(built).__name__}")
        model, example = built
    return model, tuple(example) if isinstance(example, (tuple, list)) else (example,)
