"""flowlet: async stream pipelines with bounded per-stage concurrency.

    results = await pipe(urls).map(fetch, concurrency=20).filter(ok).collect()

Runs on asyncio and trio (through anyio).
"""

from __future__ import annotations

from . import functional as functional
from . import op as op
from ._flow import Flow as Flow
from ._offload import ProcessCallError as ProcessCallError
from ._offload import in_process as in_process
from ._offload import in_thread as in_thread
from ._offload import thread_local as thread_local
from ._pipeline import Pipeline as Pipeline
from ._pipeline import pipe as pipe

__version__ = "0.4.0.dev0"

__all__ = [
    "Flow",
    "Pipeline",
    "ProcessCallError",
    "functional",
    "in_process",
    "in_thread",
    "op",
    "pipe",
    "thread_local",
]
