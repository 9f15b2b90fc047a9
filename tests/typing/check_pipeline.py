"""Static checks of the Pipeline front end, in_thread, in_process and thread_local.

Type-checked only (``uv run mypy`` and ``uv run pyright``); never executed. Each
``assert_type`` pins what a checker infers; each negative case carries a targeted
``# type: ignore[<mypy-code>]``, so an error that stops happening fails both checkers
(mypy's ``warn_unused_ignores`` and pyright's reportUnnecessaryTypeIgnoreComment).

Why not ``# type: ignore[...]  # pyright: ignore[...]`` on one line: pyright honours
``# type: ignore`` too (enableTypeIgnoreComments defaults to true) and ignores its
bracketed code, so the ``# pyright: ignore`` after it is always reported as unnecessary.
"""

from __future__ import annotations

import io
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
)
from concurrent.futures import ProcessPoolExecutor
from typing import TypeGuard

from typing_extensions import TypeIs, assert_type

from flowlet import Flow, Pipeline, in_process, in_thread, pipe, thread_local

# -- helpers -------------------------------------------------------------------------


def int_to_str(n: int) -> str:
    return str(n)


def str_to_str(s: str) -> str:
    return s


async def int_to_bytes(n: int) -> bytes:
    return bytes(n)


def is_even(n: int) -> bool:
    return n % 2 == 0


async def is_even_async(n: int) -> bool:
    return n % 2 == 0


def is_int(x: int | None) -> TypeGuard[int]:
    return x is not None


def is_int_strict(x: int | None) -> TypeIs[int]:
    return x is not None


def expand_to_list(n: int) -> list[str]:
    return [str(n)]


async def expand_to_list_async(n: int) -> list[str]:
    return [str(n)]


async def expand_to_async_iterator(n: int) -> AsyncIterator[str]:
    return generate_strs(n)


async def generate_strs(n: int) -> AsyncIterator[str]:
    yield str(n)


def returns_async_generator(n: int) -> AsyncIterator[str]:
    return generate_strs(n)


def sync_generator(n: int) -> Iterator[str]:
    yield str(n)


class Connection:
    def close(self) -> None: ...


def make_connection() -> Connection:
    return Connection()


def make_buffer() -> io.StringIO:
    return io.StringIO()


def connection_generator() -> Generator[Connection, None, None]:
    connection = Connection()
    try:
        yield connection
    finally:
        connection.close()


# -- building ------------------------------------------------------------------------


def check_pipe(strs: AsyncIterable[str], gen: AsyncIterator[bytes]) -> None:
    assert_type(pipe([1]), Pipeline[int])
    assert_type(pipe(range(3)), Pipeline[int])
    assert_type(pipe(strs), Pipeline[str])
    assert_type(pipe(gen), Pipeline[bytes])
    assert_type(pipe(generate_strs(1)), Pipeline[str])
    assert_type(pipe(sync_generator(1)), Pipeline[str])


def check_map(ints: Pipeline[int]) -> None:
    assert_type(ints.map(str), Pipeline[str])
    assert_type(ints.map(int_to_str), Pipeline[str])
    assert_type(ints.map(int_to_bytes), Pipeline[bytes])
    assert_type(ints.map(int_to_bytes, concurrency=4, ordered=True, buffer=8), Pipeline[bytes])
    assert_type(ints.map(lambda x: x + 1), Pipeline[int])
    assert_type(ints.map(lambda x: str(x)), Pipeline[str])
    assert_type(ints.map(int_to_str).map(str_to_str), Pipeline[str])


def check_filter(ints: Pipeline[int], maybe: Pipeline[int | None]) -> None:
    assert_type(ints.filter(is_even), Pipeline[int])
    assert_type(ints.filter(is_even_async, concurrency=4), Pipeline[int])
    assert_type(ints.filter(lambda x: x > 1), Pipeline[int])
    assert_type(maybe.filter(is_int), Pipeline[int])
    # A plain bool predicate does not narrow.
    assert_type(maybe.filter(lambda x: x is not None), Pipeline[int | None])
    assert_type(maybe.filter(is_int_strict), Pipeline[int])


def check_flat_map(ints: Pipeline[int]) -> None:
    assert_type(ints.flat_map(expand_to_list), Pipeline[str])
    assert_type(ints.flat_map(expand_to_list_async), Pipeline[str])
    assert_type(ints.flat_map(expand_to_async_iterator), Pipeline[str])
    assert_type(ints.flat_map(generate_strs), Pipeline[str])
    assert_type(ints.flat_map(returns_async_generator), Pipeline[str])
    assert_type(ints.flat_map(sync_generator), Pipeline[str])
    assert_type(ints.flat_map(lambda x: [x, x]), Pipeline[int])
    assert_type(ints.flat_map(generate_strs, concurrency=2, ordered=True), Pipeline[str])


def check_batch(ints: Pipeline[int]) -> None:
    assert_type(ints.batch(2), Pipeline[list[int]])
    assert_type(ints.batch(2).batch(3), Pipeline[list[list[int]]])


def check_through(
    ints: Pipeline[int], to_str: Flow[int, str], any_to_str: Flow[object, str]
) -> None:
    assert_type(ints.through(to_str), Pipeline[str])
    assert_type(ints | to_str, Pipeline[str])
    assert_type(ints | to_str | Flow[str]().map(str.encode), Pipeline[bytes])
    # Flows are contravariant in their input: a Flow taking object takes ints.
    assert_type(ints.through(any_to_str), Pipeline[str])
    assert_type(ints | any_to_str, Pipeline[str])


# -- consuming -----------------------------------------------------------------------


async def check_terminals(ints: Pipeline[int]) -> None:
    assert_type(await ints.collect(), list[int])
    assert_type(await ints.map(int_to_str).collect(), list[str])
    assert_type(await ints.drain(), None)
    assert_type(await ints.for_each(print), None)
    assert_type(await ints.for_each(is_even_async, concurrency=4), None)
    assert_type(await ints.for_each(lambda x: print(x + 1)), None)


async def check_iteration(ints: Pipeline[int]) -> None:
    async for x in ints:
        assert_type(x, int)
    async for s in ints.map(int_to_str):
        assert_type(s, str)
    iterator = aiter(ints)
    assert_type(iterator, AsyncGenerator[int, None])
    await iterator.aclose()  # an early exit can close it explicitly
    async with ints.stream() as items:
        assert_type(items, AsyncIterator[int])
        async for y in items:
            assert_type(y, int)


# -- variance ------------------------------------------------------------------------


def takes_pipeline_of_object(p: Pipeline[object], /) -> None: ...


def takes_pipeline_of_optional_int(p: Pipeline[int | None], /) -> None: ...


def check_covariance(ints: Pipeline[int]) -> None:
    takes_pipeline_of_object(ints)
    takes_pipeline_of_optional_int(ints)
    widened: Pipeline[object] = ints
    del widened


# -- offloading ----------------------------------------------------------------------


async def check_in_thread(ints: Pipeline[int]) -> None:
    blocking = in_thread(int_to_str)
    assert_type(await blocking(1), str)
    assert_type(ints.map(blocking), Pipeline[str])
    assert_type(ints.map(in_thread(int_to_str), concurrency=8), Pipeline[str])
    assert_type(ints.filter(in_thread(is_even)), Pipeline[int])
    assert_type(ints.flat_map(in_thread(expand_to_list)), Pipeline[str])
    assert_type(blocking.__name__, str)
    wrapped: Callable[[int], str] = blocking.__wrapped__
    del wrapped


async def check_in_process(ints: Pipeline[int], pool: ProcessPoolExecutor) -> None:
    cpu = in_process(int_to_str, executor=pool)
    assert_type(await cpu(1), str)
    assert_type(ints.map(cpu), Pipeline[str])
    assert_type(ints.map(in_process(int_to_str, executor=pool), concurrency=4), Pipeline[str])


@thread_local
def decorated_connection() -> Generator[Connection, None, None]:
    yield Connection()


def check_thread_local() -> None:
    plain = thread_local(make_connection)
    assert_type(plain(), Connection)
    from_generator = thread_local(connection_generator)
    assert_type(from_generator(), Connection)
    assert_type(decorated_connection(), Connection)
    assert_type(thread_local(lambda: 42)(), int)
    # A resource that is itself an iterator stays what it is: only real generator
    # factories are unwrapped (at run time, types.GeneratorType), so a generator
    # factory must be annotated Generator[R, None, None], not Iterator[R].
    assert_type(thread_local(make_buffer)(), io.StringIO)
    plain.close()


# -- rejected ------------------------------------------------------------------------


async def check_rejected(ints: Pipeline[int], strs_to_strs: Flow[str, str]) -> None:
    ints.through(strs_to_strs)  # type: ignore[arg-type]
    piped: Pipeline[str] = ints | strs_to_strs  # type: ignore[operator]
    del piped
    ints.map(str_to_str)  # type: ignore[arg-type]
    ints.filter(str.isdigit)  # type: ignore[arg-type]
    ints.flat_map(str_to_str)  # type: ignore[arg-type]
    await ints.for_each(str_to_str)  # type: ignore[arg-type]
    strs = ints.map(int_to_str)
    as_ints: Pipeline[int] = strs  # type: ignore[assignment]
    del as_ints
    pipe(42)  # type: ignore[arg-type]
    ints.batch("2")  # type: ignore[arg-type]
    ints.map(int_to_str, concurrency="4")  # type: ignore[call-overload]
    in_process(int_to_str)  # type: ignore[call-arg]


def check_in_thread_accepts_async_functions_statically() -> None:
    # Not rejected by the types (in_thread is generic over any callable); the run-time
    # check raises TypeError. Pinned here so that adding a static rejection is a
    # conscious change of this file.
    async def check() -> None:
        coroutine: Awaitable[bytes] = await in_thread(int_to_bytes)(1)
        del coroutine

    del check
