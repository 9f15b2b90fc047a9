"""Turning a pipeline's stages into the nodes of one run.

A stage is an operator definition (:class:`Stage`): immutable, its arguments checked
when it was made. When a run starts, each stage in turn is asked to :meth:`Stage.attach`
itself to what the stages before it built, through the building blocks of :class:`Plan`:

* :meth:`Plan.fuse` puts a sync layer (builtin ``map``, ``filter``, ``itertools``) on a
  fused chain over a sync source, where every item costs C calls only;
* :meth:`Plan.step` applies a sync map or filter wherever it is cheapest: fused, or
  absorbed into the async node before it;
* :meth:`Plan.node` adds an async node, :meth:`Plan.workers` a pool of worker tasks.

The engine never asks what kind of stage it has: the stage knows which blocks fit it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from typing import Any, TypeAlias

from .calls import Call
from .nodes import Node, Passthrough
from .reader import GeneratorNode, is_cancel_safe
from .reader import Run as GeneratorRun
from .run import Run
from .sync_chain import Layer, SyncChain, call_layer
from .thread_pump import Offloaded, ThreadPumpStage
from .workers import DecoupledStage, Pool

Upstream: TypeAlias = "SyncChain | AsyncIterator[Any]"
"""What a stage reads: a fused sync chain, or an async iterator (a node, a pool's
outbox, an async source). The one who reads it owns it: closes it exactly once."""


class Stage(ABC):
    """An operator definition: what one step of a pipeline does, and how it runs.

    Made (and its arguments checked) when the pipeline is built; immutable, so that
    pipelines and flows can share it; asked to :meth:`attach` itself at every run.
    """

    __slots__ = ()

    @abstractmethod
    def describe(self) -> str:
        """The stage as messages and reprs show it: ``map(fetch)``, ``batch(100)``."""

    @property
    def run_ahead(self) -> int:
        """How many input items the stage may hold beyond what its consumer asked for
        (0: it runs in lockstep). Documented per operator, and tested."""
        return 0

    @abstractmethod
    def attach(self, upstream: Upstream, plan: Plan) -> Upstream:
        """Build the running form of this stage over ``upstream``, and return what the
        next stage reads. ``upstream`` is owned from now on by what is returned."""

    def __repr__(self) -> str:
        return self.describe()


class Plan:
    """The nodes of one run, as its stages attach to them."""

    __slots__ = ("pools", "run")

    def __init__(self, run: Run) -> None:
        self.run = run
        self.pools: list[DecoupledStage] = []
        """Stages with worker tasks, for the run to host."""

    def fuse(
        self, upstream: Upstream, layer: Layer, calls: str | None = None, *, ends: bool = False
    ) -> Upstream | None:
        """``layer`` on the fused sync chain ``upstream``; None if it is not one (or is
        already being read). ``calls``: the stage's name if the layer calls user code
        (for the message when one of them raises StopIteration); ``ends``: the layer
        may end the stream itself (see :meth:`SyncChain.add`)."""
        if not isinstance(upstream, SyncChain) or not upstream.open:
            return None
        upstream.add(layer, calls, ends=ends)
        return upstream

    def step(self, upstream: Upstream, call: Call) -> Upstream:
        """A sync map or filter: fused into a sync chain, else run by the async node in
        front of it on each item it produces (no node of its own)."""
        fused = self.fuse(upstream, call_layer(call), call.name)
        if fused is not None:
            return fused
        node = upstream if isinstance(upstream, Node) else Passthrough(upstream)
        node.absorb(call)
        return node

    def node(self, make: Callable[[Upstream], Node], upstream: Upstream) -> Upstream:
        """An inline async node: it reads ``upstream`` when its consumer asks."""
        return make(upstream)

    def generator(
        self, upstream: Upstream, run: GeneratorRun, name: str, *, timed: bool = False
    ) -> Upstream:
        """A node running ``run(reader)``, an async generator over ``upstream`` (see
        :mod:`.reader`). ``timed``: it reads with deadlines, so ``upstream`` must be
        cancel-safe; an upstream that is not (an async source, an inline async node)
        is read through a one-item hand-off task, so that no read is ever cancelled."""
        if timed and not is_cancel_safe(upstream):
            upstream = self.workers(upstream, Pool(_hand_off(name), 1, 1))
        return GeneratorNode(upstream, run, name)

    def workers(
        self, upstream: Upstream, pool: Pool, offloaded: Offloaded | None = None
    ) -> Upstream:
        """A pool of worker tasks reading ``upstream``; the next stage reads its outbox.
        ``offloaded``: the call runs a sync function in a thread pool, which a
        completion-order map or filter feeds directly (see :mod:`.thread_pump`)."""
        if offloaded is not None:
            stage: DecoupledStage = ThreadPumpStage(pool, offloaded, upstream, self.run)
        else:
            stage = DecoupledStage(pool, upstream, self.run)
        self.pools.append(stage)
        return stage.outbox


def _same(item: Any) -> Any:
    return item


def _hand_off(name: str) -> Call:
    return Call(_same, f"the reader of {name}")


def open_source(source: Iterable[Any] | AsyncIterable[Any]) -> Upstream:
    """The bottom of a run: an async source's iterator, or a sync source as a chain.
    (An object that is both is read asynchronously.)"""
    if isinstance(source, AsyncIterable):
        return aiter(source)
    return SyncChain(iter(source))


def build(source: Any, stages: Sequence[Stage], run: Run) -> tuple[Upstream, list[DecoupledStage]]:
    """Attach ``stages`` in order over ``source``: the node to consume, and the stages
    whose workers the run must host."""
    plan = Plan(run)
    node = open_source(source)
    for stage in stages:
        node = stage.attach(node, plan)
    return node, plan.pools
