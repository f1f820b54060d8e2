"""The pass: find every window source, follow it to a reduction, prove, rewrite, report.

Runs on Dynamo's torch-IR graph, before AOTAutograd, so autograd differentiates the fused op through its
registered backward (``nsa_compress_grad``) in every backend.

Safety: an internal error never breaks the user's compile; it is logged, counted and the candidate (or
the whole graph) is left unfused. ``strict=True`` (or ``NSA_GRAPH_STRICT=1``) raises instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import torch.fx as fx

from nsa_graph.contract import SUPPORTED_DTYPES, npu_unsupported_reason

from . import checks, rewrite, sequences
from .candidate import NotFused, Reduction, WindowSource, WindowView
from .layouts import layouts
from .nodes import fake_tensor, source_line
from .recognisers import COMBINED, REDUCTIONS, WINDOW_SOURCES
from .report import Candidate, FusionReport, publish

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


@dataclass
class _Run:
    """One run of the pass over one graph."""

    graph: fx.Graph
    target: Target
    report: FusionReport
    written: dict[fx.Node, fx.Node]  # tensors (and their aliases) written in place -> the writer
    fused_ops: dict[fx.Node, Candidate] = field(default_factory=dict)  # op node -> its candidate


def _plan(run: _Run, source: WindowSource, view: WindowView, reduction: Reduction) -> rewrite.Plan:
    checks.check_result(source, view, reduction)
    checks.check_not_padded(source)
    weight = [reduction.weight] if reduction.weight is not None else []
    biases = [pe for pe, _ in view.biases]
    checks.check_no_mutation([source.x] + weight + biases + view.nodes + reduction.nodes, run.written)
    x = fake_tensor(source.x)
    back = checks.cast_back(view, reduction, x)
    if back is not None:
        dtype, replaced = x.dtype, back
    else:
        dtype, replaced = fake_tensor(reduction.result).dtype, reduction.result
    if dtype not in SUPPORTED_DTYPES:
        raise NotFused(f"dtype {dtype} is not one the op supports (fp16, bf16, fp32, fp64)")
    return rewrite.Plan(source, reduction, checks.head_dim(source, reduction, x.dim()), dtype, replaced,
                        view_biases=view.biases)


def _describe(plan: rewrite.Plan, op: fx.Node) -> str:
    seq = op.kwargs.get("actual_seq_len")
    seqs = f", {len(seq)} sequences" if seq else ""
    head = f"heads: dim {plan.head} of x" if plan.head is not None else "one weight for all channels"
    return (f"nsa_compress(l={plan.source.block}, d={plan.source.stride}{seqs}; {head}; "
            f"{str(plan.dtype).replace('torch.', '')})")


def _fuse_candidate(run: _Run, found) -> None:
    if len(found) == 3:  # a pooling op or a loop over windows: windows and reduction found together
        source, view, reduction = found
        _fuse_one(run, source, view, view, reduction)
        return
    source, root = found
    # the same windows may feed several reductions (K and V weights over one unfold): fuse each
    done: set[fx.Node] = set()
    for attempt in range(16):
        view, reduction, reason = _find_reduction(root)
        if reduction is not None:
            if reduction.result in done:
                return  # already rewritten, yet still alive: never rewrite a subgraph twice
            done.add(reduction.result)
        if reduction is None:
            # a block view that nothing tried to reduce is an ordinary reshape, not a candidate
            if attempt == 0 and reason is None and source.spelling.startswith("unfold"):
                reason = (f"the windows are consumed by {_consumers(root)}, not by a recognised "
                          "weighted sum or mean over the window axis")
            if reason is not None:
                run.report.candidates.append(Candidate(source.spelling, source_line(source.node), False, reason,
                                                       source.block, source.stride))
            return
        if not _fuse_one(run, source, root, view, reduction):
            return
        if getattr(root.node, "_erased", False) or not root.node.users:
            return


def _fuse_one(run: _Run, source: WindowSource, root: WindowView, view: WindowView, reduction: Reduction) -> bool:
    """Prove and rewrite one (windows, reduction) pair; report it either way. Returns whether it fused."""
    where = source_line(source.node)
    pe = " + positional embedding (a bias after the op)" if view.biases else ""
    spelling = f"{source.spelling}{pe} -> {reduction.spelling}"
    try:
        plan = _plan(run, source, view, reduction)
        check = npu_unsupported_reason if run.target == "npu" else None
        upstream = sequences.ancestors(reduction.result)
        op = rewrite.apply(run.graph, plan, domain_check=check)
    except NotFused as exc:
        run.report.candidates.append(Candidate(spelling, where, False, str(exc), source.block, source.stride))
        return False
    old = root.nodes + view.nodes[len(root.nodes):] + reduction.nodes + [reduction.result, plan.replaced]
    rewrite.erase_dead(run.graph, list(dict.fromkeys(old)))
    sequences.erase_if_dead(run.graph, upstream)  # weight views and slices only the old subgraph used
    candidate = Candidate(spelling, where, True, _describe(plan, op), source.block, source.stride)
    run.report.candidates.append(candidate)
    run.fused_ops[op] = candidate
    return True


def _merge_loops(graph: fx.Graph, report: FusionReport, fused_ops: dict, strict: bool) -> None:
    """Per-sequence ops joined by ``cat`` -> one op with ``actual_seq_len`` (see :mod:`.sequences`)."""
    try:
        merged = sequences.merge_sequence_loops(graph)
    except Exception as exc:  # noqa: BLE001 - the per-sequence ops are already correct on their own
        if strict:
            raise
        log.warning("nsa_graph: merging a sequence loop failed: %s", exc, exc_info=True)
        report.errors.append(f"{type(exc).__name__}: {exc}; the per-sequence ops were kept")
        return
    for cat, ops, reason in merged:
        pieces = [fused_ops[op] for op in ops if op in fused_ops]
        first = pieces[0] if pieces else Candidate("", "", True, "")
        spelling = f"loop over {len(ops)} sequences joined by cat ({first.spelling})"
        if reason is None:  # the per-iteration candidates became one op: report it once
            for c in pieces:
                report.candidates.remove(c)
            report.candidates.append(Candidate(spelling, first.location, True,
                                               f"one nsa_compress with actual_seq_len ({len(ops)} pieces merged)",
                                               first.block, first.stride))
        else:
            report.candidates.append(Candidate(spelling, first.location, False,
                                               f"kept as {len(ops)} separate ops: {reason}"))


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
    run = _Run(graph, target, report, checks.inplace_writes(graph))
    for node in list(graph.nodes):
        if getattr(node, "_erased", False):
            continue
        for recognise in WINDOW_SOURCES + COMBINED:
            found = None
            try:
                found = recognise(node)
                if found is not None:
                    _fuse_candidate(run, found)
            except NotFused as exc:
                name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.name)
                report.candidates.append(Candidate(str(name), source_line(node), False, str(exc)))
            except Exception as exc:  # noqa: BLE001 - the user's compile must survive a bug in the pass
                if strict:
                    raise
                message = f"{type(exc).__name__}: {exc} (at {source_line(node)}); left unfused"
                log.warning("nsa_graph fusion pass internal error: %s", message, exc_info=True)
                report.errors.append(message)
            if found is not None:
                break
    if report.fused:
        _merge_loops(graph, report, run.fused_ops, strict)
        graph.lint()
        if isinstance(gm, fx.GraphModule):
            gm.recompile()
    for candidate in report.candidates:
        log.info("%s", candidate)
    publish(report)
    return report
