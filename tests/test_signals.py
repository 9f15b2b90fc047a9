"""Ctrl-C while ``in_thread`` calls are blocked: the process must stop at the first SIGINT.

Each test runs a child Python process whose pipeline calls block forever in worker
threads, sends it SIGINT once they are all running, and checks how it ends.
"""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

EXIT_TIMEOUT = 2.0
"""Seconds the child may take to exit after SIGINT (it needs well under half a second)."""

CHILD = textwrap.dedent(
    """
    import signal
    import sys
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import anyio

    from flowlet import in_thread, pipe

    # Python ignores SIGINT if the parent started us with it ignored: make it explicit.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    backend, pool_kind = sys.argv[1], sys.argv[2]
    CONCURRENCY = 3
    lock = threading.Lock()
    started = 0


    def block_forever(item):
        global started
        with lock:
            started += 1
        threading.Event().wait()


    # deliberately not in a with-block: nothing shuts this pool down
    executor = ThreadPoolExecutor(max_workers=CONCURRENCY) if pool_kind == "executor" else None


    async def announce_when_blocked():
        # Said from the event loop, once every call blocks: the main thread is then idle
        # in the loop (not still starting a worker thread) when the signal arrives.
        while started < CONCURRENCY:
            await anyio.sleep(0.01)
        print("ready", flush=True)


    async def main():
        # Beside the pipeline, not in a task group of ours: a group would wrap the
        # KeyboardInterrupt that is the subject of the test in an exception group.
        if backend == "asyncio":
            announcer = asyncio.get_running_loop().create_task(announce_when_blocked())
        else:
            trio.lowlevel.spawn_system_task(announce_when_blocked)
        stage = in_thread(block_forever, executor=executor)
        await pipe(range(10)).map(stage, concurrency=CONCURRENCY).collect()


    if backend == "asyncio":
        import asyncio

        asyncio.run(main())
    else:
        import trio

        trio.run(main)
    """
)

FRAMING = {
    "Traceback (most recent call last):",
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
}

# What an interrupted run reports, line by line (tracebacks' framing and frames left out).
# Since 3.11, asyncio.run cancels the main task on SIGINT and raises KeyboardInterrupt while
# handling its CancelledError: the same two chained tracebacks as for a plain ``await
# sleep()``. Before 3.11, KeyboardInterrupt is raised straight out of the event loop's
# select() and asyncio.run then cancels the remaining tasks: a single traceback.
EXPECTED_REPORT = {
    "asyncio": (
        ["asyncio.exceptions.CancelledError", "KeyboardInterrupt"]
        if sys.version_info >= (3, 11)
        else ["KeyboardInterrupt"]
    ),
    "trio": ["KeyboardInterrupt"],
}

NOISE = (
    "Task was destroyed",
    "never retrieved",
    "Exception ignored",
    "Exception in thread",
    "ExceptionGroup",
    "exception calling callback",
    "Warning",
)


class Outcome:
    def __init__(self, returncode: int | None, stderr: str) -> None:
        self.returncode = returncode  # None: still running after EXIT_TIMEOUT (then killed)
        self.stderr = stderr

    @property
    def report(self) -> list[str]:
        """The exception lines of stderr: unindented lines that are not traceback framing."""
        return [
            line
            for line in self.stderr.splitlines()
            if line and not line[0].isspace() and line not in FRAMING
        ]


def interrupt_child(backend: str, pool_kind: str) -> Outcome:
    """Start the child, wait until its calls block, send SIGINT, collect how it ended."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, backend, pool_kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        readable, _, _ = select.select([child.stdout], [], [], 30)
        line = child.stdout.readline() if readable else ""
        if line != "ready\n":
            child.kill()
            _, stderr = child.communicate()
            pytest.fail(f"child did not get ready (got {line!r}); stderr:\n{stderr}")
        child.send_signal(signal.SIGINT)
        try:
            _, stderr = child.communicate(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            _, stderr = child.communicate()
            return Outcome(None, stderr)
        return Outcome(child.returncode, stderr)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigint_stops_a_pipeline_blocked_in_default_pool_threads(backend: str) -> None:
    outcome = interrupt_child(backend, "default")
    assert outcome.returncode is not None, (
        f"still running {EXIT_TIMEOUT} s after SIGINT; stderr:\n{outcome.stderr}"
    )
    assert outcome.returncode != 0
    assert outcome.report == EXPECTED_REPORT[backend], outcome.stderr
    assert outcome.stderr.count("Traceback") == len(EXPECTED_REPORT[backend])
    for noise in NOISE:
        assert noise not in outcome.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigint_unwinds_a_pipeline_blocked_in_a_given_thread_pool(backend: str) -> None:
    """The pipeline unwinds and KeyboardInterrupt is reported at once. The process then
    does not exit: at interpreter exit, concurrent.futures joins the pool's
    (non-daemon) threads, which are blocked forever; a second Ctrl-C is needed. That
    part is Python's, so only the pipeline's part is asserted."""
    outcome = interrupt_child(backend, "executor")
    assert outcome.report == EXPECTED_REPORT[backend], outcome.stderr
    assert outcome.stderr.count("Traceback") == len(EXPECTED_REPORT[backend])
    for noise in NOISE:
        assert noise not in outcome.stderr
