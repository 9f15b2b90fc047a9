"""Model-based property tests: random pipelines against a plain sequential model.

Each example draws a pipeline of up to six stages (``map``, ``filter``, ``flat_map``,
``batch``; sync, ``async def``, ``in_thread`` and async-generator functions; concurrency
1-8, ``ordered`` on or off, ``buffer`` None or 1-4), a sync or async source of 0-20
items, a front end (``Pipeline`` methods, ``Flow`` + ``through``, ``op`` + ``|``,
``flowlet.functional``) and a consumer (``collect``, ``async for``, ``stream()``,
``drain`` with a recording map, ``for_each``, ``F.collect``), runs it on asyncio and on
trio, and compares it with :class:`Model`, the same stages run by a list comprehension.

What the output is compared with (the *mode*, see :func:`Model.build`):

* ``exact`` - list equality, while every stage so far keeps order: inline stages,
  decoupled stages with ``concurrency=1`` (one call at a time), ``ordered=True`` ones;
* ``multiset`` - after a stage that delivers in completion order;
* ``leaves`` - after ``batch`` behind such a stage, which batches of the items is not
  fixed: only the multiset of the items inside the batches (and the batch sizes) is.
  Stage functions act leaf-wise on batches (a ``map`` maps every item of a batch, a
  ``flat_map`` expands every item of it), so ``map`` and ``batch`` keep this mode and
  ``flat_map`` goes back to ``multiset``;
* ``subset`` - a ``filter`` whose verdict on a batch depends on which items are in it
  makes even that unknowable: the model keeps every batch there, and the output's items
  must be a sub-multiset of the model's.

A failure run must deliver a prefix (``exact``) or a sub-multiset of the same.

Faults: with some probability an example makes one thing fail with an exception object
of its own - a source read (index 0..n, n meaning "instead of the end"), the c-th call of
a stage, the r-th read of the c-th expansion of a ``flat_map`` - and/or makes a close fail
(the source's, or the c-th expansion's). The consumer must then get, within
:data:`HANG_GUARD`, exactly the object raised first by a read or a call if one was
raised (a close failure never replaces it), else the close failure, else no exception
and the model's output. Two outcomes are accepted besides, and counted: a failure raised in
an ``in_thread`` call after a close failure had stopped the run (the call's outcome is
dropped by design, as for any call cancelled in flight), and, while
:data:`TOLERATE_CLOSE_FIRST_BUG` is set, the engine bug that
:func:`test_a_close_failure_does_not_hide_a_later_read_failure` shows. Whatever happened,
every iterator the pipeline opened (the source, every expansion) was closed exactly once -
by the pipeline, not by the garbage collector - and no stage call is left running.

A second test leaves random pipelines early (``stream()`` + ``break``, ``aclose()``,
``break`` + garbage collection, a cancel scope cancelled from inside a stage) and checks
the same clean-up and that what was delivered is consistent with the model.

Runs: the ``flowlet-ci`` profile (the default) draws :data:`CI_EXAMPLES` examples per
test and backend. Longer runs::

    FLOWLET_PROPERTY_EXAMPLES=5000 uv run pytest tests/test_properties.py -q -s \\
        --timeout=0 --hypothesis-show-statistics
    HYPOTHESIS_PROFILE=flowlet-thorough uv run pytest tests/test_properties.py -q -s \\
        --timeout=0

(``-s`` prints the counters of faults injected and seen; ``--timeout=0`` lifts the
60 s per-test limit.) A failure prints ``@reproduce_failure(...)``; add that decorator
to the test to replay it.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import operator
import os
import sys
import threading
import time
import weakref
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st

import flowlet.functional as F
from flowlet import Flow, Pipeline, in_thread, op, pipe

HANG_GUARD = 10
"""Seconds a run may take before it counts as hung (runs take milliseconds)."""

MAX_WORK = 300
"""Upper bound on stage inputs per example (keeps examples around a few milliseconds)."""

CI_EXAMPLES = 300
BACKENDS = ["asyncio", "trio"]

settings.register_profile(
    "flowlet-ci",
    max_examples=CI_EXAMPLES,
    deadline=None,
    print_blob=True,
    derandomize=False,
    database=None,  # no .hypothesis/ directory in the tree; print_blob replays failures
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.register_profile(
    "flowlet-thorough", parent=settings.get_profile("flowlet-ci"), max_examples=5000
)
_profile_name = os.environ.get("HYPOTHESIS_PROFILE", "")
_profile = settings.get_profile(
    _profile_name if _profile_name in ("flowlet-ci", "flowlet-thorough") else "flowlet-ci"
)
_examples = int(os.environ.get("FLOWLET_PROPERTY_EXAMPLES", "0") or 0)
PROFILE = settings(_profile, max_examples=_examples or _profile.max_examples)

STATS: Counter[str] = Counter()
"""What the examples did, printed at the end of the module (visible with ``-s``)."""


@pytest.fixture(scope="module", autouse=True)
def _print_statistics() -> Iterator[None]:
    yield
    if STATS:
        print("\nproperty test statistics:")
        for key, count in sorted(STATS.items()):
            print(f"  {key}: {count}")


# -- values and the functions of the stages --------------------------------------------------


def _h(*parts: Any) -> int:
    """A hash that is the same in every process (``hash()`` of a str is not)."""
    return zlib.crc32(repr(parts).encode())


def lmap(k: int, value: Any) -> Any:
    """Stage ``k``'s map: tags each item; maps the items of a batch one by one."""
    if isinstance(value, list):
        return [lmap(k, x) for x in value]
    return (k, value)


def leaves(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [leaf for x in value for leaf in leaves(x)]
    return [value]


def expansion_of(k: int, width: int, value: Any) -> list[Any]:
    """Stage ``k``'s flat_map: 0..width items per item; a batch expands item by item."""
    return [(k, x, i) for x in leaves(value) for i in range(_h(k, x) % (width + 1))]


def keeps(k: int, modulus: int, value: Any) -> bool:
    """Stage ``k``'s filter: 0 keeps all, 1 drops all, else drops about 1/modulus."""
    if modulus == 0:
        return True
    return _h("filter", k, value) % modulus != 0


def depth_of(value: Any) -> int:
    return 1 + depth_of(value[0]) if isinstance(value, list) else 0


def freeze(value: Any) -> Any:
    return ("batch", *map(freeze, value)) if isinstance(value, list) else value


# -- what an example is -----------------------------------------------------------------------


@dataclass(frozen=True)
class StageSpec:
    kind: str  # "map" | "filter" | "flat_map" | "batch"
    fn_kind: str = "sync"  # "sync" | "async" | "thread" | "asyncgen" (flat_map only)
    concurrency: int = 1
    ordered: bool = False
    buffer: int | None = None
    size: int = 1  # batch
    param: int = 0  # filter: modulus; flat_map: widest expansion
    expansion: str = "list"  # flat_map: "list" | "sync" | "async" | "agen"
    seed: int = 0  # varies how often async calls yield

    @property
    def decoupled(self) -> bool:
        """The contract's rule, restated here independently of the engine."""
        if self.kind == "batch":
            return False
        overlaps = self.fn_kind in ("async", "thread", "asyncgen")
        return self.buffer is not None or (overlaps and self.concurrency > 1)

    @property
    def keeps_order(self) -> bool:
        return not self.decoupled or self.concurrency == 1 or self.ordered

    @property
    def options(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "ordered": self.ordered, "buffer": self.buffer}

    @property
    def tracked_expansions(self) -> bool:
        """Its expansions can fail and report their closes (a plain list cannot)."""
        return self.kind == "flat_map" and (
            self.fn_kind == "asyncgen" or self.expansion in ("sync", "async", "agen")
        )

    def __str__(self) -> str:
        if self.kind == "batch":
            return f"batch({self.size})"
        extra = (
            f"/{self.expansion}" if self.kind == "flat_map" and self.fn_kind != "asyncgen" else ""
        )
        flags = f"c={self.concurrency}{' ordered' if self.ordered else ''}"
        if self.buffer is not None:
            flags += f" buffer={self.buffer}"
        return f"{self.kind}[{self.fn_kind}{extra} p={self.param}]({flags})"


@dataclass(frozen=True)
class Fault:
    primary: str = "none"  # "none" | "source_read" | "stage" | "expansion_read" | "cancel"
    stage: int = 0
    call: int = 0
    read: int = 0  # source_read: the index; expansion_read: the read of the expansion
    close: str = "none"  # "none" | "source" | "expansion"
    close_stage: int = 0
    close_call: int = 0
    must_trigger: bool = False
    """The primary fault is certainly reached (the model knows the call happens)."""


EXACT, MULTISET, LEAVES, SUBSET = "exact", "multiset", "leaves", "subset"


@dataclass
class Model:
    outputs: list[Any]
    mode: str
    depth: int
    inputs: list[int]
    """Per stage: the items it gets (an upper bound where not :attr:`certain`)."""
    certain: list[bool]

    @classmethod
    def build(cls, n: int, stages: tuple[StageSpec, ...], unordered_sink: bool) -> Model:
        items: list[Any] = list(range(n))
        mode, depth = EXACT, 0
        inputs: list[int] = []
        certain: list[bool] = []
        for k, spec in enumerate(stages):
            inputs.append(len(items))
            certain.append(mode != SUBSET)
            if spec.kind == "map":
                items = [lmap(k, x) for x in items]
            elif spec.kind == "filter":
                if depth > 0 and mode in (LEAVES, SUBSET) and spec.param >= 2:
                    mode = SUBSET  # the verdict depends on who shares a batch: keep all
                else:
                    items = [x for x in items if keeps(k, spec.param, x)]
            elif spec.kind == "flat_map":
                items = [y for x in items for y in expansion_of(k, spec.param, x)]
                depth = 0
                if mode == LEAVES:
                    mode = MULTISET
            else:
                items = [items[i : i + spec.size] for i in range(0, len(items), spec.size)]
                depth += 1
                if mode == MULTISET:
                    mode = LEAVES
            if mode == EXACT and not spec.keeps_order:
                mode = MULTISET
        if mode == EXACT and unordered_sink:
            mode = MULTISET
        return cls(items, mode, depth, inputs, certain)

    @property
    def work(self) -> int:
        return sum(self.inputs) + len(self.outputs)

    def check(self, got: list[Any], *, complete: bool) -> None:
        """``got`` is the whole output (``complete``) or what came before a failure."""
        assert all(depth_of(x) == self.depth for x in got), got
        want = self.outputs
        if self.mode == EXACT:
            if complete:
                assert got == want
            else:
                assert got == want[: len(got)], "not a prefix of the model's output"
        elif self.mode == MULTISET:
            g, w = Counter(map(freeze, got)), Counter(map(freeze, want))
            assert g == w if complete else g <= w, (g - w, w - g)
        else:
            g = Counter(leaf for x in got for leaf in leaves(x))
            w = Counter(leaf for x in want for leaf in leaves(x))
            if complete and self.mode == LEAVES:
                assert g == w, (g - w, w - g)
                assert len(got) == len(want)
                assert Counter(map(len, got)) == Counter(map(len, want))
            else:
                assert g <= w, g - w


@dataclass(frozen=True)
class Case:
    n: int
    source: str  # "sync" | "async"
    stages: tuple[StageSpec, ...]
    front: str  # "pipe" | "flow" | "op" (F.collect uses the functional front end)
    consumer: str
    sink_concurrency: int
    body_checkpoints: int
    fault: Fault
    model: Model = field(compare=False)
    take: int = 0  # early exit: items to take before leaving


# -- strategies ---------------------------------------------------------------------------------


@st.composite
def stage_specs(draw: st.DrawFn) -> StageSpec:
    kind = draw(st.sampled_from(["map", "filter", "flat_map", "batch"]))
    if kind == "batch":
        return StageSpec("batch", size=draw(st.integers(1, 4)))
    kinds = ["sync", "sync", "async", "async", "async", "thread"]
    if kind == "flat_map":
        kinds.append("asyncgen")
    fn_kind = draw(st.sampled_from(kinds))
    if kind == "filter":
        param = draw(st.sampled_from([0, 2, 2, 3, 3, 4, 1]))
    elif kind == "flat_map":
        param = draw(st.integers(0, 3))
    else:
        param = 0
    expansion = "list"
    if kind == "flat_map" and fn_kind != "asyncgen":
        expansion = draw(st.sampled_from(["list", "sync", "async", "agen"]))
    return StageSpec(
        kind,
        fn_kind=fn_kind,
        concurrency=draw(st.integers(1, 8)),
        ordered=draw(st.booleans()),
        buffer=draw(st.none() | st.integers(1, 4)),
        param=param,
        expansion=expansion,
        seed=draw(st.integers(0, 1 << 16)),
    )


CONSUMERS = ["collect", "async_for", "stream", "drain", "for_each", "F.collect"]
EXITS = ["stream_break", "aclose", "break_gc", "cancel"]


@st.composite
def cases(draw: st.DrawFn, *, early_exit: bool = False) -> Case:
    n = draw(st.integers(0, 20))
    stages = tuple(draw(st.lists(stage_specs(), max_size=6)))
    consumer = draw(st.sampled_from(EXITS if early_exit else CONSUMERS))
    sink_concurrency = draw(st.integers(1, 4)) if consumer == "for_each" else 1
    unordered_sink = consumer == "for_each" and sink_concurrency > 1
    model = Model.build(n, stages, unordered_sink)
    assume(model.work <= MAX_WORK)
    front = (
        "functional" if consumer == "F.collect" else draw(st.sampled_from(["pipe", "flow", "op"]))
    )
    if early_exit:
        fault = draw(cancellations(model, stages)) if consumer == "cancel" else Fault()
        take = draw(st.integers(0, 4))
    else:
        fault, take = draw(faults(n, model, stages)), 0
    return Case(
        n=n,
        source=draw(st.sampled_from(["sync", "async"])),
        stages=stages,
        front=front,
        consumer=consumer,
        sink_concurrency=sink_concurrency,
        body_checkpoints=draw(st.integers(0, 2)),
        fault=fault,
        model=model,
        take=take,
    )


def _callable_stages(model: Model, stages: tuple[StageSpec, ...]) -> list[int]:
    return [k for k, s in enumerate(stages) if s.kind != "batch" and model.inputs[k] > 0]


def _expanding_stages(model: Model, stages: tuple[StageSpec, ...], *, closable: bool) -> list[int]:
    return [
        k
        for k, s in enumerate(stages)
        if s.tracked_expansions
        and model.inputs[k] > 0
        and (not closable or s.expansion in ("sync", "async"))
    ]


@st.composite
def faults(draw: st.DrawFn, n: int, model: Model, stages: tuple[StageSpec, ...]) -> Fault:
    callable_stages = _callable_stages(model, stages)
    expanding = _expanding_stages(model, stages, closable=False)
    closable = _expanding_stages(model, stages, closable=True)
    choices = ["none", "none", "source_read"]
    if callable_stages:
        choices += ["stage", "stage"]
    if expanding:
        choices += ["expansion_read", "expansion_read"]
    primary = draw(st.sampled_from(choices))
    close_choices = ["none", "none", "none", "none", "source"]
    if closable:
        close_choices += ["expansion", "expansion"]
    close = draw(st.sampled_from(close_choices))
    stage = call = read = 0
    must = close == "none"
    if primary == "source_read":
        read = draw(st.integers(0, n))
    elif primary == "stage":
        stage = draw(st.sampled_from(callable_stages))
        call = draw(st.integers(0, model.inputs[stage] - 1))
        must = must and model.certain[stage]
    elif primary == "expansion_read":
        stage = draw(st.sampled_from(expanding))
        call = draw(st.integers(0, model.inputs[stage] - 1))
        read = draw(st.integers(0, 2))
        must = must and model.certain[stage] and read == 0
    close_stage = close_call = 0
    if close == "expansion":
        close_stage = draw(st.sampled_from(closable))
        close_call = draw(st.integers(0, model.inputs[close_stage] - 1))
    return Fault(
        primary=primary,
        stage=stage,
        call=call,
        read=read,
        close=close,
        close_stage=close_stage,
        close_call=close_call,
        must_trigger=must and primary != "none",
    )


@st.composite
def cancellations(draw: st.DrawFn, model: Model, stages: tuple[StageSpec, ...]) -> Fault:
    """An outer scope cancelled from inside a stage call (or, without one, at once)."""
    # Not from a thread: a cancel scope is cancelled from the event loop only.
    callable_stages = [k for k in _callable_stages(model, stages) if stages[k].fn_kind != "thread"]
    if not callable_stages:
        return Fault(primary="cancel", stage=-1)
    stage = draw(st.sampled_from(callable_stages))
    call = draw(st.integers(0, model.inputs[stage] - 1))
    return Fault(primary="cancel", stage=stage, call=call)


# -- instruments ------------------------------------------------------------------------------


class InjectedError(Exception):
    """Base of the exceptions the examples raise on purpose."""


class SourceReadError(InjectedError):
    pass


class StageCallError(InjectedError):
    pass


class ExpansionReadError(InjectedError):
    pass


class InjectedCloseError(InjectedError):
    pass


PRIMARY_KINDS = ("source_read", "stage", "expansion_read")


class Ledger:
    """What happened during one run: calls, raises, expansions. Thread-safe where the
    ``in_thread`` functions touch it."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.lock = threading.Lock()
        self.raised: list[tuple[str, BaseException]] = []
        self.raised_in_thread: set[int] = set()
        self.started: Counter[int] = Counter()
        self.finished: Counter[int] = Counter()
        self.threaded: set[int] = set()
        self.expansions: list[_Tracking] = []
        self.agen_started = 0
        self.agen_finished = 0
        self.agen_finalised_by_loop = 0
        self.cancel_scope: anyio.CancelScope | None = None

    def enter(self, stage: int) -> int:
        with self.lock:
            call = self.started[stage]
            self.started[stage] += 1
        return call

    def leave(self, stage: int) -> None:
        with self.lock:
            self.finished[stage] += 1

    def raise_(self, kind: str, exc: InjectedError) -> None:
        with self.lock:
            self.raised.append((kind, exc))
            if threading.current_thread() is not threading.main_thread():
                self.raised_in_thread.add(id(exc))
        raise exc

    def maybe_fail_call(self, stage: int, call: int) -> None:
        fault = self.fault
        if fault.stage != stage or fault.call != call:
            return
        if fault.primary == "stage":
            self.raise_("stage", StageCallError(f"stage {stage} failed at call {call}"))
        if fault.primary == "cancel" and self.cancel_scope is not None:
            self.cancel_scope.cancel()

    def expansion_faults(self, stage: int, call: int) -> tuple[int | None, bool]:
        fault = self.fault
        fail_at = None
        if fault.primary == "expansion_read" and (fault.stage, fault.call) == (stage, call):
            fail_at = fault.read
        fail_close = fault.close == "expansion" and (fault.close_stage, fault.close_call) == (
            stage,
            call,
        )
        return fail_at, fail_close

    @property
    def in_flight(self) -> int:
        with self.lock:
            return sum(self.started.values()) - sum(self.finished.values())

    def in_flight_outside_threads(self) -> int:
        with self.lock:
            return sum(
                self.started[k] - self.finished[k] for k in self.started if k not in self.threaded
            )


class _Tracking:
    """Records opens, reads and closes of an iterator; fails where it is told to."""

    def __init__(
        self,
        items: list[Any],
        ledger: Ledger,
        *,
        fail_at: int | None = None,
        fail_close: bool = False,
        fail_kind: str = "expansion_read",
    ) -> None:
        self._items = iter(items)
        self._ledger = ledger
        self.pulled = 0
        self.opened = False  # iter() / aiter() was called (an iterator may be asked again)
        self.closes = 0
        self.fail_at = fail_at
        self.fail_close = fail_close
        self.fail_kind = fail_kind

    def _read(self) -> Any:
        """The next item; raises StopIteration at the end."""
        if self.pulled == self.fail_at:
            self.fail_at = None  # fails once
            kind, error = self.fail_kind, _read_error(self.fail_kind)
            self._ledger.raise_(kind, error(f"{kind} failed at read {self.pulled}"))
        item = next(self._items)
        self.pulled += 1
        return item

    def _closed(self) -> None:
        self.closes += 1
        if self.fail_close:
            self._ledger.raise_("close", InjectedCloseError("close failed"))


class TrackedIterator(_Tracking):
    """A sync iterator: a source or an expansion."""

    def __iter__(self) -> Iterator[Any]:
        self.opened = True
        return self

    def __next__(self) -> Any:
        return self._read()

    def close(self) -> None:
        self._closed()


class AsyncTrackedIterator(_Tracking):
    """An async iterator; each read yields to the event loop once first."""

    def __aiter__(self) -> AsyncIterator[Any]:
        self.opened = True
        return self  # type: ignore[return-value]

    async def __anext__(self) -> Any:
        await anyio.lowlevel.checkpoint()
        try:
            return self._read()
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._closed()


def _read_error(kind: str) -> type[InjectedError]:
    return SourceReadError if kind == "source_read" else ExpansionReadError


def _finalised_by_event_loop() -> bool:
    """Inside an async generator's clean-up: is the event loop's garbage-collection hook
    running it (nobody closed the generator)?

    On asyncio the hook closes an abandoned generator in a task of its own. That task
    may also be closing the *pipeline's* generator (on asyncio, ``async for`` hands it
    out as it is), which then closes this one properly: flowlet's close code is then on
    the stack, and it does not count."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        import trio.lowlevel

        return trio.lowlevel.current_task().name.endswith("(abandoned)")
    if task is None or type(task.get_coro()).__name__ != "async_generator_athrow":
        return False
    return not _closing_in_flowlet()


def _closing_in_flowlet() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if "flowlet" in code.co_filename and code.co_name in ("close_any", "close_all"):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _delays(spec: StageSpec, item: Any) -> int:
    return _h(spec.seed, item) % 4


async def _agen_expansion(
    values: list[Any], ledger: Ledger, delays: int, fail_at: int | None
) -> AsyncIterator[Any]:
    ledger.agen_started += 1
    try:
        for index, value in enumerate([*values, None]):
            for _ in range(delays):
                await anyio.lowlevel.checkpoint()
            if index == fail_at:
                ledger.raise_("expansion_read", ExpansionReadError(f"agen failed at {index}"))
            if index == len(values):
                return
            yield value
    finally:
        ledger.agen_finished += 1
        if _finalised_by_event_loop():
            ledger.agen_finalised_by_loop += 1


def make_function(k: int, spec: StageSpec, ledger: Ledger) -> Callable[[Any], Any]:
    """Stage ``k``'s function, counting calls and failing where the fault says."""

    def result(item: Any, call: int) -> Any:
        if spec.kind == "map":
            return lmap(k, item)
        if spec.kind == "filter":
            return keeps(k, spec.param, item)
        values = expansion_of(k, spec.param, item)
        fail_at, fail_close = ledger.expansion_faults(k, call)
        if spec.expansion == "list":
            return values
        if spec.expansion == "agen":
            return _agen_expansion(values, ledger, _delays(spec, item) % 2, fail_at)
        kind = TrackedIterator if spec.expansion == "sync" else AsyncTrackedIterator
        expansion = kind(values, ledger, fail_at=fail_at, fail_close=fail_close)
        ledger.expansions.append(expansion)
        return expansion

    if spec.fn_kind == "asyncgen":

        async def expand(item: Any) -> AsyncIterator[Any]:
            call = ledger.enter(k)
            ledger.agen_started += 1
            try:
                ledger.maybe_fail_call(k, call)
                values = expansion_of(k, spec.param, item)
                fail_at, _ = ledger.expansion_faults(k, call)
                for index, value in enumerate([*values, None]):
                    for _ in range(_delays(spec, (item, index))):
                        await anyio.lowlevel.checkpoint()
                    if index == fail_at:
                        error = ExpansionReadError(f"stage {k} expansion failed at {index}")
                        ledger.raise_("expansion_read", error)
                    if index == len(values):
                        return
                    yield value
            finally:
                ledger.leave(k)
                ledger.agen_finished += 1
                if _finalised_by_event_loop():
                    ledger.agen_finalised_by_loop += 1

        return expand

    if spec.fn_kind == "async":

        async def call_async(item: Any) -> Any:
            call = ledger.enter(k)
            try:
                for _ in range(_delays(spec, item)):
                    await anyio.lowlevel.checkpoint()
                ledger.maybe_fail_call(k, call)
                return result(item, call)
            finally:
                ledger.leave(k)

        return call_async

    def call_sync(item: Any) -> Any:
        call = ledger.enter(k)
        try:
            ledger.maybe_fail_call(k, call)
            return result(item, call)
        finally:
            ledger.leave(k)

    if spec.fn_kind == "thread":
        ledger.threaded.add(k)
        return in_thread(call_sync)
    return call_sync


# -- running an example --------------------------------------------------------------------------


def build(case: Case, source: Any, ledger: Ledger) -> Any:
    """The pipeline of ``case`` (for the functional front end: the operator's output)."""

    def add(maker: Any, k: int, spec: StageSpec) -> Any:
        """``maker.map(fn, ...)`` and the like: a method of a Pipeline or a Flow, or a
        function of ``op`` or ``flowlet.functional``."""
        if spec.kind == "batch":
            return maker.batch(spec.size)
        return getattr(maker, spec.kind)(make_function(k, spec, ledger), **spec.options)

    stages = list(enumerate(case.stages))
    if case.front == "pipe":
        return functools.reduce(lambda p, ks: add(p, *ks), stages, pipe(source))
    if case.front == "flow":
        return pipe(source).through(functools.reduce(lambda f, ks: add(f, *ks), stages, Flow()))
    if case.front == "functional":
        return F.chain(*(add(F, k, spec) for k, spec in stages))(source)
    flows = [add(op, k, spec) for k, spec in stages]
    return pipe(source) | functools.reduce(operator.or_, flows, Flow())


def make_source(case: Case, ledger: Ledger) -> _Tracking:
    fault = case.fault
    options: dict[str, Any] = {
        "fail_at": fault.read if fault.primary == "source_read" else None,
        "fail_close": fault.close == "source",
        "fail_kind": "source_read",
    }
    items = list(range(case.n))
    if case.source == "sync":
        return TrackedIterator(items, ledger, **options)
    return AsyncTrackedIterator(items, ledger, **options)


async def _checkpoints(count: int) -> None:
    for _ in range(count):
        await anyio.lowlevel.checkpoint()


async def consume(case: Case, p: Any, got: list[Any]) -> None:
    consumer = case.consumer
    if consumer == "F.collect":
        got.extend(await F.collect(p))
    elif consumer == "collect":
        got.extend(await p.collect())
    elif consumer == "async_for":
        async for item in p:
            got.append(item)
            await _checkpoints(case.body_checkpoints)
    elif consumer == "stream":
        async with p.stream() as items:
            async for item in items:
                got.append(item)
                await _checkpoints(case.body_checkpoints)
    elif consumer == "drain":
        await p.map(got.append).drain()
    else:

        async def record(item: Any) -> None:
            await _checkpoints(case.body_checkpoints)
            got.append(item)

        await p.for_each(record, concurrency=case.sink_concurrency)


async def leave_early(case: Case, p: Pipeline[Any], got: list[Any], ledger: Ledger) -> None:
    if case.consumer == "stream_break":
        async with p.stream() as items:
            async for item in items:
                if len(got) == case.take:
                    break
                got.append(item)
    elif case.consumer == "aclose":
        iterator: Any = aiter(p)
        try:
            while len(got) < case.take:
                try:
                    got.append(await anext(iterator))
                except StopAsyncIteration:
                    break
        finally:
            await iterator.aclose()
    elif case.consumer == "break_gc":
        iterator = aiter(p)
        async for item in iterator:
            if len(got) == case.take:
                break
            got.append(item)
        # The event loop closes the dropped iterator soon; wait until that is done.
        if inspect.isasyncgen(iterator):
            # asyncio: the iterator is the run's generator, which asyncio's finaliser
            # hook closes in a task of its own (weak references die at once).
            del iterator, p
            await anyio.sleep(0)  # the hook schedules the task's creation: let it happen
            await _settle(lambda: not _asyncio_closing_generators())
        else:
            # trio: a wrapper holds the generator (a private attribute, for want of a
            # public sign) and schedules its close.
            generator = getattr(iterator, "_gen", None)
            finished = weakref.ref(generator) if generator is not None else (lambda: None)
            del iterator, generator, p
            await _settle(lambda: getattr(finished(), "ag_frame", None) is None)
    else:
        with anyio.CancelScope() as scope:
            ledger.cancel_scope = scope
            if case.fault.stage < 0:
                scope.cancel()
            got.extend(await p.collect())


@dataclass
class Outcome:
    got: list[Any]
    caught: BaseException | None
    source: _Tracking
    ledger: Ledger
    in_flight: int = 0
    """Calls (outside threads) still running when the consumer was done."""
    agens_open: int = 0


async def run_case(case: Case, *, early_exit: bool = False) -> Outcome:
    ledger = Ledger(case.fault)
    source = make_source(case, ledger)
    p = build(case, source, ledger)
    got: list[Any] = []
    caught: BaseException | None = None
    with anyio.fail_after(HANG_GUARD):
        try:
            if early_exit:
                await leave_early(case, p, got, ledger)
            else:
                await consume(case, p, got)
        except InjectedError as exc:
            caught = exc
    # Before anything else can run: the consumer is done, so everything must be.
    outcome = Outcome(got, caught, source, ledger)
    outcome.in_flight = ledger.in_flight_outside_threads()
    outcome.agens_open = ledger.agen_started - ledger.agen_finished
    return outcome


def _asyncio_closing_generators() -> bool:
    import asyncio

    return any(
        type(task.get_coro()).__name__ == "async_generator_athrow" for task in asyncio.all_tasks()
    )


async def _settle(done: Callable[[], bool]) -> None:
    gc.collect(1)
    for _ in range(500):
        if done():
            return
        await anyio.sleep(0)


def _wait_for_threads(ledger: Ledger) -> None:
    """Calls running in threads when the run was cancelled finish there (by design)."""
    deadline = time.monotonic() + HANG_GUARD
    while ledger.in_flight and time.monotonic() < deadline:
        time.sleep(0.001)
    assert ledger.in_flight == 0, "a thread call never finished"


def describe(case: Case) -> str:
    stages = " -> ".join(map(str, case.stages)) or "(no stages)"
    return (
        f"{case.source} source of {case.n} -> {stages} | front={case.front} "
        f"consumer={case.consumer} mode={case.model.mode} fault={case.fault}"
    )


def check_cleanup(outcome: Outcome) -> None:
    source, ledger = outcome.source, outcome.ledger
    _wait_for_threads(ledger)  # then no thread adds expansions any more
    assert source.closes == source.opened, f"the source was closed {source.closes} times"
    for expansion in ledger.expansions:
        want = 1 if expansion.opened else 0
        assert expansion.closes == want, f"an expansion was closed {expansion.closes} times"
    assert outcome.agens_open == 0, "an async generator expansion was left open"
    assert ledger.agen_finalised_by_loop == 0, "closed by the garbage collector, not the pipeline"
    assert outcome.in_flight == 0, "stage calls still running after the consumer was done"


def check_calls(case: Case, ledger: Ledger, *, complete: bool) -> None:
    """No stage got an item twice: calls never exceed the model's inputs; a complete
    run calls each stage exactly once per input where the model knows the count."""
    for k, spec in enumerate(case.stages):
        if spec.kind == "batch":
            continue
        calls, want = ledger.started[k], case.model.inputs[k]
        assert calls <= want, f"stage {k}: {calls} calls for {want} inputs"
        if complete and case.model.certain[k]:
            assert calls == want, f"stage {k}: {calls} calls for {want} inputs"


TOLERATE_CLOSE_FIRST_BUG = False
"""Accept the engine bug of :func:`test_a_close_failure_does_not_hide_a_later_read_failure`
(set to False once it is fixed): an expansion's close fails and fails the run, a worker
that has not seen the cancellation yet reads on and hits the injected read or stage
failure, and the consumer gets the close failure."""


def _known_close_first_bug(ledger: Ledger, caught: BaseException | None) -> bool:
    if not TOLERATE_CLOSE_FIRST_BUG or not ledger.raised:
        return False
    first_kind, first = ledger.raised[0]
    return first_kind == "close" and caught is first and ledger.fault.close == "expansion"


def verify(case: Case, outcome: Outcome) -> None:
    check_cleanup(outcome)
    assert outcome.source.opened
    ledger, caught, fault = outcome.ledger, outcome.caught, case.fault
    primaries = [exc for kind, exc in ledger.raised if kind in PRIMARY_KINDS]
    closes = [exc for kind, exc in ledger.raised if kind == "close"]
    assert len(primaries) <= 1, f"the injected fault was raised {len(primaries)} times"
    if fault.must_trigger:
        assert primaries, "the injected fault was never reached"
    if fault.close == "source":
        assert closes, "the source's close never ran"
    STATS["examples"] += 1
    STATS[f"mode {case.model.mode}"] += 1
    STATS[f"consumer {case.consumer}"] += 1
    STATS["decoupled stages"] += sum(s.decoupled for s in case.stages)
    if fault.primary != "none":
        STATS[f"fault injected: {fault.primary}"] += 1
    if fault.close != "none":
        STATS[f"fault injected: {fault.close} close"] += 1
    if primaries:
        STATS["faults raised: primary"] += 1
        event(f"raised: {fault.primary}")
        if _known_close_first_bug(ledger, caught):
            STATS["known engine bug: an expansion's close failure hid a later failure"] += 1
            event("known engine bug: close failure first")
        elif id(primaries[0]) in ledger.raised_in_thread and caught in closes:
            # A close failure stopped the run while the call ran in its thread: by
            # design its outcome is dropped (the close failure was the first the event
            # loop saw), like that of any call cancelled in flight.
            STATS["in_thread failure dropped: a close failure stopped the run first"] += 1
            event("in_thread failure dropped after a close failure")
        else:
            assert caught is primaries[0], f"consumer got {caught!r}, raised {primaries[0]!r}"
    elif closes:
        STATS["faults raised: close only"] += 1
        event("raised: close only")
        assert caught is closes[0], f"consumer got {caught!r}, close raised {closes[0]!r}"
    else:
        event("no fault raised")
        assert caught is None, f"consumer got {caught!r}, nothing was raised"
    complete = caught is None
    case.model.check(outcome.got, complete=complete)
    check_calls(case, ledger, complete=complete)


@pytest.mark.parametrize("backend", BACKENDS)
@PROFILE
@given(case=cases())
def test_random_pipelines_match_the_sequential_model(backend: str, case: Case) -> None:
    note(describe(case))
    event(f"mode: {case.model.mode}")
    outcome = anyio.run(run_case, case, backend=backend)
    verify(case, outcome)


@pytest.mark.parametrize("backend", BACKENDS)
@PROFILE
@given(case=cases(early_exit=True))
def test_leaving_random_pipelines_early_cleans_up(backend: str, case: Case) -> None:
    note(describe(case))
    event(f"exit: {case.consumer}")
    outcome = anyio.run(functools.partial(run_case, case, early_exit=True), backend=backend)
    check_cleanup(outcome)
    assert outcome.caught is None
    if case.consumer != "cancel":
        most = min(case.take, len(case.model.outputs))
        assert len(outcome.got) == most if case.model.mode != SUBSET else len(outcome.got) <= most
    case.model.check(outcome.got, complete=False)
    check_calls(case, outcome.ledger, complete=False)
    STATS[f"early exit {case.consumer}"] += 1


# -- examples the property tests found ------------------------------------------------------


async def _agen_pair(item: int) -> AsyncIterator[int]:
    yield item
    yield item


async def _same_async(item: int) -> int:
    return item


ABANDONED_AT_SHUTDOWN: dict[str, Callable[[Any], Pipeline[Any]]] = {
    "plain": lambda s: pipe(s),
    "inline-flat-agen": lambda s: pipe(s).flat_map(_agen_pair),
    "buffered-then-flat-agen": lambda s: pipe(s).map(str, buffer=1).flat_map(_agen_pair),
    "decoupled-flat-agen": lambda s: pipe(s).flat_map(_agen_pair, concurrency=2),
    "decoupled-map": lambda s: pipe(s).map(_same_async, concurrency=2),
}


@pytest.mark.parametrize("shape", list(ABANDONED_AT_SHUTDOWN))
def test_returning_from_trio_main_right_after_a_break_does_not_crash_trio(shape: str) -> None:
    """Found by test_leaving_random_pipelines_early_cleans_up (break_gc on trio): the
    iterator dropped by the ``break`` scheduled its close on a run that was shutting
    down, which raised TrioInternalError in about one run in four (trio shuffles its
    run queue). Fixed in 9ad8cbc; 25 runs per shape keep it fixed."""
    import trio

    build = ABANDONED_AT_SHUTDOWN[shape]
    for _ in range(25):
        source = TrackedIterator([1, 2, 3], Ledger(Fault()))

        async def main() -> None:
            async for _ in build(source):  # noqa: B023 - run at once, in this iteration
                break

        trio.run(main)
        if shape == "plain":
            assert source.closes == 1  # an inline pipeline is closed even then


async def _close_failure_then_read_failure() -> tuple[BaseException | None, Ledger, _Tracking]:
    ledger = Ledger(Fault())
    source = TrackedIterator(list(range(10)), ledger, fail_at=5, fail_kind="source_read")

    def expand(item: int) -> Any:
        if item == 0:
            return AsyncTrackedIterator([item], ledger, fail_close=True)
        return []

    async def same(item: int) -> int:
        await anyio.lowlevel.checkpoint()
        return item

    with anyio.fail_after(HANG_GUARD):
        try:
            await pipe(source).flat_map(expand).map(same, concurrency=3).collect()
        except InjectedError as exc:
            return exc, ledger, source
    return None, ledger, source


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_close_failure_does_not_hide_a_later_read_failure(backend: str) -> None:
    """Found by test_random_pipelines_match_the_sequential_model. Worker 2 of the map
    finds the expansion of item 0 exhausted; its close raises and fails the run. Worker 3,
    already woken to read next, pulls items 1-4 (empty expansions) and then read 5 fails.
    Either the read should not have happened (nothing is read after the run failed) or,
    once raised, it should win over the close failure."""
    caught, ledger, source = anyio.run(_close_failure_then_read_failure, backend=backend)
    closes = [exc for kind, exc in ledger.raised if kind == "close"]
    reads = [exc for kind, exc in ledger.raised if kind == "source_read"]
    assert closes, "the expansion's close failure was not raised"
    assert source.closes == 1
    assert not reads or caught is reads[0], f"read 5 failed, but the consumer got {caught!r}"
