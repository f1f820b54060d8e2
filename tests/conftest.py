import functools
import os

import pytest

# torch_npu, if present on a machine without CANN, must not be autoloaded by `import torch`.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")


@functools.cache
def npu_unavailable_reason():
    """None when a real Ascend NPU with a working torch_npu is present, else why not."""
    try:
        import torch_npu  # noqa: F401
        import torch
    except Exception as exc:  # no torch_npu, or one without CANN
        return f"torch_npu not importable ({type(exc).__name__}: {exc})"
    if not torch.npu.is_available():
        return "torch_npu imported but no NPU device is available"
    return None


def pytest_collection_modifyitems(config, items):
    npu_items = [item for item in items if "npu" in item.keywords]
    if npu_items and npu_unavailable_reason() is not None:
        skip = pytest.mark.skip(reason=f"needs an Ascend NPU: {npu_unavailable_reason()}")
        for item in npu_items:
            item.add_marker(skip)
