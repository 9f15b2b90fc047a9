"""Stage specifications: the one place where an operator's arguments are checked.

A stage is immutable data. Every front end (``Pipeline``, ``Flow``, ``op``,
``functional``) builds its stages with the functions below, and the engine
(``flowlet._engine``) runs them. Whether a function is async is decided here, once.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._validate import (
    check_callable,
    check_count,
    check_flag,
    check_optional_count,
    is_async_generator_callable,
    is_coroutine_callable,
)

DEFAULT_BUFFER_FACTOR = 2
"""``buffer`` defaults to this times ``concurrency``; run-ahead is then 3 x concurrency."""


class Kind(enum.Enum):
    MAP = "map"
    FILTER = "filter"
    FLAT_MAP = "flat_map"
    BATCH = "batch"


@dataclass(frozen=True, slots=True)
class Stage:
    """One step of a pipeline.

    ``awaits`` is true when calling ``fn`` returns an awaitable; ``expands_async`` when
    ``fn`` is an async generator function (a ``flat_map`` whose expansion is async).
    ``buffer`` is ``None`` unless the caller asked for one.
    """

    kind: Kind
    fn: Callable[[Any], Any] | None = None
    concurrency: int = 1
    ordered: bool = False
    buffer: int | None = None
    size: int = 0
    awaits: bool = False
    expands_async: bool = False
    label: str | None = None
    """The operator's name in messages when it is not the kind's (``for_each``)."""

    @property
    def decoupled(self) -> bool:
        """Whether the stage runs in worker tasks of its own.

        A stage gets workers when its calls can overlap (an async function with
        ``concurrency > 1``, or an async expansion) or when the caller asked for a
        ``buffer``. Everything else runs inline, in lockstep with its consumer: a sync
        function cannot overlap anything on the event loop, so tasks would add cost and
        no concurrency.
        """
        if self.kind is Kind.BATCH:
            return False
        if self.buffer is not None:
            return True
        return self.concurrency > 1 and (self.awaits or self.expands_async)

    @property
    def capacity(self) -> int:
        """Finished values that may wait for the consumer: ``buffer``, by default
        ``2 * concurrency``. Less than that and producers running in bursts (a whole
        batch of workers finishing in one scheduler pass, as on trio) keep finding the
        buffer full and pay a park/wake per item."""
        return DEFAULT_BUFFER_FACTOR * self.concurrency if self.buffer is None else self.buffer

    @property
    def run_ahead(self) -> int:
        """Upper bound on input items held by a decoupled stage (see docs/concurrency.md)."""
        return self.concurrency + self.capacity if self.decoupled else 0

    def describe(self) -> str:
        if self.kind is Kind.BATCH:
            return f"batch({self.size})"
        name = getattr(self.fn, "__qualname__", None) or repr(self.fn)
        return f"{self.label or self.kind.value}({name})"


def _function_stage(
    kind: Kind, fn: object, concurrency: object, ordered: object, buffer: object
) -> Stage:
    check_callable(f"{kind.value}() function", fn)
    assert callable(fn)
    return Stage(
        kind=kind,
        fn=fn,
        concurrency=check_count("concurrency", concurrency),
        ordered=check_flag("ordered", ordered),
        buffer=check_optional_count("buffer", buffer),
        awaits=is_coroutine_callable(fn),
        expands_async=kind is Kind.FLAT_MAP and is_async_generator_callable(fn),
    )


def map_stage(fn: object, concurrency: object, ordered: object, buffer: object) -> Stage:
    return _function_stage(Kind.MAP, fn, concurrency, ordered, buffer)


def filter_stage(fn: object, concurrency: object, ordered: object, buffer: object) -> Stage:
    return _function_stage(Kind.FILTER, fn, concurrency, ordered, buffer)


def flat_map_stage(fn: object, concurrency: object, ordered: object, buffer: object) -> Stage:
    return _function_stage(Kind.FLAT_MAP, fn, concurrency, ordered, buffer)


def for_each_stage(fn: object, concurrency: object) -> Stage:
    """``for_each(fn)``: a map whose results are dropped, named for what it is."""
    check_callable("for_each() function", fn)
    stage = map_stage(fn, concurrency, False, None)
    return dataclasses.replace(stage, label="for_each")


def batch_stage(size: object) -> Stage:
    return Stage(kind=Kind.BATCH, size=check_count("size", size))
