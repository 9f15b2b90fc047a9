"""Type variables and aliases shared by the front ends."""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable
from typing import Any, TypeAlias, TypeVar

from typing_extensions import TypeVar as TypeVarWithDefault

T = TypeVar("T")
U = TypeVar("U")
V = TypeVar("V")
T_co = TypeVar("T_co", covariant=True)

In = TypeVarWithDefault("In", contravariant=True, default=Any)
"""What a Flow or Operator takes. ``Flow()`` is ``Flow[Any, Any]``."""

Out = TypeVarWithDefault("Out", covariant=True, default=In)
"""What a Flow or Operator gives. ``Flow[int]()`` is ``Flow[int, int]``."""

Source: TypeAlias = Iterable[T] | AsyncIterable[T]
"""Anything a pipeline can read: an iterable or an async iterable, consumed lazily."""
