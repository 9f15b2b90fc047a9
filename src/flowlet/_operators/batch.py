"""``batch(size, timeout=None)``: lists of up to ``size`` items."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio

from .._engine.markers import END, TIMEOUT
from .._engine.nodes import AsyncBatch
from .._engine.plan import Plan, Stage, Upstream
from .._engine.reader import Reader
from .._engine.sync_chain import Batches
from .._validate import check_count, check_seconds


class BatchStage(Stage):
    """Lists of ``size`` consecutive items; the last one may be shorter; none is empty.

    With ``timeout``, a batch is also emitted, shorter, once ``timeout`` seconds (on the
    event loop's clock) have passed since its first item arrived: a slow upstream never
    delays a due batch. Either way it holds at most ``size`` items, and reads exactly the
    items of the batch it is filling (over an async upstream, through a one-item
    hand-off, so that the timeout never cancels a read).
    """

    __slots__ = ("size", "timeout")

    def __init__(self, size: object, timeout: object = None) -> None:
        self.size = check_count("size", size)
        self.timeout = None if timeout is None else check_seconds("timeout", timeout)

    def describe(self) -> str:
        timeout = "" if self.timeout is None else f", timeout={self.timeout:g}"
        return f"batch({self.size}{timeout})"

    @property
    def run_ahead(self) -> int:
        return 0 if self.timeout is None else 1  # the hand-off's one item, if any

    def attach(self, upstream: Upstream, plan: Plan) -> Upstream:
        size = self.size
        if self.timeout is not None:
            return plan.generator(upstream, self._timed, self.describe(), timed=True)
        fused = plan.fuse(upstream, lambda below: Batches(below, size))
        if fused is not None:
            return fused
        return plan.node(lambda up: AsyncBatch(up, size), upstream)

    async def _timed(self, upstream: Reader[Any]) -> AsyncIterator[list[Any]]:
        size, timeout = self.size, self.timeout
        assert timeout is not None
        while (first := await upstream.read()) is not END:
            batch = [first]
            deadline = anyio.current_time() + timeout
            while len(batch) < size:
                item = await upstream.read_before(deadline)
                if item is TIMEOUT:
                    break
                if item is END:
                    yield batch
                    return
                batch.append(item)
            yield batch
