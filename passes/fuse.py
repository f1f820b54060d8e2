"""The pass: find every window source, follow it to a reduction, prove, rewrite, report.

Runs on Dynamo's torch-IR graph, before AOTAutograd, so autograd differentiates the fused op through its
registered backward (``nsa_compress_grad``) in every backend.

Safety: an internal error never breaks the user's compile; it is logged, counted and the candidate (or
the whole graph) is left unfused. ``strict=True`` (or ``NSA_GRAPH_STRICT=1``) raises instead.
"""

from __future__ import annotations

import logging
import os
from typing import Literal, Optional, Union

import torch.fx as fx

from nsa_graph.contract import npu_unsupported_reason

from . import checks, rewrite
from .candidate import NotFused, Reduction, WindowSource, WindowView
from .nodes import fake_tensor, source_line
from .report import Candidate, FusionReport, publish
from .reductions import REDUCTIONS
from .window_sources import WINDOW_SOURCES, layouts

log = logging.getLogger(__name__)

Target = Literal["generic", "npu"]


def strict_default() -> bool:
    return os.environ.get("NSA_GRAPH_STRICT", "") not in ("", "0")


def _find_reduction(root: WindowView) -> tuple[Optional[WindowView], Optional[Reduction], Optional[str]]:
    """The first recognised reduction reachable from the windows, else the most specific reason."""
    reason = None
    for view in layouts(root):
        for user in list(view.node.users):
            for recognise in REDUCTIONS:
                try:
                    reduction = recognise(view, user)
                except NotFused as exc:
                    reason = reason or str(exc)
                    continue
                if reduction is not None:
                    return view, reduction, None
    return None, None, reason


def _consumers(root: WindowView) -> str:
    names = sorted({str(u.target) if u.op == "call_method" else getattr(u.target, "__name__", str(u.target))
                    for view in layouts(root) for u in view.node.users})
    return ", ".join(names) or "nothing"


def _plan(source: WindowSource, view: WindowView, reduction: Reduction) -> rewrite.Plan:
    checks.check_result(source, view, reduction)
    weight = [reduction.weight] if reduction.weight is not None else []
    checks.check_no_mutation([source.x] + weight + view.nodes + reduction.nodes)
    x = fake_tensor(source.x)
    back = checks.cast_back(view, reduction, x)
    if back is not None:
        dtype, replaced = x.dtype, back
    else:
        dtype, replaced = fake_tensor(reduction.result).dtype, reduction.result
    return rewrite.Plan(source, reduction, checks.head_dim(source, reduction, x.dim()), dtype, replaced)


def _describe(plan: rewrite.Plan, op: fx.Node) -> str:
    seq = op.kwargs.get("actual_seq_len")
    seqs = f", {len(seq)} sequences" if seq else ""
    head = f"heads = x dim {plan.head}" if plan.head is not None else "weight shared by heads"
    return (f"nsa_compress(l={plan.source.block}, d={plan.source.stride}{seqs}; {head}; "
            f"{str(plan.dtype).replace('torch.', '')})")


def _fuse_candidate(graph: fx.Graph, node: fx.Node, found, target: Target, report: FusionReport) -> None:
    source, root = found
    where = source_line(source.node)
    view, reduction, reason = _find_reduction(root)
    if reduction is None:
        # a block view that nothing tried to reduce is an ordinary reshape, not a candidate
        if reason is not None or source.spelling.startswith("unfold"):
            reason = reason or (f"the windows are consumed by {_consumers(root)}, not by a recognised weighted "
                                "sum or mean over the window axis")
            report.candidates.append(Candidate(source.spelling, where, False, reason, source.block, source.stride))
        return
    spelling = f"{source.spelling} -> {reduction.spelling}"
    try:
        plan = _plan(source, view, reduction)
        check = npu_unsupported_reason if target == "npu" else None
        op = rewrite.apply(graph, plan, domain_check=check)
    except NotFused as exc:
        report.candidates.append(Candidate(spelling, where, False, str(exc), source.block, source.stride))
        return
    rewrite.erase_dead(graph, root.nodes + view.nodes[len(root.nodes):] + reduction.nodes + [reduction.result])
    report.candidates.append(Candidate(spelling, where, True, _describe(plan, op), source.block, source.stride))


def fuse_nsa_compress(
    gm: Union[fx.GraphModule, fx.Graph],
    *,
    target: Target = "generic",
    strict: Optional[bool] = None,
) -> FusionReport:
    """Rewrite every proven NSA compression subgraph of ``gm`` into ``nsa_graph::nsa_compress``, in place.

    ``target="npu"`` fuses only cases inside the Ascend kernel's domain and reports why the others were
    left alone. Returns the report (also logged and counted, see :mod:`.report`).
    """
    strict = strict_default() if strict is None else strict
    graph = gm.graph if isinstance(gm, fx.GraphModule) else gm
    report = FusionReport()
    for node in list(graph.nodes):
        if getattr(node, "_erased", False):
            continue
        for recognise in WINDOW_SOURCES:
            found = None
            try:
                found = recognise(node)
                if found is not None:
                    _fuse_candidate(graph, node, found, target, report)
            except NotFused as exc:
                report.candidates.append(Candidate(str(node.target), source_line(node), False, str(exc)))
            except Exception as exc:  # noqa: BLE001 - the user's compile must survive a bug in the pass
                if strict:
                    raise
                message = f"{type(exc).__name__}: {exc} (at {source_line(node)}); left unfused"
                log.warning("nsa_graph fusion pass internal error: %s", message, exc_info=True)
                report.errors.append(message)
            if found is not None:
                break
    if report.fused:
        graph.lint()
        if isinstance(gm, fx.GraphModule):
            gm.recompile()
    for candidate in report.candidates:
        log.info("%s", candidate)
    publish(report)
    return report
