import os

# torch_npu, if present on a machine without CANN, must not be autoloaded by `import torch`.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
