"""Static checks of ``Flow[In, Out]`` and the ``op`` builders.

Type-checked only; never executed. Negative cases use ``# type: ignore[<mypy-code>]``
alone: pyright honours it as a blanket ignore and reports it when unnecessary (see
check_pipeline.py for why a second ``# pyright: ignore[...]`` cannot sit next to it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeGuard

from typing_extensions import assert_type

from flowlet import Flow, Pipeline, op, pipe


def int_to_str(n: int) -> str:
    return str(n)


def str_to_bytes(s: str) -> bytes:
    return s.encode()


def str_to_str(s: str) -> str:
    return s


async def int_to_bytes(n: int) -> bytes:
    return bytes(n)


def object_to_int(x: object) -> int:
    return hash(x)


def is_even(n: int) -> bool:
    return n % 2 == 0


async def is_even_async(n: int) -> bool:
    return n % 2 == 0


def is_int(x: int | None) -> TypeGuard[int]:
    return x is not None


def expand(n: int) -> list[str]:
    return [str(n)]


async def expand_async(n: int) -> list[str]:
    return [str(n)]


async def generate(n: int) -> AsyncIterator[str]:
    yield str(n)


def sync_generate(n: int) -> Iterator[str]:
    yield str(n)


# -- Flow ----------------------------------------------------------------------------


def check_construction() -> None:
    assert_type(Flow[int](), Flow[int, int])
    assert_type(Flow[int, str](), Flow[int, str])
    assert_type(Flow(), Flow[Any, Any])


def check_stages(ints: Flow[int, int], maybe: Flow[str, int | None]) -> None:
    assert_type(Flow[int]().batch(2), Flow[int, list[int]])
    assert_type(ints.map(int_to_str), Flow[int, str])
    assert_type(ints.map(int_to_str).map(str_to_bytes), Flow[int, bytes])
    assert_type(ints.map(int_to_bytes, concurrency=4, ordered=True), Flow[int, bytes])
    assert_type(ints.map(lambda x: x * 2), Flow[int, int])
    assert_type(ints.map(int_to_str).batch(3), Flow[int, list[str]])
    assert_type(ints.filter(is_even), Flow[int, int])
    assert_type(ints.filter(is_even_async, buffer=2), Flow[int, int])
    assert_type(maybe.filter(is_int), Flow[str, int])
    assert_type(ints.flat_map(expand), Flow[int, str])
    assert_type(ints.flat_map(expand_async), Flow[int, str])
    assert_type(ints.flat_map(generate), Flow[int, str])
    assert_type(ints.flat_map(sync_generate), Flow[int, str])


def check_composition(
    int_to_strs: Flow[int, str], str_to_bytess: Flow[str, bytes], objects: Flow[object, int]
) -> None:
    assert_type(int_to_strs | str_to_bytess, Flow[int, bytes])
    assert_type(int_to_strs.through(str_to_bytess), Flow[int, bytes])
    assert_type(objects | int_to_strs | str_to_bytess, Flow[object, bytes])
    # Contravariant input: a Flow taking object continues a Flow giving str.
    assert_type(int_to_strs | objects, Flow[int, int])


def takes_int_flow(flow: Flow[int, object], /) -> None: ...


def check_variance(objects_to_ints: Flow[object, int]) -> None:
    takes_int_flow(objects_to_ints)
    narrowed: Flow[int, object] = objects_to_ints
    del narrowed


# -- op ------------------------------------------------------------------------------


def check_op() -> None:
    assert_type(op.map(int_to_str), Flow[int, str])
    assert_type(op.map(int_to_bytes, concurrency=8), Flow[int, bytes])
    assert_type(op.filter(is_even), Flow[int, int])
    assert_type(op.filter(is_even_async), Flow[int, int])
    assert_type(op.filter(is_int), Flow[int | None, int])
    assert_type(op.flat_map(expand), Flow[int, str])
    assert_type(op.flat_map(expand_async), Flow[int, str])
    assert_type(op.flat_map(generate, concurrency=2), Flow[int, str])
    assert_type(op.flat_map(sync_generate), Flow[int, str])
    # By design: batch has no function to take the item type from.
    assert_type(op.batch(2), Flow[Any, list[Any]])


def check_op_composition(ints: Pipeline[int]) -> None:
    assert_type(op.map(int_to_str) | op.map(str_to_bytes), Flow[int, bytes])
    assert_type(op.filter(is_even) | op.map(int_to_str), Flow[int, str])
    assert_type(pipe([1]) | op.map(int_to_str), Pipeline[str])
    assert_type(ints | op.map(int_to_str) | op.map(str_to_bytes), Pipeline[bytes])
    assert_type(ints | (op.map(int_to_str) | op.map(str_to_bytes)), Pipeline[bytes])
    assert_type(ints.through(op.flat_map(expand)), Pipeline[str])
    assert_type(ints | op.batch(2), Pipeline[list[Any]])
    assert_type(ints | op.map(object_to_int), Pipeline[int])


# -- rejected ------------------------------------------------------------------------


def check_rejected(ints: Pipeline[int], int_to_strs: Flow[int, str]) -> None:
    # mypy infers op.map's input from the context (int) and blames the function;
    # pyright blames the operator.
    piped: Pipeline[str] = ints | op.map(str_to_str)  # type: ignore[arg-type]
    strs_to_strs = op.map(str_to_str)
    piped = ints | strs_to_strs  # type: ignore[operator]
    del piped
    ints.through(op.map(str_to_str))  # type: ignore[arg-type]
    composed: Flow[int, str] = int_to_strs | int_to_strs  # type: ignore[operator]
    del composed
    int_to_strs.through(int_to_strs)  # type: ignore[arg-type]
    Flow[int]().map(str_to_str)  # type: ignore[arg-type]
    Flow[int]().filter(str.isdigit)  # type: ignore[arg-type]
    as_bytes: Flow[int, bytes] = int_to_strs  # type: ignore[assignment]
    del as_bytes
    widened_input: Flow[object, str] = int_to_strs  # type: ignore[assignment]
    del widened_input
