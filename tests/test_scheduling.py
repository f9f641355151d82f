"""The distributed run's module order (tests/scheduling.py)."""

from __future__ import annotations

from dataclasses import dataclass

from tests.scheduling import slow_modules_first


@dataclass(frozen=True)
class FakeItem:
    module: object
    name: str
    slow: bool = False

    def get_closest_marker(self, name: str) -> object | None:
        return "slow" if name == "slow" and self.slow else None


def test_modules_with_a_slow_test_come_first_in_their_shuffled_order() -> None:
    quick, servers, jobs, units = object(), object(), object(), object()
    items = [
        FakeItem(quick, "q1"),
        FakeItem(servers, "s1"),
        FakeItem(servers, "s2", slow=True),  # one slow test moves its whole module
        FakeItem(units, "u1"),
        FakeItem(jobs, "j1", slow=True),
        FakeItem(quick, "q2"),
    ]
    ordered = slow_modules_first(items)
    assert [item.name for item in ordered] == ["s1", "s2", "j1", "q1", "u1", "q2"]
    assert slow_modules_first(ordered) == ordered
    assert slow_modules_first([]) == []
