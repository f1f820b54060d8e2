"""Fetch torchair's Python sources from the torch_npu wheel that matches the installed torch.

torchair is not published on its own: it ships inside torch_npu wheels at ``torch_npu/dynamo/torchair``.
The wheel is downloaded with pip (never installed: an installed torch_npu without CANN breaks
``import torch``) and only the torchair Python files are extracted. The extension modules (``*.so``) are
left out on purpose: they link against CANN, and leaving them out guarantees that nothing native from the
wheel is ever loaded on a machine without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

import torch

_PREFIX = "torch_npu/dynamo/torchair/"
_MARKER = "nsa_graph_fetched.json"


class TorchairNotFetched(RuntimeError):
    """The offline torchair copy for this torch version is not in the cache yet."""


def torch_npu_version() -> str:
    """The torch_npu release paired with the installed torch: torch's version without its local suffix."""
    return torch.__version__.split("+", 1)[0]


def cache_dir() -> Path:
    """``$NSA_GRAPH_CACHE`` if set, else ``~/.cache/nsa_graph``."""
    root = os.environ.get("NSA_GRAPH_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "nsa_graph"


def torchair_dir(version: Optional[str] = None) -> Path:
    """Where the extracted ``torchair`` package of torch_npu ``version`` lives (it may not exist yet)."""
    return cache_dir() / f"torchair-{version or torch_npu_version()}" / "torchair"


def is_fetched(version: Optional[str] = None) -> bool:
    target = torchair_dir(version)
    return (target.parent / _MARKER).is_file() and (target / "__init__.py").is_file()


def fetch_command() -> str:
    return "nsa-graph fetch-torchair"


def _download_wheel(version: str, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--dest", str(into), f"torch_npu=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob(f"torch_npu-{version}-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise RuntimeError(
            f"could not download torch_npu=={version} (needed for its torchair sources): "
            f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{proc.stderr.strip()}"
        )
    return wheels[0]


def _extract(wheel: Path, version: str) -> Path:
    target = torchair_dir(version)
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.startswith(_PREFIX) and not n.endswith(("/", ".so"))]
        if not any(n == _PREFIX + "__init__.py" for n in names):
            raise RuntimeError(f"{wheel.name} has no {_PREFIX}__init__.py: not a torch_npu wheel with torchair")
        staging = Path(tempfile.mkdtemp(prefix="torchair-", dir=target.parent.parent))
        try:
            for name in names:
                dest = staging / "torchair" / name[len(_PREFIX):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
            (staging / _MARKER).write_text(json.dumps({"wheel": wheel.name, "files": len(names)}))
            # publish atomically so a concurrent reader never sees a half-extracted package
            if target.parent.exists():
                shutil.rmtree(target.parent)
            staging.rename(target.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def fetch(version: Optional[str] = None, wheel: Optional[Path] = None, force: bool = False) -> Path:
    """Make the torchair sources of torch_npu ``version`` available offline; return the package directory.

    ``wheel`` uses a local torch_npu wheel instead of downloading one.
    """
    version = version or torch_npu_version()
    if is_fetched(version) and not force:
        return torchair_dir(version)
    cache_dir().mkdir(parents=True, exist_ok=True)
    with _exclusive(cache_dir() / ".fetch.lock"):
        if is_fetched(version) and not force:  # another process fetched it while we waited
            return torchair_dir(version)
        if wheel is not None:
            wheel = Path(wheel)
            if not wheel.name.startswith(f"torch_npu-{version}-"):
                raise ValueError(f"wheel={wheel.name!r} is not torch_npu {version} (the version paired with torch "
                                 f"{torch.__version__})")
            return _extract(wheel, version)
        with tempfile.TemporaryDirectory(prefix="torch_npu-wheel-", dir=cache_dir()) as tmp:
            return _extract(_download_wheel(version, Path(tmp)), version)


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    # test workers (pytest-xdist) may fetch at the same time; one extracts, the others reuse its result
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
