"""`promptserve worker`: its job slots and devices, and bad input answered clearly."""

from __future__ import annotations

import pytest

from promptserve.service.cli import main
from promptserve.service.jobs.host import slot_devices


def test_slots_on_the_cpu() -> None:
    assert slot_devices("cpu", None) == ["cpu"]
    assert slot_devices("cpu", 3) == ["cpu", "cpu", "cpu"]


def test_zero_slots_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="at least one job slot"):
        slot_devices("cpu", 0)
    assert main(["worker", "--slots", "0"]) == 2
    assert "at least one job slot" in capsys.readouterr().err
