"""Sentinels the engine passes around instead of raising for expected events."""

from __future__ import annotations

import enum
from typing import Any


class Marker(enum.Enum):
    """The sentinels, as one type (so that ``read() -> T | Literal[Marker.END]`` is
    typed); the engine's hot paths use the untyped aliases below."""

    END = "END"
    PAUSE = "PAUSE"
    SKIP = "SKIP"
    TIMEOUT = "TIMEOUT"

    def __repr__(self) -> str:
        return f"flowlet.{self.value}"


END: Any = Marker.END
"""Returned by readers instead of raising StopIteration / StopAsyncIteration."""

PAUSE: Any = Marker.PAUSE
"""Returned by a sync reader when the chain asks it to let the event loop run before
reading on (see :class:`flowlet._engine.sync_chain.Probe`)."""

SKIP: Any = Marker.SKIP
"""A value a filter dropped: absorbed steps return it, ordered slots hold it."""

TIMEOUT: Any = Marker.TIMEOUT
"""Returned by a timed read whose deadline passed before an item came."""
