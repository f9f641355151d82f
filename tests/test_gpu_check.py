"""bench/gpu_check.py's CPU smoke mode: the one-shot GPU verification runs end to end here,
records every step, and skips what needs CUDA with the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CUDA_ONLY = {"stream_order", "nvjpeg_race", "tensorrt", "training", "bench"}


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_step_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    command = [sys.executable, "bench/gpu_check.py", "--smoke", "--out", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    steps = report["steps"]
    assert (report["mode"], report["device"], report["backbone"]) == ("smoke", "cpu", "tiny")
    assert {name for name, step in steps.items() if step["status"] == "ok"} == (
        set(steps) - CUDA_ONLY
    )
    for name in CUDA_ONLY:
        assert steps[name]["status"] == "skipped"
        assert "needs CUDA" in steps[name]["reason"]
    env_step = steps["environment"]["result"]
    assert env_step["session_providers"]["bare"]["torch"] is False
    assert "CPUExecutionProvider" in env_step["session_providers"]["bare"]["providers"]
    assert steps["providers"]["result"]["bound"] == ["CPUExecutionProvider"]
    assert (
        steps["parity"]["result"]["provp"]["onnx-bound"]["engine"] == "BoundInputs/InputOnnxEngine"
    )
    assert steps["concurrency"]["result"]["differ"] == []
    assert steps["pinned_job"]["result"]["seen"]["visible"] == "1"


def test_a_failing_step_is_recorded_and_the_next_one_runs(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from gpu_check import Report

    class Check:
        smoke, device, backbone = True, "cpu", "tiny"

    def broken(check: object) -> dict[str, object]:
        raise RuntimeError("boom")

    report = Report(tmp_path / "r.json", Check())
    report.run("broken", broken, Check())
    report.run("fine", lambda check: {"value": 1}, Check())
    steps = json.loads((tmp_path / "r.json").read_text())["steps"]
    assert steps["broken"]["status"] == "failed"
    assert steps["broken"]["error"] == "RuntimeError: boom"
    assert (steps["fine"]["status"], steps["fine"]["result"]) == ("ok", {"value": 1})
