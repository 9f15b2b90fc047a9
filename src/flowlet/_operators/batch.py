"""``batch(size)``: lists of ``size`` items."""

from __future__ import annotations

from .._engine.nodes import AsyncBatch
from .._engine.plan import Plan, Stage, Upstream
from .._engine.sync_chain import Batches
from .._validate import check_count


class BatchStage(Stage):
    """Lists of ``size`` consecutive items; the last one may be shorter, none is empty.
    Runs in lockstep: it reads exactly the items of the batch it is filling."""

    __slots__ = ("size",)

    def __init__(self, size: object) -> None:
        self.size = check_count("size", size)

    def describe(self) -> str:
        return f"batch({self.size})"

    def attach(self, upstream: Upstream, plan: Plan) -> Upstream:
        size = self.size
        fused = plan.fuse(upstream, lambda below: Batches(below, size))
        if fused is not None:
            return fused
        return plan.node(lambda up: AsyncBatch(up, size), upstream)
