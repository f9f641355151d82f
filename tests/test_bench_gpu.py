"""bench/gpu.py's CPU smoke path: the script that is meant to run once on a GPU host must at
least run, skip what the CPU cannot do, and write its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_bench_smoke_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    command = [sys.executable, "bench/gpu.py", "--device", "cpu", "--backbone", "tiny"]
    command += ["--seconds", "0.2", "--batch", "2", "--large", "400x300", "--skip", "http"]
    command += ["--out", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["machine"]["device"] == "cpu"
    assert result["backbone"] == "tiny"
    rows = {(row["section"], row["what"]) for row in result["rows"]}
    assert {("engine", "copy"), ("engine", "bound")} <= rows
    assert ("preprocess", "cpu 400x300 JPEG") in rows
    assert ("preprocess", "cpu 224 px JPEG") in rows
    assert not any("fp16" in what or "tensorrt" in what for _, what in rows)  # CUDA only
    assert all(row["img_s"] > 0 for row in result["rows"])
