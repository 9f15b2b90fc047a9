"""flowlet demo: a simulated crawl that shows concurrency and backpressure at work.

Run it from the repository root with ``uv run examples/demo.py`` (about two seconds).

A counting source hands out 60 page numbers. A fake ``fetch`` (5-25 ms of simulated
latency, no network) runs as a stage with ``concurrency=8``, and the consumer is
deliberately slow: 10 ms per page, slower than eight fetches can deliver. What to look
for in the output:

* **Concurrency.** At most 8 fetches are ever in flight at once ("max fetches in flight").
* **Backpressure.** The consumer is the bottleneck, so the stage fills its buffer and
  stops reading the source. The source never gets more than ``concurrency + buffer``
  items ahead of the consumer: with the default ``buffer`` of ``2 * concurrency`` that
  is 8 + 16 = 24. The live lines show the source advancing only as fast as the
  consumer, with the gap pinned at that bound and (almost) no fetch running.
* **Order.** By default results arrive in completion order (fast pages overtake slow
  ones); with ``ordered=True`` they arrive in input order, with the same bounds.
* **Blocking work.** ``in_thread`` runs a blocking call in worker threads, so eight
  50 ms sleeps on four threads take about 0.1 s instead of 0.4 s.
"""

from __future__ import annotations

import threading
import time

import anyio

from flowlet import in_thread, pipe

PAGES = 60
CONCURRENCY = 8
BUFFER = 2 * CONCURRENCY  # flowlet's default buffer for a stage
BOUND = CONCURRENCY + BUFFER
LATENCY_MS = [25, 5, 15, 10, 20]  # page i takes LATENCY_MS[i % 5]
CONSUMER_MS = 10


class Crawl:
    """Counts what happens, so that the demo can report it."""

    def __init__(self) -> None:
        self.read = 0  # items the pipeline took from the source
        self.consumed = 0  # items the consumer received
        self.in_flight = 0
        self.max_in_flight = 0
        self.max_ahead = 0

    def pages(self):  # the source: a plain generator, read lazily by the pipeline
        for page in range(PAGES):
            self.read += 1
            self.max_ahead = max(self.max_ahead, self.read - self.consumed)
            yield page

    async def fetch(self, page: int) -> int:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await anyio.sleep(LATENCY_MS[page % 5] / 1000)
        finally:
            self.in_flight -= 1
        return page


async def crawl(title: str, *, ordered: bool) -> None:
    print(f"\n{title}")
    crawl = Crawl()
    received: list[int] = []
    pipeline = pipe(crawl.pages()).map(crawl.fetch, concurrency=CONCURRENCY, ordered=ordered)
    async for page in pipeline:
        crawl.consumed += 1
        received.append(page)
        if crawl.consumed % 15 == 0:
            print(
                f"  consumed {crawl.consumed:2} | source read {crawl.read:2} | "
                f"ahead {crawl.read - crawl.consumed:2} | fetches running {crawl.in_flight}"
            )
        await anyio.sleep(CONSUMER_MS / 1000)  # the slow consumer
    print(f"  max fetches in flight: {crawl.max_in_flight} (concurrency={CONCURRENCY})")
    print(
        f"  max source run-ahead: {crawl.max_ahead} items "
        f"(bound: concurrency + buffer = {CONCURRENCY} + {BUFFER} = {BOUND})"
    )
    print(f"  first results: {received[:12]}")
    in_order = "yes" if received == sorted(received) else "no (completion order)"
    print(f"  in input order: {in_order}; all {len(received)} pages received")


def blocking_read(n: int, state: dict[str, int], lock: threading.Lock) -> int:
    with lock:
        state["busy"] += 1
        state["max"] = max(state["max"], state["busy"])
    time.sleep(0.05)  # a blocking call: it would freeze the event loop if run directly
    with lock:
        state["busy"] -= 1
    return n


async def threads() -> None:
    print("\n3) blocking work with in_thread")
    state, lock = {"busy": 0, "max": 0}, threading.Lock()

    def read(n: int) -> int:
        return blocking_read(n, state, lock)

    started = time.perf_counter()
    results = await pipe(range(8)).map(in_thread(read), concurrency=4).collect()
    elapsed = time.perf_counter() - started
    print(
        f"  in_thread: {len(results)} blocking 50 ms calls, at most {state['max']} at once "
        f"on 4 threads, {elapsed:.2f} s in total (one after another: 0.40 s)"
    )


async def main() -> None:
    print(f"flowlet demo: a simulated crawl of {PAGES} pages")
    print(
        f"fetch: concurrency={CONCURRENCY}, 5-25 ms each; "
        f"consumer: {CONSUMER_MS} ms per page (the bottleneck)"
    )
    await crawl("1) completion order (the default)", ordered=False)
    await crawl("2) input order (ordered=True)", ordered=True)
    await threads()


if __name__ == "__main__":
    anyio.run(main)
