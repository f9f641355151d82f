"""Progress output: a tqdm bar on a terminal, a few plain lines in a file, never a 3 KB line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from promptserve.training.cli import main
from promptserve.training.loop import Progress
from promptserve.training.progress import StepReporter, step_progress
from tests.helpers import make_image_folder


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(report: StepReporter, total: int, epochs: int = 2) -> None:
    for step in range(1, total + 1):
        epoch = 1 + (step - 1) * epochs // total
        report(Progress(step, total, epoch, epochs, 1.0 / step, 1e-3, float(total - step)))


def test_a_file_gets_plain_lines_at_start_and_end() -> None:
    sink = io.StringIO()
    with step_progress("train coop", file=sink, interval_s=3600) as report:
        run(report, 200)
        run(report, 50)  # a second seed starts over
    lines = sink.getvalue().splitlines()
    assert "\r" not in sink.getvalue()
    assert lines == [
        "train coop: step 1/200 (0%) epoch 1/2, loss 1.0000, lr 1.00e-03, eta 199s",
        "train coop: step 200/200 (100%) epoch 2/2, loss 0.0050, lr 1.00e-03, eta 0s",
        "train coop: step 1/50 (2%) epoch 1/2, loss 1.0000, lr 1.00e-03, eta 49s",
        "train coop: step 50/50 (100%) epoch 2/2, loss 0.0200, lr 1.00e-03, eta 0s",
    ]


def test_a_file_gets_a_line_per_interval() -> None:
    sink = io.StringIO()
    with step_progress("pretrain-mini", file=sink, interval_s=0.0) as report:
        run(report, 5, epochs=1)
    lines = sink.getvalue().splitlines()
    assert len(lines) == 5
    assert lines[2] == "pretrain-mini: step 3/5 (60%) loss 0.3333, lr 1.00e-03, eta 2s"


def test_a_terminal_gets_a_tqdm_bar() -> None:
    sink = Terminal()
    with step_progress("train coop", file=sink) as report:
        run(report, 40)
    text = sink.getvalue()
    assert "\r" in text  # redrawn in place
    assert "train coop: 100%" in text
    assert "40/40" in text
    assert "loss 0.0250" in text
    assert text.count("\n") == 1  # the finished bar is left on its own line


def test_train_writes_lines_not_carriage_returns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_image_folder(tmp_path / "data", {"red": (220, 30, 30), "blue": (30, 60, 220)}, 4)
    args = ["train", "--method", "coop", "--data", str(data), "--store", str(tmp_path / "s")]
    args += ["--name", "c", "--backbone", "tiny", "--epochs", "2", "--set", "batch_size=4"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "train coop: step 1/4 (25%) epoch 1/2" in err
    assert "train coop: step 4/4 (100%) epoch 2/2" in err
