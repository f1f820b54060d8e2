"""The fusion report: every candidate, fused or not, why, and where in the user's code.

Reports go to three places: the returned :class:`FusionReport`, the ``nsa_graph.passes.fuse`` logger
(``TORCH_LOGS="+nsa_graph.passes"``) and ``torch._dynamo.utils.counters["nsa_graph"]``
(``candidates``, ``fused``, ``unfused``, ``errors``). :func:`collecting` gathers the reports of every
graph compiled inside it (used by :func:`nsa_graph.explain`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional

from torch._dynamo.utils import counters


@dataclass
class Candidate:
    """One compression subgraph the pass recognised (or tried to)."""

    spelling: str  # e.g. "unfold(1, 16, 8) -> mul + sum (weighted sum)"
    location: str  # "file.py:12: code" of the window source
    fused: bool
    reason: str  # why not fused; for a fused one, what it became
    block: Optional[int] = None
    stride: Optional[int] = None

    def __str__(self) -> str:
        status = "fused" if self.fused else "NOT fused"
        return f"[{status}] {self.spelling} at {self.location}: {self.reason}"


@dataclass
class FusionReport:
    candidates: list[Candidate] = field(default_factory=list)
    #: internal errors the pass caught (the graph was left unfused)
    errors: list[str] = field(default_factory=list)

    @property
    def fused(self) -> list[Candidate]:
        return [c for c in self.candidates if c.fused]

    @property
    def unfused(self) -> list[Candidate]:
        return [c for c in self.candidates if not c.fused]

    def extend(self, other: "FusionReport") -> None:
        self.candidates.extend(other.candidates)
        self.errors.extend(other.errors)

    def __str__(self) -> str:
        head = f"nsa_graph fusion report: {len(self.fused)} fused, {len(self.unfused)} not fused"
        lines = [head] + [f"  {c}" for c in self.candidates] + [f"  [error] {e}" for e in self.errors]
        return "\n".join(lines)


_SINKS: list[FusionReport] = []


@contextlib.contextmanager
def collecting() -> Iterator[FusionReport]:
    """Collect the reports of every pass run inside the block into one FusionReport."""
    sink = FusionReport()
    _SINKS.append(sink)
    try:
        yield sink
    finally:
        _SINKS.remove(sink)


def publish(report: FusionReport) -> None:
    """Count a finished pass run and hand it to the active collectors."""
    stats = counters["nsa_graph"]
    stats["candidates"] += len(report.candidates)
    stats["fused"] += len(report.fused)
    stats["unfused"] += len(report.unfused)
    stats["errors"] += len(report.errors)
    for sink in _SINKS:
        sink.extend(report)
