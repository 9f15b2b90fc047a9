"""Static checks of ``flowlet.functional`` (operators, ``chain``, terminals).

Type-checked only; never executed. Negative cases use ``# type: ignore[<mypy-code>]``
alone (see check_pipeline.py for why).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Any, TypeGuard

from typing_extensions import assert_type

import flowlet.functional as F
from flowlet import Flow


def int_to_str(n: int) -> str:
    return str(n)


def str_to_bytes(s: str) -> bytes:
    return s.encode()


async def bytes_to_int(b: bytes) -> int:
    return len(b)


def int_to_float(n: int) -> float:
    return float(n)


def float_to_str(x: float) -> str:
    return str(x)


def is_even(n: int) -> bool:
    return n % 2 == 0


def non_empty(s: str) -> bool:
    return bool(s)


def is_int(x: int | None) -> TypeGuard[int]:
    return x is not None


def expand(n: int) -> list[str]:
    return [str(n)]


async def generate(n: int) -> AsyncIterator[str]:
    yield str(n)


def sync_generate(n: int) -> Iterator[str]:
    yield str(n)


# -- operators -----------------------------------------------------------------------


def check_builders() -> None:
    assert_type(F.map(int_to_str), F.Operator[int, str])
    assert_type(F.map(bytes_to_int, concurrency=4, ordered=True), F.Operator[bytes, int])
    assert_type(F.filter(is_even), F.Operator[int, int])
    assert_type(F.filter(is_int), F.Operator[int | None, int])
    assert_type(F.flat_map(expand), F.Operator[int, str])
    assert_type(F.flat_map(generate, concurrency=2), F.Operator[int, str])
    assert_type(F.flat_map(sync_generate), F.Operator[int, str])
    assert_type(F.batch(2), F.Operator[Any, list[Any]])
    assert_type(F.map(int_to_str).flow, Flow[int, str])


def check_calling(ints: list[int], async_ints: AsyncIterable[int]) -> None:
    to_str = F.map(int_to_str)
    assert_type(to_str(ints), AsyncIterator[str])
    assert_type(to_str(async_ints), AsyncIterator[str])
    assert_type(to_str(range(3)), AsyncIterator[str])
    # An operator's output is a source for the next one.
    assert_type(F.map(str_to_bytes)(to_str(ints)), AsyncIterator[bytes])
    assert_type(F.batch(2)(ints), AsyncIterator[list[Any]])


def check_chain() -> None:
    assert_type(F.chain(F.map(int_to_str)), F.Operator[int, str])
    assert_type(F.chain(F.map(int_to_str), F.map(str_to_bytes)), F.Operator[int, bytes])
    assert_type(
        F.chain(F.map(int_to_str), F.map(str_to_bytes), F.map(bytes_to_int)),
        F.Operator[int, int],
    )
    assert_type(
        F.chain(F.filter(is_even), F.map(int_to_str), F.map(str_to_bytes), F.map(bytes_to_int)),
        F.Operator[int, int],
    )
    assert_type(
        F.chain(
            F.filter(is_even),
            F.map(int_to_float),
            F.map(float_to_str),
            F.filter(non_empty),
            F.map(str_to_bytes),
        ),
        F.Operator[int, bytes],
    )
    # The shape the issue asks for: a named, typed pipeline of operators.
    to_text: F.Operator[int, str] = F.chain(F.filter(is_even), F.map(int_to_str))
    assert_type(to_text, F.Operator[int, str])
    assert_type(F.chain(F.map(int_to_str), F.filter(non_empty)), F.Operator[int, str])
    # int is a float: the float-taking link accepts the int-giving one.
    assert_type(F.chain(F.filter(is_even), F.map(float_to_str)), F.Operator[int, str])
    assert_type(F.chain(), F.Operator[Any, Any])


def takes_int_operator(operator: F.Operator[int, object], /) -> None: ...


def check_variance(floats_to_strs: F.Operator[float, str]) -> None:
    takes_int_operator(floats_to_strs)


# -- terminals -----------------------------------------------------------------------


async def check_terminals(ints: list[int], async_strs: AsyncIterable[str]) -> None:
    assert_type(await F.collect(ints), list[int])
    assert_type(await F.collect(async_strs), list[str])
    assert_type(await F.collect(F.map(int_to_str)(ints)), list[str])
    assert_type(await F.collect(F.chain(F.map(int_to_str), F.map(str_to_bytes))(ints)), list[bytes])
    assert_type(await F.drain(F.map(int_to_str)(ints)), None)
    assert_type(await F.for_each(print, ints), None)
    assert_type(await F.for_each(bytes_to_int, F.map(str_to_bytes)(async_strs)), None)
    assert_type(await F.for_each(is_even, ints, concurrency=4), None)


# -- rejected ------------------------------------------------------------------------


async def check_rejected(ints: list[int], strs: list[str]) -> None:
    F.map(int_to_str)(strs)  # type: ignore[arg-type]
    await F.for_each(non_empty, ints)  # type: ignore[arg-type]
    as_bytes: F.Operator[int, bytes] = F.map(int_to_str)  # type: ignore[arg-type]
    to_str = F.map(int_to_str)
    as_bytes = to_str  # type: ignore[assignment]
    del as_bytes
    F.chain(F.map(int_to_str), 42)  # type: ignore[call-overload]
    F.chain(F.map(int_to_str), F.map(int_to_str))  # type: ignore[misc]
    F.chain(F.map(str_to_bytes), F.map(bytes_to_int), F.map(str_to_bytes))  # type: ignore[misc]
