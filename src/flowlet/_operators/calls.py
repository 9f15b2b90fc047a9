"""Stages that call a function per item: ``map``, ``filter``, ``flat_map``, ``for_each``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, cast

from .._engine.calls import Call, with_timeout
from .._engine.flat_map import AsyncFlatMap
from .._engine.nodes import AsyncMap
from .._engine.plan import Plan, Stage, Upstream
from .._engine.thread_pump import Offloaded
from .._engine.workers import Pool
from .._offload import ThreadCall
from .._validate import (
    check_callable,
    check_count,
    check_flag,
    check_optional_count,
    check_seconds,
    describe,
    is_async_generator_callable,
    is_coroutine_callable,
)

DEFAULT_BUFFER_FACTOR = 2
"""``buffer`` defaults to this times ``concurrency``; run-ahead is then 3 x concurrency."""


class CallStage(Stage):
    """A stage calling ``fn`` on every item, up to ``concurrency`` calls at once.

    Whether ``fn`` is async is decided here, once. A stage gets worker tasks of its own
    (it is *decoupled*) when its calls can overlap (an async function with
    ``concurrency > 1``, or an async expansion) or when a ``buffer`` was asked for.
    Everything else runs inline, in lockstep with its consumer: a sync function cannot
    overlap anything on the event loop, so tasks would add cost and no concurrency.
    """

    __slots__ = ("buffer", "call", "concurrency", "expands_async", "fn", "ordered", "timeout")

    name: ClassVar[str]
    verdict: ClassVar[bool] = False
    """The result decides whether the item goes on (a filter)."""

    def __init__(
        self,
        fn: object,
        *,
        concurrency: object = 1,
        ordered: object = False,
        buffer: object = None,
        timeout: object = None,
    ) -> None:
        check_callable(f"{self.name}() function", fn)
        assert callable(fn)
        self.fn: Callable[[Any], Any] = fn
        self.concurrency = check_count("concurrency", concurrency)
        self.ordered = check_flag("ordered", ordered)
        self.buffer = check_optional_count("buffer", buffer)
        self.timeout = None if timeout is None else check_seconds("timeout", timeout)
        self.expands_async = self.name == "flat_map" and is_async_generator_callable(fn)
        awaits = is_coroutine_callable(fn)
        if self.timeout is not None and not (awaits or self.expands_async):
            raise TypeError(
                f"timeout= needs an async function, but {describe(fn)} is not `async def`: "
                "a sync call cannot be interrupted on the event loop. Run blocking work "
                "with in_thread(fn), whose calls a timeout can stop waiting for"
            )
        name = self.describe()
        call_fn: Callable[[Any], Any] = fn
        if self.timeout is not None and awaits:
            call_fn = with_timeout(fn, self.timeout, name)
        self.call = Call(call_fn, name, awaits, self.verdict, self.timeout)

    def describe(self) -> str:
        return f"{self.name}({describe(self.fn)})"

    @property
    def decoupled(self) -> bool:
        """Whether the stage runs in worker tasks of its own (see the class)."""
        if self.buffer is not None:
            return True
        return self.concurrency > 1 and (self.call.awaits or self.expands_async)

    @property
    def capacity(self) -> int:
        """Finished values that may wait for the consumer: ``buffer``, by default
        ``2 * concurrency``. Less than that and producers running in bursts (a whole
        batch of workers finishing in one scheduler pass, as on trio) keep finding the
        buffer full and pay a park/wake per item."""
        return DEFAULT_BUFFER_FACTOR * self.concurrency if self.buffer is None else self.buffer

    @property
    def run_ahead(self) -> int:
        return self.concurrency + self.capacity if self.decoupled else 0

    def pool(self) -> Pool:
        return Pool(self.call, self.concurrency, self.capacity, self.ordered)

    def attach(self, upstream: Upstream, plan: Plan) -> Upstream:
        if self.decoupled:
            fn = self.fn
            ordered = self.ordered and self.concurrency > 1
            offloaded: Offloaded | None = None
            if isinstance(fn, ThreadCall) and not ordered and self.timeout is None:
                offloaded = cast(Offloaded, fn)  # an in_thread call: fn and pool
            return plan.workers(upstream, self.pool(), offloaded)
        if not self.call.awaits:
            return plan.step(upstream, self.call)
        return plan.node(lambda up: AsyncMap(up, self.call), upstream)


class MapStage(CallStage):
    """``map(fn)``: one output per input, ``fn``'s result."""

    __slots__ = ()
    name = "map"


class FilterStage(CallStage):
    """``filter(pred)``: the inputs for which ``pred`` is truthy."""

    __slots__ = ()
    name = "filter"
    verdict = True


class ForEachStage(CallStage):
    """``for_each(fn)``: calls ``fn`` for its effect (the terminal drops the results)."""

    __slots__ = ()
    name = "for_each"

    def __init__(self, fn: object, *, concurrency: object = 1, timeout: object = None) -> None:
        super().__init__(fn, concurrency=concurrency, timeout=timeout)


class FlatMapStage(CallStage):
    """``flat_map(fn)``: each input's expansion (an iterable or async iterable), streamed."""

    __slots__ = ()
    name = "flat_map"

    def pool(self) -> Pool:
        return Pool(self.call, self.concurrency, self.capacity, self.ordered, expands=True)

    def attach(self, upstream: Upstream, plan: Plan) -> Upstream:
        if self.decoupled:
            return plan.workers(upstream, self.pool())
        return plan.node(lambda up: AsyncFlatMap(up, self.call), upstream)
