"""Sentinels the engine passes around instead of raising for expected events."""

from __future__ import annotations

from typing import Any

END: Any = object()
"""Returned by readers instead of raising StopIteration / StopAsyncIteration."""

PAUSE: Any = object()
"""Returned by a sync reader when the chain asks it to let the event loop run before
reading on (see :class:`flowlet._engine.sync_chain.Probe`)."""

SKIP: Any = object()
"""A value a filter dropped: absorbed steps return it, ordered slots hold it."""
