"""``rate_limit(rate, per=1.0, burst=1)``: a token bucket on the event loop's clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio

from .._engine.markers import END
from .._engine.plan import Plan, Stage, Upstream
from .._engine.reader import Reader
from .._validate import check_count, check_positive, check_seconds

_SLACK = 1e-9
"""Tokens short of one that still count as one (the clock's float arithmetic)."""


class RateLimit(Stage):
    """Passes items at most ``rate`` per ``per`` seconds, with bursts of up to ``burst``.

    A token bucket holding up to ``burst`` tokens, full at the first item and refilled
    at ``rate / per`` tokens a second; an item passes when it can take a token, and
    waits (on the event loop's clock) until it can. Guarantee: in any window of ``t``
    seconds, at most ``burst + rate * t / per`` items pass. Items are delayed, never
    dropped; while one waits nothing more is read (backpressure reaches the source).
    """

    __slots__ = ("burst", "per", "rate")

    def __init__(self, rate: object, per: object = 1.0, burst: object = 1) -> None:
        self.rate = check_positive("rate", rate)
        self.per = check_seconds("per", per)
        self.burst = check_count("burst", burst)

    def describe(self) -> str:
        per = "" if self.per == 1 else f", per={self.per:g}"
        burst = "" if self.burst == 1 else f", burst={self.burst}"
        return f"rate_limit({self.rate:g}{per}{burst})"

    def attach(self, upstream: Upstream, plan: Plan) -> Upstream:
        return plan.generator(upstream, self._run, self.describe())

    async def _run(self, upstream: Reader[Any]) -> AsyncIterator[Any]:
        refill = self.rate / self.per  # tokens a second
        tokens, filled_at = float(self.burst), None
        while (item := await upstream.read()) is not END:
            now = anyio.current_time()
            if filled_at is not None:
                tokens = min(self.burst, tokens + (now - filled_at) * refill)
            filled_at = now
            if tokens < 1 - _SLACK:
                await anyio.sleep((1 - tokens) / refill)
                now = anyio.current_time()
                tokens = min(self.burst, tokens + (now - filled_at) * refill)
                filled_at = now
            tokens -= 1
            yield item
