"""The order a distributed run (`make test`: pytest-xdist, one module per worker at a time)
hands modules out in.

pytest-randomly shuffles the modules first; `slow_modules_first` then moves the modules that
hold a `slow` test (the server processes, the jobs: minutes each) ahead of the rest, keeping the
shuffled order within both groups. Handed out last, one such module can keep a worker busy for
minutes after the other has run out of work; handed out first, the many quick modules fill in
around them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Item(Protocol):
    @property
    def module(self) -> object: ...

    def get_closest_marker(self, name: str) -> object | None: ...


T = TypeVar("T", bound=Item)


def slow_modules_first(items: Sequence[T]) -> list[T]:
    """`items` with every module holding a slow test moved first (a stable reordering)."""
    slow = {id(item.module) for item in items if item.get_closest_marker("slow") is not None}
    return sorted(items, key=lambda item: id(item.module) not in slow)
