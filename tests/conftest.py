"""Every async test runs on asyncio and on trio (anyio's pytest plugin, auto mode)."""

from __future__ import annotations

import gc

import pytest


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _collect_garbage_after_test() -> object:
    # Abandoned iterators are finalised by the garbage collector; collect inside the test
    # so that anything they report (unraisable exceptions, warnings) fails this test.
    yield
    gc.collect()
